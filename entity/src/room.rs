use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rooms")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    pub topic: Option<String>,
    /// `public` or `private`.
    pub visibility: String,
    pub owner_id: Option<i64>,
    /// The highest `seq` handed out in this room.
    pub last_seq: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// `room` or `dm`.
    pub kind: String,
    /// A DM's members: their ids, sorted, joined by `-` (unique).
    pub dm_key: Option<String>,
    /// When the last message was committed (set on DMs at creation).
    pub active_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
