//! Who is online in which room, cluster-wide (docs/protocol.md#websocket `presence`, §6 `online`).
//!
//! The fan-out counts a user's sockets per room on this replica; only the transitions 0→1 and
//! 1→0 reach a [`Presence`], which answers whether the user just came online (or went offline)
//! in the whole cluster, so `join`/`leave` events fire once per user, not per socket or replica.
//!
//! * [`LocalPresence`]: one replica is the whole cluster.
//! * [`PresenceStore`] (cluster mode, stored by [`crate::kv::presence`]): per room and user,
//!   one entry per replica holding a socket, with a 30 s TTL; a user is online while any entry
//!   is live. Replicas refresh their entries every 10 s and sweep expired ones every 5 s (see
//!   [`super::tasks`]), so the users of a crashed replica go offline (with one `leave` event)
//!   within about 30 s.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;

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
    kv::presence::PresenceStore,
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
    /// Refresh this replica's entries (every [`super::tasks::PRESENCE_HEARTBEAT_EVERY`]).
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

/// Cluster mode: the entries live in Redis, one per replica holding a socket, refreshed by
/// the heartbeat and expired by the sweep; a user is online while any replica's entry is.
#[async_trait]
impl Presence for PresenceStore {
    async fn join(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        PresenceStore::join(self, room, user).await
    }

    async fn leave(&self, room: i64, user: i64) -> anyhow::Result<bool> {
        PresenceStore::leave(self, room, user).await
    }

    async fn online(&self, room: i64) -> anyhow::Result<Vec<i64>> {
        PresenceStore::online(self, room).await
    }

    async fn online_counts(&self, rooms: &[i64]) -> anyhow::Result<Vec<i64>> {
        PresenceStore::online_counts(self, rooms).await
    }

    async fn sweep(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        PresenceStore::sweep(self).await
    }

    async fn heartbeat(&self) -> anyhow::Result<()> {
        PresenceStore::heartbeat(self).await
    }
}
