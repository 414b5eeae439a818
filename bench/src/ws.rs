//! One task per WebSocket: connect, wait for `ready` (not with `--deliveries-only`), then
//! read (and, for senders, send on a paced timer) until told to stop. Everything measured
//! is written into [`Shared`] with atomics and a few briefly-held mutexes; nothing is
//! allocated per received message apart from what tungstenite itself does.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::{Plan, new_histogram};
use crate::track::{
    Observed, SeqTracker, format_content, is_this_run, parse_client_counter, parse_content,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Small buffers: many sockets, small frames. tungstenite's default 128 KiB read
/// buffer would cost memory and CPU (it is re-zeroed as it is used) on every socket.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Counters of one measurement window (warm-up or one step), keyed by the send time
/// embedded in each message.
pub struct WindowStats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    /// `--deliveries-only`: deliveries the window's sends should make (each send × the
    /// sockets connected to the sender's room).
    pub expected: AtomicU64,
    /// Unexpected closes that happened (by wall clock) during the window.
    pub closes: AtomicU64,
    pub latency: Vec<Mutex<Histogram<u64>>>,
    pub ack_latency: Vec<Mutex<Histogram<u64>>>,
}

impl WindowStats {
    fn new(shards: usize) -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            closes: AtomicU64::new(0),
            latency: (0..shards).map(|_| Mutex::new(new_histogram())).collect(),
            ack_latency: (0..shards).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    pub fn merged(shards: &[Mutex<Histogram<u64>>]) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in shards {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = h.add(&*s);
        }
        h
    }
}

pub struct RoomShared {
    pub max_acked: AtomicU64,
    /// Sockets of the room that connected (first connects only).
    pub sockets: AtomicU64,
    /// (seq, window of the send) for every ack a sender matched.
    pub ack_log: Mutex<Vec<(u64, u16)>>,
}

#[derive(Default)]
pub struct FrameCounts {
    pub ready: AtomicU64,
    pub message: AtomicU64,
    pub ack: AtomicU64,
    pub presence: AtomicU64,
    pub typing: AtomicU64,
    pub error: AtomicU64,
    pub pong: AtomicU64,
    pub other: AtomicU64,
    pub binary: AtomicU64,
    pub unparsable: AtomicU64,
    /// `message` frames whose content is not from this run (other clients, old runs).
    pub foreign: AtomicU64,
    /// Text frames counted without parsing (idle mode).
    pub text: AtomicU64,
}

pub struct Shared {
    pub run_id: String,
    pub plan: Plan,
    /// Unix nanos of the start of the warm-up; 0 until sending starts.
    pub start_ns: AtomicU64,
    /// Senders stop when the clock passes this (used to cut a ramp short).
    pub send_until_ns: AtomicU64,
    pub windows: Vec<WindowStats>,
    pub rooms: Vec<RoomShared>,
    pub frames: FrameCounts,
    pub server_errors: Mutex<BTreeMap<String, u64>>,
    pub closes: Mutex<BTreeMap<String, u64>>,
    pub reconnects: AtomicU64,
    pub reconnect_failures: AtomicU64,
    pub unmatched_acks: AtomicU64,
    pub send_errors: AtomicU64,
    pub shards: usize,
    pub config: WebSocketConfig,
    pub connect_timeout: Duration,
    pub max_reconnects: u32,
    /// false in idle mode: frames are only counted.
    pub parse_frames: bool,
    /// `run --deliveries-only`: a peer without `ready`, acks or seqs. A socket counts as
    /// connected on the upgrade, sends are not expected to be acked, and deliveries are
    /// counted (with their latency) but not checked for loss, duplicates or order.
    pub deliveries_only: bool,
}

impl Shared {
    pub fn new(
        run_id: String,
        plan: Plan,
        rooms: usize,
        shards: usize,
        connect_timeout: Duration,
        max_reconnects: u32,
        parse_frames: bool,
    ) -> Self {
        let shards = shards.max(1);
        Self {
            run_id,
            windows: (0..plan.windows())
                .map(|_| WindowStats::new(shards))
                .collect(),
            plan,
            start_ns: AtomicU64::new(0),
            send_until_ns: AtomicU64::new(u64::MAX),
            rooms: (0..rooms)
                .map(|_| RoomShared {
                    max_acked: AtomicU64::new(0),
                    sockets: AtomicU64::new(0),
                    ack_log: Mutex::new(Vec::new()),
                })
                .collect(),
            frames: FrameCounts::default(),
            server_errors: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            reconnects: AtomicU64::new(0),
            reconnect_failures: AtomicU64::new(0),
            unmatched_acks: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            shards,
            config: ws_config(),
            connect_timeout,
            max_reconnects,
            parse_frames,
            deliveries_only: false,
        }
    }

    fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(key) {
            Some(v) => *v += 1,
            None => {
                m.insert(key.to_owned(), 1);
            }
        }
    }

    fn record_close(&self, reason: &str) {
        Self::bump(&self.closes, reason);
        let now = unix_ns();
        let w = self
            .plan
            .window_of(self.start_ns.load(Relaxed), now)
            .unwrap_or(self.windows.len() - 1);
        self.windows[w].closes.fetch_add(1, Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    Connect,
    /// Start sending; the instant is the start of the warm-up.
    Send(Instant),
    /// Stop sending, keep reading.
    Drain,
    /// Close.
    Done,
}

pub struct SenderSpec {
    /// `<run-id>.<room>.<client>`
    pub id: String,
    /// 0..1: where in the period this sender's first message goes, so that the
    /// senders are spread evenly instead of firing together.
    pub phase: f64,
}

pub struct SocketSpec {
    pub idx: usize,
    pub room: usize,
    /// `ws://host/ws/rooms/{name}?token=…` (never printed)
    pub url: String,
    pub sender: Option<SenderSpec>,
}

#[derive(Debug)]
pub enum ConnectEvent {
    /// `ready_us`: None when the `ready` frame is not waited for (`--deliveries-only`).
    Ok {
        upgrade_us: u64,
        ready_us: Option<u64>,
    },
    Err(String),
}

#[derive(Debug, Default)]
pub struct SocketOutcome {
    pub room: usize,
    pub connected: bool,
    /// Still open when the run ended (after any reconnects).
    pub alive: bool,
    pub tracker: SeqTracker,
    pub sent: u64,
    pub unacked: u64,
}

/// Sends are due at `t0 + (phase + k) / rate`, k = 0, 1, …; on each timer tick the
/// sender sends however many are due, so pacing is exact even when the timer (1 ms
/// granularity) is coarser than the period.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    pub t0: Instant,
    pub rate: f64,
    pub phase: f64,
    pub sent: u64,
    pub window: usize,
}

impl Pacer {
    pub fn due(&self, now: Instant) -> u64 {
        let x = now.saturating_duration_since(self.t0).as_secs_f64() * self.rate - self.phase;
        if x < 0.0 {
            0
        } else {
            (x.floor() as u64 + 1).saturating_sub(self.sent)
        }
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs_f64((1.0 / self.rate).max(0.001))
    }

    fn interval(&self) -> Interval {
        let first = self.t0 + Duration::from_secs_f64(self.phase / self.rate);
        let mut i = tokio::time::interval_at(first.into(), self.period());
        i.set_missed_tick_behavior(MissedTickBehavior::Skip);
        i
    }
}

/// At most this many messages go out on one tick (after a stall the rest follow on
/// the next ticks instead of in one burst).
const MAX_PER_TICK: u64 = 64;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow, default, deserialize_with = "borrowed_opt")]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_opt")]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_opt")]
    code: Option<Cow<'a, str>>,
    last_seq: Option<u64>,
}

/// serde only borrows a `Cow<str>` that is a field of its own; `Option<Cow<str>>`
/// would allocate for every frame. This borrows unless the string has escapes.
fn borrowed_opt<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed>::deserialize(d)?.map(|b| b.0))
}

fn classify(e: &tungstenite::Error) -> String {
    use tungstenite::Error as E;
    use tungstenite::error::ProtocolError as P;
    match e {
        E::Http(resp) => format!("http_{}", resp.status().as_u16()),
        E::Io(io) => format!("io_{:?}", io.kind()),
        E::ConnectionClosed | E::AlreadyClosed => "closed".into(),
        E::Protocol(P::ResetWithoutClosingHandshake) => "reset_without_close".into(),
        E::Protocol(_) => "protocol_error".into(),
        E::Url(_) => "bad_url".into(),
        E::Capacity(_) => "frame_too_large".into(),
        _ => "other_error".into(),
    }
}

fn close_reason(frame: &Option<tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => u16::from(f.code).to_string(),
        None => "close_without_code".into(),
    }
}

/// Connects and waits for the `ready` frame. Returns the socket, `ready.last_seq`,
/// and the times to the HTTP upgrade and to `ready`, in µs. With `deliveries_only` the
/// socket is ready once upgraded (the peer may send no `ready` frame at all).
async fn connect(
    shared: &Shared,
    url: &str,
) -> Result<(Ws, Option<u64>, u64, Option<u64>), String> {
    let t0 = Instant::now();
    let fut = tokio_tungstenite::connect_async_with_config(url, Some(shared.config), true);
    let mut ws = match timeout(shared.connect_timeout, fut).await {
        Err(_) => return Err("connect_timeout".into()),
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok((ws, _resp))) => ws,
    };
    let upgrade_us = t0.elapsed().as_micros() as u64;
    if shared.deliveries_only {
        return Ok((ws, None, upgrade_us, None));
    }
    let deadline = t0 + shared.connect_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, ws.next()).await {
            Err(_) => return Err("ready_timeout".into()),
            Ok(None) => return Err("closed_before_ready".into()),
            Ok(Some(Err(e))) => return Err(classify(&e)),
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("close_{}", close_reason(&f))),
            Ok(Some(Ok(Message::Text(t)))) => {
                let f: Frame = serde_json::from_str(t.as_str())
                    .map_err(|_| "unparsable_first_frame".to_string())?;
                return match f.kind.as_ref() {
                    "ready" => {
                        shared.frames.ready.fetch_add(1, Relaxed);
                        let ready_us = t0.elapsed().as_micros() as u64;
                        Ok((ws, f.last_seq, upgrade_us, Some(ready_us)))
                    }
                    "error" => Err(format!(
                        "error_frame_{}",
                        f.code.as_deref().unwrap_or("unknown")
                    )),
                    other => Err(format!("first_frame_{other}")),
                };
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

enum End {
    Done,
    Closed(String),
}

struct SockState {
    tracker: SeqTracker,
    pending: VecDeque<(u64, u64, u16)>,
    counter: u64,
    pacer: Option<Pacer>,
    ticker: Option<Interval>,
    shard: usize,
    sent: u64,
    unacked: u64,
    /// Start of the warm-up (set when sending starts).
    start: Option<Instant>,
}

async fn tick(t: &mut Option<Interval>) {
    match t {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub async fn socket_task(
    spec: SocketSpec,
    shared: Arc<Shared>,
    ctl: watch::Receiver<Phase>,
    sem: Arc<Semaphore>,
    events: mpsc::UnboundedSender<ConnectEvent>,
) -> SocketOutcome {
    let mut out = SocketOutcome {
        room: spec.room,
        ..Default::default()
    };
    let first = {
        let _permit = sem.acquire().await;
        connect(&shared, &spec.url).await
    };
    let mut st = SockState {
        tracker: SeqTracker::new(),
        pending: VecDeque::new(),
        counter: 0,
        pacer: None,
        ticker: None,
        shard: spec.idx % shared.shards,
        sent: 0,
        unacked: 0,
        start: None,
    };
    let mut ws = match first {
        Ok((ws, last_seq, upgrade_us, ready_us)) => {
            shared.rooms[spec.room].sockets.fetch_add(1, Relaxed);
            let _ = events.send(ConnectEvent::Ok {
                upgrade_us,
                ready_us,
            });
            if let Some(ls) = last_seq {
                st.tracker.set_base(ls);
            }
            ws
        }
        Err(kind) => {
            let _ = events.send(ConnectEvent::Err(kind));
            return out;
        }
    };
    drop(events);
    out.connected = true;
    // one long-lived waiter for phase changes (re-created only when it fires)
    let mut phases: PhaseFuture = Box::pin(next_phase(ctl.clone()));
    loop {
        match run_socket(&mut ws, &spec, &shared, &ctl, &mut phases, &mut st).await {
            End::Done => {
                let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                out.alive = true;
                break;
            }
            End::Closed(reason) => {
                if *ctl.borrow() == Phase::Done {
                    break; // closing at the end anyway
                }
                shared.record_close(&reason);
                // in-flight messages on the lost socket will never be acked here
                st.unacked += st.pending.len() as u64;
                st.pending.clear();
                let mut resumed = None;
                // attempts per outage, backing off 0.25 s, 0.5 s, 1 s, 2 s, 4 s, 4 s…
                let mut attempt = 0u32;
                while attempt < shared.max_reconnects && resumed.is_none() {
                    let backoff = Duration::from_millis(250 << attempt.min(4));
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    if *ctl.borrow() == Phase::Done {
                        break;
                    }
                    let url = match st.tracker.base() {
                        Some(_) => format!("{}&since_seq={}", spec.url, st.tracker.last()),
                        None => spec.url.clone(),
                    };
                    shared.reconnects.fetch_add(1, Relaxed);
                    match connect(&shared, &url).await {
                        Ok((new_ws, last_seq, _, _)) => {
                            if let Some(ls) = last_seq {
                                st.tracker.set_base(ls);
                            }
                            resumed = Some(new_ws);
                        }
                        Err(_) => {
                            shared.reconnect_failures.fetch_add(1, Relaxed);
                        }
                    }
                }
                match resumed {
                    Some(new_ws) => ws = new_ws,
                    None => break,
                }
            }
        }
    }
    out.unacked = st.unacked + st.pending.len() as u64;
    out.sent = st.sent;
    out.tracker = st.tracker;
    out
}

async fn run_socket(
    ws: &mut Ws,
    spec: &SocketSpec,
    shared: &Shared,
    ctl: &watch::Receiver<Phase>,
    phases: &mut PhaseFuture,
    st: &mut SockState,
) -> End {
    // a resumed socket may have missed a phase change while reconnecting
    if let Some(end) = apply_phase(*ctl.borrow(), spec, shared, st) {
        return end;
    }
    loop {
        // biased: the timer first (sends must not starve behind a busy socket), then
        // the socket, then the (rarely firing) phase changes.
        tokio::select! {
            biased;
            _ = tick(&mut st.ticker), if st.ticker.is_some() => {
                if let Err(e) = send_due(ws, spec, shared, st).await {
                    shared.send_errors.fetch_add(1, Relaxed);
                    return End::Closed(classify(&e));
                }
            }
            msg = ws.next() => {
                if let Some(end) = on_msg(msg, spec.room, shared, st) {
                    return end;
                }
                // handle whatever else is already buffered before selecting again
                for _ in 0..BATCH {
                    match ws.next().now_or_never() {
                        Some(msg) => {
                            if let Some(end) = on_msg(msg, spec.room, shared, st) {
                                return end;
                            }
                        }
                        None => break,
                    }
                }
            }
            (rx, phase) = &mut *phases => {
                *phases = Box::pin(next_phase(rx));
                let Some(phase) = phase else {
                    return End::Done;
                };
                if let Some(end) = apply_phase(phase, spec, shared, st) {
                    return end;
                }
            }
        }
    }
}

type PhaseFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = (watch::Receiver<Phase>, Option<Phase>)> + Send>,
>;

/// Waits for the next phase; owns the receiver so that the waiter stays registered
/// across select iterations. `None`: the controller is gone.
async fn next_phase(mut rx: watch::Receiver<Phase>) -> (watch::Receiver<Phase>, Option<Phase>) {
    let p = match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => None,
    };
    (rx, p)
}

/// Frames handled per wake-up before the select loop runs again.
const BATCH: usize = 32;

fn on_msg(
    msg: Option<Result<Message, tungstenite::Error>>,
    room: usize,
    shared: &Shared,
    st: &mut SockState,
) -> Option<End> {
    match msg {
        Some(Ok(Message::Text(t))) => on_text(t.as_str(), room, shared, st),
        Some(Ok(Message::Binary(_))) => {
            shared.frames.binary.fetch_add(1, Relaxed);
        }
        Some(Ok(Message::Close(f))) => return Some(End::Closed(close_reason(&f))),
        Some(Ok(_)) => {}
        Some(Err(e)) => return Some(End::Closed(classify(&e))),
        None => return Some(End::Closed("eof".into())),
    }
    None
}

fn apply_phase(
    phase: Phase,
    spec: &SocketSpec,
    shared: &Shared,
    st: &mut SockState,
) -> Option<End> {
    match phase {
        Phase::Connect => None,
        Phase::Send(start) => {
            st.start.get_or_insert(start);
            if let (Some(s), None) = (&spec.sender, &st.pacer) {
                let p = Pacer {
                    t0: start,
                    rate: shared.plan.rate_of(0),
                    phase: s.phase,
                    sent: 0,
                    window: 0,
                };
                st.ticker = Some(p.interval());
                st.pacer = Some(p);
            }
            None
        }
        Phase::Drain => {
            st.ticker = None;
            st.pacer = None;
            None
        }
        Phase::Done => Some(End::Done),
    }
}

async fn send_due(
    ws: &mut Ws,
    spec: &SocketSpec,
    shared: &Shared,
    st: &mut SockState,
) -> Result<(), tungstenite::Error> {
    let Some(sender) = &spec.sender else {
        st.ticker = None;
        return Ok(());
    };
    let now = Instant::now();
    let now_ns = unix_ns();
    let start_ns = shared.start_ns.load(Relaxed);
    let w = if now_ns >= shared.send_until_ns.load(Relaxed) {
        None
    } else {
        shared.plan.window_of(start_ns, now_ns)
    };
    let Some(w) = w else {
        st.ticker = None;
        st.pacer = None;
        return Ok(());
    };
    let Some(pacer) = st.pacer.as_mut() else {
        st.ticker = None;
        return Ok(());
    };
    if pacer.window != w {
        let rate = shared.plan.rate_of(w);
        if rate == pacer.rate {
            pacer.window = w;
        } else {
            // new step: restart the schedule at the new rate from the step's start,
            // keeping this sender's phase so the senders stay spread out
            let step_start =
                st.start.unwrap_or(now) + Duration::from_nanos(shared.plan.window_start_ns(w));
            *pacer = Pacer {
                t0: step_start,
                rate,
                phase: sender.phase,
                sent: 0,
                window: w,
            };
            st.ticker = Some(pacer.interval());
        }
    }
    let n = pacer.due(now).min(MAX_PER_TICK);
    let stats = &shared.windows[w];
    for _ in 0..n {
        let counter = st.counter;
        let send_ns = unix_ns();
        let mut s = String::with_capacity(96 + 2 * sender.id.len());
        s.push_str(r#"{"type":"message","content":""#);
        format_content(&mut s, &sender.id, counter, send_ns);
        let _ = write!(s, r#"","client_id":"{}-{counter}"}}"#, sender.id);
        st.counter += 1;
        pacer.sent += 1;
        st.sent += 1;
        stats.sent.fetch_add(1, Relaxed);
        if shared.deliveries_only {
            // no acks will come: nothing to match, only the deliveries to expect
            let receivers = shared.rooms[spec.room].sockets.load(Relaxed);
            stats.expected.fetch_add(receivers, Relaxed);
        } else {
            st.pending.push_back((counter, send_ns, w as u16));
        }
        ws.send(Message::text(s)).await?;
    }
    Ok(())
}

fn record(h: &Mutex<Histogram<u64>>, us: u64) {
    h.lock()
        .unwrap_or_else(|e| e.into_inner())
        .saturating_record(us.max(1));
}

fn on_text(text: &str, room: usize, shared: &Shared, st: &mut SockState) {
    let fc = &shared.frames;
    if !shared.parse_frames {
        fc.text.fetch_add(1, Relaxed);
        return;
    }
    let Ok(f) = serde_json::from_str::<Frame>(text) else {
        fc.unparsable.fetch_add(1, Relaxed);
        return;
    };
    match f.kind.as_ref() {
        "message" => {
            fc.message.fetch_add(1, Relaxed);
            let obs = if shared.deliveries_only {
                // no seq to check: every delivery counts once
                st.tracker.count_unsequenced();
                Observed::New
            } else {
                let Some(seq) = f.seq else {
                    fc.unparsable.fetch_add(1, Relaxed);
                    return;
                };
                st.tracker.observe(seq)
            };
            let now_ns = unix_ns();
            let ours = f
                .content
                .as_deref()
                .and_then(parse_content)
                .filter(|(id, _, _)| is_this_run(id, &shared.run_id));
            let Some((_, _, send_ns)) = ours else {
                fc.foreign.fetch_add(1, Relaxed);
                return;
            };
            let Some(w) = shared
                .plan
                .window_of(shared.start_ns.load(Relaxed), send_ns)
            else {
                return;
            };
            let ws = &shared.windows[w];
            match obs {
                Observed::New | Observed::Late => {
                    ws.delivered.fetch_add(1, Relaxed);
                    if obs == Observed::Late {
                        ws.out_of_order.fetch_add(1, Relaxed);
                    }
                    record(&ws.latency[st.shard], now_ns.saturating_sub(send_ns) / 1000);
                }
                Observed::Duplicate => {
                    ws.duplicates.fetch_add(1, Relaxed);
                }
            }
        }
        "ack" => {
            fc.ack.fetch_add(1, Relaxed);
            let (Some(seq), Some(cid)) = (f.seq, f.client_id.as_deref()) else {
                fc.unparsable.fetch_add(1, Relaxed);
                return;
            };
            let rs = &shared.rooms[room];
            rs.max_acked.fetch_max(seq, Relaxed);
            let now_ns = unix_ns();
            let mut matched = None;
            if let Some(counter) = parse_client_counter(cid) {
                while let Some(&(c, ns, w)) = st.pending.front() {
                    if c < counter {
                        st.pending.pop_front();
                        st.unacked += 1;
                    } else {
                        if c == counter {
                            st.pending.pop_front();
                            matched = Some((ns, w));
                        }
                        break;
                    }
                }
            }
            let w = match matched {
                Some((ns, w)) => {
                    let ws = &shared.windows[usize::from(w)];
                    ws.acked.fetch_add(1, Relaxed);
                    record(&ws.ack_latency[st.shard], now_ns.saturating_sub(ns) / 1000);
                    w
                }
                None => {
                    shared.unmatched_acks.fetch_add(1, Relaxed);
                    shared
                        .plan
                        .window_of(shared.start_ns.load(Relaxed), now_ns)
                        .unwrap_or(shared.windows.len() - 1) as u16
                }
            };
            rs.ack_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((seq, w));
        }
        "error" => {
            fc.error.fetch_add(1, Relaxed);
            Shared::bump(
                &shared.server_errors,
                f.code.as_deref().unwrap_or("unknown"),
            );
        }
        "ready" => {
            fc.ready.fetch_add(1, Relaxed);
            if let Some(ls) = f.last_seq {
                st.tracker.set_base(ls);
            }
        }
        "presence" => {
            fc.presence.fetch_add(1, Relaxed);
        }
        "typing" => {
            fc.typing.fetch_add(1, Relaxed);
        }
        "pong" => {
            fc.pong.fetch_add(1, Relaxed);
        }
        _ => {
            fc.other.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_counts_due_messages() {
        let t0 = Instant::now();
        let p = Pacer {
            t0,
            rate: 10.0,
            phase: 0.5,
            sent: 0,
            window: 1,
        };
        // due at t0 + 0.05, 0.15, 0.25, …
        assert_eq!(p.due(t0), 0);
        assert_eq!(p.due(t0 + Duration::from_millis(49)), 0);
        assert_eq!(p.due(t0 + Duration::from_millis(51)), 1);
        assert_eq!(p.due(t0 + Duration::from_millis(251)), 3);
        let q = Pacer { sent: 2, ..p };
        assert_eq!(q.due(t0 + Duration::from_millis(251)), 1);
        let r = Pacer { sent: 5, ..p };
        assert_eq!(r.due(t0 + Duration::from_millis(251)), 0);
        // fast rates: period clamps at 1 ms and each tick sends several
        let f = Pacer {
            rate: 5000.0,
            phase: 0.0,
            ..p
        };
        assert_eq!(f.period(), Duration::from_millis(1));
        assert_eq!(f.due(t0 + Duration::from_millis(1)), 6);
    }

    #[test]
    fn frame_parsing_borrows_and_ignores_unknown_fields() {
        let t = r#"{"type":"message","id":5,"room":"bench-r0","seq":42,"user":{"id":1,"username":"u"},"content":"abc.0.1:3:99","client_id":"abc.0.1-3","created_at":"2026-11-21T15:54:00.123Z","edited_at":null}"#;
        let f: Frame = serde_json::from_str(t).unwrap();
        assert_eq!(f.kind, "message");
        assert_eq!(f.seq, Some(42));
        assert!(matches!(f.content, Some(Cow::Borrowed("abc.0.1:3:99"))));
        let r = r#"{"type":"ready","room":{"id":1,"name":"x","last_seq":9},"user":{"id":1},"online":[{"id":1,"username":"u"}],"last_seq":7}"#;
        let f: Frame = serde_json::from_str(r).unwrap();
        assert_eq!((f.kind.as_ref(), f.last_seq), ("ready", Some(7)));
        let e = r#"{"type":"error","code":"rate_limited","message":"slow down"}"#;
        let f: Frame = serde_json::from_str(e).unwrap();
        assert_eq!(f.code.as_deref(), Some("rate_limited"));
        assert!(matches!(f.code, Some(Cow::Borrowed(_))));
        // escaped strings still parse (owned)
        let q = r#"{"type":"message","seq":1,"content":"say \"hi\"","edited_at":null}"#;
        let f: Frame = serde_json::from_str(q).unwrap();
        assert_eq!(f.content.as_deref(), Some("say \"hi\""));
        assert_eq!(f.client_id, None);
        let n = r#"{"type":"message","seq":2,"content":null,"client_id":null}"#;
        let f: Frame = serde_json::from_str(n).unwrap();
        assert_eq!((f.content, f.client_id), (None, None));
    }
}
