//! `chat-bench soak-worker`: one generator process of the soak, holding a slice of the sockets
//! (the soak splits its sockets over several processes to stay under the open-files limit).
//!
//! Every socket reconnects through the load balancer with `since_seq` after any close, with
//! jittered exponential backoff, honouring `Retry-After` on a 503/429 upgrade refusal. Senders
//! (one WebSocket sender and one REST sender per room) retry every unanswered send with the
//! same `client_id` until it is acknowledged, as the web client does. Every received `seq` is
//! checked per socket (gaps, duplicates, out of order).
//!
//! Control: lines on stdin (`go`, `stop`, `final <path>`); reports: lines on stdout
//! (`connected`, `status …`, `drained`, `done`) and the result as JSON in `--out`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use super::check::{Jitter, SeqTracker};
use crate::ws::{unix_ns, ws_config};

/// Everything a worker needs, written by the soak as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    pub run_id: String,
    /// The load balancer (http://host:port).
    pub url: String,
    pub rooms: Vec<String>,
    /// Access token of user i.
    pub tokens: Vec<String>,
    pub sockets: Vec<SocketPlan>,
    /// Messages per second of each sender.
    pub sender_rate: f64,
    pub workers: usize,
    pub connect_concurrency: usize,
    /// After `stop`, how long unanswered sends are still retried.
    pub drain_secs: u64,
    /// After `final`, how long sockets may take to receive everything.
    pub final_secs: u64,
    /// A sent frame without an ack for this long is sent again.
    pub ack_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Listen,
    /// Also sends over its WebSocket.
    WsSender,
    /// Also sends over REST, as its user.
    RestSender,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketPlan {
    pub room: usize,
    pub user: usize,
    pub role: Role,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SocketResult {
    pub index: usize,
    pub room: usize,
    pub base: Option<i64>,
    pub last: i64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Seqs in (base, final last_seq of the room] never received (at most 10 000 listed).
    pub missing: Vec<i64>,
    pub missing_count: u64,
    pub connects: u64,
    /// Duplicates and late seqs: (seq, connection number, what, unix ms), the first 20.
    pub anomalies: Vec<(i64, u64, String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    pub room: usize,
    pub client_id: String,
    pub seq: i64,
    pub rest: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outage {
    pub socket: usize,
    /// Unix ms when the socket was lost, and when its next `ready` arrived.
    pub down_ms: u64,
    pub up_ms: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub sockets: Vec<SocketResult>,
    pub acks: Vec<Ack>,
    /// Sends given up (room, client_id) after the drain.
    pub never_answered: Vec<(usize, String)>,
    /// Distinct messages sent, attempts (first sends and retries).
    pub sent: u64,
    pub attempts: u64,
    /// Acks whose seq differed from an earlier ack of the same client_id.
    pub ack_conflicts: u64,
    pub events: BTreeMap<String, u64>,
    pub outages: Vec<Outage>,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Connecting,
    Sending,
    Stopping {
        give_up: Instant,
    },
    Final {
        rooms: Arc<HashMap<usize, i64>>,
        deadline: Instant,
        give_up: Instant,
    },
}

impl Phase {
    fn sending(&self) -> bool {
        matches!(self, Phase::Sending)
    }

    /// When unanswered sends are abandoned.
    fn give_up(&self) -> Option<Instant> {
        match self {
            Phase::Stopping { give_up } | Phase::Final { give_up, .. } => Some(*give_up),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Shared {
    live: AtomicU64,
    first_ready: AtomicU64,
    failed_first: AtomicU64,
    sent: AtomicU64,
    attempts: AtomicU64,
    acked: AtomicU64,
    pending: AtomicU64,
    ack_conflicts: AtomicU64,
    events: Mutex<BTreeMap<String, u64>>,
    acks: Mutex<Vec<Ack>>,
    never: Mutex<Vec<(usize, String)>>,
    outages: Mutex<Vec<Outage>>,
}

impl Shared {
    fn event(&self, key: &str) {
        *self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default() += 1;
    }
}

fn now_ms() -> u64 {
    unix_ns() / 1_000_000
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn run(plan_path: PathBuf, worker: usize, out: PathBuf) -> Result<()> {
    crate::sys::raise_nofile_limit();
    let plan: Arc<Plan> = Arc::new(
        serde_json::from_slice(&std::fs::read(&plan_path).context("read plan")?)
            .context("parse plan")?,
    );
    let mine: Vec<usize> = (0..plan.sockets.len())
        .filter(|i| i % plan.workers == worker)
        .collect();
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let sem = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mut sockets = Vec::new();
    let mut rest = Vec::new();
    for &i in &mine {
        sockets.push(tokio::spawn(socket_task(
            i,
            plan.clone(),
            shared.clone(),
            phase_rx.clone(),
            sem.clone(),
        )));
        if plan.sockets[i].role == Role::RestSender {
            rest.push(tokio::spawn(rest_sender(
                i,
                plan.clone(),
                shared.clone(),
                phase_rx.clone(),
                http.clone(),
            )));
        }
    }
    let total = mine.len() as u64;

    // Status lines every second; `connected` once every socket had its first ready (or failed).
    let status = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut said_connected = false;
            loop {
                let ready = shared.first_ready.load(Relaxed);
                let failed = shared.failed_first.load(Relaxed);
                if !said_connected && ready + failed >= total {
                    println!("connected {ready} {failed}");
                    said_connected = true;
                }
                println!(
                    "status {} {} {} {} {}",
                    shared.live.load(Relaxed),
                    total,
                    shared.sent.load(Relaxed),
                    shared.acked.load(Relaxed),
                    shared.pending.load(Relaxed)
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line == "go" {
            phase_tx.send_replace(Phase::Sending);
        } else if line == "stop" {
            let give_up = Instant::now() + Duration::from_secs(plan.drain_secs);
            phase_tx.send_replace(Phase::Stopping { give_up });
            // drained: no send left unanswered (or the drain time is over)
            let shared = shared.clone();
            tokio::spawn(async move {
                while shared.pending.load(Relaxed) > 0 && Instant::now() < give_up {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                println!("drained {}", shared.pending.load(Relaxed));
            });
        } else if let Some(path) = line.strip_prefix("final ") {
            let rooms: HashMap<usize, i64> =
                serde_json::from_slice(&std::fs::read(path).context("read finals")?)?;
            let give_up = phase_tx.borrow().give_up().unwrap_or_else(Instant::now);
            phase_tx.send_replace(Phase::Final {
                rooms: Arc::new(rooms),
                deadline: Instant::now() + Duration::from_secs(plan.final_secs),
                give_up,
            });
            break;
        }
    }
    // stdin closed without `final` (the soak was interrupted): finish at once
    if !matches!(*phase_tx.borrow(), Phase::Final { .. }) {
        phase_tx.send_replace(Phase::Final {
            rooms: Arc::new(HashMap::new()),
            deadline: Instant::now(),
            give_up: Instant::now(),
        });
    }
    let mut result = WorkerResult::default();
    for h in sockets {
        result.sockets.push(h.await?);
    }
    for h in rest {
        h.await?;
    }
    status.abort();
    result.acks = std::mem::take(&mut *lock(&shared.acks));
    result.never_answered = std::mem::take(&mut *lock(&shared.never));
    result.outages = std::mem::take(&mut *lock(&shared.outages));
    result.events = std::mem::take(&mut *lock(&shared.events));
    result.sent = shared.sent.load(Relaxed);
    result.attempts = shared.attempts.load(Relaxed);
    result.ack_conflicts = shared.ack_conflicts.load(Relaxed);
    std::fs::write(&out, serde_json::to_vec(&result)?)?;
    println!("done");
    Ok(())
}

/// A server frame: only the fields the soak reads (strings borrowed unless escaped).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<i64>,
    last_seq: Option<i64>,
    #[serde(borrow)]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

struct Pending {
    client_id: String,
    content: String,
    retry_at: Instant,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Connect {
    Ok(Box<Ws>, i64),
    /// Refused with a delay to honour (Retry-After), or failed.
    Retry(Option<Duration>, String),
}

async fn connect(url: &str, sem: &Semaphore) -> Connect {
    let _permit = sem.acquire().await;
    let fut = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true);
    let mut ws = match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Err(_) => return Connect::Retry(None, "connect_timeout".into()),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
            return Connect::Retry(after, format!("upgrade_http_{status}"));
        }
        Ok(Err(e)) => return Connect::Retry(None, format!("connect_{}", kind_of(&e))),
        Ok(Ok((ws, _))) => ws,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Connect::Retry(None, "ready_timeout".into()),
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(f) = serde_json::from_str::<Frame>(&t)
                    && f.kind == "ready"
                {
                    return Connect::Ok(Box::new(ws), f.last_seq.unwrap_or(0));
                }
                return Connect::Retry(None, "first_frame_not_ready".into());
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                return Connect::Retry(None, format!("ready_close_{}", close_code(&c)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Connect::Retry(None, format!("ready_{}", kind_of(&e))),
            Ok(None) => return Connect::Retry(None, "ready_eof".into()),
        }
    }
}

fn kind_of(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("io_{:?}", io.kind()),
        tungstenite::Error::Protocol(_) => "protocol".into(),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        _ => "other".into(),
    }
}

fn close_code(c: &Option<tungstenite::protocol::CloseFrame>) -> String {
    c.as_ref()
        .map_or_else(|| "none".to_owned(), |f| u16::from(f.code).to_string())
}

fn ws_base(url: &str) -> String {
    url.replacen("http://", "ws://", 1)
}

/// One socket of the plan, across reconnects, until the final check has what it needs.
async fn socket_task(
    index: usize,
    plan: Arc<Plan>,
    sh: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    sem: Arc<Semaphore>,
) -> SocketResult {
    let sp = plan.sockets[index].clone();
    let token = &plan.tokens[sp.user];
    let room_name = &plan.rooms[sp.room];
    let base_url = format!("{}/ws/rooms/{room_name}?token={token}", ws_base(&plan.url));
    let sender = sp.role == Role::WsSender;
    let ack_timeout = Duration::from_millis(plan.ack_timeout_ms);
    let mut tr = SeqTracker::default();
    let mut jit = Jitter::new(unix_ns() ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut acked_ids: HashMap<String, i64> = HashMap::new();
    let mut counter = 0u64;
    let mut attempt = 0u32;
    let mut connects = 0u64;
    let mut down: Option<(u64, String)> = None;
    let mut first = true;
    let mut anomalies = Vec::new();
    let period = Duration::from_secs_f64(1.0 / plan.sender_rate.max(0.001));

    'outer: loop {
        let ph = phase.borrow().clone();
        if let Phase::Final {
            rooms, deadline, ..
        } = &ph
        {
            let done = rooms.get(&sp.room).is_none_or(|&f| tr.complete(f));
            if (done && pending.is_empty()) || Instant::now() >= *deadline {
                break;
            }
        }
        give_up_expired(&mut pending, &ph, &sh, sp.room);
        let url = if tr.base.is_some() {
            format!("{base_url}&since_seq={}", tr.last)
        } else {
            base_url.clone()
        };
        let (mut ws, last_seq) = match connect(&url, &sem).await {
            Connect::Ok(ws, last) => (ws, last),
            Connect::Retry(after, why) => {
                sh.event(&why);
                if first && attempt >= 20 {
                    sh.failed_first.fetch_add(1, Relaxed);
                    first = false;
                }
                let wait = match after {
                    // honour Retry-After, spread by up to 50 %
                    Some(d) => d
                        .mul_f64(1.0 + 0.5 * jit.next_f64())
                        .max(Duration::from_millis(50)),
                    None => {
                        jit.backoff(attempt, Duration::from_millis(200), Duration::from_secs(5))
                    }
                };
                attempt += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        connects += 1;
        attempt = 0;
        tr.ready(last_seq);
        sh.live.fetch_add(1, Relaxed);
        if first {
            first = false;
            sh.first_ready.fetch_add(1, Relaxed);
        }
        if let Some((down_ms, reason)) = down.take() {
            lock(&sh.outages).push(Outage {
                socket: index,
                down_ms,
                up_ms: Some(now_ms()),
                reason,
            });
        }
        // resend what is unanswered, with the same client_id
        let mut lost: Option<String> = None;
        for p in pending.iter_mut() {
            sh.attempts.fetch_add(1, Relaxed);
            p.retry_at = Instant::now() + ack_timeout;
            if ws.send(Message::text(frame(p))).await.is_err() {
                lost = Some("send_error".into());
                break;
            }
        }
        let mut pace = tokio::time::interval(period);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut retry = tokio::time::interval(Duration::from_millis(250));
        while lost.is_none() {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(f) = serde_json::from_str::<Frame>(&t) else { continue };
                        match f.kind.as_ref() {
                            "message" => if let Some(s) = f.seq
                                && let Some(what) = tr.message(s)
                                && anomalies.len() < 20
                            {
                                anomalies.push((s, tr.connection, what.to_owned(), now_ms()));
                            },
                            "ack" => if let (Some(id), Some(seq)) = (f.client_id, f.seq) {
                                on_ack(&mut pending, &mut acked_ids, &sh, sp.room, &id, seq);
                            },
                            "error" => {
                                let code = f.code.as_deref().unwrap_or("unknown");
                                sh.event(&format!("ws_error_{code}"));
                                // Answers come in send order: it answers the oldest send, which
                                // is retried after a jittered pause.
                                if let Some(p) = pending.front_mut() {
                                    p.retry_at = Instant::now() + jit.backoff(2, Duration::from_millis(100), Duration::from_secs(2));
                                }
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(c))) => lost = Some(format!("close_{}", close_code(&c))),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => lost = Some(format!("read_{}", kind_of(&e))),
                    None => lost = Some("eof".into()),
                },
                _ = pace.tick(), if sender && phase.borrow().sending() => {
                    counter += 1;
                    let client_id = format!("{}.{index}.{counter}", plan.run_id);
                    let p = Pending {
                        content: format!("soak ws {client_id}"),
                        client_id,
                        retry_at: Instant::now() + ack_timeout,
                    };
                    sh.sent.fetch_add(1, Relaxed);
                    sh.attempts.fetch_add(1, Relaxed);
                    sh.pending.fetch_add(1, Relaxed);
                    let text = frame(&p);
                    pending.push_back(p);
                    if ws.send(Message::text(text)).await.is_err() {
                        lost = Some("send_error".into());
                    }
                }
                _ = retry.tick() => {
                    let ph = phase.borrow().clone();
                    give_up_expired(&mut pending, &ph, &sh, sp.room);
                    let now = Instant::now();
                    for p in pending.iter_mut().filter(|p| p.retry_at <= now) {
                        sh.attempts.fetch_add(1, Relaxed);
                        sh.event("ws_resend");
                        p.retry_at = now + ack_timeout;
                        if ws.send(Message::text(frame(p))).await.is_err() {
                            lost = Some("send_error".into());
                            break;
                        }
                    }
                    if let Phase::Final { rooms, deadline, .. } = &ph {
                        let done = rooms.get(&sp.room).is_none_or(|&f| tr.complete(f));
                        if (done && pending.is_empty()) || now >= *deadline {
                            sh.live.fetch_sub(1, Relaxed);
                            let _ = (*ws).close(None).await;
                            break 'outer;
                        }
                    }
                }
                _ = phase.changed() => {}
            }
        }
        sh.live.fetch_sub(1, Relaxed);
        let reason = lost.unwrap_or_default();
        sh.event(&format!("lost_{reason}"));
        down = Some((now_ms(), reason));
        // a short jittered pause before reconnecting (a whole replica's sockets come back)
        tokio::time::sleep(jit.backoff(0, Duration::from_millis(500), Duration::from_secs(1)))
            .await;
    }
    if let Some((down_ms, reason)) = down {
        lock(&sh.outages).push(Outage {
            socket: index,
            down_ms,
            up_ms: None,
            reason,
        });
    }
    for p in pending.drain(..) {
        sh.pending.fetch_sub(1, Relaxed);
        lock(&sh.never).push((sp.room, p.client_id));
    }
    let upto = match &*phase.borrow() {
        Phase::Final { rooms, .. } => rooms.get(&sp.room).copied(),
        _ => None,
    };
    let missing = upto.map(|u| tr.missing(u)).unwrap_or_default();
    SocketResult {
        index,
        room: sp.room,
        base: tr.base,
        last: tr.last,
        received: tr.received,
        duplicates: tr.duplicates,
        out_of_order: tr.out_of_order,
        missing_count: missing.len() as u64,
        missing: missing.into_iter().take(10_000).collect(),
        connects,
        anomalies,
    }
}

fn frame(p: &Pending) -> String {
    serde_json::json!({"type": "message", "content": p.content, "client_id": p.client_id})
        .to_string()
}

fn on_ack(
    pending: &mut VecDeque<Pending>,
    acked_ids: &mut HashMap<String, i64>,
    sh: &Shared,
    room: usize,
    id: &str,
    seq: i64,
) {
    if let Some(pos) = pending.iter().position(|p| p.client_id == id) {
        let p = pending.remove(pos).expect("position is in range");
        sh.pending.fetch_sub(1, Relaxed);
        sh.acked.fetch_add(1, Relaxed);
        acked_ids.insert(p.client_id.clone(), seq);
        lock(&sh.acks).push(Ack {
            room,
            client_id: p.client_id,
            seq,
            rest: false,
        });
    } else if let Some(&first) = acked_ids.get(id) {
        // the ack of a retry: it must name the original message
        if first != seq {
            sh.ack_conflicts.fetch_add(1, Relaxed);
        }
        sh.event("ws_duplicate_ack");
    }
}

fn give_up_expired(pending: &mut VecDeque<Pending>, ph: &Phase, sh: &Shared, room: usize) {
    if ph.give_up().is_some_and(|g| Instant::now() >= g) {
        for p in pending.drain(..) {
            sh.pending.fetch_sub(1, Relaxed);
            lock(&sh.never).push((room, p.client_id));
        }
    }
}

/// Sends over REST as the socket's user at the plan's rate, one request at a time; each send
/// is retried with its `client_id` (honouring Retry-After) until answered or given up.
async fn rest_sender(
    index: usize,
    plan: Arc<Plan>,
    sh: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    http: reqwest::Client,
) {
    let sp = plan.sockets[index].clone();
    let token = plan.tokens[sp.user].clone();
    let url = format!("{}/api/v1/rooms/{}/messages", plan.url, plan.rooms[sp.room]);
    let mut jit = Jitter::new(unix_ns() ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    while !phase.borrow().sending() {
        if matches!(
            *phase.borrow(),
            Phase::Final { .. } | Phase::Stopping { .. }
        ) {
            return;
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
    let mut pace =
        tokio::time::interval(Duration::from_secs_f64(1.0 / plan.sender_rate.max(0.001)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut counter = 0u64;
    loop {
        pace.tick().await;
        if !phase.borrow().sending() {
            return;
        }
        counter += 1;
        let client_id = format!("{}.{index}.r{counter}", plan.run_id);
        let body = serde_json::json!({"content": format!("soak rest {client_id}"), "client_id": client_id});
        sh.sent.fetch_add(1, Relaxed);
        sh.pending.fetch_add(1, Relaxed);
        let mut attempt = 0u32;
        loop {
            sh.attempts.fetch_add(1, Relaxed);
            let res = http
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let wait = match res {
                Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {
                    if r.status().as_u16() == 200 {
                        sh.event("rest_deduplicated");
                    }
                    let seq = r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["seq"].as_i64());
                    match seq {
                        Some(seq) => {
                            sh.pending.fetch_sub(1, Relaxed);
                            sh.acked.fetch_add(1, Relaxed);
                            lock(&sh.acks).push(Ack {
                                room: sp.room,
                                client_id: client_id.clone(),
                                seq,
                                rest: true,
                            });
                            break;
                        }
                        None => {
                            sh.event("rest_body_unreadable");
                            jit.backoff(attempt, Duration::from_millis(200), Duration::from_secs(5))
                        }
                    }
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    sh.event(&format!("rest_http_{status}"));
                    let after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
                    if !matches!(status, 429 | 502 | 503 | 504) {
                        // not retryable: a bug or a misconfiguration, counted as never answered
                        sh.pending.fetch_sub(1, Relaxed);
                        lock(&sh.never).push((sp.room, client_id.clone()));
                        break;
                    }
                    match after {
                        Some(d) => d.mul_f64(1.0 + 0.5 * jit.next_f64()),
                        None => {
                            jit.backoff(attempt, Duration::from_millis(200), Duration::from_secs(5))
                        }
                    }
                }
                Err(e) => {
                    sh.event(if e.is_timeout() {
                        "rest_timeout"
                    } else {
                        "rest_transport_error"
                    });
                    jit.backoff(attempt, Duration::from_millis(200), Duration::from_secs(5))
                }
            };
            attempt += 1;
            if phase
                .borrow()
                .give_up()
                .is_some_and(|g| Instant::now() + wait >= g)
            {
                sh.pending.fetch_sub(1, Relaxed);
                lock(&sh.never).push((sp.room, client_id.clone()));
                break;
            }
            tokio::time::sleep(wait).await;
        }
    }
}
