use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub room_id: i64,
    pub seq: i64,
    /// `None` once the author deleted their account.
    pub author_id: Option<i64>,
    pub content: String,
    pub client_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub edited_at: Option<DateTimeUtc>,
    pub deleted_at: Option<DateTimeUtc>,
    /// The root of the thread this message replies to.
    pub reply_to: Option<i64>,
    /// On a thread's root: its live replies.
    pub reply_count: i64,
    /// On a thread's root: when the latest reply was stored.
    pub last_reply_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
