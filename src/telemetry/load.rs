//! How short of CPU this replica is: the runtime's **queueing delay**, and the waits it allows.
//!
//! A probe task measures, every [`PROBE_EVERY`], how long a task that yields waits before it
//! runs again: the time to run every task that was runnable before it, plus any time the
//! operating system kept the worker threads off the CPU. On a replica with CPU to spare that
//! is a few microseconds; on one that is short of CPU (its own work, or other processes on
//! the same cores) it is milliseconds. The average is exported as
//! `chat_runtime_queueing_delay_seconds`.
//!
//! The send path may (opt-in: `WS_COALESCE_MAX_MS`, `COMMIT_COALESCE_MAX_MS`) trade a wait
//! for fewer system calls and fewer transactions **only** when
//! the replica is short of CPU ([`coalesce_wait`]): a socket's writer then gathers frames for
//! a little before it writes, and the group commit gathers drafts for a little before it
//! commits. The wait is never longer than a few times the queueing delay that every message
//! already suffers at that moment, so at low load nothing waits at all, and under load the
//! saved CPU shortens the queue that set the wait.
//!
//! One probe per process (the first runtime that asks starts it); a measurement older than
//! [`STALE_AFTER`] (its runtime is gone, or the probe itself is starved) counts as no delay.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// How often the probe measures.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A measurement older than this is ignored (no delay).
const STALE_AFTER: Duration = Duration::from_millis(500);
/// Below this average queueing delay the replica has CPU to spare: nothing waits.
const SHORT_FROM: Duration = Duration::from_micros(500);
/// A wait is this many times the average queueing delay (then capped by the caller).
const WAIT_FACTOR: u32 = 4;

/// Average queueing delay, µs (exponentially weighted over the last ~8 measurements).
static DELAY_US: AtomicU64 = AtomicU64::new(0);
/// When the last measurement was taken, µs after [`epoch`].
static MEASURED_AT_US: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Start the probe on the current runtime (once per process; later calls do nothing).
pub fn start_probe(stop: tokio_util::sync::CancellationToken) {
    if STARTED.swap(true, Relaxed) {
        return;
    }
    epoch();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let before = Instant::now();
            tokio::task::yield_now().await;
            record(before.elapsed());
        }
        // A later server in the same process (tests) starts its own.
        STARTED.store(false, Relaxed);
    });
}

/// Fold one measurement into the average.
fn record(sample: Duration) {
    let sample = micros(sample);
    let old = DELAY_US.load(Relaxed);
    // EWMA with weight 1/8: follows a change within ~80 ms.
    let new = if old == 0 {
        sample
    } else {
        old - old / 8 + sample / 8
    };
    DELAY_US.store(new, Relaxed);
    MEASURED_AT_US.store(micros(epoch().elapsed()), Relaxed);
    super::metrics::queueing_delay(Duration::from_micros(new));
}

/// The current average queueing delay (zero when nothing measured it lately).
pub fn queueing_delay() -> Duration {
    let at = MEASURED_AT_US.load(Relaxed);
    if at == 0 || micros(epoch().elapsed()).saturating_sub(at) > micros(STALE_AFTER) {
        return Duration::ZERO;
    }
    Duration::from_micros(DELAY_US.load(Relaxed))
}

/// How long a batch may wait to gather more, at most `max`: `None` while the replica has CPU
/// to spare (or `max` is zero), else a few times the current queueing delay.
pub fn coalesce_wait(max: Duration) -> Option<Duration> {
    wait_for(queueing_delay(), max)
}

fn wait_for(delay: Duration, max: Duration) -> Option<Duration> {
    if max.is_zero() || delay < SHORT_FROM {
        return None;
    }
    Some((delay * WAIT_FACTOR).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_waits_with_cpu_to_spare() {
        let max = Duration::from_millis(20);
        assert_eq!(wait_for(Duration::ZERO, max), None);
        assert_eq!(wait_for(Duration::from_micros(499), max), None);
        assert_eq!(
            wait_for(Duration::from_millis(1), max),
            Some(Duration::from_millis(4))
        );
        assert_eq!(wait_for(Duration::from_millis(30), max), Some(max));
        assert_eq!(wait_for(Duration::from_millis(30), Duration::ZERO), None);
    }
}
