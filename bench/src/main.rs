//! `chat-bench`: load generator for the chat server (REST set-up, WebSocket fan-out
//! throughput, end-to-end latency, exactly-once/in-order delivery checks, idle memory
//! per socket). See bench/README.md.

mod cluster;
mod report;
mod setup;
mod soak;
mod stats;
mod sys;
mod track;
mod ws;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use report::{
    ConnectReport, CpuReport, IdleReport, RunReport, Scenario, Sustained, Totals, WindowReport,
};
use setup::{Setup, SetupReport, http_base, room_name, validate_prefix, ws_base};
use stats::{
    LatencySummary, Plan, StepVerdictInput, new_histogram, parse_duration, ramp_rates, step_passes,
    sustained_step,
};
use sys::{CpuSample, cpu_delta, loadavg, machine_delta, raise_nofile_limit, rss_kib, sample_cpu};
use track::AckIndex;
use ws::{ConnectEvent, Phase, SenderSpec, Shared, SocketOutcome, SocketSpec, WindowStats};

#[derive(Parser, Debug)]
#[command(
    name = "chat-bench",
    version,
    about = "Load generator for the chat server: fan-out throughput, latency, exactly-once checks, idle memory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Rooms × clients sockets, some of them sending at a paced rate; measures delivery.
    Run(RunArgs),
    /// Opens many idle sockets and measures the server's RSS per socket.
    Idle(IdleArgs),
    /// Chaos soak: a private cluster (PostgreSQL, Redis, replicas, nginx) under traffic while
    /// Redis, the replicas and PostgreSQL are restarted; checks that nothing acked is lost.
    Soak(soak::SoakArgs),
    /// A local cluster (database, Redis, N replicas, nginx if asked) until SIGTERM, SIGINT or
    /// the end of stdin; prints its endpoints (and writes them with --env-out).
    Cluster(cluster::ClusterArgs),
    /// One generator process of `soak` (started by it).
    #[command(hide = true)]
    SoakWorker(soak::WorkerArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Server base URL; repeat (or comma-separate) to spread users and sockets round-robin.
    #[arg(long = "url", value_delimiter = ',', default_values_t = vec!["http://127.0.0.1:8080".to_string()])]
    urls: Vec<String>,
    /// Names: users `<prefix>_u<i>`, rooms `<prefix>-r<j>` ([a-z0-9_-]).
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Password of every bench user.
    #[arg(long, default_value = "bench-password-1")]
    password: String,
    /// Concurrent register/login requests (argon2-bound on the server).
    #[arg(long, default_value_t = 8)]
    setup_concurrency: usize,
    /// Concurrent WebSocket handshakes.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Per-socket limit for connect + upgrade + `ready`.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Tokio worker threads of the bench itself (the server needs the rest of the CPU).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server process ids whose CPU time (utime+stime from /proc/<pid>/stat) is measured.
    #[arg(long, value_delimiter = ',')]
    cpu_pids: Vec<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Number of rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Sockets (clients) per room.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// The first S clients of each room also send.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Messages per second per sender (the ramp's first step).
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Distinct users; socket (room j, client i) logs in as user (j*clients + i) % users.
    /// Default: `clients` (client i is the same user in every room).
    #[arg(long)]
    users: Option<usize>,
    /// Sending before measurement starts (not counted in the measured figures).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured time of a plain run.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// After the last send, keep reading at most this long so acks and deliveries can
    /// arrive (it ends earlier once no message or ack frame arrived for --drain-quiet).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
    /// The drain ends after this long without any message or ack frame.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    drain_quiet: Duration,
    /// Pause after all sockets are connected, before sending (lets presence traffic settle).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    /// Run consecutive steps with a rising per-sender rate on the same sockets.
    #[arg(long)]
    ramp: bool,
    /// Ramp: multiply the rate by this each step.
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    /// Ramp: add this to the rate each step instead of multiplying.
    #[arg(long)]
    ramp_step: Option<f64>,
    /// Ramp: length of each step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    step_duration: Duration,
    /// Ramp: highest per-sender rate.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Ramp: most steps.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// Ramp: stop after this many consecutive failing steps (0 = run every step).
    #[arg(long, default_value_t = 2)]
    ramp_stop_after: usize,
    /// A step passes when its p99 end-to-end latency is below this (and no loss/dups).
    #[arg(long, default_value_t = 100.0)]
    p99_limit_ms: f64,
    /// Attempts to reconnect (resuming with since_seq) after the server closed a socket,
    /// per outage, with exponential backoff from 0.25 s to 4 s (5 ≈ 8 s in all).
    #[arg(long, default_value_t = 5)]
    max_reconnects: u32,
    /// For a peer without acks, seqs or `ready` (a bare fan-out reference): a socket counts
    /// as connected once upgraded, sends are not expected to be acked, and deliveries are
    /// counted and timed but NOT checked for loss, duplicates or order.
    #[arg(long)]
    deliveries_only: bool,
}

#[derive(Args, Debug, Clone)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Sockets to open.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Server process whose VmRSS is read before and after.
    #[arg(long)]
    pid: Option<u32>,
    /// Rooms the sockets are spread over.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Users the sockets are spread over (each user has many sockets).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Wait after the last socket opened before reading RSS again.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    settle: Duration,
    /// Keep the sockets open this much longer after reporting.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    hold: Duration,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.cmd {
        Cmd::Run(a) => a.common.threads,
        Cmd::Idle(a) => a.common.threads,
        Cmd::Soak(_) | Cmd::SoakWorker(_) | Cmd::Cluster(_) => 1,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Idle(a) => idle(a).await,
            Cmd::Soak(a) => {
                if !soak::soak(a).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Cmd::Cluster(a) => cluster::run(a).await,
            Cmd::SoakWorker(a) => soak::worker::run(a.plan, a.worker, a.out).await,
        }
    })
}

fn run_id() -> String {
    // base36 of the unix time in ms: unique per run, no '-' or ':' in it
    let mut n = ws::unix_ns() / 1_000_000;
    let mut s = Vec::new();
    while n > 0 {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

fn check_fd_limit(sockets: usize) {
    match raise_nofile_limit() {
        Some(limit) if (limit as usize) < sockets + 64 => eprintln!(
            "warning: open-files limit {limit} is below the {sockets} sockets needed (+64); raise it with `ulimit -n`"
        ),
        Some(_) => {}
        None => eprintln!("warning: could not read/raise the open-files limit"),
    }
}

fn http_client(pool: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(pool)
        .build()?)
}

struct Urls {
    http: Vec<String>,
    ws: Vec<String>,
}

fn urls(list: &[String]) -> Result<Urls> {
    if list.is_empty() {
        bail!("at least one --url is needed");
    }
    Ok(Urls {
        http: list.iter().map(|u| http_base(u)).collect::<Result<_>>()?,
        ws: list.iter().map(|u| ws_base(u)).collect::<Result<_>>()?,
    })
}

/// Connect-phase figures, mergeable across batches.
struct ConnectStats {
    attempted: usize,
    ok: usize,
    failed: usize,
    errors: BTreeMap<String, u64>,
    wall: Duration,
    upgrade: hdrhistogram::Histogram<u64>,
    ready: hdrhistogram::Histogram<u64>,
}

impl ConnectStats {
    fn new() -> Self {
        Self {
            attempted: 0,
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
            wall: Duration::ZERO,
            upgrade: new_histogram(),
            ready: new_histogram(),
        }
    }

    fn merge(&mut self, o: &ConnectStats) {
        self.attempted += o.attempted;
        self.ok += o.ok;
        self.failed += o.failed;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.wall += o.wall;
        let _ = self.upgrade.add(&o.upgrade);
        let _ = self.ready.add(&o.ready);
    }

    fn report(&self) -> ConnectReport {
        let wall_s = self.wall.as_secs_f64();
        ConnectReport {
            attempted: self.attempted,
            connected: self.ok,
            failed: self.failed,
            errors: self.errors.clone(),
            wall_s,
            rate_per_s: per_s(self.ok as u64, wall_s),
            upgrade: LatencySummary::from_us(&self.upgrade),
            ready: LatencySummary::from_us(&self.ready),
        }
    }
}

/// Spawns one task per socket and waits until every one has connected or failed.
async fn spawn_and_connect(
    specs: Vec<SocketSpec>,
    shared: &Arc<Shared>,
    ctl: &watch::Receiver<Phase>,
    concurrency: usize,
) -> (Vec<JoinHandle<SocketOutcome>>, ConnectStats) {
    let n = specs.len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let t0 = Instant::now();
    let handles: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            tokio::spawn(ws::socket_task(
                spec,
                shared.clone(),
                ctl.clone(),
                sem.clone(),
                tx.clone(),
            ))
        })
        .collect();
    drop(tx);
    let mut st = ConnectStats::new();
    st.attempted = n;
    let mut last_print = Instant::now();
    while let Some(ev) = rx.recv().await {
        match ev {
            ConnectEvent::Ok {
                upgrade_us,
                ready_us,
            } => {
                st.ok += 1;
                st.upgrade.saturating_record(upgrade_us.max(1));
                if let Some(r) = ready_us {
                    st.ready.saturating_record(r.max(1));
                }
            }
            ConnectEvent::Err(kind) => {
                st.failed += 1;
                *st.errors.entry(kind).or_default() += 1;
            }
        }
        st.wall = t0.elapsed();
        if last_print.elapsed() >= Duration::from_secs(2) || st.ok + st.failed == n {
            last_print = Instant::now();
            eprintln!(
                "  sockets {}/{n} connected, {} failed, {:.1}s",
                st.ok,
                st.failed,
                st.wall.as_secs_f64()
            );
        }
    }
    (handles, st)
}

async fn join_all(handles: Vec<JoinHandle<SocketOutcome>>) -> Vec<SocketOutcome> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(o) => out.push(o),
            Err(e) => eprintln!("socket task failed: {e}"),
        }
    }
    out
}

fn write_json<T: serde::Serialize>(path: &Option<PathBuf>, value: &T) -> Result<()> {
    if let Some(p) = path {
        let f = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), value)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Report of windows `ws` taken together (one window, or all measured steps).
#[allow(clippy::too_many_arguments)]
fn window_report(
    name: String,
    shared: &Shared,
    ws: std::ops::RangeInclusive<usize>,
    rate: f64,
    senders: usize,
    loss: u64,
    cpu: Option<f64>,
    p99_limit_ms: f64,
    judge: bool,
) -> WindowReport {
    let mut r = WindowReport {
        name,
        rate_per_sender: rate,
        offered_per_s: rate * senders as f64,
        loss,
        seq_checked: !shared.deliveries_only,
        ..Default::default()
    };
    let mut expected = 0;
    let mut lat = new_histogram();
    let mut ack = new_histogram();
    for w in ws {
        let s: &WindowStats = &shared.windows[w];
        r.secs += shared.plan.window_secs(w);
        r.sent += s.sent.load(Relaxed);
        r.acked += s.acked.load(Relaxed);
        r.delivered += s.delivered.load(Relaxed);
        r.duplicates += s.duplicates.load(Relaxed);
        r.out_of_order += s.out_of_order.load(Relaxed);
        expected += s.expected.load(Relaxed);
        r.unexpected_closes += s.closes.load(Relaxed);
        let _ = lat.add(WindowStats::merged(&s.latency));
        let _ = ack.add(WindowStats::merged(&s.ack_latency));
    }
    r.expected_deliveries = shared.deliveries_only.then_some(expected);
    r.sent_per_s = per_s(r.sent, r.secs);
    r.acked_per_s = per_s(r.acked, r.secs);
    r.delivered_per_s = per_s(r.delivered, r.secs);
    r.latency = LatencySummary::from_us(&lat);
    r.ack_latency = LatencySummary::from_us(&ack);
    r.server_cpu_s = cpu;
    r.deliveries_per_cpu_s = cpu.filter(|c| *c > 0.0).map(|c| r.delivered as f64 / c);
    if judge {
        r.pass = Some(step_passes(&verdict_input(&r), p99_limit_ms));
    }
    r
}

fn verdict_input(r: &WindowReport) -> StepVerdictInput {
    StepVerdictInput {
        rate: r.rate_per_sender,
        sent: r.sent,
        acked: r.acked,
        delivered: r.delivered,
        p99_ms: r.latency.p99_ms,
        loss: r.loss,
        duplicates: r.duplicates,
        acks_expected: r.seq_checked,
    }
}

fn frame_map(shared: &Shared) -> BTreeMap<String, u64> {
    let f = &shared.frames;
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("ready", &f.ready),
        ("message", &f.message),
        ("ack", &f.ack),
        ("presence", &f.presence),
        ("typing", &f.typing),
        ("error", &f.error),
        ("pong", &f.pong),
        ("other", &f.other),
        ("binary", &f.binary),
        ("unparsable", &f.unparsable),
        ("foreign_message", &f.foreign),
        ("text_unparsed", &f.text),
    ] {
        let v = v.load(Relaxed);
        if v > 0 {
            m.insert(k.to_string(), v);
        }
    }
    m
}

fn locked_map(m: &std::sync::Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    m.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

struct Drained {
    /// Per room: the seq every socket must have reached (loss end point).
    end_seqs: Vec<u64>,
    secs: f64,
    timed_out: bool,
}

/// Reads on (the sockets do) until no message or ack frame arrived for `quiet`, or
/// `max` passed. If it timed out the server is still busy delivering, so the loss end
/// point is each room's highest acked seq as it was `LAG` before the end: those
/// messages had that long to arrive.
async fn drain(shared: &Shared, max: Duration, quiet: Duration) -> Drained {
    const LAG: Duration = Duration::from_secs(2);
    let t0 = Instant::now();
    let activity = || shared.frames.message.load(Relaxed) + shared.frames.ack.load(Relaxed);
    let acked = || -> Vec<u64> {
        shared
            .rooms
            .iter()
            .map(|r| r.max_acked.load(Relaxed))
            .collect()
    };
    let mut last = activity();
    let mut last_change = Instant::now();
    let mut history: std::collections::VecDeque<(Instant, Vec<u64>)> = Default::default();
    eprintln!(
        "draining (until {:.1}s quiet, at most {:.1}s)…",
        quiet.as_secs_f64(),
        max.as_secs_f64()
    );
    loop {
        let now = Instant::now();
        history.push_back((now, acked()));
        while history.len() > 1 && now.duration_since(history[1].0) >= LAG {
            history.pop_front();
        }
        let cur = activity();
        if cur != last {
            last = cur;
            last_change = now;
        }
        if now.duration_since(last_change) >= quiet {
            return Drained {
                end_seqs: acked(),
                secs: t0.elapsed().as_secs_f64(),
                timed_out: false,
            };
        }
        if now.duration_since(t0) >= max {
            eprintln!(
                "drain timed out with the server still delivering: loss is counted up to the seqs acked {:.0}s before the end",
                LAG.as_secs_f64()
            );
            return Drained {
                end_seqs: history.pop_front().map(|(_, v)| v).unwrap_or_else(acked),
                secs: t0.elapsed().as_secs_f64(),
                timed_out: true,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(a: RunArgs) -> Result<()> {
    let c = &a.common;
    validate_prefix(&c.prefix)?;
    if a.rooms == 0 || a.clients == 0 {
        bail!("--rooms and --clients must be at least 1");
    }
    if a.senders > a.clients {
        bail!(
            "--senders ({}) cannot exceed --clients ({})",
            a.senders,
            a.clients
        );
    }
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        bail!("--rate must be > 0");
    }
    if a.ramp && a.step_duration.is_zero() || !a.ramp && a.duration.is_zero() {
        bail!("the measured duration must be > 0");
    }
    let urls = urls(&c.urls)?;
    let sockets = a.rooms * a.clients;
    check_fd_limit(sockets);
    let users = a.users.unwrap_or(a.clients).max(1);
    let rates = if a.ramp {
        ramp_rates(a.rate, a.ramp_factor, a.ramp_step, a.max_rate, a.max_steps)
    } else {
        vec![a.rate]
    };
    let step = if a.ramp { a.step_duration } else { a.duration };
    let plan = Plan {
        warmup_ns: a.warmup.as_nanos() as u64,
        step_ns: step.as_nanos() as u64,
        rates: rates.clone(),
    };
    let run_id = run_id();
    let scenario = Scenario {
        urls: urls.http.clone(),
        rooms: a.rooms,
        clients_per_room: a.clients,
        senders_per_room: a.senders,
        users,
        sockets,
        rate_per_sender: a.rate,
        ramp: a.ramp,
        ramp_rates: rates.clone(),
        warmup_s: a.warmup.as_secs_f64(),
        step_s: step.as_secs_f64(),
        drain_s: a.drain.as_secs_f64(),
        p99_limit_ms: a.p99_limit_ms,
        prefix: c.prefix.clone(),
        threads: c.threads,
        max_reconnects: a.max_reconnects,
        deliveries_only: a.deliveries_only,
    };
    eprintln!(
        "chat-bench run {run_id}: {} rooms × {} clients = {sockets} sockets, {} senders/room at {:?} msg/s, {users} users, urls {}",
        a.rooms,
        a.clients,
        a.senders,
        rates,
        urls.http.join(",")
    );

    // --- set-up over REST
    let st = Setup {
        http: http_client(c.setup_concurrency * 2)?,
        urls: urls.http.clone(),
        prefix: c.prefix.clone(),
        password: c.password.clone(),
        concurrency: c.setup_concurrency,
    };
    let mut setup_report = SetupReport::default();
    eprintln!("setting up {users} users…");
    let tokens = st.users(users, &mut setup_report).await?;
    let user_of = |j: usize, i: usize| (j * a.clients + i) % users;
    let mut pairs = BTreeSet::new();
    for j in 0..a.rooms {
        for i in 0..a.clients {
            pairs.insert((j, user_of(j, i)));
        }
    }
    // room-major order so that each room is created by its client 0's user
    let pairs: Vec<(usize, usize)> = pairs.into_iter().map(|(j, u)| (u, j)).collect();
    eprintln!("joining {} rooms ({} memberships)…", a.rooms, pairs.len());
    st.memberships(&tokens, &pairs, &mut setup_report).await?;

    // --- sockets
    let mut shared = Shared::new(
        run_id.clone(),
        plan.clone(),
        a.rooms,
        c.threads,
        c.connect_timeout,
        a.max_reconnects,
        true,
    );
    shared.deliveries_only = a.deliveries_only;
    let shared = Arc::new(shared);
    let total_senders = a.rooms * a.senders;
    let mut specs = Vec::with_capacity(sockets);
    for j in 0..a.rooms {
        let room = room_name(&c.prefix, j);
        for i in 0..a.clients {
            let idx = j * a.clients + i;
            let base = &urls.ws[idx % urls.ws.len()];
            let sender = (i < a.senders).then(|| SenderSpec {
                id: format!("{run_id}.{j}.{i}"),
                phase: (j * a.senders + i) as f64 / total_senders.max(1) as f64,
            });
            specs.push(SocketSpec {
                idx,
                room: j,
                url: format!("{base}/ws/rooms/{room}?token={}", tokens[user_of(j, i)]),
                sender,
            });
        }
    }
    let (ctl_tx, ctl_rx) = watch::channel(Phase::Connect);
    eprintln!("opening {sockets} sockets…");
    let (handles, connect) =
        spawn_and_connect(specs, &shared, &ctl_rx, c.connect_concurrency).await;
    let connect = connect.report();
    if connect.connected == 0 {
        let _ = ctl_tx.send(Phase::Done);
        join_all(handles).await;
        bail!("no socket could connect: {:?}", connect.errors);
    }
    tokio::time::sleep(a.settle).await;

    // --- send: warm-up, then the steps
    let windows = plan.windows();
    let start = Instant::now();
    shared.start_ns.store(ws::unix_ns(), Relaxed);
    let mut cpu_samples: Vec<CpuSample> = vec![sample_cpu(&c.cpu_pids)];
    let _ = ctl_tx.send(Phase::Send(start));
    eprintln!(
        "sending: warm-up {:.1}s, then {} step(s) of {:.1}s",
        a.warmup.as_secs_f64(),
        rates.len(),
        step.as_secs_f64()
    );
    let mut loadavg_start = None;
    let mut executed = 0usize;
    let mut fails = 0usize;
    let mut stopped_early = false;
    for w in 0..windows {
        let end = start + Duration::from_nanos(plan.window_end_ns(w));
        tokio::time::sleep_until(end.into()).await;
        cpu_samples.push(sample_cpu(&c.cpu_pids));
        if w == 0 {
            loadavg_start = loadavg();
            eprintln!("{}", report::table_header());
            continue;
        }
        executed = w;
        let cpu = cpu_delta(&cpu_samples[w], &cpu_samples[w + 1]).0;
        let mut prelim = window_report(
            format!("{w}"),
            &shared,
            w..=w,
            plan.rate_of(w),
            total_senders,
            0,
            cpu,
            a.p99_limit_ms,
            false,
        );
        prelim.machine_busy_cores = machine_delta(&cpu_samples[w], &cpu_samples[w + 1]);
        eprintln!(
            "{}   (live{})",
            report::table_row(&prelim),
            if a.deliveries_only {
                ""
            } else {
                ", loss counted at the end"
            }
        );
        if a.ramp && w + 1 < windows && a.ramp_stop_after > 0 {
            // live: the acks of the step's last moments may still be on their way,
            // so only a clear shortfall (< 90 % acked) counts against it here
            let mut v = verdict_input(&prelim);
            if v.acked as f64 >= v.sent as f64 * 0.9 {
                v.acked = v.sent;
            }
            let ok = step_passes(&v, a.p99_limit_ms) && prelim.unexpected_closes == 0;
            fails = if ok { 0 } else { fails + 1 };
            if fails >= a.ramp_stop_after {
                shared.send_until_ns.store(ws::unix_ns(), Relaxed);
                stopped_early = true;
                eprintln!("{fails} failing step(s) in a row: stopping the ramp");
                break;
            }
        }
    }
    let loadavg_end = loadavg();
    let _ = ctl_tx.send(Phase::Drain);
    let drain = drain(&shared, a.drain, a.drain_quiet).await;
    let _ = ctl_tx.send(Phase::Done);
    let outcomes = join_all(handles).await;

    // --- accounting
    let mut loss_w = vec![0u64; windows];
    let mut totals = Totals::default();
    let index: Vec<AckIndex> = shared
        .rooms
        .iter()
        .map(|r| {
            AckIndex::new(std::mem::take(
                &mut *r.ack_log.lock().unwrap_or_else(|e| e.into_inner()),
            ))
        })
        .collect();
    let max_acked = drain.end_seqs.clone();
    let mut fallback = vec![u64::MAX; a.rooms];
    for o in outcomes.iter().filter(|o| o.connected) {
        if let Some(b) = o.tracker.base() {
            fallback[o.room] = fallback[o.room].min(b);
        }
    }
    let mut senders_connected = 0usize;
    for o in outcomes.iter().filter(|o| o.connected) {
        let fb = if fallback[o.room] == u64::MAX {
            0
        } else {
            fallback[o.room]
        };
        for (lo, hi) in o.tracker.missing(max_acked[o.room], fb) {
            let n = hi - lo + 1;
            totals.loss_total += n;
            if !o.alive {
                totals.loss_on_dropped_sockets += n;
            }
            totals.loss_unattributed += index[o.room].attribute(lo, hi, &mut loss_w);
        }
        totals.duplicates_total += o.tracker.duplicates();
        totals.out_of_order_total += o.tracker.out_of_order();
        totals.received_total += o.tracker.received();
        totals.sent_total += o.sent;
        totals.unacked += o.unacked;
        if o.alive {
            totals.sockets_alive_at_end += 1;
        }
        if o.sent > 0 {
            senders_connected += 1;
        }
    }
    let senders_connected = senders_connected.max(1);
    totals.unmatched_acks = shared.unmatched_acks.load(Relaxed);
    totals.send_errors = shared.send_errors.load(Relaxed);
    totals.reconnects = shared.reconnects.load(Relaxed);
    totals.reconnect_failures = shared.reconnect_failures.load(Relaxed);
    totals.frames = frame_map(&shared);

    let mut window_reports = Vec::new();
    for w in 0..=executed {
        let next = cpu_samples.get(w + 1);
        let cpu = next.and_then(|b| cpu_delta(&cpu_samples[w], b).0);
        let mut report = window_report(
            if w == 0 {
                "warmup".into()
            } else {
                format!("{w}")
            },
            &shared,
            w..=w,
            plan.rate_of(w),
            senders_connected,
            loss_w[w],
            cpu,
            a.p99_limit_ms,
            w > 0,
        );
        report.machine_busy_cores = next.and_then(|b| machine_delta(&cpu_samples[w], b));
        window_reports.push(report);
    }
    let (measured_cpu, bench_cpu, machine_cores) =
        match (cpu_samples.get(1), cpu_samples.get(executed + 1)) {
            (Some(x), Some(y)) if executed >= 1 => {
                let (server, bench) = cpu_delta(x, y);
                (server, bench, machine_delta(x, y))
            }
            _ => (None, None, None),
        };
    let mut measured = if executed >= 1 {
        window_report(
            "all".into(),
            &shared,
            1..=executed,
            if a.ramp { 0.0 } else { a.rate },
            senders_connected,
            loss_w[1..=executed].iter().sum(),
            measured_cpu,
            a.p99_limit_ms,
            !a.ramp,
        )
    } else {
        WindowReport::default()
    };
    measured.machine_busy_cores = machine_cores;
    if a.ramp {
        measured.offered_per_s = 0.0;
    }
    let steps: Vec<StepVerdictInput> = window_reports[1..].iter().map(verdict_input).collect();
    let sustained = if a.ramp {
        sustained_step(&steps, a.p99_limit_ms).map(|i| {
            let w = &window_reports[i + 1];
            Sustained {
                step: i + 1,
                rate_per_sender: w.rate_per_sender,
                delivered_per_s: w.delivered_per_s,
                p99_ms: w.latency.p99_ms,
            }
        })
    } else {
        None
    };
    let cpu = CpuReport {
        pids: c.cpu_pids.clone(),
        server_cpu_s: measured_cpu,
        window_s: measured.secs,
        server_cores: measured_cpu
            .filter(|_| measured.secs > 0.0)
            .map(|c| c / measured.secs),
        deliveries_per_cpu_s: measured.deliveries_per_cpu_s,
        bench_cpu_s: bench_cpu,
        machine_busy_cores: machine_cores,
    };
    let rep = RunReport {
        tool: "chat-bench",
        mode: "run",
        run_id,
        scenario,
        setup: setup_report,
        connect,
        windows: window_reports,
        measured,
        totals,
        server_errors: locked_map(&shared.server_errors),
        unexpected_closes: locked_map(&shared.closes),
        cpu,
        loadavg_start,
        loadavg_end,
        ramp_stopped_early: stopped_early,
        drain_s: drain.secs,
        drain_timed_out: drain.timed_out,
        sustained,
    };
    print!("{}", report::render_run(&rep));
    write_json(&c.json, &rep)?;
    Ok(())
}

async fn idle(a: IdleArgs) -> Result<()> {
    let c = &a.common;
    validate_prefix(&c.prefix)?;
    if a.sockets == 0 || a.rooms == 0 || a.users == 0 {
        bail!("--sockets, --rooms and --users must be at least 1");
    }
    let urls = urls(&c.urls)?;
    check_fd_limit(a.sockets);
    let users = a.users.min(a.sockets);
    let rooms = a.rooms.min(a.sockets);
    // socket k: room k % rooms, user (k / rooms) % users
    let room_of = |k: usize| k % rooms;
    let user_of = |k: usize| (k / rooms) % users;
    eprintln!(
        "chat-bench idle: {} sockets over {rooms} rooms and {users} users, urls {}",
        a.sockets,
        urls.http.join(",")
    );
    let st = Setup {
        http: http_client(c.setup_concurrency * 2)?,
        urls: urls.http.clone(),
        prefix: c.prefix.clone(),
        password: c.password.clone(),
        concurrency: c.setup_concurrency,
    };
    let mut setup_report = SetupReport::default();
    eprintln!("setting up {users} users…");
    let tokens = st.users(users, &mut setup_report).await?;
    let pairs: BTreeSet<(usize, usize)> =
        (0..a.sockets).map(|k| (room_of(k), user_of(k))).collect();
    let pairs: Vec<(usize, usize)> = pairs.into_iter().map(|(r, u)| (u, r)).collect();
    eprintln!("joining {rooms} rooms ({} memberships)…", pairs.len());
    st.memberships(&tokens, &pairs, &mut setup_report).await?;

    let pid = a.pid.map(|p| p.to_string());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = pid.as_deref().and_then(rss_kib);
    if pid.is_some() && rss_before.is_none() {
        eprintln!("warning: cannot read /proc/{}/status", a.pid.unwrap_or(0));
    }
    let bench_before = rss_kib("self");

    let plan = Plan {
        warmup_ns: 0,
        step_ns: 1,
        rates: vec![1.0],
    };
    let shared = Arc::new(Shared::new(
        run_id(),
        plan,
        rooms,
        1,
        c.connect_timeout,
        0,
        false,
    ));
    let spec = |k: usize| {
        let room = room_name(&c.prefix, room_of(k));
        SocketSpec {
            idx: k,
            room: room_of(k),
            url: format!(
                "{}/ws/rooms/{room}?token={}",
                urls.ws[k % urls.ws.len()],
                tokens[user_of(k)]
            ),
            sender: None,
        }
    };
    let (ctl_tx, ctl_rx) = watch::channel(Phase::Connect);
    // two halves, so that the marginal cost of the second half can be reported too
    // (the first half may reuse memory the server's allocator kept from earlier work)
    let half = a.sockets / 2;
    eprintln!("opening {half} sockets (first half)…");
    let (mut handles, mut connect) = spawn_and_connect(
        (0..half).map(spec).collect(),
        &shared,
        &ctl_rx,
        c.connect_concurrency,
    )
    .await;
    let mut rss_mid = None;
    let mut open_mid = 0usize;
    if half > 0 {
        eprintln!("settling {:.1}s…", a.settle.as_secs_f64());
        tokio::time::sleep(a.settle).await;
        rss_mid = pid.as_deref().and_then(rss_kib);
        let closed: u64 = locked_map(&shared.closes).values().sum();
        open_mid = connect.ok.saturating_sub(closed as usize);
    }
    eprintln!("opening {} sockets (second half)…", a.sockets - half);
    let (more, second) = spawn_and_connect(
        (half..a.sockets).map(spec).collect(),
        &shared,
        &ctl_rx,
        c.connect_concurrency,
    )
    .await;
    handles.extend(more);
    connect.merge(&second);
    let connect = connect.report();
    let pids: Vec<u32> = a.pid.into_iter().collect();
    let cpu0 = sample_cpu(&pids);
    eprintln!("settling {:.1}s…", a.settle.as_secs_f64());
    tokio::time::sleep(a.settle).await;
    let cpu1 = sample_cpu(&pids);
    let rss_after = pid.as_deref().and_then(rss_kib);
    let bench_after = rss_kib("self");
    let closes = locked_map(&shared.closes);
    let closed: u64 = closes.values().sum();
    let open = connect.connected.saturating_sub(closed as usize);
    let per_socket = |b: Option<u64>, a: Option<u64>, n: usize| match (b, a) {
        (Some(b), Some(a)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    };
    let f = &shared.frames;
    let rep = IdleReport {
        tool: "chat-bench",
        mode: "idle",
        urls: urls.http.clone(),
        sockets_requested: a.sockets,
        rooms,
        users,
        pid: a.pid,
        setup: setup_report,
        connect,
        settle_s: a.settle.as_secs_f64(),
        sockets_open_after_settle: open,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_kib_per_socket: per_socket(rss_before, rss_after, open),
        server_rss_half_kib: rss_mid,
        server_kib_per_socket_second_half: per_socket(
            rss_mid,
            rss_after,
            open.saturating_sub(open_mid),
        ),
        bench_rss_before_kib: bench_before,
        bench_rss_after_kib: bench_after,
        bench_kib_per_socket: per_socket(bench_before, bench_after, open),
        server_cpu_during_settle_s: cpu_delta(&cpu0, &cpu1).0,
        frames_received: f.text.load(Relaxed) + f.ready.load(Relaxed) + f.binary.load(Relaxed),
        unexpected_closes: closes,
        loadavg: loadavg(),
    };
    print!("{}", report::render_idle(&rep));
    write_json(&c.json, &rep)?;
    if !a.hold.is_zero() {
        eprintln!("holding the sockets open for {:.0}s…", a.hold.as_secs_f64());
        tokio::time::sleep(a.hold).await;
    }
    let _ = ctl_tx.send(Phase::Done);
    let _ = tokio::time::timeout(Duration::from_secs(30), join_all(handles)).await;
    Ok(())
}
