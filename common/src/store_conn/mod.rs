//! Connections to the store: a single Redis or a Redis Cluster, with the settings' TLS files,
//! behind one [`Connection`] that every module of the crate sends commands and pipelines through.
//! How commands reach a cluster (split by slot, healed after a fail-over) is [`cluster`]'s job.
//!
//! Every Redis socket is made with [`tcp_settings`]: no Nagle delay, TCP keepalive, and a limit
//! on how long sent data may go unacknowledged, so that a connection whose peer vanished
//! without a FIN or RST (a partition, a crashed host) fails and is made again instead of
//! holding its commands forever.

mod cluster;

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, IntoConnectionInfo as _, Pipeline, RedisFuture, Value};

pub use cluster::{ClusterLink, Node};

use crate::error::Result;
use crate::settings::Settings;
use crate::tls::TlsFiles;

/// How long a command or pipeline may take before it fails: long enough for a pipeline of
/// hundreds of MiB of results on a busy machine (the redis crate's default is 500 ms).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command on a cluster may take (commands go one by one there, not in big
/// pipelines): short, because after a fail-over the redis crate can stall until requests time
/// out, and a timed-out request makes [`ClusterLink`] connect afresh.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to one cluster node may take.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keepalive probes unanswered before the kernel drops an idle connection.
const KEEPALIVE_PROBES: u32 = 3;
/// Ping intervals that sent data may go unacknowledged before the kernel drops the
/// connection (`TCP_USER_TIMEOUT`).
const UNACKED_INTERVALS: u32 = 3;
/// Retries of a cluster request whose node is lost or moved.
const CLUSTER_RETRIES: u32 = 10;
/// The least and largest waits between those retries, in ms.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (50, 2000);

/// A cheap-to-clone connection to the store that reconnects by itself: what [`crate::Store`]
/// sends every command through, and what [`crate::Store::connection`] lends for commands of
/// one's own (e.g. `redis::cmd("PTTL").arg(key).query_async(&mut connection)`).
#[derive(Clone)]
pub enum Connection {
    /// One Redis (`redis_url`).
    Single(ConnectionManager),
    /// A Redis Cluster (`redis_cluster_urls`): follows slot moves and fail-overs.
    Cluster(ClusterLink),
}

impl Connection {
    /// Connects to the store of `settings`: the cluster of `redis_cluster_urls` when set, else
    /// the Redis of `redis_url`.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if the store cannot be reached or a URL is bad;
    /// [`crate::Error::TlsFile`] if a TLS file cannot be read.
    pub(crate) async fn connect(settings: &Settings) -> Result<Self> {
        if settings.redis_cluster_urls.is_empty() {
            // A lost connection is made again with backoff from 100 ms doubling, at most one
            // ping interval apart, so that one is made soon after the network heals.
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_max_delay(settings.redis_ping_interval);
            let conn = client(settings, &settings.redis_url)?
                .get_connection_manager_with_config(config)
                .await?;
            return Ok(Connection::Single(conn));
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(
            settings.redis_cluster_urls.iter().map(String::as_str),
        )
        .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
        .connection_timeout(CLUSTER_CONNECT_TIMEOUT)
        // The redis crate waits 1.28 s and more between retries of a request to a lost node;
        // a fail-over takes the node timeout (seconds): retry quickly, for about 10 s.
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
        .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1)
        .tcp_settings(tcp_settings(settings.redis_ping_interval));
        if settings
            .redis_cluster_urls
            .iter()
            .any(|url| url.starts_with("rediss://"))
        {
            builder = builder
                .tls(redis::TlsMode::Secure)
                .certs(certificates(TlsFiles::read(settings)?));
        }
        Ok(Connection::Cluster(
            ClusterLink::connect(builder.build()?).await?,
        ))
    }

    /// The primaries of the store: the single Redis, or each primary of the cluster.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if the store cannot be asked.
    pub async fn primaries(&self) -> Result<Vec<Node>> {
        match self {
            Connection::Single(_) => Ok(vec![Node::Single]),
            Connection::Cluster(link) => Ok(link.primaries().await?),
        }
    }

    /// Runs `cmd` on `node` (one of [`Connection::primaries`]).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if the node fails or the reply is not a `T`.
    pub async fn query_on<T: redis::FromRedisValue>(&self, node: &Node, cmd: Cmd) -> Result<T> {
        let value = match self {
            Connection::Cluster(link) => link.query_on(node, cmd).await?,
            Connection::Single(conn) => cmd.query_async(&mut conn.clone()).await?,
        };
        Ok(redis::from_redis_value(value).map_err(redis::RedisError::from)?)
    }

    /// Waits until `replicas` replicas of every primary hold the writes made so far (Redis's
    /// `WAIT`), for at most `timeout`; returns the fewest replicas any primary reached.
    /// `WAIT` only counts the writes of its own connection: on a single Redis this first
    /// publishes to the channel `mark` (nobody need listen; replicas receive every publish), so
    /// that the wait covers every write Redis answered before, on any connection; on a cluster
    /// it covers the writes made on this connection only.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if a primary fails.
    pub async fn wait_for_replicas(
        &self,
        replicas: u32,
        timeout: Duration,
        mark: &str,
    ) -> Result<u64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        Ok(match self {
            Connection::Single(conn) => {
                let (reached,): (u64,) = redis::pipe()
                    .cmd("PUBLISH")
                    .arg(mark)
                    .arg("")
                    .ignore()
                    .add_command(wait)
                    .query_async(&mut conn.clone())
                    .await?;
                reached
            }
            Connection::Cluster(link) => link.wait_on_primaries(wait).await?,
        })
    }
}

/// A Redis client for `url` with the TLS files of `settings` when it is a `rediss://` URL.
///
/// # Errors
/// [`crate::Error::Store`] for a bad URL or bad certificates; [`crate::Error::TlsFile`] if a
/// TLS file of the settings cannot be read.
pub(crate) fn client(settings: &Settings, url: &str) -> Result<redis::Client> {
    let info = url
        .into_connection_info()?
        .set_tcp_settings(tcp_settings(settings.redis_ping_interval));
    if !url.starts_with("rediss://") {
        return Ok(redis::Client::open(info)?);
    }
    let files = TlsFiles::read(settings)?;
    Ok(redis::Client::build_with_tls(info, certificates(files))?)
}

/// The TCP options of every Redis socket, for the ping interval `ping` (see
/// [`Settings::redis_ping_interval`]): `TCP_NODELAY` (pipelines and small replies go out at
/// once, not after the peer's delayed ACK); keepalive probes after `ping` of silence, then
/// every `ping` (whole seconds, at least one: the kernel counts in seconds), so that an idle
/// connection to a vanished peer is dropped after a few probes; and, on Linux,
/// `TCP_USER_TIMEOUT` of [`UNACKED_INTERVALS`] × `ping`, so that one with commands in flight
/// is dropped too, rather than retransmitting for the kernel's 15 minutes. A Redis that is
/// merely slow or stopped still acknowledges what fits in its socket buffer (its kernel does),
/// so what trips it is a dead path or peer (or a stall so long that the buffer fills); the
/// connection is then made again and the caller's retry goes through it.
pub(crate) fn tcp_settings(ping: Duration) -> redis::io::tcp::TcpSettings {
    let probe = Duration::from_secs(ping.as_secs().max(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(probe)
        .with_interval(probe);
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(ping.saturating_mul(UNACKED_INTERVALS));
    tcp
}

/// The redis crate's form of the TLS files.
fn certificates(files: TlsFiles) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: files
            .identity
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: files.ca,
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(link) => Box::pin(async move {
                let mut replies = link.run(std::iter::once(cmd)).await?;
                Ok(replies.pop().unwrap_or(Value::Nil))
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(link) => Box::pin(async move {
                if pipeline.is_transaction() {
                    let (_, mut conn) = link.current();
                    return conn.req_packed_commands(pipeline, offset, count).await;
                }
                link.run(pipeline.cmd_iter()).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_redis_socket_has_nodelay_keepalive_and_a_limit_on_unacknowledged_data() {
        let ping = Duration::from_secs(5);
        let tcp = tcp_settings(ping);
        assert!(tcp.nodelay());
        assert!(tcp.keepalive().is_some());
        #[cfg(target_os = "linux")]
        assert_eq!(tcp.user_timeout(), Some(Duration::from_secs(15)));
        let client = client(
            &Settings {
                redis_ping_interval: ping,
                ..Settings::default()
            },
            "redis://127.0.0.1:6379/",
        )
        .unwrap();
        assert!(client.get_connection_info().tcp_settings().nodelay());
    }
}
