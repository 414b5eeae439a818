//! The `revoked_tokens` table: deny-list entries (`jti:…`, `sid:…`, `user:…`) until they
//! expire. The deny-list logic is `chat::revoke`.

use chrono::{DateTime, Utc};
use entity::revoked_token;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

use super::StoreError;

/// Purge the expired entries and return the others with their expiry.
pub(crate) async fn load_unexpired(
    db: &DatabaseConnection,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    revoked_token::Entity::delete_many()
        .filter(revoked_token::Column::ExpiresAt.lt(Utc::now()))
        .exec(db)
        .await?;
    let rows = revoked_token::Entity::find().all(db).await?;
    Ok(rows.into_iter().map(|r| (r.key, r.expires_at)).collect())
}

/// Deny `keys` until `until` (an existing entry takes the new expiry).
pub(crate) async fn insert(
    db: &DatabaseConnection,
    keys: &[String],
    until: DateTime<Utc>,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let models = keys.iter().map(|k| revoked_token::ActiveModel {
        key: Set(k.clone()),
        expires_at: Set(until),
    });
    revoked_token::Entity::insert_many(models)
        .on_conflict(
            OnConflict::column(revoked_token::Column::Key)
                .update_column(revoked_token::Column::ExpiresAt)
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}
