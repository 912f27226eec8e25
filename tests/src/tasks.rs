//! Task functions for tests that need them in worker processes: the `rask-test-worker` binary
//! runs these besides the stock functions, and tests submit them through these handles.

rask::task! {
    /// Counts its run in the Redis counter `counter`, then kills its worker process on the spot
    /// (`abort`): a poison message.
    pub async fn abort_worker(redis_url: String, counter: String) -> i64 {
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        redis::cmd("INCR")
            .arg(counter)
            .query_async::<i64>(&mut conn)
            .await
            .expect("INCR succeeds");
        std::process::abort()
    }
}

rask::task! {
    /// Sleeps `ms` milliseconds without holding a thread, then returns `id`: a task of a chosen
    /// length whose value says which task it was, so that a result stored under another task's
    /// key shows (the long runs of [`crate::runs`]).
    pub async fn paced(id: u64, ms: u64) -> u64 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        id
    }
}

rask::task! {
    /// Counts its run in the Redis counter `counter`; kills its worker process on the spot
    /// (`abort`) for the first `aborts` runs, then returns the count.
    pub async fn abort_worker_until(redis_url: String, counter: String, aborts: i64) -> i64 {
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let run = redis::cmd("INCR")
            .arg(counter)
            .query_async::<i64>(&mut conn)
            .await
            .expect("INCR succeeds");
        if run <= aborts {
            std::process::abort()
        }
        run
    }
}

rask::task! {
    /// Appends the line `i` to the file `log` (one line per run, in one write: the test counts
    /// each task's runs there, without the network a partition cuts), sleeps `pause_ms`, and
    /// returns `i`: a value unique to the task.
    pub async fn record_run(log: String, i: u64, pause_ms: u64) -> Result<u64, std::io::Error> {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?
            .write_all(format!("{i}\n").as_bytes())?;
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        Ok(i)
    }
}

rask::task! {
    /// Holds the resource slots its worker assigned it (read with
    /// [`rask_worker::held_slots`]): counts itself in the Redis counter `{prefix}:running`,
    /// recording the highest count in `{prefix}:peak`, and in `{prefix}:slot:{i}` for each
    /// `gpu` slot `i` it holds (counting in `{prefix}:shared` each time another run held the
    /// same slot at once); then waits until the key `{prefix}:gate` exists or `hold_ms` have
    /// passed, uncounts itself and returns the `gpu` slot indices it held.
    pub async fn hold_slot(redis_url: String, prefix: String, hold_ms: u64) -> Vec<u32> {
        let slots = rask_worker::held_slots().remove("gpu").unwrap_or_default();
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let key = |name: &str| format!("{prefix}:{name}");
        let slot_keys: Vec<String> = slots.iter().map(|i| key(&format!("slot:{i}"))).collect();
        redis::Script::new(ENTER)
            .key(key("running"))
            .key(key("peak"))
            .key(key("shared"))
            .key(&slot_keys)
            .invoke_async::<i64>(&mut conn)
            .await
            .expect("the script runs");
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(hold_ms);
        while tokio::time::Instant::now() < until {
            let open: bool = redis::cmd("EXISTS")
                .arg(key("gate"))
                .query_async(&mut conn)
                .await
                .expect("Redis answers");
            if open {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut leave = redis::pipe();
        leave.cmd("DECR").arg(key("running")).ignore();
        for slot in &slot_keys {
            leave.cmd("DECR").arg(slot).ignore();
        }
        leave
            .query_async::<()>(&mut conn)
            .await
            .expect("Redis answers");
        slots
    }
}

/// [`hold_slot`]'s entry: one more running (and the peak), one more holder of each slot (and a
/// shared slot counted).
const ENTER: &str = r"
local running = redis.call('INCR', KEYS[1])
if running > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], running)
end
for i = 4, #KEYS do
  if redis.call('INCR', KEYS[i]) > 1 then redis.call('INCR', KEYS[3]) end
end
return running
";

/// The runs [`record_run`] recorded in `log`, per `i` (`i` below `n`; a missing file counts
/// none).
pub fn recorded_runs(log: &std::path::Path, n: usize) -> Vec<u32> {
    let mut runs = vec![0; n];
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let i: usize = line.parse().expect("record_run writes numbers");
        runs[i] += 1;
    }
    runs
}

/// The worker state of the test worker: which build of it this is (its worker process's), and
/// how many tasks used it.
pub struct Probe {
    /// The value of the Redis counter [`STATE_INITS`] after this build counted itself: 1 for
    /// the first worker process of a test, 2 for the second, …; 0 when not counted
    /// ([`COUNT_STATE_VAR`] unset).
    pub build: i64,
    /// Tasks that used this value.
    pub uses: std::sync::atomic::AtomicU64,
}

/// The Redis counter (under the worker's key prefix) that each build of [`Probe`] increments.
pub const STATE_INITS: &str = "test-counter:state-inits";

/// The variable that makes the test worker count the builds of its state in Redis (`1`). Only
/// the tests that count set it: the other tests' workers start without touching Redis first
/// (some start while Redis is away).
pub const COUNT_STATE_VAR: &str = "RASK_TEST_COUNT_STATE";

/// The variable that makes the test worker's state fail to build (`1`), so that it exits.
pub const FAIL_STATE_VAR: &str = "RASK_TEST_FAIL_STATE";

/// The message of the state build that fails on [`FAIL_STATE_VAR`].
pub const FAIL_STATE_MESSAGE: &str = "the probe is switched off (RASK_TEST_FAIL_STATE=1)";

/// Builds a [`Probe`]: counts the build in Redis under `key_prefix` when [`COUNT_STATE_VAR`] is
/// `1`; fails when [`FAIL_STATE_VAR`] is `1`.
async fn build_probe(redis_url: String, key_prefix: String) -> anyhow::Result<Probe> {
    let set = |var: &str| std::env::var(var).as_deref() == Ok("1");
    if set(FAIL_STATE_VAR) {
        anyhow::bail!(FAIL_STATE_MESSAGE);
    }
    if !set(COUNT_STATE_VAR) {
        let uses = std::sync::atomic::AtomicU64::new(0);
        return Ok(Probe { build: 0, uses });
    }
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let build = redis::cmd("INCR")
        .arg(format!("{key_prefix}:{STATE_INITS}"))
        .query_async::<i64>(&mut conn)
        .await?;
    Ok(Probe {
        build,
        uses: std::sync::atomic::AtomicU64::new(0),
    })
}

rask::task! {
    /// Returns `i`, the build of the worker's [`Probe`] it used, and how many tasks used that
    /// build before it.
    pub fn use_probe(probe: &rask::State<Probe>, i: u64) -> (u64, i64, u64) {
        let before = probe.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (i, probe.build, before)
    }
}

rask::task! {
    /// What the task knows of its run: its key, attempt and worker, and `x`. Fails (retryably)
    /// while its attempt is below `failures`.
    pub async fn whoami(ctx: &rask::TaskContext, x: u64, failures: u32) -> Result<(String, u32, String, u64), rask::TaskError> {
        if ctx.attempt() < failures {
            return Err(rask::TaskError::retryable(format!("attempt {} fails", ctx.attempt())));
        }
        Ok((ctx.key().to_string(), ctx.attempt(), ctx.worker_id().to_owned(), x))
    }
}

rask::task! {
    /// A node of a binary tree of tasks: a leaf (`depth` 0) returns its `label`; any other node
    /// launches its two children (labels `2 label` and `2 label + 1`), waits for them and
    /// returns their sum: the sum of its leaves' labels.
    pub async fn tree(ctx: &rask::TaskContext, depth: u32, label: u64) -> Result<u64, rask::Error> {
        use rask::ContextExt as _;
        if depth == 0 {
            return Ok(label);
        }
        let client = ctx.client().await?;
        let children = client
            .map(tree, [(depth - 1, 2 * label), (depth - 1, 2 * label + 1)])
            .await?;
        Ok(ctx.gather(&children).await?.into_iter().sum())
    }
}

rask::task! {
    /// [`tree`] whose every node needs one `gpu`: a node waiting for its children lends its GPU
    /// slot to them and takes the same slot back (it fails if its slot changed meanwhile).
    pub async fn gpu_tree(ctx: &rask::TaskContext, depth: u32, label: u64) -> Result<u64, String> {
        use rask::ContextExt as _;
        if depth == 0 {
            return Ok(label);
        }
        let before = ctx.slots().clone();
        let client = ctx.client().await.map_err(|e| e.to_string())?;
        let gpu = rask::TaskOptions::new().resources([("gpu", 1)]);
        let children = client
            .map_with(gpu_tree, [(depth - 1, 2 * label), (depth - 1, 2 * label + 1)], &gpu)
            .await
            .map_err(|e| e.to_string())?;
        let sum: u64 = ctx.gather(&children).await.map_err(|e| e.to_string())?.into_iter().sum();
        if ctx.slots() != &before || before.get("gpu").map_or(0, Vec::len) != 1 {
            return Err(format!("held {before:?} before waiting, {:?} after", ctx.slots()));
        }
        Ok(sum)
    }
}

rask::task! {
    /// [`tree`] with a plain (blocking) body: waits with `secede_blocking`.
    pub fn tree_blocking(ctx: &rask::TaskContext, depth: u32, label: u64) -> Result<u64, rask::Error> {
        use rask::ContextExt as _;
        if depth == 0 {
            return Ok(label);
        }
        let children = ctx.secede_blocking(async {
            let client = ctx.client().await?;
            let children = client
                .map(tree_blocking, [(depth - 1, 2 * label), (depth - 1, 2 * label + 1)])
                .await?;
            client.gather(&children).await
        })?;
        Ok(children.into_iter().sum())
    }
}

/// The sum of the leaf labels of a [`tree`] of `depth` under the root label 1.
pub fn tree_sum(depth: u32) -> u64 {
    let first = 1u64 << depth;
    (first..2 * first).sum()
}

/// The stock functions and this module's, with the [`Probe`] state built from `settings` (its
/// Redis and key prefix).
pub fn registry_for(settings: &rask::Settings) -> rask_worker::Registry {
    let (redis_url, key_prefix) = (settings.redis_url.clone(), settings.key_prefix.clone());
    registry()
        .with_state(move || build_probe(redis_url.clone(), key_prefix.clone()))
        .with::<use_probe>()
}

rask::task! {
    /// Returns the time it started (Unix ms, this machine's clock): how a rate limit spaced
    /// the starts of `i`-th task (`i` makes each task's arguments its own).
    pub fn started_at(i: u64) -> u64 {
        let _ = i;
        rask_common::revocations::unix_ms(std::time::SystemTime::now())
    }
}

rask::task! {
    /// Runs while holding a concurrency lease: adds `{pid}:{i}` (its worker's process id) to
    /// the Redis set `{prefix}:running`, recording the set's largest size in `{prefix}:peak`,
    /// waits `hold_ms`, removes itself and returns `i`. A member left by a killed worker is
    /// removed by the test (its pid names it).
    pub async fn hold_lease(redis_url: String, prefix: String, i: u64, hold_ms: u64) -> u64 {
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let member = format!("{}:{i}", std::process::id());
        redis::Script::new(ENTER_SET)
            .key(format!("{prefix}:running"))
            .key(format!("{prefix}:peak"))
            .arg(&member)
            .invoke_async::<i64>(&mut conn)
            .await
            .expect("the script runs");
        tokio::time::sleep(std::time::Duration::from_millis(hold_ms)).await;
        redis::cmd("SREM")
            .arg(format!("{prefix}:running"))
            .arg(&member)
            .exec_async(&mut conn)
            .await
            .expect("Redis answers");
        i
    }
}

/// [`hold_lease`]'s entry: into the set, and the peak of its size.
const ENTER_SET: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
local running = redis.call('SCARD', KEYS[1])
if running > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], running)
end
return running
";

rask::task! {
    /// Counts its run in the Redis counter `{prefix}:{i}` (runs per call, for batches); kills
    /// its worker process on the spot on the first run of the call `abort_at`; fails
    /// (retryably) its first `fail_first` runs; else returns `i * 10 + 7`, a value of its own.
    pub async fn counted(redis_url: String, prefix: String, i: u64, fail_first: i64, abort_at: u64) -> Result<u64, rask::TaskError> {
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let run = redis::cmd("INCR")
            .arg(format!("{prefix}:{i}"))
            .query_async::<i64>(&mut conn)
            .await
            .expect("INCR succeeds");
        if i == abort_at && run == 1 {
            std::process::abort()
        }
        if run <= fail_first {
            return Err(rask::TaskError::retryable(format!("run {run} of call {i} fails")));
        }
        Ok(i * 10 + 7)
    }
}

/// The stock functions and this module's, without those that take worker state.
pub fn registry() -> rask_worker::Registry {
    rask_worker::Registry::with_builtins()
        .with::<abort_worker>()
        .with::<paced>()
        .with::<abort_worker_until>()
        .with::<record_run>()
        .with::<whoami>()
        .with::<tree>()
        .with::<tree_blocking>()
        .with::<gpu_tree>()
        .with::<hold_slot>()
        .with::<started_at>()
        .with::<hold_lease>()
        .with::<counted>()
        .with::<crate::blob_tasks::stream_blob>()
        .with::<crate::blob_tasks::digest_blob>()
        .with::<crate::blob_tasks::digest_value>()
}
