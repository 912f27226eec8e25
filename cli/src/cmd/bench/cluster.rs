//! The cluster the bench runs on: by default a private RabbitMQ and Redis (append-only, as in
//! production) on free loopback ports in a temporary folder, plus N `rask-worker` processes, all
//! tied to this process (they stop if it dies); or, with `--use-running`, the deployment of the
//! settings and whatever workers serve it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rask::local::{
    free_port, sibling_binary, Lifetime, RabbitMqSpec, RedisSpec, ServerProcess, Worker, WorkerSpec,
};
use rask::Settings;
use rask_common::settings::QueueType;

use super::rss::Pid;

/// How long workers may take to start consuming.
const WORKERS_READY: Duration = Duration::from_secs(30);
/// How long a worker may take to stop after SIGTERM before it is killed.
const WORKER_STOP: Duration = Duration::from_secs(10);
/// How often readiness is checked.
const POLL: Duration = Duration::from_millis(50);

/// How a private cluster's deployment is set up (the flags `--concurrency`, `--quorum`,
/// `--shards`).
pub(super) struct Shape {
    /// Tasks each worker runs at once (`None`: the setting's default, the number of CPUs).
    pub(super) concurrency: Option<usize>,
    /// The task queue's type (a quorum queue without priorities).
    pub(super) queue_type: QueueType,
    /// Task queue shards.
    pub(super) shards: u16,
    /// Whether task events are recorded (the `events` setting).
    pub(super) events: bool,
    /// Longest arguments sent inside the message (`None`: the setting's default; `Some(0)`:
    /// always inline, as before arguments could go by reference).
    pub(super) inline_limit: Option<usize>,
    /// Whether values over `blob_threshold` go to a blob store (a directory of the run).
    pub(super) blobs: bool,
    /// Whether workers run the graph tasks they release (the `local_continuation` setting).
    pub(super) continuation: bool,
    /// Whether the cluster's files live in [`SHARED_MEMORY`] instead of the temporary
    /// directory.
    pub(super) in_memory: bool,
    /// The workers' `runtime_threads` (0: one per CPU).
    pub(super) runtime_threads: usize,
}

/// Where `--in-memory` keeps a private cluster's files: a memory file system on Linux.
const SHARED_MEMORY: &str = "/dev/shm";

/// The cluster under test.
pub(super) struct Cluster {
    /// Settings that reach it (a private cluster's own names and key prefix).
    pub(super) settings: Settings,
    /// A name unique to this run, for the floor's queues and keys.
    pub(super) run_id: String,
    private: Option<Private>,
}

/// What a private cluster started.
struct Private {
    dir: PathBuf,
    rabbitmq: ServerProcess,
    redis: ServerProcess,
    workers: Vec<Worker>,
}

impl Cluster {
    /// Starts RabbitMQ and Redis (in parallel), then `workers` workers with the settings of
    /// `shape`, and returns once all of them consume the task queue.
    ///
    /// # Errors
    /// If a server or worker does not start; whatever was started is stopped again.
    pub(super) async fn start(workers: usize, shape: &Shape) -> Result<Self> {
        let run_id = run_id();
        let base = if shape.in_memory {
            let shm = PathBuf::from(SHARED_MEMORY);
            if !shm.is_dir() {
                bail!("--in-memory: {SHARED_MEMORY} is not a directory on this machine");
            }
            shm
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(&run_id);
        eprintln!(
            "bench: the private cluster's files are in {}",
            dir.display()
        );
        let rabbitmq = RabbitMqSpec {
            dir: dir.join("rabbitmq"),
            port: free_port()?,
            dist_port: free_port()?,
            node_name: run_id.replace('-', ""),
        };
        let redis = RedisSpec {
            dir: dir.join("redis"),
            port: free_port()?,
            append_only: true,
            fsync: Default::default(),
            cluster: false,
        };
        let (rabbitmq, redis) = tokio::join!(
            ServerProcess::start_rabbitmq(&rabbitmq, Lifetime::TiedToCaller),
            ServerProcess::start_redis(&redis, Lifetime::TiedToCaller)
        );
        let (rabbitmq, redis) = (
            rabbitmq.context("starting RabbitMQ")?,
            redis.context("starting Redis")?,
        );
        let settings = Settings {
            amqp_url: rabbitmq.url(),
            redis_url: redis.url(),
            exchange: format!("{run_id}.x"),
            queue: format!("{run_id}.tasks"),
            dead_letter_exchange: format!("{run_id}.dead"),
            dead_letter_queue: format!("{run_id}.dead"),
            key_prefix: run_id.clone(),
            ..Settings::default()
        };
        let settings = Settings {
            concurrency: shape.concurrency.unwrap_or(settings.concurrency),
            queue_type: shape.queue_type,
            max_priority: match shape.queue_type {
                QueueType::Classic => settings.max_priority,
                QueueType::Quorum => 0,
            },
            queue_shards: shape.shards,
            runtime_threads: shape.runtime_threads,
            events: shape.events,
            local_continuation: shape.continuation,
            inline_limit: shape.inline_limit.unwrap_or(settings.inline_limit),
            blob_url: if shape.blobs {
                format!("file://{}", dir.join("blobs").display())
            } else {
                String::new()
            },
            ..settings
        };
        let mut cluster = Cluster {
            settings,
            run_id,
            private: Some(Private {
                dir,
                rabbitmq,
                redis,
                workers: Vec::new(),
            }),
        };
        if let Err(e) = cluster.start_workers(workers).await {
            return Err(cluster.stop_after(e).await);
        }
        Ok(cluster)
    }

    /// The deployment of `settings`, served by workers started elsewhere.
    ///
    /// # Errors
    /// If RabbitMQ cannot be reached or no worker consumes the task queue.
    pub(super) async fn running(settings: Settings) -> Result<Self> {
        let cluster = Cluster {
            settings,
            run_id: run_id(),
            private: None,
        };
        let consumers = cluster.consumers().await?;
        if consumers == 0 {
            bail!(
                "no worker consumes queue {:?} at {}; start some (e.g. `rask local up`) or drop --use-running",
                cluster.settings.queue,
                rask_common::settings::mask_url(&cluster.settings.amqp_url)
            );
        }
        Ok(cluster)
    }

    /// `private` or `running`.
    pub(super) fn kind(&self) -> &'static str {
        if self.private.is_some() {
            "private"
        } else {
            "running"
        }
    }

    /// The workers' pids (none for a running cluster: they are not ours to measure).
    pub(super) fn worker_pids(&self) -> Vec<Pid> {
        self.private.as_ref().map_or_else(Vec::new, |p| {
            p.workers.iter().map(|w| Pid(Some(w.pid()))).collect()
        })
    }

    /// The serving pids of RabbitMQ and Redis, for a private cluster.
    pub(super) fn server_pids(&self) -> Option<(Pid, Pid)> {
        self.private
            .as_ref()
            .map(|p| (Pid(Some(p.rabbitmq.pid())), Pid(Some(p.redis.pid()))))
    }

    /// Stops what this run started, workers first, and deletes the folder unless `keep`.
    /// Returns the folder when it was kept.
    ///
    /// # Errors
    /// If a server does not stop (it is killed when this process exits anyway).
    pub(super) async fn stop(self, keep: bool) -> Result<Option<PathBuf>> {
        let Some(mut private) = self.private else {
            return Ok(None);
        };
        for worker in &mut private.workers {
            worker.signal_term()?;
        }
        for worker in &mut private.workers {
            if worker.wait(WORKER_STOP).await?.is_none() {
                tracing::warn!(pid = worker.pid(), "worker ignored SIGTERM; killing it");
                worker.kill().await?;
            }
        }
        let (rabbitmq, redis) = tokio::join!(private.rabbitmq.stop(), private.redis.stop());
        rabbitmq.context("stopping RabbitMQ")?;
        redis.context("stopping Redis")?;
        if keep {
            return Ok(Some(private.dir));
        }
        std::fs::remove_dir_all(&private.dir)
            .with_context(|| format!("removing {}", private.dir.display()))?;
        Ok(None)
    }

    /// Stops everything after `error`, keeping the folder for its logs; returns the error
    /// (naming the folder).
    async fn stop_after(self, error: anyhow::Error) -> anyhow::Error {
        match self.stop(true).await {
            Ok(Some(dir)) => error.context(format!("logs are in {}", dir.display())),
            Ok(None) => error,
            Err(stop) => error.context(format!("and stopping the cluster failed: {stop:#}")),
        }
    }

    /// Declares the topology (so that the consumer count can be asked before any worker runs),
    /// spawns the workers with every setting in their environment (so neither this process's
    /// `RASK_*` variables nor a `rask.toml` can point them elsewhere), then waits until the
    /// queue has that many consumers.
    async fn start_workers(&mut self, count: usize) -> Result<()> {
        let program = sibling_binary("rask-worker")?;
        let connection = self.connect().await?;
        let channel = rask_common::broker::declare_topology(&connection, &self.settings)
            .await
            .context("declaring the topology")?;
        let _ = channel.close(200, "declared".into()).await;
        let _ = connection.close(200, "declared".into()).await;
        let env = settings_env(&self.settings);
        let private = self.private.as_mut().expect("a private cluster");
        for n in 1..=count {
            let spec = WorkerSpec {
                program: program.clone(),
                args: Vec::new(),
                env: env.clone(),
                log: private.dir.join("logs").join(format!("worker-{n}.log")),
            };
            private
                .workers
                .push(Worker::spawn(&spec, Lifetime::TiedToCaller)?);
        }
        let deadline = tokio::time::Instant::now() + WORKERS_READY;
        loop {
            let private = self.private.as_mut().expect("a private cluster");
            for worker in &mut private.workers {
                if !worker.is_running()? {
                    let log = std::fs::read_to_string(worker.log_path()).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    bail!(
                        "worker (pid {}) exited while starting; its log ends:\n{}",
                        worker.pid(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
            if self.consumers().await? == count as u32 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{count} worker(s) did not all start consuming within {WORKERS_READY:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A short-lived connection for set-up and probes.
    async fn connect(&self) -> Result<Connection> {
        Connection::connect(
            &self.settings.amqp_url,
            ConnectionProperties::default().with_connection_name("rask bench probe".into()),
        )
        .await
        .with_context(|| {
            format!(
                "connecting to {}",
                rask_common::settings::mask_url(&self.settings.amqp_url)
            )
        })
    }

    /// How many consumers the task queue has (a passive declare, on a short-lived connection).
    async fn consumers(&self) -> Result<u32> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                self.settings.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "probe done".into()).await;
        let _ = connection.close(200, "probe done".into()).await;
        Ok(queue
            .with_context(|| format!("queue {:?}", self.settings.queue))?
            .consumer_count())
    }
}

/// `rask-bench-PID-RANDOM`.
fn run_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("rask-bench-{}-{}", std::process::id(), &random[..8])
}

/// Every setting as the `RASK_*` variable that sets it.
fn settings_env(s: &Settings) -> Vec<(String, String)> {
    [
        ("RASK_AMQP_URL", s.amqp_url.clone()),
        ("RASK_REDIS_URL", s.redis_url.clone()),
        ("RASK_EXCHANGE", s.exchange.clone()),
        ("RASK_QUEUE", s.queue.clone()),
        ("RASK_DEAD_LETTER_EXCHANGE", s.dead_letter_exchange.clone()),
        ("RASK_DEAD_LETTER_QUEUE", s.dead_letter_queue.clone()),
        ("RASK_KEY_PREFIX", s.key_prefix.clone()),
        (
            "RASK_RESULT_TTL",
            humantime::format_duration(s.result_ttl).to_string(),
        ),
        ("RASK_CONCURRENCY", s.concurrency.to_string()),
        ("RASK_RUNTIME_THREADS", s.runtime_threads.to_string()),
        ("RASK_PREFETCH", s.prefetch.to_string()),
        ("RASK_PUBLISH_WINDOW", s.publish_window.to_string()),
        ("RASK_RESULT_BATCH", s.result_batch.to_string()),
        ("RASK_LOCAL_CONTINUATION", s.local_continuation.to_string()),
        ("RASK_QUEUE_TYPE", s.queue_type.to_string()),
        ("RASK_QUEUE_SHARDS", s.queue_shards.to_string()),
        ("RASK_MAX_PRIORITY", s.max_priority.to_string()),
        ("RASK_EVENTS", s.events.to_string()),
        ("RASK_EVENTS_MAX_LEN", s.events_max_len.to_string()),
        ("RASK_INLINE_LIMIT", s.inline_limit.to_string()),
        ("RASK_BLOB_URL", s.blob_url.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
