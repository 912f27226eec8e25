//! Submitting task graphs: [`Client::persist`] and [`Client::compute`] (and their `_many`
//! forms) send a whole graph of [`Delayed`] calls at once.
//!
//! Every distinct node (by key) is registered in Redis atomically
//! ([`rask_common::dependencies`]): a node whose result is stored, or that is marked published
//! (its message is queued or running), is left alone; a node with every input stored is
//! published now (again, if an earlier registration found it ready: a registration is
//! idempotent, so a retry after a lost reply, or persisting a graph again after a failed
//! `persist`, never leaves a node unpublished), and marked published once the broker confirmed
//! it, so that the same graph persisted again, by any producer, does not run it again; the
//! others wait as records that workers publish when their last input is stored. The sources
//! (nodes without inputs) are registered first and published while the rest registers. The
//! client makes no round trip per graph level or per node (two registrations and a marking per
//! `persist`), and may exit once `persist` returns. Every message is checked against `max_message_bytes` before
//! anything is registered. Ready sources of one function are batched as a map's calls are
//! (`batch.rs`): as many per message as the smallest size a node of the function sets in its
//! options, else as the function's measured run time allows (one `HGET` per function with two
//! or more ready sources).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rask_common::dependencies::Registration;
use rask_common::graph::{Arg, Dep, Node};
use rask_common::{Delayed, TaskKey, TaskMessage};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::future::Future;
use crate::retry::store_retrying;
use crate::trace::Publishing;

impl Client {
    /// Submits `delayed` and everything it depends on, and returns the future of its result
    /// once every task that can run now is confirmed by the broker. The graph then finishes
    /// without this client; any process can wait for the key.
    ///
    /// ```no_run
    /// use rask::builtins::{add, inc, sum_ints};
    ///
    /// # async fn example(client: rask::Client) -> rask::Result<()> {
    /// let leaves: Vec<_> = (0..100).map(|i| inc.delayed(i)).collect();
    /// let total = sum_ints.delayed(leaves); // nothing is sent yet
    /// let future = client.persist(&total).await?; // the whole graph, at once
    /// assert_eq!(future.result().await?, 5050);
    /// // Graphs built on persisted results reuse them; identical calls share content keys.
    /// let doubled = add.delayed(&future, sum_ints.delayed((0..100).map(|i| inc.delayed(i)).collect::<Vec<_>>()));
    /// assert_eq!(client.compute(&doubled).await?, 10100);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Argument`] if an argument did not encode; [`Error::DelayedNode`] if a node has a
    /// countdown or eta; [`Error::TooLarge`] if a task's message
    /// is over `max_message_bytes` (nothing is registered then); [`crate::Error`] if Redis or the
    /// broker failed (the tasks registered or published before the failure stay, and persisting
    /// the same graph again completes it).
    pub async fn persist<T>(&self, delayed: &Delayed<T>) -> Result<Future<T>> {
        self.submit_graph(&[delayed.node()]).await?;
        Ok(self.future(delayed.key().clone()))
    }

    /// [`Client::persist`] for several results of one graph (shared parts are submitted once).
    ///
    /// # Errors
    /// As [`Client::persist`].
    pub async fn persist_many<T>(&self, delayed: &[Delayed<T>]) -> Result<Vec<Future<T>>> {
        let roots: Vec<&Arc<Node>> = delayed.iter().map(Delayed::node).collect();
        self.submit_graph(&roots).await?;
        Ok(delayed
            .iter()
            .map(|d| self.future(d.key().clone()))
            .collect())
    }

    /// Submits `delayed` (as [`Client::persist`]) and waits for its value, without a time limit
    /// (persist, then [`Client::gather`] with a timeout, to bound the wait).
    ///
    /// # Errors
    /// As [`Client::persist`]; [`crate::Error::Task`] if the task or one it depends on failed
    /// (`FailureKind::DependencyFailed`, naming the task that failed first).
    pub async fn compute<T: DeserializeOwned + Send + 'static>(
        &self,
        delayed: &Delayed<T>,
    ) -> Result<T> {
        self.persist(delayed).await?.result().await
    }

    /// [`Client::compute`] for several results, in input order.
    ///
    /// # Errors
    /// As [`Client::compute`], for the first failure.
    pub async fn compute_many<T: DeserializeOwned + Send + 'static>(
        &self,
        delayed: &[Delayed<T>],
    ) -> Result<Vec<T>> {
        let futures = self.persist_many(delayed).await?;
        self.gather(&futures).await
    }

    /// Registers every distinct node reachable from `roots`, publishes the ready ones and then
    /// marks them published. Registering is idempotent (a node neither stored nor marked
    /// answers ready or waiting however often it is registered), so a retry after a lost reply
    /// publishes what the first attempt found ready: nodes are marked only once confirmed.
    async fn submit_graph(&self, roots: &[&Arc<Node>]) -> Result<()> {
        // One trace for the whole graph: every node's message (and so its record, which the
        // worker that releases it publishes) carries it.
        let function = roots.first().map_or("", |root| root.function());
        let publishing = Publishing::start(self.settings(), "graph", function);
        let span = publishing.span.clone();
        self.submit_graph_in(roots, &publishing)
            .instrument(span)
            .await
    }

    /// [`Client::submit_graph`], every message stamped by `publishing`.
    async fn submit_graph_in(&self, roots: &[&Arc<Node>], publishing: &Publishing) -> Result<()> {
        let max = self.settings().max_message_bytes;
        let mut messages = Vec::new();
        let mut pools = Vec::new();
        // Calls per message that nodes' options set, the smallest per function.
        let mut batch_sizes: HashMap<String, usize> = HashMap::new();
        for node in distinct_nodes(roots) {
            let options = node.options();
            if let Some(size) = options.batch_size() {
                let function = node.function().to_owned();
                let smallest = batch_sizes.entry(function).or_insert(size);
                *smallest = (*smallest).min(size);
            }
            if options.is_delayed() {
                return Err(Error::DelayedNode {
                    function: node.function().to_owned(),
                    key: node.key().clone(),
                });
            }
            let message = node.message().map_err(|e| Error::Argument {
                function: node.function().to_owned(),
                key: node.key().clone(),
                error: e.to_owned(),
            })?;
            // Its options travel in its message: in the record workers release, and in what is
            // published now. Routed now, before it is registered (its own pool, else the routing
            // table's): a worker that releases it publishes it to the pool its record names.
            let message = publishing.stamp(options.apply(message, self.settings()));
            self.watch_route(&message.function, message.pool.as_ref());
            if let Some(pool) = &message.pool {
                if !pools.contains(pool) {
                    pools.push(pool.clone());
                }
            }
            // Checked before anything is registered: a record too large to publish would
            // otherwise fail only when a worker releases it.
            let bytes = message.encode()?.len();
            if bytes > max {
                return Err(Error::TooLarge {
                    key: message.key,
                    bytes,
                    max,
                });
            }
            messages.push(message);
        }
        // Every pool's queues exist before any of its tasks is released by a worker.
        for pool in &pools {
            self.declare_pool(pool).await?;
        }
        let submitted: HashSet<TaskKey> = messages.iter().map(|m| m.key.clone()).collect();
        // The sources (nodes without inputs: a tree's leaves) first, alone: they are published
        // while the rest registers, so that workers start on them meanwhile. Any order is
        // safe: a node registered after its input was stored finds the result (its script
        // checks each input), one registered before is released by it.
        let (sources, rest): (Vec<TaskMessage>, Vec<TaskMessage>) =
            messages.into_iter().partition(|m| m.deps.is_empty());
        let found = self.register(&sources).await?;
        let mut keys: Vec<TaskKey> = Vec::new();
        let ready_sources = ready(sources, found, &mut keys);
        let sizes = self.source_batch_sizes(&ready_sources, batch_sizes).await;
        let ready_sources = crate::batch::pack_messages(ready_sources, |function| {
            sizes.get(function).copied().unwrap_or(1)
        });
        let (published, found) = tokio::join!(
            self.publish(ready_sources.into_iter().map(Ok)),
            self.register(&rest)
        );
        published?;
        let found = found?;
        let lost = self.rebuild_lost(&submitted, &rest, &found).await?;
        let mut ready = ready(rest, found, &mut keys);
        keys.extend(lost.iter().map(|m| m.key.clone()));
        ready.extend(lost);
        self.publish(ready.into_iter().map(Ok)).await?;
        if keys.is_empty() {
            return Ok(());
        }
        // Every ready node is confirmed: mark them, so that registering them again does not
        // publish them again. Not marking costs at most a second run of a node persisted again
        // before its result is stored, so a failure here does not fail `persist`.
        if let Err(e) = self.store().mark_published(&keys).await {
            tracing::warn!(error = %e, tasks = keys.len(), "could not mark published graph tasks; persisting them again before they finish may run them twice");
        }
        Ok(())
    }
}

impl Client {
    /// Calls per batch message for each function with two or more of `sources`: the size
    /// `set` by nodes' options, else the one the run time workers measured for it gives
    /// ([`Client::paced_batch_size`], as for a map).
    async fn source_batch_sizes(
        &self,
        sources: &[TaskMessage],
        mut set: HashMap<String, usize>,
    ) -> HashMap<String, usize> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for source in sources {
            *counts.entry(source.function.as_str()).or_default() += 1;
        }
        let mut sizes = HashMap::new();
        for (function, count) in counts {
            if count < 2 {
                continue;
            }
            let size = match set.remove(function) {
                Some(size) => size,
                None => self.paced_batch_size(function).await,
            };
            sizes.insert(function.to_owned(), size);
        }
        sizes
    }

    /// Registers graph tasks ([`rask_common::Store::register_tasks`]), retrying what Redis
    /// fails for up to `reconnect_max_wait` (registering is idempotent).
    async fn register(&self, tasks: &[TaskMessage]) -> Result<Vec<Registration>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let wait = self.settings().reconnect_max_wait;
        store_retrying("registering graph tasks", wait, || async {
            Ok(self.store().register_tasks(tasks).await?)
        })
        .await
    }

    /// The inputs known only by key (results of earlier graphs: not among the `submitted`
    /// nodes) that the waiting tasks of `messages` (registered as `found`) wait for, whose
    /// results are gone but whose messages are kept: recomputed from their messages (lineage),
    /// to be published with the ready tasks.
    async fn rebuild_lost(
        &self,
        submitted: &HashSet<TaskKey>,
        messages: &[TaskMessage],
        found: &[Registration],
    ) -> Result<Vec<TaskMessage>> {
        let mut seen = HashSet::new();
        let external: Vec<TaskKey> = messages
            .iter()
            .zip(found)
            .filter(|(_, r)| **r == Registration::Waiting)
            .flat_map(|(m, _)| &m.deps)
            .filter(|dep| !submitted.contains(*dep) && seen.insert(*dep))
            .cloned()
            .collect();
        if external.is_empty() {
            return Ok(Vec::new());
        }
        let wait = self.settings().reconnect_max_wait;
        let lost = store_retrying("recomputing lost inputs", wait, || async {
            Ok(self.store().rebuild_lost(&external).await?)
        })
        .await?;
        Ok(rask_common::dependencies::ReadyTask::messages(lost))
    }
}

/// The messages of `messages` that registering found [`Registration::Ready`] (`found`, in
/// order), their keys added to `keys` (to mark them once published).
fn ready(
    messages: Vec<TaskMessage>,
    found: Vec<Registration>,
    keys: &mut Vec<TaskKey>,
) -> Vec<TaskMessage> {
    let ready: Vec<TaskMessage> = messages
        .into_iter()
        .zip(found)
        .filter(|(_, r)| *r == Registration::Ready)
        .map(|(m, _)| m)
        .collect();
    keys.extend(ready.iter().map(|m| m.key.clone()));
    ready
}

/// Every node reachable from `roots`, once each (by key), without recursion.
fn distinct_nodes<'a>(roots: &[&'a Arc<Node>]) -> Vec<&'a Arc<Node>> {
    let mut seen = HashSet::new();
    let mut stack: Vec<&Arc<Node>> = roots.to_vec();
    let mut nodes = Vec::new();
    while let Some(node) = stack.pop() {
        if !seen.insert(node.key()) {
            continue;
        }
        nodes.push(node);
        stack.extend(node.deps().iter().filter_map(|d| match d {
            Dep::Node(n) => Some(n),
            Dep::Key(_) => None,
        }));
    }
    nodes
}

/// A future as a graph argument: the task waits for its result. For a list of futures (fan-in),
/// use `Arg::list(futures.iter().map(Arg::from))` (the orphan rule forbids a `From<Vec<_>>` here).
impl<T> From<&Future<T>> for Arg<T> {
    fn from(future: &Future<T>) -> Self {
        Arg::key(future.key().clone())
    }
}

impl<T> From<Future<T>> for Arg<T> {
    fn from(future: Future<T>) -> Self {
        Arg::key(future.key().clone())
    }
}
