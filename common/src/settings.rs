//! Typed settings shared by producers and workers, loaded in layers: defaults, then an optional
//! `rask.toml`, then `RASK_*` environment variables (e.g. `RASK_AMQP_URL`, `RASK_RESULT_TTL=2h`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pool::Pool;

/// The file read by [`Settings::load`] when it exists in the working directory.
pub const DEFAULT_FILE: &str = "rask.toml";

/// The most task queue shards ([`Settings::queue_shards`]).
const MAX_SHARDS: u16 = 256;

/// Most threads a worker's async runtime may have (`runtime_threads`).
const MAX_RUNTIME_THREADS: usize = 1024;

/// The default of [`Settings::amqp_url`].
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The kind of RabbitMQ queue tasks (and dead letters) wait in: see [`Settings::queue_type`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A classic queue: on one node, lost (until it is back) when that node is.
    #[default]
    Classic,
    /// A quorum queue: replicated over the cluster's nodes, available while most are up.
    Quorum,
}

impl QueueType {
    /// `classic` or `quorum`, as in settings and in RabbitMQ's `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every setting of a rask deployment. Each field's default is stated in its doc.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// AMQP URL of RabbitMQ. Default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// AMQP URLs of the nodes of a RabbitMQ cluster, used instead of `amqp_url` when not empty
    /// (see [`Settings::amqp_nodes`]). Clients and workers connect to the first node that
    /// answers and, when their node goes away, fail over to the next ones in turn (the lost
    /// node last), then resume: republish what was not confirmed, consume again. In
    /// `RASK_AMQP_URLS`, comma-separated. When `amqp_url` is also set to something other than
    /// its default it must be one of them. Default empty: the single node of `amqp_url`.
    #[serde(deserialize_with = "non_empty_strings")]
    pub amqp_urls: Vec<String>,
    /// Type of the task queue and the dead-letter queue: `classic` (one node holds them) or
    /// `quorum` (replicated over the cluster by Raft, available while a majority of nodes is up:
    /// the type to use with a cluster). With `quorum`, the delivery limit uses the queue's own
    /// delivery count (`x-delivery-count`) instead of a counter in Redis, dead-lettering is
    /// at-least-once (`x-dead-letter-strategy`), and `max_priority` must be `0` (RabbitMQ 3.10's
    /// quorum queues have no priorities). Changing it on an existing queue makes RabbitMQ refuse
    /// the declaration: drain and delete the queues first. Default `classic`.
    pub queue_type: QueueType,
    /// URL of Redis. Default `redis://127.0.0.1:6379/`.
    pub redis_url: String,
    /// URLs of nodes of a Redis Cluster (any of them: the rest are discovered), used instead of
    /// `redis_url` when not empty. Every key of one task then carries the task key in braces as
    /// its hash tag (`rask:result:{inc-1}`), the deployment's own keys the prefix
    /// (`{rask}:workers`), so that every script keeps to one hash slot; see
    /// [`crate::keys::Keys`]. In `RASK_REDIS_CLUSTER_URLS`, comma-separated. Default empty: the
    /// single Redis of `redis_url`.
    #[serde(deserialize_with = "non_empty_strings")]
    pub redis_cluster_urls: Vec<String>,
    /// Replicas that must hold a batch of results (and a graph's task records) before a worker
    /// acknowledges its tasks (or a producer returns): Redis's `WAIT` on every primary, for at
    /// most 250 ms (a healthy replica answers in about a millisecond). Redis replicates
    /// asynchronously, so without it a primary that crashes can take the last acknowledged
    /// results with it, and their futures then wait until they time out; with `1`, a replica
    /// promoted in its place holds them. On a single Redis the wait has a connection of its
    /// own, so it holds up no other command. When fewer replicas answer in time (one is down,
    /// or was promoted and has no replica yet) the batch goes on, with a warning, and writes
    /// do not wait for the next 5 s; both are counted on a worker's `/metrics`
    /// (`rask_replica_waits_short_total`, `rask_replica_waits_skipped_total`). Set it to `1`
    /// with a Redis Cluster (or a primary) that has replicas. Default `0`: no wait.
    pub redis_wait_replicas: u32,
    /// How quickly a dead connection to Redis is noticed and replaced, so that nothing waits
    /// forever on a connection whose peer is gone (a network partition, a host that crashed or
    /// a Redis restarted behind one: no FIN or RST ever arrives). A client pings its
    /// completion subscription every interval and replaces it when a ping goes unanswered for
    /// an interval, after which every waiter re-reads its pending keys; waiters also re-read
    /// them every 6 intervals in any case, so that no lost announcement leaves one waiting.
    /// Every Redis socket (clients and workers) sends TCP keepalive probes after an interval
    /// of silence, and is dropped (then made again) once data sent on it has gone
    /// unacknowledged for 3 intervals (`TCP_USER_TIMEOUT`, Linux). So waits recover within a
    /// few intervals of the network healing. At least `100ms`. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub redis_ping_interval: Duration,
    /// Durable direct exchange tasks are published to. Default `rask`.
    pub exchange: String,
    /// Durable queue workers consume tasks from (also its routing key). Default `rask.tasks`.
    pub queue: String,
    /// Task queues (shards) tasks are spread over, so that the broker is not one hot queue (one
    /// queue is served by one Erlang process, i.e. about one core). Shard 0 is `queue`, shard
    /// `i` is `{queue}.shard{i}` (see [`Settings::task_queues`]); producers route each task by
    /// a hash of its key ([`crate::broker::shard_of`]), workers consume every shard. Delayed
    /// tasks (countdown, eta, retry backoffs) and requeued dead letters return to shard 0.
    /// Lowering it strands the tasks of the dropped shards: drain them first. 1 to 256.
    /// Default `1`.
    pub queue_shards: u16,
    /// Exchange for messages that cannot be processed. Default `rask.dead`.
    pub dead_letter_exchange: String,
    /// Queue holding dead-lettered messages. Default `rask.dead`.
    pub dead_letter_queue: String,
    /// Most messages the dead-letter queue holds (its `x-max-length`): beyond it the oldest
    /// dead letters are dropped (`x-overflow = drop-head`), so that a flood of bad messages
    /// cannot fill the broker's memory or disk and trip the alarms that block every publisher.
    /// `0` declares the queue without the argument (no bound, or one set by a RabbitMQ policy,
    /// see docs/security.md). Changing it on an existing queue makes RabbitMQ refuse the
    /// declaration: see docs/security.md for the upgrade. Default `10000`.
    pub dead_letter_max_length: u64,
    /// Most bytes of message bodies the dead-letter queue holds (its `x-max-length-bytes`), with
    /// the oldest dropped beyond it as for [`Settings::dead_letter_max_length`]. `0`: no
    /// argument. Default `268435456` (256 MiB).
    pub dead_letter_max_bytes: u64,
    /// Prefix of every Redis key and channel, so deployments can share one Redis. Default `rask`.
    pub key_prefix: String,
    /// How long a stored result lives in Redis. Default `1day`.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
    /// How long the messages of graph tasks (their `{prefix}:task:{key}` records) are kept,
    /// from when they are registered: a worker that finds an input's result gone (expired or
    /// released) recomputes it from its message while it is kept (lineage). Records live for
    /// the longer of this and `result_ttl`. Default `2days` (twice the default `result_ttl`).
    #[serde(with = "humantime_serde")]
    pub lineage_ttl: Duration,
    /// Tasks a worker runs at once. Default: the number of CPUs.
    pub concurrency: usize,
    /// Threads of a worker's async runtime (`rask-worker`, and binaries that build their
    /// runtime with `rask_worker::runtime`): they receive deliveries, store results, run async
    /// task bodies and plain functions quick enough to run in place; slower plain functions run
    /// on a pool of their own whatever this is. `1` gives the lowest latency per task (each
    /// delivery handled start to end on one thread, no hand-off between threads; measured 25 µs
    /// less per round trip on a quiet 2-CPU machine, docs/benchmarks.md); more spread quick
    /// tasks over CPUs, and keep the worker serving while a function measured quick runs long
    /// in place. Default `0`, meaning one per CPU.
    pub runtime_threads: usize,
    /// What a worker has of named resources, e.g. `gpu=2,mem=16GiB` (`RASK_RESOURCES`,
    /// `rask-worker --resources`), or in `rask.toml` a table `[resources]` with `gpu = 2` and
    /// `mem = "16GiB"`. Amounts are integers in a unit of the deployment's choosing, with binary
    /// suffixes `KiB`/`MiB`/`GiB`/`TiB` accepted ([`crate::resources`]). A task needing some
    /// (`TaskOptions::resources`) runs only while that much is free, besides `concurrency`.
    /// Default empty: tasks that need a resource go to other workers.
    #[serde(deserialize_with = "crate::resources::deserialize_setting")]
    pub resources: crate::resources::Resources,
    /// Unacknowledged deliveries a worker holds (AMQP `basic.qos`), counting those running and
    /// those whose results are being stored. Default `0`, meaning 16 × `concurrency`: enough to
    /// keep short tasks flowing while results are stored in batches (at 4 × a worker spends
    /// most of its time waiting for acks to free credit). For tasks that run for seconds, set it
    /// to `concurrency` so that a busy worker does not hold tasks an idle one could run.
    pub prefetch: u16,
    /// Unconfirmed publishes a producer keeps in flight while submitting many tasks. Default `1024`.
    pub publish_window: usize,
    /// Most results a worker writes to Redis in one pipeline. Default `256`.
    pub result_batch: usize,
    /// Whether a worker runs a graph task released by outcomes it stored itself, when it has a
    /// free concurrency slot and the task fits it (its pool served, no resources, no global
    /// limit), instead of publishing it (docs/protocol.md §11, "Local continuation"): the
    /// deliveries that released it stay unacknowledged until its outcome is stored. `false`
    /// publishes every released task. Default `true`.
    pub local_continuation: bool,
    /// How long a stopping worker (SIGTERM/SIGINT) lets running tasks finish; tasks still running
    /// after it are released back to the queue unacknowledged and run again elsewhere.
    /// Default `30s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a running task cancelled with `force` (`rask cancel --force`) has to stop by
    /// itself before its worker abandons it: an async body is dropped at once, but a plain
    /// function cannot be stopped from outside its thread, so after this grace its worker frees
    /// its slot and the thread runs on, counted like a time-limit overrun
    /// (`max_overrun_threads`). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub cancel_grace: Duration,
    /// Deliveries of one task message that may end without a stored outcome (the worker running
    /// it crashed, lost its connection, or stopped past its grace period) before the next
    /// delivery dead-letters it and fails its future with `DeliveryLimit`. Redeliveries of a task
    /// whose outcome is stored (requeued because a graph dependent it released could not be
    /// published) count too: on the one that reaches the limit, dependents that still cannot
    /// be published fail with `Unpublishable`. `0` means no limit. Default `5`.
    pub max_deliveries: u32,
    /// Largest task message body, in bytes, a producer publishes and a worker accepts (larger
    /// ones fail with a clear error, or are dead-lettered). Default `67108864` (64 MiB; RabbitMQ
    /// refuses bodies over 128 MiB by default).
    pub max_message_bytes: usize,
    /// Longest encoded arguments, in bytes, that travel inside the task message. Longer ones are
    /// stored once in Redis (content-addressed, for `result_ttl`) before the message is
    /// published, and the message carries a reference the worker reads them by
    /// ([`crate::reference`]): a large value then crosses Redis instead of the broker's
    /// persistent store, and is not bound by `max_message_bytes`. `0`: always inline.
    /// Default `0`: measured with `rask bench --workloads payload` against an append-only Redis,
    /// passing 1 MiB arguments through Redis cost more CPU than through RabbitMQ (docs/benchmarks.md).
    pub inline_limit: usize,
    /// Where large values are kept ([`crate::blobs`]): `file:///path` (one machine, `rask
    /// local`) or `s3://bucket/prefix` (a build with the `s3` feature; see `s3_endpoint`).
    /// Arguments and results longer than `blob_threshold` are written there, content-addressed,
    /// and the message or the stored result carries a reference. Empty: no blob store (large
    /// arguments go by `inline_limit`, results into Redis). Default empty.
    pub blob_url: String,
    /// The S3-compatible server of an `s3://` `blob_url` (e.g. `http://127.0.0.1:9000`); empty:
    /// AWS. Credentials and region come from the usual `AWS_*` variables. Default empty.
    pub s3_endpoint: String,
    /// Longest encoded argument tuple or result, in bytes, kept out of the blob store when
    /// `blob_url` is set; longer ones are written there. Default `1048576` (1 MiB).
    pub blob_threshold: usize,
    /// Largest result, in bytes (the task's return value, MessagePack-encoded), a worker stores;
    /// a larger one is not stored: the task's future fails with `ResultTooLarge`, naming the
    /// task and both sizes. Keeps every stored value below Redis's `proto-max-bulk-len` (512 MB
    /// by default), which would otherwise refuse it. At least 1024. Default `67108864` (64 MiB).
    pub max_result_bytes: usize,
    /// How long a task may run before its future fails with `TimedOut`, unless its message sets
    /// its own limit. `0s` means no limit. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub task_time_limit: Duration,
    /// Highest task priority (the task queue's `x-max-priority`); tasks submitted with a higher
    /// one are clamped to it. `0` declares a queue without priorities. Changing it on an
    /// existing queue makes RabbitMQ refuse the declaration: purge and delete the queue first.
    /// Default `9`.
    pub max_priority: u8,
    /// How long a producer keeps trying to reconnect to RabbitMQ (backoff from 100 ms doubling to
    /// 5 s, each attempt logged) after losing its connection, before the call that needed it fails.
    /// `0s` means one attempt. Workers reconnect for as long as it takes. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_wait: Duration,
    /// Secrets task messages are signed with (HMAC-SHA256, see `docs/security.md`): producers
    /// sign with the first, workers accept a signature by any (key rotation), and reject
    /// unsigned or tampered messages to the dead-letter queue. Each at least 16 bytes (e.g.
    /// `openssl rand -hex 32`); in `RASK_SIGNING_KEYS`, comma-separated. Empty entries are
    /// ignored. Default empty: signing off.
    #[serde(deserialize_with = "non_empty_strings")]
    pub signing_keys: Vec<String>,
    /// PEM file of the CA certificate(s) that `amqps://` and `rediss://` servers are verified
    /// against: for RabbitMQ in addition to the system's roots, for Redis instead of them.
    /// Default none: the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate presented to `amqps://` and `rediss://` servers that
    /// ask for one (with `tls_key_file`). Default none.
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM file of the private key (PKCS#8, unencrypted) of `tls_cert_file`. Default none.
    pub tls_key_file: Option<std::path::PathBuf>,
    /// How often a worker refreshes its entry in the worker registry (Redis). The entry expires
    /// after three intervals without a refresh, so a dead worker vanishes from `rask status`
    /// and from `rask run`'s expected answers within three intervals. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Whether workers serve Prometheus `/metrics` and `/health` over HTTP on `metrics_listen`.
    /// Default `true`.
    pub metrics: bool,
    /// Address a worker's metrics endpoint listens on. Port `0` takes a free port (so that
    /// workers on one host do not collide); the address actually bound is recorded in the
    /// worker registry and shown by `rask status`. For a Prometheus scrape config, set a fixed
    /// port. Default `127.0.0.1:0`.
    pub metrics_listen: std::net::SocketAddr,
    /// Broadcast requests (`rask run`) a worker runs at once; more wait in its broadcast queue
    /// (which holds at most 32 of them, dropping the oldest), so that a flood of broadcasts
    /// cannot run unbounded in parallel. Each runs for at most its caller's timeout. 1 to 256.
    /// Default `4`.
    pub broadcast_concurrency: u16,
    /// Largest broadcast request body, in bytes: the caller refuses to send a larger one
    /// (`Error::BroadcastTooLarge`), a worker drops one unread (before checking its signature)
    /// and answers nothing. At least 1024. Default `65536`.
    pub max_broadcast_bytes: usize,
    /// Threads of plain functions that ran past their time limit and run on (a thread cannot be
    /// stopped from outside) that a worker tolerates. Reaching it, the worker stops as on
    /// SIGTERM (finishing its other tasks within `shutdown_grace`) and exits with an error
    /// naming this setting, so that its supervisor starts a fresh process: the only way to end
    /// such threads. Counted in the `rask_overrun_threads` metric. `0` means 2 × `concurrency`.
    /// Default `0`.
    pub max_overrun_threads: usize,
    /// Whether this worker checks the periodic tasks (`rask schedule`) and publishes their due
    /// ticks. Every worker that does is enough: a tick is claimed by one of them. Turn it off on
    /// workers that should only run tasks. Default `true`.
    pub schedules: bool,
    /// How often a worker checks the periodic tasks: a tick is published at most this late (on
    /// a healthy cluster), and ticks older than 5 checks (at least 5 s) count as missed. 10 ms
    /// to 1 min. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub schedule_check_interval: Duration,
    /// The pools a worker serves ([`crate::pool`]): it declares and consumes every shard of
    /// each. In `RASK_POOLS`, comma-separated; `rask-worker --pools default,gpu`. Producers
    /// ignore it, except that `rask purge` and `rask status` cover these pools too. Default
    /// `["default"]`: the queues of `queue`, as before pools existed.
    pub pools: Vec<Pool>,
    /// The routing table: the pool each function's tasks go to unless a task names its own
    /// (`TaskOptions::pool`, `--pool`), as Celery's `task_routes`. Functions not in it go to
    /// the default pool. In `rask.toml`, a table (`[routes]` then `image_stats = "gpu"`); in
    /// `RASK_ROUTES`, `function=pool` pairs, comma-separated (`image_stats=gpu,resize=gpu`).
    /// Default empty.
    #[serde(deserialize_with = "crate::pool::routes")]
    pub routes: BTreeMap<String, Pool>,
    /// Global limits per function ([`crate::limits`]), applied by every worker that has them;
    /// a limit set in Redis (`rask limit set`) replaces the one given here for its function.
    /// In `rask.toml`, a table per function (`[limits.send_email]` then `rate = "100/s"`,
    /// `burst = 10`, `concurrency = 2`); in `RASK_LIMITS`, entries separated by `;`
    /// (`send_email: rate=100/s burst=10; resize: concurrency=2`). Default empty.
    #[serde(
        deserialize_with = "crate::limits::deserialize_setting",
        serialize_with = "crate::limits::serialize_setting"
    )]
    pub limits: BTreeMap<String, crate::limits::Limit>,
    /// Whether Python workers (`python -m rask worker`) run pickled functions
    /// (`client.submit(lambda x: x + 1, 1)`, shipped by cloudpickle): code from the message
    /// itself. Honoured only with `signing_keys` set, so that only holders of a key can make a
    /// worker run code (see `docs/security.md`). Rust workers ignore it. Default `false`.
    pub allow_pickled_functions: bool,
    /// Whether producers and workers record task states and events ([`crate::events`]): a
    /// state record per task (one per batch message for its calls; `rask inspect`, expiring
    /// with the result) and entries in the deployment's bounded event stream (`rask events`),
    /// written in batches (a client's per publishing call, a worker's every 250 ms). Default
    /// `true` (docs/benchmarks.md, "The cost of task events": within 5 % of `false`); `false`
    /// records nothing.
    pub events: bool,
    /// Most entries kept in the event stream (`XADD MAXLEN ~`; Redis trims whole blocks, so a
    /// few more may remain). Default `100000`.
    pub events_max_len: u64,
    /// Where processes send their trace spans ([`crate::trace`]): an OTLP/HTTP endpoint, e.g.
    /// `http://127.0.0.1:4318` (spans go to `{otlp_endpoint}/v1/traces`). Workers built with
    /// the `otlp` feature export their run spans there; a client with it set starts a trace
    /// per submit, map or graph even outside a span of its caller. Empty (the default): off,
    /// and a task without a trace context costs nothing more.
    pub otlp_endpoint: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            amqp_url: DEFAULT_AMQP_URL.into(),
            amqp_urls: Vec::new(),
            queue_type: QueueType::Classic,
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_cluster_urls: Vec::new(),
            redis_wait_replicas: 0,
            redis_ping_interval: Duration::from_secs(5),
            exchange: "rask".into(),
            queue: "rask.tasks".into(),
            queue_shards: 1,
            dead_letter_exchange: "rask.dead".into(),
            dead_letter_queue: "rask.dead".into(),
            dead_letter_max_length: 10_000,
            dead_letter_max_bytes: 256 << 20,
            key_prefix: "rask".into(),
            result_ttl: Duration::from_secs(24 * 3600),
            lineage_ttl: Duration::from_secs(2 * 24 * 3600),
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            runtime_threads: 0,
            resources: crate::resources::Resources::new(),
            prefetch: 0,
            publish_window: 1024,
            result_batch: 256,
            local_continuation: true,
            shutdown_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            max_deliveries: 5,
            max_message_bytes: 64 << 20,
            inline_limit: 0,
            blob_url: String::new(),
            s3_endpoint: String::new(),
            blob_threshold: 1 << 20,
            max_result_bytes: 64 << 20,
            task_time_limit: Duration::ZERO,
            max_priority: 9,
            reconnect_max_wait: Duration::from_secs(60),
            signing_keys: Vec::new(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            heartbeat_interval: Duration::from_secs(5),
            metrics: true,
            metrics_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            broadcast_concurrency: 4,
            max_broadcast_bytes: 64 << 10,
            max_overrun_threads: 0,
            schedules: true,
            schedule_check_interval: Duration::from_secs(1),
            pools: vec![Pool::default_pool()],
            routes: BTreeMap::new(),
            limits: BTreeMap::new(),
            allow_pickled_functions: false,
            events: true,
            events_max_len: 100_000,
            otlp_endpoint: String::new(),
        }
    }
}

impl Settings {
    /// Loads defaults, then `rask.toml` from the working directory if present, then `RASK_*`
    /// environment variables.
    ///
    /// # Errors
    /// [`Error::Settings`] naming the setting and the bad value.
    pub fn load() -> Result<Self> {
        Self::load_from(Path::new(DEFAULT_FILE), false)
    }

    /// Like [`Settings::load`] with an explicit file, which must exist when `required`.
    ///
    /// # Errors
    /// [`Error::Settings`] naming the setting and the bad value, or the missing file.
    pub fn load_from(file: &Path, required: bool) -> Result<Self> {
        let bad = |e: config::ConfigError| Error::Settings(e.to_string());
        let settings: Settings = config::Config::builder()
            .add_source(config::Config::try_from(&Settings::default()).map_err(bad)?)
            .add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(required),
            )
            .add_source(
                config::Environment::with_prefix("RASK")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("signing_keys")
                    .with_list_parse_key("amqp_urls")
                    .with_list_parse_key("redis_cluster_urls")
                    .with_list_parse_key("pools"),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(bad)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values the types alone do not rule out.
    ///
    /// # Errors
    /// [`Error::Settings`] naming the setting and the bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: &dyn fmt::Display, why: &str| {
            Err(Error::Settings(format!("{name} = {value}: {why}")))
        };
        if self.concurrency == 0 {
            return bad("concurrency", &0, "must be at least 1");
        }
        if self.runtime_threads > MAX_RUNTIME_THREADS {
            let why = format!("must be at most {MAX_RUNTIME_THREADS} (0: one per CPU)");
            return bad("runtime_threads", &self.runtime_threads, &why);
        }
        if let Err(e) = self.resources.validate() {
            return bad("resources", &self.resources, &e.to_string());
        }
        if self.queue_shards == 0 || self.queue_shards > MAX_SHARDS {
            return bad("queue_shards", &self.queue_shards, "must be 1 to 256");
        }
        if self.publish_window == 0 {
            return bad("publish_window", &0, "must be at least 1");
        }
        if self.result_batch == 0 {
            return bad("result_batch", &0, "must be at least 1");
        }
        if self.max_message_bytes < 1024 {
            return bad(
                "max_message_bytes",
                &self.max_message_bytes,
                "must be at least 1024",
            );
        }
        if self.max_result_bytes < 1024 {
            return bad(
                "max_result_bytes",
                &self.max_result_bytes,
                "must be at least 1024",
            );
        }
        if self.broadcast_concurrency == 0 || self.broadcast_concurrency > 256 {
            return bad(
                "broadcast_concurrency",
                &self.broadcast_concurrency,
                "must be 1 to 256",
            );
        }
        if self.max_broadcast_bytes < 1024 {
            return bad(
                "max_broadcast_bytes",
                &self.max_broadcast_bytes,
                "must be at least 1024",
            );
        }
        if self.schedule_check_interval < Duration::from_millis(10)
            || self.schedule_check_interval > Duration::from_secs(60)
        {
            return bad(
                "schedule_check_interval",
                &humantime::format_duration(self.schedule_check_interval),
                "must be 10ms to 1m",
            );
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return bad(
                "heartbeat_interval",
                &humantime::format_duration(self.heartbeat_interval),
                "must be at least 100ms",
            );
        }
        if self.redis_ping_interval < Duration::from_millis(100) {
            return bad(
                "redis_ping_interval",
                &humantime::format_duration(self.redis_ping_interval),
                "must be at least 100ms",
            );
        }
        if self.result_ttl < Duration::from_secs(1) {
            return bad(
                "result_ttl",
                &humantime::format_duration(self.result_ttl),
                "must be at least 1s",
            );
        }
        let prefix_ok = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
        if self.key_prefix.is_empty() || !self.key_prefix.chars().all(prefix_ok) {
            return bad(
                "key_prefix",
                &format!("{:?}", self.key_prefix),
                "must be non-empty, of [A-Za-z0-9_.:-]",
            );
        }
        for (name, value) in [
            ("exchange", &self.exchange),
            ("queue", &self.queue),
            ("dead_letter_exchange", &self.dead_letter_exchange),
            ("dead_letter_queue", &self.dead_letter_queue),
        ] {
            if value.is_empty() {
                return bad(name, &"\"\"", "must not be empty");
            }
        }
        if !self.amqp_url.starts_with("amqp://") && !self.amqp_url.starts_with("amqps://") {
            return bad(
                "amqp_url",
                &mask_url(&self.amqp_url),
                "must start with amqp:// or amqps://",
            );
        }
        if let Some(url) = self
            .amqp_urls
            .iter()
            .find(|u| !u.starts_with("amqp://") && !u.starts_with("amqps://"))
        {
            return bad(
                "amqp_urls",
                &mask_url(url),
                "each must start with amqp:// or amqps://",
            );
        }
        if !self.amqp_urls.is_empty()
            && self.amqp_url != DEFAULT_AMQP_URL
            && !self.amqp_urls.contains(&self.amqp_url)
        {
            return bad(
                "amqp_url",
                &mask_url(&self.amqp_url),
                "is not one of amqp_urls: set amqp_urls alone, or include amqp_url in it",
            );
        }
        if self.queue_type == QueueType::Quorum && self.max_priority > 0 {
            return bad(
                "max_priority",
                &self.max_priority,
                "quorum queues (queue_type = quorum) have no priorities in RabbitMQ 3.10: set max_priority = 0",
            );
        }
        if !self.redis_url.starts_with("redis://") && !self.redis_url.starts_with("rediss://") {
            return bad(
                "redis_url",
                &mask_url(&self.redis_url),
                "must start with redis:// or rediss://",
            );
        }
        if let Some(url) = self
            .redis_cluster_urls
            .iter()
            .find(|u| !u.starts_with("redis://") && !u.starts_with("rediss://"))
        {
            return bad(
                "redis_cluster_urls",
                &mask_url(url),
                "each must start with redis:// or rediss://",
            );
        }
        if let Some(short) = self
            .signing_keys
            .iter()
            .position(|k| k.len() < crate::signing::MIN_KEY_BYTES)
        {
            // The key itself is never shown, only which one.
            return bad(
                "signing_keys",
                &format!("[key {}: hidden]", short + 1),
                "each key must be at least 16 bytes",
            );
        }
        if self.pools.is_empty() {
            return bad("pools", &"[]", "must name at least one pool (e.g. default)");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad(
                "tls_cert_file/tls_key_file",
                &"one of them",
                "set both or neither",
            );
        }
        Ok(())
    }

    /// The names of the task queues, shard by shard: `queue`, then `{queue}.shard1` … up to
    /// `queue_shards` names (each is also its routing key).
    pub fn task_queues(&self) -> Vec<String> {
        (0..self.queue_shards.max(1))
            .map(|i| match i {
                0 => self.queue.clone(),
                i => format!("{}.shard{i}", self.queue),
            })
            .collect()
    }

    /// The AMQP URLs of the RabbitMQ nodes to connect to, in order of preference: `amqp_urls`
    /// when set, else `amqp_url` alone. Never empty.
    pub fn amqp_nodes(&self) -> Vec<&str> {
        if self.amqp_urls.is_empty() {
            vec![self.amqp_url.as_str()]
        } else {
            self.amqp_urls.iter().map(String::as_str).collect()
        }
    }

    /// The URLs of the store: the nodes of `redis_cluster_urls` when set, else `redis_url`
    /// alone. Never empty.
    pub fn redis_nodes(&self) -> Vec<&str> {
        if self.redis_cluster_urls.is_empty() {
            vec![self.redis_url.as_str()]
        } else {
            self.redis_cluster_urls.iter().map(String::as_str).collect()
        }
    }

    /// The time limit of tasks whose message sets none: [`Settings::task_time_limit`], if any.
    pub fn default_time_limit(&self) -> Option<Duration> {
        (!self.task_time_limit.is_zero()).then_some(self.task_time_limit)
    }

    /// The fanout exchange of broadcast requests (`rask run`): `{exchange}.broadcast`, so that
    /// deployments with their own task exchange have their own broadcasts.
    pub fn broadcast_exchange(&self) -> String {
        format!("{}.broadcast", self.exchange)
    }

    /// How long a worker registry entry lives without a refresh: three heartbeat intervals.
    pub fn heartbeat_ttl(&self) -> Duration {
        self.heartbeat_interval.saturating_mul(3)
    }

    /// How old a tick may be and still count as on time rather than missed
    /// ([`crate::schedule::Schedule::due`]): 5 checks, at least 5 s.
    pub fn schedule_tolerance(&self) -> Duration {
        self.schedule_check_interval
            .saturating_mul(5)
            .max(Duration::from_secs(5))
    }

    /// The most overrun threads a worker tolerates: [`Settings::max_overrun_threads`], or
    /// 2 × `concurrency` when it is 0.
    pub fn effective_max_overrun_threads(&self) -> usize {
        if self.max_overrun_threads > 0 {
            self.max_overrun_threads
        } else {
            self.concurrency.saturating_mul(2)
        }
    }

    /// The prefetch a worker asks for: [`Settings::prefetch`], or 16 × concurrency when it is 0.
    pub fn effective_prefetch(&self) -> u16 {
        if self.prefetch > 0 {
            self.prefetch
        } else {
            u16::try_from(self.concurrency.saturating_mul(16)).unwrap_or(u16::MAX)
        }
    }
}

/// `RASK_*` variables read by rask's tools rather than by [`Settings`].
const OTHER_VARIABLES: &[&str] = &[
    "RASK_LOCAL_DIR",
    "RASK_TEST_AMQP_URL",
    "RASK_TEST_REDIS_URL",
];

impl Settings {
    /// The `RASK_*` variables in `vars` that name no setting (most likely typos), so that
    /// binaries can warn about them instead of silently ignoring them.
    pub fn unknown_variables(vars: impl IntoIterator<Item = String>) -> Vec<String> {
        let known: Vec<String> = match rmp_serde::to_vec_named(&Settings::default())
            .ok()
            .and_then(|bytes| rmp_serde::from_slice::<rmpv::Value>(&bytes).ok())
        {
            Some(rmpv::Value::Map(fields)) => fields
                .iter()
                .filter_map(|(k, _)| k.as_str().map(|k| format!("RASK_{}", k.to_uppercase())))
                .collect(),
            _ => Vec::new(),
        };
        vars.into_iter()
            .filter(|v| v.starts_with("RASK_"))
            .filter(|v| !known.contains(v) && !OTHER_VARIABLES.contains(&v.as_str()))
            .collect()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("amqp_url", &mask_url(&self.amqp_url))
            .field(
                "amqp_urls",
                &self
                    .amqp_urls
                    .iter()
                    .map(|u| mask_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("queue_type", &self.queue_type)
            .field("redis_url", &mask_url(&self.redis_url))
            .field(
                "redis_cluster_urls",
                &self
                    .redis_cluster_urls
                    .iter()
                    .map(|u| mask_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("redis_wait_replicas", &self.redis_wait_replicas)
            .field("redis_ping_interval", &self.redis_ping_interval)
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("queue_shards", &self.queue_shards)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("dead_letter_max_length", &self.dead_letter_max_length)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .field("key_prefix", &self.key_prefix)
            .field("result_ttl", &self.result_ttl)
            .field("lineage_ttl", &self.lineage_ttl)
            .field("concurrency", &self.concurrency)
            .field("runtime_threads", &self.runtime_threads)
            .field("resources", &self.resources.to_string())
            .field("prefetch", &self.prefetch)
            .field("publish_window", &self.publish_window)
            .field("result_batch", &self.result_batch)
            .field("local_continuation", &self.local_continuation)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("cancel_grace", &self.cancel_grace)
            .field("max_deliveries", &self.max_deliveries)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("inline_limit", &self.inline_limit)
            .field("blob_url", &self.blob_url)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("blob_threshold", &self.blob_threshold)
            .field("max_result_bytes", &self.max_result_bytes)
            .field("task_time_limit", &self.task_time_limit)
            .field("max_priority", &self.max_priority)
            .field("reconnect_max_wait", &self.reconnect_max_wait)
            .field(
                "signing_keys",
                &format_args!("[{} hidden]", self.signing_keys.len()),
            )
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("metrics", &self.metrics)
            .field("events", &self.events)
            .field("events_max_len", &self.events_max_len)
            .field("otlp_endpoint", &mask_url(&self.otlp_endpoint))
            .field("metrics_listen", &self.metrics_listen)
            .field("broadcast_concurrency", &self.broadcast_concurrency)
            .field("max_broadcast_bytes", &self.max_broadcast_bytes)
            .field("max_overrun_threads", &self.max_overrun_threads)
            .field("schedules", &self.schedules)
            .field("schedule_check_interval", &self.schedule_check_interval)
            .field("pools", &self.pools)
            .field("routes", &self.routes)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Deserializes a list of strings, dropping empty ones (`RASK_SIGNING_KEYS=` means none).
fn non_empty_strings<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    let all = Vec::<String>::deserialize(deserializer)?;
    Ok(all.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The URL with any password replaced by `***`, for logs and status output.
///
/// The user information ends at the *last* `@` of the URL, and the password runs from the first
/// `:` in it to there: a password is masked whole even when it holds `/`, `?`, `#`, `@` or `:`
/// unencoded (which strictly it should not, but generated passwords often do). A URL whose
/// path or query holds an `@` after a `:` is masked up to that `@`: too much, never too little.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_variables_are_reported() {
        let vars = [
            "RASK_AMQP_URL",
            "RASK_RESULT_TLL",
            "RASK_LOCAL_DIR",
            "PATH",
            "RASK_PREFETCH",
        ];
        let unknown = Settings::unknown_variables(vars.iter().map(|v| (*v).to_owned()));
        assert_eq!(unknown, vec!["RASK_RESULT_TLL".to_owned()]);
    }

    #[test]
    fn masks_passwords_only() {
        assert_eq!(
            mask_url("amqp://u:secret@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(mask_url("redis://h:6379/"), "redis://h:6379/");
        assert_eq!(mask_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(mask_url("amqp://u@h/%2f"), "amqp://u@h/%2f");
        assert_eq!(mask_url("not a url"), "not a url");
    }

    #[test]
    fn masks_passwords_holding_url_delimiters() {
        for password in [
            "se/cret", "se?cret", "se#cret", "se@cret", "se:cret", "/?#@:",
        ] {
            for url in [
                format!("amqp://u:{password}@h:5672/%2f"),
                format!("rediss://:{password}@h:6379/0?timeout=1"),
                format!("redis://u:{password}@h"),
            ] {
                let masked = mask_url(&url);
                assert!(!masked.contains(password), "{url} -> {masked}");
                assert!(masked.contains(":***@h"), "{url} -> {masked}");
            }
        }
        assert_eq!(
            mask_url("amqp://u:a/b?c#d@h:5672/vhost?heartbeat=5"),
            "amqp://u:***@h:5672/vhost?heartbeat=5"
        );
        // An `@` in the query after a `:` masks too much, never too little.
        assert_eq!(mask_url("redis://h:6379/?a=b@c"), "redis://h:***@c");
        assert_eq!(mask_url("redis://h/?a=b@c"), "redis://h/?a=b@c");
    }

    #[test]
    fn debug_never_shows_passwords() {
        let s = Settings {
            amqp_url: "amqp://u:hunter2@h/%2f".into(),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn signing_keys_are_never_shown_and_must_be_long() {
        let s = Settings {
            signing_keys: vec!["a-secret-of-enough-bytes".into()],
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("a-secret"));
        assert!(s.validate().is_ok());
        let short = Settings {
            signing_keys: vec!["a-secret-of-enough-bytes".into(), "shortsecret".into()],
            ..Settings::default()
        };
        let err = short.validate().unwrap_err().to_string();
        assert!(
            err.contains("key 2") && !err.contains("shortsecret"),
            "{err}"
        );
        let half = Settings {
            tls_cert_file: Some("client.pem".into()),
            ..Settings::default()
        };
        assert!(half.validate().is_err());
    }

    #[test]
    fn cluster_nodes_and_queue_types() {
        let single = Settings::default();
        assert_eq!(single.amqp_nodes(), vec![DEFAULT_AMQP_URL]);
        let nodes = vec![
            "amqp://u:pw1@a:5672/%2f".to_owned(),
            "amqp://u:pw1@b:5672/%2f".to_owned(),
        ];
        let cluster = Settings {
            amqp_urls: nodes.clone(),
            ..Settings::default()
        };
        assert!(cluster.validate().is_ok());
        assert_eq!(
            cluster.amqp_nodes(),
            vec![nodes[0].as_str(), nodes[1].as_str()]
        );
        assert!(!format!("{cluster:?}").contains("pw1"));
        let elsewhere = Settings {
            amqp_url: "amqp://u:pw1@c:5672/%2f".into(),
            ..cluster.clone()
        };
        let err = elsewhere.validate().unwrap_err().to_string();
        assert!(err.contains("amqp_url") && !err.contains("pw1"), "{err}");
        let included = Settings {
            amqp_url: nodes[1].clone(),
            ..cluster.clone()
        };
        assert!(included.validate().is_ok());
        let bad = Settings {
            amqp_urls: vec!["http://a".into()],
            ..Settings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("amqp_urls"));

        let quorum = Settings {
            queue_type: QueueType::Quorum,
            ..Settings::default()
        };
        let err = quorum.validate().unwrap_err().to_string();
        assert!(
            err.contains("max_priority") && err.contains("quorum"),
            "{err}"
        );
        let quorum = Settings {
            max_priority: 0,
            ..quorum
        };
        assert!(quorum.validate().is_ok());

        assert_eq!(Settings::default().task_queues(), vec!["rask.tasks"]);
        let sharded = Settings {
            queue_shards: 3,
            ..Settings::default()
        };
        assert_eq!(
            sharded.task_queues(),
            vec!["rask.tasks", "rask.tasks.shard1", "rask.tasks.shard2"]
        );
        for shards in [0, 257] {
            let bad = Settings {
                queue_shards: shards,
                ..Settings::default()
            };
            assert!(bad
                .validate()
                .unwrap_err()
                .to_string()
                .contains("queue_shards"));
        }
    }

    #[test]
    fn file_and_bad_values_are_reported_by_name() {
        let dir = std::env::temp_dir().join(format!("rask-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rask.toml");
        std::fs::write(&file, "queue = \"q1\"\nresult_ttl = \"90s\"\n").unwrap();
        let s = Settings::load_from(&file, true).unwrap();
        assert_eq!(s.queue, "q1");
        assert_eq!(s.result_ttl, Duration::from_secs(90));

        std::fs::write(
            &file,
            "queue_type = \"quorum\"\nmax_priority = 0\namqp_urls = [\"amqp://a/%2f\", \"amqp://b/%2f\"]\n",
        )
        .unwrap();
        let s = Settings::load_from(&file, true).unwrap();
        assert_eq!(s.queue_type, QueueType::Quorum);
        assert_eq!(s.amqp_nodes(), vec!["amqp://a/%2f", "amqp://b/%2f"]);
        assert_eq!(s.redis_nodes(), vec!["redis://127.0.0.1:6379/"]);
        std::fs::write(
            &file,
            "redis_cluster_urls = [\"redis://a:7000/\", \"redis://b:7001/\"]\n",
        )
        .unwrap();
        let s = Settings::load_from(&file, true).unwrap();
        assert_eq!(s.redis_nodes(), vec!["redis://a:7000/", "redis://b:7001/"]);
        std::fs::write(&file, "redis_cluster_urls = [\"http://a:7000/\"]\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("redis_cluster_urls"), "{err}");
        std::fs::write(&file, "queue_type = \"stream\"\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("stream"), "{err}");

        std::fs::write(
            &file,
            "pools = [\"default\", \"gpu\"]\n[routes]\nimage_stats = \"gpu\"\n",
        )
        .unwrap();
        let s = Settings::load_from(&file, true).unwrap();
        let gpu = Pool::new("gpu").unwrap();
        assert_eq!(s.pools, vec![Pool::default(), gpu.clone()]);
        assert_eq!(s.route("image_stats", None), Some(gpu));
        std::fs::write(&file, "pools = [\"default\", \"g.pu\"]\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("g.pu") && err.contains("pools"), "{err}");
        std::fs::write(&file, "routes = { inc = \"a b\" }\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("a b") && err.contains("routes"), "{err}");
        std::fs::write(&file, "pools = []\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("pools"), "{err}");

        std::fs::write(&file, "concurrency = 0\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("concurrency"), "{err}");
        std::fs::write(&file, "runtime_threads = 1\n").unwrap();
        assert_eq!(Settings::load_from(&file, true).unwrap().runtime_threads, 1);
        std::fs::write(&file, "runtime_threads = 1025\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("runtime_threads = 1025"), "{err}");
        std::fs::write(&file, "prefetch = \"lots\"\n").unwrap();
        let err = Settings::load_from(&file, true).unwrap_err().to_string();
        assert!(err.contains("prefetch") && err.contains("lots"), "{err}");
    }

    #[test]
    fn limits_load_from_tables_or_text() {
        let dir = std::env::temp_dir().join(format!("rask-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rask.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Settings::load_from(&file, true)
        };
        let s =
            load("[limits.send]\nrate = \"100/s\"\nburst = 10\n[limits.resize]\nconcurrency = 2\n")
                .unwrap();
        assert_eq!(s.limits["send"].to_string(), "rate=100/s burst=10");
        assert_eq!(s.limits["resize"].to_string(), "concurrency=2");
        // The text form, as `RASK_LIMITS` gives it.
        let s = load("limits = \"send: rate=5/m; resize: concurrency=1\"\n").unwrap();
        assert_eq!(s.limits["send"].to_string(), "rate=5/m");
        assert_eq!(s.limits["resize"].concurrency, Some(1));
        let err = load("[limits.send]\nburst = 3\n").unwrap_err().to_string();
        assert!(err.contains("burst needs a rate"), "{err}");
        let err = load("[limits.send]\nrate = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fast"), "{err}");
        assert!(Settings::default().limits.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resources_load_from_a_table_or_text() {
        let dir = std::env::temp_dir().join(format!("rask-resources-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rask.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Settings::load_from(&file, true)
        };
        let s = load("[resources]\ngpu = 2\nmem = \"16GiB\"\n").unwrap();
        assert_eq!(s.resources.to_string(), "gpu=2,mem=16GiB");
        // The text form, as `RASK_RESOURCES` gives it.
        let s = load("resources = \"gpu=1, mem=512MiB\"\n").unwrap();
        assert_eq!(s.resources.to_string(), "gpu=1,mem=512MiB");
        assert!(load("").unwrap().resources.is_empty());
        assert!(Settings::unknown_variables(["RASK_RESOURCES".to_owned()]).is_empty());
        for (text, says) in [
            ("resources = \"gpu=2GB\"\n", "GB are not"),
            ("[resources]\ngpu = 0\n", "amount 0"),
            ("resources = \"gpu\"\n", "NAME=AMOUNT"),
        ] {
            let err = load(text).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Configuration);
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
