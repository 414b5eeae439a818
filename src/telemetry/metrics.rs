//! Prometheus metrics (docs/operations.md#probes). Names are constants of the dashboard in
//! `deploy/grafana/chat-dashboard.json`; labels never carry user input, tokens or passwords.

use std::{sync::OnceLock, time::Instant};

use axum::{extract::Request, http::Method, middleware::Next, response::Response};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const WS_CONNECTIONS: &str = "chat_ws_connections";
pub const MESSAGES_ACCEPTED: &str = "chat_messages_accepted_total";
pub const MESSAGES_COMMITTED: &str = "chat_messages_committed_total";
pub const MESSAGES_DELIVERED: &str = "chat_messages_delivered_total";
pub const WS_WRITES: &str = "chat_ws_writes_total";
pub const WS_FRAMES_SENT: &str = "chat_ws_frames_sent_total";
pub const FANOUT_LATENCY: &str = "chat_fanout_latency_seconds";
pub const COMMIT_BATCH: &str = "chat_commit_batch_size";
pub const COMMIT_DURATION: &str = "chat_commit_duration_seconds";
pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
pub const SLOW_CONSUMER_CLOSES: &str = "chat_slow_consumer_closes_total";
pub const REDIS_RECONNECTS: &str = "chat_redis_reconnects_total";
pub const GAP_FILLS: &str = "chat_bus_gap_fills_total";
pub const DB_POOL: &str = "chat_db_pool_connections";
pub const WS_CLOSES: &str = "chat_ws_closes_total";
pub const BUILD_INFO: &str = "chat_build_info";
pub const BUS_LIVE: &str = "chat_bus_live";
pub const READY: &str = "chat_ready";
pub const SCHEMA_CURRENT: &str = "chat_schema_current";
pub const QUEUEING_DELAY: &str = "chat_runtime_queueing_delay_seconds";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder once (tests build many apps in one process; they share
/// it).
pub fn install() {
    HANDLE.get_or_init(|| {
        let latency = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let http = [
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(FANOUT_LATENCY.into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &http))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.into()), &batch))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_DURATION.into()), &latency))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        initial_series();
        handle
    });
}

/// The Prometheus text of every metric (empty before [`install`]).
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

fn describe() {
    metrics::describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections on this replica");
    metrics::describe_counter!(
        MESSAGES_ACCEPTED,
        "Messages accepted (committed and acknowledged) on this replica"
    );
    metrics::describe_counter!(
        MESSAGES_COMMITTED,
        "Messages committed by this replica's send path"
    );
    metrics::describe_counter!(
        MESSAGES_DELIVERED,
        "Message frames queued to sockets on this replica"
    );
    metrics::describe_counter!(WS_WRITES, "Write system calls on WebSockets");
    metrics::describe_counter!(
        WS_FRAMES_SENT,
        "Frames written to WebSockets, by kind (data, ping, close)"
    );
    metrics::describe_histogram!(
        FANOUT_LATENCY,
        metrics::Unit::Seconds,
        "Publish on the accepting replica to socket queue on this one"
    );
    metrics::describe_histogram!(COMMIT_BATCH, "Messages per group-commit transaction");
    metrics::describe_histogram!(
        COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Wall time of one group-commit transaction (statement and commit, retries included)"
    );
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route and status");
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency by method, route and status"
    );
    metrics::describe_counter!(
        SLOW_CONSUMER_CLOSES,
        "Sockets closed with 4429 because their queue overflowed"
    );
    metrics::describe_counter!(
        REDIS_RECONNECTS,
        "Reconnections of the Redis pub/sub connection"
    );
    metrics::describe_counter!(GAP_FILLS, "Gap fills of a room's stream from the database");
    metrics::describe_gauge!(DB_POOL, "Database pool connections by state");
    metrics::describe_counter!(
        WS_CLOSES,
        "WebSocket closes sent by this replica, by close code"
    );
    describe_health();
}

/// The descriptions of the health, build and process gauges.
fn describe_health() {
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the labels say which build runs");
    metrics::describe_gauge!(
        BUS_LIVE,
        "1 when the bus delivers (in-process, or a Redis probe came back recently), else 0"
    );
    metrics::describe_gauge!(READY, "1 when /readyz answers 200, else 0");
    metrics::describe_gauge!(
        SCHEMA_CURRENT,
        "1 when the database has every migration of this binary, else 0"
    );
    metrics::describe_gauge!(
        PROCESS_RSS,
        metrics::Unit::Bytes,
        "Resident set size of the process"
    );
    metrics::describe_gauge!(PROCESS_OPEN_FDS, "Open file descriptors of the process");
    metrics::describe_gauge!(PROCESS_MAX_FDS, "File descriptor limit of the process");
}

/// The series that exist from the start.
fn initial_series() {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Counters of rare events are exported from the start, at 0: an alert on their rate needs
    // the series to exist before the first event.
    for name in [
        SLOW_CONSUMER_CLOSES,
        REDIS_RECONNECTS,
        GAP_FILLS,
        MESSAGES_COMMITTED,
        MESSAGES_DELIVERED,
        WS_WRITES,
    ] {
        counter!(name).increment(0);
    }
    for kind in ["data", "ping", "close"] {
        counter!(WS_FRAMES_SENT, "kind" => kind).increment(0);
    }
}

pub fn ws_connected(endpoint: &'static str, delta: f64) {
    gauge!(WS_CONNECTIONS, "endpoint" => endpoint).increment(delta);
}

pub fn accepted(transport: &'static str) {
    counter!(MESSAGES_ACCEPTED, "transport" => transport).increment(1);
}

pub fn messages_committed(n: usize) {
    counter!(MESSAGES_COMMITTED).increment(n as u64);
}

pub fn commit_batch(n: usize) {
    #[allow(clippy::cast_precision_loss)]
    histogram!(COMMIT_BATCH).record(n as f64);
}

/// A group-commit transaction took `took` (the batch's drafts waited this long for the
/// database).
pub fn commit_duration(took: std::time::Duration) {
    histogram!(COMMIT_DURATION).record(took.as_secs_f64());
}

/// `n` sockets got a message published at `published_at_micros`.
pub fn delivered(n: u64, published_at_micros: i64) {
    if n == 0 {
        return;
    }
    counter!(MESSAGES_DELIVERED).increment(n);
    #[allow(clippy::cast_precision_loss)]
    let secs = (super::now_micros() - published_at_micros).max(0) as f64 / 1e6;
    histogram!(FANOUT_LATENCY).record(secs);
}

/// The runtime's average queueing delay (`telemetry::load`).
pub fn queueing_delay(delay: std::time::Duration) {
    gauge!(QUEUEING_DELAY).set(delay.as_secs_f64());
}

/// A write system call on a WebSocket wrote (part of) its queued bytes.
pub fn ws_write() {
    counter!(WS_WRITES).increment(1);
}

/// A socket's writer wrote `n` frames of `kind` (`data`, `ping`, `close`).
pub fn ws_frames_sent(kind: &'static str, n: usize) {
    counter!(WS_FRAMES_SENT, "kind" => kind).increment(n as u64);
}

/// A close frame with `code` went out on one of this replica's sockets.
pub fn ws_closed(code: u16) {
    counter!(WS_CLOSES, "code" => code.to_string()).increment(1);
}

/// The parts of `/readyz`, as gauges (set on every scrape and every probe).
pub fn health(ready: bool, bus_live: bool, schema_current: bool) {
    gauge!(READY).set(f64::from(u8::from(ready)));
    gauge!(BUS_LIVE).set(f64::from(u8::from(bus_live)));
    gauge!(SCHEMA_CURRENT).set(f64::from(u8::from(schema_current)));
}

/// Resident memory and file descriptors, read from `/proc/self` (Linux; nothing elsewhere).
pub fn record_process() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        gauge!(PROCESS_RSS).set(kib * 1024.0);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        #[allow(clippy::cast_precision_loss)]
        gauge!(PROCESS_OPEN_FDS).set(dir.count() as f64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
    {
        gauge!(PROCESS_MAX_FDS).set(max);
    }
}

pub fn slow_consumer_closed() {
    counter!(SLOW_CONSUMER_CLOSES).increment(1);
}

pub fn redis_reconnect() {
    counter!(REDIS_RECONNECTS).increment(1);
}

/// A publish waiting for Redis was dropped (the retry queue's byte bound).
pub fn bus_retry_dropped() {
    metrics::counter!("chat_bus_retry_dropped_total").increment(1);
}

/// Bytes of publishes waiting for Redis.
#[allow(clippy::cast_precision_loss)] // a gauge: precision beyond 2^53 bytes is moot
pub fn bus_retry_bytes(bytes: usize) {
    metrics::gauge!("chat_bus_retry_bytes").set(bytes as f64);
}

/// The reconciliation found a room behind the database (a lost or late publish).
pub fn reconcile_resync() {
    metrics::counter!("chat_reconcile_resyncs_total").increment(1);
}

pub fn gap_fill() {
    counter!(GAP_FILLS).increment(1);
}

/// Set the gauge of the database pool labelled `label` (`main`, or `commit`: the group
/// commit's own).
pub fn record_db_pool(db: &sea_orm::DatabaseConnection, label: &'static str) {
    let (size, idle) = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX);
    gauge!(DB_POOL, "pool" => label, "state" => "idle").set(f64::from(idle));
    gauge!(DB_POOL, "pool" => label, "state" => "in_use").set(f64::from(size.saturating_sub(idle)));
}

/// Tower middleware: count and time every request by route template and status.
pub async fn track_http(req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Labels take a bounded set of values whatever clients send: the standard methods, and
    // route templates (an unknown method or path is one value each).
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
    .to_owned();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(start.elapsed().as_secs_f64());
    res
}
