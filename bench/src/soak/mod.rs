//! `chat-bench soak`: a chaos soak of a private cluster. It starts PostgreSQL, Redis, N
//! `chat-server` replicas and nginx (round robin, no stickiness), sets up users and rooms of
//! mixed sizes, spreads K sockets over worker processes (`chat-bench soak-worker`), sends at a
//! steady rate over REST and WebSocket, and meanwhile restarts Redis, rolls every replica,
//! SIGKILLs one and restarts PostgreSQL. At the end it reads every room's history over REST
//! and checks that every acknowledged message reached every socket that was in the room,
//! once and in order. Exit status 1 on any loss, duplicate or disorder, or a replica that
//! did not recover. See bench/README.md.

mod check;
mod infra;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::setup::{Setup, SetupReport, room_name, validate_prefix};
use crate::stats::parse_duration;
use crate::sys::{cpu_seconds, loadavg, rss_kib};
use chat_testkit::{Cluster, Replica, ready};
use check::{FaultKind, quantile, room_sizes, schedule};
use worker::{Plan, Role, SocketPlan, WorkerResult};

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Length of the sending phase (the chaos schedule is spread over it).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub duration: Duration,
    /// WebSockets in all (rooms of mixed sizes, 2..500 members).
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// chat-server replicas behind nginx.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Rooms (default: about one per 100 sockets, sizes cycling 2, 3, 5 … 200, 500).
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Messages per second in all, half over WebSocket and half over REST (one WebSocket
    /// and one REST sender per room).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Distinct users (argon2 registration is slow; users hold sockets in many rooms).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Sockets per worker process (each process may hold at most 20 000 open files).
    #[arg(long, default_value_t = 4000)]
    pub sockets_per_worker: usize,
    /// Redis restarts during the run.
    #[arg(long, default_value_t = 5)]
    pub redis_restarts: usize,
    /// Rolling restarts of every replica (SIGTERM, wait for the exit, start) during the run.
    #[arg(long, default_value_t = 3)]
    pub rolls: usize,
    /// Replicas SIGKILLed (and started again) during the run.
    #[arg(long, default_value_t = 1)]
    pub kills: usize,
    /// PostgreSQL restarts during the run.
    #[arg(long, default_value_t = 1)]
    pub pg_restarts: usize,
    /// How long Redis / PostgreSQL / a killed replica stay down.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub down: Duration,
    /// SHUTDOWN_GRACE_SECS of the replicas.
    #[arg(long, default_value_t = 5)]
    pub grace_secs: u64,
    /// WS_UPGRADES_PER_SEC of each replica (the server's default is 500).
    #[arg(long)]
    pub upgrades_per_sec: Option<u32>,
    /// After the sending phase, how long unanswered sends are still retried.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain: Duration,
    /// After the drain, how long sockets may take to receive every room's last message.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub final_wait: Duration,
    /// A WebSocket send unanswered this long is sent again (same client_id).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// Server RSS/CPU sample period.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// The server binary (default: chat-server next to this chat-bench).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Concurrent register/login requests during set-up.
    #[arg(long, default_value_t = 4)]
    pub setup_concurrency: usize,
    /// Concurrent WebSocket handshakes per worker.
    #[arg(long, default_value_t = 32)]
    pub connect_concurrency: usize,
    /// Keep the temporary directory (logs of every process) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    pub plan: PathBuf,
    #[arg(long)]
    pub worker: usize,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
struct FaultRecord {
    kind: FaultKind,
    /// Seconds since sending started.
    at_s: f64,
    start_ms: u64,
    end_ms: u64,
    detail: String,
    error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    rss_mib: Vec<Option<f64>>,
    cpu_pct: Vec<Option<f64>>,
    live: u64,
    sockets: u64,
    sent: u64,
    acked: u64,
    load1: Option<f64>,
}

#[derive(Debug, Default, Clone)]
struct WorkerView {
    connected: Option<(u64, u64)>,
    status: [u64; 5],
    drained: bool,
    done: bool,
}

#[derive(Debug, Serialize)]
struct FaultReport {
    kind: FaultKind,
    at_s: f64,
    action_s: f64,
    detail: String,
    error: Option<String>,
    sockets_dropped: usize,
    reconnect_p50_ms: Option<u64>,
    reconnect_p99_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    /// From the fault's start until the last dropped socket was live again.
    all_live_after_ms: Option<u64>,
    never_reconnected: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    sockets: usize,
    rooms: usize,
    room_sizes: Vec<usize>,
    replicas: usize,
    users: usize,
    workers: usize,
    rate: f64,
    duration_s: f64,
    setup: SetupReport,
    connect_s: f64,
    sent: u64,
    attempts: u64,
    acked: u64,
    acked_rest: u64,
    acked_ws: u64,
    never_answered: usize,
    /// Acknowledged messages missing from some member socket, and the (socket, message) pairs.
    acked_lost_messages: usize,
    acked_lost_deliveries: u64,
    /// Acknowledged but not in history (or under another seq).
    acked_not_stored: usize,
    ack_seq_mismatch: usize,
    ack_conflicts: u64,
    duplicates_delivered: u64,
    out_of_order: u64,
    duplicates_stored: usize,
    history_gaps: usize,
    /// Deliveries missing of messages that were committed but never acked to the sender.
    unacked_missing_deliveries: u64,
    sockets_incomplete: usize,
    messages_in_history: usize,
    deliveries: u64,
    /// (room, socket, seq, connection, what, seconds since sending started) of the first
    /// duplicates / late seqs.
    anomalies: Vec<(String, usize, i64, u64, String, f64)>,
    faults: Vec<FaultReport>,
    other_outages: usize,
    samples: Vec<Sample>,
    events: BTreeMap<String, u64>,
    replicas_ready_at_end: Vec<bool>,
    load_before: Option<f64>,
    load_after: Option<f64>,
    passed: bool,
}

fn now_ms() -> u64 {
    crate::ws::unix_ns() / 1_000_000
}

pub async fn soak(args: SoakArgs) -> Result<bool> {
    // the replicas, Redis and nginx inherit it: each holds thousands of sockets
    crate::sys::raise_nofile_limit();
    let dir = std::env::temp_dir().join(format!("chat-soak-{}", crate::run_id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("soak: working directory {}", dir.display());
    let res = tokio::select! {
        r = soak_in(&args, &dir) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // every process was stopped when the future above was dropped
    if args.keep || res.is_err() {
        eprintln!("soak: logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    res
}

async fn soak_in(args: &SoakArgs, dir: &Path) -> Result<bool> {
    let server = crate::cluster::server_binary(args.server_bin.as_deref())?;
    let rooms = args
        .rooms
        .unwrap_or_else(|| args.sockets.div_ceil(98).max(1));
    let sizes = room_sizes(args.sockets, rooms).map_err(anyhow::Error::msg)?;
    let workers = args.sockets.div_ceil(args.sockets_per_worker.max(1)).max(1);
    let users = args.users.max(2);
    let prefix = "soak";
    validate_prefix(prefix)?;
    let load_before = loadavg().map(|l| l.one);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(32)
        .build()?;

    // --- the cluster
    let mut cluster = infra::start(args, &server, dir).await?;
    let lb = cluster.base_url();

    // --- users, rooms, memberships (through the load balancer)
    let mut setup_report = SetupReport::default();
    let setup = Setup {
        http: http.clone(),
        urls: vec![lb.clone()],
        prefix: prefix.into(),
        password: "soak-password-1".into(),
        concurrency: args.setup_concurrency,
    };
    let tokens = setup.users(users, &mut setup_report).await?;
    let mut sockets = Vec::with_capacity(args.sockets);
    let mut pairs = Vec::new();
    let mut seen = HashSet::new();
    for (room, &size) in sizes.iter().enumerate() {
        for member in 0..size {
            let user = sockets.len() % users;
            let role = match member {
                0 => Role::WsSender,
                1 => Role::RestSender,
                _ => Role::Listen,
            };
            sockets.push(SocketPlan { room, user, role });
            if seen.insert((user, room)) {
                pairs.push((user, room));
            }
        }
    }
    setup
        .memberships(&tokens, &pairs, &mut setup_report)
        .await?;
    let run_id = crate::run_id();
    let senders = 2 * rooms;
    let plan = Plan {
        run_id: run_id.clone(),
        url: lb.clone(),
        rooms: (0..rooms).map(|j| room_name(prefix, j)).collect(),
        tokens,
        sockets,
        sender_rate: args.rate / senders as f64,
        workers,
        connect_concurrency: args.connect_concurrency,
        drain_secs: args.drain.as_secs().max(1),
        final_secs: args.final_wait.as_secs().max(1),
        ack_timeout_ms: args.ack_timeout.as_millis() as u64,
    };
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan)?)?;

    // --- workers
    let exe = std::env::current_exe()?;
    let views: Arc<Mutex<Vec<WorkerView>>> =
        Arc::new(Mutex::new(vec![WorkerView::default(); workers]));
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    for w in 0..workers {
        let mut child = tokio::process::Command::new(&exe)
            .arg("soak-worker")
            .arg("--plan")
            .arg(&plan_path)
            .arg("--worker")
            .arg(w.to_string())
            .arg("--out")
            .arg(dir.join(format!("worker{w}.json")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start a soak worker")?;
        stdins.push(child.stdin.take().context("worker stdin")?);
        let stdout = child.stdout.take().context("worker stdout")?;
        let views = views.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut it = line.split_whitespace();
                let mut v = views.lock().unwrap_or_else(|e| e.into_inner());
                match it.next() {
                    Some("connected") => {
                        let n: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
                        v[w].connected = Some((
                            n.first().copied().unwrap_or(0),
                            n.get(1).copied().unwrap_or(0),
                        ));
                    }
                    Some("status") => {
                        for (slot, x) in v[w].status.iter_mut().zip(it) {
                            *slot = x.parse().unwrap_or(0);
                        }
                    }
                    Some("drained") => v[w].drained = true,
                    Some("done") => v[w].done = true,
                    _ => {}
                }
            }
        });
        children.push(child);
    }
    let view = |f: &dyn Fn(&WorkerView) -> bool| -> bool {
        views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(f)
    };
    let sum = |i: usize| -> u64 {
        views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|v| v.status[i])
            .sum()
    };
    let connect_started = Instant::now();
    let mut last_print = Instant::now();
    while !view(&|v| v.connected.is_some()) {
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!("  sockets live {}/{}", sum(0), args.sockets);
        }
        for c in &mut children {
            if let Some(st) = c.try_wait()? {
                bail!("a soak worker exited during connect: {st}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let failed_first: u64 = views
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|v| v.connected.map(|c| c.1))
        .sum();
    eprintln!(
        "soak: {} sockets live in {connect_s:.1}s ({failed_first} still retrying), {rooms} rooms, {workers} workers; sending {} msg/s for {:?}",
        sum(0),
        args.rate,
        args.duration
    );
    for s in &mut stdins {
        s.write_all(b"go\n").await?;
    }

    // --- the sending phase, with the chaos schedule and the samples
    let t0 = Instant::now();
    let t0_ms = now_ms();
    let plan_faults = schedule(
        &[
            (FaultKind::RedisRestart, args.redis_restarts),
            (FaultKind::RollingRestart, args.rolls),
            (FaultKind::ReplicaKill, args.kills),
            (FaultKind::PostgresRestart, args.pg_restarts),
        ],
        args.duration.mul_f64(0.1),
        args.duration.mul_f64(0.8),
    );
    let pids: Arc<Mutex<Vec<Option<u32>>>> = Arc::new(Mutex::new(
        cluster.replicas.iter().map(Replica::pid).collect(),
    ));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (pids, samples, views) = (pids.clone(), samples.clone(), views.clone());
        let every = args.sample_every.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut prev: HashMap<u32, (f64, Instant)> = HashMap::new();
            loop {
                tokio::time::sleep(every).await;
                let now = Instant::now();
                let ps = pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut rss = Vec::new();
                let mut cpu = Vec::new();
                for p in &ps {
                    let Some(p) = p else {
                        rss.push(None);
                        cpu.push(None);
                        continue;
                    };
                    rss.push(rss_kib(&p.to_string()).map(|k| k as f64 / 1024.0));
                    let c = cpu_seconds(&p.to_string());
                    cpu.push(match (c, prev.get(p)) {
                        (Some(c), Some(&(c0, t))) => {
                            Some(100.0 * (c - c0) / (now - t).as_secs_f64())
                        }
                        _ => None,
                    });
                    if let Some(c) = c {
                        prev.insert(*p, (c, now));
                    }
                }
                let st: [u64; 5] = {
                    let v = views.lock().unwrap_or_else(|e| e.into_inner());
                    let mut s = [0u64; 5];
                    for w in v.iter() {
                        for (a, b) in s.iter_mut().zip(w.status) {
                            *a += b;
                        }
                    }
                    s
                };
                let sample = Sample {
                    t_s: (now - t0).as_secs_f64(),
                    rss_mib: rss,
                    cpu_pct: cpu,
                    live: st[0],
                    sockets: st[1],
                    sent: st[2],
                    acked: st[3],
                    load1: loadavg().map(|l| l.one),
                };
                eprintln!(
                    "  t={:>5.0}s live {}/{} sent {} acked {} pending {} rss MiB {:?} cpu % {:?}",
                    sample.t_s,
                    st[0],
                    st[1],
                    st[2],
                    st[3],
                    st[4],
                    sample
                        .rss_mib
                        .iter()
                        .map(|x| x.map(|v| v.round() as i64))
                        .collect::<Vec<_>>(),
                    sample
                        .cpu_pct
                        .iter()
                        .map(|x| x.map(|v| v.round() as i64))
                        .collect::<Vec<_>>()
                );
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(sample);
            }
        })
    };
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut kill_target = 0usize;
    for (at, kind) in plan_faults {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if t0.elapsed() >= args.duration {
            eprintln!("soak: no time left for the remaining faults");
            break;
        }
        let start_ms = now_ms();
        let at_s = t0.elapsed().as_secs_f64();
        eprintln!("soak: t={at_s:.0}s fault: {}", kind.label());
        let (detail, result) = run_fault(kind, &mut cluster, args, &mut kill_target, &pids).await;
        let error = result.err().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            eprintln!("soak: fault {} FAILED: {e}", kind.label());
        }
        faults.push(FaultRecord {
            kind,
            at_s,
            start_ms,
            end_ms: now_ms(),
            detail,
            error,
        });
    }
    if let Some(wait) = args.duration.checked_sub(t0.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let duration_s = t0.elapsed().as_secs_f64();

    // --- drain, final reconciliation
    eprintln!(
        "soak: stop sending; draining unanswered sends (at most {:?})",
        args.drain
    );
    for s in &mut stdins {
        s.write_all(b"stop\n").await?;
    }
    let drain_deadline = Instant::now() + args.drain + Duration::from_secs(15);
    while !view(&|v| v.drained) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut finals: HashMap<usize, i64> = HashMap::new();
    for (j, name) in plan.rooms.iter().enumerate() {
        let token = &plan.tokens[plan
            .sockets
            .iter()
            .find(|s| s.room == j)
            .map_or(0, |s| s.user)];
        let v: serde_json::Value =
            get_json(&http, &format!("{lb}/api/v1/rooms/{name}"), token).await?;
        finals.insert(j, v["last_seq"].as_i64().unwrap_or(0));
    }
    let finals_path = dir.join("finals.json");
    std::fs::write(&finals_path, serde_json::to_vec(&finals)?)?;
    eprintln!(
        "soak: waiting until every socket has every room's last message (at most {:?})",
        args.final_wait
    );
    for s in &mut stdins {
        s.write_all(format!("final {}\n", finals_path.display()).as_bytes())
            .await?;
        s.flush().await?;
    }
    drop(stdins);
    let wait_deadline = Instant::now() + args.final_wait + Duration::from_secs(30);
    for c in &mut children {
        let left = wait_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.wait()).await {
            Ok(st) => {
                let st = st?;
                if !st.success() {
                    bail!("a soak worker failed: {st}");
                }
            }
            Err(_) => bail!("a soak worker did not finish in time"),
        }
    }
    sampler.abort();
    let mut results: Vec<WorkerResult> = Vec::new();
    for w in 0..workers {
        let p = dir.join(format!("worker{w}.json"));
        results.push(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
        )?);
    }

    // --- history of every room
    let mut history: Vec<Vec<(i64, String)>> = Vec::new();
    for (j, name) in plan.rooms.iter().enumerate() {
        let token = &plan.tokens[plan
            .sockets
            .iter()
            .find(|s| s.room == j)
            .map_or(0, |s| s.user)];
        let mut items = Vec::new();
        let mut after = 0i64;
        loop {
            let v = get_json(
                &http,
                &format!("{lb}/api/v1/rooms/{name}/messages?after_seq={after}&limit=200"),
                token,
            )
            .await?;
            let page = v["items"].as_array().cloned().unwrap_or_default();
            for m in &page {
                let seq = m["seq"].as_i64().unwrap_or(0);
                items.push((seq, m["client_id"].as_str().unwrap_or_default().to_owned()));
                after = after.max(seq);
            }
            if page.is_empty() || !v["has_more"].as_bool().unwrap_or(false) {
                break;
            }
        }
        history.push(items);
    }
    let replicas_ready_at_end = {
        let mut out = Vec::new();
        for r in &cluster.replicas {
            out.push(r.pid().is_some() && ready(&http, &r.base_url()).await);
        }
        out
    };
    drop(cluster);

    let report = build_report(
        args,
        &plan,
        &sizes,
        workers,
        users,
        setup_report,
        connect_s,
        duration_s,
        &results,
        &history,
        &faults,
        samples.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        replicas_ready_at_end,
        load_before,
        t0_ms,
    );
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report.passed)
}

async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Result<serde_json::Value> {
    for attempt in 0..20u32 {
        match http.get(url).bearer_auth(token).send().await {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) => eprintln!("GET {url}: HTTP {} (retrying)", r.status()),
            Err(e) => eprintln!("GET {url}: {e} (retrying)"),
        }
        tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt + 1))).await;
    }
    bail!("GET {url} kept failing")
}

async fn run_fault(
    kind: FaultKind,
    c: &mut Cluster,
    args: &SoakArgs,
    kill_target: &mut usize,
    pids: &Mutex<Vec<Option<u32>>>,
) -> (String, Result<()>) {
    let set_pid = |i: usize, pid: Option<u32>| {
        if let Some(slot) = pids.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
            *slot = pid;
        }
    };
    let grace = Duration::from_secs(args.grace_secs + 10);
    match kind {
        FaultKind::RedisRestart => (
            "redis-server SIGTERM, restarted".into(),
            match c.redis.as_mut() {
                Some(redis) => redis.restart(args.down).await,
                None => Err(anyhow::anyhow!("no Redis in this cluster")),
            },
        ),
        FaultKind::PostgresRestart => (
            "pg_ctl stop -m fast, start".into(),
            match c.private_postgres_mut() {
                Some(pg) => pg.restart(args.down).await,
                None => Err(anyhow::anyhow!("no private PostgreSQL in this cluster")),
            },
        ),
        FaultKind::ReplicaKill => {
            let i = *kill_target % c.replicas.len();
            *kill_target += 1;
            let r = &mut c.replicas[i];
            let res = async {
                r.stop("-KILL", Duration::from_secs(10)).await?;
                set_pid(i, None);
                tokio::time::sleep(args.down).await;
                r.start().await
            }
            .await;
            set_pid(i, r.pid());
            (format!("{} SIGKILLed, restarted", r.name()), res)
        }
        FaultKind::RollingRestart => {
            let mut res = Ok(());
            for i in 0..c.replicas.len() {
                let r = &mut c.replicas[i];
                let step = async {
                    let t = Instant::now();
                    r.stop("-TERM", grace).await?;
                    eprintln!(
                        "  {} exited {:.1}s after SIGTERM",
                        r.name(),
                        t.elapsed().as_secs_f64()
                    );
                    set_pid(i, None);
                    r.start().await
                }
                .await;
                set_pid(i, r.pid());
                if let Err(e) = step {
                    res = Err(e);
                    break;
                }
            }
            ("every replica: SIGTERM, exit, start".into(), res)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    args: &SoakArgs,
    plan: &Plan,
    sizes: &[usize],
    workers: usize,
    users: usize,
    setup: SetupReport,
    connect_s: f64,
    duration_s: f64,
    results: &[WorkerResult],
    history: &[Vec<(i64, String)>],
    faults: &[FaultRecord],
    samples: Vec<Sample>,
    replicas_ready_at_end: Vec<bool>,
    load_before: Option<f64>,
    t0_ms: u64,
) -> Report {
    // history: seq → client_id per room; gaps; a client_id stored twice
    let mut stored: Vec<HashMap<i64, &str>> = Vec::new();
    let mut history_gaps = 0usize;
    let mut duplicates_stored = 0usize;
    for items in history {
        let mut by_seq = HashMap::new();
        let mut ids = HashSet::new();
        for (k, (seq, cid)) in items.iter().enumerate() {
            if *seq != k as i64 + 1 {
                history_gaps += 1;
            }
            if !cid.is_empty() && !ids.insert(cid.as_str()) {
                duplicates_stored += 1;
            }
            by_seq.insert(*seq, cid.as_str());
        }
        stored.push(by_seq);
    }
    let mut acked: HashSet<(usize, i64)> = HashSet::new();
    let (mut acked_not_stored, mut ack_seq_mismatch) = (0usize, 0usize);
    let (mut acked_rest, mut acked_ws) = (0u64, 0u64);
    for a in results.iter().flat_map(|r| &r.acks) {
        acked.insert((a.room, a.seq));
        if a.rest {
            acked_rest += 1;
        } else {
            acked_ws += 1;
        }
        match stored.get(a.room).and_then(|m| m.get(&a.seq)) {
            Some(cid) if *cid == a.client_id => {}
            Some(_) => ack_seq_mismatch += 1,
            None => acked_not_stored += 1,
        }
    }
    let mut lost_messages: HashSet<(usize, i64)> = HashSet::new();
    let (mut lost_deliveries, mut unacked_missing) = (0u64, 0u64);
    let (mut dups, mut ooo, mut deliveries) = (0u64, 0u64, 0u64);
    let mut incomplete = 0usize;
    for s in results.iter().flat_map(|r| &r.sockets) {
        dups += s.duplicates;
        ooo += s.out_of_order;
        deliveries += s.received;
        if s.missing_count > 0 {
            incomplete += 1;
        }
        for &seq in &s.missing {
            if acked.contains(&(s.room, seq)) {
                lost_deliveries += 1;
                lost_messages.insert((s.room, seq));
            } else {
                unacked_missing += 1;
            }
        }
        // beyond the listed 10 000: count as lost (unknown which)
        lost_deliveries += s.missing_count.saturating_sub(s.missing.len() as u64);
    }
    // outages attributed to the fault during or after which they began
    let outages: Vec<&worker::Outage> = results.iter().flat_map(|r| &r.outages).collect();
    let mut fault_reports = Vec::new();
    let mut attributed = 0usize;
    for (k, f) in faults.iter().enumerate() {
        let until = faults.get(k + 1).map_or(u64::MAX, |n| n.start_ms);
        let mine: Vec<&&worker::Outage> = outages
            .iter()
            .filter(|o| o.down_ms >= f.start_ms && o.down_ms < until)
            .collect();
        attributed += mine.len();
        let mut durs: Vec<u64> = mine
            .iter()
            .filter_map(|o| o.up_ms.map(|u| u.saturating_sub(o.down_ms)))
            .collect();
        durs.sort_unstable();
        let never = mine.iter().filter(|o| o.up_ms.is_none()).count();
        fault_reports.push(FaultReport {
            kind: f.kind,
            at_s: f.at_s,
            action_s: f.end_ms.saturating_sub(f.start_ms) as f64 / 1000.0,
            detail: f.detail.clone(),
            error: f.error.clone(),
            sockets_dropped: mine.len(),
            reconnect_p50_ms: quantile(&durs, 0.5),
            reconnect_p99_ms: quantile(&durs, 0.99),
            reconnect_max_ms: durs.last().copied(),
            all_live_after_ms: mine
                .iter()
                .filter_map(|o| o.up_ms)
                .max()
                .map(|u| u.saturating_sub(f.start_ms)),
            never_reconnected: never,
        });
    }
    let mut events = BTreeMap::new();
    for r in results {
        for (k, v) in &r.events {
            *events.entry(k.clone()).or_default() += v;
        }
    }
    let never_answered: usize = results.iter().map(|r| r.never_answered.len()).sum();
    let ack_conflicts: u64 = results.iter().map(|r| r.ack_conflicts).sum();
    let faults_failed = faults.iter().any(|f| f.error.is_some());
    let passed = lost_deliveries == 0
        && acked_not_stored == 0
        && ack_seq_mismatch == 0
        && ack_conflicts == 0
        && dups == 0
        && ooo == 0
        && duplicates_stored == 0
        && history_gaps == 0
        && !faults_failed
        && replicas_ready_at_end.iter().all(|r| *r);
    Report {
        sockets: plan.sockets.len(),
        rooms: plan.rooms.len(),
        room_sizes: sizes.to_vec(),
        replicas: args.replicas,
        users,
        workers,
        rate: args.rate,
        duration_s,
        setup,
        connect_s,
        sent: results.iter().map(|r| r.sent).sum(),
        attempts: results.iter().map(|r| r.attempts).sum(),
        acked: acked_rest + acked_ws,
        acked_rest,
        acked_ws,
        never_answered,
        acked_lost_messages: lost_messages.len(),
        acked_lost_deliveries: lost_deliveries,
        acked_not_stored,
        ack_seq_mismatch,
        ack_conflicts,
        duplicates_delivered: dups,
        out_of_order: ooo,
        duplicates_stored,
        history_gaps,
        unacked_missing_deliveries: unacked_missing,
        sockets_incomplete: incomplete,
        messages_in_history: history.iter().map(Vec::len).sum(),
        deliveries,
        anomalies: results
            .iter()
            .flat_map(|r| &r.sockets)
            .flat_map(|s| {
                s.anomalies.iter().map(|(seq, c, w, at)| {
                    let t = (*at as f64 - t0_ms as f64) / 1000.0;
                    (plan.rooms[s.room].clone(), s.index, *seq, *c, w.clone(), t)
                })
            })
            .take(50)
            .collect(),
        faults: fault_reports,
        other_outages: outages.len() - attributed,
        samples,
        events,
        replicas_ready_at_end,
        load_before,
        load_after: loadavg().map(|l| l.one),
        passed,
    }
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn print_report(r: &Report) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "== chat-bench soak ==");
    let _ = writeln!(
        o,
        "scenario: {} sockets in {} rooms (sizes {}..{}), {} replicas behind nginx, {} users, {} worker processes, {} msg/s for {:.0}s",
        r.sockets,
        r.rooms,
        r.room_sizes.iter().min().unwrap_or(&0),
        r.room_sizes.iter().max().unwrap_or(&0),
        r.replicas,
        r.users,
        r.workers,
        r.rate,
        r.duration_s
    );
    let _ = writeln!(
        o,
        "setup: {} users in {:.1}s, {} memberships in {:.1}s; all sockets live in {:.1}s",
        r.setup.users,
        r.setup.users_secs,
        r.setup.memberships,
        r.setup.memberships_secs,
        r.connect_s
    );
    let _ = writeln!(
        o,
        "sends: {} messages ({} attempts with retries), acked {} (REST {}, WS {}), never answered {}",
        r.sent, r.attempts, r.acked, r.acked_rest, r.acked_ws, r.never_answered
    );
    let _ = writeln!(
        o,
        "history: {} messages, gaps {}, client_id stored twice {}; acked but not stored {}, ack/history seq mismatch {}, conflicting acks {}",
        r.messages_in_history,
        r.history_gaps,
        r.duplicates_stored,
        r.acked_not_stored,
        r.ack_seq_mismatch,
        r.ack_conflicts
    );
    let _ = writeln!(
        o,
        "delivery: {} deliveries; ACKED LOST {} messages ({} socket deliveries); DUPLICATES {}; OUT OF ORDER {}; unacked-but-committed missing deliveries {}; sockets incomplete {}",
        r.deliveries,
        r.acked_lost_messages,
        r.acked_lost_deliveries,
        r.duplicates_delivered,
        r.out_of_order,
        r.unacked_missing_deliveries,
        r.sockets_incomplete
    );
    let _ = writeln!(
        o,
        "faults (reconnect = socket lost → next ready, through nginx):"
    );
    let _ = writeln!(
        o,
        "  {:>6} {:<17} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6}  error",
        "t(s)",
        "fault",
        "action s",
        "dropped",
        "p50 ms",
        "p99 ms",
        "max ms",
        "all live ms",
        "never"
    );
    for f in &r.faults {
        let _ = writeln!(
            o,
            "  {:>6.0} {:<17} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6}  {}",
            f.at_s,
            f.kind.label(),
            f.action_s,
            f.sockets_dropped,
            ms(f.reconnect_p50_ms),
            ms(f.reconnect_p99_ms),
            ms(f.reconnect_max_ms),
            ms(f.all_live_after_ms),
            f.never_reconnected,
            f.error.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(o, "  outages outside any fault window: {}", r.other_outages);
    let _ = writeln!(o, "server over time (RSS MiB / CPU % per replica):");
    for s in &r.samples {
        let cols: Vec<String> = s
            .rss_mib
            .iter()
            .zip(&s.cpu_pct)
            .map(|(m, c)| {
                format!(
                    "{:>5}/{:>4}",
                    m.map_or("-".into(), |v| format!("{v:.0}")),
                    c.map_or("-".into(), |v| format!("{v:.0}"))
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "  t={:>5.0}s live {:>6}/{:<6} acked {:>8}  {}  load {}",
            s.t_s,
            s.live,
            s.sockets,
            s.acked,
            cols.join("  "),
            s.load1.map_or("-".into(), |l| format!("{l:.2}"))
        );
    }
    let _ = writeln!(o, "client events: {:?}", r.events);
    let _ = writeln!(
        o,
        "replicas ready at the end: {:?}; load average (1 min) before {:?}, after {:?}",
        r.replicas_ready_at_end, r.load_before, r.load_after
    );
    let _ = writeln!(o, "RESULT: {}", if r.passed { "PASS" } else { "FAIL" });
}
