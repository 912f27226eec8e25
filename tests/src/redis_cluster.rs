//! A private Redis Cluster of one test: 3 primaries and 3 replicas on loopback, each an
//! append-only `redis-server` in cluster mode with its own folder and port (its cluster bus on
//! the port + 10000). The nodes start in parallel and are joined with `redis-cli --cluster
//! create`; the harness then fails primaries over on demand (`CLUSTER FAILOVER` on a replica,
//! or a killed primary). Every wait polls a condition with a deadline; nothing sleeps to
//! synchronise.

use std::time::Duration;

use rask::local::{self, Lifetime, RedisSpec, ServerProcess};
use tokio::time::Instant;

use crate::{TempDir, PATIENCE};

/// Primaries of the cluster; each has one replica.
const PRIMARIES: usize = 3;
/// Nodes of the cluster.
const NODES: usize = 2 * PRIMARIES;
/// Hash slots of a Redis Cluster, all of which must be served.
const SLOTS: &str = "cluster_slots_ok:16384";
/// How often a polled condition is checked again.
const POLL: Duration = Duration::from_millis(50);
/// How long one query of a polled condition may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `CLUSTER FAILOVER` may go unanswered before it is asked for again (Redis drops
/// a manual fail-over that has not completed within 5 s).
const FAILOVER_RETRY: Duration = Duration::from_secs(10);

/// One line of `CLUSTER NODES`: `id addr:port@cport[,hostname] flags master-id ping pong epoch
/// link-state slot...`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The id of its primary, for a replica.
    primary_id: Option<String>,
    /// Whether it serves slots.
    has_slots: bool,
}

impl NodeLine {
    /// Parses one line; `None` for a line without an address (say, a node in handshake).
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let address = fields.get(1)?.split(['@', ',']).next()?;
        Some(NodeLine {
            id: (*fields.first()?).to_owned(),
            port: address.rsplit_once(':')?.1.parse().ok()?,
            flags: fields.get(2)?.split(',').map(str::to_owned).collect(),
            primary_id: fields
                .get(3)
                .filter(|id| **id != "-")
                .map(|id| (*id).to_owned()),
            has_slots: fields.len() > 8,
        })
    }

    fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    fn is_replica(&self) -> bool {
        self.flags.iter().any(|f| f == "slave")
    }

    /// Failed or suspected (`fail`, `fail?`), or not yet or no longer reachable.
    fn is_troubled(&self) -> bool {
        self.flags
            .iter()
            .any(|f| f.starts_with("fail") || f == "handshake" || f == "noaddr")
    }
}

/// A Redis Cluster of 3 primaries and 3 replicas of one test (append-only nodes on loopback),
/// stopped on drop or when the test process exits.
pub struct PrivateRedisCluster {
    /// The nodes, in the order they were created (the first three start as primaries); a node
    /// killed by [`PrivateRedisCluster::kill_primary`] stays here, no longer running.
    pub nodes: Vec<ServerProcess>,
    /// Where and how each node runs (same order as `nodes`).
    pub specs: Vec<RedisSpec>,
    _dir: TempDir,
}

impl PrivateRedisCluster {
    /// Starts six nodes in parallel and makes them a cluster of 3 primaries with one replica
    /// each; returns once every node sees all slots served and the same 3 primaries and 3
    /// replicas without failure flags, and every replica's link to its primary is up. Panics
    /// with the servers' or `redis-cli`'s error.
    pub async fn start(name: &str) -> Self {
        let dir = TempDir::new(name);
        let specs: Vec<RedisSpec> = (0..NODES)
            .map(|i| RedisSpec {
                dir: dir.path.join(format!("redis-{i}")),
                port: free_cluster_port(),
                append_only: true,
                fsync: Default::default(),
                cluster: true,
            })
            .collect();
        let nodes: Vec<ServerProcess> = futures::future::join_all(
            specs
                .iter()
                .map(|spec| ServerProcess::start_redis(spec, Lifetime::TiedToCaller)),
        )
        .await
        .into_iter()
        .map(|node| node.expect("starting a Redis Cluster node"))
        .collect();
        let mut create = tokio::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for spec in &specs {
            create.arg(format!("127.0.0.1:{}", spec.port));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .kill_on_drop(true);
        let output = tokio::time::timeout(PATIENCE, create.output())
            .await
            .unwrap_or_else(|_| panic!("redis-cli --cluster create ends within {PATIENCE:?}"))
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = PrivateRedisCluster {
            nodes,
            specs,
            _dir: dir,
        };
        cluster.await_healthy().await;
        cluster
    }

    /// `redis://127.0.0.1:PORT/` of every running node: the seed nodes of
    /// `redis_cluster_urls`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(ServerProcess::url)
            .collect()
    }

    /// The ports of the running nodes.
    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(ServerProcess::port)
            .collect()
    }

    /// The ports of the primaries that serve slots and are not failed, in ascending order, as
    /// the first running node sees them.
    pub async fn primaries(&self) -> Vec<u16> {
        let port = *self.running_ports().first().expect("a running node");
        let mut primaries: Vec<u16> = node_table(port)
            .await
            .iter()
            .filter(|n| n.is_primary() && n.has_slots && !n.is_troubled())
            .map(|n| n.port)
            .collect();
        primaries.sort_unstable();
        primaries
    }

    /// The port of the (one, not failed) replica of the primary at `primary_port`, as that
    /// primary sees it; panics if it has none.
    pub async fn replica_of(&self, primary_port: u16) -> u16 {
        let table = node_table(primary_port).await;
        let primary = table
            .iter()
            .find(|n| n.port == primary_port)
            .unwrap_or_else(|| panic!("node {primary_port} is in its own table: {table:?}"));
        assert!(
            primary.is_primary(),
            "node {primary_port} is a primary: {table:?}"
        );
        table
            .iter()
            .find(|n| {
                n.is_replica() && n.primary_id.as_ref() == Some(&primary.id) && !n.is_troubled()
            })
            .unwrap_or_else(|| panic!("primary {primary_port} has a replica: {table:?}"))
            .port
    }

    /// Fails the primary at `primary_port` over to its replica with `CLUSTER FAILOVER` on the
    /// replica (which first catches up with the primary, so no acknowledged write is lost);
    /// returns once the replica says it is a primary, the old primary says it is a replica,
    /// and the cluster is healthy again (as after [`PrivateRedisCluster::start`]). Returns the
    /// new primary's port.
    pub async fn fail_over(&self, primary_port: u16) -> u16 {
        let replica = self.replica_of(primary_port).await;
        let reply: String = query(replica, redis::cmd("CLUSTER").arg("FAILOVER")).await;
        assert_eq!(reply, "OK", "CLUSTER FAILOVER on node {replica}");
        let deadline = Instant::now() + PATIENCE;
        let mut asked = Instant::now();
        loop {
            let (new_role, old_role) = tokio::join!(role(replica), role(primary_port));
            if new_role.as_deref() == Ok("master") && old_role.as_deref() == Ok("slave") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {replica} takes over from {primary_port} within {PATIENCE:?}: roles \
                 {new_role:?} and {old_role:?}"
            );
            if new_role.as_deref() == Ok("slave") && asked.elapsed() >= FAILOVER_RETRY {
                // The manual fail-over timed out; ask again (an answer that it is already a
                // primary means it has just taken over).
                let again: anyhow::Result<String> =
                    try_query(replica, redis::cmd("CLUSTER").arg("FAILOVER")).await;
                eprintln!("CLUSTER FAILOVER on node {replica} again: {again:?}");
                asked = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
        self.await_healthy().await;
        replica
    }

    /// Kills the primary at `primary_port` with SIGKILL, as in a crash, and returns once its
    /// replica was promoted by the cluster (after the 2 s node timeout) and the surviving
    /// nodes are healthy (all slots served, 3 primaries, the other replicas in sync). Returns
    /// the new primary's port. The killed node stays in [`PrivateRedisCluster::nodes`].
    pub async fn kill_primary(&mut self, primary_port: u16) -> u16 {
        let replica = self.replica_of(primary_port).await;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == primary_port && n.is_running())
            .unwrap_or_else(|| panic!("node {primary_port} is a running node of this cluster"));
        node.kill().await.expect("killing the primary");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let new_role = role(replica).await;
            if new_role.as_deref() == Ok("master") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {replica} is promoted within {PATIENCE:?} after {primary_port} was \
                 killed: role {new_role:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        self.await_healthy().await;
        replica
    }

    /// Waits until every running node says `cluster_state:ok` with all 16384 slots served,
    /// lists the running nodes as 3 primaries and the rest replicas, none with failure flags,
    /// and, for a replica, has its link to its primary up. Panics, with what was last seen
    /// wrong, after [`PATIENCE`].
    async fn await_healthy(&self) {
        let ports = self.running_ports();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let checks =
                futures::future::join_all(ports.iter().map(|port| node_health(*port, &ports)));
            let problems: Vec<String> = checks.await.into_iter().flatten().collect();
            let Some(problem) = problems.first() else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster is healthy within {PATIENCE:?}: {problem}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What is wrong with the node at `port` in a cluster whose running nodes are `running`, or
/// `None` if nothing is (see [`PrivateRedisCluster::await_healthy`]).
async fn node_health(port: u16, running: &[u16]) -> Option<String> {
    let info = match try_query::<String>(port, redis::cmd("CLUSTER").arg("INFO")).await {
        Ok(info) => info,
        Err(e) => return Some(format!("node {port}: CLUSTER INFO failed: {e}")),
    };
    if !info.contains("cluster_state:ok") || !info.contains(SLOTS) {
        return Some(format!("node {port}: CLUSTER INFO says\n{info}"));
    }
    let table = match try_query::<String>(port, redis::cmd("CLUSTER").arg("NODES")).await {
        Ok(table) => table,
        Err(e) => return Some(format!("node {port}: CLUSTER NODES failed: {e}")),
    };
    let lines: Vec<NodeLine> = table
        .lines()
        .filter_map(NodeLine::parse)
        .filter(|n| running.contains(&n.port))
        .collect();
    let primaries = lines.iter().filter(|n| n.is_primary()).count();
    let replicas = lines.iter().filter(|n| n.is_replica()).count();
    let troubled = lines.iter().any(NodeLine::is_troubled);
    if lines.len() != running.len()
        || primaries != PRIMARIES
        || replicas != running.len() - PRIMARIES
        || troubled
    {
        return Some(format!(
            "node {port}: CLUSTER NODES lists {primaries} primaries and {replicas} replicas \
             of the {} running nodes (want {PRIMARIES} and {}, none failed):\n{table}\n\
             (CLUSTER INFO:\n{info})",
            running.len(),
            running.len() - PRIMARIES
        ));
    }
    let replication = match try_query::<String>(port, redis::cmd("INFO").arg("replication")).await {
        Ok(replication) => replication,
        Err(e) => return Some(format!("node {port}: INFO replication failed: {e}")),
    };
    if !replication.contains("role:master") && !replication.contains("master_link_status:up") {
        return Some(format!(
            "node {port}: a replica whose link is not up:\n{replication}\n(CLUSTER INFO:\n{info})"
        ));
    }
    None
}

/// The node table as the node at `port` sees it.
async fn node_table(port: u16) -> Vec<NodeLine> {
    let table: String = query(port, redis::cmd("CLUSTER").arg("NODES")).await;
    table.lines().filter_map(NodeLine::parse).collect()
}

/// The role the node at `port` reports (`role:` of `INFO replication`: `master` or `slave`).
async fn role(port: u16) -> Result<String, String> {
    let replication = try_query::<String>(port, redis::cmd("INFO").arg("replication"))
        .await
        .map_err(|e| e.to_string())?;
    replication
        .lines()
        .find_map(|line| line.trim().strip_prefix("role:"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no role in INFO replication: {replication}"))
}

/// A free port whose cluster bus port (the port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = local::free_port().expect("a free port");
        let bus_free = port
            .checked_add(10_000)
            .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if bus_free {
            return port;
        }
    }
}

/// Runs `cmd` on the node at `port` over a plain connection (no cluster redirection), within
/// a few seconds.
async fn try_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let reply = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut connection).await
    };
    Ok(tokio::time::timeout(PROBE_TIMEOUT, reply)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {PROBE_TIMEOUT:?}"))??)
}

/// Like [`try_query`], panicking if it fails.
async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> T {
    try_query(port, cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd:?} on node {port}: {e}"))
}
