use sea_orm::entity::prelude::*;

/// One refresh token. Tokens of one login share a `family`; each rotation links the old
/// row to its successor through `replaced_by`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub family: String,
    /// SHA-256 of the opaque token, hex; the token itself is never stored.
    pub token_hash: String,
    pub replaced_by: Option<i64>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
