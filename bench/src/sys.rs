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

/// The whole machine's CPU time so far, from the first line of `/proc/stat` (in ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineTicks {
    /// Every state but idle and iowait (steal included: a core the hypervisor took is not
    /// free for us either).
    pub busy: u64,
    pub total: u64,
    /// How many CPUs the machine has (`cpuN` lines).
    pub cpus: u32,
}

/// [`MachineTicks`] from the text of `/proc/stat`.
pub fn parse_proc_stat(stat: &str) -> Option<MachineTicks> {
    let mut lines = stat.lines();
    let first = lines.next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user already)
    let f: Vec<u64> = first
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = f[..] else {
        return None;
    };
    let cpus = lines
        .take_while(|l| l.starts_with("cpu"))
        .filter(|l| l[3..].starts_with(|c: char| c.is_ascii_digit()))
        .count();
    let busy = user + nice + system + irq + softirq + steal;
    Some(MachineTicks {
        busy,
        total: busy + idle + iowait,
        cpus: u32::try_from(cpus).ok().filter(|n| *n > 0)?,
    })
}

pub fn machine_ticks() -> Option<MachineTicks> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// How many of the machine's cores were busy between two samples (everything on it: the
/// servers, the database, Redis and the bench itself), e.g. 1.84 of 2.
pub fn machine_busy_cores(a: &MachineTicks, b: &MachineTicks) -> Option<f64> {
    let total = b.total.checked_sub(a.total).filter(|t| *t > 0)?;
    let busy = b.busy.checked_sub(a.busy)?;
    Some(busy as f64 / total as f64 * f64::from(b.cpus))
}

/// One sample of every watched server process, of the bench, and of the machine.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    pub per_pid: Vec<Option<f64>>,
    pub bench: Option<f64>,
    pub machine: Option<MachineTicks>,
}

pub fn sample_cpu(pids: &[u32]) -> CpuSample {
    CpuSample {
        per_pid: pids.iter().map(|p| cpu_seconds(&p.to_string())).collect(),
        bench: cpu_seconds("self"),
        machine: machine_ticks(),
    }
}

/// Busy cores of the machine between two samples (see [`machine_busy_cores`]).
pub fn machine_delta(a: &CpuSample, b: &CpuSample) -> Option<f64> {
    machine_busy_cores(a.machine.as_ref()?, b.machine.as_ref()?)
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
            machine: None,
        };
        let b = CpuSample {
            per_pid: vec![Some(3.5), Some(2.5), Some(9.0)],
            bench: Some(0.75),
            machine: None,
        };
        assert_eq!(cpu_delta(&a, &b), (Some(3.0), Some(0.25)));
        assert_eq!(cpu_delta(&CpuSample::default(), &b), (None, None));
    }

    #[test]
    fn machine_busy_from_proc_stat() {
        let a = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
        // 200 ticks later on each of 2 cores: 300 busy (10 of them stolen), 100 idle.
        let b = "cpu  300 0 140 880 70 0 0 10 0 0\ncpu0 150 0 70 440 35 0 0 5 0 0\ncpu1 150 0 70 440 35 0 0 5 0 0\n";
        let (a, b) = (parse_proc_stat(a).unwrap(), parse_proc_stat(b).unwrap());
        assert_eq!((a.busy, a.total, a.cpus), (150, 1000, 2));
        let busy = machine_busy_cores(&a, &b).unwrap();
        assert!((busy - 1.5).abs() < 1e-9, "{busy}");
        assert_eq!(machine_busy_cores(&b, &a), None, "counters never go back");
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        // this machine's own counters can be read
        assert!(machine_ticks().is_some_and(|m| m.cpus >= 1));
    }
}
