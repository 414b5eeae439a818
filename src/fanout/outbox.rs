//! A socket's outgoing queue: bounded, and free while empty.
//!
//! The hub pushes shared frames into it (never waiting: a full queue means a slow consumer),
//! the session pushes its own answers and replays (waiting for room), and the socket's writer
//! takes everything queued at once. The hub queues a whole batch before it wakes the writer
//! ([`Outbox::try_queue`], [`Outbox::wake_writer`]): one wake-up, one write per batch. Unlike a channel, an idle socket's queue holds no memory:
//! the writer takes the whole `VecDeque` and the next push starts a new one. With 10 000 idle
//! sockets this is the difference between 0 and 1–2 KiB each.

use std::{
    collections::VecDeque,
    task::{Context, Poll},
};

use futures::task::AtomicWaker;
use parking_lot::{Mutex, MutexGuard};

use crate::domain::event::Frame;

pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Frame>>,
    capacity: usize,
    /// The writer, waiting for frames.
    writer: AtomicWaker,
    /// A producer waiting for room (the session, replaying history).
    space: AtomicWaker,
}

/// The queue holds `capacity` frames already.
#[derive(Debug)]
pub(crate) struct Full;

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            writer: AtomicWaker::new(),
            space: AtomicWaker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Frame>> {
        self.queue.lock()
    }

    /// Queue a frame unless the queue is full.
    ///
    /// # Errors
    /// [`Full`] when `capacity` frames are waiting.
    pub(crate) fn try_push(&self, frame: Frame) -> Result<(), Full> {
        self.try_queue(frame)?;
        self.writer.wake();
        Ok(())
    }

    /// Queue a frame unless the queue is full, without waking the writer: the fan-out queues
    /// a whole bus batch this way and then calls [`Outbox::wake_writer`] once, so the writer
    /// wakes once per batch and writes it with one system call, not once per message.
    ///
    /// # Errors
    /// [`Full`] when `capacity` frames are waiting.
    pub(crate) fn try_queue(&self, frame: Frame) -> Result<(), Full> {
        let mut queue = self.lock();
        if queue.len() >= self.capacity {
            return Err(Full);
        }
        queue.push_back(frame);
        Ok(())
    }

    /// Wake the writer for what [`Outbox::try_queue`] queued.
    pub(crate) fn wake_writer(&self) {
        self.writer.wake();
    }

    /// Queue a frame when there is room; `Pending` (and woken by the writer) while full.
    pub(crate) fn poll_push(&self, cx: &mut Context<'_>, frame: &mut Option<Frame>) -> Poll<()> {
        let Some(f) = frame.take() else {
            return Poll::Ready(());
        };
        if self.try_push(f.clone()).is_ok() {
            return Poll::Ready(());
        }
        // Register only when full (registering on every push would make every writer batch
        // wake the session for nothing), then try again: the writer may have taken the queue
        // between the failed push and the registration.
        self.space.register(cx.waker());
        match self.try_push(f.clone()) {
            Ok(()) => Poll::Ready(()),
            Err(Full) => {
                *frame = Some(f);
                Poll::Pending
            }
        }
    }

    /// Frames that can still be queued before the queue is full.
    pub(crate) fn free(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    /// Frames waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The writer: `Ready` once something is queued.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_at_least(1, cx)
    }

    /// The writer: `Ready` once at least `n` frames are queued.
    pub(crate) fn poll_at_least(&self, n: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.len() >= n {
            return Poll::Ready(());
        }
        self.writer.register(cx.waker());
        // Re-check: a push between the check and the registration woke nobody.
        if self.len() >= n {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The writer takes everything queued; the queue starts again empty (no allocation kept).
    pub(crate) fn take_all(&self) -> VecDeque<Frame> {
        let taken = std::mem::take(&mut *self.lock());
        self.space.wake();
        taken
    }

    /// Wake both sides (the socket is closing).
    pub(crate) fn wake_all(&self) {
        self.writer.wake();
        self.space.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_empty_after_take() {
        let outbox = Outbox::new(2);
        outbox.try_push(Frame::from_static("a")).unwrap();
        outbox.try_push(Frame::from_static("b")).unwrap();
        assert!(outbox.try_push(Frame::from_static("c")).is_err());
        let taken: Vec<_> = outbox.take_all().into_iter().collect();
        assert_eq!(taken, ["a", "b"]);
        assert_eq!(outbox.len(), 0);
        assert_eq!(
            outbox.lock().capacity(),
            0,
            "an empty queue holds no allocation"
        );
        outbox.try_push(Frame::from_static("c")).unwrap();
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn queued_frames_wake_the_writer_once() {
        use std::sync::{Arc, atomic::Ordering};
        let outbox = Outbox::new(4);
        let counter = Arc::new(CountingWaker(0.into()));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(outbox.poll_ready(&mut cx).is_pending());
        for f in ["a", "b", "c"] {
            outbox.try_queue(Frame::from_static(f)).unwrap();
        }
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "queued quietly");
        outbox.wake_writer();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "one wake for the batch"
        );
        assert!(outbox.poll_ready(&mut cx).is_ready());
        assert_eq!(outbox.take_all().len(), 3);
        outbox.try_queue(Frame::from_static("d")).unwrap();
        assert!(outbox.try_queue(Frame::from_static("e")).is_ok());
        assert!(outbox.try_queue(Frame::from_static("f")).is_ok());
        assert!(outbox.try_queue(Frame::from_static("g")).is_ok());
        assert!(
            outbox.try_queue(Frame::from_static("h")).is_err(),
            "bounded too"
        );
    }

    /// Counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_producer_is_woken_only_when_it_waited() {
        use std::sync::{Arc, atomic::Ordering};
        let outbox = Outbox::new(1);
        let counter = Arc::new(CountingWaker(0.into()));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);

        // A push with room is ready at once and leaves no waker behind.
        let mut frame = Some(Frame::from_static("a"));
        assert!(outbox.poll_push(&mut cx, &mut frame).is_ready());
        outbox.take_all();
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "no spurious wake");

        // A push into a full queue waits, keeps its frame and is woken by the writer's take.
        outbox.try_push(Frame::from_static("b")).unwrap();
        let mut frame = Some(Frame::from_static("c"));
        assert!(outbox.poll_push(&mut cx, &mut frame).is_pending());
        assert_eq!(frame.as_deref(), Some("c"));
        assert_eq!(outbox.take_all().len(), 1);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(outbox.poll_push(&mut cx, &mut frame).is_ready());
        assert_eq!(outbox.len(), 1);
    }
}
