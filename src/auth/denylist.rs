//! The access-token deny-list: what logout, password changes and user deletion revoke before
//! the tokens expire on their own. Keys are `jti:<id>` (one token), `sid:<family>` (every access
//! token of one login session) and `user:<id>` (every token of a user).
//!
//! Two implementations behind one trait:
//! * [`DbDenyList`] (embedded mode): an in-process set, written through to the
//!   `revoked_tokens` table and loaded from it at start, so revocations survive a restart.
//! * [`RedisDenyList`] (cluster mode): `SET key 1 EX ttl`, checked with one `EXISTS` per
//!   request, so every replica agrees at once.
//!
//! A failed check is an error, never "not revoked": the caller answers 503 (fail closed).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use entity::revoked_token;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};

#[async_trait]
pub trait DenyList: Send + Sync {
    /// Deny `keys` until `until`.
    async fn deny(&self, keys: &[String], until: DateTime<Utc>) -> anyhow::Result<()>;
    /// Whether any of `keys` is denied.
    async fn any_denied(&self, keys: &[String]) -> anyhow::Result<bool>;
}

pub struct DbDenyList {
    db: DatabaseConnection,
    cache: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl DbDenyList {
    /// Load the unexpired entries and purge the expired ones.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub async fn load(db: DatabaseConnection) -> anyhow::Result<Arc<Self>> {
        let now = Utc::now();
        revoked_token::Entity::delete_many()
            .filter(revoked_token::Column::ExpiresAt.lt(now))
            .exec(&db)
            .await?;
        let rows = revoked_token::Entity::find().all(&db).await?;
        let cache = rows.into_iter().map(|r| (r.key, r.expires_at)).collect();
        Ok(Arc::new(Self {
            db,
            cache: Mutex::new(cache),
        }))
    }
}

#[async_trait]
impl DenyList for DbDenyList {
    async fn deny(&self, keys: &[String], until: DateTime<Utc>) -> anyhow::Result<()> {
        let mut keys = keys.to_vec();
        keys.sort();
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
            .exec_without_returning(&self.db)
            .await?;
        let now = Utc::now();
        // Lock held for a few map operations only, never across an await.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, exp| *exp > now);
        for k in keys {
            cache.insert(k, until);
        }
        Ok(())
    }

    async fn any_denied(&self, keys: &[String]) -> anyhow::Result<bool> {
        let now = Utc::now();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        Ok(keys
            .iter()
            .any(|k| cache.get(k).is_some_and(|exp| *exp > now)))
    }
}

pub struct RedisDenyList {
    pool: deadpool_redis::Pool,
}

impl RedisDenyList {
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self { pool }
    }
}

fn redis_key(k: &str) -> String {
    format!("chat:deny:{k}")
}

#[async_trait]
impl DenyList for RedisDenyList {
    async fn deny(&self, keys: &[String], until: DateTime<Utc>) -> anyhow::Result<()> {
        let ttl = (until - Utc::now()).num_seconds().max(1);
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.set_ex(redis_key(k), 1, ttl.unsigned_abs()).ignore();
        }
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    async fn any_denied(&self, keys: &[String]) -> anyhow::Result<bool> {
        if keys.is_empty() {
            return Ok(false);
        }
        let mut conn = self.pool.get().await?;
        let keys: Vec<String> = keys.iter().map(|k| redis_key(k)).collect();
        let n: i64 = redis::cmd("EXISTS")
            .arg(&keys)
            .query_async(&mut *conn)
            .await?;
        Ok(n > 0)
    }
}
