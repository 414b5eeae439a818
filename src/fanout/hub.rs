//! This replica's fan-out: room channels and their subscribers, every open socket by user,
//! and the per-room presence counts. The bus delivers into it ([`Inbound`]); the chat
//! services join sockets to rooms through it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use parking_lot::Mutex;
use sea_orm::DatabaseConnection;
use tokio_util::task::TaskTracker;

use super::{
    room::{self, Item, RoomChannel, RoomInput},
    socket::{CloseReason, SocketCtl},
};
use crate::{
    bus::{Bus, Envelope, Inbound, Kind},
    store,
    telemetry::metrics,
};

/// Fan-out for this replica.
pub(crate) struct Hub {
    db: DatabaseConnection,
    bus: Arc<dyn Bus>,
    /// Room tasks run here (and are waited for at shutdown).
    tasks: TaskTracker,
    rooms: Mutex<HashMap<i64, Arc<RoomChannel>>>,
    /// Every open socket by user, for revocation and shutdown.
    users: Mutex<HashMap<i64, Vec<Arc<SocketCtl>>>>,
    /// Sockets per (room, user) on this replica: presence transitions happen at 0↔1.
    presence: Mutex<HashMap<(i64, i64), usize>>,
    queue_capacity: usize,
    next_socket: AtomicU64,
    /// Each active room's committed `last_seq` at the previous [`Hub::reconcile`].
    seen_committed: Mutex<HashMap<i64, i64>>,
    /// How many times the bus reconnected (events may have been lost each time).
    reconnects: AtomicU64,
}

/// How often [`Hub::reconcile`] runs.
pub(crate) const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Hub {
    /// A hub delivering what `bus` receives (it attaches itself to the bus).
    pub(crate) fn new(
        db: DatabaseConnection,
        bus: Arc<dyn Bus>,
        queue_capacity: usize,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        let hub = Arc::new(Self {
            db,
            bus: bus.clone(),
            tasks,
            rooms: Mutex::default(),
            users: Mutex::default(),
            presence: Mutex::default(),
            queue_capacity,
            next_socket: AtomicU64::new(1),
            seen_committed: Mutex::default(),
            reconnects: AtomicU64::new(0),
        });
        let inbound: std::sync::Weak<dyn Inbound> = Arc::downgrade(&hub) as _;
        bus.attach(inbound);
        hub
    }

    /// Register a new socket (for revocation and shutdown closes).
    pub(crate) fn register_socket(&self, user_id: i64, mux: bool, sid: String) -> Arc<SocketCtl> {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(SocketCtl::new(id, user_id, mux, self.queue_capacity, sid));
        self.users
            .lock()
            .entry(user_id)
            .or_default()
            .push(ctl.clone());
        ctl
    }

    pub(crate) fn unregister_socket(&self, ctl: &SocketCtl) {
        let mut users = self.users.lock();
        if let Some(list) = users.get_mut(&ctl.user_id) {
            list.retain(|c| c.id != ctl.id);
            if list.is_empty() {
                users.remove(&ctl.user_id);
            }
        }
    }

    /// A socket of `user` joined `room`; `true` if it is the user's first here.
    pub(crate) fn presence_inc(&self, room: i64, user: i64) -> bool {
        let mut counts = self.presence.lock();
        let n = counts.entry((room, user)).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A socket of `user` left `room`; `true` if it was the user's last here.
    pub(crate) fn presence_dec(&self, room: i64, user: i64) -> bool {
        let mut counts = self.presence.lock();
        match counts.get_mut(&(room, user)) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                counts.remove(&(room, user));
                true
            }
            None => false,
        }
    }

    /// Every open socket of this replica, at this moment (the drain closes them in batches).
    pub(crate) fn sockets(&self) -> Vec<Arc<SocketCtl>> {
        self.users.lock().values().flatten().cloned().collect()
    }

    /// Close every socket of this replica (shutdown). With [`CloseReason::Restart`] each
    /// socket first sends the acks it owes ([`SocketCtl::restart`]).
    pub(crate) fn close_all(&self, reason: CloseReason) {
        for list in self.users.lock().values() {
            for ctl in list {
                if reason == CloseReason::Restart {
                    ctl.restart();
                } else {
                    ctl.close(reason);
                }
            }
        }
    }

    /// Subscribe `ctl` to `room_id`, paused until [`Hub::resume`]: live frames are buffered
    /// while the socket replays history up to the returned `seq` (the last one this replica
    /// delivered). Every successful join must be matched by one [`Hub::leave`]. `since`: the
    /// client's `since_seq`; no message up to it is sent to the socket, even when this
    /// replica's room is behind the replica the client came from.
    ///
    /// # Errors
    /// If the bus cannot subscribe or the database cannot be read.
    pub(crate) async fn join(
        &self,
        room_id: i64,
        ctl: &Arc<SocketCtl>,
        since: Option<i64>,
    ) -> anyhow::Result<i64> {
        let channel = self.channel(room_id);
        let init = channel
            .init
            .get_or_try_init(|| async {
                // Subscribe first, then read the counter: anything committed after the read
                // arrives on the subscription, anything before it is history.
                self.bus.subscribe(room_id).await?;
                let last = store::rooms::last_seq(&self.db, room_id).await?;
                let mut state = channel.state.lock();
                state.last = state.last.max(last);
                anyhow::Ok(())
            })
            .await;
        if let Err(e) = init {
            self.release(&channel);
            return Err(e);
        }
        channel.init_or_gone.notify_waiters();
        Ok(channel.add(ctl.clone(), since))
    }

    /// The room's channel, created (with its task) by its first subscriber; one reference
    /// taken.
    fn channel(&self, room_id: i64) -> Arc<RoomChannel> {
        let mut rooms = self.rooms.lock();
        let channel = rooms
            .entry(room_id)
            .or_insert_with(|| {
                let (channel, rx) = RoomChannel::new(room_id, self.db.clone(), self.queue_capacity);
                self.tasks.spawn(room::run(channel.clone(), rx));
                channel
            })
            .clone();
        channel.refs.fetch_add(1, Ordering::AcqRel);
        channel
    }

    /// End the replay phase: queue the frames that arrived meanwhile and go live.
    ///
    /// # Errors
    /// While replaying, so much arrived that the buffer overflowed: replay up to the returned
    /// `seq` from the database, then call again. Also when the frames that arrived meanwhile
    /// do not fit in the socket's queue yet, unless `force` (see `RoomChannel::resume`).
    pub(crate) fn resume(&self, room_id: i64, ctl: &SocketCtl, force: bool) -> Result<(), i64> {
        let channel = self.rooms.lock().get(&room_id).cloned();
        channel.map_or(Ok(()), |channel| channel.resume(ctl.id, force))
    }

    /// Unsubscribe `ctl` from `room_id` (the subscriber may already be gone).
    pub(crate) fn leave(&self, room_id: i64, ctl: &SocketCtl) {
        let Some(channel) = self.rooms.lock().get(&room_id).cloned() else {
            return;
        };
        channel.remove(ctl.id);
        // Every successful `join` is matched by exactly one `leave`, also when the hub already
        // dropped the subscriber itself (slow consumer, kick, room deleted): the channel's
        // reference count follows the sessions, so the room is unsubscribed once the last one
        // is gone.
        self.release(&channel);
    }

    /// Compare every active room with the database's counter, in one query: a room still
    /// behind a `seq` that the previous pass had already seen committed (its publish was lost,
    /// or is very late) reads the gap from the database. Run every [`RECONCILE_EVERY`], so
    /// an acknowledged message reaches this replica's sockets within two periods (plus the
    /// read) whatever happened to its publish.
    ///
    /// # Errors
    /// When the database cannot be read (the next pass tries again).
    pub(crate) async fn reconcile(&self) -> Result<(), sea_orm::DbErr> {
        let channels: Vec<Arc<RoomChannel>> = self.rooms.lock().values().cloned().collect();
        if channels.is_empty() {
            self.seen_committed.lock().clear();
            return Ok(());
        }
        let ids: Vec<i64> = channels.iter().map(|c| c.id).collect();
        let committed = store::rooms::last_seqs(&self.db, &ids).await?;
        let mut seen = self.seen_committed.lock();
        for channel in &channels {
            let delivered = channel.state.lock().last;
            if seen
                .get(&channel.id)
                .is_some_and(|&before| delivered < before)
            {
                metrics::reconcile_resync();
                tracing::info!(
                    room = channel.id,
                    delivered,
                    "room behind the database; reading the gap"
                );
                let _ = channel.inbox.send(RoomInput::Resync);
            }
        }
        *seen = committed;
        Ok(())
    }

    /// How many times the bus has reconnected since the start.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Acquire)
    }

    /// Each active room with the users subscribed to it here (distinct).
    pub(crate) fn subscriptions(&self) -> Vec<(i64, Vec<i64>)> {
        let channels: Vec<Arc<RoomChannel>> = self.rooms.lock().values().cloned().collect();
        channels
            .iter()
            .map(|c| {
                let mut users = c.subscriber_users();
                users.sort_unstable();
                users.dedup();
                (c.id, users)
            })
            .collect()
    }

    /// Rooms this replica is subscribed to, for tests and diagnostics.
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.lock().len()
    }

    fn release(&self, channel: &Arc<RoomChannel>) {
        let mut rooms = self.rooms.lock();
        if channel.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            if rooms
                .get(&channel.id)
                .is_some_and(|c| Arc::ptr_eq(c, channel))
            {
                rooms.remove(&channel.id);
            }
            drop(rooms);
            channel.init_or_gone.notify_waiters();
            let _ = channel.inbox.send(RoomInput::Stop);
            self.bus.unsubscribe(channel.id);
        }
    }

    /// Queue a per-user frame on the user's multiplexed sockets here. A socket whose queue
    /// is full is closed as a slow consumer, as for room events.
    fn to_user(&self, env: Envelope) {
        let Some(item) = Item::from_envelope(env) else {
            return;
        };
        let users = self.users.lock();
        for ctl in users.get(&item.header.user).into_iter().flatten() {
            if ctl.mux && !ctl.is_closing() && ctl.outbox.try_push(item.frame.clone()).is_err() {
                ctl.close(CloseReason::SlowConsumer);
            }
        }
    }

    /// Close `user`'s sockets of session `sid` (or all of them): their token is revoked.
    fn revoke(&self, user: i64, sid: Option<&str>, all: bool) {
        let users = self.users.lock();
        for ctl in users.get(&user).into_iter().flatten() {
            if all || sid.is_some_and(|sid| ctl.sid_is(sid)) {
                ctl.close(CloseReason::TokenRevoked);
            }
        }
    }
}

impl Inbound for Hub {
    /// Entry point for every envelope that reaches this replica.
    fn receive(&self, env: Envelope) {
        if env.header.kind == Kind::Revoke {
            self.revoke(env.header.user, env.header.sid.as_deref(), env.header.all);
            return;
        }
        if env.header.kind == Kind::User {
            self.to_user(env);
            return;
        }
        let room = env.header.room;
        let Some(item) = Item::from_envelope(env) else {
            tracing::warn!(room, "envelope without a text frame dropped");
            return;
        };
        if let Some(channel) = self.rooms.lock().get(&room) {
            let _ = channel.inbox.send(RoomInput::Item(item));
        }
    }

    fn active_rooms(&self) -> Vec<i64> {
        self.rooms.lock().keys().copied().collect()
    }

    /// Fill every room's gap from the database (after the bus was down).
    fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Release);
        for channel in self.rooms.lock().values() {
            let _ = channel.inbox.send(RoomInput::Resync);
        }
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
