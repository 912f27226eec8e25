//! The functions a worker can run, by name, with their arguments decoded from MessagePack.

use std::collections::BTreeMap;
use std::sync::Arc;

use rask_common::builtins;
use rask_common::message::{decode_args, encode_value};
use rask_common::{Invocation, Task, TaskError};

use crate::pace::Pace;

/// MessagePack's empty array and nil.
const EMPTY_ARRAY: u8 = 0x90;
const NIL: u8 = 0xc0;

/// A prepared call whose result is already MessagePack.
pub(crate) type ErasedInvocation = Invocation<Vec<u8>>;

/// Decodes arguments and prepares a call of one registered function.
trait Callable: Send + Sync {
    fn prepare(&self, args: &[u8]) -> Result<ErasedInvocation, String>;
    fn signature(&self) -> &'static str;
}

struct Typed<T>(std::marker::PhantomData<fn() -> T>);

impl<T: Task> Callable for Typed<T> {
    fn prepare(&self, args: &[u8]) -> Result<ErasedInvocation, String> {
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
        Ok(match T::invoke(args) {
            Invocation::Blocking(f) => Invocation::Blocking(Box::new(move || encode(f()?))),
            Invocation::Async(fut) => {
                Invocation::Async(Box::pin(async move { encode(fut.await?) }))
            }
        })
    }

    fn signature(&self) -> &'static str {
        std::any::type_name::<T::Args>()
    }
}

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

/// The functions a worker runs, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    functions: BTreeMap<&'static str, Arc<dyn Callable>>,
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

    /// A registry with the stock functions of `rask-worker` ([`rask_common::builtins`]).
    pub fn with_builtins() -> Self {
        Registry::new()
            .with::<builtins::inc>()
            .with::<builtins::add>()
            .with::<builtins::leaf>()
            .with::<builtins::sum>()
            .with::<builtins::sum_ints>()
            .with::<builtins::echo>()
            .with::<builtins::sleep_ms>()
            .with::<builtins::spin_hash>()
            .with::<builtins::fail>()
            .with::<builtins::image_stats>()
            .with::<builtins::image_summary>()
            .with::<builtins::merge_image_summaries>()
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
            .with::<rask_common::bag_ops::bag_frequencies_merge>()
    }

    /// Adds task `T` (replacing a function of the same name).
    pub fn with<T: Task>(mut self) -> Self {
        self.functions
            .insert(T::NAME, Arc::new(Typed::<T>(std::marker::PhantomData)));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.functions.keys().map(|n| (*n).to_owned()).collect()
    }

    /// Decodes `args` for function `name` and prepares the call.
    pub(crate) fn prepare(
        &self,
        name: &str,
        args: &[u8],
    ) -> Result<ErasedInvocation, PrepareError> {
        let callable = self
            .functions
            .get(name)
            .ok_or_else(|| PrepareError::Unknown(self.names()))?;
        callable
            .prepare(args)
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

    #[test]
    fn unknown_names_list_the_known_ones() {
        let registry = Registry::new().with::<builtins::inc>();
        let err = registry.prepare("nope", &[]).err().unwrap();
        assert_eq!(err, PrepareError::Unknown(vec!["inc".into()]));
    }

    #[test]
    fn bad_arguments_name_the_expected_types() {
        let registry = Registry::with_builtins();
        let args = encode_value(&("text",)).unwrap();
        match registry.prepare("inc", &args).err().unwrap() {
            PrepareError::BadArguments { expected, .. } => assert_eq!(expected, "(i64,)"),
            other => panic!("unexpected {other:?}"),
        }
    }

    rask_common::task! {
        /// Test: no parameters.
        fn constant() -> i64 { 7 }
    }

    #[test]
    fn tasks_without_parameters_take_nil_or_an_empty_array() {
        let registry = Registry::new().with::<constant>();
        for args in [encode_value(&()).unwrap(), vec![EMPTY_ARRAY]] {
            let Ok(Invocation::Blocking(f)) = registry.prepare("constant", &args) else {
                panic!("constant takes {args:?}");
            };
            assert_eq!(decode_value::<i64>(&f().unwrap()).unwrap(), 7);
        }
    }

    #[test]
    fn prepares_and_encodes_results() {
        let registry = Registry::with_builtins();
        let Ok(Invocation::Blocking(f)) = registry.prepare("inc", &encode_value(&(41,)).unwrap())
        else {
            panic!("inc is a blocking task");
        };
        assert_eq!(decode_value::<i64>(&f().unwrap()).unwrap(), 42);
    }
}
