//! Reading /proc: server CPU time, RSS, load average; and the open-files limit.

use serde::Serialize;

/// Linux reports utime/stime in clock ticks of USER_HZ, which is 100 on every
/// architecture Rust targets (sysconf(_SC_CLK_TCK) would need libc and `unsafe`).
pub const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// utime + stime (in ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // the command name (field 2) is in parentheses and may contain spaces or ')'
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after the name: state is field 3, so utime (14) is index 11 and stime (15) index 12
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&s).map(|t| t as f64 / CLOCK_TICKS_PER_SEC)
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn rss_kib(pid: &str) -> Option<u64> {
    parse_vmrss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

pub fn parse_loadavg(s: &str) -> Option<LoadAvg> {
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some(LoadAvg {
        one: it.next()??,
        five: it.next()??,
        fifteen: it.next()??,
    })
}

pub fn loadavg() -> Option<LoadAvg> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// One sample of every watched server process.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    pub per_pid: Vec<Option<f64>>,
    pub bench: Option<f64>,
}

pub fn sample_cpu(pids: &[u32]) -> CpuSample {
    CpuSample {
        per_pid: pids.iter().map(|p| cpu_seconds(&p.to_string())).collect(),
        bench: cpu_seconds("self"),
    }
}

/// Server CPU seconds spent between two samples (summed over the pids that could be
/// read both times), and the bench's own.
pub fn cpu_delta(a: &CpuSample, b: &CpuSample) -> (Option<f64>, Option<f64>) {
    let mut total = None;
    for (x, y) in a.per_pid.iter().zip(&b.per_pid) {
        if let (Some(x), Some(y)) = (x, y) {
            *total.get_or_insert(0.0) += y - x;
        }
    }
    let bench = match (a.bench, b.bench) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    (total, bench)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let s = "1234 (chat server) S 1 1234 1234 0 -1 4194560 2000 0 0 0 250 75 0 0 20 0 9 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(s), Some(325));
        let tricky = "77 (a) b) c) R 1 77 77 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_cpu_ticks(tricky), Some(3));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        // our own process can always be read
        assert!(cpu_seconds("self").is_some());
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tchat-server\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(parse_vmrss_kib(s), Some(51234));
        assert_eq!(parse_vmrss_kib("Name: x\n"), None);
        assert!(rss_kib("self").is_some());
    }

    #[test]
    fn loadavg_parsing() {
        let l = parse_loadavg("0.52 0.40 0.33 2/345 6789\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.52, 0.40, 0.33));
        assert!(parse_loadavg("x").is_none());
    }

    #[test]
    fn cpu_deltas() {
        let a = CpuSample {
            per_pid: vec![Some(1.0), Some(2.0), None],
            bench: Some(0.5),
        };
        let b = CpuSample {
            per_pid: vec![Some(3.5), Some(2.5), Some(9.0)],
            bench: Some(0.75),
        };
        assert_eq!(cpu_delta(&a, &b), (Some(3.0), Some(0.25)));
        assert_eq!(cpu_delta(&CpuSample::default(), &b), (None, None));
    }
}
