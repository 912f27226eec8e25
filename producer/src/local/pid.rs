//! Processes known only by their pid: is it alive, what is it called, send
//! it a signal, wait until it is gone.
//!
//! `rask local down` and `status` run in a later invocation than `up`, so
//! they cannot hold child handles; they work from the pids in `state.json`.
//! A pid can be reused after a reboot or once the process is gone (this
//! machine's `pid_max` may be as low as 32768), so callers compare the
//! process name recorded at start before signalling anything.

use std::io;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::time::{sleep, Instant};

/// How many bytes of a program's name the kernel keeps (`TASK_COMM_LEN`
/// less the terminating NUL).
const COMM_LEN: usize = 15;

/// How often [`wait_until_gone`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// Whether a process with this pid exists and has not exited.
///
/// A zombie (exited, not yet reaped by its parent) counts as gone: it holds
/// no ports and does no work. That matters on machines whose init does not
/// reap orphans.
pub(crate) fn is_alive(pid: u32) -> bool {
    let Some(pid) = to_nix(pid) else { return false };
    if signal::kill(pid, None).is_err() {
        // ESRCH: no such process. EPERM would mean "exists, not ours"; we only
        // ever look at processes we started, so treat it as gone too.
        return false;
    }
    !is_zombie(pid)
}

/// The process's name as the kernel reports it (`/proc/PID/comm`, at most
/// 15 bytes, e.g. `beam.smp`, `redis-server`, `rask-worker`), or `None` if
/// there is no such process or no `/proc`.
pub(crate) fn name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_owned())
}

/// The name the kernel gives a process started from `program`: its file
/// name, cut to 15 bytes. Known before the child has finished `exec`,
/// unlike [`name`], which may still show the parent's name right after a
/// spawn.
pub(crate) fn name_of_program(program: &Path) -> String {
    let file_name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = file_name.len().min(COMM_LEN);
    while !file_name.is_char_boundary(end) {
        end -= 1;
    }
    file_name[..end].to_owned()
}

/// Whether `pid` is alive and still the process we recorded as `expected`
/// (compared by name when `/proc` is available; an empty `expected`, for a
/// name that could not be read at start, skips the comparison).
pub(crate) fn is_alive_as(pid: u32, expected: &str) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match name(pid) {
        Some(actual) if !expected.is_empty() => actual == expected,
        _ => true,
    }
}

/// Sends `sig` to `pid`.
///
/// # Errors
///
/// Fails if there is no such process or it may not be signalled.
pub(crate) fn send(pid: u32, sig: Signal) -> io::Result<()> {
    let Some(nix_pid) = to_nix(pid) else {
        return Err(io::Error::other(format!("refusing to signal pid {pid}")));
    };
    signal::kill(nix_pid, sig)
        .map_err(|errno| io::Error::other(format!("cannot send {sig} to pid {pid}: {errno}")))
}

/// Sends `sig` to every process in the group led by `pgid`, ignoring
/// failure (an empty group is the usual reason).
pub(crate) fn send_group(pgid: u32, sig: Signal) {
    if let Some(pgid) = to_nix(pgid) {
        let _ = signal::killpg(pgid, sig);
    }
}

/// Waits until `pid` is gone (see [`is_alive`]); `false` if it is still
/// alive after `timeout`.
pub(crate) async fn wait_until_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL).await;
    }
    true
}

/// Stops `pid` the polite way: SIGTERM, then SIGKILL if it is still alive
/// after `grace`. Returns whether it had to be killed.
///
/// # Errors
///
/// Fails if the process survives even SIGKILL for a few seconds (e.g. it is
/// stuck in uninterruptible I/O).
pub(crate) async fn terminate(pid: u32, what: &str, grace: Duration) -> io::Result<bool> {
    if !is_alive(pid) {
        return Ok(false);
    }
    // It may exit between the check and the signal; that is success.
    let _ = send(pid, Signal::SIGTERM);
    if wait_until_gone(pid, grace).await {
        return Ok(false);
    }
    tracing::warn!(
        pid,
        what,
        ?grace,
        "still running after SIGTERM; sending SIGKILL"
    );
    kill(pid, what).await?;
    Ok(true)
}

/// Sends SIGKILL to `pid` and waits until it is gone.
///
/// # Errors
///
/// Fails if the process is still there a few seconds later.
pub(crate) async fn kill(pid: u32, what: &str) -> io::Result<()> {
    let _ = send(pid, Signal::SIGKILL);
    if wait_until_gone(pid, Duration::from_secs(5)).await {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} (pid {pid}) is still running after SIGKILL"
        )))
    }
}

/// A pid nix can signal: rejects 0 and values that would wrap to negative
/// (which `kill(2)` would read as a process group).
fn to_nix(pid: u32) -> Option<Pid> {
    match i32::try_from(pid) {
        Ok(raw) if raw > 0 => Some(Pid::from_raw(raw)),
        _ => None,
    }
}

/// Whether `/proc/PID/stat` shows state `Z`. Without `/proc` we cannot tell
/// and say no.
fn is_zombie(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "PID (COMM) STATE ...". COMM may contain spaces and parens, so
    // look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_named() {
        let me = std::process::id();
        assert!(is_alive(me));
        let own_name = name(me).expect("/proc is available on Linux");
        assert!(is_alive_as(me, &own_name));
        assert!(!is_alive_as(me, "surely-not-this"));
        assert!(is_alive_as(me, ""));
    }

    #[test]
    fn program_names_are_cut_like_the_kernel_does() {
        assert_eq!(name_of_program(Path::new("/x/rask-worker")), "rask-worker");
        assert_eq!(
            name_of_program(Path::new("/x/a-very-long-worker-name")),
            "a-very-long-wor"
        );
    }

    #[test]
    fn nonsense_pids_are_not_alive() {
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
    }

    #[tokio::test]
    async fn terminate_stops_a_child_and_zombies_count_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        assert!(is_alive(pid));
        // Not reaped yet: it becomes a zombie, which must count as gone.
        let killed = terminate(pid, "sleep", Duration::from_secs(5))
            .await
            .expect("terminate");
        assert!(!killed, "sleep exits on SIGTERM");
        assert!(!is_alive(pid));
        child.wait().expect("reap");
    }
}
