//! The command line: every subcommand, flag and help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// rask: submit tasks to RabbitMQ, run them on stateless workers, gather results from Redis.
///
/// Connection settings come from `rask.toml` and `RASK_*` variables (RASK_AMQP_URL,
/// RASK_REDIS_URL, ...); with none set, rask talks to the local cluster of `rask local up`.
#[derive(Parser)]
#[command(name = "rask", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes.
#[derive(Args)]
pub(crate) struct Global {
    /// Settings file (default: `rask.toml` in the working directory, if present).
    #[arg(long, global = true)]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Submit one task and print its result as JSON.
    Submit(SubmitArgs),
    /// Submit one task per input line (a JSON array of arguments) and print results as JSON lines.
    Map(MapArgs),
    /// Print the results of tasks by key, as JSON lines in the order given.
    Gather(GatherArgs),
    /// Delete stored results by key.
    Release(ReleaseArgs),
    /// Cancel tasks by key: store `Cancelled` for those without an outcome (failing their graph
    /// dependents) and print how many; with `--force`, also stop them on the workers.
    Cancel(CancelArgs),
    /// Empty the task queue and delete every stored result of this deployment (key prefix).
    Purge,
    /// Run one function on every live worker (built-ins: `ping`, `info`) and print the answers
    /// by worker id as one JSON object; workers that do not answer in time are `missing`.
    Run(RunArgs),
    /// One screen on the deployment: queues, dead letters, live workers and their counters,
    /// tasks/s, recent errors.
    Status(StatusArgs),
    /// Print where tasks are by key: state (queued, waiting, running, succeeded, failed,
    /// cancelled, unknown), who queued them and when, where and when they ran, how they ended.
    Inspect(InspectArgs),
    /// Print the deployment's task events (queued, started, succeeded, failed, retried,
    /// cancelled, dead_lettered), oldest first; `--follow` keeps printing new ones.
    Events(EventsArgs),
    /// Write a performance report of the last `--since` (one self-contained HTML file): task
    /// stream, throughput, durations per function, worker utilization, failures.
    Report(ReportArgs),
    /// Serve a live web dashboard of the deployment (plain HTML/JS over `/api/status`).
    Dashboard(DashboardArgs),
    /// Inspect and replay the dead-letter queue (messages workers could not process).
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Periodic tasks: add, list, pause, resume and remove schedules that the workers tick
    /// (each tick published once, by one worker; no scheduler process).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Global limits per function: at most a rate of starts and a number running at once, over
    /// all workers (a task over its limit waits in the broker).
    #[command(subcommand)]
    Limit(LimitCommand),
    /// Run a private local cluster (RabbitMQ, Redis, workers) on loopback, without Docker.
    #[command(subcommand)]
    Local(LocalCommand),
    /// The main job: analyse batches of generated images on the cluster and print a summary.
    Demo(DemoArgs),
    /// Run the canonical benchmark workloads on a private cluster, beside the raw lapin + Redis
    /// floor measured in the same run; prints `RESULT` lines and a table (or JSON).
    Bench(BenchArgs),
}

#[derive(Args)]
pub(crate) struct SubmitArgs {
    /// Name of the function to run (e.g. `inc`).
    pub(crate) function: String,
    /// Arguments, each a JSON value (e.g. `41`, `'"text"'`, `'[1,2]'`).
    pub(crate) args: Vec<String>,
    /// Print the task's key and return without waiting for the result.
    #[arg(long)]
    pub(crate) key_only: bool,
    /// Give up waiting after this long (e.g. `30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) timeout: Option<Duration>,
    #[command(flatten)]
    pub(crate) schedule: ScheduleArgs,
}

/// When and how submitted tasks run (`submit` and `map`).
#[derive(Args)]
pub(crate) struct ScheduleArgs {
    /// Run no earlier than this long from now (e.g. `10s`); the task waits in the broker.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "eta")]
    pub(crate) countdown: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. `2026-12-01T09:00:00Z`).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub(crate) eta: Option<std::time::SystemTime>,
    /// Priority: waiting tasks of a higher one are delivered first (0 lowest, up to the
    /// `max_priority` setting).
    #[arg(long, default_value_t = 0)]
    pub(crate) priority: u8,
    /// Retry a task that fails with a retryable error up to this many times.
    #[arg(long, default_value_t = 0)]
    pub(crate) retries: u32,
    /// Pause before the first retry, doubling (with jitter) for each further one.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub(crate) retry_backoff: Duration,
    /// Fail a task with `TimedOut` if it runs longer than this.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) time_limit: Option<Duration>,
    /// Send the tasks to the workers of this pool (default: the pool the `routes` setting
    /// names for the function, else `default`).
    #[arg(long)]
    pub(crate) pool: Option<rask::Pool>,
    /// Run only on a worker with these resources free, e.g. `gpu=1` or `gpu=1,mem=4GiB` (see
    /// `rask-worker --resources`); fails with `ResourceUnavailable` if no live worker has
    /// that much.
    #[arg(long, value_name = "NAME=AMOUNT,...", value_parser = parse_resources)]
    pub(crate) resources: Option<rask::Resources>,
    /// Hedged execution: publish a second copy of a task still running after this long (e.g.
    /// `200ms`); the first outcome stored wins and the other copy is cancelled. Hedged tasks
    /// are not batched; the copies are counted in `{prefix}:hedges`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "hedge_p95")]
    pub(crate) hedge: Option<Duration>,
    /// Hedged execution after FACTOR times the 95th percentile of the completion times of the
    /// call's tasks so far (the function's average run time until 20 have completed).
    #[arg(long, value_name = "FACTOR")]
    pub(crate) hedge_p95: Option<f64>,
}

/// Reads `--resources`.
fn parse_resources(text: &str) -> Result<rask::Resources, String> {
    text.parse().map_err(|e: rask_common::Error| e.to_string())
}

impl ScheduleArgs {
    /// The library's options for these flags.
    pub(crate) fn options(&self) -> rask::TaskOptions {
        let mut options = rask::TaskOptions::new().priority(self.priority);
        if let Some(countdown) = self.countdown {
            options = options.countdown(countdown);
        }
        if let Some(eta) = self.eta {
            options = options.eta(eta);
        }
        if self.retries > 0 {
            let max = self.retry_backoff.max(Duration::from_secs(60));
            options = options.retry(
                rask::RetryPolicy::new(self.retries.saturating_add(1))
                    .backoff(self.retry_backoff, max),
            );
        }
        if let Some(limit) = self.time_limit {
            options = options.time_limit(limit);
        }
        if let Some(pool) = &self.pool {
            options = options.pool(pool.clone());
        }
        if let Some(needs) = &self.resources {
            options = options.resources(needs.clone());
        }
        if let Some(after) = self.hedge {
            options = options.hedge(after);
        }
        if let Some(factor) = self.hedge_p95 {
            options = options.hedge_p95(factor);
        }
        options
    }
}

#[derive(Args)]
pub(crate) struct MapArgs {
    /// Name of the function to run for every input line.
    pub(crate) function: String,
    /// Read argument lines from this file instead of standard input.
    #[arg(long)]
    pub(crate) input: Option<PathBuf>,
    /// Print the tasks' keys (one per line, in input order) without waiting for results.
    #[arg(long)]
    pub(crate) keys_only: bool,
    /// Give up waiting after this long (e.g. `30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Pack at most N calls into one message (batched small tasks); `1` turns batching off.
    /// Default: sized by the function's run time as workers measured it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch: Option<u32>,
    #[command(flatten)]
    pub(crate) schedule: ScheduleArgs,
}

#[derive(Args)]
pub(crate) struct GatherArgs {
    /// Task keys, as printed by `submit --key-only` or `map --keys-only`.
    #[arg(required = true)]
    pub(crate) keys: Vec<String>,
    /// Give up waiting after this long (e.g. `30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) timeout: Option<Duration>,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Function to run on every worker: `ping`, `info`, or one the workers registered.
    pub(crate) function: String,
    /// Arguments, each a JSON value (as for `submit`).
    pub(crate) args: Vec<String>,
    /// How long to wait for the workers' answers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub(crate) timeout: Duration,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// Print one JSON object (`queues`, `dead_letters`, `workers` (each with its `pools`),
    /// `totals`, `tasks_per_second`, `recent_errors`, `pools`, `unserved_routes`) instead of
    /// the screen.
    #[arg(long)]
    pub(crate) json: bool,
    /// Refresh every `--interval` until interrupted.
    #[arg(long)]
    pub(crate) watch: bool,
    /// How often `--watch` refreshes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub(crate) interval: Duration,
}

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// Task keys to inspect.
    #[arg(required = true)]
    pub(crate) keys: Vec<String>,
    /// One JSON object per key and line: `key`, `state`, `function`, `queued_at`, `queued_by`,
    /// `started_at`, `worker`, `slot`, `attempt`, `finished_at`, `duration_ms`, `retries`,
    /// `failure`, `error`, `dead_lettered_at`, `waiting_for` (times in Unix ms).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(long)]
    pub(crate) follow: bool,
    /// One JSON object per event and line: `id`, `kind`, `key`, `function`, `at` (Unix ms),
    /// and where set `by`, `worker`, `slot`, `attempt`, `started`, `duration_ms`, `error`.
    #[arg(long)]
    pub(crate) json: bool,
    /// Only events of tasks of this function.
    #[arg(long)]
    pub(crate) function: Option<String>,
    /// Only events of the last DURATION (e.g. `10m`); default: every event kept.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) since: Option<Duration>,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// The window reported: the last DURATION (e.g. `10m`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub(crate) since: Duration,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    pub(crate) out: PathBuf,
}

#[derive(Args)]
pub(crate) struct DashboardArgs {
    /// Address to serve on (port 0: a free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub(crate) listen: std::net::SocketAddr,
}

#[derive(Args)]
pub(crate) struct ReleaseArgs {
    /// Task keys whose results to delete.
    #[arg(required = true)]
    pub(crate) keys: Vec<String>,
}

#[derive(Args)]
pub(crate) struct CancelArgs {
    /// Task keys to cancel.
    #[arg(required = true)]
    pub(crate) keys: Vec<String>,
    /// Also revoke them: workers drop them if queued (now or later, for the result TTL) and stop
    /// them if running (async bodies at once; plain functions after `cancel_grace`).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Subcommand)]
pub(crate) enum DeadCommand {
    /// Print dead-lettered messages, oldest first, without removing them: one line each,
    /// `KEY<TAB>FUNCTION<TAB>BYTES<TAB>REASON` (`-` where unknown), or JSON lines.
    List(DeadListArgs),
    /// Publish dead-lettered messages to the task queue again and remove them from the
    /// dead-letter queue (their stored BadMessage/DeliveryLimit failures are deleted first).
    Requeue(DeadRequeueArgs),
}

#[derive(Args)]
pub(crate) struct DeadListArgs {
    /// Print at most this many messages.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: usize,
    /// One JSON object per line: `key`, `function`, `reason`, `worker`, `bytes`.
    #[arg(long)]
    pub(crate) json: bool,
    /// The dead-letter queue of this pool (default: the default pool's).
    #[arg(long)]
    pub(crate) pool: Option<rask::Pool>,
}

#[derive(Args)]
pub(crate) struct DeadRequeueArgs {
    /// Requeue at most this many messages.
    #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
    pub(crate) limit: usize,
    /// Requeue only the message of this task key.
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// The dead-letter queue of this pool, requeued to that pool's task queue (default: the
    /// default pool's).
    #[arg(long)]
    pub(crate) pool: Option<rask::Pool>,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(crate) enum ScheduleCommand {
    /// Add a schedule (or replace the one of that name): run FUNC with ARG_JSON... at every
    /// tick of `--cron` (in `--tz`) or `--every`.
    Add(ScheduleAddArgs),
    /// Print every schedule: one line each, `NAME<TAB>WHEN<TAB>FUNCTION<TAB>NEXT<TAB>LAST<TAB>STATE`
    /// (times in RFC 3339, `-` where none), or one JSON array.
    List(ScheduleListArgs),
    /// Remove a schedule (a tick already published still runs).
    Remove(ScheduleNameArgs),
    /// Pause a schedule: its ticks are skipped until it is resumed.
    Pause(ScheduleNameArgs),
    /// Resume a paused schedule from its next tick.
    Resume(ScheduleNameArgs),
}

#[derive(Args)]
pub(crate) struct ScheduleAddArgs {
    /// The schedule's name (1-64 characters of `[A-Za-z0-9_.-]`).
    pub(crate) name: String,
    /// A cron pattern: 5 fields (`minute hour day month weekday`, e.g. `*/5 * * * *`), or 6
    /// with seconds first.
    #[arg(long, required_unless_present = "every", conflicts_with = "every")]
    pub(crate) cron: Option<String>,
    /// The IANA time zone the cron pattern is read in (e.g. `Europe/Paris`); default UTC.
    #[arg(long, requires = "cron")]
    pub(crate) tz: Option<String>,
    /// A fixed interval instead of a cron pattern (e.g. `30s`, `5m`), the first tick one
    /// interval from now.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) every: Option<Duration>,
    /// Ticks missed while no worker ran: `skip` them, run the latest `once`, or run `all`.
    #[arg(long, default_value = "once")]
    pub(crate) missed: rask::Missed,
    /// Name of the function to run (e.g. `inc`).
    pub(crate) function: String,
    /// Arguments, each a JSON value (e.g. `41`, `'"text"'`, `'[1,2]'`).
    pub(crate) args: Vec<String>,
    #[command(flatten)]
    pub(crate) schedule: ScheduleArgs,
}

#[derive(Args)]
pub(crate) struct ScheduleListArgs {
    /// One JSON array of objects: `name`, `cron`, `tz` or `every_ms`, `missed`, `paused`,
    /// `function`, `args`, `next_tick`, `last_tick`.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct ScheduleNameArgs {
    /// The schedule's name.
    pub(crate) name: String,
}

#[derive(Subcommand)]
pub(crate) enum LimitCommand {
    /// Limit a function (or with `--pool NAME`, every task of a pool) on every worker, replacing
    /// its limit: `--rate 100/s [--burst N]`, `--concurrency N`, or both.
    Set(LimitSetArgs),
    /// Print every limit: one line each, `FUNCTION<TAB>RATE<TAB>BURST<TAB>CONCURRENCY<TAB>SOURCE`
    /// (`-` where none; source `redis` or `settings`), or one JSON array.
    List(LimitListArgs),
    /// Remove a function's limit, or a pool's with `--pool NAME` (set with `limit set`).
    Remove(LimitRemoveArgs),
}

#[derive(Args)]
pub(crate) struct LimitSetArgs {
    /// The function to limit (e.g. `send_email`).
    #[arg(required_unless_present = "pool", conflicts_with = "pool")]
    pub(crate) function: Option<String>,
    /// Limit every task of this pool instead, whatever its function (the limit of `pool:NAME`;
    /// a task passes its pool's limit and its function's).
    #[arg(long)]
    pub(crate) pool: Option<rask::Pool>,
    /// Most tasks started per period over all workers: `COUNT/PERIOD`, the period `s`, `m`, `h`
    /// or a duration (`100/s`, `5/m`, `10/2s`).
    #[arg(long, value_parser = parse_rate)]
    pub(crate) rate: Option<rask::Rate>,
    /// Tasks that may start at once after a quiet spell (default 1: starts evenly spaced).
    #[arg(long, requires = "rate", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) burst: Option<u32>,
    /// Most tasks running at once over all workers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: Option<u32>,
}

/// Reads `--rate`.
fn parse_rate(text: &str) -> Result<rask::Rate, String> {
    text.parse().map_err(|e: rask_common::Error| e.to_string())
}

#[derive(Args)]
pub(crate) struct LimitListArgs {
    /// One JSON array of objects: `function`, `rate`, `burst`, `concurrency` (null where
    /// none), `source`.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct LimitRemoveArgs {
    /// The function whose limit to remove.
    #[arg(required_unless_present = "pool", conflicts_with = "pool")]
    pub(crate) function: Option<String>,
    /// Remove this pool's limit instead.
    #[arg(long)]
    pub(crate) pool: Option<rask::Pool>,
}

/// The limit table's subject of a `limit` command: the function, or `pool:NAME`.
pub(crate) fn limit_subject(function: Option<String>, pool: Option<&rask::Pool>) -> String {
    match pool {
        Some(pool) => rask_common::limits::pool_subject(pool),
        None => function.expect("clap requires a function without --pool"),
    }
}

#[derive(Subcommand)]
pub(crate) enum LocalCommand {
    /// Start RabbitMQ, Redis and N workers in the background; return once all answer.
    Up(LocalUpArgs),
    /// Stop exactly what `up` started.
    Down(LocalDirArgs),
    /// List the cluster's processes with their PIDs and addresses, and the workers' restarts.
    Status(LocalDirArgs),
    /// Run the workers of a cluster and start again any that exits abnormally (what `up`
    /// starts in the background; not meant to be run by hand).
    #[command(hide = true)]
    Supervise(LocalSuperviseArgs),
}

#[derive(Args)]
pub(crate) struct LocalSuperviseArgs {
    /// How many workers to run.
    #[arg(long)]
    pub(crate) workers: usize,
    /// Extra workers serving a pool: `NAME:COUNT[:RESOURCE=AMOUNT,...]` (repeatable).
    #[arg(long = "pool")]
    pub(crate) pools: Vec<rask::local::PoolWorkers>,
    #[command(flatten)]
    pub(crate) dir: LocalDirArgs,
}

#[derive(Args)]
pub(crate) struct LocalDirArgs {
    /// The cluster's folder (default: $RASK_LOCAL_DIR, else ~/.local/state/rask/local).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct LocalUpArgs {
    /// How many `rask-worker` processes to start (0: servers only).
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// RabbitMQ's AMQP port on 127.0.0.1.
    #[arg(long, default_value_t = 5672)]
    pub(crate) amqp_port: u16,
    /// RabbitMQ's Erlang distribution port.
    #[arg(long, default_value_t = 25672)]
    pub(crate) dist_port: u16,
    /// Redis's port on 127.0.0.1.
    #[arg(long, default_value_t = 6379)]
    pub(crate) redis_port: u16,
    /// When Redis fsyncs its append-only file: `everysec` (a crash of the machine can lose the
    /// last second or so of acknowledged results) or `always` (none, at a disk flush per write
    /// batch; see docs/reliability.md).
    #[arg(long, default_value_t = rask::local::Fsync::EverySec)]
    pub(crate) fsync: rask::local::Fsync,
    /// Also start COUNT workers serving only pool NAME, each declaring the resources given
    /// (passed to them in `RASK_RESOURCES`): `NAME:COUNT[:RESOURCE=AMOUNT,...]`, e.g.
    /// `gpu:1:gpu=2`. Repeatable.
    #[arg(long = "pool")]
    pub(crate) pools: Vec<rask::local::PoolWorkers>,
    #[command(flatten)]
    pub(crate) dir: LocalDirArgs,
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// How many image batches to analyse.
    #[arg(long, default_value_t = 48)]
    pub(crate) batches: u32,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub(crate) images: u32,
    /// Width and height of each image, in pixels.
    #[arg(long, default_value_t = 96)]
    pub(crate) size: u32,
    /// Give up waiting after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub(crate) timeout: Duration,
    /// The pool that analyses the images; each analysis task needs `gpu=1` there, except on
    /// `default` (no resource). The demo stops if no live worker serves the pool: start one
    /// with `rask local up --pool gpu:1:gpu=2`, or ask for `--pool default`.
    #[arg(long, default_value = "gpu")]
    pub(crate) pool: rask::Pool,
    /// Keep the image batches in a blob store under this URL (`file:///dir` or
    /// `s3://bucket/prefix`, with the `s3_endpoint` setting and `AWS_*` credentials), written
    /// once (a batch already there is not written again), and send tasks only their URLs: the
    /// workers read the batches from there.
    #[arg(long, value_name = "URL")]
    pub(crate) from: Option<String>,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Workloads to run, comma-separated (default: all, in the canonical order).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) workloads: Vec<crate::cmd::bench::Workload>,
    /// Print one JSON document (as the last line) instead of the table; `RESULT` lines stay.
    #[arg(long)]
    pub(crate) json: bool,
    /// Tiny sizes (200 tasks, 20 round trips, a 16-leaf tree, 10 payloads of 64 KiB, scale
    /// 400), so that CI can check the command still works; the figures mean nothing.
    #[arg(long)]
    pub(crate) smoke: bool,
    /// Worker processes to start, and floor consumers to run.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Tasks each worker process runs at once (default: the `concurrency` setting's default,
    /// the number of CPUs); `1` with `--workloads cpu` measures scaling by processes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: Option<u32>,
    /// Declare the private cluster's task queue as a quorum queue (`queue_type = quorum`, and
    /// so `max_priority = 0`) instead of a classic one; the floor's queues stay classic.
    #[arg(long, conflicts_with = "use_running")]
    pub(crate) quorum: bool,
    /// Spread the private cluster's tasks over this many task queues (`queue_shards`).
    #[arg(long, default_value_t = 1, conflicts_with = "use_running",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) shards: u16,
    /// Run the private cluster's clients and workers with the `events` setting off (to measure
    /// what recording task states and events costs, beside a run without it).
    #[arg(long, conflicts_with_all = ["use_running", "events"])]
    pub(crate) no_events: bool,
    /// Run the private cluster's clients and workers with the `events` setting on (its
    /// default; kept for scripts that pass it).
    #[arg(long, conflicts_with = "use_running")]
    pub(crate) events: bool,
    /// Run the private cluster's workers with the `local_continuation` setting off: every graph
    /// task released is published (to measure what running released tasks in place saves).
    #[arg(long, conflicts_with = "use_running")]
    pub(crate) no_continuation: bool,
    /// Run every workload this many times and report the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,
    /// Use the cluster of the settings (`rask.toml`, `RASK_*`) and its running workers instead
    /// of starting a private one; worker memory and CPU are then not measured.
    #[arg(long)]
    pub(crate) use_running: bool,
    /// Longest task arguments, in bytes, sent inside the message in the private cluster (the
    /// `inline_limit` setting; default: its default); `0` sends every argument inline, as rask
    /// did before arguments could go by reference (for comparing the two).
    #[arg(long, value_name = "BYTES")]
    pub(crate) inline_limit: Option<usize>,
    /// Keep arguments and results over `blob_threshold` (1 MiB) in a blob store, a directory
    /// of the private cluster (`blob_url = file://…`): `--workloads payload --blobs` measures
    /// large values through it.
    #[arg(long)]
    pub(crate) blobs: bool,
    /// Keep the private cluster's files (RabbitMQ's message store, Redis's append-only file,
    /// the blob store of `--blobs`) in shared memory (`/dev/shm`) instead of the temporary
    /// directory: the same medium for rask and the floor, where a disk's or a virtual
    /// machine's file system costs would otherwise decide the large-value figures.
    #[arg(long, conflicts_with = "use_running")]
    pub(crate) in_memory: bool,
    /// Threads of each private worker's async runtime (the `runtime_threads` setting; default
    /// 0, one per CPU): `1` handles each delivery on one thread, the lowest latency per task.
    #[arg(long, value_name = "N", conflicts_with = "use_running")]
    pub(crate) runtime_threads: Option<usize>,
}
