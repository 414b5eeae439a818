//! The cluster-wide half of the limits in Redis: one GCRA bucket per limit and key
//! ([`keys::rate`]), and one sorted set of live sockets per user and per client address
//! ([`keys::user_sockets`], [`keys::address_sockets`]) whose entries the replica holding the
//! socket refreshes. Each check is one script, atomic in Redis; what a refusal or an error
//! means for the caller is decided above.

use std::{fmt::Display, time::Duration};

use redis::Script;

use super::keys;

/// GCRA in one atomic step, taking up to `want` cells: `KEYS[1]` holds the theoretical
/// arrival time (µs, Redis clock). ARGV: interval µs, burst, want. Returns {cells taken, µs to wait}:
/// {n ≥ 1, 0} when admitted, {0, wait} when not.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * (tonumber(ARGV[2]) - 1)
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = tau - (tat - now)
if room < 0 then return {0, tat - tau - now} end
local n = math.min(want, math.floor(room / interval) + 1)
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return {n, 0}
";

/// Admit a socket if fewer than the limit are live: `KEYS[1]` is a sorted set of
/// `replica:socket` scored by expiry (ms, Redis clock). ARGV: member, limit, ttl ms.
/// Returns 1 (admitted) or 0.
const SOCKET_ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
";

/// Refresh live entries: KEYS are sorted sets, `ARGV[1]` the ttl ms, then one member per key.
const SOCKET_REFRESH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return 0
";

fn gcra_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(GCRA))
}

fn acquire_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(SOCKET_ACQUIRE))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The cluster-wide buckets and socket sets, as one replica sees them.
#[derive(Clone)]
pub(crate) struct LimitStore {
    pool: super::Pool,
    /// This replica's id (its sockets' entries carry it).
    replica: u64,
}

impl LimitStore {
    pub(crate) fn new(pool: super::Pool, replica: u64) -> Self {
        Self { pool, replica }
    }

    /// The member of socket `socket` of this replica in the live-socket sets.
    fn member(&self, socket: u64) -> String {
        format!("{}:{socket}", self.replica)
    }

    /// Take up to `want` cells from the bucket of `limit` for `key` (one cell per
    /// `interval_us`, `burst` at once): `(cells taken, 0)`, or `(0, µs until a cell is back)`.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn take(
        &self,
        limit: &str,
        key: impl Display,
        interval_us: u64,
        burst: u64,
        want: u64,
    ) -> anyhow::Result<(u64, u64)> {
        let mut conn = self.pool.get().await?;
        Ok(gcra_script()
            .key(keys::rate(limit, key))
            .arg(interval_us)
            .arg(burst)
            .arg(want)
            .invoke_async(&mut *conn)
            .await?)
    }

    /// Add socket `socket` to the live set `set` if it holds fewer than `limit` live entries
    /// (or holds it already); `true` if admitted.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn acquire_socket(
        &self,
        set: &str,
        socket: u64,
        limit: u32,
    ) -> anyhow::Result<bool> {
        let mut conn = self.pool.get().await?;
        let ok: i64 = acquire_script()
            .key(set)
            .arg(self.member(socket))
            .arg(limit)
            .arg(millis(keys::SOCKET_ENTRY_TTL))
            .invoke_async(&mut *conn)
            .await?;
        Ok(ok == 1)
    }

    /// Refresh the entries `(set, socket)` of this replica's live sockets: keeps them alive
    /// and puts them back after a Redis restart.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn refresh_sockets(&self, entries: &[(String, u64)]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        // Loaded once per refresh (idempotent), then called by its hash: one call per key
        // keeps every script within one hash slot.
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SOCKET_REFRESH)
            .query_async(&mut *conn)
            .await?;
        let ttl = millis(keys::SOCKET_ENTRY_TTL);
        for chunk in entries.chunks(1000) {
            let mut pipe = redis::pipe();
            for (set, socket) in chunk {
                pipe.cmd("EVALSHA")
                    .arg(&sha)
                    .arg(1)
                    .arg(set)
                    .arg(ttl)
                    .arg(self.member(*socket))
                    .ignore();
            }
            pipe.query_async::<()>(&mut *conn).await?;
        }
        Ok(())
    }

    /// Remove socket `socket` of this replica from the live sets `sets`.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn release_socket(&self, sets: &[String], socket: u64) -> anyhow::Result<()> {
        if sets.is_empty() {
            return Ok(());
        }
        let member = self.member(socket);
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for set in sets {
            pipe.cmd("ZREM").arg(set).arg(&member).ignore();
        }
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }
}
