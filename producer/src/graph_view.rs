//! The state of a persisted task graph, by the key of one of its tasks, for the dashboard's
//! picture ([`Monitor::graph_view`]). The graph is read back from what `persist` left in Redis
//! (protocol §11): the record `{prefix}:task:{key}` of each graph task holds its message, whose
//! `deps` name its inputs; walking them from the key gives the tasks the key's result is made
//! of. Each node's state is its [`TaskInfo`] state (results, pending inputs, task events), except
//! that a task with no result, no pending input and no event whose message is in the broker's
//! hands (its published marker) is `queued` rather than `unknown`, so that a graph shows where
//! it is with task events off too. Nodes are laid out in layers: a task's layer is one more than
//! its deepest input's, so every edge points to a higher layer.

use std::collections::{HashMap, HashSet};

use rask_common::events::{task_info, TaskState};
use rask_common::{TaskKey, TaskMessage};
use serde::Serialize;

use crate::Monitor;

/// Keys read per round trip while walking a graph.
const WALK_BATCH: usize = 500;

/// One task of a graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphNode {
    /// Its key.
    pub key: TaskKey,
    /// Its function (`None`: its record and events are gone, e.g. an input submitted as a plain
    /// task whose events were not recorded).
    pub function: Option<String>,
    /// Where it is.
    pub state: TaskState,
    /// Its inputs (keys of other nodes; those beyond a truncated view are left out).
    pub deps: Vec<TaskKey>,
    /// Its layer: 0 for a task without inputs, else one more than its deepest input's.
    pub layer: u32,
}

/// A persisted graph as it stands (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphView {
    /// The key it was read from (the last node's, when that is the graph's output).
    pub key: TaskKey,
    /// Its tasks, by layer, then function, then key.
    pub nodes: Vec<GraphNode>,
    /// Whether the graph has more tasks than were read (the walk stops at its `max_nodes`).
    pub truncated: bool,
}

impl Monitor {
    /// The graph whose result is `key`'s (`key` and every task it takes a result from, however
    /// deep), at most `max_nodes` tasks of it; `None` if `key` has no graph record (not a graph
    /// task, or its record expired after `lineage_ttl`).
    ///
    /// # Errors
    /// [`crate::Error::Store`] / [`crate::Error::Common`] if Redis fails.
    pub async fn graph_view(
        &self,
        key: &TaskKey,
        max_nodes: usize,
    ) -> crate::Result<Option<GraphView>> {
        let store = self.store();
        let keys = store.keys();
        let mut order: Vec<TaskKey> = Vec::new();
        let mut records: HashMap<TaskKey, TaskMessage> = HashMap::new();
        let mut seen: HashSet<TaskKey> = HashSet::from([key.clone()]);
        let mut frontier = vec![key.clone()];
        let mut truncated = false;
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for chunk in frontier.chunks(WALK_BATCH) {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.cmd("GET").arg(keys.task(k));
                }
                let bodies: Vec<Option<Vec<u8>>> =
                    pipe.query_async(&mut store.connection()).await?;
                for (k, body) in chunk.iter().zip(bodies) {
                    // A record that does not decode (written by hand, say) counts as absent.
                    if let Some(message) = body.and_then(|b| TaskMessage::decode(&b).ok()) {
                        for dep in &message.deps {
                            if seen.len() >= max_nodes && !seen.contains(dep) {
                                truncated = true;
                            } else if seen.insert(dep.clone()) {
                                next.push(dep.clone());
                            }
                        }
                        records.insert(k.clone(), message);
                    }
                    order.push(k.clone());
                }
            }
            frontier = next;
        }
        if !records.contains_key(key) {
            return Ok(None);
        }
        let infos = task_info(store, &order).await?;
        let mut published = redis::pipe();
        for k in &order {
            published.cmd("EXISTS").arg(keys.published(k));
        }
        let published: Vec<bool> = published.query_async(&mut store.connection()).await?;
        let mut nodes: Vec<GraphNode> = order
            .into_iter()
            .zip(infos)
            .zip(published)
            .map(|((k, info), published)| {
                let record = records.get(&k);
                let state = match info.state {
                    TaskState::Unknown if published => TaskState::Queued,
                    state => state,
                };
                GraphNode {
                    function: record.map(|m| m.function.clone()).or(info.function),
                    deps: record
                        .map(|m| {
                            m.deps
                                .iter()
                                .filter(|d| seen.contains(*d))
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default(),
                    key: k,
                    state,
                    layer: 0,
                }
            })
            .collect();
        assign_layers(&mut nodes);
        nodes.sort_by(|a, b| (a.layer, &a.function, &a.key).cmp(&(b.layer, &b.function, &b.key)));
        Ok(Some(GraphView {
            key: key.clone(),
            nodes,
            truncated,
        }))
    }
}

/// Sets each node's layer: 0 without inputs, else one more than its deepest input's (inputs
/// outside `nodes` do not count). Graph keys are content hashes, so there is no cycle; a node on
/// one anyway keeps layer 0.
fn assign_layers(nodes: &mut [GraphNode]) {
    let index: HashMap<&TaskKey, usize> =
        nodes.iter().enumerate().map(|(i, n)| (&n.key, i)).collect();
    let inputs: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            n.deps
                .iter()
                .filter_map(|d| index.get(d).copied())
                .collect()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut waiting: Vec<usize> = inputs.iter().map(Vec::len).collect();
    for (i, ins) in inputs.iter().enumerate() {
        for &d in ins {
            dependents[d].push(i);
        }
    }
    let mut layers = vec![0u32; nodes.len()];
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop() {
        for &j in &dependents[i] {
            layers[j] = layers[j].max(layers[i] + 1);
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(j);
            }
        }
    }
    for (node, layer) in nodes.iter_mut().zip(layers) {
        node.layer = layer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, deps: &[&str]) -> GraphNode {
        GraphNode {
            key: TaskKey::new(key).unwrap(),
            function: None,
            state: TaskState::Queued,
            deps: deps.iter().map(|d| TaskKey::new(*d).unwrap()).collect(),
            layer: 99,
        }
    }

    #[test]
    fn a_layer_is_one_more_than_the_deepest_input() {
        // a, b -> c; a -> d; c, d -> e; x (input outside the view) -> d.
        let mut nodes = vec![
            node("e", &["c", "d"]),
            node("d", &["a", "x"]),
            node("c", &["a", "b"]),
            node("b", &[]),
            node("a", &[]),
        ];
        assign_layers(&mut nodes);
        let layers: Vec<(&str, u32)> = nodes.iter().map(|n| (n.key.as_str(), n.layer)).collect();
        assert_eq!(layers, [("e", 2), ("d", 1), ("c", 1), ("b", 0), ("a", 0)]);
    }

    #[test]
    fn a_chain_gets_a_layer_per_task() {
        let mut nodes = vec![node("c", &["b"]), node("b", &["a"]), node("a", &[])];
        assign_layers(&mut nodes);
        assert_eq!(nodes.iter().map(|n| n.layer).collect::<Vec<_>>(), [2, 1, 0]);
    }
}
