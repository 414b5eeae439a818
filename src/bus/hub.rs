//! This replica's fan-out: room channels, their subscribers and the ordering rule.
//!
//! One [`RoomChannel`] per room with local sockets, created with the first subscriber and
//! dropped with the last. Envelopes for a room go into the channel's inbox and are processed
//! by one task per room, which keeps the invariant of SPEC §8: `message` events leave in
//! strictly increasing `seq`, with no gap. An envelope whose `seq` is ahead of the last one
//! delivered waits briefly for the missing ones (publishes from different replicas can cross
//! in Redis); if they don't come, the gap is read from the database. Duplicates are dropped.
//!
//! Delivery is a `try_push` of a shared frame into each socket's bounded [`Outbox`]: no
//! allocation per recipient (the frame's bytes are shared), one uncontended lock per
//! recipient, and a full queue closes that socket with 4429 without slowing anyone else.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::task::AtomicWaker;
use sea_orm::DatabaseConnection;
use tokio::sync::{OnceCell, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Bus, Envelope, Kind, outbox::Outbox};
use crate::{store, telemetry::metrics};

/// How long an out-of-order message waits for the ones before it before the gap is read from
/// the database.
const REORDER_WAIT: Duration = Duration::from_millis(40);
/// Rows per database page when filling a gap or replaying.
const FILL_PAGE: u64 = 500;

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_RESTART: u16 = 1012;
pub const CLOSE_TOKEN: u16 = 4001;
pub const CLOSE_REMOVED: u16 = 4003;
pub const CLOSE_ROOM_DELETED: u16 = 4404;
pub const CLOSE_SLOW: u16 = 4429;

/// The socket is closing: nothing more can be queued.
#[derive(Debug)]
pub struct SocketClosing;

/// [`SocketCtl::closed`] for the session's reader task.
pub const READER: usize = 0;
/// [`SocketCtl::closed`] for the session's writer task.
pub const WRITER: usize = 1;

/// The shared handle of one socket: its queue, who it is, and how to close it.
pub struct SocketCtl {
    pub id: u64,
    pub user_id: i64,
    /// The multiplexed `/ws` endpoint: a kick or room deletion drops that room, not the socket.
    pub mux: bool,
    /// Frames waiting for the socket's writer.
    pub outbox: Outbox,
    close_code: AtomicU16,
    /// The session's reader and writer tasks, woken by [`SocketCtl::close`]. Two atomic
    /// wakers instead of a cancellation token: waiting for the close is polled on every frame,
    /// and an atomic waker costs no lock per poll.
    wakers: [AtomicWaker; 2],
    /// The session family and token id the socket is authenticated by (replaced by `auth`).
    pub auth: Mutex<(String, String)>,
    /// Last time anything arrived from the peer, seconds since the epoch.
    pub last_seen: AtomicI64,
}

impl SocketCtl {
    pub fn new(
        id: u64,
        user_id: i64,
        mux: bool,
        queue_capacity: usize,
        sid: String,
        jti: String,
    ) -> Self {
        Self {
            id,
            user_id,
            mux,
            outbox: Outbox::new(queue_capacity),
            close_code: AtomicU16::new(0),
            wakers: [AtomicWaker::new(), AtomicWaker::new()],
            auth: Mutex::new((sid, jti)),
            last_seen: AtomicI64::new(chrono::Utc::now().timestamp()),
        }
    }

    /// Ask the socket to close with `code`. The first code wins.
    pub fn close(&self, code: u16) {
        if self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if code == CLOSE_SLOW {
                metrics::slow_consumer_closed();
            }
            for waker in &self.wakers {
                waker.wake();
            }
            self.outbox.wake_all();
        }
    }

    /// Queue a frame of the session's own (an answer, a replayed message), waiting while the
    /// queue is full.
    ///
    /// # Errors
    /// [`SocketClosing`] once the socket is asked to close (its writer may be gone).
    pub async fn push(&self, frame: Utf8Bytes) -> Result<(), SocketClosing> {
        let mut frame = Some(frame);
        std::future::poll_fn(|cx| {
            if self.is_closing() {
                return std::task::Poll::Ready(Err(SocketClosing));
            }
            match self.outbox.poll_push(cx, &mut frame) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Ok(())),
                // Re-check: a close after the first check may have found no waker to wake.
                std::task::Poll::Pending if self.is_closing() => {
                    std::task::Poll::Ready(Err(SocketClosing))
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await
    }

    /// Resolves once the socket is asked to close. `side` is [`READER`] or [`WRITER`]: each
    /// task waits with its own waker.
    pub fn closed(&self, side: usize) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_closing() {
                return std::task::Poll::Ready(());
            }
            self.wakers[side].register(cx.waker());
            // Re-check: a close between the first check and the registration woke nobody.
            if self.close_code.load(Ordering::Acquire) != 0 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Cheaper than asking the token: one atomic load, on the per-recipient path.
    pub fn is_closing(&self) -> bool {
        self.close_code.load(Ordering::Relaxed) != 0
    }

    pub fn close_code(&self) -> u16 {
        match self.close_code.load(Ordering::Acquire) {
            0 => CLOSE_NORMAL,
            c => c,
        }
    }

    pub fn touch(&self) {
        self.last_seen
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }
}

struct Subscriber {
    ctl: Arc<SocketCtl>,
    /// While the socket replays history, live frames wait here (bounded like the queue).
    paused: Option<Vec<Utf8Bytes>>,
}

impl Subscriber {
    /// Offer a frame; `false` means drop this subscriber.
    fn offer(&mut self, frame: &Utf8Bytes, capacity: usize) -> bool {
        if self.ctl.is_closing() {
            return false;
        }
        if let Some(buf) = &mut self.paused {
            if buf.len() >= capacity {
                self.ctl.close(super::hub::CLOSE_SLOW);
                return false;
            }
            buf.push(frame.clone());
            return true;
        }
        if self.ctl.outbox.try_push(frame.clone()).is_ok() {
            true
        } else {
            self.ctl.close(CLOSE_SLOW);
            false
        }
    }
}

#[derive(Default)]
struct RoomState {
    /// Highest `seq` delivered to this replica's sockets.
    last: i64,
    subs: Vec<Subscriber>,
    /// Messages that arrived ahead of `last + 1`.
    pending: BTreeMap<i64, Envelope>,
}

struct RoomChannel {
    id: i64,
    inbox: mpsc::UnboundedSender<RoomInput>,
    init: OnceCell<()>,
    /// Notified when `init` is set or the last reference goes (the room task waits on it).
    init_or_gone: tokio::sync::Notify,
    state: Mutex<RoomState>,
    /// Joined or joining sockets; the channel goes away when this drops to 0.
    refs: AtomicU64,
}

enum RoomInput {
    Envelope(Envelope),
    /// Read everything after `last` from the database (after a bus reconnect).
    Resync,
    /// The last subscriber left: stop.
    Stop,
}

/// Fan-out for this replica.
pub struct Hub {
    db: DatabaseConnection,
    rooms: Mutex<HashMap<i64, Arc<RoomChannel>>>,
    /// Every open socket by user, for revocation and shutdown.
    users: Mutex<HashMap<i64, Vec<Arc<SocketCtl>>>>,
    /// Sockets per (room, user) on this replica: presence transitions happen at 0↔1.
    presence: Mutex<HashMap<(i64, i64), usize>>,
    queue_capacity: usize,
    flush_interval: Duration,
    next_socket: AtomicU64,
}

/// Proof of a room subscription; hand it back to [`Hub::leave`].
pub struct Joined {
    pub room_id: i64,
    /// The last `seq` this replica had delivered when the socket joined: the socket replays
    /// history up to here, and receives everything after it live.
    pub last_seq: i64,
}

impl Hub {
    pub fn new(
        db: DatabaseConnection,
        queue_capacity: usize,
        flush_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            rooms: Mutex::default(),
            users: Mutex::default(),
            presence: Mutex::default(),
            queue_capacity,
            flush_interval,
            next_socket: AtomicU64::new(1),
        })
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// See `WS_FLUSH_INTERVAL_MS`.
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// Register a new socket (for revocation and shutdown closes).
    pub fn register_socket(
        &self,
        user_id: i64,
        mux: bool,
        sid: String,
        jti: String,
    ) -> Arc<SocketCtl> {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(SocketCtl::new(
            id,
            user_id,
            mux,
            self.queue_capacity,
            sid,
            jti,
        ));
        lock(&self.users)
            .entry(user_id)
            .or_default()
            .push(ctl.clone());
        ctl
    }

    pub fn unregister_socket(&self, ctl: &SocketCtl) {
        let mut users = lock(&self.users);
        if let Some(list) = users.get_mut(&ctl.user_id) {
            list.retain(|c| c.id != ctl.id);
            if list.is_empty() {
                users.remove(&ctl.user_id);
            }
        }
    }

    /// A socket of `user` joined `room`; `true` if it is the user's first here.
    pub fn presence_inc(&self, room: i64, user: i64) -> bool {
        let mut counts = lock(&self.presence);
        let n = counts.entry((room, user)).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A socket of `user` left `room`; `true` if it was the user's last here.
    pub fn presence_dec(&self, room: i64, user: i64) -> bool {
        let mut counts = lock(&self.presence);
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

    /// Close every socket of this replica (shutdown: 1012).
    pub fn close_all(&self, code: u16) {
        for list in lock(&self.users).values() {
            for ctl in list {
                ctl.close(code);
            }
        }
    }

    /// Subscribe `ctl` to `room_id`, paused until [`Hub::resume`]: live frames are buffered
    /// while the socket replays history up to the returned `last_seq`.
    ///
    /// # Errors
    /// If the bus cannot subscribe or the database cannot be read.
    pub async fn join(
        self: &Arc<Self>,
        bus: &Arc<dyn Bus>,
        room_id: i64,
        ctl: &Arc<SocketCtl>,
    ) -> anyhow::Result<Joined> {
        let channel = {
            let mut rooms = lock(&self.rooms);
            let channel = rooms
                .entry(room_id)
                .or_insert_with(|| {
                    let (inbox, rx) = mpsc::unbounded_channel();
                    let channel = Arc::new(RoomChannel {
                        id: room_id,
                        inbox,
                        init: OnceCell::new(),
                        init_or_gone: tokio::sync::Notify::new(),
                        state: Mutex::default(),
                        refs: AtomicU64::new(0),
                    });
                    tokio::spawn(room_task(self.clone(), channel.clone(), rx));
                    channel
                })
                .clone();
            channel.refs.fetch_add(1, Ordering::AcqRel);
            channel
        };
        let init = channel
            .init
            .get_or_try_init(|| async {
                // Subscribe first, then read the counter: anything committed after the read
                // arrives on the subscription, anything before it is history.
                bus.subscribe(room_id).await?;
                let last = store::rooms::last_seq(&self.db, room_id).await?;
                let mut state = lock(&channel.state);
                state.last = state.last.max(last);
                anyhow::Ok(())
            })
            .await;
        if let Err(e) = init {
            self.release(bus, &channel);
            return Err(e);
        }
        channel.init_or_gone.notify_waiters();
        let mut state = lock(&channel.state);
        state.subs.push(Subscriber {
            ctl: ctl.clone(),
            paused: Some(Vec::new()),
        });
        Ok(Joined {
            room_id,
            last_seq: state.last,
        })
    }

    /// End the replay phase: queue the frames that arrived meanwhile and go live.
    pub fn resume(&self, room_id: i64, ctl: &SocketCtl) {
        let Some(channel) = lock(&self.rooms).get(&room_id).cloned() else {
            return;
        };
        let mut state = lock(&channel.state);
        let capacity = self.queue_capacity;
        if let Some(sub) = state.subs.iter_mut().find(|s| s.ctl.id == ctl.id)
            && let Some(buf) = sub.paused.take()
        {
            for frame in buf {
                if !sub.offer(&frame, capacity) {
                    break;
                }
            }
        }
    }

    /// Unsubscribe `ctl` from `room_id` (the subscriber may already be gone).
    pub fn leave(&self, bus: &Arc<dyn Bus>, room_id: i64, ctl: &SocketCtl) {
        let Some(channel) = lock(&self.rooms).get(&room_id).cloned() else {
            return;
        };
        lock(&channel.state).subs.retain(|s| s.ctl.id != ctl.id);
        // Every successful `join` is matched by exactly one `leave`, also when the hub already
        // dropped the subscriber itself (4429, kick, room deleted): the channel's reference
        // count follows the sessions, so the room is unsubscribed once the last one is gone.
        self.release(bus, &channel);
    }

    /// Rooms this replica is subscribed to, for tests and diagnostics.
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    fn release(&self, bus: &Arc<dyn Bus>, channel: &Arc<RoomChannel>) {
        let mut rooms = lock(&self.rooms);
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
            bus.unsubscribe(channel.id);
        }
    }

    /// Rooms with local subscribers (the Redis bus resubscribes them after a reconnect).
    pub fn active_rooms(&self) -> Vec<i64> {
        lock(&self.rooms).keys().copied().collect()
    }

    /// Fill every room's gap from the database (after the bus was down).
    pub fn resync_all(&self) {
        for channel in lock(&self.rooms).values() {
            let _ = channel.inbox.send(RoomInput::Resync);
        }
    }

    /// Entry point for every envelope that reaches this replica.
    pub fn dispatch(&self, env: Envelope) {
        match env.header.kind {
            Kind::Revoke => self.revoke(&env),
            Kind::Probe => {}
            _ => {
                if let Some(channel) = lock(&self.rooms).get(&env.header.room) {
                    let _ = channel.inbox.send(RoomInput::Envelope(env));
                }
            }
        }
    }

    fn revoke(&self, env: &Envelope) {
        let users = lock(&self.users);
        let Some(list) = users.get(&env.header.user) else {
            return;
        };
        for ctl in list {
            let matches = env.header.all || {
                let auth = lock(&ctl.auth);
                env.header.sid.as_deref() == Some(auth.0.as_str())
            };
            if matches {
                ctl.close(CLOSE_TOKEN);
            }
        }
    }

    fn deliver(&self, state: &mut RoomState, env: &Envelope) {
        // The delivery joins the trace in which the message was accepted, on whichever replica.
        let span = if crate::telemetry::tracing_enabled() && env.header.kind == Kind::Message {
            let span = tracing::info_span!(
                "message.deliver",
                room_id = env.header.room,
                seq = env.header.seq,
                recipients = tracing::field::Empty
            );
            crate::telemetry::span_from_traceparent(span, env.header.tp.as_deref())
        } else {
            tracing::Span::none()
        };
        let _enter = span.enter();
        let capacity = self.queue_capacity;
        let exclude = if env.header.kind == Kind::Event {
            env.header.user
        } else {
            0
        };
        let mut delivered = 0u64;
        state.subs.retain_mut(|sub| {
            if exclude != 0 && sub.ctl.user_id == exclude {
                return true;
            }
            let keep = sub.offer(&env.frame, capacity);
            delivered += u64::from(keep);
            keep
        });
        if env.header.kind == Kind::Message {
            span.record("recipients", delivered);
            metrics::delivered(delivered, env.header.at);
        }
    }

    fn deliver_close(
        &self,
        state: &mut RoomState,
        env: &Envelope,
        code: u16,
        only_user: Option<i64>,
    ) {
        let capacity = self.queue_capacity;
        state.subs.retain_mut(|sub| {
            if only_user.is_some_and(|u| u != sub.ctl.user_id) {
                return true;
            }
            if !env.frame.is_empty() {
                sub.offer(&env.frame, capacity);
            }
            if !sub.ctl.mux {
                sub.ctl.close(code);
            }
            false
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain data; go on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One task per room channel: applies the ordering rule and fans out.
async fn room_task(
    hub: Arc<Hub>,
    channel: Arc<RoomChannel>,
    mut inbox: mpsc::UnboundedReceiver<RoomInput>,
) {
    let mut gap_deadline: Option<tokio::time::Instant> = None;
    loop {
        let input = match gap_deadline {
            Some(deadline) => tokio::select! {
                input = inbox.recv() => input,
                () = tokio::time::sleep_until(deadline) => {
                    gap_deadline = None;
                    Some(RoomInput::Resync)
                }
            },
            None => inbox.recv().await,
        };
        let Some(input) = input else { break };
        // Until the channel knows its starting `seq`, keep envelopes queued.
        // (It is in progress in `join`; a failed one is retried by the next joiner.)
        while channel.init.get().is_none() {
            let notified = channel.init_or_gone.notified();
            tokio::pin!(notified);
            // Registered before the checks, so a notification between them is not lost.
            notified.as_mut().enable();
            if channel.init.get().is_some() {
                break;
            }
            if channel.refs.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
        match input {
            RoomInput::Envelope(env) => {
                let mut state = lock(&channel.state);
                match env.header.kind {
                    Kind::Message => {
                        let seq = env.header.seq;
                        if seq <= state.last {
                            continue; // duplicate (own echo after a fill, or replayed)
                        }
                        if seq == state.last + 1 {
                            state.last = seq;
                            hub.deliver(&mut state, &env);
                            drain_pending(&hub, &mut state);
                        } else {
                            state.pending.insert(seq, env);
                        }
                        if state.pending.is_empty() {
                            gap_deadline = None;
                        } else if gap_deadline.is_none() {
                            gap_deadline = Some(tokio::time::Instant::now() + REORDER_WAIT);
                        }
                    }
                    Kind::Event => hub.deliver(&mut state, &env),
                    Kind::RoomDeleted => {
                        hub.deliver_close(&mut state, &env, CLOSE_ROOM_DELETED, None)
                    }
                    Kind::Kick => {
                        hub.deliver_close(&mut state, &env, CLOSE_REMOVED, Some(env.header.user))
                    }
                    Kind::Revoke | Kind::Probe => {}
                }
            }
            RoomInput::Stop => {}
            RoomInput::Resync => {
                if let Err(e) = fill_gap(&hub, &channel).await {
                    tracing::warn!(room = channel.id, error = %e, "gap fill failed; retrying");
                    gap_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                } else if !lock(&channel.state).pending.is_empty() {
                    gap_deadline = Some(tokio::time::Instant::now() + REORDER_WAIT);
                }
            }
        }
        if channel.refs.load(Ordering::Acquire) == 0 && inbox.is_empty() {
            break;
        }
    }
}

fn drain_pending(hub: &Hub, state: &mut RoomState) {
    while let Some(entry) = state.pending.first_entry() {
        let seq = *entry.key();
        if seq <= state.last {
            entry.remove();
        } else if seq == state.last + 1 {
            let env = entry.remove();
            state.last = seq;
            hub.deliver(state, &env);
        } else {
            break;
        }
    }
}

/// Read every message after `last` from the database and deliver it, then whatever was
/// pending. Runs without holding the state lock across the query.
async fn fill_gap(hub: &Hub, channel: &RoomChannel) -> anyhow::Result<()> {
    metrics::gap_fill();
    loop {
        let after = lock(&channel.state).last;
        let rows = store::messages::after_seq(&hub.db, channel.id, after, FILL_PAGE).await?;
        let full_page = rows.len() as u64 == FILL_PAGE;
        {
            let mut state = lock(&channel.state);
            for row in rows {
                if row.seq <= state.last {
                    continue;
                }
                state.last = row.seq;
                // A message deleted before it was delivered only advances the counter.
                if let Some(msg) = row.message {
                    let env = crate::ws::protocol::message_envelope(channel.id, &msg);
                    hub.deliver(&mut state, &env);
                }
            }
            drain_pending(hub, &mut state);
            if !full_page {
                if let Some((&first, _)) = state.pending.first_key_value()
                    && first > state.last + 1
                {
                    // The database has nothing between `last` and the first pending message:
                    // the room's counter moved without a row (a rolled-back batch). Skip ahead
                    // rather than wait forever.
                    tracing::warn!(
                        room = channel.id,
                        from = state.last,
                        to = first,
                        "seq hole in database"
                    );
                    state.last = first - 1;
                    drain_pending(hub, &mut state);
                }
                return Ok(());
            }
        }
    }
}
