//! Deny-list entries in Redis: one key per entry ([`keys::deny`]) living as long as the tokens
//! it denies could, and a marker ([`keys::deny_loaded`]) present while Redis holds every entry.
//! Redis keeps nothing on disk: after a restart the marker is gone, and the deny-list's owner
//! loads the entries back ([`DenyStore::load`]) from wherever it keeps them for good.

use chrono::{DateTime, Utc};

use super::keys;

/// The deny-list's keys.
#[derive(Clone)]
pub(crate) struct DenyStore {
    pool: super::Pool,
}

/// Seconds from now until `until`, at least one (`EX` refuses 0).
fn ttl_secs(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    (until - now).num_seconds().max(1).unsigned_abs()
}

impl DenyStore {
    pub(crate) fn new(pool: super::Pool) -> Self {
        Self { pool }
    }

    /// Deny `entries` until `until`.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn deny(
        &self,
        entries: &[String],
        until: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        // An empty pipeline would be refused by Redis.
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = ttl_secs(until, Utc::now());
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.set_ex(keys::deny(entry), 1, ttl).ignore();
        }
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    /// How many of `entries` are denied, and whether Redis holds the whole deny-list (the
    /// marker), in one round trip.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn count_denied(&self, entries: &[String]) -> anyhow::Result<(i64, bool)> {
        let mut conn = self.pool.get().await?;
        let keys: Vec<String> = entries.iter().map(|e| keys::deny(e)).collect();
        Ok(redis::pipe()
            .cmd("EXISTS")
            .arg(&keys)
            .cmd("EXISTS")
            .arg(keys::deny_loaded())
            .query_async(&mut *conn)
            .await?)
    }

    /// For each of `entries`, whether it is denied (one round trip).
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn denied(&self, entries: &[String]) -> anyhow::Result<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.exists(keys::deny(entry));
        }
        Ok(pipe.query_async(&mut *conn).await?)
    }

    /// Whether Redis holds the whole deny-list (the marker is present).
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn is_loaded(&self) -> anyhow::Result<bool> {
        let mut conn = self.pool.get().await?;
        Ok(redis::cmd("EXISTS")
            .arg(keys::deny_loaded())
            .query_async(&mut *conn)
            .await?)
    }

    /// Write every entry of the deny-list (entry, denied until), then the marker.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn load(&self, entries: &[(String, DateTime<Utc>)]) -> anyhow::Result<()> {
        let now = Utc::now();
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for (entry, until) in entries {
            pipe.set_ex(keys::deny(entry), 1, ttl_secs(*until, now))
                .ignore();
        }
        pipe.set(keys::deny_loaded(), 1).ignore();
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }
}
