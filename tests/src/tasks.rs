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

/// The stock functions and this module's.
pub fn registry() -> rask_worker::Registry {
    rask_worker::Registry::with_builtins()
        .with::<abort_worker>()
        .with::<paced>()
        .with::<abort_worker_until>()
        .with::<record_run>()
        .with::<hold_slot>()
}
