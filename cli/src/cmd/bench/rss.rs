//! Memory and CPU of processes, read from Linux's `/proc`: resident set size now (`VmRSS`) and at
//! its peak (`VmHWM`, which can be reset so that each workload gets its own peak), and CPU time
//! (`utime + stime`, all threads).

use std::io;

/// Clock ticks per second of the times in `/proc/PID/stat` (`USER_HZ`): 100 on every Linux
/// architecture rask runs on (it is part of the kernel's ABI, whatever the kernel's `HZ`).
const USER_HZ: f64 = 100.0;

/// A process to measure: `None` is this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pid(pub(super) Option<u32>);

impl Pid {
    /// This process (the client of every rask workload).
    pub(super) const SELF: Pid = Pid(None);

    fn path(self, file: &str) -> String {
        match self.0 {
            Some(pid) => format!("/proc/{pid}/{file}"),
            None => format!("/proc/self/{file}"),
        }
    }

    /// Resident memory now, in MiB.
    pub(super) fn rss_mib(self) -> io::Result<f64> {
        self.status_kib("VmRSS").map(kib_to_mib)
    }

    /// Peak resident memory since start or the last [`Pid::reset_peak`], in MiB.
    pub(super) fn peak_rss_mib(self) -> io::Result<f64> {
        self.status_kib("VmHWM").map(kib_to_mib)
    }

    /// Resets the peak to the current resident size (writes `5` to `clear_refs`, Linux 4.0+).
    pub(super) fn reset_peak(self) -> io::Result<()> {
        std::fs::write(self.path("clear_refs"), "5")
    }

    /// CPU time used so far by all its threads (user + system), in seconds.
    pub(super) fn cpu_seconds(self) -> io::Result<f64> {
        let stat = std::fs::read_to_string(self.path("stat"))?;
        parse_cpu_ticks(&stat)
            .map(|ticks| ticks as f64 / USER_HZ)
            .ok_or_else(|| io::Error::other(format!("unexpected {}: {stat:?}", self.path("stat"))))
    }

    fn status_kib(self, field: &str) -> io::Result<u64> {
        let status = std::fs::read_to_string(self.path("status"))?;
        parse_status_kib(&status, field)
            .ok_or_else(|| io::Error::other(format!("no {field} in {}", self.path("status"))))
    }
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `VmHWM:   1234 kB` → 1234 (the separator is a tab).
fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces, so fields are counted after the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
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
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        let stat = "42 (rask worker) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
    }

    #[test]
    fn reads_this_process() {
        assert!(Pid::SELF.rss_mib().unwrap() > 0.0);
        assert!(Pid::SELF.peak_rss_mib().unwrap() >= Pid::SELF.rss_mib().unwrap() - 1.0);
        assert!(Pid::SELF.cpu_seconds().unwrap() >= 0.0);
    }
}
