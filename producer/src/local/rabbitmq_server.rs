//! How to run a private RabbitMQ node: its spec, the command line and
//! environment that keep it inside its own folder and ports, and the check
//! that it accepts AMQP connections.
//!
//! We run `/usr/lib/rabbitmq/bin/rabbitmq-server` directly: the wrapper in
//! `/usr/sbin` switches to the `rabbitmq` user. That script stays in front of
//! the Erlang VM (`beam.smp`), so the pid that serves is read from the pid
//! file we ask RabbitMQ to write. Never run `rabbitmq-server --version`: it
//! starts a broker.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::process::Command;
use tokio::time::{sleep, Instant};

use super::logs;
use super::ports;
use super::spawn::Spawned;

/// The server script run directly (see the module docs).
const SERVER_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// How long a node may take to accept AMQP connections; a cold boot takes
/// 1-5 s here, recovery after SIGKILL a little longer.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one readiness probe (a full AMQP handshake) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often readiness is probed.
const POLL: Duration = Duration::from_millis(200);

/// Where and how to run one private RabbitMQ node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RabbitMqSpec {
    /// The node's own folder (made absolute at start): data (`mnesia/`), logs (`log/`), pid file,
    /// Erlang cookie. Created if missing; reused by a restart, so durable
    /// queues and persistent messages survive.
    pub dir: PathBuf,
    /// The AMQP port, on 127.0.0.1.
    pub port: u16,
    /// The Erlang distribution port, on 127.0.0.1 (RabbitMQ's default is
    /// 25672). Must be free too.
    pub dist_port: u16,
    /// The node name before `@localhost`, e.g. `rask`. Must be unique among
    /// the nodes running on this machine (they share one `epmd`).
    pub node_name: String,
}

impl RabbitMqSpec {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`: the default vhost, as the
    /// built-in `guest` user, which RabbitMQ admits from loopback.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Where the node's stdout and stderr go.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("log").join("console.log")
    }

    /// The node's own log, where boot errors are explained.
    pub fn node_log(&self) -> PathBuf {
        self.dir
            .join("log")
            .join(format!("{}@localhost.log", self.node_name))
    }

    /// The pid file RabbitMQ writes once booting (removed on a clean stop).
    pub(crate) fn pid_file(&self) -> PathBuf {
        self.dir.join("rabbitmq.pid")
    }

    /// The ports the node listens on, with names for error messages.
    pub(crate) fn ports(&self) -> [(u16, &'static str); 2] {
        [
            (self.port, "AMQP"),
            (self.dist_port, "RabbitMQ distribution"),
        ]
    }

    /// The last lines of both logs, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        logs::tail(&[&self.console_log(), &self.node_log()], logs::TAIL_LINES)
    }
}

/// Prepares the node's folder (plugins file, no stale pid file) and builds
/// the command that starts it.
///
/// # Errors
///
/// Fails if RabbitMQ is not installed or the folder cannot be written.
pub(crate) fn command(spec: &RabbitMqSpec) -> io::Result<Command> {
    if !Path::new(SERVER_SCRIPT).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("RabbitMQ is not installed ({SERVER_SCRIPT} is missing); run scripts/install-deps.sh"),
        ));
    }
    let dir = &spec.dir;
    let context = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("{what} in {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir.join("log"))
        .map_err(|e| context(e, "cannot create the RabbitMQ folder"))?;
    std::fs::write(dir.join("enabled_plugins"), "[].\n")
        .map_err(|e| context(e, "cannot write enabled_plugins"))?;
    match std::fs::remove_file(spec.pid_file()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(context(e, "cannot remove the stale pid file"))
        }
        _ => {}
    }

    let mut command = Command::new(SERVER_SCRIPT);
    command
        .current_dir(dir)
        .env("HOME", dir)
        .env("RABBITMQ_NODENAME", format!("{}@localhost", spec.node_name))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", spec.port.to_string())
        .env("RABBITMQ_DIST_PORT", spec.dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .env("RABBITMQ_PID_FILE", spec.pid_file())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        // Either would make the script exec the VM in a different mode.
        .env_remove("RABBITMQ_ALLOW_INPUT")
        .env_remove("NOTIFY_SOCKET");
    Ok(command)
}

/// Waits until the node completes an AMQP handshake, then returns the pid
/// of its Erlang VM (from the pid file).
///
/// # Errors
///
/// Fails, quoting the logs, if the process exits first or is not ready
/// within [`START_TIMEOUT`].
pub(crate) async fn wait_ready(spec: &RabbitMqSpec, process: &mut Spawned) -> io::Result<u32> {
    let deadline = Instant::now() + START_TIMEOUT;
    let url = spec.url();
    let mut last_error = String::from("nothing listens on the port yet");
    loop {
        if let Some(status) = process.try_wait()? {
            return Err(io::Error::other(format!(
                "RabbitMQ node {}@localhost (AMQP port {}) exited while starting ({status}){}",
                spec.node_name,
                spec.port,
                spec.log_tail()
            )));
        }
        if ports::accepts_connections(spec.port).await {
            match tokio::time::timeout(
                PROBE_TIMEOUT,
                Connection::connect(&url, ConnectionProperties::default()),
            )
            .await
            {
                Ok(Ok(connection)) => {
                    let _ = connection.close(200, "rask readiness probe".into()).await;
                    return read_pid_file(spec);
                }
                Ok(Err(e)) => last_error = format!("AMQP handshake failed: {e}"),
                Err(_) => last_error = format!("AMQP handshake took over {PROBE_TIMEOUT:?}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "RabbitMQ node {}@localhost did not accept AMQP connections on port {} within {START_TIMEOUT:?} ({last_error}){}",
                    spec.node_name,
                    spec.port,
                    spec.log_tail()
                ),
            ));
        }
        sleep(POLL).await;
    }
}

/// The Erlang VM's pid, from the pid file.
fn read_pid_file(spec: &RabbitMqSpec) -> io::Result<u32> {
    let path = spec.pid_file();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "RabbitMQ is up but its pid file {} is unreadable: {e}",
                path.display()
            ),
        )
    })?;
    text.trim().parse().map_err(|e| {
        io::Error::other(format!(
            "RabbitMQ pid file {} holds {text:?}: {e}",
            path.display()
        ))
    })
}
