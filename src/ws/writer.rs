//! A socket's writer task: drains the socket's outbox into the sink, one flush per batch,
//! pings every 30 s, drops a peer silent for 60 s, and sends the close frame for whatever
//! reason the socket was closed. Generic over the sink, so that it runs in unit tests without
//! a socket (and on paused time).
//!
//! Writes are coalesced by readiness, not by a clock: woken, the writer takes everything
//! queued and writes it with one flush (one system call). What arrives while a write is in
//! flight goes out with the next one. The fan-out queues a whole bus batch before it wakes the
//! writer, so a batch is one write. A socket that just wrote (less than [`YIELD_WITHIN`] ago)
//! first yields once to the scheduler: the wait is one turn of the run queue — nothing on an
//! idle server, longer the more tasks are runnable — so the write gathers what the other
//! tasks are about to queue, and the batching grows with the load.
//!
//! Opt-in (`WS_COALESCE_MAX_MS` > 0), and only when the replica is short of CPU
//! ([`load::coalesce_wait`]: its runtime's queueing delay is above half a millisecond), a
//! busy socket waits on a clock: a few times that delay, at most `WS_COALESCE_MAX_MS`, so that
//! one write carries several frames. Every frame already waits that long in the run queue
//! then, and the system calls saved shorten it.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures::{Sink, SinkExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{
    self, Bytes, Message, Utf8Bytes,
    protocol::{
        CloseFrame,
        frame::{
            Frame as WireFrame,
            coding::{CloseCode, Data, OpCode},
        },
    },
};

use super::protocol;
use crate::{
    domain::event::Frame,
    fanout::socket::{CloseReason, Side, SocketCtl},
    telemetry::load,
};

/// How often an idle socket is pinged.
pub(super) const PING_EVERY: Duration = Duration::from_secs(30);
/// A peer silent this long is dropped.
pub(super) const DEAD_AFTER: Duration = Duration::from_secs(60);
/// How long a closing socket may take to flush its last frames and the close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
/// A slow consumer's close frame waits behind the data already in the kernel buffers, until
/// the client reads again; give it longer so that the client sees 4429, not a reset.
const SLOW_CLOSE_FLUSH: Duration = Duration::from_secs(60);

/// What the writer writes to: the socket's sending half (or a channel in tests).
pub(crate) trait WsSink: Sink<Message, Error = tungstenite::Error> + Unpin + Send {}
impl<T: Sink<Message, Error = tungstenite::Error> + Unpin + Send> WsSink for T {}

/// A socket that wrote less than this long ago yields once before it writes.
const YIELD_WITHIN: Duration = Duration::from_millis(5);
/// A socket that wrote less than this long ago is busy: on a replica short of CPU it gathers
/// frames before it writes ([`load::coalesce_wait`]).
const BUSY_WITHIN: Duration = Duration::from_millis(100);

/// How a socket's writer spaces its writes (`WS_FLUSH_INTERVAL_MS`, `WS_COALESCE_MAX_MS`).
#[derive(Clone, Copy, Debug)]
pub(super) struct WritePolicy {
    /// Above zero: the opt-in pacer.
    pub(super) flush_interval: Duration,
    /// The longest a busy socket waits to gather frames while the replica is short of CPU.
    pub(super) coalesce_max: Duration,
    /// How long to gather now, at most the given maximum ([`load::coalesce_wait`]; a fixed
    /// answer in tests).
    pub(super) coalesce_wait: fn(Duration) -> Option<Duration>,
}

impl WritePolicy {
    pub(super) fn new(flush_interval: Duration, coalesce_max: Duration) -> Self {
        Self {
            flush_interval,
            coalesce_max,
            coalesce_wait: load::coalesce_wait,
        }
    }
}

/// Opt-in (`WS_FLUSH_INTERVAL_MS` > 0; the default 0 coalesces by readiness only), for
/// machines where a system call is so expensive that a fixed latency is worth paying for
/// fewer of them. Spaces a socket's writes under sustained traffic: a token bucket
/// of [`FLUSH_BURST`] writes refilled at one per interval. A quiet socket always has tokens,
/// so its frames go out at once; a busy one writes once per interval, each write carrying
/// every frame queued meanwhile — one syscall for many frames, on the server and in the
/// client.
struct FlushPacer {
    interval: Duration,
    tokens: f64,
    last: tokio::time::Instant,
}

const FLUSH_BURST: f64 = 4.0;

impl FlushPacer {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            tokens: FLUSH_BURST,
            last: tokio::time::Instant::now(),
        }
    }

    /// Take a token for a write now; `Some(t)`: wait until `t` first.
    fn take(&mut self) -> Option<tokio::time::Instant> {
        if self.interval.is_zero() {
            return None;
        }
        let now = tokio::time::Instant::now();
        let refill = (now - self.last).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + refill).min(FLUSH_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            let wait = self.interval.mul_f64(1.0 - self.tokens);
            // The token that accrues while waiting is spent on this write.
            self.tokens = 0.0;
            self.last = now + wait;
            Some(self.last)
        }
    }
}

/// With this many frames queued a write goes out without waiting for the pacer: the pacer
/// only gathers frames, it never limits a socket's throughput.
const COALESCED_ENOUGH: usize = 32;
/// Frames longer than this go out in fragments of this size (RFC 6455 §5.4): the socket's
/// buffers then never grow past a fragment, and an idle socket keeps none.
const FRAGMENT: usize = 512;

/// Write one text frame, fragmented if it is long.
async fn feed_text<W: WsSink>(sink: &mut W, frame: Frame) -> Result<(), tungstenite::Error> {
    if frame.len() <= FRAGMENT {
        sink.feed(Message::Text(frame)).await
    } else {
        // Boxed: rare, and its future would otherwise enlarge every writer task.
        Box::pin(feed_fragments(sink, frame)).await
    }
}

async fn feed_fragments<W: WsSink>(sink: &mut W, frame: Frame) -> Result<(), tungstenite::Error> {
    let bytes = Bytes::from(frame);
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + FRAGMENT).min(bytes.len());
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let fragment = WireFrame::message(
            bytes.slice(start..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        sink.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

/// Drains the queue into the socket; sends the close frame when the socket is closed.
pub(super) async fn run<W: WsSink>(mut sink: W, ctl: Arc<SocketCtl>, policy: WritePolicy) {
    let flush_interval = policy.flush_interval;
    // One timer for both: the next ping, or the moment the peer will have been silent for
    // `DEAD_AFTER` (whichever comes first), so a silent peer goes at 60 s, not at the next
    // ping after that.
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut keepalive = Box::pin(tokio::time::sleep_until(next_ping));
    let mut pacer = FlushPacer::new(flush_interval);
    // When the last write was taken (a busy socket yields once before the next).
    let mut last_write: Option<Instant> = None;
    // Frames taken from the queue and not yet written: a close interrupts a write (the peer
    // may not be reading), and what is left here still goes out before the close frame.
    let mut batch = VecDeque::new();
    // Registered once, not on every frame.
    let ctl2 = ctl.clone();
    let cancelled = ctl2.closed(Side::Writer);
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            () = std::future::poll_fn(|cx| ctl.outbox.poll_ready(cx)) => {
                // A long queue is written at once: waiting would only make it longer.
                let short = ctl.outbox.len() < COALESCED_ENOUGH;
                if flush_interval.is_zero() {
                    let recent = last_write.map(|at| at.elapsed());
                    if short && let Some(wait) = recent
                        .filter(|e| *e < BUSY_WITHIN)
                        .and_then(|_| (policy.coalesce_wait)(policy.coalesce_max))
                    {
                        // The replica is short of CPU and this socket is busy: gather for a
                        // little (a few times the queueing delay every frame suffers anyway),
                        // so that one write carries several frames.
                        tokio::select! {
                            biased;
                            () = &mut cancelled => break,
                            // Boxed: a timer inline would enlarge every writer task.
                            () = Box::pin(tokio::time::sleep(wait)) => {}
                            () = std::future::poll_fn(|cx| ctl.outbox.poll_at_least(COALESCED_ENOUGH, cx)) => {}
                        }
                    } else if short && recent.is_some_and(|e| e < YIELD_WITHIN) {
                        // Readiness: a socket that just wrote lets the tasks already runnable
                        // (the other rooms' fan-out, its own session's acks) queue theirs first.
                        tokio::task::yield_now().await;
                    }
                } else if short && let Some(at) = pacer.take() {
                    // Busy socket: let more frames gather so that one write carries them.
                    tokio::select! {
                        biased;
                        () = &mut cancelled => break,
                        // Boxed: a timer inline would enlarge every writer task.
                        () = Box::pin(tokio::time::sleep_until(at)) => {}
                        // A queue that grows long meanwhile is written at once: the pacer
                        // must never turn a fast reader into a slow consumer (4429).
                        () = std::future::poll_fn(|cx| ctl.outbox.poll_at_least(COALESCED_ENOUGH, cx)) => {}
                    }
                }
                // Everything queued goes out with one flush.
                batch = ctl.outbox.take_all();
                last_write = Some(Instant::now());
                tokio::select! {
                    biased;
                    () = &mut cancelled => break,
                    res = write_all(&mut sink, &mut batch) => if res.is_err() {
                        ctl.close(CloseReason::GoingAway);
                        return;
                    },
                }
                // Written: free the batch's allocation too (an idle socket keeps none).
                batch = VecDeque::new();
            }
            () = &mut keepalive => {
                let Some(next) = keep_alive(&mut sink, &ctl, &mut next_ping).await else {
                    return;
                };
                keepalive.as_mut().reset(next);
            }
        }
    }
    // Boxed: runs once, at the end.
    Box::pin(close(sink, batch, &ctl)).await;
}

/// Write `batch` (emptying it) and flush: one write (`chat_ws_frames_sent_total` counts the
/// frames).
async fn write_all<W: WsSink>(
    sink: &mut W,
    batch: &mut VecDeque<Frame>,
) -> Result<(), tungstenite::Error> {
    let frames = batch.len();
    while let Some(frame) = batch.pop_front() {
        feed_text(sink, frame).await?;
    }
    sink.flush().await?;
    crate::telemetry::metrics::ws_frames_sent("data", frames);
    Ok(())
}

/// The keep-alive timer fired: drop a peer silent for [`DEAD_AFTER`], ping every
/// [`PING_EVERY`]. The next time to look, or `None` once the socket is closed.
async fn keep_alive<W: WsSink>(
    sink: &mut W,
    ctl: &SocketCtl,
    next_ping: &mut Instant,
) -> Option<Instant> {
    let now = Instant::now();
    let dead_at = ctl.last_seen() + DEAD_AFTER;
    if now >= dead_at {
        ctl.close(CloseReason::GoingAway);
        return None;
    }
    if now >= *next_ping {
        if sink.send(Message::Ping(Bytes::new())).await.is_err() {
            ctl.close(CloseReason::GoingAway);
            return None;
        }
        crate::telemetry::metrics::ws_frames_sent("ping", 1);
        *next_ping = now + PING_EVERY;
    }
    Some((*next_ping).min(dead_at))
}

/// Send what is left (unless the peer is the slow consumer) and the close frame.
async fn close<W: WsSink>(mut sink: W, mut batch: VecDeque<Frame>, ctl: &SocketCtl) {
    let reason = ctl.close_reason();
    let slow = reason == CloseReason::SlowConsumer;
    let flush = if slow { SLOW_CLOSE_FLUSH } else { CLOSE_FLUSH };
    let (code, text) = protocol::close_code(reason);
    crate::telemetry::metrics::ws_closed(code);
    let _ = tokio::time::timeout(flush, async {
        if !slow {
            // Frames queued before the close (e.g. `room_deleted`) go out first.
            batch.extend(ctl.outbox.take_all());
            let frames = batch.len();
            for frame in batch {
                feed_text(&mut sink, frame).await?;
            }
            crate::telemetry::metrics::ws_frames_sent("data", frames);
        }
        sink.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(text),
        })))
        .await?;
        crate::telemetry::metrics::ws_frames_sent("close", 1);
        sink.close().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use futures::{StreamExt, channel::mpsc};

    use super::*;

    /// A replica with CPU to spare: the writer never waits on a clock.
    fn policy(flush_interval: Duration) -> WritePolicy {
        WritePolicy {
            flush_interval,
            coalesce_max: Duration::from_millis(20),
            coalesce_wait: |_| None,
        }
    }

    /// A writer on a channel instead of a socket, for a socket that never hears from its peer
    /// (or, with `answer`, that the reader marks as heard from).
    async fn start(
        flush: Duration,
    ) -> (
        Arc<SocketCtl>,
        mpsc::UnboundedReceiver<Message>,
        tokio::task::JoinHandle<()>,
    ) {
        let ctl = Arc::new(SocketCtl::new(1, 1, false, 16, "sid".into()));
        let (tx, rx) = mpsc::unbounded();
        let sink = tx.sink_map_err(|_| tungstenite::Error::ConnectionClosed);
        let task = tokio::spawn(run(sink, ctl.clone(), policy(flush)));
        // Let the writer start (and set its timers) at t = 0.
        advance(0).await;
        (ctl, rx, task)
    }

    async fn advance(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
        // Let the writer run what the timer released.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_30_s_and_drops_a_peer_silent_for_60_s() {
        let (ctl, mut rx, task) = start(Duration::ZERO).await;
        advance(29).await;
        assert!(rx.try_recv().is_err(), "nothing before 30 s");
        advance(1).await;
        assert!(
            matches!(rx.next().await, Some(Message::Ping(_))),
            "a ping at 30 s"
        );
        advance(29).await;
        assert!(!ctl.is_closing(), "still open at 59 s");
        advance(1).await;
        task.await.unwrap();
        assert_eq!(
            ctl.close_reason(),
            CloseReason::GoingAway,
            "dropped at 60 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_answers_stays() {
        let (ctl, mut rx, task) = start(Duration::ZERO).await;
        for _ in 0..4 {
            advance(30).await;
            assert!(matches!(rx.next().await, Some(Message::Ping(_))));
            ctl.touch(); // the pong
        }
        assert!(!ctl.is_closing(), "open after 120 s of answered pings");
        ctl.close(CloseReason::Restart);
        task.await.unwrap();
        let Some(Message::Close(Some(frame))) = rx.next().await else {
            panic!("a close frame");
        };
        assert_eq!(u16::from(frame.code), 1012);
    }

    /// What a [`Recorder`] saw: a frame's text, or a flush (one write system call).
    #[derive(Debug, PartialEq)]
    enum Ev {
        Text(String),
        Flush,
    }

    /// A sink that records frames and flushes.
    #[derive(Clone, Default)]
    struct Recorder(Arc<parking_lot::Mutex<Vec<Ev>>>);

    impl Sink<Message> for Recorder {
        type Error = tungstenite::Error;
        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            if let Message::Text(t) = item {
                self.0.lock().push(Ev::Text(t.to_string()));
            }
            Ok(())
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            let mut evs = self.0.lock();
            if evs.last().is_some_and(|e| *e != Ev::Flush) {
                evs.push(Ev::Flush);
            }
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn text(s: &str) -> Ev {
        Ev::Text(s.into())
    }

    /// Readiness (the default): frames go out as soon as the writer runs, with no clock
    /// involved (time never advances here), and a batch queued before the wake-up is one
    /// write.
    #[tokio::test(start_paused = true)]
    async fn writes_by_readiness_one_flush_per_batch() {
        let ctl = Arc::new(SocketCtl::new(1, 1, false, 16, "sid".into()));
        let rec = Recorder::default();
        let task = tokio::spawn(run(rec.clone(), ctl.clone(), policy(Duration::ZERO)));
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        // A quiet socket: one frame, written at once.
        ctl.outbox.try_push(Frame::from_static("a")).unwrap();
        settle().await;
        assert_eq!(*rec.0.lock(), [text("a"), Ev::Flush]);
        // A batch queued quietly and woken once: one write, in order.
        for f in ["b", "c", "d"] {
            ctl.outbox.try_queue(Frame::from_static(f)).unwrap();
        }
        ctl.outbox.wake_writer();
        settle().await;
        assert_eq!(
            rec.0.lock()[2..],
            [text("b"), text("c"), text("d"), Ev::Flush]
        );
        // A busy socket (it just wrote) still writes without any time passing.
        ctl.outbox.try_push(Frame::from_static("e")).unwrap();
        settle().await;
        assert_eq!(rec.0.lock()[6..], [text("e"), Ev::Flush]);
        ctl.close(CloseReason::Restart);
        task.await.unwrap();
    }

    /// Short of CPU: a busy socket waits (here the 20 ms cap) and writes what gathered
    /// meanwhile with one flush; a socket that has not written lately does not wait.
    #[tokio::test(start_paused = true)]
    async fn short_of_cpu_a_busy_socket_gathers_frames() {
        let ctl = Arc::new(SocketCtl::new(1, 1, false, 64, "sid".into()));
        let rec = Recorder::default();
        let short = WritePolicy {
            flush_interval: Duration::ZERO,
            coalesce_max: Duration::from_millis(20),
            coalesce_wait: Some,
        };
        let task = tokio::spawn(run(rec.clone(), ctl.clone(), short));
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        // The first frame: the socket has not written yet, so it goes out at once.
        ctl.outbox.try_push(Frame::from_static("a")).unwrap();
        settle().await;
        assert_eq!(*rec.0.lock(), [text("a"), Ev::Flush]);
        // Busy now: the next frame waits for company.
        ctl.outbox.try_push(Frame::from_static("b")).unwrap();
        settle().await;
        assert_eq!(
            rec.0.lock().len(),
            2,
            "waits while the replica is short of CPU"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        ctl.outbox.try_push(Frame::from_static("c")).unwrap();
        settle().await;
        assert_eq!(rec.0.lock().len(), 2, "still gathering");
        tokio::time::advance(Duration::from_millis(10)).await;
        settle().await;
        assert_eq!(rec.0.lock()[2..], [text("b"), text("c"), Ev::Flush]);
        // Quiet for longer than `BUSY_WITHIN`: written at once again.
        tokio::time::advance(BUSY_WITHIN).await;
        ctl.outbox.try_push(Frame::from_static("d")).unwrap();
        settle().await;
        assert_eq!(rec.0.lock()[5..], [text("d"), Ev::Flush]);
        ctl.close(CloseReason::Restart);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn queued_frames_go_out_before_the_close_frame() {
        // By readiness (the default) and with the opt-in pacer.
        for flush in [Duration::ZERO, Duration::from_millis(50)] {
            let (ctl, rx, task) = start(flush).await;
            ctl.outbox.try_push(Frame::from_static("a")).unwrap();
            ctl.outbox.try_push(Frame::from_static("b")).unwrap();
            ctl.close(CloseReason::RoomDeleted);
            task.await.unwrap();
            let got: Vec<Message> = rx.collect().await;
            assert_eq!(got.len(), 3, "{got:?}");
            assert!(matches!(&got[0], Message::Text(t) if *t == "a"));
            assert!(matches!(&got[1], Message::Text(t) if *t == "b"));
            assert!(matches!(&got[2], Message::Close(Some(f)) if u16::from(f.code) == 4404));
        }
    }
}
