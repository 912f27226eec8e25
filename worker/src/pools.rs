//! The pools a worker serves ([`rask_common::pool`]): each pool's settings (the names of its
//! queues), and the pool a delivery came from or a message names, so that retries, dead
//! letters and released graph tasks go to their own pool's queues. A worker serving only the
//! default pool (the default) looks nothing up: its messages name no pool.

use std::borrow::Cow;
use std::collections::HashMap;

use rask_common::{Pool, Settings};

/// The pools of `settings.pools`, each once, in order.
pub(crate) fn served(settings: &Settings) -> Vec<Pool> {
    let mut pools: Vec<Pool> = Vec::with_capacity(settings.pools.len());
    for pool in &settings.pools {
        if !pools.contains(pool) {
            pools.push(pool.clone());
        }
    }
    pools
}

/// The served pools and their settings.
pub(crate) struct Pools {
    /// The worker's settings: the default pool's queues.
    base: Settings,
    /// Each served pool with its settings, in the order of `settings.pools`.
    served: Vec<(Pool, Settings)>,
    /// The index in `served` of each task queue shard's pool, by queue name (the routing key
    /// of its deliveries).
    by_queue: HashMap<String, usize>,
}

impl Pools {
    /// The pools `settings` serves.
    pub(crate) fn new(settings: &Settings) -> Self {
        let served: Vec<(Pool, Settings)> = served(settings)
            .into_iter()
            .map(|pool| {
                let own = settings.for_pool(&pool);
                (pool, own)
            })
            .collect();
        let by_queue = served
            .iter()
            .enumerate()
            .flat_map(|(i, (_, s))| s.task_queues().into_iter().map(move |q| (q, i)))
            .collect();
        Pools {
            base: settings.clone(),
            served,
            by_queue,
        }
    }

    /// Each served pool with its settings.
    pub(crate) fn served(&self) -> &[(Pool, Settings)] {
        &self.served
    }

    /// The settings of the pool a message's `pool` field names (`None`: the default pool):
    /// where its retry, or its release as a graph task, is published.
    pub(crate) fn settings_for(&self, pool: Option<&Pool>) -> Cow<'_, Settings> {
        let Some(pool) = pool else {
            return Cow::Borrowed(&self.base);
        };
        match self.served.iter().find(|(p, _)| p == pool) {
            Some((_, settings)) => Cow::Borrowed(settings),
            None => Cow::Owned(self.base.for_pool(pool)),
        }
    }

    /// The settings of the pool whose task queue `routing_key` names (the routing key of a
    /// delivery, kept through the delay ladder): where a copy of it is dead-lettered. The
    /// default pool's for a key of no served pool.
    pub(crate) fn of_queue(&self, routing_key: &str) -> &Settings {
        match self.by_queue.get(routing_key) {
            Some(&i) => &self.served[i].1,
            None => &self.base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_and_messages_find_their_pool() {
        let gpu = Pool::new("gpu").unwrap();
        let settings = Settings {
            pools: vec![Pool::default(), gpu.clone(), gpu.clone()],
            queue_shards: 2,
            ..Settings::default()
        };
        let pools = Pools::new(&settings);
        assert_eq!(pools.served().len(), 2);
        assert_eq!(
            pools.of_queue("rask.tasks.pool.gpu.shard1").queue,
            "rask.tasks.pool.gpu"
        );
        assert_eq!(pools.of_queue("rask.tasks.shard1").queue, "rask.tasks");
        assert_eq!(pools.of_queue("elsewhere").queue, "rask.tasks");
        assert_eq!(pools.settings_for(None).queue, "rask.tasks");
        assert_eq!(
            pools.settings_for(Some(&gpu)).dead_letter_queue,
            "rask.dead.pool.gpu"
        );
        let other = Pool::new("other").unwrap();
        assert_eq!(
            pools.settings_for(Some(&other)).queue,
            "rask.tasks.pool.other"
        );
    }
}
