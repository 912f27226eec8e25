//! `Client::purge`: every task queue shard and every delay queue emptied, then every stored
//! result of the deployment deleted; [`Purged`] says what was removed where.
//!
//! Task queue shards and the delay queues (the fixed ladder of [`rask_common::delay`]) are known
//! from the settings, for the default pool and every other pool that the settings name
//! (`pools`, `routes`), the client published to, or a live worker serves
//! ([`rask_common::pool`]). Each delay queue (and each shard of a pool other than the default)
//! is purged on a channel of its own, so that one that does not exist (404 NOT_FOUND, which
//! closes its channel: no publisher has declared the ladder yet) is simply skipped.

use lapin::options::QueuePurgeOptions;
use lapin::Connection;
use rask_common::ops;
use rask_common::{broker, delay, Pool, Settings, Store};
use serde::Serialize;

use crate::connection::BrokerLink;
use crate::error::Result;
use crate::status::is_not_found;

/// What a purge removed (see [`crate::Client::purge_report`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// The task queue shards, then the delay queues, each with the messages removed from it:
    /// the default pool's, then each other pool's.
    pub queues: Vec<PurgedQueue>,
    /// Stored results deleted.
    pub results: u64,
}

/// One queue a purge emptied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgedQueue {
    /// Its name.
    pub name: String,
    /// Whether it is a delay queue (tasks waiting for their countdown, eta or retry) rather
    /// than a task queue shard.
    pub delayed: bool,
    /// Messages removed from it.
    pub messages: u32,
}

impl Purged {
    /// Messages removed from all queues.
    pub fn messages(&self) -> u64 {
        self.queues.iter().map(|q| u64::from(q.messages)).sum()
    }

    /// Messages removed from the delay queues alone.
    pub fn delayed_messages(&self) -> u64 {
        let delayed = self.queues.iter().filter(|q| q.delayed);
        delayed.map(|q| u64::from(q.messages)).sum()
    }
}

/// Empties the task queue shards and delay queues of every pool ([`purge_pool`]): the default
/// one, those `settings` name, those this client published to and those live workers serve;
/// then deletes every stored result
/// of its prefix.
///
/// # Errors
/// [`crate::Error`] if RabbitMQ or Redis fails (a delay queue that no longer exists is no
/// error).
pub(crate) async fn purge(link: &BrokerLink, settings: &Settings, store: &Store) -> Result<Purged> {
    let mut pools = settings.named_pools();
    pools.extend(link.declared_pools());
    for worker in ops::live_workers(store).await? {
        pools.extend(worker.pools.into_iter().filter(|p| !p.is_default()));
    }
    pools.sort();
    pools.dedup();
    let mut purged = purge_pool(link, settings, None).await?;
    for pool in &pools {
        let other = purge_pool(link, settings, Some(pool)).await?;
        purged.extend(other);
    }
    let results = store.purge().await?;
    Ok(Purged {
        queues: purged,
        results,
    })
}

/// Empties the task queue shards and delay queues of `pool` (`None`: the default pool, whose
/// shards are purged on the client's channel, again after a lost connection). The other
/// queues are purged each on a channel of its own, on a connection of its own, so that one
/// that does not exist (a pool or ladder nobody declared yet) is skipped.
async fn purge_pool(
    link: &BrokerLink,
    settings: &Settings,
    pool: Option<&Pool>,
) -> Result<Vec<PurgedQueue>> {
    let mut queues = Vec::new();
    if pool.is_none() {
        for name in settings.task_queues() {
            let queue = name.as_str();
            let messages = link
                .run(|channel| async move {
                    Ok(channel
                        .queue_purge(queue.into(), QueuePurgeOptions::default())
                        .await?)
                })
                .await?;
            queues.push(PurgedQueue {
                name,
                delayed: false,
                messages,
            });
        }
    }
    let own = pool.map(|p| settings.for_pool(p));
    let settings = own.as_ref().unwrap_or(settings);
    let shards = own.as_ref().map(Settings::task_queues).unwrap_or_default();
    let optional = shards.into_iter().map(|name| (name, false)).chain(
        delay::queue_names(settings)
            .into_iter()
            .map(|name| (name, true)),
    );
    let connection = broker::connect(settings, "rask purge").await?;
    let result = async {
        for (name, delayed) in optional {
            if let Some(messages) = purge_queue(&connection, &name).await? {
                queues.push(PurgedQueue {
                    name,
                    delayed,
                    messages,
                });
            }
        }
        Ok::<_, crate::Error>(())
    }
    .await;
    let _ = connection.close(200, "purged".into()).await;
    result?;
    Ok(queues)
}

/// Purges `queue` on a channel of its own: the messages removed, or `None` if there is no such
/// queue.
async fn purge_queue(connection: &Connection, queue: &str) -> Result<Option<u32>> {
    let channel = connection.create_channel().await?;
    match channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
    {
        Ok(messages) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(Some(messages))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
