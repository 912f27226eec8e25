//! How to run a private Redis: its spec, the command line that keeps it in
//! its own folder and port, and the check that it answers `PING`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::{sleep, Instant};

use super::logs;
use super::spawn::Spawned;

/// How long Redis may take to answer `PING`: milliseconds when empty, longer
/// while it replays a big append-only file.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `PING` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often readiness is probed.
const POLL: Duration = Duration::from_millis(50);

/// Where and how to run one private Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSpec {
    /// Redis's own folder (made absolute at start): the append-only files and the log.
    /// Created if missing; reused by a restart.
    pub dir: PathBuf,
    /// The port, on 127.0.0.1.
    pub port: u16,
    /// Whether to keep an append-only file, so data survives a restart or a
    /// crash of Redis; without it Redis keeps nothing on disk. Redis writes
    /// the file before it answers a write, and `fsync`s it as `fsync` says.
    pub append_only: bool,
    /// When Redis `fsync`s its append-only file (`appendfsync`): see [`Fsync`].
    pub fsync: Fsync,
    /// Whether the server runs in Redis Cluster mode (`cluster-enabled yes`, its node table
    /// in `nodes.conf` in `dir`, a node timeout of 2 s so that a failed primary is replaced
    /// quickly, and a replica's full sync started without the default 5 s delay); it then
    /// serves only as a node of a cluster that is created separately (e.g. `redis-cli
    /// --cluster create`).
    pub cluster: bool,
}

/// When Redis `fsync`s its append-only file (`appendfsync`). Either way Redis writes each
/// write to the file (the OS's cache) before answering it, as a rule, so a worker acknowledges
/// a task only once its result is there, and the result survives Redis being killed; they
/// differ when the whole machine crashes (power loss, kernel panic). See docs/reliability.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fsync {
    /// `fsync` once a second, in the background: a crash of the machine can lose the results
    /// of the last second or two, acknowledged though they are (their futures then wait until
    /// they time out); so can a crash of Redis while a slow disk holds up the background
    /// `fsync` (Redis then answers writes for up to 2 s before writing them).
    #[default]
    EverySec,
    /// `fsync` before answering each batch of writes: a crash of the machine loses no
    /// acknowledged result, at the cost of a disk flush per batch (see docs/reliability.md).
    Always,
}

impl Fsync {
    /// `everysec` or `always`, as Redis's `appendfsync` and `rask local up --fsync` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::EverySec => "everysec",
            Fsync::Always => "always",
        }
    }
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "everysec" => Ok(Fsync::EverySec),
            "always" => Ok(Fsync::Always),
            other => Err(format!("{other:?}: expected everysec or always")),
        }
    }
}

impl RedisSpec {
    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Where Redis's log (its stdout and stderr) goes.
    pub fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        logs::tail(&[&self.log()], logs::TAIL_LINES)
    }
}

/// Creates the folder and builds the command that starts Redis in the
/// foreground, saving no RDB snapshots, with the append-only file synced as
/// `spec.fsync` says when `spec.append_only`.
///
/// # Errors
///
/// Fails if the folder cannot be created.
pub(crate) fn command(spec: &RedisSpec) -> io::Result<Command> {
    std::fs::create_dir_all(&spec.dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create the Redis folder {}: {e}", spec.dir.display()),
        )
    })?;
    let mut command = Command::new("redis-server");
    command
        .current_dir(&spec.dir)
        .arg("--port")
        .arg(spec.port.to_string())
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(&spec.dir)
        .args(["--save", ""])
        .args(["--appendonly", if spec.append_only { "yes" } else { "no" }])
        .args(["--appendfsync", spec.fsync.as_str()])
        .args(["--daemonize", "no"])
        .args(["--logfile", ""]);
    if spec.cluster {
        command
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000"])
            // A replica's first full sync starts at once, not after the default 5 s wait
            // for more replicas to share one transfer.
            .args(["--repl-diskless-sync-delay", "0"]);
    }
    Ok(command)
}

/// Waits until Redis answers `PING` with `PONG` (not `LOADING`).
///
/// # Errors
///
/// Fails, quoting the log, if the process exits first or does not answer
/// within [`START_TIMEOUT`].
pub(crate) async fn wait_ready(spec: &RedisSpec, process: &mut Spawned) -> io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let client = redis::Client::open(spec.url())
        .map_err(|e| io::Error::other(format!("bad Redis URL {}: {e}", spec.url())))?;
    loop {
        if let Some(status) = process.try_wait()? {
            return Err(io::Error::other(format!(
                "Redis (port {}) exited while starting ({status}){}",
                spec.port,
                spec.log_tail()
            )));
        }
        let last_error = match tokio::time::timeout(PROBE_TIMEOUT, ping(&client)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("PING took over {PROBE_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "Redis did not answer PING on port {} within {START_TIMEOUT:?} ({last_error}){}",
                    spec.port,
                    spec.log_tail()
                ),
            ));
        }
        sleep(POLL).await;
    }
}

/// One `PING` on a fresh connection.
async fn ping(client: &redis::Client) -> redis::RedisResult<()> {
    let mut connection = client.get_multiplexed_async_connection().await?;
    let _pong: String = redis::cmd("PING").query_async(&mut connection).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_reads_and_prints_as_redis_spells_it() {
        for fsync in [Fsync::EverySec, Fsync::Always] {
            assert_eq!(fsync.to_string().parse::<Fsync>(), Ok(fsync));
        }
        assert!("sometimes".parse::<Fsync>().is_err());
        assert_eq!(Fsync::default(), Fsync::EverySec);
    }
}
