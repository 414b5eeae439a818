//! Presence in Redis: per room and user, a sorted set of the replicas holding a socket, scored
//! by their entry's expiry ([`keys::presence_user`]); per room, a sorted set of the online
//! users scored by their latest expiry ([`keys::online`]); and the set of rooms to sweep
//! ([`keys::presence_rooms`]). Lua scripts make each transition atomic. A replica refreshes
//! the entries it holds ([`PresenceStore::heartbeat`]) well within [`keys::PRESENCE_ENTRY_TTL`];
//! a sweep removes the expired ones.

use std::{collections::HashSet, time::Duration};

use parking_lot::Mutex;
use redis::Script;

use super::keys;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The presence entries of one replica.
pub(crate) struct PresenceStore {
    pool: super::Pool,
    replica: String,
    /// (room, user) pairs this replica holds, refreshed by [`PresenceStore::heartbeat`].
    local: Mutex<HashSet<(i64, i64)>>,
    join_script: Script,
    leave_script: Script,
    sweep_script: Script,
}

/// KEYS: user key, online key, rooms key. ARGV: replica, now ms, expiry ms, user, room, key
/// TTL ms. Returns 1 if no replica held the user in the room before.
const JOIN: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], 'GT', ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
if before == 0 then return 1 else return 0 end
";

/// KEYS: user key, online key. ARGV: replica, now ms, (unused), user. Returns 1 if no replica
/// holds the user in the room any more.
const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[4])
  return 1
end
return 0
";

/// KEYS: rooms key. ARGV: now ms, online key prefix, user key prefix. Returns a flat list
/// room, user, room, user, … of the users whose last entry expired.
const SWEEP: &str = r"
local out = {}
local rooms = redis.call('SMEMBERS', KEYS[1])
for _, room in ipairs(rooms) do
  local okey = ARGV[2] .. room
  local expired = redis.call('ZRANGEBYSCORE', okey, '-inf', ARGV[1])
  for _, user in ipairs(expired) do
    local ukey = ARGV[3] .. room .. ':' .. user
    redis.call('ZREMRANGEBYSCORE', ukey, '-inf', ARGV[1])
    if redis.call('ZCARD', ukey) == 0 then
      redis.call('ZREM', okey, user)
      table.insert(out, room)
      table.insert(out, user)
    end
  end
  if redis.call('ZCARD', okey) == 0 then
    redis.call('SREM', KEYS[1], room)
  end
end
return out
";

impl PresenceStore {
    pub(crate) fn new(pool: super::Pool, replica: u64) -> Self {
        Self {
            pool,
            replica: replica.to_string(),
            local: Mutex::default(),
            join_script: Script::new(JOIN),
            leave_script: Script::new(LEAVE),
            sweep_script: Script::new(SWEEP),
        }
    }

    /// Add this replica's entry for `user` in `room`; `true` if no replica held one before.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn join(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        self.local.lock().insert((room, user));
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let first: i64 = self
            .join_script
            .key(keys::presence_user(room, user))
            .key(keys::online(room))
            .key(keys::presence_rooms())
            .arg(&self.replica)
            .arg(now)
            .arg(now + millis(keys::PRESENCE_ENTRY_TTL))
            .arg(user)
            .arg(room)
            .arg(millis(keys::PRESENCE_KEY_TTL))
            .invoke_async(&mut *conn)
            .await?;
        Ok(first == 1)
    }

    /// Remove this replica's entry for `user` in `room`; `true` if no replica holds one now.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn leave(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        self.local.lock().remove(&(room, user));
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let last: i64 = self
            .leave_script
            .key(keys::presence_user(room, user))
            .key(keys::online(room))
            .arg(&self.replica)
            .arg(now)
            .arg(0)
            .arg(user)
            .invoke_async(&mut *conn)
            .await?;
        Ok(last == 1)
    }

    /// The users of `room` with an unexpired entry.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn online(&self, room: i64) -> anyhow::Result<Vec<i64>> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let users: Vec<i64> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::online(room))
            .arg(now)
            .arg("+inf")
            .query_async(&mut *conn)
            .await?;
        Ok(users)
    }

    /// How many users of each of `rooms` have an unexpired entry (one round trip).
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn online_counts(&self, rooms: &[i64]) -> anyhow::Result<Vec<i64>> {
        // Redis refuses an empty pipeline.
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.cmd("ZCOUNT")
                .arg(keys::online(*room))
                .arg(now)
                .arg("+inf");
        }
        Ok(pipe.query_async(&mut *conn).await?)
    }

    /// Remove the expired entries of every replica: the `(room, user)` pairs left without
    /// any.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn sweep(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let flat: Vec<i64> = self
            .sweep_script
            .key(keys::presence_rooms())
            .arg(now)
            .arg(keys::ONLINE_PREFIX)
            .arg(keys::PRESENCE_USER_PREFIX)
            .invoke_async(&mut *conn)
            .await?;
        Ok(flat.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    /// Refresh every entry this replica holds (and put them back after a Redis restart).
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub(crate) async fn heartbeat(&self) -> anyhow::Result<()> {
        let pairs: Vec<(i64, i64)> = self.local.lock().iter().copied().collect();
        if pairs.is_empty() {
            return Ok(());
        }
        let exp = chrono::Utc::now().timestamp_millis() + millis(keys::PRESENCE_ENTRY_TTL);
        let key_ttl = millis(keys::PRESENCE_KEY_TTL);
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for (room, user) in pairs {
            let key = keys::presence_user(room, user);
            pipe.zadd(&key, &self.replica, exp).ignore();
            pipe.pexpire(&key, key_ttl).ignore();
            pipe.cmd("ZADD")
                .arg(keys::online(room))
                .arg("GT")
                .arg(exp)
                .arg(user)
                .ignore();
            pipe.sadd(keys::presence_rooms(), room).ignore();
        }
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }
}
