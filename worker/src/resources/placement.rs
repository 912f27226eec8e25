//! Where a task that needs more than this worker has in all can run: on another live worker of
//! its queue that has enough ([`Placement::Elsewhere`]), or nowhere ([`Placement::Nowhere`],
//! naming the resource). The live workers' resources come from the worker registry
//! ([`rask_common::ops::live_workers`]), read by a [`Census`] at most once per heartbeat
//! interval, off the path of tasks that fit (only such oversized tasks ask), and read afresh
//! before it concludes "nowhere", so that a worker that just started is not missed.

use rask_common::ops;
use rask_common::{Pool, Resources, Settings, Store};
use tokio::sync::Mutex;
use tokio::time::{Duration, Instant};

/// Where a task can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Some live worker of the queue has all it needs.
    Elsewhere,
    /// No live worker has all it needs.
    Nowhere(Shortfall),
}

/// The resource that keeps a task from running anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shortfall {
    /// Its name.
    pub(crate) resource: String,
    /// The amount the task needs.
    pub(crate) needed: u64,
    /// The most any live worker that has the task's other needs has of it.
    pub(crate) most: u64,
}

/// Where a task needing `needs` can run among workers with the resources `live`.
///
/// When none fits, the resource named is the first (by name) that even the best-endowed
/// worker having the task's other needs lacks; for a single need that is simply the most any
/// worker has.
pub(crate) fn place<'a>(
    needs: &Resources,
    live: impl IntoIterator<Item = &'a Resources>,
) -> Placement {
    let live: Vec<&Resources> = live.into_iter().collect();
    if live.iter().any(|has| has.lacks(needs).is_none()) {
        return Placement::Elsewhere;
    }
    let most = |resource: &str| live.iter().map(|has| has.get(resource)).max().unwrap_or(0);
    // First a need no worker has enough of on its own: linear however many names a (hostile)
    // message lists.
    if let Some((resource, needed)) = needs.iter().find(|(name, needed)| most(name) < *needed) {
        return Placement::Nowhere(Shortfall {
            resource: resource.to_owned(),
            needed,
            most: most(resource),
        });
    }
    // Each need is some worker's (so they are no more than the workers declare): which one
    // does the best worker having the others lack?
    for (resource, needed) in needs.iter() {
        let others: Resources = needs.iter().filter(|(name, _)| *name != resource).collect();
        let most = live
            .iter()
            .filter(|has| has.lacks(&others).is_none())
            .map(|has| has.get(resource))
            .max()
            .unwrap_or(0);
        if most < needed {
            return Placement::Nowhere(Shortfall {
                resource: resource.to_owned(),
                needed,
                most,
            });
        }
    }
    unreachable!("some need is short on every worker, or one worker has them all")
}

/// The resources of the live workers of this worker's queue, with the pools each serves, cached
/// for a heartbeat interval.
pub(crate) struct Census {
    queue: String,
    id: String,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Vec<Serving>)>>,
}

/// A live worker's pools and resources.
type Serving = (Vec<Pool>, Resources);

impl Census {
    /// A census for worker `id` of `settings.queue`.
    pub(crate) fn new(settings: &Settings, id: &str) -> Self {
        Census {
            queue: settings.queue.clone(),
            id: id.to_owned(),
            ttl: settings.heartbeat_interval,
            cached: Mutex::new(None),
        }
    }

    /// Where a task of `pool` needing `needs` can run, among the live workers serving that pool
    /// (this worker, which has `own`, counted among them); a cached view may say
    /// [`Placement::Elsewhere`], only a fresh read says [`Placement::Nowhere`].
    ///
    /// # Errors
    /// Reading the registry failed.
    pub(crate) async fn place(
        &self,
        store: &Store,
        pool: &Pool,
        own: &Resources,
        needs: &Resources,
    ) -> rask_common::Result<Placement> {
        let of_pool = |live: &[Serving]| -> Vec<Resources> {
            live.iter()
                .filter(|(pools, _)| pools.contains(pool))
                .map(|(_, resources)| resources.clone())
                .collect()
        };
        let mut cached = self.cached.lock().await;
        if let Some((read, live)) = cached.as_ref() {
            if read.elapsed() < self.ttl {
                let live = of_pool(live);
                if let Placement::Elsewhere = place(needs, live.iter().chain([own])) {
                    return Ok(Placement::Elsewhere);
                }
            }
        }
        let live: Vec<Serving> = ops::live_workers(store)
            .await?
            .into_iter()
            .filter(|entry| entry.queue == self.queue && entry.id != self.id)
            .map(|entry| (entry.pools, entry.resources))
            .collect();
        let placement = place(needs, of_pool(&live).iter().chain([own]));
        *cached = Some((Instant::now(), live));
        Ok(placement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> Resources {
        text.parse().unwrap()
    }

    fn nowhere(resource: &str, needed: u64, most: u64) -> Placement {
        Placement::Nowhere(Shortfall {
            resource: resource.into(),
            needed,
            most,
        })
    }

    #[test]
    fn a_worker_with_enough_takes_it() {
        let live = [r(""), r("gpu=1"), r("gpu=2,mem=8GiB")];
        assert_eq!(place(&r("gpu=2"), &live), Placement::Elsewhere);
        assert_eq!(place(&r("gpu=1,mem=8GiB"), &live), Placement::Elsewhere);
    }

    #[test]
    fn nowhere_names_the_resource_and_the_most_any_worker_has() {
        let live = [r(""), r("gpu=1"), r("gpu=2,mem=8GiB")];
        assert_eq!(place(&r("gpu=3"), &live), nowhere("gpu", 3, 2));
        assert_eq!(place(&r("tpu=1"), &live), nowhere("tpu", 1, 0));
        assert_eq!(place(&r("gpu=1"), &[r("")]), nowhere("gpu", 1, 0));
        assert_eq!(place(&r("gpu=1"), &[]), nowhere("gpu", 1, 0));
    }

    #[test]
    fn a_message_listing_many_needs_is_answered_by_the_first_missing_one() {
        let needs: Resources = (0..100_000).map(|i| (format!("r{i:06}"), 1)).collect();
        let live = [r("r000000=1,gpu=2")];
        assert_eq!(place(&needs, &live), nowhere("r000001", 1, 0));
    }

    #[test]
    fn needs_no_single_worker_has_together_name_what_is_missing() {
        // GPUs on one worker, memory on another: with 64GiB of memory there is no GPU.
        let live = [r("gpu=2,mem=16GiB"), r("mem=128GiB")];
        assert_eq!(place(&r("gpu=1,mem=64GiB"), &live), nowhere("gpu", 1, 0));
    }
}
