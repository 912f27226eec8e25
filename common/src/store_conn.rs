//! Connections to the store: a single Redis or a Redis Cluster, with the settings' TLS files,
//! behind one [`Connection`] that every module of the crate sends commands and pipelines through.
//!
//! A Redis Cluster refuses a pipeline whose commands live in different hash slots, and
//! rask's pipelines (a batch of results, a gather's `MGET`s) span many. On a cluster, [`Connection`]
//! therefore sends a pipeline's commands as concurrent single commands, each routed to the node
//! of its slot (multi-key `MGET` and `DEL` are split by slot by the redis crate), keeping the
//! replies in order; a command without a key (`SCRIPT LOAD`, sent to every primary) waits for
//! the commands before it and holds back those after it, so that a script is loaded before it
//! is called. Every script keeps its keys in one slot (see [`crate::keys::Keys::clustered`]).

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::Result;
use crate::settings::Settings;
use crate::tls::TlsFiles;

/// How long a command or pipeline may take before it fails: long enough for a pipeline of
/// hundreds of MiB of results on a busy machine (the redis crate's default is 500 ms).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most commands of one pipeline in flight at once on a cluster.
const CLUSTER_IN_FLIGHT: usize = 512;

/// A cheap-to-clone connection to the store that reconnects by itself: what [`crate::Store`]
/// sends every command through, and what [`crate::Store::connection`] lends for commands of
/// one's own (e.g. `redis::cmd("PTTL").arg(key).query_async(&mut connection)`).
#[derive(Clone)]
pub enum Connection {
    /// One Redis (`redis_url`).
    Single(ConnectionManager),
    /// A Redis Cluster (`redis_cluster_urls`): follows slot moves and fail-overs.
    Cluster(ClusterConnection),
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
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let conn = client(settings, &settings.redis_url)?
                .get_connection_manager_with_config(config)
                .await?;
            return Ok(Connection::Single(conn));
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(
            settings.redis_cluster_urls.iter().map(String::as_str),
        )
        .response_timeout(RESPONSE_TIMEOUT);
        if settings
            .redis_cluster_urls
            .iter()
            .any(|url| url.starts_with("rediss://"))
        {
            builder = builder
                .tls(redis::TlsMode::Secure)
                .certs(certificates(&TlsFiles::read(settings)?));
        }
        let conn = builder.build()?.get_async_connection().await?;
        Ok(Connection::Cluster(conn))
    }
}

/// A node of the store, for commands that must run on each (`SCAN`).
pub enum Node {
    /// The single Redis.
    Single,
    /// The cluster node at this host and port.
    Cluster(String, u16),
}

impl Connection {
    /// The primaries of the store: the single Redis, or each primary of the cluster (from
    /// `CLUSTER NODES`, skipping nodes flagged as failed).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if the store cannot be asked.
    pub async fn primaries(&self) -> Result<Vec<Node>> {
        let Connection::Cluster(conn) = self else {
            return Ok(vec![Node::Single]);
        };
        let table: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn.clone())
            .await?;
        Ok(primaries_in(&table))
    }

    /// Runs `cmd` on `node`.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if the node fails or the reply is not a `T`.
    pub async fn query_on<T: redis::FromRedisValue>(&self, node: &Node, cmd: Cmd) -> Result<T> {
        let value = match (self, node) {
            (Connection::Cluster(conn), Node::Cluster(host, port)) => {
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                conn.clone().route_command(cmd, to).await?
            }
            _ => cmd.query_async(&mut self.clone()).await?,
        };
        Ok(redis::from_redis_value(value).map_err(redis::RedisError::from)?)
    }
}

/// The primaries listed in a `CLUSTER NODES` reply: lines of `id host:port@bus[,name] flags …`.
fn primaries_in(table: &str) -> Vec<Node> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let (host, port) = address.split(['@', ',']).next()?.rsplit_once(':')?;
            Some(Node::Cluster(host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// A Redis client for `url` with the TLS files of `settings` when it is a `rediss://` URL.
///
/// # Errors
/// [`crate::Error::Store`] for a bad URL or bad certificates; [`crate::Error::TlsFile`] if a
/// TLS file of the settings cannot be read.
pub(crate) fn client(settings: &Settings, url: &str) -> Result<redis::Client> {
    if !url.starts_with("rediss://") {
        return Ok(redis::Client::open(url)?);
    }
    let files = TlsFiles::read(settings)?;
    Ok(redis::Client::build_with_tls(url, certificates(&files))?)
}

/// The redis crate's form of the TLS files.
fn certificates(files: &TlsFiles) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: files.identity.clone().map(|(client_cert, client_key)| {
            redis::ClientTlsConfig {
                client_cert,
                client_key,
            }
        }),
        root_cert: files.ca.clone(),
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
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
            Connection::Cluster(conn) if !pipeline.is_transaction() => {
                Box::pin(split_by_slot(conn.clone(), pipeline))
            }
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Runs the commands of `pipeline` on a cluster as single commands (see the module docs),
/// returning every reply in order.
async fn split_by_slot(
    conn: ClusterConnection,
    pipeline: &Pipeline,
) -> redis::RedisResult<Vec<Value>> {
    let mut replies = Vec::with_capacity(pipeline.len());
    // Owned commands: a future borrowing its command is not `Send` for every lifetime.
    let mut run: Vec<Cmd> = Vec::new();
    for cmd in pipeline.cmd_iter() {
        if is_keyed(cmd) {
            run.push(cmd.clone());
            continue;
        }
        replies.extend(concurrently(&conn, std::mem::take(&mut run)).await?);
        replies.push(conn.clone().req_packed_command(cmd).await?);
    }
    replies.extend(concurrently(&conn, run).await?);
    Ok(replies)
}

/// The replies of `cmds`, sent at once (at most [`CLUSTER_IN_FLIGHT`] in flight), in order.
async fn concurrently(conn: &ClusterConnection, cmds: Vec<Cmd>) -> redis::RedisResult<Vec<Value>> {
    let requests = cmds.into_iter().map(|cmd| {
        let mut conn = conn.clone();
        async move { conn.req_packed_command(&cmd).await }
    });
    futures::stream::iter(requests)
        .buffered(CLUSTER_IN_FLIGHT)
        .try_collect()
        .await
}

/// Whether `cmd` is routed by its keys (one slot, or a multi-key command the redis crate
/// splits by slot), and so may run concurrently with its neighbours: every command rask
/// pipelines but `SCRIPT …`, `FUNCTION …` and scripts called without keys.
fn is_keyed(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        _ => b"".as_slice(),
    });
    let name = args.next().unwrap_or_default();
    if name.eq_ignore_ascii_case(b"SCRIPT") || name.eq_ignore_ascii_case(b"FUNCTION") {
        return false;
    }
    let script = [b"EVAL".as_slice(), b"EVALSHA", b"FCALL"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s));
    !script || args.nth(1).is_some_and(|numkeys| numkeys != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_come_from_the_node_table() {
        let table = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
e7d1 127.0.0.1:30001@40001,node-a myself,master - 0 0 1 connected 0-5460
";
        let found: Vec<(String, u16)> = primaries_in(table)
            .into_iter()
            .filter_map(|node| match node {
                Node::Cluster(host, port) => Some((host, port)),
                Node::Single => None,
            })
            .collect();
        assert_eq!(
            found,
            [
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30001)
            ]
        );
    }

    #[test]
    fn keyless_commands_hold_back_a_pipeline() {
        assert!(is_keyed(redis::cmd("SET").arg("k").arg("v")));
        assert!(is_keyed(redis::cmd("EVALSHA").arg("abc").arg(1).arg("k")));
        assert!(!is_keyed(redis::cmd("EVALSHA").arg("abc").arg(0).arg("x")));
        assert!(!is_keyed(redis::cmd("SCRIPT").arg("LOAD").arg("return 1")));
    }
}
