//! End-to-end test of the `chat-bench` binary against a tiny in-process mock of the
//! chat server (REST set-up + `/ws/rooms/{name}`), with optional fault injection:
//! dropped deliveries, duplicated deliveries, and a slow-consumer close (4429) that the
//! bench must resume from with `since_seq`. In `bare` mode it speaks like a bare fan-out
//! reference instead: no `ready` frame, no `ack`, no `seq` (for `run --deliveries-only`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[derive(Default, Clone, Copy)]
struct Faults {
    /// The first socket of each room never gets seqs divisible by this.
    drop_every: Option<u64>,
    /// The first socket of each room gets seqs divisible by this twice.
    dup_every: Option<u64>,
    /// The second socket of each room is closed with 4429 when this seq is broadcast
    /// (before it gets it).
    close_at: Option<u64>,
}

enum Out {
    Text(String),
    Close(u16),
}

struct Sub {
    n: usize,
    tx: mpsc::UnboundedSender<Out>,
}

#[derive(Default)]
struct Room {
    last_seq: u64,
    history: Vec<String>,
    subs: Vec<Sub>,
    joined: usize,
}

#[derive(Default)]
struct Mock {
    faults: Faults,
    /// No `ready`, no `ack`, no `seq`/`id` in message frames.
    bare: bool,
    users: Mutex<HashMap<String, u64>>,
    rooms: Mutex<HashMap<String, Room>>,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    closed: AtomicU64,
    stored: AtomicU64,
}

async fn start(faults: Faults) -> (SocketAddr, Arc<Mock>) {
    start_mock(Mock {
        faults,
        ..Default::default()
    })
    .await
}

async fn start_mock(mock: Mock) -> (SocketAddr, Arc<Mock>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mock = Arc::new(mock);
    let m = mock.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let m = m.clone();
            tokio::spawn(async move {
                let _ = conn(s, m).await;
            });
        }
    });
    (addr, mock)
}

async fn conn(s: TcpStream, m: Arc<Mock>) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut peek = [0u8; 8];
    loop {
        let n = s.peek(&mut peek).await?;
        if n == 0 {
            return Ok(());
        }
        if n >= 8 {
            break;
        }
    }
    if &peek == b"GET /ws/" {
        ws(s, m).await;
        Ok(())
    } else {
        http(s, m).await
    }
}

fn split_query(uri: &str) -> (String, HashMap<String, String>) {
    let (path, q) = uri.split_once('?').unwrap_or((uri, ""));
    let q = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (path.to_string(), q)
}

async fn http(mut s: TcpStream, m: Arc<Mock>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.lines();
        let mut rl = lines.next().unwrap_or("").split(' ');
        let method = rl.next().unwrap_or("").to_string();
        let path = rl.next().unwrap_or("").to_string();
        let mut len = 0usize;
        let mut auth = String::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "authorization" => auth = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Value =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(json!({}));
        buf.drain(..head_end + len);
        let (status, resp) = route(&m, &method, &path, &auth, &body);
        let text = resp.to_string();
        let out = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        s.write_all(out.as_bytes()).await?;
    }
}

fn route(m: &Mock, method: &str, path: &str, auth: &str, body: &Value) -> (u16, Value) {
    match (method, path) {
        ("POST", "/api/v1/auth/register") => {
            let name = body["username"].as_str().unwrap_or("").to_string();
            let mut users = m.users.lock().unwrap();
            if users.contains_key(&name) {
                return (
                    409,
                    json!({"error": {"code": "conflict", "message": "taken"}}),
                );
            }
            let id = users.len() as u64 + 1;
            users.insert(name.clone(), id);
            (
                201,
                json!({"user": {"id": id, "username": name},
                       "tokens": {"access": format!("tok-{name}"), "refresh": "r", "token_type": "Bearer", "expires_in": 900}}),
            )
        }
        ("POST", "/api/v1/auth/login") => {
            let name = body["login"].as_str().unwrap_or("").to_string();
            if m.users.lock().unwrap().contains_key(&name) {
                (
                    200,
                    json!({"access": format!("tok-{name}"), "refresh": "r"}),
                )
            } else {
                (
                    401,
                    json!({"error": {"code": "invalid_credentials", "message": "no"}}),
                )
            }
        }
        ("PUT", p) if p.starts_with("/api/v1/rooms/") => {
            if !auth.starts_with("Bearer tok-") {
                return (
                    401,
                    json!({"error": {"code": "unauthorized", "message": "no"}}),
                );
            }
            let name = p.trim_start_matches("/api/v1/rooms/").to_string();
            let mut rooms = m.rooms.lock().unwrap();
            let created = !rooms.contains_key(&name);
            rooms.entry(name.clone()).or_default();
            (if created { 201 } else { 200 }, json!({"name": name}))
        }
        _ => (
            404,
            json!({"error": {"code": "not_found", "message": "no"}}),
        ),
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn ws(s: TcpStream, m: Arc<Mock>) {
    let mut uri = String::new();
    let cb = |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    };
    let Ok(mut sock) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
        return;
    };
    let (path, q) = split_query(&uri);
    let room_name = path.trim_start_matches("/ws/rooms/").to_string();
    let user = q
        .get("token")
        .cloned()
        .unwrap_or_default()
        .replace("tok-", "");
    let since: Option<u64> = q.get("since_seq").and_then(|v| v.parse().ok());
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    {
        let mut rooms = m.rooms.lock().unwrap();
        let room = rooms.entry(room_name.clone()).or_default();
        let n = room.joined;
        room.joined += 1;
        if !m.bare {
            let _ = tx.send(Out::Text(
                json!({"type": "ready", "room": {"name": room_name, "last_seq": room.last_seq},
                   "user": {"username": user}, "online": [], "last_seq": room.last_seq})
                .to_string(),
            ));
        }
        if let Some(since) = since {
            for f in room.history.iter().skip(since as usize) {
                let _ = tx.send(Out::Text(f.clone()));
            }
        }
        room.subs.push(Sub { n, tx: tx.clone() });
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(t)) => {
                    if sock.send(Message::text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Out::Close(code)) => {
                    let _ = sock
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: "slow consumer".into(),
                        })))
                        .await;
                    return;
                }
                None => return,
            },
            msg = sock.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(json!({}));
                    if v["type"] == "message" {
                        broadcast(&m, &room_name, &user, &v, &tx);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            }
        }
    }
}

fn broadcast(m: &Mock, room_name: &str, user: &str, v: &Value, me: &mpsc::UnboundedSender<Out>) {
    let mut rooms = m.rooms.lock().unwrap();
    let room = rooms.get_mut(room_name).unwrap();
    room.last_seq += 1;
    let seq = room.last_seq;
    m.stored.fetch_add(1, Relaxed);
    if m.bare {
        let frame =
            json!({"type": "message", "room": room_name, "user": user, "content": v["content"]})
                .to_string();
        room.subs.retain(|sub| {
            let _ = sub.tx.send(Out::Text(frame.clone()));
            !sub.tx.is_closed()
        });
        return;
    }
    let frame = json!({"type": "message", "id": seq, "room": room_name, "seq": seq,
        "user": {"id": 1, "username": user}, "content": v["content"], "client_id": v["client_id"],
        "created_at": "2026-11-21T15:54:00.123Z", "edited_at": null})
    .to_string();
    room.history.push(frame.clone());
    let f = m.faults;
    room.subs.retain(|sub| {
        if sub.n == 1 && f.close_at == Some(seq) {
            m.closed.fetch_add(1, Relaxed);
            let _ = sub.tx.send(Out::Close(4429));
            return false;
        }
        if sub.n == 0 && f.drop_every.is_some_and(|d| seq.is_multiple_of(d)) {
            m.dropped.fetch_add(1, Relaxed);
            return true;
        }
        let _ = sub.tx.send(Out::Text(frame.clone()));
        if sub.n == 0 && f.dup_every.is_some_and(|d| seq.is_multiple_of(d)) {
            m.duplicated.fetch_add(1, Relaxed);
            let _ = sub.tx.send(Out::Text(frame.clone()));
        }
        !sub.tx.is_closed()
    });
    let _ = me.send(Out::Text(
        json!({"type": "ack", "client_id": v["client_id"], "id": seq, "seq": seq}).to_string(),
    ));
}

async fn run_bench(addr: SocketAddr, prefix: &str, extra: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("chat-bench-test-{}-{prefix}", std::process::id()));
    let json_path = dir.with_extension("json");
    let url = format!("http://{addr}");
    let mut args = vec![
        "run",
        "--url",
        &url,
        "--prefix",
        prefix,
        "--rooms",
        "2",
        "--clients",
        "3",
        "--senders",
        "1",
        "--warmup",
        "300ms",
        "--drain",
        "3s",
        "--drain-quiet",
        "300ms",
        "--settle",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let jp = json_path.to_string_lossy().to_string();
    args.extend_from_slice(&["--json", &jp]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(&args)
        .output()
        .await
        .expect("run chat-bench");
    assert!(
        out.status.success(),
        "chat-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // visible with `cargo test -- --nocapture`
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json_path);
    v
}

fn u(v: &Value, p: &str) -> u64 {
    v.pointer(p)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {p} in {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_counts_every_delivery() {
    let (addr, mock) = start(Faults::default()).await;
    let v = run_bench(addr, "clean", &["--rate", "20", "--duration", "1500ms"]).await;
    let stored = mock.stored.load(Relaxed);
    assert!(stored > 20, "only {stored} messages");
    assert_eq!(u(&v, "/totals/sent_total"), stored);
    assert_eq!(u(&v, "/totals/loss_total"), 0);
    assert_eq!(u(&v, "/totals/duplicates_total"), 0);
    assert_eq!(u(&v, "/totals/out_of_order_total"), 0);
    assert_eq!(u(&v, "/totals/unacked"), 0);
    assert_eq!(u(&v, "/connect/connected"), 6);
    // every stored message reaches the 3 sockets of its room
    assert_eq!(u(&v, "/totals/received_total"), stored * 3);
    let windows = v["windows"].as_array().unwrap();
    let delivered: u64 = windows
        .iter()
        .map(|w| w["delivered"].as_u64().unwrap())
        .sum();
    let sent: u64 = windows.iter().map(|w| w["sent"].as_u64().unwrap()).sum();
    assert_eq!(delivered, stored * 3);
    assert_eq!(sent, stored);
    // 2 senders at 20/s for 1.5 s measured: about 60
    let m = u(&v, "/measured/sent");
    assert!((50..=66).contains(&m), "measured sent {m}");
    assert!(v["measured"]["latency"]["count"].as_u64().unwrap() > 0);
    assert_eq!(v["measured"]["pass"], true);
    assert_eq!(v["drain_timed_out"], false);
    // the machine's busy cores, per window and over the measured steps: between none and
    // every core this machine has
    let cores = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && l[3..].starts_with(|c: char| c.is_ascii_digit()))
        .count() as f64;
    for busy in windows.iter().map(|w| &w["machine_busy_cores"]).chain([
        &v["measured"]["machine_busy_cores"],
        &v["cpu"]["machine_busy_cores"],
    ]) {
        let b = busy
            .as_f64()
            .unwrap_or_else(|| panic!("no busy cores: {busy}"));
        assert!((0.0..=cores + 0.01).contains(&b), "busy {b} of {cores}");
    }

    // the same users again: they log in instead of registering, and new client ids
    let v2 = run_bench(addr, "clean", &["--rate", "10", "--duration", "500ms"]).await;
    assert_eq!(u(&v2, "/setup/logged_in"), 3);
    assert_eq!(u(&v2, "/setup/registered"), 0);
    assert_eq!(u(&v2, "/totals/loss_total"), 0);
    assert_eq!(u(&v2, "/totals/duplicates_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_loss_and_duplicates_are_counted_exactly() {
    let faults = Faults {
        drop_every: Some(5),
        dup_every: Some(7),
        close_at: None,
    };
    let (addr, mock) = start(faults).await;
    let v = run_bench(addr, "faults", &["--rate", "25", "--duration", "1s"]).await;
    let dropped = mock.dropped.load(Relaxed);
    let duplicated = mock.duplicated.load(Relaxed);
    assert!(dropped > 0 && duplicated > 0);
    assert_eq!(u(&v, "/totals/loss_total"), dropped);
    assert_eq!(u(&v, "/totals/duplicates_total"), duplicated);
    let windows = v["windows"].as_array().unwrap();
    let loss: u64 = windows.iter().map(|w| w["loss"].as_u64().unwrap()).sum();
    let dups: u64 = windows
        .iter()
        .map(|w| w["duplicates"].as_u64().unwrap())
        .sum();
    assert_eq!(loss, dropped, "per-window loss adds up");
    assert_eq!(dups, duplicated, "per-window duplicates add up");
    assert_eq!(u(&v, "/totals/loss_unattributed"), 0);
    assert_eq!(v["measured"]["pass"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_close_is_resumed_without_loss() {
    let faults = Faults {
        close_at: Some(6),
        ..Default::default()
    };
    let (addr, mock) = start(faults).await;
    let v = run_bench(addr, "resume", &["--rate", "20", "--duration", "1s"]).await;
    assert_eq!(mock.closed.load(Relaxed), 2, "one close per room");
    assert_eq!(v["unexpected_closes"]["4429"], 2);
    assert_eq!(u(&v, "/totals/reconnects"), 2);
    assert_eq!(u(&v, "/totals/loss_total"), 0);
    assert_eq!(u(&v, "/totals/duplicates_total"), 0);
    assert_eq!(u(&v, "/totals/sockets_alive_at_end"), 6);
    let stored = mock.stored.load(Relaxed);
    assert_eq!(u(&v, "/totals/received_total"), stored * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_only_drives_a_peer_without_ready_acks_or_seqs() {
    let (addr, mock) = start_mock(Mock {
        bare: true,
        ..Default::default()
    })
    .await;
    let v = run_bench(
        addr,
        "bare",
        &["--deliveries-only", "--rate", "20", "--duration", "1s"],
    )
    .await;
    let stored = mock.stored.load(Relaxed);
    assert!(stored > 20, "only {stored} messages");
    assert_eq!(v["scenario"]["deliveries_only"], true);
    // connected on upgrade: no `ready` awaited
    assert_eq!(u(&v, "/connect/connected"), 6);
    assert_eq!(u(&v, "/connect/ready/count"), 0);
    assert_eq!(u(&v, "/totals/sent_total"), stored);
    // no acks, and none expected
    assert_eq!(u(&v, "/measured/acked"), 0);
    assert_eq!(u(&v, "/totals/unacked"), 0);
    assert_eq!(u(&v, "/totals/unmatched_acks"), 0);
    // every message reaches the 3 sockets of its room, counted without a seq
    assert_eq!(u(&v, "/totals/received_total"), stored * 3);
    let windows = v["windows"].as_array().unwrap();
    let delivered: u64 = windows
        .iter()
        .map(|w| w["delivered"].as_u64().unwrap())
        .sum();
    let expected: u64 = windows
        .iter()
        .map(|w| w["expected_deliveries"].as_u64().unwrap())
        .sum();
    assert_eq!(delivered, stored * 3);
    assert_eq!(expected, stored * 3);
    assert!(u(&v, "/measured/latency/count") > 0);
    assert_eq!(v["measured"]["seq_checked"], false);
    assert_eq!(
        v["measured"]["pass"], true,
        "no acks must not fail the step"
    );
    assert_eq!(v["totals"]["frames"].get("unparsable"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_reports_steps_and_sustained_rate() {
    let (addr, _mock) = start(Faults::default()).await;
    let v = run_bench(
        addr,
        "ramp",
        &[
            "--ramp",
            "--rate",
            "10",
            "--ramp-factor",
            "2",
            "--max-rate",
            "40",
            "--step-duration",
            "600ms",
        ],
    )
    .await;
    let windows = v["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 4, "warm-up + 3 steps");
    assert_eq!(windows[3]["rate_per_sender"], 40.0);
    assert_eq!(v["sustained"]["step"], 3);
    assert!(v["sustained"]["delivered_per_s"].as_f64().unwrap() > 100.0);
    assert_eq!(u(&v, "/totals/loss_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_mode_opens_sockets_and_reads_rss() {
    let (addr, _mock) = start(Faults::default()).await;
    let url = format!("http://{addr}");
    let pid = std::process::id().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args([
            "idle",
            "--url",
            &url,
            "--prefix",
            "idle",
            "--sockets",
            "50",
            "--users",
            "5",
            "--rooms",
            "3",
            "--pid",
            &pid,
            "--settle",
            "300ms",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("connect: 50/50 sockets"), "{stdout}");
    assert!(stdout.contains("50 sockets open"), "{stdout}");
    assert!(stdout.contains("KiB per socket"), "{stdout}");
}

/// Manual cost check of the bench itself at scale against the mock, e.g.
/// `CHAT_BENCH_ARGS="run --rooms 20 --clients 100 --rate 20 --duration 10s" cargo test -p chat-bench --release --test mock_server -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore]
async fn manual_scale_against_mock() {
    let (addr, _mock) = start(Faults::default()).await;
    let args = std::env::var("CHAT_BENCH_ARGS").unwrap_or_else(|_| "run".into());
    let url = format!("http://{addr}");
    let mut full: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    full.extend(["--url".into(), url, "--prefix".into(), "scale".into()]);
    if full[0] == "idle" {
        full.extend(["--pid".into(), std::process::id().to_string()]);
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(&full)
        .output()
        .await
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
}
