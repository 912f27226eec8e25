//! Memory and CPU of processes, read from Linux's `/proc`: resident set size now (`VmRSS`) and at
//! its peak (`VmHWM`, which can be reset so that each workload gets its own peak), and CPU time
//! (`utime + stime`, all threads).

use std::io;

use rask_common::usage::{parse_cpu_ticks, parse_status_kib, USER_HZ};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(Pid::SELF.rss_mib().unwrap() > 0.0);
        assert!(Pid::SELF.peak_rss_mib().unwrap() >= Pid::SELF.rss_mib().unwrap() - 1.0);
        assert!(Pid::SELF.cpu_seconds().unwrap() >= 0.0);
    }
}
