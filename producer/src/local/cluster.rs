//! Starting the local cluster behind `rask local up`: one RabbitMQ, one
//! Redis and N workers under a supervisor (`rask local supervise`, see
//! [`supervisor`](super::supervisor)) that starts a worker again when it
//! exits abnormally, all detached from the command that started them and
//! recorded in `DIR/state.json` so that `down` and `status` (in
//! [`recorded`](super::recorded)) can find them.
//!
//! Layout of `DIR`: `rabbitmq/` and `redis/` (data and server logs),
//! `logs/worker-N.log`, `logs/supervisor.log`, `state.json`.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use super::binaries::sibling_binary;
use super::logs;
use super::pid;
use super::pool_spec::PoolWorkers;
use super::ports;
use super::rabbitmq_server::RabbitMqSpec;
use super::recorded;
use super::redis_server::{Fsync, RedisSpec};
use super::server::ServerProcess;
use super::spawn::{self, Lifetime, Spawned};
use super::state::{self, ClusterState, ProcessKind, ProcessRecord, WorkerState};

/// How long the supervisor may take to report its workers ready (it gives each 10 s).
const WORKERS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `up` looks at the state file while the workers start.
const POLL: Duration = Duration::from_millis(50);

/// What `rask local up` starts, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalClusterSpec {
    /// The cluster's folder. Default: [`default_dir`].
    pub dir: PathBuf,
    /// RabbitMQ's AMQP port on 127.0.0.1. Default: 5672.
    pub amqp_port: u16,
    /// RabbitMQ's Erlang distribution port. Default: 25672.
    pub dist_port: u16,
    /// Redis's port. Default: 6379.
    pub redis_port: u16,
    /// How many `rask-worker` processes to start; 0 starts only the
    /// servers. Default: 2.
    pub workers: usize,
    /// Extra environment for the workers, on top of `RASK_AMQP_URL` and
    /// `RASK_REDIS_URL` (which these may override). Default: none.
    pub worker_env: Vec<(String, String)>,
    /// When Redis `fsync`s its append-only file. Default: [`Fsync::EverySec`].
    pub fsync: Fsync,
    /// Extra workers serving one pool each (`--pool gpu:1:gpu=2`), besides the `workers`.
    /// Default: none.
    pub pools: Vec<PoolWorkers>,
}

impl Default for LocalClusterSpec {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            amqp_port: 5672,
            dist_port: 25672,
            redis_port: 6379,
            workers: 2,
            worker_env: Vec::new(),
            fsync: Fsync::EverySec,
            pools: Vec::new(),
        }
    }
}

/// The default cluster folder: `$RASK_LOCAL_DIR`, else
/// `${XDG_STATE_HOME:-$HOME/.local/state}/rask/local` (else a folder under
/// the system's temporary folder if neither is set).
pub fn default_dir() -> PathBuf {
    default_dir_from(|name| std::env::var_os(name))
}

/// Starts RabbitMQ, Redis (append-only) and, when `spec.workers` is not 0,
/// a supervisor (`rask local supervise`, the `rask` binary beside this one)
/// that runs that many workers and starts again any that exits abnormally;
/// all detached, and recorded in `DIR/state.json`. Returns once the servers
/// accept connections and every worker is consuming. If a part fails, the
/// parts already started are stopped again.
///
/// # Errors
///
/// `AlreadyExists` if a cluster recorded in the folder is still running;
/// `AddrInUse` if a port is taken (the message names the option to change
/// it); `NotFound` if RabbitMQ, Redis, `rask` or `rask-worker` is missing;
/// otherwise the error of the part that failed to start, quoting its log.
pub async fn up(spec: &LocalClusterSpec) -> io::Result<ClusterState> {
    // The servers run in their own folders, so relative paths would break.
    let spec = &LocalClusterSpec {
        dir: std::path::absolute(&spec.dir)?,
        ..spec.clone()
    };
    recorded::ensure_not_running(&spec.dir)?;
    check_ports(spec)?;
    let supervisor_program = if total_workers(spec) > 0 {
        sibling_binary("rask-worker")?;
        Some(sibling_binary("rask")?)
    } else {
        None
    };

    let mut started = Started::default();
    match start_parts(spec, supervisor_program, &mut started).await {
        Ok(state) => Ok(state),
        Err(e) => {
            tracing::warn!(error = %e, "local cluster failed to start; stopping what was started");
            started.stop().await;
            let _ = state::remove(&spec.dir);
            Err(e)
        }
    }
}

/// The parts started so far, for cleaning up after a failed `up`.
#[derive(Default)]
struct Started {
    rabbitmq: Option<ServerProcess>,
    redis: Option<ServerProcess>,
    supervisor: Option<Spawned>,
    dir: PathBuf,
}

impl Started {
    /// Stops everything started, the supervisor and its workers first; errors
    /// are only logged, the caller is already reporting the error that caused
    /// this.
    async fn stop(&mut self) {
        if let Some(supervisor) = &mut self.supervisor {
            if let Err(e) = recorded::stop_supervised(&self.dir, supervisor).await {
                tracing::warn!(pid = supervisor.pid(), error = %e, "cannot stop the supervisor");
            }
        }
        for server in [&mut self.redis, &mut self.rabbitmq].into_iter().flatten() {
            if let Err(e) = server.stop().await {
                tracing::warn!(pid = server.pid(), error = %e, "cannot stop server");
            }
        }
    }
}

/// Starts each part in turn, recording it in the state file as soon as it
/// runs, so that a `down` can clean up even if this process dies half-way.
async fn start_parts(
    spec: &LocalClusterSpec,
    supervisor_program: Option<PathBuf>,
    started: &mut Started,
) -> io::Result<ClusterState> {
    started.dir = spec.dir.clone();
    let rabbitmq_spec = RabbitMqSpec {
        dir: spec.dir.join("rabbitmq"),
        port: spec.amqp_port,
        dist_port: spec.dist_port,
        node_name: format!("rask-{}", spec.amqp_port),
    };
    let redis_spec = RedisSpec {
        dir: spec.dir.join("redis"),
        port: spec.redis_port,
        append_only: true,
        fsync: spec.fsync,
        cluster: false,
    };
    let mut state = ClusterState {
        dir: spec.dir.clone(),
        amqp_url: rabbitmq_spec.url(),
        redis_url: redis_spec.url(),
        processes: Vec::new(),
    };

    let rabbitmq = started
        .rabbitmq
        .insert(ServerProcess::start_rabbitmq(&rabbitmq_spec, Lifetime::Detached).await?);
    state
        .processes
        .push(server_record(ProcessKind::RabbitMq, rabbitmq));
    state::write(&state)?;

    let redis = started
        .redis
        .insert(ServerProcess::start_redis(&redis_spec, Lifetime::Detached).await?);
    state
        .processes
        .push(server_record(ProcessKind::Redis, redis));
    state::write(&state)?;

    if let Some(program) = supervisor_program {
        let mut command = Command::new(&program);
        command.args(["local", "supervise", "--workers", &spec.workers.to_string()]);
        for pool in &spec.pools {
            command.arg("--pool").arg(pool.to_string());
        }
        command.arg("--dir").arg(&spec.dir);
        // The workers inherit the supervisor's environment.
        command.env("RASK_AMQP_URL", &state.amqp_url);
        command.env("RASK_REDIS_URL", &state.redis_url);
        command.envs(spec.worker_env.iter().map(|(key, value)| (key, value)));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info"); // its log says when and why workers restarted
        }
        let log = spec.dir.join("logs").join("supervisor.log");
        let supervisor =
            started
                .supervisor
                .insert(spawn::spawn(command, Lifetime::Detached, &log)?);
        state = wait_supervised(&spec.dir, total_workers(spec), supervisor).await?;
    }
    tracing::info!(dir = %spec.dir.display(), amqp = %state.amqp_url, redis = %state.redis_url, workers = spec.workers, "local cluster up");
    Ok(state)
}

/// The workers of `spec`: the plain ones and those of every pool.
fn total_workers(spec: &LocalClusterSpec) -> usize {
    spec.workers + spec.pools.iter().map(|p| p.count).sum::<usize>()
}

/// The record of a freshly started server.
fn server_record(kind: ProcessKind, server: &ServerProcess) -> ProcessRecord {
    ProcessRecord {
        kind,
        pid: server.pid(),
        name: pid::name(server.pid()).unwrap_or_default(),
        address: Some(server.url()),
        log: server.log_path(),
        alive: true,
        supervision: None,
    }
}

/// Waits until the supervisor has recorded `workers` workers, all consuming;
/// the state then.
///
/// # Errors
///
/// Fails, quoting the supervisor's log, if it exits first (it does when a
/// worker exits or is not ready in time) or takes longer than
/// [`WORKERS_READY_TIMEOUT`].
async fn wait_supervised(
    dir: &std::path::Path,
    workers: usize,
    supervisor: &mut Spawned,
) -> io::Result<ClusterState> {
    let deadline = tokio::time::Instant::now() + WORKERS_READY_TIMEOUT;
    loop {
        if let Some(state) = state::read(dir)? {
            let ready = state
                .processes
                .iter()
                .filter_map(|r| r.supervision.as_ref())
                .filter(|s| s.state == WorkerState::Running)
                .count();
            if ready == workers {
                return Ok(state);
            }
        }
        let problem = if let Some(status) = supervisor.try_wait()? {
            format!("exited ({status})")
        } else if tokio::time::Instant::now() >= deadline {
            format!("has not reported its workers ready after {WORKERS_READY_TIMEOUT:?}")
        } else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        return Err(io::Error::other(format!(
            "the workers' supervisor (pid {}) {problem}{}",
            supervisor.pid(),
            logs::tail(&[supervisor.log()], logs::TAIL_LINES)
        )));
    }
}

/// Fails with a message naming the option to change if the ports clash
/// with each other or are taken.
fn check_ports(spec: &LocalClusterSpec) -> io::Result<()> {
    let ports = [
        (
            spec.amqp_port,
            "AMQP",
            "is another broker running? pass --amqp-port",
        ),
        (
            spec.dist_port,
            "RabbitMQ distribution",
            "is another broker running? pass --dist-port",
        ),
        (
            spec.redis_port,
            "Redis",
            "is another Redis running? pass --redis-port",
        ),
    ];
    for (i, (port, role, _)) in ports.iter().enumerate() {
        if let Some((_, other, _)) = ports[..i].iter().find(|(p, _, _)| p == port) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "port {port} is given both for {other} and for {role}; pick different ports"
                ),
            ));
        }
    }
    for (port, role, hint) in ports {
        if !ports::port_is_free(port) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} ({role}) is already in use; {hint}"),
            ));
        }
    }
    Ok(())
}

/// [`default_dir`] with the environment passed in, for tests.
fn default_dir_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let set = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(dir) = set("RASK_LOCAL_DIR") {
        return PathBuf::from(dir);
    }
    let state_home = set("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".local").join("state")));
    match state_home {
        Some(base) => base.join("rask").join("local"),
        None => std::env::temp_dir().join("rask-local"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, TcpListener};
    use std::path::Path;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn default_dir_prefers_rask_local_dir_then_xdg_then_home() {
        let all = [
            ("RASK_LOCAL_DIR", "/r"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(default_dir_from(env(&all)), PathBuf::from("/r"));
        assert_eq!(
            default_dir_from(env(&all[1..])),
            PathBuf::from("/x/rask/local")
        );
        assert_eq!(
            default_dir_from(env(&all[2..])),
            PathBuf::from("/h/.local/state/rask/local")
        );
        let relative_xdg = [("XDG_STATE_HOME", "rel"), ("HOME", "/h")];
        assert_eq!(
            default_dir_from(env(&relative_xdg)),
            PathBuf::from("/h/.local/state/rask/local")
        );
    }

    fn spec_on_free_ports(dir: &Path) -> LocalClusterSpec {
        LocalClusterSpec {
            dir: dir.to_owned(),
            amqp_port: ports::free_port().expect("port"),
            dist_port: ports::free_port().expect("port"),
            redis_port: ports::free_port().expect("port"),
            workers: 0,
            worker_env: Vec::new(),
            fsync: Fsync::EverySec,
            pools: Vec::new(),
        }
    }

    #[test]
    fn taken_and_clashing_ports_are_refused_with_the_option_to_change() {
        let dir = std::env::temp_dir().join("rask-cluster-ports-test");
        let mut spec = spec_on_free_ports(&dir);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        spec.redis_port = listener.local_addr().expect("addr").port();
        let error = check_ports(&spec).expect_err("taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains("--redis-port"), "{error}");

        spec.dist_port = spec.amqp_port;
        let error = check_ports(&spec).expect_err("clash");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
