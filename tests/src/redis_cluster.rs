//! A private Redis Cluster of 3 primaries and 3 replicas on loopback, for tests of rask on a
//! Redis Cluster: started in parallel, joined with `redis-cli --cluster create`, and failed
//! over on demand (`CLUSTER FAILOVER` on a replica, or a killed primary). Every wait polls a
//! condition with a deadline.

use std::time::Duration;

use rask::local::{self, Lifetime, RedisSpec, ServerProcess};
use tokio::time::Instant;

use crate::{TempDir, PATIENCE};

/// Nodes of the cluster: 3 primaries, each with one replica.
const NODES: usize = 6;
/// How often a polled condition is checked again.
const POLL: Duration = Duration::from_millis(50);

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    /// The id of its primary, for a replica.
    primary_id: Option<String>,
}

/// A Redis Cluster of one test (append-only nodes), stopped on drop.
pub struct PrivateRedisCluster {
    /// The running nodes, in the order they were created (the first three start as primaries).
    pub nodes: Vec<ServerProcess>,
    /// Nodes killed by [`PrivateRedisCluster::kill_primary`].
    killed: Vec<ServerProcess>,
    _dir: TempDir,
}

impl PrivateRedisCluster {
    /// Starts six nodes and makes them a cluster of 3 primaries and 3 replicas; returns once
    /// every node sees all slots served and every replica is in sync. Panics with the error.
    pub async fn start(name: &str) -> Self {
        let dir = TempDir::new(name);
        let specs: Vec<RedisSpec> = (0..NODES)
            .map(|i| RedisSpec {
                dir: dir.path.join(format!("redis-{i}")),
                port: free_cluster_port(),
                append_only: true,
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
        create.arg("--cluster").arg("create");
        for spec in &specs {
            create.arg(format!("127.0.0.1:{}", spec.port));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .kill_on_drop(true);
        let output = tokio::time::timeout(PATIENCE, create.output())
            .await
            .expect("redis-cli --cluster create ends")
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = PrivateRedisCluster {
            nodes,
            killed: Vec::new(),
            _dir: dir,
        };
        cluster.await_healthy(&cluster.ports()).await;
        cluster
    }

    /// Every running node's URL (the seed nodes of `redis_cluster_urls`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ServerProcess::url).collect()
    }

    /// The ports of the nodes still running.
    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(ServerProcess::port).collect()
    }

    /// The ports of the primaries that serve slots, as the first running node sees them.
    pub async fn primaries(&self) -> Vec<u16> {
        let table = self.node_table(self.ports()[0]).await;
        table
            .iter()
            .filter(|n| n.primary && !n.failed)
            .map(|n| n.port)
            .collect()
    }

    /// The port of the replica of the primary at `primary_port`.
    pub async fn replica_of(&self, primary_port: u16) -> u16 {
        let table = self.node_table(primary_port).await;
        let id = &table
            .iter()
            .find(|n| n.port == primary_port)
            .expect("the primary is in its own table")
            .id;
        table
            .iter()
            .find(|n| n.primary_id.as_ref() == Some(id) && !n.failed)
            .unwrap_or_else(|| panic!("primary {primary_port} has a replica: {table:?}"))
            .port
    }

    /// Fails the primary at `primary_port` over to its replica with `CLUSTER FAILOVER` (the
    /// replica catches up, then takes over; no write is lost); returns once the replica is a
    /// primary, the old one its replica, and the cluster healthy. Returns the new primary.
    pub async fn fail_over(&self, primary_port: u16) -> u16 {
        let replica = self.replica_of(primary_port).await;
        let reply: String = query(replica, redis::cmd("CLUSTER").arg("FAILOVER")).await;
        assert_eq!(reply, "OK", "CLUSTER FAILOVER on {replica}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let table = self.node_table(primary_port).await;
            let role = |port| table.iter().find(|n| n.port == port).map(|n| n.primary);
            if role(replica) == Some(true) && role(primary_port) == Some(false) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fail-over to {replica}: {table:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        self.await_healthy(&self.ports()).await;
        replica
    }

    /// Kills the primary at `primary_port` (as in a crash) and returns once its replica was
    /// promoted and the survivors serve every slot; returns the new primary.
    pub async fn kill_primary(&mut self, primary_port: u16) -> u16 {
        let replica = self.replica_of(primary_port).await;
        let index = self
            .nodes
            .iter()
            .position(|n| n.port() == primary_port)
            .expect("a running node of this cluster");
        let mut node = self.nodes.remove(index);
        node.kill().await.expect("killing the primary");
        self.killed.push(node);
        let survivors = self.ports();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let table = self.node_table(replica).await;
            if table.iter().any(|n| n.port == replica && n.primary) {
                break;
            }
            assert!(Instant::now() < deadline, "{replica} promoted: {table:?}");
            tokio::time::sleep(POLL).await;
        }
        self.await_healthy(&survivors).await;
        replica
    }

    /// The node table as the node at `port` sees it.
    async fn node_table(&self, port: u16) -> Vec<NodeLine> {
        let table: String = query(port, redis::cmd("CLUSTER").arg("NODES")).await;
        table
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let address = fields.get(1)?.split(['@', ',']).next()?;
                let flags: Vec<&str> = fields.get(2)?.split(',').collect();
                Some(NodeLine {
                    id: fields[0].to_owned(),
                    port: address.rsplit_once(':')?.1.parse().ok()?,
                    primary: flags.contains(&"master"),
                    failed: flags.iter().any(|f| f.starts_with("fail")),
                    primary_id: fields
                        .get(3)
                        .filter(|id| **id != "-")
                        .map(|id| (*id).to_owned()),
                })
            })
            .collect()
    }

    /// Waits until every node of `ports` says `cluster_state:ok` with all slots served, and
    /// every replica among them has its link to its primary up.
    async fn await_healthy(&self, ports: &[u16]) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut last = String::new();
            let mut healthy = true;
            for port in ports {
                let info: String = query(*port, redis::cmd("CLUSTER").arg("INFO")).await;
                let replication: String = query(*port, redis::cmd("INFO").arg("replication")).await;
                let ok = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"));
                if !ok {
                    healthy = false;
                    last = format!("node {port}: {info}\n{replication}");
                    break;
                }
            }
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster is healthy: {last}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
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

/// Runs `cmd` on the node at `port` (a plain connection: no redirection).
async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("a URL");
    let mut conn = tokio::time::timeout(PATIENCE, client.get_multiplexed_async_connection())
        .await
        .expect("connecting in time")
        .unwrap_or_else(|e| panic!("connecting to node {port}: {e}"));
    cmd.query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{cmd:?} on node {port}: {e}"))
}
