//! Lazy task graphs: [`Delayed`] calls that send nothing until a client persists or computes
//! them, and the [`Arg`]s they are built from (plain values, other delayed calls, or keys of
//! results that exist or are on their way).
//!
//! A delayed call's arguments are encoded once, at construction, as the MessagePack tuple the
//! worker will decode, except that every position filled by another task's result holds a
//! placeholder: a MessagePack ext value of type [`DEPENDENCY_EXT`] whose data is that task's key.
//! The worker substitutes the stored results before calling the function.
//!
//! Keys are content addressed by default ([`content_key`]): the same function with the same
//! encoded arguments (dependency keys included) gets the same key in every process, so identical
//! work is done once. [`Delayed::impure`] opts out.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::keys::TaskKey;
use crate::message::TaskMessage;
use crate::options::TaskOptions;

/// MessagePack ext type code of a dependency placeholder (`0x52`, "R"): its data is the key of
/// the task whose result goes in that position.
pub const DEPENDENCY_EXT: i8 = 0x52;

/// One argument of a delayed call, typed by the parameter it fills.
pub struct Arg<T> {
    value: Result<rmpv::Value, String>,
    deps: Vec<Dep>,
    param: PhantomData<fn() -> T>,
}

/// What a graph node waits for.
#[derive(Debug, Clone)]
pub enum Dep {
    /// Another delayed call of the same graph, submitted with it.
    Node(Arc<Node>),
    /// A task submitted earlier (by any process), known by its key.
    Key(TaskKey),
}

impl Dep {
    /// The key of the task depended on.
    pub fn key(&self) -> &TaskKey {
        match self {
            Dep::Node(node) => &node.key,
            Dep::Key(key) => key,
        }
    }
}

impl<T> Arg<T> {
    /// The result of the task with `key` (submitted by any process, finished or not).
    pub fn key(key: TaskKey) -> Self {
        Arg {
            value: Ok(placeholder(&key)),
            deps: vec![Dep::Key(key)],
            param: PhantomData,
        }
    }

    /// A list built from arguments of any kind (values, delayed calls, keys), mixed.
    pub fn list(items: impl IntoIterator<Item = Arg<T>>) -> Arg<Vec<T>> {
        let mut values = Vec::new();
        let mut deps = Vec::new();
        let mut error = None;
        for item in items {
            match item.value {
                Ok(value) => values.push(value),
                Err(e) => error = Some(e),
            }
            deps.extend(item.deps);
        }
        Arg {
            value: error.map_or(Ok(rmpv::Value::Array(values)), Err),
            deps,
            param: PhantomData,
        }
    }

    fn from_node(node: &Arc<Node>) -> Self {
        Arg {
            value: Ok(placeholder(&node.key)),
            deps: vec![Dep::Node(node.clone())],
            param: PhantomData,
        }
    }

    /// The same argument typed as a `U`, for callers whose values are dynamically typed (the
    /// Python package builds every argument as an `Arg<rmpv::Value>`). Nothing is checked: the
    /// worker decodes the value as the parameter it fills.
    pub fn cast<U>(self) -> Arg<U> {
        Arg {
            value: self.value,
            deps: self.deps,
            param: PhantomData,
        }
    }

    /// Forgets the parameter type (what [`task!`](crate::task!)'s `delayed` does with each
    /// argument).
    #[doc(hidden)]
    pub fn erase(self) -> ErasedArg {
        ErasedArg {
            value: self.value,
            deps: self.deps,
        }
    }
}

/// An [`Arg`] without its type, as the generated `delayed` methods pass it on.
#[doc(hidden)]
pub struct ErasedArg {
    value: Result<rmpv::Value, String>,
    deps: Vec<Dep>,
}

impl<T: Serialize> From<T> for Arg<T> {
    fn from(value: T) -> Self {
        let value = crate::message::encode_value(&value)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                rmpv::decode::read_value(&mut bytes.as_slice()).map_err(|e| e.to_string())
            });
        Arg {
            value,
            deps: Vec::new(),
            param: PhantomData,
        }
    }
}

impl<T> From<Delayed<T>> for Arg<T> {
    fn from(delayed: Delayed<T>) -> Self {
        Arg::from_node(&delayed.node)
    }
}

impl<T> From<&Delayed<T>> for Arg<T> {
    fn from(delayed: &Delayed<T>) -> Self {
        Arg::from_node(&delayed.node)
    }
}

impl<T> From<Vec<Delayed<T>>> for Arg<Vec<T>> {
    fn from(list: Vec<Delayed<T>>) -> Self {
        Arg::list(list.iter().map(Arg::from))
    }
}

impl<T> From<&[Delayed<T>]> for Arg<Vec<T>> {
    fn from(list: &[Delayed<T>]) -> Self {
        Arg::list(list.iter().map(Arg::from))
    }
}

/// A call of a task that has not been submitted: the node of a task graph. Cheap to clone.
/// Build it with the `delayed` method every [`task!`](crate::task!) handle has; submit it (and
/// everything it depends on) with the client's `persist` or `compute`.
pub struct Delayed<T> {
    node: Arc<Node>,
    output: PhantomData<fn() -> T>,
}

/// The untyped node behind a [`Delayed`].
#[derive(Debug)]
pub struct Node {
    key: TaskKey,
    function: &'static str,
    args: Result<Vec<u8>, String>,
    deps: Vec<Dep>,
    /// How the task is scheduled (see [`Delayed::with_options`]); not part of its key.
    options: TaskOptions,
}

impl Node {
    /// The task's key.
    pub fn key(&self) -> &TaskKey {
        &self.key
    }

    /// The function to call.
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// The encoded argument tuple with placeholders, or why an argument did not encode.
    pub fn args(&self) -> Result<&[u8], &str> {
        self.args.as_deref().map_err(String::as_str)
    }

    /// What the task waits for, in argument order (a key may appear more than once).
    pub fn deps(&self) -> &[Dep] {
        &self.deps
    }

    /// The options of this node ([`Delayed::with_options`]).
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// The task message of this node (its `deps` set), or why an argument did not encode; its
    /// options are not applied (the client applies them, with its `max_priority`).
    pub fn message(&self) -> Result<TaskMessage, &str> {
        let args = self.args()?.to_vec();
        Ok(TaskMessage::new(self.key.clone(), self.function, args).with_deps(self.dep_keys()))
    }

    /// The distinct keys of [`Node::deps`], in first-seen order.
    pub fn dep_keys(&self) -> Vec<TaskKey> {
        let mut seen = std::collections::HashSet::new();
        self.deps
            .iter()
            .map(Dep::key)
            .filter(|k| seen.insert(*k))
            .cloned()
            .collect()
    }
}

impl Drop for Node {
    /// Drops long chains without recursing (a long chain would overflow the stack).
    fn drop(&mut self) {
        let mut stack: Vec<Arc<Node>> = take_nodes(&mut self.deps);
        while let Some(node) = stack.pop() {
            if let Ok(mut node) = Arc::try_unwrap(node) {
                stack.extend(take_nodes(&mut node.deps));
            }
        }
    }
}

fn take_nodes(deps: &mut Vec<Dep>) -> Vec<Arc<Node>> {
    std::mem::take(deps)
        .into_iter()
        .filter_map(|d| match d {
            Dep::Node(node) => Some(node),
            Dep::Key(_) => None,
        })
        .collect()
}

impl<T> Delayed<T> {
    /// A call of `function` with `args` (one per parameter), under its content key.
    #[doc(hidden)]
    pub fn new(function: &'static str, args: Vec<ErasedArg>) -> Self {
        let mut values = Vec::with_capacity(args.len());
        let mut deps = Vec::new();
        let mut error = None;
        for arg in args {
            match arg.value {
                Ok(value) => values.push(value),
                Err(e) => error = Some(e),
            }
            deps.extend(arg.deps);
        }
        let args = match error {
            Some(e) => Err(e),
            None => {
                let mut bytes = Vec::new();
                rmpv::encode::write_value(&mut bytes, &rmpv::Value::Array(values))
                    .map(|()| bytes)
                    .map_err(|e| e.to_string())
            }
        };
        let key = match &args {
            Ok(bytes) => content_key(function, bytes),
            Err(_) => TaskKey::unique(function),
        };
        Delayed {
            node: Arc::new(Node {
                key,
                function,
                args,
                deps,
                options: TaskOptions::default(),
            }),
            output: PhantomData,
        }
    }

    /// The same call under a fresh unique key, so that it runs even if an identical call ran
    /// (for functions with side effects or randomness: Dask's `pure=False`). Calls built from
    /// this one afterwards depend on the new key.
    pub fn impure(self) -> Self {
        let node = match Arc::try_unwrap(self.node) {
            Ok(mut node) => {
                node.key = TaskKey::unique(node.function);
                node
            }
            Err(shared) => Node {
                key: TaskKey::unique(shared.function),
                function: shared.function,
                args: shared.args.clone(),
                deps: shared.deps.clone(),
                options: shared.options.clone(),
            },
        };
        Delayed {
            node: Arc::new(node),
            output: PhantomData,
        }
    }

    /// The same call with `options` (priority, retry policy, time limit: everything
    /// [`TaskOptions::apply`] writes into a message), kept in its message when the graph is persisted or computed and when a worker
    /// releases it. Options are not part of the key: the same call is the same result, however
    /// it is scheduled, so a call whose result is stored (or that is queued or running) is not
    /// run again with other options, and where one graph holds the same call twice with
    /// different options, one of them is used: set options on a call before building other
    /// calls from it (those built before depend on the call as it was). A countdown or an eta
    /// cannot be set on a graph node (nodes start when their inputs are stored): persisting it
    /// fails with the client's `Error::DelayedNode`, before anything is registered.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rask_common::{builtins::inc, RetryPolicy, TaskOptions};
    ///
    /// let plain = inc.delayed(1);
    /// let careful = inc.delayed(1).with_options(
    ///     TaskOptions::new().retry(RetryPolicy::new(3)).time_limit(Duration::from_secs(5)),
    /// );
    /// assert_eq!(plain.key(), careful.key());
    /// ```
    pub fn with_options(self, options: TaskOptions) -> Self {
        let node = match Arc::try_unwrap(self.node) {
            Ok(mut node) => {
                node.options = options;
                node
            }
            Err(shared) => Node {
                key: shared.key.clone(),
                function: shared.function,
                args: shared.args.clone(),
                deps: shared.deps.clone(),
                options,
            },
        };
        Delayed {
            node: Arc::new(node),
            output: PhantomData,
        }
    }

    /// The same call with its result typed as a `U`, for callers whose values are dynamically
    /// typed (the Python package reads every result as an `rmpv::Value`). Nothing is checked:
    /// the result is decoded as `U` when it is read.
    pub fn cast<U>(self) -> Delayed<U> {
        Delayed {
            node: self.node,
            output: PhantomData,
        }
    }

    /// The key the result will be stored under.
    pub fn key(&self) -> &TaskKey {
        &self.node.key
    }

    /// The untyped graph node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The graph as Graphviz DOT (`dot -Tsvg`): one node per distinct key, labelled with the
    /// function and the key's first 8 hex digits (inputs known only by key, e.g. futures, are
    /// dashed boxes labelled with their key), and one edge from each input to each task using it.
    pub fn to_dot(&self) -> String {
        use std::fmt::Write as _;
        let mut dot = String::from("digraph rask {\n  rankdir=BT;\n");
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<&Arc<Node>> = vec![&self.node];
        while let Some(node) = stack.pop() {
            if !seen.insert(node.key.as_str()) {
                continue;
            }
            let label = format!("{}\\n{}", node.function, short_key(&node.key));
            let _ = writeln!(dot, "  \"{}\" [label=\"{}\"];", node.key, escape(&label));
            for dep in node.dep_keys() {
                let _ = writeln!(dot, "  \"{dep}\" -> \"{}\";", node.key);
            }
            for dep in &node.deps {
                match dep {
                    Dep::Node(input) => stack.push(input),
                    Dep::Key(key) => {
                        if seen.insert(key.as_str()) {
                            let _ = writeln!(
                                dot,
                                "  \"{key}\" [label=\"{key}\", shape=box, style=dashed];"
                            );
                        }
                    }
                }
            }
        }
        dot.push_str("}\n");
        dot
    }
}

/// `{function}-{first 8 hex digits}` of a `{function}-{hex}` key; other keys unchanged.
fn short_key(key: &TaskKey) -> &str {
    let text = key.as_str();
    match text.rfind('-') {
        Some(dash) if text.len() > dash + 9 => &text[..dash + 9],
        _ => text,
    }
}

/// `text` as the inside of a DOT string (keys and function names hold no quotes; to be sure).
fn escape(text: &str) -> String {
    text.replace('"', "\\\"")
}

impl<T> Clone for Delayed<T> {
    fn clone(&self) -> Self {
        Delayed {
            node: self.node.clone(),
            output: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Delayed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Delayed").field(&self.node.key).finish()
    }
}

/// The content key of a call: `{function}-{32 hex digits}`, the digits being the first 16 bytes
/// of SHA-256 over the function name, a zero byte and the encoded argument tuple (placeholders,
/// i.e. dependency keys, included). Function names are shortened and filtered as in
/// [`TaskKey::unique`].
pub fn content_key(function: &str, args: &[u8]) -> TaskKey {
    let mut hash = Sha256::new();
    hash.update(function.as_bytes());
    hash.update([0]);
    hash.update(args);
    let digest = hash.finalize();
    let id: &[u8; 16] = digest[..16].try_into().expect("SHA-256 has 32 bytes");
    TaskKey::named(function, id)
}

/// The placeholder for the result of `key`.
pub fn placeholder(key: &TaskKey) -> rmpv::Value {
    rmpv::Value::Ext(DEPENDENCY_EXT, key.as_str().as_bytes().to_vec())
}

/// Replaces every placeholder in `value` by `lookup(key)`; `None` from `lookup` leaves the
/// placeholder. Iterative, so deeply nested values cannot overflow the stack.
pub fn substitute(value: &mut rmpv::Value, lookup: &dyn Fn(&str) -> Option<rmpv::Value>) {
    let mut stack: Vec<&mut rmpv::Value> = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            rmpv::Value::Ext(DEPENDENCY_EXT, data) => {
                if let Some(found) = std::str::from_utf8(data).ok().and_then(lookup) {
                    *v = found;
                }
            }
            rmpv::Value::Array(items) => stack.extend(items.iter_mut()),
            rmpv::Value::Map(entries) => {
                stack.extend(entries.iter_mut().flat_map(|(k, v)| [k, v]));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins::{add, inc, sum_ints};

    #[test]
    fn identical_calls_share_a_key_and_impure_ones_do_not() {
        let a = inc.delayed(1);
        let b = inc.delayed(1);
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), inc.delayed(2).key());
        assert!(a.key().as_str().starts_with("inc-"));
        assert_ne!(a.clone().impure().key(), a.key());
        let x = add.delayed(&a, 2);
        let y = add.delayed(&b, 2);
        assert_eq!(x.key(), y.key());
        assert_ne!(x.key(), add.delayed(inc.delayed(5), 2).key());
    }

    #[test]
    fn content_keys_are_the_documented_digest() {
        // sha256("add" 0x00 msgpack([40, 2])) = af0317c4583d780ed7f8f73255ae9733…, so keys stay
        // the same across builds and languages (docs/protocol.md).
        let args = crate::message::encode_value(&(40i64, 2i64)).unwrap();
        assert_eq!(args, [0x92, 0x28, 0x02]);
        assert_eq!(
            content_key("add", &args).as_str(),
            "add-af0317c4583d780ed7f8f73255ae9733"
        );
        assert_eq!(content_key("my task/v2", &args).as_str()[..8], *"mytaskv2");
    }

    #[test]
    fn dependencies_become_placeholders() {
        let a = inc.delayed(1);
        let total = sum_ints.delayed(vec![a.clone(), inc.delayed(2)]);
        assert_eq!(total.node().deps().len(), 2);
        let mut args =
            rmpv::decode::read_value(&mut total.node().args().unwrap()).expect("valid args");
        substitute(&mut args, &|k| (k == a.key().as_str()).then(|| 10.into()));
        let list = &args.as_array().unwrap()[0];
        assert_eq!(list.as_array().unwrap()[0], rmpv::Value::from(10));
        assert!(matches!(
            list.as_array().unwrap()[1],
            rmpv::Value::Ext(DEPENDENCY_EXT, _)
        ));
    }

    #[test]
    fn lists_mix_values_delayed_calls_and_keys() {
        let d = inc.delayed(1);
        let earlier = TaskKey::new("inc-earlier").unwrap();
        let mixed = Arg::list([Arg::from(5), Arg::from(&d), Arg::key(earlier.clone())]);
        let total = sum_ints.delayed(mixed);
        let message = total.node().message().unwrap();
        assert_eq!(message.deps, vec![d.key().clone(), earlier]);
        let args = rmpv::decode::read_value(&mut message.args.as_slice()).unwrap();
        let list = args.as_array().unwrap()[0].as_array().unwrap().clone();
        assert_eq!(list[0], rmpv::Value::from(5));
        assert_eq!(list[1], placeholder(d.key()));
    }

    #[test]
    fn dot_has_one_node_per_key_and_edges_from_inputs() {
        let a = inc.delayed(1);
        let earlier = TaskKey::new("inc-earlier").unwrap();
        let pair = [
            add.delayed(&a, 2),
            add.delayed(&a, Arg::key(earlier.clone())),
        ];
        let root = sum_ints.delayed(pair.to_vec());
        let dot = root.to_dot();
        assert!(dot.starts_with("digraph rask {") && dot.trim_end().ends_with('}'));
        let nodes = dot.lines().filter(|l| l.contains("[label=")).count();
        assert_eq!(
            nodes, 5,
            "root, two adds, inc once, the earlier key:\n{dot}"
        );
        let edge = |from: &TaskKey, to: &TaskKey| format!("\"{from}\" -> \"{to}\";");
        for add_call in &pair {
            assert!(dot.contains(&edge(a.key(), add_call.key())), "{dot}");
            assert!(dot.contains(&edge(add_call.key(), root.key())), "{dot}");
        }
        assert!(dot.contains(&edge(&earlier, pair[1].key())), "{dot}");
        assert_eq!(dot.matches(" -> ").count(), 5, "{dot}");
        let short = &a.key().as_str()[..12]; // "inc-" and 8 hex digits
        assert!(dot.contains(&format!("label=\"inc\\n{short}\"")), "{dot}");
        assert!(dot.contains("style=dashed"), "{dot}");
    }

    #[test]
    fn long_chains_drop_without_overflow() {
        let mut d = inc.delayed(0);
        for _ in 0..100_000 {
            d = inc.delayed(d);
        }
        drop(d);
    }
}
