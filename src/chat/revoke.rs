//! Revocation: what logout, password changes and account deletion end before the tokens
//! expire on their own, and the sockets those tokens opened.
//!
//! The deny-list entries are spelled in one place, [`DenyKey`]: `jti:<id>` (one token),
//! `sid:<family>` (every access token of one login session) and `user:<id>` (every token of a
//! user); they are the rows of `revoked_tokens` and, in cluster mode, the suffixes of the
//! Redis keys. Two deny-lists sit behind one trait:
//! * [`DbDenyList`] (embedded mode): an in-process set, written through to the
//!   `revoked_tokens` table and loaded from it at start, so revocations survive a restart.
//! * [`RedisDenyList`] (cluster mode): written to the same table first (the database is the
//!   source of truth), then to Redis ([`DenyStore`]: one key per entry that expires with the
//!   tokens it denies), checked with one `EXISTS` per request, so every replica agrees at
//!   once. Redis keeps nothing on disk: a marker key tells whether it still holds the
//!   deny-list; when a restart emptied it, the check reads the database and the unexpired
//!   entries are loaded back into Redis, so a revoked token never works again. While Redis is unreachable, checks read the database, so clients
//!   keep authenticating (and reconnecting) through a Redis outage.
//!
//! A failed check is an error, never "not revoked": the caller answers 503 (fail closed).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use sea_orm::DatabaseConnection;

use super::Error;
use super::events::Events;
use crate::{bus::route, kv::deny::DenyStore, store};

/// One deny-list entry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DenyKey<'a> {
    /// One access token, by `jti`.
    Token(&'a str),
    /// Every access token of one login session (refresh family).
    Session(&'a str),
    /// Every token of a user.
    User(i64),
}

impl DenyKey<'_> {
    pub(crate) fn key(self) -> String {
        match self {
            Self::Token(jti) => format!("jti:{jti}"),
            Self::Session(sid) => format!("sid:{sid}"),
            Self::User(id) => format!("user:{id}"),
        }
    }
}

/// Revocation: the deny-list and the events that close the sockets of what it denies.
#[derive(Clone)]
pub(crate) struct Revocation {
    deny: Arc<dyn DenyList>,
    events: Events,
    /// How long an access token lives: a denial outlives the tokens it denies by a minute.
    access_ttl_secs: i64,
}

impl Revocation {
    pub(crate) fn new(deny: Arc<dyn DenyList>, events: Events, access_ttl_secs: i64) -> Self {
        Self {
            deny,
            events,
            access_ttl_secs,
        }
    }

    /// Which of `keys` are denied (one round trip).
    ///
    /// # Errors
    /// When the deny-list cannot be read.
    pub(crate) async fn denied(&self, keys: &[String]) -> anyhow::Result<HashSet<String>> {
        self.deny.denied_keys(keys).await
    }

    /// Whether a token of `user` in session `sid` with id `jti` is revoked.
    ///
    /// # Errors
    /// 503 if the deny-list cannot be read.
    pub(crate) async fn is_revoked(&self, user: i64, sid: &str, jti: &str) -> Result<bool, Error> {
        let keys = [
            DenyKey::Token(jti).key(),
            DenyKey::Session(sid).key(),
            DenyKey::User(user).key(),
        ];
        self.deny
            .any_denied(&keys)
            .await
            .map_err(Error::Unavailable)
    }

    /// Deny `keys` for as long as a token issued now could live.
    async fn deny_keys(&self, keys: &[DenyKey<'_>]) -> Result<(), Error> {
        let until = Utc::now() + Duration::seconds(self.access_ttl_secs + 60);
        let keys: Vec<String> = keys.iter().map(|k| k.key()).collect();
        self.deny
            .deny(&keys, until)
            .await
            .map_err(Error::Unavailable)
    }

    /// Revoke one access token (logout).
    ///
    /// # Errors
    /// 503 if the deny-list cannot be written.
    pub(crate) async fn revoke_token(&self, jti: &str) -> Result<(), Error> {
        self.deny_keys(&[DenyKey::Token(jti)]).await
    }

    /// Deny the access tokens of `families` and close their sockets on every replica (4001);
    /// with `all`, every socket of the user.
    ///
    /// # Errors
    /// 503 if the deny-list cannot be written.
    pub(crate) async fn revoke_sessions(
        &self,
        user_id: i64,
        families: &[String],
        all: bool,
    ) -> Result<(), Error> {
        let keys: Vec<DenyKey<'_>> = families.iter().map(|f| DenyKey::Session(f)).collect();
        self.deny_keys(&keys).await?;
        if all {
            self.events
                .publish(route::revoke(user_id, None, true))
                .await;
        } else {
            for f in families {
                self.events
                    .publish(route::revoke(user_id, Some(f.clone()), false))
                    .await;
            }
        }
        Ok(())
    }

    /// Every token of `user_id` stops working and their sockets close (account deleted).
    ///
    /// # Errors
    /// 503 if the deny-list cannot be written.
    pub(crate) async fn revoke_user(&self, user_id: i64) -> Result<(), Error> {
        self.deny_keys(&[DenyKey::User(user_id)]).await?;
        self.events
            .publish(route::revoke(user_id, None, true))
            .await;
        Ok(())
    }
}

#[async_trait]
pub(crate) trait DenyList: Send + Sync {
    /// Deny `keys` until `until`.
    async fn deny(&self, keys: &[String], until: DateTime<Utc>) -> anyhow::Result<()>;
    /// Whether any of `keys` is denied.
    async fn any_denied(&self, keys: &[String]) -> anyhow::Result<bool>;
    /// Which of `keys` are denied (one round trip).
    async fn denied_keys(&self, keys: &[String]) -> anyhow::Result<HashSet<String>>;
}

pub(crate) struct DbDenyList {
    db: DatabaseConnection,
    cache: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl DbDenyList {
    /// Load the unexpired entries and purge the expired ones.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub(crate) async fn load(db: DatabaseConnection) -> anyhow::Result<Arc<Self>> {
        let cache = store::revoked::load_unexpired(&db)
            .await?
            .into_iter()
            .collect();
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
        store::revoked::insert(&self.db, &keys, until).await?;
        let now = Utc::now();
        // Lock held for a few map operations only, never across an await.
        let mut cache = self.cache.lock();
        cache.retain(|_, exp| *exp > now);
        for k in keys {
            cache.insert(k, until);
        }
        Ok(())
    }

    async fn any_denied(&self, keys: &[String]) -> anyhow::Result<bool> {
        let now = Utc::now();
        let cache = self.cache.lock();
        Ok(keys
            .iter()
            .any(|k| cache.get(k).is_some_and(|exp| *exp > now)))
    }

    async fn denied_keys(&self, keys: &[String]) -> anyhow::Result<HashSet<String>> {
        let now = Utc::now();
        let cache = self.cache.lock();
        Ok(keys
            .iter()
            .filter(|k| cache.get(*k).is_some_and(|exp| *exp > now))
            .cloned()
            .collect())
    }
}

/// The deny-list of cluster mode: the database is the source of truth, Redis
/// ([`DenyStore`]) answers the checks.
pub(crate) struct RedisDenyList {
    redis: DenyStore,
    db: DatabaseConnection,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl RedisDenyList {
    pub(crate) fn new(redis: DenyStore, db: DatabaseConnection) -> Self {
        Self {
            redis,
            db,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Copy the unexpired entries of the database into Redis, unless it holds them already.
    async fn reload(&self) -> anyhow::Result<()> {
        let _one = self.reloading.lock().await;
        if self.redis.is_loaded().await? {
            return Ok(());
        }
        let entries = store::revoked::load_unexpired(&self.db).await?;
        self.redis.load(&entries).await?;
        tracing::info!(
            entries = entries.len(),
            "deny-list loaded into Redis from the database"
        );
        Ok(())
    }
}

#[async_trait]
impl DenyList for RedisDenyList {
    async fn deny(&self, keys: &[String], until: DateTime<Utc>) -> anyhow::Result<()> {
        // Nothing to deny (a password change with no other session).
        if keys.is_empty() {
            return Ok(());
        }
        // The database first: it is what a Redis emptied by a restart is refilled from.
        store::revoked::insert(&self.db, keys, until).await?;
        self.redis.deny(keys, until).await
    }

    async fn any_denied(&self, keys: &[String]) -> anyhow::Result<bool> {
        if keys.is_empty() {
            return Ok(false);
        }
        let (n, loaded) = match self.redis.count_denied(keys).await {
            Ok(found) => found,
            Err(e) => {
                // Redis is down: the database holds every entry (written first), so it answers
                // until Redis is back; clients keep authenticating and reconnecting.
                tracing::debug!(error = %e, "deny-list check falls back to the database");
                metrics::counter!("chat_deny_checks_from_database_total").increment(1);
                return Ok(store::revoked::any_unexpired(&self.db, keys).await?);
            }
        };
        if n > 0 {
            return Ok(true);
        }
        if loaded {
            return Ok(false);
        }
        // Redis lost the deny-list (restarted): the database answers, and Redis is refilled.
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "reloading the deny-list into Redis failed");
        }
        Ok(store::revoked::any_unexpired(&self.db, keys).await?)
    }

    async fn denied_keys(&self, keys: &[String]) -> anyhow::Result<HashSet<String>> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        // Refilled first if a restart emptied Redis.
        self.reload().await?;
        let found = self.redis.denied(keys).await?;
        Ok(keys
            .iter()
            .zip(found)
            .filter(|(_, denied)| *denied)
            .map(|(k, _)| k.clone())
            .collect())
    }
}
