//! What a task body may take besides its arguments: its [`TaskContext`] (its key, attempt,
//! worker, resource slots, cancellation token, a way to launch and wait for more tasks) and the
//! worker's [`State`] (values built once per worker process, e.g. a model or a connection
//! pool).
//!
//! The worker owns how these are made ([`WorkerContext`] once per process, a [`TaskContext`]
//! per run of a task that takes one); this module owns only their types, so that `task!`
//! bodies in any crate can name them. Parameters of a body taken by reference (`ctx:
//! &TaskContext`, `model: &State<Model>`) are supplied by the worker through [`FromContext`];
//! parameters taken by value travel in the message.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::keys::TaskKey;
use crate::settings::Settings;
use crate::task::TaskError;

/// A boxed future (what [`Secession::rejoin`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value of the worker's state, as a task body takes it (`model: &State<Model>`): built once
/// per worker process by the function given to `Registry::with_state`, shared by every task
/// of the worker. Dereferences to the value.
#[repr(transparent)]
pub struct State<T>(T);

impl<T> State<T> {
    /// The state `value` (for building a [`States`] by hand, e.g. to test a task body).
    pub fn new(value: T) -> Self {
        State(value)
    }
}

impl<T> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("State").field(&self.0).finish()
    }
}

/// The worker's state values, one per type (a type map).
#[derive(Default, Clone)]
pub struct States {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl States {
    /// No state.
    pub fn new() -> Self {
        States::default()
    }

    /// Adds (or replaces) the value of type `T`.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.insert_shared(Arc::new(State(value)));
    }

    /// Adds (or replaces) a value of type `T` already wrapped for sharing.
    pub fn insert_shared<T: Send + Sync + 'static>(&mut self, value: Arc<State<T>>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    /// The value of type `T`, if there is one.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<State<T>>> {
        let value = self.values.get(&TypeId::of::<T>())?.clone();
        value.downcast::<State<T>>().ok()
    }

    /// Whether there is a value of the type `id`.
    pub fn contains(&self, id: TypeId) -> bool {
        self.values.contains_key(&id)
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States")
            .field("values", &self.values.len())
            .finish()
    }
}

/// How a worker lets a task give its concurrency slot back while it waits
/// ([`TaskContext::secede`]). The worker implements it; [`Secession::none`] does nothing (a
/// context built outside a worker).
pub trait Secession: Send + Sync {
    /// The task stops counting against the worker's concurrency (and its prefetch window), so
    /// that the worker runs other tasks (the ones it waits for, say) meanwhile.
    fn secede(&self);
    /// The task counts again: completes once the worker has a slot for it. Dropped before it
    /// completes (the task was stopped while it waited), the task's slot is taken back later.
    fn rejoin(&self) -> BoxFuture<'_, ()>;
    /// The task that seceded stopped before it took its slot back (its [`Secession::rejoin`]
    /// was dropped): the worker takes the slot back when it can.
    fn abandon(&self);
}

impl dyn Secession {
    /// A [`Secession`] that does nothing: seceding changes nothing (for contexts built outside
    /// a worker).
    pub fn none() -> Arc<dyn Secession> {
        Arc::new(NoSecession)
    }
}

struct NoSecession;

impl Secession for NoSecession {
    fn secede(&self) {}
    fn rejoin(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
    fn abandon(&self) {}
}

/// What a worker process lends every task that takes a [`TaskContext`]: its id, its settings,
/// its [`States`], and the client its tasks submit through (built on first use, then shared).
/// Built once per worker process.
pub struct WorkerContext {
    worker: Arc<str>,
    settings: Settings,
    states: States,
    client: tokio::sync::OnceCell<Arc<dyn Any + Send + Sync>>,
    /// The stores of the blobs its tasks open by URL ([`TaskContext::blob`]), made on first
    /// use.
    #[cfg(feature = "blobs")]
    blob_stores: crate::blob::BlobStores,
}

impl WorkerContext {
    /// The context of worker `worker` running with `settings` and `states`.
    pub fn new(worker: impl Into<Arc<str>>, settings: Settings, states: States) -> Self {
        WorkerContext {
            worker: worker.into(),
            #[cfg(feature = "blobs")]
            blob_stores: crate::blob::BlobStores::new(&settings),
            settings,
            states,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// The worker's state values.
    pub fn states(&self) -> &States {
        &self.states
    }

    /// The worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }
}

impl fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("worker", &self.worker)
            .field("states", &self.states)
            .field("client", &self.client.initialized())
            .finish_non_exhaustive()
    }
}

/// What a running task knows about its run, given to a body that takes `ctx: &TaskContext`:
/// its key, attempt, worker, resource slots and cancellation token, the worker's state, and a
/// way to launch more tasks and wait for them without holding the worker's concurrency slot
/// ([`TaskContext::secede`]; the `rask` crate's `ContextExt` adds `ctx.client()` and
/// `ctx.gather(..)`). Cheap to clone.
///
/// Built by the worker for each run of a task that takes one (tasks that do not cost nothing
/// extra); [`TaskContext::new`] builds one by hand, e.g. to test a body.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

struct Inner {
    key: TaskKey,
    attempt: u32,
    slots: BTreeMap<String, Vec<u32>>,
    cancel: CancellationToken,
    worker: Arc<WorkerContext>,
    secession: Arc<dyn Secession>,
}

impl TaskContext {
    /// The context of the run of task `key` at `attempt` (0 on the first run) on the worker of
    /// `worker`, seceding through `secession`; no resource slots and a fresh cancellation
    /// token (see [`TaskContext::with_slots`] and [`TaskContext::with_cancellation`]).
    pub fn new(
        key: TaskKey,
        attempt: u32,
        worker: Arc<WorkerContext>,
        secession: Arc<dyn Secession>,
    ) -> Self {
        TaskContext {
            inner: Arc::new(Inner {
                key,
                attempt,
                slots: BTreeMap::new(),
                cancel: CancellationToken::new(),
                worker,
                secession,
            }),
        }
    }

    /// This context with the resource slots `slots` assigned to the run.
    pub fn with_slots(mut self, slots: BTreeMap<String, Vec<u32>>) -> Self {
        self.inner_mut().slots = slots;
        self
    }

    /// This context with `token` as the run's cancellation token.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.inner_mut().cancel = token;
        self
    }

    /// The inner part, to set while the context is being built (not shared yet).
    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("a context is built before it is shared")
    }

    /// The task's key (its result is stored under it).
    pub fn key(&self) -> &TaskKey {
        &self.inner.key
    }

    /// Attempts made at this task before this run: 0 on the first run, one more on each retry
    /// (the message's `attempt`).
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The id of the worker running the task (as in the failures it stores).
    pub fn worker_id(&self) -> &str {
        self.inner.worker.worker()
    }

    /// The settings the worker runs with (e.g. for a client of its own).
    pub fn settings(&self) -> &Settings {
        &self.inner.worker.settings
    }

    /// The resource slots the run holds, by resource (e.g. `{"gpu": [1]}`: use GPU 1). Empty
    /// when the task needs no resources.
    pub fn slots(&self) -> &BTreeMap<String, Vec<u32>> {
        &self.inner.slots
    }

    /// The run's cancellation token: cancelled when the task is to stop.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// Completes when the task is to stop (a blocking body polls
    /// [`TaskContext::is_cancelled`] instead).
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// Whether the task is to stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// The worker's state value of type `T`, if its registry has one (a body more often takes
    /// it as a parameter, `model: &State<Model>`).
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<State<T>>> {
        self.inner.worker.states.get::<T>()
    }

    /// The blob named by `url` (`file:///path` or `s3://bucket/key`), on the worker's S3
    /// server (`s3_endpoint`, credentials from the `AWS_*` variables): for a task that reads or
    /// writes large data itself. The worker's tasks share one store per bucket.
    ///
    /// # Errors
    /// As [`crate::blob::BlobStores::blob`]: a URL that names no object, or a store that cannot
    /// be set up.
    #[cfg(feature = "blobs")]
    pub fn blob(&self, url: &str) -> crate::Result<crate::blob::Blob> {
        self.inner.worker.blob_stores.blob(url)
    }

    /// Awaits `wait` without holding the worker's concurrency slot (Dask's `secede` and
    /// `rejoin`): meanwhile the worker runs other tasks, such as the ones this task launched and
    /// waits for, so a tree of tasks that wait for their children completes however deep it is
    /// and whatever the worker's concurrency. Once `wait` completes, the task waits for a free
    /// slot before it goes on. Only what waits belongs in `wait`: the work around it still
    /// counts against the concurrency. Time limits still run while the task waits.
    pub async fn secede<F: Future>(&self, wait: F) -> F::Output {
        let secession = &self.inner.secession;
        secession.secede();
        // Dropped before the slot is taken back (the task stopped while it waited), the guard
        // tells the worker.
        let mut rejoined = Rejoined {
            secession: &**secession,
            done: false,
        };
        let output = wait.await;
        secession.rejoin().await;
        rejoined.done = true;
        output
    }

    /// [`TaskContext::secede`] for a plain (blocking) body: blocks its thread until `wait`
    /// completes, without holding the worker's concurrency slot meanwhile.
    ///
    /// # Panics
    /// Outside a tokio runtime's threads (a worker runs plain bodies on them).
    pub fn secede_blocking<F: Future>(&self, wait: F) -> F::Output {
        let runtime = tokio::runtime::Handle::current();
        let run = || runtime.block_on(self.secede(wait));
        match runtime.runtime_flavor() {
            // Hands the thread's other async work to another thread first.
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
            // A single-threaded runtime runs plain bodies on its blocking pool.
            _ => run(),
        }
    }

    /// The value of type `C` built once per worker by `connect` on first use (the first call's
    /// `connect` wins; a failed `connect` is tried again on the next call): how the `rask`
    /// crate shares one `Client` among a worker's tasks without this crate naming it.
    ///
    /// # Errors
    /// The error of `connect`.
    ///
    /// # Panics
    /// If the worker's shared value was built with another type `C`.
    pub async fn worker_client<C, F, Fut, E>(&self, connect: F) -> Result<C, E>
    where
        C: Clone + Send + Sync + 'static,
        F: FnOnce(Settings) -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let worker = &self.inner.worker;
        let shared = worker
            .client
            .get_or_try_init(|| async {
                let client = connect(worker.settings.clone()).await?;
                Ok::<_, E>(Arc::new(client) as Arc<dyn Any + Send + Sync>)
            })
            .await?;
        Ok(shared
            .downcast_ref::<C>()
            .expect("one client type per worker")
            .clone())
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("key", &self.inner.key)
            .field("attempt", &self.inner.attempt)
            .field("worker", &self.inner.worker.worker)
            .field("slots", &self.inner.slots)
            .field("cancelled", &self.inner.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Tells the worker that a seceded task stopped before it took its slot back (on drop, unless
/// it did).
struct Rejoined<'a> {
    secession: &'a dyn Secession,
    done: bool,
}

impl Drop for Rejoined<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.secession.abandon();
        }
    }
}

/// A parameter a task body takes by reference, supplied by the worker from the run's
/// [`TaskContext`] rather than decoded from the message: the context itself, or a [`State`].
/// `task!` calls it for each `name: &Type` parameter.
pub trait FromContext: Send + Sync + 'static {
    /// What the body's reference borrows from (owned by the body's future).
    type Holder: Send + 'static;

    /// The holder of this parameter for the run of `context`.
    ///
    /// # Errors
    /// A [`TaskError`] naming what is missing (a state the worker's registry lacks).
    fn supply(context: &TaskContext) -> Result<Self::Holder, TaskError>;

    /// The parameter, borrowed from its holder.
    fn borrow(holder: &Self::Holder) -> &Self;

    /// The state this parameter needs from the worker (its type and name), if any: workers
    /// check at start that their registry provides it.
    fn needs() -> Option<(TypeId, &'static str)> {
        None
    }
}

impl FromContext for TaskContext {
    type Holder = TaskContext;

    fn supply(context: &TaskContext) -> Result<TaskContext, TaskError> {
        Ok(context.clone())
    }

    fn borrow(holder: &TaskContext) -> &TaskContext {
        holder
    }
}

impl<T: Send + Sync + 'static> FromContext for State<T> {
    type Holder = Arc<State<T>>;

    fn supply(context: &TaskContext) -> Result<Arc<State<T>>, TaskError> {
        context.state::<T>().ok_or_else(|| {
            TaskError::new(format!(
                "this worker has no state of type {} (Registry::with_state)",
                std::any::type_name::<T>()
            ))
        })
    }

    fn borrow(holder: &Arc<State<T>>) -> &State<T> {
        holder
    }

    fn needs() -> Option<(TypeId, &'static str)> {
        Some((TypeId::of::<T>(), std::any::type_name::<T>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(states: States) -> TaskContext {
        let worker = Arc::new(WorkerContext::new("w1", Settings::default(), states));
        TaskContext::new(
            TaskKey::new("f-1").unwrap(),
            2,
            worker,
            <dyn Secession>::none(),
        )
    }

    #[test]
    fn states_are_found_by_type() {
        let mut states = States::new();
        states.insert(41_i64);
        states.insert(String::from("model"));
        let ctx = context(states);
        assert_eq!(**ctx.state::<i64>().unwrap(), 41);
        assert_eq!(ctx.state::<String>().unwrap().as_str(), "model");
        assert!(ctx.state::<u8>().is_none());
        let missing = <State<u8> as FromContext>::supply(&ctx).unwrap_err();
        assert!(missing.message().contains("u8"), "{missing}");
        assert_eq!(
            <State<u8> as FromContext>::needs(),
            Some((TypeId::of::<u8>(), "u8"))
        );
        assert_eq!(<TaskContext as FromContext>::needs(), None);
    }

    #[test]
    fn a_context_knows_its_run() {
        let ctx = context(States::new()).with_slots(BTreeMap::from([("gpu".into(), vec![1])]));
        assert_eq!(
            (ctx.key().as_str(), ctx.attempt(), ctx.worker_id()),
            ("f-1", 2, "w1")
        );
        assert_eq!(ctx.slots()["gpu"], vec![1]);
        assert!(!ctx.is_cancelled());
        ctx.cancellation().cancel();
        assert!(ctx.is_cancelled());
    }

    #[tokio::test]
    async fn the_worker_client_is_built_once() {
        let ctx = context(States::new());
        let failed: Result<u32, &str> = ctx.worker_client(|_| async { Err("down") }).await;
        assert_eq!(failed, Err("down"));
        let first = ctx.worker_client(|_| async { Ok::<_, ()>(7_u32) }).await;
        let second = ctx
            .clone()
            .worker_client(|_| async { Ok::<_, ()>(8_u32) })
            .await;
        assert_eq!((first, second), (Ok(7), Ok(7)));
    }
}
