//! The resource slots of the run in progress, for its body to read with [`held_slots`], and the
//! [`Held`] guard moved into the body so that the slots are given back exactly when the body
//! ends: when it returns or panics, when an async body is dropped at its time limit, and, for a
//! plain function past its time limit, only when its thread finally returns (the thread still
//! uses what it holds, say its GPU, so no other run gets that slot before).
//!
//! The slots are scoped to the body: a task-local for an async body, a thread-local for the
//! duration of a plain function's call. (Task bodies will read them from their `TaskContext`;
//! this is what hands them over until then.)

use std::cell::RefCell;

use rask_common::ResourceSlots;

use super::slots::Held;
use crate::registry::ErasedInvocation;
use rask_common::Invocation;

tokio::task_local! {
    static ASYNC_SLOTS: ResourceSlots;
}

thread_local! {
    static THREAD_SLOTS: RefCell<Option<ResourceSlots>> = const { RefCell::new(None) };
}

/// The resource slot indices the running task holds, by resource name (`{"gpu": [1]}`), as
/// assigned by its worker from the `resources` it declares: read it from inside a task body
/// to pick the device. Empty outside a task body, for a task that needs no resources, or for
/// resources too large to be numbered (over [`rask_common::resources::MAX_INDEXED`] units,
/// such as memory in bytes). An async body sees them in its own task only (not in tasks it
/// spawns); a plain function on its own thread.
pub fn held_slots() -> ResourceSlots {
    ASYNC_SLOTS
        .try_with(Clone::clone)
        .ok()
        .or_else(|| THREAD_SLOTS.with(|slots| slots.borrow().clone()))
        .unwrap_or_default()
}

/// `invocation` holding `held` for as long as its body runs, its slots readable by
/// [`held_slots`] from inside it.
pub(crate) fn holding(invocation: ErasedInvocation, held: Held) -> ErasedInvocation {
    let slots = held.slots();
    match invocation {
        Invocation::Blocking(body) => Invocation::Blocking(Box::new(move || {
            let _held = held;
            let _scope = ThreadScope::enter(slots);
            body()
        })),
        Invocation::Async(body) => Invocation::Async(Box::pin(async move {
            let _held = held;
            ASYNC_SLOTS.scope(slots, body).await
        })),
    }
}

/// Sets this thread's slots until dropped (also when the body panics), then restores what was
/// there before.
struct ThreadScope(Option<ResourceSlots>);

impl ThreadScope {
    fn enter(slots: ResourceSlots) -> Self {
        ThreadScope(THREAD_SLOTS.with(|current| current.replace(Some(slots))))
    }
}

impl Drop for ThreadScope {
    fn drop(&mut self) {
        let previous = self.0.take();
        THREAD_SLOTS.with(|current| *current.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::slots::Capacity;
    use super::*;

    fn held(capacity: &Arc<Capacity>) -> Held {
        capacity.try_take(&"gpu=1".parse().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn bodies_see_their_slots_and_give_them_back_when_they_end() {
        let gpus = Arc::new(Capacity::new("gpu=2".parse().unwrap()));
        let _first = held(&gpus);
        let plain = holding(
            Invocation::Blocking(Box::new(|| Ok(format!("{:?}", held_slots()).into_bytes()))),
            held(&gpus),
        );
        let Invocation::Blocking(body) = plain else {
            unreachable!()
        };
        assert_eq!(gpus.in_use().to_string(), "gpu=2");
        assert_eq!(body().unwrap(), b"{\"gpu\": [1]}");
        assert_eq!(gpus.in_use().to_string(), "gpu=1", "given back at the end");
        assert!(held_slots().is_empty(), "not outside the body");

        let panicking = holding(
            Invocation::Blocking(Box::new(|| panic!("boom"))),
            held(&gpus),
        );
        let Invocation::Blocking(body) = panicking else {
            unreachable!()
        };
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err());
        assert_eq!(gpus.in_use().to_string(), "gpu=1", "given back on a panic");
        assert!(held_slots().is_empty());

        let later = holding(
            Invocation::Async(Box::pin(async {
                tokio::task::yield_now().await;
                Ok(format!("{:?}", held_slots()).into_bytes())
            })),
            held(&gpus),
        );
        let Invocation::Async(body) = later else {
            unreachable!()
        };
        assert_eq!(body.await.unwrap(), b"{\"gpu\": [1]}");
        assert_eq!(gpus.in_use().to_string(), "gpu=1");

        let dropped = holding(
            Invocation::Async(Box::pin(std::future::pending())),
            held(&gpus),
        );
        assert_eq!(gpus.in_use().to_string(), "gpu=2");
        drop(dropped);
        assert_eq!(
            gpus.in_use().to_string(),
            "gpu=1",
            "given back when dropped"
        );
    }
}
