//! Commands on a Redis Cluster: split by slot, and a connection healed after a fail-over.
//!
//! A Redis Cluster refuses a pipeline whose commands live in different hash slots, and rask's
//! pipelines (a batch of results, a gather's `MGET`s) span many. [`ClusterLink`] therefore sends
//! a pipeline's commands as concurrent commands of one slot each (a multi-key `MGET`, `DEL` or
//! `EXISTS` is split by the slots of its keys and its reply put back together), each routed to
//! the node of its slot, keeping the replies in order. Commands of one slot keep their order: a
//! second command for a slot waits until the first is answered. A command without a key
//! (`SCRIPT LOAD`, sent to every primary) waits for the commands before it and holds back those
//! after it, so that a script is loaded before it is called. Every script keeps its keys in
//! one slot (see [`crate::keys::Keys::clustered`]).
//!
//! The redis crate's cluster connection follows `MOVED` redirections and refreshes its slot
//! table, but after a primary dies a connection in heavy use can stall until every request
//! times out. So when a request fails for want of a connection (I/O error, timeout, cluster
//! down), the link is replaced by a fresh connection, at most once per [`HEAL_PAUSE`]; the
//! failed request's caller retries, as it does on any store error.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    AggregateOp, MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo, Slot,
};
use redis::{Cmd, RedisResult, Value};
use tokio::time::Instant;

/// Most commands of one pipeline in flight at once.
const CLUSTER_IN_FLIGHT: usize = 512;
/// The least time between two replacements of the connection.
const HEAL_PAUSE: Duration = Duration::from_secs(1);
/// How long making a fresh connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A node of the store, for commands that must run on each (`SCAN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// The single Redis.
    Single,
    /// The cluster node at this host and port.
    Cluster(String, u16),
}

/// A cheap-to-clone connection to a Redis Cluster that is replaced when it fails (see the
/// module docs).
#[derive(Clone)]
pub struct ClusterLink {
    inner: Arc<Inner>,
}

struct Inner {
    client: ClusterClient,
    /// The connection in use, with its generation (counting replacements).
    current: RwLock<(u64, ClusterConnection)>,
    /// Held while replacing; with when the last replacement was made.
    healing: tokio::sync::Mutex<Option<Instant>>,
}

impl ClusterLink {
    /// Connects with `client`.
    ///
    /// # Errors
    /// The redis crate's error if no node answers.
    pub(super) async fn connect(client: ClusterClient) -> RedisResult<Self> {
        let conn = client.get_async_connection().await?;
        Ok(ClusterLink {
            inner: Arc::new(Inner {
                client,
                current: RwLock::new((0, conn)),
                healing: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The connection in use and its generation.
    pub(super) fn current(&self) -> (u64, ClusterConnection) {
        let current = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
        (current.0, current.1.clone())
    }

    /// Runs `cmds` split by slot (see the module docs), replacing the connection if they fail
    /// for want of one.
    pub(super) async fn run<'a>(
        &self,
        cmds: impl Iterator<Item = &'a Cmd>,
    ) -> RedisResult<Vec<Value>> {
        let (generation, conn) = self.current();
        let replies = split_by_slot(conn, cmds).await;
        self.heal_after(generation, replies).await
    }

    /// Runs `cmd` on every primary, returning the smallest integer answered (for `WAIT`).
    pub(super) async fn wait_on_primaries(&self, cmd: Cmd) -> RedisResult<u64> {
        let (generation, mut conn) = self.current();
        let every_primary = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::Aggregate(AggregateOp::Min)),
        ));
        let value = self
            .heal_after(generation, conn.route_command(cmd, every_primary).await)
            .await?;
        Ok(redis::from_redis_value(value)?)
    }

    /// The primaries of the cluster (from `CLUSTER NODES`, skipping nodes flagged as failed).
    pub(super) async fn primaries(&self) -> RedisResult<Vec<Node>> {
        let (generation, mut conn) = self.current();
        let table = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await;
        let table: String = self.heal_after(generation, table).await?;
        Ok(primaries_in(&table))
    }

    /// Runs `cmd` on `node`.
    pub(super) async fn query_on(&self, node: &Node, cmd: Cmd) -> RedisResult<Value> {
        let (generation, mut conn) = self.current();
        let to = match node {
            Node::Cluster(host, port) => SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            },
            Node::Single => SingleNodeRoutingInfo::Random,
        };
        let reply = conn.route_command(cmd, RoutingInfo::SingleNode(to)).await;
        self.heal_after(generation, reply).await
    }

    /// Passes `result` on, first replacing the connection of `generation` if it failed for
    /// want of a connection (at most once per [`HEAL_PAUSE`]; a failed replacement keeps the
    /// old one).
    async fn heal_after<T>(&self, generation: u64, result: RedisResult<T>) -> RedisResult<T> {
        let Err(error) = &result else {
            return result;
        };
        let lost = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || matches!(
                error.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::ClusterDown | redis::ServerErrorKind::TryAgain
                )
            );
        if !lost {
            return result;
        }
        let mut last = self.inner.healing.lock().await;
        if self.current().0 != generation || last.is_some_and(|at| at.elapsed() < HEAL_PAUSE) {
            return result;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(CONNECT_TIMEOUT, self.inner.client.get_async_connection()).await
        {
            Ok(Ok(conn)) => {
                let mut current = self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                *current = (generation + 1, conn);
                tracing::warn!(%error, "Redis Cluster request failed; connected afresh");
            }
            Ok(Err(e)) => {
                tracing::warn!(%error, reconnect = %e, "Redis Cluster request failed and reconnecting failed")
            }
            Err(_) => {
                tracing::warn!(%error, "Redis Cluster request failed and reconnecting timed out")
            }
        }
        result
    }
}

/// Runs `cmds` as commands of one slot each (see the module docs), returning every reply in
/// order.
async fn split_by_slot<'a>(
    conn: ClusterConnection,
    cmds: impl Iterator<Item = &'a Cmd>,
) -> redis::RedisResult<Vec<Value>> {
    let mut replies = Vec::new();
    let mut run: Vec<Split> = Vec::new();
    for cmd in cmds {
        if is_keyed(cmd) {
            run.push(Split::of(cmd));
            continue;
        }
        replies.extend(concurrently(&conn, std::mem::take(&mut run)).await?);
        replies.push(conn.clone().req_packed_command(cmd).await?);
    }
    replies.extend(concurrently(&conn, run).await?);
    Ok(replies)
}

/// A command as commands of one slot each, and how their replies make its reply.
struct Split {
    /// The single-slot commands (owned: a future borrowing its command is not `Send` for
    /// every lifetime).
    parts: Vec<Cmd>,
    merge: Merge,
}

/// How the replies of a [`Split`]'s parts make the command's reply.
enum Merge {
    /// One part: its reply.
    Same,
    /// `MGET`: each part's values go back to these positions of `len`.
    Positions {
        of_part: Vec<Vec<usize>>,
        len: usize,
    },
    /// `DEL`, `EXISTS`: the sum of the parts' counts.
    Sum,
}

impl Split {
    /// `cmd` split by the slots of its keys when it is a multi-key `MGET`, `DEL` or `EXISTS`
    /// (the redis crate's own splitting does not recover from a fail-over), else as it is.
    fn of(cmd: &Cmd) -> Self {
        let args = args(cmd);
        let multi = |name: &[u8]| args[0].eq_ignore_ascii_case(name);
        if args.len() <= 2 || !(multi(b"MGET") || multi(b"DEL") || multi(b"EXISTS")) {
            return Split {
                parts: vec![cmd.clone()],
                merge: Merge::Same,
            };
        }
        let mut slots: HashMap<Slot, usize> = HashMap::new();
        let mut parts: Vec<Cmd> = Vec::new();
        let mut of_part: Vec<Vec<usize>> = Vec::new();
        for (position, key) in args[1..].iter().enumerate() {
            let part = *slots.entry(Slot::for_key(key)).or_insert_with(|| {
                parts.push(redis::cmd(std::str::from_utf8(args[0]).unwrap_or("MGET")));
                of_part.push(Vec::new());
                parts.len() - 1
            });
            parts[part].arg(*key);
            of_part[part].push(position);
        }
        let merge = if multi(b"MGET") {
            Merge::Positions {
                of_part,
                len: args.len() - 1,
            }
        } else {
            Merge::Sum
        };
        Split { parts, merge }
    }

    /// The command's reply from its parts' replies, in order.
    fn merge(&self, replies: Vec<Value>) -> redis::RedisResult<Value> {
        match &self.merge {
            Merge::Same => Ok(replies.into_iter().next().unwrap_or(Value::Nil)),
            Merge::Sum => {
                let mut total = 0;
                for reply in replies {
                    total +=
                        redis::from_redis_value::<i64>(reply).map_err(redis::RedisError::from)?;
                }
                Ok(Value::Int(total))
            }
            Merge::Positions { of_part, len } => {
                let mut values = vec![Value::Nil; *len];
                for (reply, positions) in replies.into_iter().zip(of_part) {
                    let Value::Array(items) = reply else {
                        return Err((
                            redis::ErrorKind::UnexpectedReturnType,
                            "MGET did not answer an array",
                        )
                            .into());
                    };
                    for (item, position) in items.into_iter().zip(positions) {
                        values[*position] = item;
                    }
                }
                Ok(Value::Array(values))
            }
        }
    }
}

/// The replies of `splits`, their parts sent at once (in waves, see below), merged, in order.
async fn concurrently(
    conn: &ClusterConnection,
    mut splits: Vec<Split>,
) -> redis::RedisResult<Vec<Value>> {
    let mut parts: Vec<Cmd> = Vec::new();
    let mut counts = Vec::with_capacity(splits.len());
    for split in &mut splits {
        counts.push(split.parts.len());
        parts.append(&mut split.parts);
    }
    // Commands of one slot keep their order (an `INCR` before the `PEXPIRE` of the same key):
    // a command whose slot already has one in flight waits for the next wave.
    let mut replies: Vec<Value> = Vec::with_capacity(parts.len());
    let mut wave: Vec<Cmd> = Vec::new();
    let mut slots = std::collections::HashSet::new();
    for cmd in parts {
        if !slots.insert(slot_of(&cmd)) {
            replies.extend(in_flight(conn, std::mem::take(&mut wave)).await?);
            slots.clear();
            slots.insert(slot_of(&cmd));
        }
        wave.push(cmd);
    }
    replies.extend(in_flight(conn, wave).await?);
    let mut merged = Vec::with_capacity(splits.len());
    let mut rest = replies.drain(..);
    for (split, count) in splits.iter().zip(counts) {
        let parts: Vec<Value> = rest.by_ref().take(count).collect();
        merged.push(split.merge(parts)?);
    }
    Ok(merged)
}

/// The replies of `cmds`, sent at once (at most [`CLUSTER_IN_FLIGHT`] in flight), in order.
async fn in_flight(conn: &ClusterConnection, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
    let requests = cmds.into_iter().map(|cmd| {
        let mut conn = conn.clone();
        async move { conn.req_packed_command(&cmd).await }
    });
    futures::stream::iter(requests)
        .buffered(CLUSTER_IN_FLIGHT)
        .try_collect()
        .await
}

/// The arguments of `cmd`, its name first.
fn args(cmd: &Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => bytes,
            _ => b"".as_slice(),
        })
        .collect()
}

/// The first key of `cmd`: the fourth argument of a script call with keys, the second of any
/// other command but `SCRIPT …` and `FUNCTION …`, which have none.
fn first_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let args = args(cmd);
    let name = *args.first()?;
    let is = |other: &[u8]| name.eq_ignore_ascii_case(other);
    if is(b"SCRIPT") || is(b"FUNCTION") {
        return None;
    }
    let key = if is(b"EVAL") || is(b"EVALSHA") || is(b"FCALL") {
        (args.get(2) != Some(&b"0".as_slice()))
            .then(|| args.get(3))
            .flatten()
    } else {
        args.get(1)
    };
    key.map(|key| key.to_vec())
}

/// The slot of a single-slot command: that of its first key.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    first_key(cmd).map(Slot::for_key)
}

/// Whether `cmd` is routed by its keys, and so may run concurrently with its neighbours:
/// every command rask pipelines but `SCRIPT …`, `FUNCTION …` and scripts called without keys.
fn is_keyed(cmd: &Cmd) -> bool {
    first_key(cmd).is_some()
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
    fn multi_key_commands_split_by_slot_and_merge_in_order() {
        let mut mget = redis::cmd("MGET");
        mget.arg("p:result:{a}")
            .arg("p:result:{b}")
            .arg("p:task:{a}");
        let split = Split::of(&mget);
        assert_eq!(split.parts.len(), 2, "{{a}} and {{b}} are two slots");
        let reply = |items: Vec<&str>| {
            Value::Array(
                items
                    .into_iter()
                    .map(|i| Value::BulkString(i.into()))
                    .collect(),
            )
        };
        let merged = split
            .merge(vec![reply(vec!["ra", "ta"]), reply(vec!["rb"])])
            .unwrap();
        assert_eq!(merged, reply(vec!["ra", "rb", "ta"]));

        let mut del = redis::cmd("DEL");
        del.arg("p:result:{a}").arg("p:result:{b}");
        let split = Split::of(&del);
        assert_eq!(split.parts.len(), 2);
        assert_eq!(
            split.merge(vec![Value::Int(1), Value::Int(0)]).unwrap(),
            Value::Int(1)
        );
        assert_eq!(Split::of(redis::cmd("GET").arg("k")).parts.len(), 1);
    }

    #[test]
    fn commands_are_placed_by_their_first_key() {
        assert_eq!(
            slot_of(redis::cmd("INCR").arg("p:deliveries:{k}")),
            Some(Slot::for_key("k"))
        );
        assert_eq!(
            slot_of(
                redis::cmd("EVALSHA")
                    .arg("abc")
                    .arg(2)
                    .arg("p:task:{k}")
                    .arg("x")
            ),
            Some(Slot::for_key("k"))
        );
        assert_eq!(slot_of(&redis::cmd("PING")), None);
    }

    #[test]
    fn keyless_commands_hold_back_a_pipeline() {
        assert!(is_keyed(redis::cmd("SET").arg("k").arg("v")));
        assert!(is_keyed(redis::cmd("EVALSHA").arg("abc").arg(1).arg("k")));
        assert!(!is_keyed(redis::cmd("EVALSHA").arg("abc").arg(0).arg("x")));
        assert!(!is_keyed(redis::cmd("SCRIPT").arg("LOAD").arg("return 1")));
    }
}
