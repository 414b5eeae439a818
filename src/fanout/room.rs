//! One room on this replica: its subscribers and the ordering rule (docs/protocol.md#websocket).
//!
//! Items for a room go into its channel's inbox and are processed by one task per room, which
//! keeps the invariant: `message` events leave in strictly increasing `seq`, with no gap. An
//! item whose `seq` is ahead of the last one delivered waits briefly for the missing ones
//! (publishes from different replicas can cross in Redis); if they don't come, the gap is read
//! from the database. Duplicates are dropped.
//!
//! Delivery is a `try_queue` of a shared frame into each socket's bounded outbox: no
//! allocation per recipient, one uncontended lock per recipient, and a full queue closes that
//! socket as a slow consumer without slowing anyone else. The room task applies everything its
//! inbox holds (a bus batch) before it wakes the sockets it queued frames for, once each: a
//! socket writes a batch with one system call, and its writer runs once per batch, not once
//! per message.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use sea_orm::DatabaseConnection;
use tokio::{
    sync::{Notify, OnceCell, mpsc},
    time::Instant,
};

use super::socket::{CloseReason, SocketCtl};
use crate::{
    bus::{Envelope, Header, Kind, route},
    domain::event::Frame,
    store,
    telemetry::{self, metrics},
};

/// How long an out-of-order message waits for the ones before it before the gap is read from
/// the database.
const REORDER_WAIT: Duration = Duration::from_millis(40);
/// How long a failed gap fill waits before it is tried again.
const FILL_RETRY: Duration = Duration::from_millis(500);
/// Rows per database page when filling a gap.
const FILL_PAGE: u64 = 500;
/// Most inbox items the room task applies before it wakes the sockets: a long backlog is
/// still written in pieces of this many messages, not held back until it is all applied.
const APPLY_BATCH: usize = 256;

/// An envelope as this replica delivers it: its header and its frame (checked to be text once
/// per replica, not once per recipient).
pub(super) struct Item {
    pub(super) header: Header,
    pub(super) frame: Frame,
}

impl Item {
    /// `None` if the payload is not text (an envelope from a broken publisher).
    pub(super) fn from_envelope(env: Envelope) -> Option<Self> {
        let frame = Frame::try_from(env.payload).ok()?;
        Some(Self {
            header: env.header,
            frame,
        })
    }
}

pub(super) enum RoomInput {
    Item(Item),
    /// Read everything after `last` from the database (after a bus reconnect).
    Resync,
    /// The last subscriber left: stop.
    Stop,
}

struct Subscriber {
    ctl: Arc<SocketCtl>,
    /// The client already has every message up to this `seq` (its `since_seq`): a replica
    /// whose room is behind the one the client came from must not send them again.
    floor: i64,
    /// While the socket replays history, live frames (with their message `seq`, 0 for other
    /// events) wait here (bounded like the queue).
    paused: Option<Vec<(i64, Frame)>>,
    /// The paused buffer overflowed (a long replay in a busy room): what it held was dropped,
    /// and the socket replays further from the database before it goes live.
    overflowed: bool,
    /// Frames were queued for the writer and it has not been woken yet.
    unwoken: bool,
}

impl Subscriber {
    /// Offer a frame (`seq`: the message's, 0 for other events); `false` means drop this
    /// subscriber.
    fn offer(&mut self, seq: i64, frame: &Frame, capacity: usize) -> bool {
        if self.ctl.is_closing() {
            return false;
        }
        if seq != 0 && seq <= self.floor {
            return true; // the client has it
        }
        if let Some(buf) = &mut self.paused {
            // A replaying socket is not a slow consumer: once the buffer is full, the
            // messages it would hold are read from the database instead (see `resume`).
            if buf.len() >= capacity {
                buf.clear();
                self.overflowed = true;
            }
            if !self.overflowed {
                buf.push((seq, frame.clone()));
            }
            return true;
        }
        if self.ctl.outbox.try_queue(frame.clone()).is_ok() {
            self.unwoken = true;
            true
        } else {
            self.ctl.close(CloseReason::SlowConsumer);
            false
        }
    }

    /// Wake the writer for the frames queued since the last wake.
    fn wake(&mut self) {
        if std::mem::take(&mut self.unwoken) {
            self.ctl.outbox.wake_writer();
        }
    }
}

#[derive(Default)]
pub(super) struct RoomState {
    /// Highest `seq` delivered to this replica's sockets.
    pub(super) last: i64,
    subs: Vec<Subscriber>,
    /// Messages that arrived ahead of `last + 1`.
    pending: BTreeMap<i64, Item>,
}

pub(super) struct RoomChannel {
    pub(super) id: i64,
    db: DatabaseConnection,
    /// Frames a socket may have queued (the paused buffer is bounded alike).
    capacity: usize,
    pub(super) inbox: mpsc::UnboundedSender<RoomInput>,
    pub(super) init: OnceCell<()>,
    /// Notified when `init` is set or the last reference goes (the room task waits on it).
    pub(super) init_or_gone: Notify,
    pub(super) state: Mutex<RoomState>,
    /// Joined or joining sockets; the channel goes away when this drops to 0.
    pub(super) refs: AtomicU64,
}

impl RoomChannel {
    pub(super) fn new(
        id: i64,
        db: DatabaseConnection,
        capacity: usize,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<RoomInput>) {
        let (inbox, rx) = mpsc::unbounded_channel();
        let channel = Arc::new(Self {
            id,
            db,
            capacity,
            inbox,
            init: OnceCell::new(),
            init_or_gone: Notify::new(),
            state: Mutex::default(),
            refs: AtomicU64::new(0),
        });
        (channel, rx)
    }

    /// Add a socket, paused until [`RoomChannel::resume`]; the `seq` it replays up to.
    /// `since`: the client's `since_seq` (it is sent no message up to it).
    pub(super) fn add(&self, ctl: Arc<SocketCtl>, since: Option<i64>) -> i64 {
        let mut state = self.state.lock();
        state.subs.push(Subscriber {
            ctl,
            floor: since.unwrap_or(0),
            paused: Some(Vec::new()),
            overflowed: false,
            unwoken: false,
        });
        state.last
    }

    /// End a socket's replay phase: queue the frames that arrived meanwhile and go live.
    ///
    /// # Errors
    /// If the paused buffer overflowed meanwhile, or (unless `force`) its frames do not fit in
    /// the socket's queue (still full of the replay it has not written yet): the `seq` to
    /// replay up to from the database before calling again (the socket stays paused, with an
    /// empty buffer). A replay waits for room in the queue; live frames cannot, so going live
    /// into a full queue would close a socket that is reading as fast as it can.
    pub(super) fn resume(&self, socket: u64, force: bool) -> Result<(), i64> {
        let mut state = self.state.lock();
        let last = state.last;
        let Some(sub) = state.subs.iter_mut().find(|s| s.ctl.id == socket) else {
            return Ok(());
        };
        let buffered = sub.paused.as_ref().map_or(0, Vec::len);
        if sub.overflowed || (!force && buffered > sub.ctl.outbox.free()) {
            sub.overflowed = false;
            if let Some(buf) = &mut sub.paused {
                buf.clear();
            }
            return Err(last);
        }
        if let Some(buf) = sub.paused.take() {
            for (seq, frame) in buf {
                if !sub.offer(seq, &frame, self.capacity) {
                    break;
                }
            }
        }
        sub.wake();
        Ok(())
    }

    /// The users with a socket subscribed here (with repeats).
    pub(super) fn subscriber_users(&self) -> Vec<i64> {
        self.state
            .lock()
            .subs
            .iter()
            .map(|s| s.ctl.user_id)
            .collect()
    }

    pub(super) fn remove(&self, socket: u64) {
        self.state.lock().subs.retain_mut(|s| {
            if s.ctl.id == socket {
                s.wake();
                return false;
            }
            true
        });
    }

    /// Wake every socket that frames were queued for: once per batch, not once per frame.
    fn wake_all(state: &mut RoomState) {
        for sub in &mut state.subs {
            sub.wake();
        }
    }

    /// Wait until the channel knows its starting `seq` (set by the first `join`; a failed one
    /// is retried by the next joiner). `false` if the last subscriber left meanwhile.
    async fn initialised(&self) -> bool {
        while self.init.get().is_none() {
            let notified = self.init_or_gone.notified();
            tokio::pin!(notified);
            // Registered before the checks, so a notification between them is not lost.
            notified.as_mut().enable();
            if self.init.get().is_some() {
                break;
            }
            if self.refs.load(Ordering::Acquire) == 0 {
                return false;
            }
            notified.await;
        }
        true
    }

    /// Apply the ordering rule to a batch of items (one or more, in arrival order), then wake
    /// the sockets they were queued for; `gap` is when to read a gap from the database.
    fn apply(&self, items: impl IntoIterator<Item = Item>, gap: &mut Option<Instant>) {
        let mut state = self.state.lock();
        for item in items {
            self.apply_one(&mut state, item, gap);
        }
        Self::wake_all(&mut state);
    }

    /// The ordering rule for one item; the caller wakes the sockets.
    fn apply_one(&self, state: &mut RoomState, item: Item, gap: &mut Option<Instant>) {
        match item.header.kind {
            Kind::Message => {
                let seq = item.header.seq;
                if seq <= state.last {
                    return; // duplicate (own echo after a fill, or replayed)
                }
                if seq == state.last + 1 {
                    state.last = seq;
                    self.deliver(state, &item);
                    self.drain_pending(state);
                } else {
                    state.pending.insert(seq, item);
                }
                if state.pending.is_empty() {
                    *gap = None;
                } else if gap.is_none() {
                    *gap = Some(Instant::now() + REORDER_WAIT);
                }
            }
            Kind::Event => self.deliver(state, &item),
            Kind::RoomDeleted => self.deliver_close(state, &item, CloseReason::RoomDeleted),
            Kind::Kick => self.deliver_close(state, &item, CloseReason::Removed),
            Kind::Revoke | Kind::User => {}
        }
    }

    fn deliver(&self, state: &mut RoomState, item: &Item) {
        // The delivery joins the trace in which the message was accepted, on whichever replica.
        let message = item.header.kind == Kind::Message;
        let span = if message && telemetry::tracing_enabled() {
            let span = tracing::info_span!(
                "message.deliver",
                room_id = item.header.room,
                seq = item.header.seq,
                recipients = tracing::field::Empty
            );
            telemetry::span_from_traceparent(span, item.header.tp.as_deref())
        } else {
            tracing::Span::none()
        };
        let _enter = span.enter();
        let exclude = if item.header.kind == Kind::Event {
            item.header.user
        } else {
            0
        };
        let seq = if message { item.header.seq } else { 0 };
        let mut delivered = 0u64;
        state.subs.retain_mut(|sub| {
            if exclude != 0 && sub.ctl.user_id == exclude {
                return true;
            }
            let keep = sub.offer(seq, &item.frame, self.capacity);
            delivered += u64::from(keep);
            if !keep {
                sub.wake();
            }
            keep
        });
        if message {
            span.record("recipients", delivered);
            metrics::delivered(delivered, item.header.at);
        }
    }

    /// Deliver the frame, then close the recipients (a kick reaches only its user). On `/ws`
    /// only the room is dropped: the socket stays open for its other rooms.
    fn deliver_close(&self, state: &mut RoomState, item: &Item, reason: CloseReason) {
        let only_user = (reason == CloseReason::Removed).then_some(item.header.user);
        state.subs.retain_mut(|sub| {
            if only_user.is_some_and(|u| u != sub.ctl.user_id) {
                return true;
            }
            if !item.frame.is_empty() {
                sub.offer(0, &item.frame, self.capacity);
            }
            // Leaving the list: what was queued for it must not wait for a later wake.
            sub.wake();
            if sub.ctl.mux {
                sub.ctl.drop_room(self.id);
            } else {
                sub.ctl.close(reason);
            }
            false
        });
    }

    fn drain_pending(&self, state: &mut RoomState) {
        while let Some(entry) = state.pending.first_entry() {
            let seq = *entry.key();
            if seq <= state.last {
                entry.remove();
            } else if seq == state.last + 1 {
                let item = entry.remove();
                state.last = seq;
                self.deliver(state, &item);
            } else {
                break;
            }
        }
    }

    /// Read every message after `last` from the database and deliver it, then whatever was
    /// pending. The state lock is never held across the query.
    async fn fill_gap(&self) -> anyhow::Result<()> {
        metrics::gap_fill();
        loop {
            let after = self.state.lock().last;
            let rows =
                store::messages::after_seq(&self.db, self.id, after, FILL_PAGE, None).await?;
            let full_page = rows.len() as u64 == FILL_PAGE;
            let mut state = self.state.lock();
            for row in rows {
                if row.seq <= state.last {
                    continue;
                }
                state.last = row.seq;
                // A message deleted before it was delivered only advances the counter.
                if let Some(item) = row
                    .message
                    .and_then(|msg| Item::from_envelope(route::message(self.id, &msg)))
                {
                    self.deliver(&mut state, &item);
                }
            }
            self.drain_pending(&mut state);
            if !full_page {
                self.skip_hole(&mut state);
                Self::wake_all(&mut state);
                return Ok(());
            }
            Self::wake_all(&mut state);
        }
    }

    /// The database has nothing between `last` and the first pending message: the room's
    /// counter moved without a row (a rolled-back batch). Skip ahead rather than wait forever.
    fn skip_hole(&self, state: &mut RoomState) {
        if let Some((&first, _)) = state.pending.first_key_value()
            && first > state.last + 1
        {
            tracing::warn!(
                room = self.id,
                from = state.last,
                to = first,
                "seq hole in database"
            );
            state.last = first - 1;
            self.drain_pending(state);
        }
    }

    /// After a fill: retry a failed one soon, or wait for what is still pending.
    async fn resync(&self, gap: &mut Option<Instant>) {
        if let Err(e) = self.fill_gap().await {
            tracing::warn!(room = self.id, error = %e, "gap fill failed; retrying");
            *gap = Some(Instant::now() + FILL_RETRY);
        } else if !self.state.lock().pending.is_empty() {
            *gap = Some(Instant::now() + REORDER_WAIT);
        }
    }
}

/// The room's task: applies the ordering rule and fans out, until the last subscriber left.
pub(super) async fn run(channel: Arc<RoomChannel>, mut inbox: mpsc::UnboundedReceiver<RoomInput>) {
    let mut gap: Option<Instant> = None;
    // Reused for every batch (no allocation per wake-up).
    let mut items = Vec::new();
    loop {
        let input = match gap {
            Some(deadline) => tokio::select! {
                input = inbox.recv() => input,
                () = tokio::time::sleep_until(deadline) => {
                    gap = None;
                    Some(RoomInput::Resync)
                }
            },
            None => inbox.recv().await,
        };
        let Some(input) = input else { break };
        // Until the channel knows its starting `seq`, keep items queued.
        if !channel.initialised().await {
            return;
        }
        match input {
            RoomInput::Item(item) => {
                // Everything already in the inbox (a bus batch, usually) is applied under one
                // lock, and each socket is woken once for all of it.
                items.push(item);
                let mut next = None;
                while items.len() < APPLY_BATCH {
                    match inbox.try_recv() {
                        Ok(RoomInput::Item(item)) => items.push(item),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                channel.apply(items.drain(..), &mut gap);
                match next {
                    Some(RoomInput::Resync) => channel.resync(&mut gap).await,
                    Some(RoomInput::Item(_) | RoomInput::Stop) | None => {}
                }
            }
            RoomInput::Stop => {}
            RoomInput::Resync => channel.resync(&mut gap).await,
        }
        if channel.refs.load(Ordering::Acquire) == 0 && inbox.is_empty() {
            break;
        }
    }
}

#[cfg(test)]
#[path = "room_tests.rs"]
mod tests;
