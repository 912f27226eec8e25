//! The state of a deployment in one read, for `rask status` and the dashboard: [`Monitor`]
//! holds its own connections (so that polling every second costs no reconnect) and reads
//! [`ClusterStatus`]: the task and dead-letter queues as RabbitMQ reports them (passive
//! declarations), the live workers from the worker registry, their summed counters and
//! throughput, and their recent failures; per pool ([`rask_common::pool`]): its workers and
//! queue depth, and the routes no live worker serves.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use rask_common::ops::{self, RecentError, WorkerCounters, WorkerEntry};
use rask_common::{broker, Pool, Settings, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::error::Result;
use crate::pools::{unserved, UnservedRoute};
use crate::run::{broadcast, RunReport};

/// How many recent failures [`ClusterStatus::recent_errors`] keeps.
const RECENT: usize = 10;

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueRole {
    /// The task queue workers consume.
    Tasks,
    /// The dead-letter queue.
    DeadLetter,
}

/// One queue as RabbitMQ reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// Its name.
    pub name: String,
    /// The pool it belongs to.
    pub pool: Pool,
    /// What it is for.
    pub role: QueueRole,
    /// Messages ready in it (`None`: the queue does not exist yet).
    pub messages: Option<u32>,
    /// Consumers attached to it (`None`: the queue does not exist yet).
    pub consumers: Option<u32>,
}

/// A deployment at one moment (see the module docs). Serialized as the JSON of
/// `rask status --json` and of the dashboard's `/api/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    /// The task queue (each shard's, with `queue_shards > 1`), then the dead-letter queue: of
    /// the default pool, then of each other pool (see `pools`).
    pub queues: Vec<QueueStatus>,
    /// Messages in the dead-letter queues of every pool (0 when none exists).
    pub dead_letters: u32,
    /// The live workers, sorted by id.
    pub workers: Vec<WorkerEntry>,
    /// The workers' counters, summed.
    pub totals: WorkerCounters,
    /// Tasks finished per second over the workers' last heartbeat intervals, summed.
    pub tasks_per_second: f64,
    /// The latest failures across workers, newest first (at most 10).
    pub recent_errors: Vec<RecentError>,
    /// Each pool: the default one, those the settings name (`pools`, `routes`) and those live
    /// workers serve, sorted by name with the default pool first.
    pub pools: Vec<PoolStatus>,
    /// The routing table's entries (setting `routes`) that no live worker serves.
    pub unserved_routes: Vec<UnservedRoute>,
}

/// One pool of workers at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// Its name.
    pub name: Pool,
    /// Live workers serving it.
    pub workers: usize,
    /// Tasks they run at once, summed.
    pub concurrency: usize,
    /// Messages ready in its task queue, summed over its shards (`None`: no shard exists yet).
    pub queued: Option<u64>,
    /// Messages in its dead-letter queue (`None`: it does not exist yet).
    pub dead_letters: Option<u32>,
}

/// Reads the state of one deployment, repeatedly; keeps one RabbitMQ connection (opened again
/// when lost) and one Redis connection manager.
pub struct Monitor {
    settings: Settings,
    store: Store,
    connection: Mutex<Option<Connection>>,
}

impl Monitor {
    /// Connects to the Redis of `settings` (RabbitMQ is reached at the first read).
    ///
    /// # Errors
    /// [`crate::Error`] if the settings are invalid or Redis cannot be reached.
    pub async fn connect(settings: Settings) -> Result<Self> {
        settings.validate()?;
        let store = Store::connect(&settings).await?;
        Ok(Monitor {
            settings,
            store,
            connection: Mutex::new(None),
        })
    }

    /// The settings this monitor reads with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store this monitor reads (for task states and events, `events.rs`).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The live workers from the registry, sorted by id.
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn workers(&self) -> Result<Vec<WorkerEntry>> {
        Ok(ops::live_workers(&self.store).await?)
    }

    /// The deployment now.
    ///
    /// # Errors
    /// [`crate::Error`] if RabbitMQ or Redis fails.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let workers = self.workers().await?;
        let mut names = vec![Pool::default()];
        names.extend(self.settings.named_pools());
        for worker in &workers {
            names.extend(worker.pools.iter().filter(|p| !p.is_default()).cloned());
        }
        names[1..].sort();
        names.dedup();
        let mut queues = Vec::new();
        let mut pools = Vec::with_capacity(names.len());
        let mut dead_letters = 0;
        for name in names {
            let s = self.settings.for_pool(&name);
            let mut queued = None;
            for shard in s.task_queues() {
                let shard = self.queue(&shard, &name, QueueRole::Tasks).await?;
                if let Some(n) = shard.messages {
                    *queued.get_or_insert(0) += u64::from(n);
                }
                queues.push(shard);
            }
            let dead = self
                .queue(&s.dead_letter_queue, &name, QueueRole::DeadLetter)
                .await?;
            dead_letters += dead.messages.unwrap_or(0);
            let serving = workers.iter().filter(|w| w.serves(&name));
            pools.push(PoolStatus {
                workers: serving.clone().count(),
                concurrency: serving.map(|w| w.concurrency).sum(),
                queued,
                dead_letters: dead.messages,
                name,
            });
            queues.push(dead);
        }
        let table = self.settings.routes.iter().map(|(f, p)| (f.as_str(), p));
        let unserved_routes = unserved(table, &workers);
        let mut totals = WorkerCounters::default();
        let mut tasks_per_second = 0.0;
        let mut recent_errors = Vec::new();
        for worker in &workers {
            let c = worker.counters;
            totals.started += c.started;
            totals.succeeded += c.succeeded;
            totals.failed += c.failed;
            totals.retried += c.retried;
            totals.in_flight += c.in_flight;
            tasks_per_second += worker.tasks_per_second;
            recent_errors.extend(worker.recent_errors.iter().cloned());
        }
        recent_errors.sort_by_key(|e| std::cmp::Reverse(e.at));
        recent_errors.truncate(RECENT);
        Ok(ClusterStatus {
            queues,
            dead_letters,
            workers,
            totals,
            tasks_per_second: (tasks_per_second * 100.0).round() / 100.0,
            recent_errors,
            pools,
            unserved_routes,
        })
    }

    /// [`crate::Client::run_encoded`] on the monitor's connection.
    ///
    /// # Errors
    /// As [`crate::Client::run`].
    pub async fn run<T: DeserializeOwned>(
        &self,
        function: &str,
        args: Vec<u8>,
        timeout: Duration,
    ) -> Result<RunReport<T>> {
        let connection = self.connection().await?;
        let guard = connection.lock().await;
        let connection = guard.as_ref().expect("connected by connection()");
        broadcast(
            connection,
            &self.settings,
            &self.store,
            function,
            args,
            timeout,
        )
        .await
    }

    /// `queue` as RabbitMQ reports it, on a channel of its own (a passive declaration of a
    /// missing queue closes its channel).
    async fn queue(&self, queue: &str, pool: &Pool, role: QueueRole) -> Result<QueueStatus> {
        let connection = self.connection().await?;
        let guard = connection.lock().await;
        let channel = guard
            .as_ref()
            .expect("connected by connection()")
            .create_channel()
            .await?;
        drop(guard);
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let (messages, consumers) = match declared {
            Ok(q) => {
                let _ = channel.close(200, "done".into()).await;
                (Some(q.message_count()), Some(q.consumer_count()))
            }
            Err(e) if is_not_found(&e) => (None, None),
            Err(e) => return Err(e.into()),
        };
        Ok(QueueStatus {
            name: queue.to_owned(),
            pool: pool.clone(),
            role,
            messages,
            consumers,
        })
    }

    /// The connection slot, connected (again, if it was lost).
    async fn connection(&self) -> Result<&Mutex<Option<Connection>>> {
        let mut slot = self.connection.lock().await;
        let alive = slot.as_ref().is_some_and(|c| c.status().connected());
        if !alive {
            *slot = Some(broker::connect(&self.settings, "rask monitor").await?);
        }
        Ok(&self.connection)
    }
}

/// Whether RabbitMQ answered 404 NOT_FOUND (a passive declaration of a missing queue).
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}
