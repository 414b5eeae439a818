//! Report structures (serialised to `--json`) and the human-readable tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::setup::SetupReport;
use crate::stats::LatencySummary;
use crate::sys::LoadAvg;

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub urls: Vec<String>,
    pub rooms: usize,
    pub clients_per_room: usize,
    pub senders_per_room: usize,
    pub users: usize,
    pub sockets: usize,
    pub rate_per_sender: f64,
    pub ramp: bool,
    pub ramp_rates: Vec<f64>,
    pub warmup_s: f64,
    pub step_s: f64,
    pub drain_s: f64,
    pub p99_limit_ms: f64,
    pub prefix: String,
    pub threads: usize,
    pub max_reconnects: u32,
    /// `--deliveries-only`: no `ready` awaited, no acks expected, deliveries counted but
    /// not checked for loss, duplicates or order (the loss/duplicate/order figures are 0
    /// because nothing was checked, not because nothing went wrong).
    pub deliveries_only: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectReport {
    pub attempted: usize,
    pub connected: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, u64>,
    pub wall_s: f64,
    /// Successful sockets per second of connect-phase wall time.
    pub rate_per_s: f64,
    /// TCP connect + HTTP upgrade.
    pub upgrade: LatencySummary,
    /// Until the `ready` frame arrived.
    pub ready: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowReport {
    pub name: String,
    pub rate_per_sender: f64,
    /// rate × connected senders
    pub offered_per_s: f64,
    pub secs: f64,
    pub sent: u64,
    pub acked: u64,
    /// First-time deliveries of this window's messages, over all receiving sockets.
    pub delivered: u64,
    /// Deliveries the sockets should have made (delivered + loss).
    pub loss: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Whether loss, duplicates, order and acks were checked (false with `--deliveries-only`).
    pub seq_checked: bool,
    /// `--deliveries-only`: sends × sockets connected to the sender's room (what `delivered`
    /// should reach; a shortfall is counted, not identified).
    pub expected_deliveries: Option<u64>,
    pub unexpected_closes: u64,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    /// End-to-end: receive time − send time, every delivery.
    pub latency: LatencySummary,
    /// Send → ack on the sender's socket.
    pub ack_latency: LatencySummary,
    pub server_cpu_s: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    /// Busy cores of the whole machine meanwhile (servers, database, Redis, the bench, and
    /// anything else), from `/proc/stat`: how close to saturation the step ran.
    pub machine_busy_cores: Option<f64>,
    /// p99 < limit, no loss, no duplicates, something delivered (steps only)
    pub pass: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Sum over all sockets of missing seqs (unfilled gaps and the tail up to the
    /// room's last acked seq), warm-up included.
    pub loss_total: u64,
    /// Part of `loss_total` on sockets that were closed and could not resume.
    pub loss_on_dropped_sockets: u64,
    /// Part of `loss_total` on seqs that no sender of this run acked (e.g. foreign
    /// messages), so not attributable to a window.
    pub loss_unattributed: u64,
    pub duplicates_total: u64,
    pub out_of_order_total: u64,
    pub received_total: u64,
    pub sockets_alive_at_end: usize,
    pub sent_total: u64,
    pub unacked: u64,
    pub unmatched_acks: u64,
    pub send_errors: u64,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    pub frames: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuReport {
    pub pids: Vec<u32>,
    pub server_cpu_s: Option<f64>,
    pub window_s: f64,
    /// server CPU seconds per wall second (1.0 = one core busy)
    pub server_cores: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    pub bench_cpu_s: Option<f64>,
    /// Busy cores of the whole machine over the measured steps (see
    /// [`WindowReport::machine_busy_cores`]).
    pub machine_busy_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sustained {
    pub step: usize,
    pub rate_per_sender: f64,
    pub delivered_per_s: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub tool: &'static str,
    pub mode: &'static str,
    pub run_id: String,
    pub scenario: Scenario,
    pub setup: SetupReport,
    pub connect: ConnectReport,
    /// Warm-up first, then each executed step.
    pub windows: Vec<WindowReport>,
    /// All executed steps together (everything after warm-up).
    pub measured: WindowReport,
    pub totals: Totals,
    pub server_errors: BTreeMap<String, u64>,
    pub unexpected_closes: BTreeMap<String, u64>,
    pub cpu: CpuReport,
    pub loadavg_start: Option<LoadAvg>,
    pub loadavg_end: Option<LoadAvg>,
    pub ramp_stopped_early: bool,
    /// How long the drain took, and whether it hit `--drain` with frames still arriving.
    pub drain_s: f64,
    pub drain_timed_out: bool,
    pub sustained: Option<Sustained>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub tool: &'static str,
    pub mode: &'static str,
    pub urls: Vec<String>,
    pub sockets_requested: usize,
    pub rooms: usize,
    pub users: usize,
    pub pid: Option<u32>,
    pub setup: SetupReport,
    pub connect: ConnectReport,
    pub settle_s: f64,
    pub sockets_open_after_settle: usize,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_kib_per_socket: Option<f64>,
    /// RSS with the first half of the sockets open (after a settle).
    pub server_rss_half_kib: Option<u64>,
    /// (after − half) / sockets of the second half: the marginal cost, less affected
    /// by memory the allocator kept from earlier work (e.g. argon2 during set-up).
    pub server_kib_per_socket_second_half: Option<f64>,
    pub bench_rss_before_kib: Option<u64>,
    pub bench_rss_after_kib: Option<u64>,
    pub bench_kib_per_socket: Option<f64>,
    pub server_cpu_during_settle_s: Option<f64>,
    pub frames_received: u64,
    pub unexpected_closes: BTreeMap<String, u64>,
    pub loadavg: Option<LoadAvg>,
}

fn map_line(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

fn la(l: &Option<LoadAvg>) -> String {
    l.map_or_else(
        || "-".into(),
        |l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen),
    )
}

pub fn lat_line(l: &LatencySummary) -> String {
    if l.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}  (n={})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
    )
}

pub fn table_header() -> String {
    format!(
        "{:<7} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5} {:>5} {:>9} {:>5} {:>4}",
        "step",
        "rate/snd",
        "sent/s",
        "acked/s",
        "deliv/s",
        "p50ms",
        "p90ms",
        "p99ms",
        "p999ms",
        "maxms",
        "loss",
        "dup",
        "ooo",
        "deliv/cpu",
        "busy",
        "ok"
    )
}

pub fn table_row(w: &WindowReport) -> String {
    // not checked (--deliveries-only): `-` rather than a reassuring 0
    let checked = |v: String| if w.seq_checked { v } else { "-".into() };
    format!(
        "{:<7} {:>9} {:>9.1} {:>9} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>5} {:>5} {:>9} {:>5} {:>4}",
        w.name,
        if w.rate_per_sender > 0.0 {
            format!("{:.2}", w.rate_per_sender)
        } else {
            "-".into()
        },
        w.sent_per_s,
        checked(format!("{:.1}", w.acked_per_s)),
        w.delivered_per_s,
        w.latency.p50_ms,
        w.latency.p90_ms,
        w.latency.p99_ms,
        w.latency.p999_ms,
        w.latency.max_ms,
        checked(w.loss.to_string()),
        checked(w.duplicates.to_string()),
        checked(w.out_of_order.to_string()),
        opt(w.deliveries_per_cpu_s, 0),
        opt(w.machine_busy_cores, 2),
        match w.pass {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        }
    )
}

fn connect_lines(out: &mut String, c: &ConnectReport, ready_awaited: bool) {
    let _ = writeln!(
        out,
        "connect: {}/{} sockets in {:.2}s ({:.1} sockets/s), errors: {}",
        c.connected,
        c.attempted,
        c.wall_s,
        c.rate_per_s,
        map_line(&c.errors)
    );
    let _ = writeln!(out, "  upgrade ms: {}", lat_line(&c.upgrade));
    if ready_awaited {
        let _ = writeln!(out, "  ready ms:   {}", lat_line(&c.ready));
    } else {
        let _ = writeln!(
            out,
            "  ready ms:   not awaited (--deliveries-only: connected on upgrade)"
        );
    }
}

fn checked_totals_lines(o: &mut String, r: &RunReport) {
    let m = &r.measured;
    let t = &r.totals;
    let _ = writeln!(
        o,
        "after warm-up ({:.1}s): delivered {} ({:.1}/s), sent {} ({:.1}/s), acked {} ({:.1}/s)",
        m.secs, m.delivered, m.delivered_per_s, m.sent, m.sent_per_s, m.acked, m.acked_per_s
    );
    let _ = writeln!(o, "  latency ms:     {}", lat_line(&m.latency));
    let _ = writeln!(o, "  ack latency ms: {}", lat_line(&m.ack_latency));
    let _ = writeln!(
        o,
        "  loss {} | duplicates {} | out-of-order {}",
        m.loss, m.duplicates, m.out_of_order
    );
    let _ = writeln!(
        o,
        "whole run incl. warm-up: loss {} (on dropped sockets {}, unattributed {}), duplicates {}, out-of-order {}, received {}",
        t.loss_total,
        t.loss_on_dropped_sockets,
        t.loss_unattributed,
        t.duplicates_total,
        t.out_of_order_total,
        t.received_total
    );
    let _ = writeln!(
        o,
        "  sent {}, never acked {}, unmatched acks {}, send errors {}, sockets open at end {}/{}, reconnects {} (failed {})",
        t.sent_total,
        t.unacked,
        t.unmatched_acks,
        t.send_errors,
        t.sockets_alive_at_end,
        r.connect.connected,
        t.reconnects,
        t.reconnect_failures
    );
    let _ = writeln!(
        o,
        "  drain {:.1}s{}",
        r.drain_s,
        if r.drain_timed_out {
            " (TIMED OUT: server still delivering; loss counted up to seqs acked 2 s before the end)"
        } else {
            " (quiet)"
        }
    );
}

/// `--deliveries-only`: what was counted, and plainly what was not checked.
fn unchecked_totals_lines(o: &mut String, r: &RunReport) {
    let m = &r.measured;
    let t = &r.totals;
    let _ = writeln!(
        o,
        "after warm-up ({:.1}s): delivered {} ({:.1}/s), sent {} ({:.1}/s); acks not expected",
        m.secs, m.delivered, m.delivered_per_s, m.sent, m.sent_per_s
    );
    if let Some(e) = m.expected_deliveries {
        let _ = writeln!(
            o,
            "  deliveries: {} of {e} expected (sends x sockets of the sender's room), short by {} (counted, not identified)",
            m.delivered,
            e.saturating_sub(m.delivered)
        );
    }
    let _ = writeln!(o, "  latency ms:     {}", lat_line(&m.latency));
    let _ = writeln!(
        o,
        "  NOT CHECKED (--deliveries-only): loss, duplicates and order (the peer sends no seq), acks (it sends none)"
    );
    let _ = writeln!(
        o,
        "whole run incl. warm-up: received {}, sent {}, send errors {}, sockets open at end {}/{}, reconnects {} (failed {})",
        t.received_total,
        t.sent_total,
        t.send_errors,
        t.sockets_alive_at_end,
        r.connect.connected,
        t.reconnects,
        t.reconnect_failures
    );
    let _ = writeln!(
        o,
        "  drain {:.1}s{}",
        r.drain_s,
        if r.drain_timed_out {
            " (TIMED OUT: the peer was still delivering)"
        } else {
            " (quiet)"
        }
    );
}

pub fn render_run(r: &RunReport) -> String {
    let mut o = String::new();
    let s = &r.scenario;
    let _ = writeln!(o, "\n== chat-bench run (run id {}) ==", r.run_id);
    let _ = writeln!(
        o,
        "scenario: urls={} rooms={} clients/room={} senders/room={} rate={}/s per sender{} users={} sockets={} warmup={}s {}={}s drain<={}s threads={}",
        s.urls.join(","),
        s.rooms,
        s.clients_per_room,
        s.senders_per_room,
        s.rate_per_sender,
        if s.ramp {
            format!(" (ramp {:?})", s.ramp_rates)
        } else {
            String::new()
        },
        s.users,
        s.sockets,
        s.warmup_s,
        if s.ramp { "step" } else { "duration" },
        s.step_s,
        s.drain_s,
        s.threads
    );
    let _ = writeln!(
        o,
        "setup: {} users ({} registered, {} logged in) in {:.1}s; {} memberships ({} rooms created) in {:.1}s; 429 retries {}",
        r.setup.users,
        r.setup.registered,
        r.setup.logged_in,
        r.setup.users_secs,
        r.setup.memberships,
        r.setup.rooms_created,
        r.setup.memberships_secs,
        r.setup.retries_429
    );
    connect_lines(&mut o, &r.connect, !s.deliveries_only);
    let _ = writeln!(o);
    let _ = writeln!(o, "{}", table_header());
    for w in &r.windows {
        let _ = writeln!(o, "{}", table_row(w));
    }
    let m = &r.measured;
    let _ = writeln!(o, "{}", table_row(m));
    let _ = writeln!(o);
    if s.deliveries_only {
        unchecked_totals_lines(&mut o, r);
    } else {
        checked_totals_lines(&mut o, r);
    }
    let _ = writeln!(o, "server error frames: {}", map_line(&r.server_errors));
    let _ = writeln!(o, "unexpected closes:   {}", map_line(&r.unexpected_closes));
    let _ = writeln!(o, "frames received:     {}", map_line(&r.totals.frames));
    let c = &r.cpu;
    if c.pids.is_empty() {
        let _ = writeln!(
            o,
            "server cpu: not measured (pass --cpu-pids); bench cpu {}s",
            opt(c.bench_cpu_s, 2)
        );
    } else {
        let _ = writeln!(
            o,
            "server cpu (pids {:?}): {}s over {:.1}s ({} cores) -> {} deliveries per CPU-second; bench cpu {}s",
            c.pids,
            opt(c.server_cpu_s, 2),
            c.window_s,
            opt(c.server_cores, 2),
            opt(c.deliveries_per_cpu_s, 0),
            opt(c.bench_cpu_s, 2)
        );
    }
    let _ = writeln!(
        o,
        "loadavg: start {}  end {}; machine busy {} cores over the measured steps",
        la(&r.loadavg_start),
        la(&r.loadavg_end),
        opt(c.machine_busy_cores, 2)
    );
    if s.ramp {
        if r.ramp_stopped_early {
            let _ = writeln!(o, "ramp stopped early after consecutive failing steps");
        }
        match &r.sustained {
            Some(x) => {
                let checks = if s.deliveries_only {
                    "; loss, duplicates, order and acks NOT checked"
                } else {
                    ", no loss, no duplicates, sends acked"
                };
                let _ = writeln!(
                    o,
                    "SUSTAINED (p99 < {} ms{checks}): step {} at {:.2} msg/s per sender = {:.1} delivered messages/s (p99 {:.2} ms)",
                    s.p99_limit_ms, x.step, x.rate_per_sender, x.delivered_per_s, x.p99_ms
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "SUSTAINED: no step met p99 < {} ms with no loss and no duplicates",
                    s.p99_limit_ms
                );
            }
        }
    }
    o
}

pub fn render_idle(r: &IdleReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n== chat-bench idle ==");
    let _ = writeln!(
        o,
        "scenario: urls={} sockets={} rooms={} users={} pid={}",
        r.urls.join(","),
        r.sockets_requested,
        r.rooms,
        r.users,
        r.pid.map_or_else(|| "-".into(), |p| p.to_string())
    );
    let _ = writeln!(
        o,
        "setup: {} users ({} registered, {} logged in) in {:.1}s; {} memberships in {:.1}s",
        r.setup.users,
        r.setup.registered,
        r.setup.logged_in,
        r.setup.users_secs,
        r.setup.memberships,
        r.setup.memberships_secs
    );
    connect_lines(&mut o, &r.connect, true);
    let kib = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| format!("{v} KiB"));
    let _ = writeln!(
        o,
        "after {:.1}s settle: {} sockets open; unexpected closes: {}",
        r.settle_s,
        r.sockets_open_after_settle,
        map_line(&r.unexpected_closes)
    );
    let _ = writeln!(
        o,
        "server RSS: before {}  half {}  after {}  => {} KiB per socket (second half alone: {} KiB per socket); server cpu while idle {}s",
        kib(r.server_rss_before_kib),
        kib(r.server_rss_half_kib),
        kib(r.server_rss_after_kib),
        opt(r.server_kib_per_socket, 2),
        opt(r.server_kib_per_socket_second_half, 2),
        opt(r.server_cpu_during_settle_s, 2)
    );
    let _ = writeln!(
        o,
        "bench RSS:  before {}  after {}  => {} KiB per socket",
        kib(r.bench_rss_before_kib),
        kib(r.bench_rss_after_kib),
        opt(r.bench_kib_per_socket, 2)
    );
    let _ = writeln!(
        o,
        "frames received {}; loadavg {}",
        r.frames_received,
        la(&r.loadavg)
    );
    o
}
