//! The `revoked_tokens` table: deny-list entries (`jti:…`, `sid:…`, `user:…`) until they
//! expire. The deny-list logic is `chat::revoke`.

use chrono::{DateTime, Utc};
use entity::revoked_token;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

use super::StoreError;

/// Delete the entries that have expired.
pub(crate) async fn purge_expired(db: &DatabaseConnection) -> Result<(), StoreError> {
    revoked_token::Entity::delete_many()
        .filter(revoked_token::Column::ExpiresAt.lt(Utc::now()))
        .exec(db)
        .await?;
    Ok(())
}

/// Purge the expired entries and return the others with their expiry.
pub(crate) async fn load_unexpired(
    db: &DatabaseConnection,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    purge_expired(db).await?;
    let rows = revoked_token::Entity::find().all(db).await?;
    Ok(rows.into_iter().map(|r| (r.key, r.expires_at)).collect())
}

/// Deny `keys` until `until` (an existing entry takes the new expiry).
pub(crate) async fn insert(
    db: &DatabaseConnection,
    keys: &[String],
    until: DateTime<Utc>,
) -> Result<(), StoreError> {
    // One row per key: PostgreSQL refuses an upsert that touches a row twice.
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
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

/// Whether any of `keys` is denied now.
pub(crate) async fn any_unexpired(
    db: &DatabaseConnection,
    keys: &[String],
) -> Result<bool, StoreError> {
    if keys.is_empty() {
        return Ok(false);
    }
    let found = revoked_token::Entity::find()
        .filter(revoked_token::Column::Key.is_in(keys.iter().cloned()))
        .filter(revoked_token::Column::ExpiresAt.gt(Utc::now()))
        .one(db)
        .await?;
    Ok(found.is_some())
}
