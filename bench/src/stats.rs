//! Pure parts of the measurement: the time plan (warm-up + steps), ramp rates,
//! percentile summaries and the choice of the sustained step.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to this bound (larger values saturate).
pub const HIST_MAX_US: u64 = 120_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// The measurement plan. Window 0 is the warm-up; window `k >= 1` is step `k`, sent at
/// `rates[k - 1]` messages per second per sender. A plain run has one step.
#[derive(Debug, Clone)]
pub struct Plan {
    pub warmup_ns: u64,
    pub step_ns: u64,
    pub rates: Vec<f64>,
}

impl Plan {
    pub fn windows(&self) -> usize {
        self.rates.len() + 1
    }

    /// The window a message sent at `t_ns` belongs to, given the plan started at `start_ns`.
    pub fn window_of(&self, start_ns: u64, t_ns: u64) -> Option<usize> {
        if start_ns == 0 || t_ns < start_ns {
            return None;
        }
        let dt = t_ns - start_ns;
        if dt < self.warmup_ns {
            return Some(0);
        }
        let k = (dt - self.warmup_ns) / self.step_ns.max(1);
        if (k as usize) < self.rates.len() {
            Some(k as usize + 1)
        } else {
            None
        }
    }

    /// Per-sender rate in a window (the warm-up runs at the first step's rate).
    pub fn rate_of(&self, window: usize) -> f64 {
        self.rates[window.saturating_sub(1).min(self.rates.len() - 1)]
    }

    /// Offset of the start of window `w` from the start.
    pub fn window_start_ns(&self, w: usize) -> u64 {
        if w == 0 { 0 } else { self.window_end_ns(w - 1) }
    }

    /// Offset of the end of window `w` from the start.
    pub fn window_end_ns(&self, w: usize) -> u64 {
        self.warmup_ns + self.step_ns * w as u64
    }

    pub fn window_secs(&self, w: usize) -> f64 {
        if w == 0 {
            self.warmup_ns as f64 / 1e9
        } else {
            self.step_ns as f64 / 1e9
        }
    }
}

/// Per-sender rates of a ramp: start at `start`, multiply by `factor` (or add `step`
/// when given) until `max_rate` is passed or `max_steps` steps exist.
pub fn ramp_rates(
    start: f64,
    factor: f64,
    step: Option<f64>,
    max_rate: Option<f64>,
    max_steps: usize,
) -> Vec<f64> {
    let mut out = Vec::new();
    let mut r = start;
    while out.len() < max_steps.max(1) {
        if let Some(m) = max_rate
            && r > m * (1.0 + 1e-9)
            && !out.is_empty()
        {
            break;
        }
        out.push(r);
        let next = match step {
            Some(s) => r + s,
            None => r * factor,
        };
        if next.is_nan() || next <= r {
            break; // factor <= 1 or step <= 0: a single step
        }
        r = next;
    }
    out
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl LatencySummary {
    /// Percentiles of a histogram recorded in microseconds, reported in milliseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: us_to_ms(h.value_at_quantile(0.50)),
            p90_ms: us_to_ms(h.value_at_quantile(0.90)),
            p99_ms: us_to_ms(h.value_at_quantile(0.99)),
            p999_ms: us_to_ms(h.value_at_quantile(0.999)),
            max_ms: us_to_ms(h.max()),
            mean_ms: h.mean().round() / 1000.0,
        }
    }
}

/// What decides whether a step "holds": the figures `sustained_step` looks at.
#[derive(Debug, Clone, Copy)]
pub struct StepVerdictInput {
    pub rate: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub p99_ms: f64,
    pub loss: u64,
    pub duplicates: u64,
    /// false with `--deliveries-only`: the peer sends no acks, so none are required.
    pub acks_expected: bool,
}

/// Fraction of a step's sends that must be acked (the rest: rejected, e.g.
/// rate-limited, or never answered) for the step to count as sustained.
pub const MIN_ACKED_FRACTION: f64 = 0.999;

pub fn step_passes(s: &StepVerdictInput, p99_limit_ms: f64) -> bool {
    s.delivered > 0
        && s.p99_ms < p99_limit_ms
        && s.loss == 0
        && s.duplicates == 0
        && (!s.acks_expected || s.acked as f64 >= s.sent as f64 * MIN_ACKED_FRACTION)
}

/// Index (into `steps`) of the highest-rate step that passes, if any.
pub fn sustained_step(steps: &[StepVerdictInput], p99_limit_ms: f64) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| step_passes(s, p99_limit_ms))
        .max_by(|a, b| a.1.rate.total_cmp(&b.1.rate))
        .map(|(i, _)| i)
}

/// `5s`, `500ms`, `2m`, `1h`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 5s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn plan_windows() {
        let p = Plan {
            warmup_ns: 5_000,
            step_ns: 10_000,
            rates: vec![1.0, 2.0, 4.0],
        };
        let start = 1_000_000;
        assert_eq!(p.windows(), 4);
        assert_eq!(p.window_of(0, 5), None); // not started
        assert_eq!(p.window_of(start, start - 1), None);
        assert_eq!(p.window_of(start, start), Some(0));
        assert_eq!(p.window_of(start, start + 4_999), Some(0));
        assert_eq!(p.window_of(start, start + 5_000), Some(1));
        assert_eq!(p.window_of(start, start + 14_999), Some(1));
        assert_eq!(p.window_of(start, start + 15_000), Some(2));
        assert_eq!(p.window_of(start, start + 34_999), Some(3));
        assert_eq!(p.window_of(start, start + 35_000), None);
        assert_eq!(p.rate_of(0), 1.0);
        assert_eq!(p.rate_of(1), 1.0);
        assert_eq!(p.rate_of(3), 4.0);
        assert_eq!(p.window_end_ns(0), 5_000);
        assert_eq!(p.window_end_ns(3), 35_000);
        assert_eq!(p.window_start_ns(0), 0);
        assert_eq!(p.window_start_ns(1), 5_000);
        assert_eq!(p.window_start_ns(3), 25_000);
        // no warm-up at all
        let q = Plan {
            warmup_ns: 0,
            step_ns: 10,
            rates: vec![1.0],
        };
        assert_eq!(q.window_of(start, start), Some(1));
    }

    #[test]
    fn ramp_by_factor_and_step() {
        assert_eq!(
            ramp_rates(10.0, 1.5, None, Some(40.0), 20),
            vec![10.0, 15.0, 22.5, 33.75]
        );
        assert_eq!(
            ramp_rates(10.0, 2.0, None, Some(40.0), 20),
            vec![10.0, 20.0, 40.0]
        );
        assert_eq!(ramp_rates(10.0, 2.0, None, None, 3), vec![10.0, 20.0, 40.0]);
        assert_eq!(
            ramp_rates(5.0, 1.5, Some(5.0), Some(20.0), 20),
            vec![5.0, 10.0, 15.0, 20.0]
        );
        // a max below the start still runs the start rate once
        assert_eq!(ramp_rates(10.0, 2.0, None, Some(5.0), 20), vec![10.0]);
        assert_eq!(ramp_rates(10.0, 1.0, None, None, 20), vec![10.0]);
    }

    #[test]
    fn percentiles() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1 ms .. 1000 ms
        }
        let s = LatencySummary::from_us(&h);
        assert_eq!(s.count, 1000);
        // hdrhistogram keeps 3 significant digits
        assert!((s.p50_ms - 500.0).abs() <= 0.5, "{s:?}");
        assert!((s.p90_ms - 900.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.p999_ms - 999.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.mean_ms - 500.5).abs() <= 1.0, "{s:?}");
        assert_eq!(
            LatencySummary::from_us(&new_histogram()),
            LatencySummary::default()
        );
        // saturation instead of an error for huge values
        let mut h = new_histogram();
        h.saturating_record(u64::MAX);
        assert!(LatencySummary::from_us(&h).max_ms >= 119_000.0);
    }

    #[test]
    fn sustained_selection() {
        let s = |rate, p99, loss, dup| StepVerdictInput {
            rate,
            sent: 10_000,
            acked: 10_000,
            delivered: 100,
            p99_ms: p99,
            loss,
            duplicates: dup,
            acks_expected: true,
        };
        let steps = vec![
            s(10.0, 5.0, 0, 0),
            s(15.0, 20.0, 0, 0),
            s(22.5, 99.9, 0, 0),
            s(33.8, 150.0, 0, 0),
            s(50.0, 40.0, 3, 0),
        ];
        assert_eq!(sustained_step(&steps, 100.0), Some(2));
        // p99 exactly at the limit fails
        assert_eq!(sustained_step(&[s(1.0, 100.0, 0, 0)], 100.0), None);
        // duplicates disqualify
        assert_eq!(
            sustained_step(&[s(1.0, 1.0, 0, 0), s(2.0, 1.0, 0, 1)], 100.0),
            Some(0)
        );
        // a passing step above a failing one still counts ("highest passing step")
        assert_eq!(
            sustained_step(&[s(1.0, 500.0, 0, 0), s(2.0, 1.0, 0, 0)], 100.0),
            Some(1)
        );
        // nothing delivered is not a pass
        let mut z = s(1.0, 0.0, 0, 0);
        z.delivered = 0;
        assert_eq!(sustained_step(&[z], 100.0), None);
        assert_eq!(sustained_step(&[], 100.0), None);
        // sends the server rejected (rate limit) or never acked disqualify
        let mut r = s(3.0, 1.0, 0, 0);
        r.acked = 9_980;
        assert_eq!(sustained_step(&[s(1.0, 1.0, 0, 0), r], 100.0), Some(0));
        r.acked = 9_990;
        assert_eq!(sustained_step(&[s(1.0, 1.0, 0, 0), r], 100.0), Some(1));
        // a peer that never acks (--deliveries-only): acks are not required
        let mut n = s(4.0, 1.0, 0, 0);
        n.acked = 0;
        assert_eq!(sustained_step(&[s(1.0, 1.0, 0, 0), n], 100.0), Some(0));
        n.acks_expected = false;
        assert_eq!(sustained_step(&[s(1.0, 1.0, 0, 0), n], 100.0), Some(1));
        // …but latency still decides
        n.p99_ms = 100.0;
        assert_eq!(sustained_step(&[s(1.0, 1.0, 0, 0), n], 100.0), Some(0));
    }
}
