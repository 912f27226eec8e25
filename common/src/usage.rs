//! What a process uses of its host: resident memory and CPU time, read from Linux's `/proc`
//! (for the worker's heartbeat, [`crate::ops::WorkerEntry::usage`], and its `/metrics`). Both are
//! cheap reads of small files, made once per heartbeat or scrape, never per task. Elsewhere than
//! on Linux there is nothing to read and [`ProcessUsage::of_self`] is `None`.

use serde::{Deserialize, Serialize};

/// Clock ticks per second of the times in `/proc/PID/stat` (`USER_HZ`): 100 on every Linux
/// architecture (part of the kernel's ABI to user space, whatever the kernel's own `HZ`).
pub const USER_HZ: f64 = 100.0;

/// A process's memory and CPU time at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// Resident set size (`VmRSS`), in bytes.
    pub resident_bytes: u64,
    /// CPU time used since the process started, user + system, all threads, in seconds.
    pub cpu_seconds: f64,
}

impl ProcessUsage {
    /// This process's usage now; `None` where `/proc/self` cannot be read (not Linux).
    pub fn of_self() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(ProcessUsage {
            resident_bytes: parse_status_kib(&status, "VmRSS")? * 1024,
            cpu_seconds: parse_cpu_ticks(&stat)? as f64 / USER_HZ,
        })
    }
}

/// The kB figure of `field` in a `/proc/PID/status` text: `VmRSS:   1234 kB` → 1234 (the
/// separator is a tab).
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces, so fields are counted after the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\trask\nVmHWM:\t   20480 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        let stat = "42 (rask worker) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("42 (x"), None);
    }

    #[test]
    fn reads_this_process() {
        let usage = ProcessUsage::of_self().expect("Linux");
        assert!(usage.resident_bytes > 1 << 20, "{usage:?}");
        assert!(usage.cpu_seconds >= 0.0, "{usage:?}");
    }
}
