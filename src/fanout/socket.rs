//! The shared handle of one socket: its outgoing queue, who it is, and *why* it closes.
//!
//! The fan-out decides that a socket must close and records a [`CloseReason`]; the transport
//! (`ws`) turns the reason into a close code and sends the close frame.

use std::{
    sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    task::Poll,
};

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::outbox::Outbox;
use crate::{domain::event::Frame, telemetry::metrics};

/// Why a socket closes. The first reason recorded wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum CloseReason {
    /// The peer closed, or the session ended normally.
    Normal = 1,
    /// The peer vanished: a read or write failed, or it was silent too long.
    GoingAway,
    /// Too many rate-limited frames in a row.
    Flood,
    /// A frame above the size limit.
    TooBig,
    /// A text frame that is not UTF-8.
    InvalidData,
    /// This replica is shutting down (or could not set the session up): reconnect.
    Restart,
    /// The access token expired or was revoked.
    TokenRevoked,
    /// The user was removed from the socket's room.
    Removed,
    /// The socket's room was deleted.
    RoomDeleted,
    /// The socket's queue overflowed: resume with `since_seq`.
    SlowConsumer,
}

impl CloseReason {
    const ALL: [Self; 10] = [
        Self::Normal,
        Self::GoingAway,
        Self::Flood,
        Self::TooBig,
        Self::InvalidData,
        Self::Restart,
        Self::TokenRevoked,
        Self::Removed,
        Self::RoomDeleted,
        Self::SlowConsumer,
    ];

    fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// The socket is closing: nothing more can be queued.
#[derive(Debug)]
pub(crate) struct SocketClosing;

/// Which of the session's two tasks waits in [`SocketCtl::closed`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Reader = 0,
    Writer = 1,
}

/// The shared handle of one socket.
pub(crate) struct SocketCtl {
    pub(crate) id: u64,
    pub(crate) user_id: i64,
    /// The multiplexed `/ws` endpoint: a kick or room deletion drops that room, not the socket.
    pub(crate) mux: bool,
    /// Frames waiting for the socket's writer.
    pub(crate) outbox: Outbox,
    /// 0 while open, else a [`CloseReason`].
    close: AtomicU8,
    /// Shutdown asked the reader to stop, send the answers it owes, then close (1012).
    restarting: AtomicBool,
    /// The session's reader and writer tasks, woken by [`SocketCtl::close`]. Two atomic
    /// wakers instead of a cancellation token: waiting for the close is polled on every frame,
    /// and an atomic waker costs no lock per poll.
    wakers: [AtomicWaker; 2],
    /// The session family the socket is authenticated by (replaced by an `auth` frame).
    sid: Mutex<String>,
    /// Rooms the fan-out dropped this multiplexed socket from (its user was removed, or the
    /// room deleted), until the session forgets them.
    dropped: Mutex<Vec<i64>>,
    opened: Instant,
    /// Last time anything arrived from the peer, in milliseconds since `opened`.
    last_seen_ms: AtomicU64,
}

impl SocketCtl {
    pub(crate) fn new(id: u64, user_id: i64, mux: bool, capacity: usize, sid: String) -> Self {
        Self {
            id,
            user_id,
            mux,
            outbox: Outbox::new(capacity),
            close: AtomicU8::new(0),
            restarting: AtomicBool::new(false),
            wakers: [AtomicWaker::new(), AtomicWaker::new()],
            sid: Mutex::new(sid),
            dropped: Mutex::default(),
            opened: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
        }
    }

    /// Ask the socket to close. The first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        if self
            .close
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if reason == CloseReason::SlowConsumer {
                metrics::slow_consumer_closed();
            }
            for waker in &self.wakers {
                waker.wake();
            }
            self.outbox.wake_all();
        }
    }

    /// Shutdown: the reader stops reading, queues the answers (acks) already earned by what
    /// it read, then closes the socket with [`CloseReason::Restart`]. A socket whose session
    /// never reaches its read loop is closed by the session itself.
    pub(crate) fn restart(&self) {
        self.restarting.store(true, Ordering::Release);
        self.wakers[Side::Reader as usize].wake();
    }

    fn done(&self, side: Side) -> bool {
        self.close.load(Ordering::Acquire) != 0
            || (matches!(side, Side::Reader) && self.restarting.load(Ordering::Acquire))
    }

    /// Queue a frame of the session's own (an answer, a replayed message), waiting while the
    /// queue is full.
    ///
    /// # Errors
    /// [`SocketClosing`] once the socket is asked to close (its writer may be gone).
    pub(crate) async fn push(&self, frame: Frame) -> Result<(), SocketClosing> {
        let mut frame = Some(frame);
        std::future::poll_fn(|cx| {
            if self.is_closing() {
                return Poll::Ready(Err(SocketClosing));
            }
            match self.outbox.poll_push(cx, &mut frame) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                // Re-check: a close after the first check may have found no waker to wake.
                Poll::Pending if self.is_closing() => Poll::Ready(Err(SocketClosing)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Resolves once the socket is asked to close (for the reader: or to restart, see
    /// [`SocketCtl::restart`]); each task waits with its own waker.
    pub(crate) fn closed(&self, side: Side) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.done(side) {
                return Poll::Ready(());
            }
            self.wakers[side as usize].register(cx.waker());
            // Re-check: a close between the first check and the registration woke nobody.
            if self.done(side) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// One atomic load, on the per-recipient path.
    pub(crate) fn is_closing(&self) -> bool {
        self.close.load(Ordering::Relaxed) != 0
    }

    /// Why the socket closes (`Normal` if nobody said).
    pub(crate) fn close_reason(&self) -> CloseReason {
        CloseReason::from_u8(self.close.load(Ordering::Acquire)).unwrap_or(CloseReason::Normal)
    }

    /// Something arrived from the peer.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// When something last arrived from the peer (the socket's opening, at first).
    pub(crate) fn last_seen(&self) -> Instant {
        self.opened + std::time::Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn sid_is(&self, sid: &str) -> bool {
        *self.sid.lock() == sid
    }

    /// The fan-out dropped this (multiplexed) socket from `room`: the session must stop
    /// reading and writing it.
    pub(crate) fn drop_room(&self, room: i64) {
        self.dropped.lock().push(room);
    }

    /// The rooms dropped since the last call.
    pub(crate) fn take_dropped(&self) -> Vec<i64> {
        std::mem::take(&mut *self.dropped.lock())
    }

    /// An `auth` frame moved the socket to another session family.
    pub(crate) fn set_sid(&self, sid: String) {
        *self.sid.lock() = sid;
    }
}
