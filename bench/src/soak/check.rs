//! The soak's bookkeeping, kept free of I/O so it is unit-tested: the per-socket sequence
//! tracker, the chaos schedule, jittered backoff and percentiles.

use std::collections::BTreeSet;
use std::time::Duration;

/// What one socket has received of its room, across reconnects.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// `last_seq` of the first `ready`: the socket is owed every message after it.
    pub base: Option<i64>,
    /// The highest seq received (or `base`).
    pub last: i64,
    /// Seqs skipped over (a gap) and not received since.
    pub holes: BTreeSet<i64>,
    pub duplicates: u64,
    /// Seqs that arrived after a higher one (a gap filled late).
    pub out_of_order: u64,
    pub received: u64,
    /// Connections so far (1 = the first).
    pub connection: u64,
}

impl SeqTracker {
    /// The first `ready` of the socket fixes its base; later ones change nothing.
    pub fn ready(&mut self, last_seq: i64) {
        self.connection += 1;
        if self.base.is_none() {
            self.base = Some(last_seq);
            self.last = last_seq;
        }
    }

    /// Records `seq`; names it when it is a duplicate or late.
    pub fn message(&mut self, seq: i64) -> Option<&'static str> {
        let base = self.base?;
        if seq <= base {
            return None; // committed before this socket's first ready: not owed to it
        }
        self.received += 1;
        if seq == self.last + 1 {
            self.last = seq;
        } else if seq > self.last {
            self.holes.extend(self.last + 1..seq);
            self.last = seq;
        } else if self.holes.remove(&seq) {
            self.out_of_order += 1;
            return Some("late");
        } else {
            self.duplicates += 1;
            return Some("duplicate");
        }
        None
    }

    /// The seqs in `(base, upto]` never received.
    pub fn missing(&self, upto: i64) -> Vec<i64> {
        let mut out: Vec<i64> = self.holes.iter().copied().filter(|s| *s <= upto).collect();
        out.extend(self.last + 1..=upto);
        out
    }

    /// Whether everything up to `upto` has arrived.
    pub fn complete(&self, upto: i64) -> bool {
        self.base.is_some() && self.last >= upto && self.holes.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    RedisRestart,
    /// Every replica, one after the other: SIGTERM, wait for the exit, start again.
    RollingRestart,
    /// One replica SIGKILLed, then started again.
    ReplicaKill,
    PostgresRestart,
}

impl FaultKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::RedisRestart => "redis restart",
            Self::RollingRestart => "rolling restart",
            Self::ReplicaKill => "replica SIGKILL",
            Self::PostgresRestart => "postgres restart",
        }
    }
}

/// The chaos schedule: `counts` faults of each kind spread over `[from, to]` of the run, each
/// kind evenly (its k-th of n at (k + ½)/n of the window), interleaved by that position.
pub fn schedule(
    counts: &[(FaultKind, usize)],
    from: Duration,
    to: Duration,
) -> Vec<(Duration, FaultKind)> {
    let mut at: Vec<(f64, usize, FaultKind)> = Vec::new();
    for (order, &(kind, n)) in counts.iter().enumerate() {
        for k in 0..n {
            at.push(((k as f64 + 0.5) / n as f64, order, kind));
        }
    }
    at.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let span = to.saturating_sub(from).as_secs_f64();
    at.into_iter()
        .map(|(f, _, kind)| (from + Duration::from_secs_f64(span * f), kind))
        .collect()
}

/// A small xorshift generator for jitter (no dependency, no need for quality).
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Full jitter: uniform in [½·d, d] with d = min(base·2^attempt, cap).
    pub fn backoff(&mut self, attempt: u32, base: Duration, cap: Duration) -> Duration {
        let d = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
        d.mul_f64(0.5 + 0.5 * self.next_f64())
    }
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Room sizes for `sockets` sockets in `rooms` rooms, mixed from 2 to 500: a cycle of sizes
/// scaled to the total, then adjusted one by one until the sum is exact.
pub fn room_sizes(sockets: usize, rooms: usize) -> Result<Vec<usize>, String> {
    const PATTERN: [usize; 9] = [2, 3, 5, 10, 20, 50, 100, 200, 500];
    if rooms == 0 || sockets < 2 * rooms || sockets > 500 * rooms {
        return Err(format!(
            "{sockets} sockets do not fit {rooms} rooms of 2..500 members"
        ));
    }
    let raw: Vec<usize> = (0..rooms).map(|j| PATTERN[j % PATTERN.len()]).collect();
    let sum: usize = raw.iter().sum();
    let scale = sockets as f64 / sum as f64;
    let mut sizes: Vec<usize> = raw
        .iter()
        .map(|&s| ((s as f64 * scale).round() as usize).clamp(2, 500))
        .collect();
    let mut total: usize = sizes.iter().sum();
    let mut j = 0;
    while total != sockets {
        let i = j % rooms;
        if total < sockets && sizes[i] < 500 {
            sizes[i] += 1;
            total += 1;
        } else if total > sockets && sizes[i] > 2 {
            sizes[i] -= 1;
            total -= 1;
        }
        j += 1;
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_gaps_duplicates_and_late_fills() {
        let mut t = SeqTracker::default();
        t.message(3); // before ready: ignored
        t.ready(10);
        t.ready(12); // a reconnect's ready does not move the base
        t.message(9);
        t.message(11);
        t.message(11);
        t.message(14);
        assert_eq!(t.missing(15), vec![12, 13, 15]);
        t.message(12);
        assert_eq!((t.duplicates, t.out_of_order), (1, 1));
        assert_eq!(t.missing(14), vec![13]);
        assert!(!t.complete(14));
        t.message(13);
        assert!(t.complete(14));
        assert!(t.missing(14).is_empty());
    }

    #[test]
    fn schedule_interleaves_and_spreads() {
        let s = schedule(
            &[
                (FaultKind::RedisRestart, 2),
                (FaultKind::PostgresRestart, 1),
            ],
            Duration::from_secs(10),
            Duration::from_secs(110),
        );
        let kinds: Vec<_> = s.iter().map(|e| e.1).collect();
        assert_eq!(
            kinds,
            [
                FaultKind::RedisRestart,
                FaultKind::PostgresRestart,
                FaultKind::RedisRestart
            ]
        );
        assert_eq!(s[0].0, Duration::from_secs(35));
        assert_eq!(s[1].0, Duration::from_secs(60));
        assert_eq!(s[2].0, Duration::from_secs(85));
    }

    #[test]
    fn backoff_stays_in_bounds() {
        let mut j = Jitter::new(42);
        for attempt in 0..20 {
            let d = j.backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            let full = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(5));
            assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
        }
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
    }

    #[test]
    fn room_sizes_sum_and_bounds() {
        for (k, r) in [(10_000, 102), (1500, 20), (2000, 9), (40, 20), (1000, 2)] {
            let s = room_sizes(k, r).unwrap();
            assert_eq!(s.len(), r);
            assert_eq!(s.iter().sum::<usize>(), k, "{k}/{r}");
            assert!(s.iter().all(|&x| (2..=500).contains(&x)));
        }
        assert!(room_sizes(10, 20).is_err());
        assert!(room_sizes(2000, 3).is_err());
    }
}
