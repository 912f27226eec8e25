//! The functions a worker can run, by name, with their arguments decoded from MessagePack, and
//! the worker state they share (built once per worker process, before it consumes).

use std::any::TypeId;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use rask_common::builtins;
use rask_common::context::{BoxFuture, States};
use rask_common::message::{decode_args, encode_value};
use rask_common::{Invocation, Task, TaskContext, TaskError};
use rask_demo::image::LumaTable;

use crate::error::Error;
use crate::foreign::{Foreign, ForeignFunction};
use crate::pace::Pace;

/// MessagePack's empty array and nil.
const EMPTY_ARRAY: u8 = 0x90;
const NIL: u8 = 0xc0;

/// A prepared call whose result is already MessagePack.
pub(crate) type ErasedInvocation = Invocation<Vec<u8>>;

/// Decodes arguments and prepares a call of one registered function.
pub(crate) trait Callable: Send + Sync {
    fn prepare(
        &self,
        args: &[u8],
        context: &(dyn Fn() -> TaskContext + Sync),
    ) -> Result<ErasedInvocation, String>;
    fn signature(&self) -> &'static str;
    fn states(&self) -> Vec<(TypeId, &'static str)>;
}

struct Typed<T>(std::marker::PhantomData<fn() -> T>);

impl<T: Task> Callable for Typed<T> {
    fn prepare(
        &self,
        args: &[u8],
        context: &(dyn Fn() -> TaskContext + Sync),
    ) -> Result<ErasedInvocation, String> {
        let args: T::Args = match decode_args(args) {
            Ok(args) => args,
            // A task without parameters takes `()`, which MessagePack writes as nil; callers
            // that always send an argument array (the CLI) send `[]` for it.
            Err(_) if args == [EMPTY_ARRAY] => decode_args(&[NIL]).map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        let encode = |value: T::Output| {
            encode_value(&value).map_err(|e| TaskError::new(format!("result does not encode: {e}")))
        };
        Ok(match T::invoke_in(args, context) {
            Invocation::Blocking(f) => Invocation::Blocking(Box::new(move || encode(f()?))),
            Invocation::Async(fut) => {
                Invocation::Async(Box::pin(async move { encode(fut.await?) }))
            }
        })
    }

    fn signature(&self) -> &'static str {
        std::any::type_name::<T::Args>()
    }

    fn states(&self) -> Vec<(TypeId, &'static str)> {
        T::states()
    }
}

/// Builds one worker state value and adds it to the states.
type StateInit = Arc<
    dyn Fn() -> BoxFuture<'static, Result<AddState, Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Sync,
>;

/// Adds a built state value to the states.
type AddState = Box<dyn FnOnce(&mut States) + Send>;

/// Why a call could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrepareError {
    /// No function has that name; carries the names that exist.
    Unknown(Vec<String>),
    /// The arguments do not decode as the function's parameters.
    BadArguments {
        expected: &'static str,
        error: String,
    },
}

/// The functions a worker runs, by name, and the state they share. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    /// Rust tasks under their `NAME`, foreign functions under the name given at run time.
    functions: BTreeMap<Cow<'static, str>, Arc<dyn Callable>>,
    /// How to build each state value (its type's name, its function), in order.
    states: Vec<(&'static str, StateInit)>,
    /// How long the plain functions take (shared by clones).
    pace: Arc<Pace>,
}

impl Registry {
    /// The run times of its plain functions, which decide which run inline.
    pub(crate) fn pace(&self) -> &Pace {
        &self.pace
    }

    /// A registry with no functions.
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry with the stock functions of `rask-worker` ([`rask_common::builtins`] and the
    /// demo's [`rask_demo::tasks`]) and the state they take: the [`LumaTable`] of
    /// `image_stats`, built once per worker.
    pub fn with_builtins() -> Self {
        let registry = Registry::new()
            .with_state(|| async { Ok::<_, std::convert::Infallible>(LumaTable::new()) })
            .with::<builtins::inc>()
            .with::<builtins::add>()
            .with::<builtins::leaf>()
            .with::<builtins::sum>()
            .with::<builtins::sum_ints>()
            .with::<builtins::echo>()
            .with::<builtins::sleep_ms>()
            .with::<builtins::straggle>()
            .with::<builtins::spin_hash>()
            .with::<builtins::fail>()
            .with::<rask_demo::image_stats>()
            .with::<rask_demo::image_summary>()
            .with::<rask_demo::merge_image_summaries>()
            .with::<rask_common::bag_ops::bag_items>()
            .with::<rask_common::bag_ops::bag_concat>()
            .with::<rask_common::bag_ops::bag_split>()
            .with::<rask_common::bag_ops::bag_count>()
            .with::<rask_common::bag_ops::bag_count_merge>()
            .with::<rask_common::bag_ops::bag_mean_part>()
            .with::<rask_common::bag_ops::bag_mean_merge>()
            .with::<rask_common::bag_ops::bag_mean>()
            .with::<rask_common::bag_ops::bag_top>()
            .with::<rask_common::bag_ops::bag_top_merge>()
            .with::<rask_common::bag_ops::bag_top_one>()
            .with::<rask_common::bag_ops::bag_top_by_merge>()
            .with::<rask_common::bag_ops::bag_distinct>()
            .with::<rask_common::bag_ops::bag_distinct_merge>()
            .with::<rask_common::bag_ops::bag_frequencies>()
            .with::<rask_common::bag_ops::bag_frequencies_merge>();
        // The demo's `--from URL`: batches read from a blob store.
        #[cfg(feature = "blobs")]
        let registry = registry.with::<rask_demo::image_stats_from>();
        registry
    }

    /// Adds task `T` (replacing a function of the same name).
    pub fn with<T: Task>(mut self) -> Self {
        self.functions.insert(
            Cow::Borrowed(T::NAME),
            Arc::new(Typed::<T>(std::marker::PhantomData)),
        );
        self
    }

    /// Adds a function implemented outside Rust under `name` (replacing a function of the same
    /// name): it receives the task's arguments as MessagePack and returns its result as
    /// MessagePack (see [`crate::foreign`]); the worker runs it as it runs a Rust task.
    pub fn with_foreign(mut self, name: impl Into<String>, function: impl ForeignFunction) -> Self {
        self.functions.insert(
            Cow::Owned(name.into()),
            Arc::new(Foreign(Arc::new(function))),
        );
        self
    }

    /// Adds worker state of type `S`: `init` runs once when the worker starts, before it
    /// consumes (e.g. loading a model, opening a connection pool), and task bodies take the
    /// value by reference (`model: &State<S>`, see [`rask_common::task!`]), shared by every
    /// task the worker runs. One value per type (a later `with_state` of the same type
    /// replaces it); several types may be added. `init` runs again only if the worker is run
    /// again (a new [`crate::Worker`]), not on a reconnect.
    ///
    /// If `init` fails, the worker does not start: [`crate::Worker::run`] returns
    /// [`Error::State`], a configuration error (exit code [`crate::EXIT_CONFIG`], 78), since a
    /// restart with the same code and environment would fail again. An `init` that depends on
    /// a service that may be briefly down should retry within itself.
    pub fn with_state<S, F, Fut, E>(mut self, init: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let init: StateInit = Arc::new(move || {
            let built = init();
            Box::pin(async move {
                let value = built.await.map_err(Into::into)?;
                Ok(Box::new(move |states: &mut States| states.insert(value)) as AddState)
            })
        });
        self.states.push((std::any::type_name::<S>(), init));
        self
    }

    /// Builds the worker's states, in the order they were added, calling `built` with each
    /// one's type name once it is built (the worker counts them in its metrics); then checks
    /// that every function's states are among them.
    ///
    /// # Errors
    /// [`Error::State`] for the first `init` that fails; [`Error::MissingState`] for a function
    /// that takes a state no `with_state` builds.
    pub(crate) async fn build_states(&self, built: impl Fn(&'static str)) -> Result<States, Error> {
        let mut states = States::new();
        for (state, init) in &self.states {
            let started = std::time::Instant::now();
            let add = init()
                .await
                .map_err(|source| Error::State { state, source })?;
            add(&mut states);
            built(state);
            tracing::info!(state, took = ?started.elapsed(), "worker state built");
        }
        for (task, callable) in &self.functions {
            // Foreign functions (the only ones under owned names) take no states.
            let Cow::Borrowed(task) = task else { continue };
            if let Some((_, state)) = callable
                .states()
                .into_iter()
                .find(|(id, _)| !states.contains(*id))
            {
                return Err(Error::MissingState { task, state });
            }
        }
        Ok(states)
    }

    /// Whether a function is registered under `name`.
    pub(crate) fn knows(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.functions.keys().map(|n| n.to_string()).collect()
    }

    /// Decodes `args` for function `name` and prepares the call; `context` builds the run's
    /// context, called only for a function that takes one.
    pub(crate) fn prepare(
        &self,
        name: &str,
        args: &[u8],
        context: &(dyn Fn() -> TaskContext + Sync),
    ) -> Result<ErasedInvocation, PrepareError> {
        let callable = self
            .functions
            .get(name)
            .ok_or_else(|| PrepareError::Unknown(self.names()))?;
        callable
            .prepare(args, context)
            .map_err(|error| PrepareError::BadArguments {
                expected: callable.signature(),
                error,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rask_common::message::decode_value;

    /// A context for calls of functions that take one (none of these tests' do).
    fn context() -> TaskContext {
        panic!("these functions take no context")
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let registry = Registry::new().with::<builtins::inc>();
        let err = registry.prepare("nope", &[], &context).err().unwrap();
        assert_eq!(err, PrepareError::Unknown(vec!["inc".into()]));
    }

    #[test]
    fn bad_arguments_name_the_expected_types() {
        let registry = Registry::with_builtins();
        let args = encode_value(&("text",)).unwrap();
        match registry.prepare("inc", &args, &context).err().unwrap() {
            PrepareError::BadArguments { expected, .. } => assert_eq!(expected, "(i64,)"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_stock_registry_builds_the_luma_table_image_stats_takes_once() {
        use rask_common::context::{Secession, WorkerContext};
        use rask_demo::image::{analyze_batch, generate_batch, BatchStats};

        let registry = Registry::with_builtins();
        let built = std::cell::RefCell::new(Vec::new());
        let states = registry
            .build_states(|state| built.borrow_mut().push(state))
            .await
            .unwrap();
        assert_eq!(built.into_inner(), [std::any::type_name::<LumaTable>()]);
        let worker = Arc::new(WorkerContext::new("w", Default::default(), states));
        let context = || {
            let key = rask_common::TaskKey::new("t").unwrap();
            TaskContext::new(key, 0, worker.clone(), <dyn Secession>::none())
        };
        let batch = generate_batch(5, 2, 16, 16);
        let args = encode_value(&(batch.clone(),)).unwrap();
        let Ok(Invocation::Blocking(f)) = registry.prepare("image_stats", &args, &context) else {
            panic!("image_stats is a plain function");
        };
        let stats: BatchStats = decode_value(&f().unwrap()).unwrap();
        assert_eq!(stats, analyze_batch(&batch).unwrap());
    }

    rask_common::task! {
        /// Test: no parameters.
        fn constant() -> i64 { 7 }
    }

    #[test]
    fn tasks_without_parameters_take_nil_or_an_empty_array() {
        let registry = Registry::new().with::<constant>();
        for args in [encode_value(&()).unwrap(), vec![EMPTY_ARRAY]] {
            let Ok(Invocation::Blocking(f)) = registry.prepare("constant", &args, &context) else {
                panic!("constant takes {args:?}");
            };
            assert_eq!(decode_value::<i64>(&f().unwrap()).unwrap(), 7);
        }
    }

    /// Test: a worker state.
    struct Table(Vec<i64>);

    rask_common::task! {
        /// Test: looks `i` up in the worker's table.
        fn lookup(table: &rask_common::State<Table>, i: usize) -> Option<i64> { table.0.get(i).copied() }
    }

    #[tokio::test]
    async fn states_are_built_once_in_order_and_checked_against_the_tasks() {
        let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = builds.clone();
        let registry = Registry::new().with::<lookup>().with_state(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move { Ok::<_, std::io::Error>(Table(vec![10, 20, n as i64])) }
        });
        let states = registry.build_states(|_| ()).await.unwrap();
        assert_eq!(builds.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(states.get::<Table>().unwrap().0, vec![10, 20, 0]);

        let missing = Registry::new().with::<lookup>().build_states(|_| ()).await;
        let err = missing.expect_err("lookup's table is missing");
        assert!(
            matches!(err, Error::MissingState { task: "lookup", .. }),
            "{err}"
        );
        assert_eq!(err.exit_code(), crate::EXIT_CONFIG);

        let failing = Registry::new()
            .with_state(|| async { Err::<Table, _>("no table here") })
            .build_states(|_| ())
            .await;
        let err = failing.expect_err("the state fails");
        assert_eq!(
            err.to_string(),
            format!(
                "building worker state {} failed: no table here",
                std::any::type_name::<Table>()
            )
        );
        assert_eq!(err.exit_code(), crate::EXIT_CONFIG);
    }

    #[test]
    fn prepares_and_encodes_results() {
        let registry = Registry::with_builtins();
        let Ok(Invocation::Blocking(f)) =
            registry.prepare("inc", &encode_value(&(41,)).unwrap(), &context)
        else {
            panic!("inc is a blocking task");
        };
        assert_eq!(decode_value::<i64>(&f().unwrap()).unwrap(), 42);
    }
}
