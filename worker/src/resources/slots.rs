//! The worker's resource slots ([`Capacity`]): what its `resources` setting declares, handed out
//! all-or-nothing to the runs that need some and given back when their [`Held`] guard drops.
//!
//! A resource of at most [`MAX_INDEXED`] units is a set of numbered slots and a run gets the
//! lowest free indices; a larger one (memory in bytes) is a counter. A run takes all it needs
//! at once or nothing, so two runs each holding part of what the other needs cannot wait on
//! each other. Waiters are woken whenever something is given back and try again; a waiter
//! needing much may thus wait while smaller needs keep being served (no queueing order is
//! promised, as with Dask's resources).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use rask_common::resources::{ResourceSlots, Resources, MAX_INDEXED};
use tokio::sync::Notify;

/// What is free of one resource.
#[derive(Debug)]
enum Free {
    /// Numbered slots: the free indices.
    Indexed(BTreeSet<u32>),
    /// A plain amount.
    Counted(u64),
}

impl Free {
    fn amount(&self) -> u64 {
        match self {
            Free::Indexed(free) => free.len() as u64,
            Free::Counted(free) => *free,
        }
    }
}

/// A worker's resources and what of them is free.
#[derive(Debug)]
pub(crate) struct Capacity {
    total: Resources,
    free: Mutex<BTreeMap<String, Free>>,
    /// Woken whenever something is given back.
    returned: Notify,
}

/// What one run holds; given back when the run's last handle on it ([`Held`], and the
/// [`Holding`] a task context shares) drops.
#[derive(Debug)]
pub(crate) struct Held {
    holding: Arc<Holding>,
}

/// The slots a run holds, shared by its [`Held`] guard and its task context, which lends them
/// out while the task waits for tasks it launched ([`Holding::lend`], [`Holding::reclaim`]).
#[derive(Debug)]
pub(crate) struct Holding {
    capacity: Arc<Capacity>,
    /// Per resource: the amount, and the slot indices for indexed ones.
    taken: BTreeMap<String, (u64, Vec<u32>)>,
    /// Whether the slots are lent out (given back to the capacity while the task waits).
    lent: Mutex<bool>,
}

impl Capacity {
    /// All of `total` free.
    pub(crate) fn new(total: Resources) -> Self {
        let free = total
            .iter()
            .map(|(name, amount)| {
                let free = if amount <= MAX_INDEXED {
                    // At most MAX_INDEXED: fits a u32.
                    Free::Indexed((0..u32::try_from(amount).unwrap_or(u32::MAX)).collect())
                } else {
                    Free::Counted(amount)
                };
                (name.to_owned(), free)
            })
            .collect();
        Capacity {
            total,
            free: Mutex::new(free),
            returned: Notify::new(),
        }
    }

    /// What the worker has in all.
    pub(crate) fn total(&self) -> &Resources {
        &self.total
    }

    /// What runs hold now (resources none hold are left out).
    pub(crate) fn in_use(&self) -> Resources {
        let free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        self.total
            .iter()
            .map(|(name, total)| {
                let free = free.get(name).map_or(0, Free::amount);
                (name, total.saturating_sub(free))
            })
            .collect()
    }

    /// Takes `needs` if all of it is free now.
    pub(crate) fn try_take(self: &Arc<Self>, needs: &Resources) -> Option<Held> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let enough = needs
            .iter()
            .all(|(name, needed)| free.get(name).is_some_and(|free| free.amount() >= needed));
        if !enough {
            return None;
        }
        let mut taken = BTreeMap::new();
        for (name, needed) in needs.iter() {
            let indices = match free.get_mut(name).expect("checked above") {
                Free::Indexed(slots) => (0..needed)
                    .map(|_| slots.pop_first().expect("checked above"))
                    .collect(),
                Free::Counted(amount) => {
                    *amount -= needed;
                    Vec::new()
                }
            };
            taken.insert(name.to_owned(), (needed, indices));
        }
        Some(Held {
            holding: Arc::new(Holding {
                capacity: self.clone(),
                taken,
                lent: Mutex::new(false),
            }),
        })
    }

    /// Takes `needs` once all of it is free. `needs` must fit in [`Capacity::total`], or this
    /// waits forever.
    pub(crate) async fn take(self: &Arc<Self>, needs: &Resources) -> Held {
        loop {
            // Registered before trying, so that a return between the try and the wait wakes it.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(held) = self.try_take(needs) {
                return held;
            }
            returned.await;
        }
    }
}

impl Held {
    /// The slot indices held, by resource (indexed resources only).
    pub(crate) fn slots(&self) -> ResourceSlots {
        self.holding
            .taken
            .iter()
            .filter(|(_, (_, indices))| !indices.is_empty())
            .map(|(name, (_, indices))| (name.clone(), indices.clone()))
            .collect()
    }

    /// The slots, shared with the run's task context.
    pub(crate) fn share(&self) -> Arc<Holding> {
        self.holding.clone()
    }
}

impl Holding {
    /// Gives the slots back to the capacity until [`Holding::reclaim`]: for a task that waits
    /// for tasks it launched, which may need the same resources. Lending twice does nothing.
    pub(crate) fn lend(&self) {
        let mut lent = self.lent.lock().unwrap_or_else(PoisonError::into_inner);
        if !*lent {
            self.give_back();
            *lent = true;
        }
    }

    /// Takes back the very slots lent (the same indices, so that what the task set up for
    /// GPU 1 is still GPU 1), once they are free again.
    pub(crate) async fn reclaim(&self) {
        loop {
            // Registered before trying, so that a return between the try and the wait wakes it.
            let returned = self.capacity.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            {
                let mut lent = self.lent.lock().unwrap_or_else(PoisonError::into_inner);
                if !*lent || self.take_exact() {
                    *lent = false;
                    return;
                }
            }
            returned.await;
        }
    }

    /// Takes exactly the slots of `taken` if all of them are free.
    fn take_exact(&self) -> bool {
        let mut free = self
            .capacity
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let all_free = self
            .taken
            .iter()
            .all(|(name, (amount, indices))| match free.get(name) {
                Some(Free::Indexed(slots)) => indices.iter().all(|i| slots.contains(i)),
                Some(Free::Counted(left)) => left >= amount,
                None => false,
            });
        if !all_free {
            return false;
        }
        for (name, (amount, indices)) in &self.taken {
            match free.get_mut(name) {
                Some(Free::Indexed(slots)) => indices.iter().for_each(|i| {
                    slots.remove(i);
                }),
                Some(Free::Counted(left)) => *left -= amount,
                None => {}
            }
        }
        true
    }

    /// Returns the slots to the capacity and wakes its waiters.
    fn give_back(&self) {
        {
            let mut free = self
                .capacity
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, (amount, indices)) in &self.taken {
                match free.get_mut(name) {
                    Some(Free::Indexed(slots)) => slots.extend(indices),
                    Some(Free::Counted(free)) => *free += amount,
                    None => {}
                }
            }
        }
        self.capacity.returned.notify_waiters();
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        // Slots still lent (the task stopped while it waited) were given back already.
        if !*self.lent.get_mut().unwrap_or_else(PoisonError::into_inner) {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn capacity(text: &str) -> Arc<Capacity> {
        Arc::new(Capacity::new(text.parse().unwrap()))
    }

    fn needs(text: &str) -> Resources {
        text.parse().unwrap()
    }

    #[test]
    fn runs_get_distinct_lowest_free_slots_and_give_them_back() {
        let gpus = capacity("gpu=2");
        let a = gpus.try_take(&needs("gpu=1")).unwrap();
        let b = gpus.try_take(&needs("gpu=1")).unwrap();
        assert_eq!(a.slots()["gpu"], vec![0]);
        assert_eq!(b.slots()["gpu"], vec![1]);
        assert!(gpus.try_take(&needs("gpu=1")).is_none());
        assert_eq!(gpus.in_use().to_string(), "gpu=2");
        drop(a);
        assert_eq!(gpus.in_use().to_string(), "gpu=1");
        let c = gpus.try_take(&needs("gpu=1")).unwrap();
        assert_eq!(c.slots()["gpu"], vec![0], "the slot given back");
        drop((b, c));
        assert!(gpus.in_use().is_empty());
        assert_eq!(
            gpus.try_take(&needs("gpu=2")).unwrap().slots()["gpu"],
            vec![0, 1]
        );
    }

    #[test]
    fn all_or_nothing() {
        let both = capacity("gpu=1,mem=4GiB");
        let first = both.try_take(&needs("gpu=1,mem=1GiB")).unwrap();
        // Memory is free, the GPU is not: nothing is taken.
        assert!(both.try_take(&needs("gpu=1,mem=1GiB")).is_none());
        assert_eq!(both.in_use().to_string(), "gpu=1,mem=1GiB");
        let memory = both.try_take(&needs("mem=3GiB")).unwrap();
        assert!(
            memory.slots().is_empty(),
            "counted resources have no indices"
        );
        assert!(both.try_take(&needs("mem=1KiB")).is_none());
        drop((first, memory));
        assert!(both.in_use().is_empty());
        assert!(
            both.try_take(&needs("tpu=1")).is_none(),
            "a resource it lacks"
        );
        assert!(both.try_take(&Resources::new()).unwrap().slots().is_empty());
    }

    #[tokio::test]
    async fn a_waiter_gets_what_is_given_back() {
        let gpus = capacity("gpu=1");
        let held = gpus.try_take(&needs("gpu=1")).unwrap();
        let waiting = tokio::spawn({
            let gpus = gpus.clone();
            async move { gpus.take(&needs("gpu=1")).await.slots() }
        });
        // The waiter cannot finish while the slot is held (it is given back only below).
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        let slots = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the slot is given back")
            .unwrap();
        assert_eq!(slots["gpu"], vec![0]);
        assert!(
            gpus.in_use().is_empty(),
            "given back when the waiter's guard dropped"
        );
    }

    #[tokio::test]
    async fn many_waiters_never_share_a_slot() {
        let gpus = capacity("gpu=3");
        let in_use = Arc::new(Mutex::new(BTreeSet::new()));
        let runs = (0..30).map(|_| {
            let (gpus, in_use) = (gpus.clone(), in_use.clone());
            tokio::spawn(async move {
                let held = gpus.take(&needs("gpu=1")).await;
                let slot = held.slots()["gpu"][0];
                assert!(in_use.lock().unwrap().insert(slot), "slot {slot} shared");
                tokio::task::yield_now().await;
                assert!(in_use.lock().unwrap().remove(&slot));
                drop(held);
            })
        });
        for run in futures::future::join_all(runs).await {
            run.unwrap();
        }
        assert!(gpus.in_use().is_empty());
    }
}
