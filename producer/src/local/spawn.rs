//! Starting a child process with its output in a log file, either detached
//! from the caller or tied to the caller's life by a watchdog.
//!
//! A tied child gets a tiny `sh` watchdog in its own process group whose
//! stdin is a pipe only the caller holds. When the caller exits for any
//! reason (return, panic, SIGKILL) the pipe closes, the watchdog's `read`
//! returns, and it sends SIGTERM, then after a grace period SIGKILL, to the
//! child's whole process group. When the caller sees the child exit on its
//! own, it tells the watchdog `release` instead, so a reused pid is never
//! signalled.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long a spawned process lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Own process group, outlives the caller: for `rask local up`, whose
    /// servers keep running after the command returns.
    Detached,
    /// Stopped automatically when the caller exits, even if it panics or is
    /// killed, and when the handle is dropped: for test harnesses, which must
    /// never leave servers behind.
    TiedToCaller,
}

/// The watchdog: waits for a line on stdin; `release` means "leave the
/// group alone", anything else (EOF included) means "stop it". `$1` is the
/// process group id. dash's `kill` takes no `--`, hence `"-$1"`.
const WATCHDOG: &str = r#"read -r line
[ "$line" = release ] && exit 0
kill -TERM "-$1" 2>/dev/null || exit 0
i=0
while [ "$i" -lt 100 ] && kill -0 "-$1" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
kill -KILL "-$1" 2>/dev/null
exit 0"#;

/// A child process started by [`spawn`], plus its watchdog if tied.
#[derive(Debug)]
pub(crate) struct Spawned {
    child: Child,
    pid: u32,
    log: PathBuf,
    watchdog: Option<Watchdog>,
}

/// The watchdog process and the write end of its stdin pipe.
#[derive(Debug)]
struct Watchdog {
    /// Kept so tokio reaps it once it exits after the handle is dropped.
    _process: Child,
    /// Blocking write end: [`Spawned::release`] must work inside `Drop`.
    stdin: File,
}

/// Starts `command` in its own process group, stdin from `/dev/null`,
/// stdout and stderr appended to `log` (created with its parent folders).
///
/// # Errors
///
/// Fails if the log cannot be opened or the program cannot be started;
/// the message names the program and the log.
pub(crate) fn spawn(mut command: Command, lifetime: Lifetime, log: &Path) -> io::Result<Spawned> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let out = open_log(log)?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false);
    let child = command.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start {program} (log {}): {e}", log.display()),
        )
    })?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other(format!("{program} exited before its pid was read")))?;
    let mut spawned = Spawned {
        child,
        pid,
        log: log.to_owned(),
        watchdog: None,
    };
    if lifetime == Lifetime::TiedToCaller {
        match start_watchdog(pid) {
            Ok(watchdog) => spawned.watchdog = Some(watchdog),
            Err(e) => {
                let _ = spawned.child.start_kill();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start the watchdog for {program} (pid {pid}): {e}"),
                ));
            }
        }
    }
    tracing::debug!(pid, program, log = %log.display(), ?lifetime, "spawned");
    Ok(spawned)
}

impl Spawned {
    /// The pid of the process that was started (not of the watchdog).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its stdout and stderr go.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status if it has exited (reaping it and releasing the
    /// watchdog), else `None`.
    ///
    /// # Errors
    ///
    /// Fails only if the OS cannot report on the child.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.release();
        }
        Ok(status)
    }

    /// Waits up to `timeout` for it to exit; once it has, releases the
    /// watchdog.
    ///
    /// # Errors
    ///
    /// Fails only if the OS cannot report on the child.
    pub(crate) async fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> io::Result<Option<ExitStatus>> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.release();
                Ok(Some(status))
            }
            Err(_elapsed) => Ok(None),
        }
    }

    /// Tells the watchdog the child is gone, so it exits without signalling
    /// anything. Idempotent.
    fn release(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // A failed write means the watchdog already exited; fine.
            let _ = watchdog.stdin.write_all(b"release\n");
        }
    }
}

impl Drop for Spawned {
    /// A child that already exited releases its watchdog; one still running
    /// is left to the watchdog, which stops it when its pipe closes.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.release();
        }
    }
}

/// Opens `path` for appending, creating it and its folder.
fn open_log(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create log folder {}: {e}", parent.display()),
            )
        })?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open log {}: {e}", path.display())))
}

/// Starts the watchdog for process group `pgid`, in a group of its own so a
/// Ctrl-C aimed at the caller's group does not kill it before it acts.
fn start_watchdog(pgid: u32) -> io::Result<Watchdog> {
    let mut process = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("rask-watchdog")
        .arg(pgid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    let stdin = process
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the watchdog has no stdin pipe"))?;
    Ok(Watchdog {
        _process: process,
        stdin: File::from(stdin.into_owned_fd()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::pid;

    fn log_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rask-spawn-test-{}-{name}.log", std::process::id()))
    }

    #[tokio::test]
    async fn dropping_a_tied_child_stops_it() {
        let log = log_path("drop");
        let mut command = Command::new("sleep");
        command.arg("30");
        let spawned = spawn(command, Lifetime::TiedToCaller, &log).expect("spawn");
        let child_pid = spawned.pid();
        assert!(pid::is_alive(child_pid));
        drop(spawned);
        assert!(pid::wait_until_gone(child_pid, Duration::from_secs(5)).await);
        let _ = std::fs::remove_file(log);
    }

    #[tokio::test]
    async fn a_child_that_exits_releases_its_watchdog_and_logs_output() {
        let log = log_path("exit");
        let mut command = Command::new("sh");
        command.args(["-c", "echo hello; exit 3"]);
        let mut spawned = spawn(command, Lifetime::TiedToCaller, &log).expect("spawn");
        let status = spawned
            .wait_timeout(Duration::from_secs(5))
            .await
            .expect("wait");
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        assert!(spawned.watchdog.is_none());
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "hello\n");
        let _ = std::fs::remove_file(log);
    }
}
