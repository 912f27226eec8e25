//! [`ServerProcess`]: one running private RabbitMQ or Redis, with the
//! lifecycle tests need: start and wait until it serves, stop gracefully,
//! kill hard, restart on the same data.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::pid;
use super::ports;
use super::rabbitmq_server::{self, RabbitMqSpec};
use super::redis_server::{self, RedisSpec};
use super::spawn::{self, Lifetime, Spawned};

/// How long a graceful stop may take before we fall back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the ports may stay taken once the process is gone.
const PORT_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the direct child may outlive the serving process (RabbitMQ's
/// start script exits right after the Erlang VM).
const WRAPPER_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which server, with the spec it was started from.
#[derive(Clone, Debug)]
enum Server {
    RabbitMq(RabbitMqSpec),
    Redis(RedisSpec),
}

/// A private RabbitMQ or Redis that this process started.
///
/// With [`Lifetime::TiedToCaller`] the server also stops when this value is
/// dropped or the calling process dies; with [`Lifetime::Detached`] it keeps
/// running until stopped (by pid, e.g. by [`down`](super::down)).
#[derive(Debug)]
pub struct ServerProcess {
    server: Server,
    lifetime: Lifetime,
    /// The process we spawned (for RabbitMQ, the start script in front of
    /// the VM); `None` once stopped or killed.
    process: Option<Spawned>,
    /// The pid that serves: the Erlang VM for RabbitMQ, `redis-server`.
    pid: u32,
    /// That process's name at start (`beam.smp`, `redis-server`), so a
    /// reused pid is never signalled.
    name: String,
}

impl ServerProcess {
    /// Starts a RabbitMQ node and returns once it completes an AMQP
    /// handshake as `guest` (typically 1-5 s).
    ///
    /// # Errors
    ///
    /// `AddrInUse` if its AMQP or distribution port is taken; `NotFound` if
    /// RabbitMQ is not installed; otherwise an error quoting its logs if it
    /// exits or is not ready within 60 s (what was started is stopped).
    pub async fn start_rabbitmq(spec: &RabbitMqSpec, lifetime: Lifetime) -> io::Result<Self> {
        let spec = RabbitMqSpec {
            dir: std::path::absolute(&spec.dir)?,
            ..spec.clone()
        };
        Self::start(Server::RabbitMq(spec), lifetime).await
    }

    /// Starts a Redis and returns once it answers `PING`.
    ///
    /// # Errors
    ///
    /// `AddrInUse` if its port is taken; `NotFound` if `redis-server` is not
    /// on the `PATH`; otherwise an error quoting its log if it exits or does
    /// not answer within 30 s (what was started is stopped).
    pub async fn start_redis(spec: &RedisSpec, lifetime: Lifetime) -> io::Result<Self> {
        let spec = RedisSpec {
            dir: std::path::absolute(&spec.dir)?,
            ..spec.clone()
        };
        Self::start(Server::Redis(spec), lifetime).await
    }

    /// The URL clients connect with: `amqp://guest:guest@127.0.0.1:PORT/%2f`
    /// or `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        match &self.server {
            Server::RabbitMq(spec) => spec.url(),
            Server::Redis(spec) => spec.url(),
        }
    }

    /// The client port (AMQP or Redis).
    pub fn port(&self) -> u16 {
        match &self.server {
            Server::RabbitMq(spec) => spec.port,
            Server::Redis(spec) => spec.port,
        }
    }

    /// The pid that actually serves (for RabbitMQ the Erlang VM `beam.smp`,
    /// not its start script); after a stop, the pid it had.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server process is still alive (it may have crashed, or
    /// been stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some() && pid::is_alive_as(self.pid, &self.name)
    }

    /// Where the server's output goes (for RabbitMQ its console log; its
    /// node log is beside it in the same folder).
    pub fn log_path(&self) -> PathBuf {
        match &self.server {
            Server::RabbitMq(spec) => spec.console_log(),
            Server::Redis(spec) => spec.log(),
        }
    }

    /// Stops the server gracefully (SIGTERM) and returns once the process is
    /// gone and its ports are free. Falls back to SIGKILL, with a warning,
    /// if it takes over 30 s. Does nothing if already stopped.
    ///
    /// # Errors
    ///
    /// Fails if the process survives SIGKILL or its ports stay taken.
    pub async fn stop(&mut self) -> io::Result<()> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        let what = self.describe();
        if self.still_serving(&mut process)? {
            let forced = pid::terminate(self.pid, &what, STOP_TIMEOUT).await?;
            tracing::info!(server = %what, forced, "stopped");
        }
        self.finish(&mut process, &what).await
    }

    /// Kills the server with SIGKILL, as a crash would, and returns once the
    /// process is gone and its ports are free. Does nothing if already
    /// stopped.
    ///
    /// # Errors
    ///
    /// Fails if the process survives SIGKILL or its ports stay taken.
    pub async fn kill(&mut self) -> io::Result<()> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        let what = self.describe();
        if self.still_serving(&mut process)? {
            pid::kill(self.pid, &what).await?;
            tracing::info!(server = %what, "killed");
        }
        self.finish(&mut process, &what).await
    }

    /// Stops the server if it is running, then starts it again with the same
    /// spec and lifetime, on the same data folder: durable queues,
    /// persistent messages and Redis's append-only data survive.
    ///
    /// # Errors
    ///
    /// As [`stop`](Self::stop), then as the start function.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await?;
        *self = Self::start(self.server.clone(), self.lifetime).await?;
        Ok(())
    }

    /// Spawns the server, waits until it serves, and stops it again if it
    /// does not.
    async fn start(server: Server, lifetime: Lifetime) -> io::Result<Self> {
        let (command, log, ports) = match &server {
            Server::RabbitMq(spec) => (
                rabbitmq_server::command(spec)?,
                spec.console_log(),
                spec.ports().to_vec(),
            ),
            Server::Redis(spec) => (
                redis_server::command(spec)?,
                spec.log(),
                vec![(spec.port, "Redis")],
            ),
        };
        for (port, role) in &ports {
            if !ports::port_is_free(*port) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "port {port} ({role}) is already in use; cannot start {} there",
                        name(&server)
                    ),
                ));
            }
        }
        let mut process = spawn::spawn(command, lifetime, &log).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(e.kind(), format!("{e}; run scripts/install-deps.sh"))
            } else {
                e
            }
        })?;
        let ready = match &server {
            Server::RabbitMq(spec) => rabbitmq_server::wait_ready(spec, &mut process).await,
            Server::Redis(spec) => redis_server::wait_ready(spec, &mut process)
                .await
                .map(|()| process.pid()),
        };
        match ready {
            Ok(serving_pid) => {
                let started = Self {
                    server,
                    lifetime,
                    process: Some(process),
                    pid: serving_pid,
                    name: pid::name(serving_pid).unwrap_or_default(),
                };
                tracing::info!(server = %started.describe(), ?lifetime, "started");
                Ok(started)
            }
            Err(e) => {
                abandon(&mut process).await;
                Err(e)
            }
        }
    }

    /// Whether the serving process is still there to signal. Once the
    /// spawned process has exited, the serving one is gone too (RabbitMQ's
    /// start script outlives its VM) and its pid may belong to another
    /// program by now.
    fn still_serving(&self, process: &mut Spawned) -> io::Result<bool> {
        Ok(process.try_wait()?.is_none() && pid::is_alive_as(self.pid, &self.name))
    }

    /// After the serving process is gone: reap the direct child and wait
    /// for the ports.
    async fn finish(&self, process: &mut Spawned, what: &str) -> io::Result<()> {
        if process.wait_timeout(WRAPPER_EXIT_TIMEOUT).await?.is_none() {
            abandon(process).await;
        }
        let ports: Vec<u16> = match &self.server {
            Server::RabbitMq(spec) => spec.ports().iter().map(|(port, _)| *port).collect(),
            Server::Redis(spec) => vec![spec.port],
        };
        ports::wait_until_free(&ports, what, PORT_RELEASE_TIMEOUT).await
    }

    /// E.g. `RabbitMQ node rask@localhost (port 5672, pid 123)`.
    fn describe(&self) -> String {
        match &self.server {
            Server::RabbitMq(spec) => {
                format!(
                    "RabbitMQ node {}@localhost (port {}, pid {})",
                    spec.node_name, spec.port, self.pid
                )
            }
            Server::Redis(spec) => format!("Redis (port {}, pid {})", spec.port, self.pid),
        }
    }
}

/// `RabbitMQ` or `Redis`, for messages.
fn name(server: &Server) -> &'static str {
    match server {
        Server::RabbitMq(_) => "RabbitMQ",
        Server::Redis(_) => "Redis",
    }
}

/// Kills the spawned process's whole group (it was started as the group
/// leader) and reaps it; for a start that failed or a wrapper that hangs.
async fn abandon(process: &mut Spawned) {
    let group = process.pid();
    tracing::warn!(pid = group, log = %process.log().display(), "killing the process group");
    pid::send_group(group, Signal::SIGKILL);
    let _ = process.wait_timeout(WRAPPER_EXIT_TIMEOUT).await;
}
