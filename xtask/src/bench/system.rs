//! What the bench reads from and sets on the machine: its description, core pinning, the file
//! descriptor limit, per-core and per-process CPU time, resident memory, and Ctrl-C.

use std::{fs, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_mib: u64,
    pub load_average_at_start: String,
    pub load_average_at_end: String,
    pub date_utc: String,
    pub nginx: String,
    pub wrk: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            cpus: cpus(),
            cpu_model,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            memory_mib,
            load_average_at_start: load_average(),
            load_average_at_end: String::new(),
            date_utc: command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            nginx: command_line("nginx", &["-v"]),
            wrk: command_line("wrk", &["-v"]),
        }
    }
}

impl Machine {
    /// A one-minute load average of 0.5 or more: something else is running.
    pub fn busy(&self) -> bool {
        self.load_average_at_start
            .split_whitespace()
            .next()
            .and_then(|l| l.parse::<f64>().ok())
            .is_some_and(|l| l >= 0.5)
    }
}

/// Online CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// `/proc/loadavg`'s three averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line a tool prints about itself (stdout or stderr), or `unknown`.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Pins the calling thread, and so every thread and process it starts afterwards, to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning the bench to CPU {cpu}"));
        }
    }
    Ok(())
}

/// Raises the open-file limit (inherited by nginx, wrk and the agent) towards `wanted`, for the
/// 10,000-connection run: the soft limit up to the hard one, and the hard one too where the
/// bench may (CAP_SYS_RESOURCE). Returns the soft limit now in force.
pub fn raise_nofile(wanted: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        if limit.rlim_cur >= wanted {
            return Ok(limit.rlim_cur);
        }
        let both = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &both) == 0 {
            return Ok(wanted);
        }
        let soft = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("raising RLIMIT_NOFILE to its hard limit {}", limit.rlim_max)
            });
        }
    }
    Ok(limit.rlim_max)
}

/// Busy and total jiffies of each CPU, from `/proc/stat`.
#[derive(Clone, Debug, Default)]
pub struct CoreTimes(Vec<(u64, u64)>);

impl CoreTimes {
    pub fn read() -> Self {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .map(|l| {
                let v: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
                let total: u64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                (total.saturating_sub(idle), total)
            })
            .collect();
        Self(cores)
    }

    /// Busy share (0..=1) of each CPU between `self` and `later`.
    pub fn busy_until(&self, later: &Self) -> Vec<f64> {
        self.0
            .iter()
            .zip(&later.0)
            .map(|((b0, t0), (b1, t1))| {
                let total = t1.saturating_sub(*t0);
                if total == 0 {
                    0.0
                } else {
                    b1.saturating_sub(*b0) as f64 / total as f64
                }
            })
            .collect()
    }
}

/// User plus system CPU time of process `pid`, all its threads, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at indexes 11 and 12.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {} in /proc/{pid}/stat", i + 3))
    };
    let ticks = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no memory side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// A `VmRSS:`-style line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Fails once Ctrl-C was pressed; called between steps and in every wait.
pub fn check_interrupted() -> Result<()> {
    if crate::interrupt::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration` in short steps, failing early on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + duration;
    loop {
        check_interrupted()?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Median of `values` (the mean of the middle two for an even count); `NaN` when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// The `p`-th percentile (nearest rank) of `values`; `NaN` when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
    }

    #[test]
    fn own_cpu_time_and_rss_are_readable() {
        let pid = std::process::id();
        assert!(process_cpu(pid).is_ok());
        assert!(status_kib(pid, "VmRSS").expect("VmRSS") > 0);
        assert!(!CoreTimes::read().0.is_empty());
    }
}
