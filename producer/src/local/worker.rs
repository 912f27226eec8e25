//! [`Worker`]: one `rask-worker` process (or any worker binary) started by
//! this process, with its own environment and log file.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::time::Instant;

use super::logs;
use super::pid;
use super::spawn::{self, Lifetime, Spawned};

/// What a worker writes to its log once it consumes (`rask_worker::Worker::run` logs it).
pub const READY_MARKER: &str = "worker ready";

/// How often the log is checked for [`READY_MARKER`].
const POLL: Duration = Duration::from_millis(25);

/// How much of a log line [`Worker::last_log_line`] keeps.
const LAST_LINE_CHARS: usize = 300;

/// `line` without ANSI escape sequences (`ESC [ … letter`), which colour the workers' logs.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What worker process to start, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The worker binary, e.g. from [`sibling_binary`](super::sibling_binary)`("rask-worker")`.
    pub program: PathBuf,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Environment variables set on top of the caller's environment, e.g.
    /// `RASK_AMQP_URL` and `RASK_REDIS_URL`.
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr are appended (created with its folder).
    pub log: PathBuf,
}

/// A worker process this process started.
///
/// With [`Lifetime::TiedToCaller`] it also stops (SIGTERM, then SIGKILL
/// after 10 s) when this value is dropped or the calling process dies.
#[derive(Debug)]
pub struct Worker {
    process: Spawned,
    /// The log's length when this process started: what it wrote comes after.
    log_start: u64,
}

impl Worker {
    /// Starts the worker in its own process group.
    ///
    /// # Errors
    ///
    /// Fails if the log cannot be opened or the program cannot be started.
    pub fn spawn(spec: &WorkerSpec, lifetime: Lifetime) -> io::Result<Self> {
        let mut command = Command::new(&spec.program);
        command.args(&spec.args);
        command.envs(spec.env.iter().map(|(key, value)| (key, value)));
        // The log is appended to (by earlier processes of the same worker, too): only what
        // comes after this point is this process's.
        let log_start = std::fs::metadata(&spec.log).map_or(0, |m| m.len());
        let process = spawn::spawn(command, lifetime, &spec.log)?;
        Ok(Self { process, log_start })
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        self.process.log()
    }

    /// Whether it is still running.
    ///
    /// # Errors
    ///
    /// Fails only if the OS cannot report on the child.
    pub fn is_running(&mut self) -> io::Result<bool> {
        Ok(self.process.try_wait()?.is_none())
    }

    /// Its exit status if it has exited, else `None` (without waiting).
    ///
    /// # Errors
    ///
    /// Fails only if the OS cannot report on the child.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// Whether this process has logged [`READY_MARKER`] (a marker of an earlier process in the
    /// same log does not count).
    pub fn is_ready(&self) -> bool {
        self.own_log().contains(READY_MARKER)
    }

    /// The last non-empty line this process logged, if any (without terminal colours, at most
    /// 300 characters): after it exits, usually why.
    pub fn last_log_line(&self) -> Option<String> {
        let log = self.own_log();
        let line = log.lines().rev().find(|line| !line.trim().is_empty())?;
        let plain = without_colours(line.trim());
        Some(match plain.char_indices().nth(LAST_LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &plain[..cut]),
            None => plain,
        })
    }

    /// What this process wrote to its log so far.
    fn own_log(&self) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(self.log_start)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Returns once the worker has logged [`READY_MARKER`]: connected, topology declared,
    /// consuming.
    ///
    /// # Errors
    ///
    /// Fails, quoting its log, if the worker exited or is not ready within `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait()? {
                return Err(io::Error::other(format!(
                    "worker (pid {}) exited right after starting ({status}){}",
                    self.pid(),
                    logs::tail(&[self.log_path()], logs::TAIL_LINES)
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "worker (pid {}) not ready after {timeout:?}{}",
                    self.pid(),
                    logs::tail(&[self.log_path()], logs::TAIL_LINES)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the worker to shut down gracefully (SIGTERM). Does nothing if it
    /// has already exited.
    ///
    /// # Errors
    ///
    /// Fails if the signal cannot be sent.
    pub fn signal_term(&mut self) -> io::Result<()> {
        if self.process.try_wait()?.is_some() {
            return Ok(());
        }
        pid::send(self.pid(), Signal::SIGTERM)
    }

    /// Kills the worker with SIGKILL and returns its exit status.
    ///
    /// # Errors
    ///
    /// Fails if it is still running a few seconds after SIGKILL.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.process.try_wait()? {
            return Ok(status);
        }
        // It may exit between the check and the signal; waiting tells.
        let _ = pid::send(self.pid(), Signal::SIGKILL);
        self.process
            .wait_timeout(Duration::from_secs(5))
            .await?
            .ok_or_else(|| {
                io::Error::other(format!("worker (pid {}) survived SIGKILL", self.pid()))
            })
    }

    /// Waits up to `timeout` for the worker to exit: its status, or `None`
    /// if it is still running.
    ///
    /// # Errors
    ///
    /// Fails only if the OS cannot report on the child.
    pub async fn wait(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        self.process.wait_timeout(timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn spec(script: &str, name: &str) -> WorkerSpec {
        WorkerSpec {
            program: PathBuf::from("sh"),
            args: vec!["-c".into(), script.into()],
            env: vec![("RASK_TEST_GREETING".into(), "hello".into())],
            log: std::env::temp_dir().join(format!(
                "rask-worker-test-{}-{name}.log",
                std::process::id()
            )),
        }
    }

    #[tokio::test]
    async fn a_worker_gets_its_env_and_stops_on_sigterm() {
        let spec = spec(
            "echo $RASK_TEST_GREETING worker ready; trap 'exit 0' TERM; while :; do sleep 0.05; done",
            "term",
        );
        let mut worker = Worker::spawn(&spec, Lifetime::TiedToCaller).expect("spawn");
        worker
            .wait_ready(Duration::from_secs(5))
            .await
            .expect("ready");
        assert!(worker.is_running().expect("running"));
        worker.signal_term().expect("SIGTERM");
        let status = worker.wait(Duration::from_secs(5)).await.expect("wait");
        assert_eq!(status.and_then(|s| s.code()), Some(0));
        assert_eq!(
            std::fs::read_to_string(&spec.log).expect("log"),
            "hello worker ready\n"
        );
        let _ = std::fs::remove_file(&spec.log);
    }

    #[test]
    fn colours_are_dropped_from_log_lines() {
        assert_eq!(
            without_colours("\u{1b}[2mtime\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m out of memory"),
            "time  WARN out of memory"
        );
    }

    #[tokio::test]
    async fn only_its_own_lines_count_in_an_appended_log() {
        let first = spec("echo worker ready; echo first words", "appended");
        let mut worker = Worker::spawn(&first, Lifetime::TiedToCaller).expect("spawn");
        worker.wait(Duration::from_secs(5)).await.expect("exits");
        assert!(worker.is_ready());
        assert_eq!(worker.last_log_line().as_deref(), Some("first words"));
        let second = spec("echo 'bad setting' >&2; exit 78", "appended");
        let mut worker = Worker::spawn(&second, Lifetime::TiedToCaller).expect("spawn");
        let status = worker.wait(Duration::from_secs(5)).await.expect("exits");
        assert_eq!(status.and_then(|s| s.code()), Some(78));
        assert!(
            !worker.is_ready(),
            "the first process's marker is not this one's"
        );
        assert_eq!(worker.last_log_line().as_deref(), Some("bad setting"));
        let _ = std::fs::remove_file(&second.log);
    }

    #[tokio::test]
    async fn a_worker_that_dies_at_once_is_not_ready_and_kill_works() {
        let failing = spec("echo boom; exit 1", "fail");
        let mut worker = Worker::spawn(&failing, Lifetime::TiedToCaller).expect("spawn");
        let error = worker
            .wait_ready(Duration::from_secs(5))
            .await
            .expect_err("not ready");
        assert!(error.to_string().contains("boom"), "{error}");
        let _ = std::fs::remove_file(&failing.log);

        let sleeper = spec("sleep 30", "kill");
        let mut worker = Worker::spawn(&sleeper, Lifetime::TiedToCaller).expect("spawn");
        let status = worker.kill().await.expect("kill");
        assert_eq!(status.signal(), Some(9));
        let _ = std::fs::remove_file(&sleeper.log);
    }
}
