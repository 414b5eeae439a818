//! Who is online in which room, cluster-wide (SPEC §8 `presence`, §6 `online`).
//!
//! The fan-out counts a user's sockets per room on this replica; only the transitions 0→1 and
//! 1→0 reach a [`Presence`], which answers whether the user just came online (or went offline)
//! in the whole cluster, so `join`/`leave` events fire once per user, not per socket or replica.
//!
//! * [`LocalPresence`]: one replica is the whole cluster.
//! * [`RedisPresence`]: per room and user, a sorted set of replicas scored by heartbeat expiry
//!   (`chat:presence:{room}:{user}`), and per room a sorted set of online users scored by their
//!   latest expiry (`chat:online:{room}`). Lua scripts make each transition atomic. Replicas
//!   refresh their entries every 10 s with a 30 s TTL, and sweep expired ones, so the users of
//!   a crashed replica go offline (with one `leave` event) within about 30 s.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use super::{Error, events::Events};
use crate::domain::room::RoomInfo;
use crate::{
    bus::route,
    domain::{
        event::{Event, PresenceChange},
        model::{Room, UserRef},
    },
    fanout::hub::Hub,
    store,
};

#[async_trait]
pub(crate) trait Presence: Send + Sync {
    /// This replica's first socket of `user` in `room` opened; `true` if the user was offline
    /// everywhere.
    async fn join(&self, room: i64, user: i64) -> anyhow::Result<bool>;
    /// This replica's last socket of `user` in `room` closed; `true` if the user is now offline
    /// everywhere.
    async fn leave(&self, room: i64, user: i64) -> anyhow::Result<bool>;
    /// Users online in `room`.
    async fn online(&self, room: i64) -> anyhow::Result<Vec<i64>>;
    /// How many users are online in each of `rooms` (one round trip).
    async fn online_counts(&self, rooms: &[i64]) -> anyhow::Result<Vec<i64>>;
    /// Expired entries (crashed replicas): `(room, user)` pairs that just went offline.
    async fn sweep(&self) -> anyhow::Result<Vec<(i64, i64)>>;
    /// Refresh this replica's entries (every 10 s).
    async fn heartbeat(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Who is online where: this replica's counts (in the fan-out) and the cluster's
/// ([`Presence`]), and the `presence` events of their transitions.
#[derive(Clone)]
pub(crate) struct Online {
    hub: Arc<Hub>,
    presence: Arc<dyn Presence>,
    db: DatabaseConnection,
    events: Events,
}

impl Online {
    pub(crate) fn new(
        hub: Arc<Hub>,
        presence: Arc<dyn Presence>,
        db: DatabaseConnection,
        events: Events,
    ) -> Self {
        Self {
            hub,
            presence,
            db,
            events,
        }
    }

    /// A room as its clients see it, with its online count.
    ///
    /// # Errors
    /// When the database fails.
    pub(crate) async fn room_wire(&self, row: RoomInfo) -> Result<Room, Error> {
        let online = i64::try_from(self.ids(row.id).await.len()).unwrap_or(0);
        Ok(store::rooms::to_wire(&self.db, row, online).await?)
    }

    /// This replica's first socket of `user` entered `room`: announce `join` if the user just
    /// came online in the whole cluster.
    pub(crate) async fn entered(&self, room_id: i64, room: &str, user: &UserRef) {
        if !self.hub.presence_inc(room_id, user.id) {
            return;
        }
        match self.presence.join(room_id, user.id).await {
            Ok(true) => {
                self.announce(room_id, room, PresenceChange::Join, user)
                    .await
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence join failed"),
        }
    }

    /// A socket of `user` left `room`: announce `leave` if it was their last in the cluster.
    pub(crate) async fn left(&self, room_id: i64, room: &str, user: &UserRef) {
        if !self.hub.presence_dec(room_id, user.id) {
            return;
        }
        match self.presence.leave(room_id, user.id).await {
            Ok(true) => {
                self.announce(room_id, room, PresenceChange::Leave, user)
                    .await
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence leave failed"),
        }
    }

    async fn announce(&self, room_id: i64, room: &str, event: PresenceChange, user: &UserRef) {
        let event = Event::Presence { room, event, user };
        self.events
            .publish(route::to_room_but(room_id, &event, user.id))
            .await;
    }

    /// Users online in `room_id`, cluster-wide (empty, with a warning, if presence is
    /// unreachable).
    pub(crate) async fn users(&self, room_id: i64) -> Vec<UserRef> {
        match self.presence.online(room_id).await {
            Ok(ids) => store::users::refs(&self.db, &ids).await.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "presence unavailable");
                Vec::new()
            }
        }
    }

    /// Online counts of `rooms`, cluster-wide (missing if presence is unreachable).
    pub(crate) async fn counts(&self, rooms: &[i64]) -> HashMap<i64, i64> {
        match self.presence.online_counts(rooms).await {
            Ok(counts) => rooms.iter().copied().zip(counts).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "presence unavailable");
                HashMap::new()
            }
        }
    }

    /// Ids of the users online in `room_id` (empty if presence is unreachable).
    pub(crate) async fn ids(&self, room_id: i64) -> Vec<i64> {
        self.presence.online(room_id).await.unwrap_or_default()
    }

    /// Refresh this replica's presence entries.
    pub(crate) async fn heartbeat(&self) {
        if let Err(e) = self.presence.heartbeat().await {
            tracing::warn!(error = %e, "presence heartbeat failed");
        }
    }

    /// Expire the entries of crashed replicas and announce those users' `leave`, once each.
    pub(crate) async fn sweep(&self) {
        let pairs = match self.presence.sweep().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "presence sweep failed");
                return;
            }
        };
        for (room, user) in pairs {
            let name = store::rooms::name_of(&self.db, room).await.ok().flatten();
            let user = store::users::refs(&self.db, &[user])
                .await
                .ok()
                .and_then(|v| v.into_iter().next());
            if let (Some(name), Some(user)) = (name, user) {
                self.announce(room, &name, PresenceChange::Leave, &user)
                    .await;
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct LocalPresence {
    rooms: Mutex<HashMap<i64, HashSet<i64>>>,
}

#[async_trait]
impl Presence for LocalPresence {
    async fn join(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        Ok(self.rooms.lock().entry(room).or_default().insert(user))
    }

    async fn leave(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        let mut rooms = self.rooms.lock();
        let removed = rooms.get_mut(&room).is_some_and(|s| s.remove(&user));
        if rooms.get(&room).is_some_and(HashSet::is_empty) {
            rooms.remove(&room);
        }
        Ok(removed)
    }

    async fn online_counts(&self, rooms: &[i64]) -> anyhow::Result<Vec<i64>> {
        let map = self.rooms.lock();
        Ok(rooms
            .iter()
            .map(|r| {
                map.get(r)
                    .map_or(0, |s| i64::try_from(s.len()).unwrap_or(0))
            })
            .collect())
    }

    async fn online(&self, room: i64) -> anyhow::Result<Vec<i64>> {
        Ok(self
            .rooms
            .lock()
            .get(&room)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn sweep(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        Ok(Vec::new())
    }
}

/// Heartbeat TTL of a replica's presence entries.
const PRESENCE_TTL_MS: i64 = 30_000;

pub(crate) struct RedisPresence {
    pool: deadpool_redis::Pool,
    replica: String,
    /// (room, user) pairs this replica holds, refreshed by [`RedisPresence::heartbeat`].
    local: Mutex<HashSet<(i64, i64)>>,
    join_script: Script,
    leave_script: Script,
    sweep_script: Script,
}

const ROOMS_KEY: &str = "chat:presence:rooms";

fn user_key(room: i64, user: i64) -> String {
    format!("chat:presence:{room}:{user}")
}

fn online_key(room: i64) -> String {
    format!("chat:online:{room}")
}

impl RedisPresence {
    async fn refresh(&self) -> anyhow::Result<()> {
        self.heartbeat_inner().await
    }

    pub(crate) fn new(pool: deadpool_redis::Pool, replica: String) -> Self {
        // KEYS: user key, online key, rooms key. ARGV: replica, now ms, expiry ms, user, room.
        let join_script = Script::new(
            r"
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
            local before = redis.call('ZCARD', KEYS[1])
            redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
            redis.call('PEXPIRE', KEYS[1], 120000)
            redis.call('ZADD', KEYS[2], 'GT', ARGV[3], ARGV[4])
            redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
            redis.call('SADD', KEYS[3], ARGV[5])
            if before == 0 then return 1 else return 0 end
            ",
        );
        let leave_script = Script::new(
            r"
            redis.call('ZREM', KEYS[1], ARGV[1])
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
            if redis.call('ZCARD', KEYS[1]) == 0 then
              redis.call('ZREM', KEYS[2], ARGV[4])
              return 1
            end
            return 0
            ",
        );
        // KEYS: rooms key. ARGV: now ms. Returns a flat list room, user, room, user, …
        let sweep_script = Script::new(
            r"
            local out = {}
            local rooms = redis.call('SMEMBERS', KEYS[1])
            for _, room in ipairs(rooms) do
              local okey = 'chat:online:' .. room
              local expired = redis.call('ZRANGEBYSCORE', okey, '-inf', ARGV[1])
              for _, user in ipairs(expired) do
                local ukey = 'chat:presence:' .. room .. ':' .. user
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
            ",
        );
        Self {
            pool,
            replica,
            local: Mutex::default(),
            join_script,
            leave_script,
            sweep_script,
        }
    }

    /// Refresh this replica's entries (every 10 s).
    ///
    /// # Errors
    /// If Redis cannot be reached.
    async fn heartbeat_inner(&self) -> anyhow::Result<()> {
        let pairs: Vec<(i64, i64)> = self.local.lock().iter().copied().collect();
        if pairs.is_empty() {
            return Ok(());
        }
        let exp = chrono::Utc::now().timestamp_millis() + PRESENCE_TTL_MS;
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for (room, user) in pairs {
            pipe.zadd(user_key(room, user), &self.replica, exp).ignore();
            pipe.pexpire(user_key(room, user), 120_000).ignore();
            pipe.cmd("ZADD")
                .arg(online_key(room))
                .arg("GT")
                .arg(exp)
                .arg(user)
                .ignore();
            pipe.sadd(ROOMS_KEY, room).ignore();
        }
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn join(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        self.local.lock().insert((room, user));
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let first: i64 = self
            .join_script
            .key(user_key(room, user))
            .key(online_key(room))
            .key(ROOMS_KEY)
            .arg(&self.replica)
            .arg(now)
            .arg(now + PRESENCE_TTL_MS)
            .arg(user)
            .arg(room)
            .invoke_async(&mut *conn)
            .await?;
        Ok(first == 1)
    }

    async fn leave(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        self.local.lock().remove(&(room, user));
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let last: i64 = self
            .leave_script
            .key(user_key(room, user))
            .key(online_key(room))
            .arg(&self.replica)
            .arg(now)
            .arg(0)
            .arg(user)
            .invoke_async(&mut *conn)
            .await?;
        Ok(last == 1)
    }

    async fn online(&self, room: i64) -> anyhow::Result<Vec<i64>> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let users: Vec<i64> = redis::cmd("ZRANGEBYSCORE")
            .arg(online_key(room))
            .arg(now)
            .arg("+inf")
            .query_async(&mut *conn)
            .await?;
        Ok(users)
    }

    async fn online_counts(&self, rooms: &[i64]) -> anyhow::Result<Vec<i64>> {
        // Redis refuses an empty pipeline.
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for room in rooms {
            pipe.cmd("ZCOUNT")
                .arg(online_key(*room))
                .arg(now)
                .arg("+inf");
        }
        Ok(pipe.query_async(&mut *conn).await?)
    }

    async fn sweep(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut conn = self.pool.get().await?;
        let flat: Vec<i64> = self
            .sweep_script
            .key(ROOMS_KEY)
            .arg(now)
            .invoke_async(&mut *conn)
            .await?;
        Ok(flat.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    async fn heartbeat(&self) -> anyhow::Result<()> {
        self.refresh().await
    }
}
