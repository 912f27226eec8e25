//! Network faults as Jepsen makes them, against real servers and processes: Redis stopped
//! (`SIGSTOP`) under a map; a worker and a client in a network namespace of the test's own cut
//! off from RabbitMQ and Redis by `iptables` DROP (no FIN, no RST: their connections go
//! half-open) for 30 s, and for 10 s while Redis's host crashes behind the partition; and a slow,
//! lossy link (50 ms each way, 1 % of packets lost) under a 5,000-task map. Every run
//! must finish with every task's own value, each result stored once, and the waiters must
//! recover within a few ping intervals once the network heals.
//!
//! The clients are `rask map` processes, the workers `rask-test-worker` processes (inside the
//! namespace through `ip netns exec`), all pinging Redis every [`PING`]. Tasks are
//! [`record_run`]: each run appends its index to a file, so the test counts executions without
//! the network the partition cuts. Needs root, `ip`, `ss` and `iptables`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rask::{local, Settings};
use rask_tests::netns::Namespace;
use rask_tests::slow_link::DelayProxy;
use rask_tests::tasks::recorded_runs;
use rask_tests::writes::ResultWrites;
use rask_tests::{PrivateServers, ServerUrls, Stopped, TestEnv, PATIENCE};
use tokio::time::Instant;

/// The ping interval of every process here (`redis_ping_interval`).
const PING: &str = "1s";
/// How long a partition lasts.
const PARTITION: Duration = Duration::from_secs(30);
/// How long after the network heals (or Redis resumes) a waiting client may take to finish:
/// a few ping intervals to notice the dead connection and make a new one, and the backoff of
/// the retries, with room for a busy machine.
const RECOVERY: Duration = Duration::from_secs(15);
/// How long after a partition heals the map may take to finish. Deliveries RabbitMQ had already
/// written to the cut-off worker's socket (its prefetch) arrive only when the broker's TCP next
/// retransmits them: retransmissions back off from 200 ms, doubling, so after a 30 s outage the
/// next one can come up to 25.6 s after the heal (the AMQP heartbeat, 60 s, is longer than the
/// partition and closes nothing). Those 25.6 s, then RECOVERY.
const RECOVERY_AFTER_PARTITION: Duration = Duration::from_secs(45);

/// The settings every process of these tests gets besides the environment's.
const EXTRA: &[(&str, &str)] = &[("RASK_REDIS_PING_INTERVAL", PING)];

fn worker_program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rask-test-worker"))
}

/// An environment on the servers of `urls` whose workers run 4 tasks at once.
fn env_on(urls: &ServerUrls, name: &str) -> TestEnv {
    let mut env = TestEnv::on(urls.clone(), name);
    env.settings.concurrency = 4;
    env
}

/// Waits until each of `workers` consumes.
async fn ready(mut workers: Vec<local::Worker>) -> Vec<local::Worker> {
    for worker in &mut workers {
        worker.wait_ready(PATIENCE).await.expect("worker ready");
    }
    workers
}

/// A `rask map record_run` process over tasks `0..n` that each pause `pause_ms`, its output
/// and errors in files of the test.
struct MapRun {
    child: tokio::process::Child,
    n: usize,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Where [`record_run`] records each run.
    runs: PathBuf,
    /// Logs of the workers, quoted when the map fails.
    worker_logs: Vec<PathBuf>,
}

impl MapRun {
    /// Starts it, inside `ns` if given.
    fn start(env: &TestEnv, ns: Option<&Namespace>, name: &str, n: usize, pause_ms: u64) -> Self {
        let runs = env.path(&format!("{name}.runs"));
        let input = env.path(&format!("{name}.input"));
        let lines: String = (0..n)
            .map(|i| format!("[{:?}, {i}, {pause_ms}]\n", runs.display().to_string()))
            .collect();
        std::fs::write(&input, lines).unwrap();
        let stdout = env.path(&format!("{name}.stdout"));
        let stderr = env.path(&format!("{name}.stderr"));
        let rask = local::sibling_binary("rask").expect("rask is built");
        let mut command = match ns {
            Some(ns) => ns.command(&rask),
            None => tokio::process::Command::new(&rask),
        };
        let child = command
            .args(["map", "record_run", "--input"])
            .arg(&input)
            .envs(env.env_vars())
            .envs(EXTRA.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("rask map starts");
        MapRun {
            child,
            n,
            stdout,
            stderr,
            runs,
            worker_logs: Vec::new(),
        }
    }

    /// Quotes the logs of `workers` too when the map fails.
    fn quoting(mut self, workers: &[&local::Worker]) -> Self {
        self.worker_logs = workers.iter().map(|w| w.log_path().to_owned()).collect();
        self
    }

    /// The tails of the map's log and of the workers'.
    fn logs(&self) -> String {
        let mut text = format!("rask map:\n{}", tail(&self.stderr));
        for log in &self.worker_logs {
            text += &format!("\n{}:\n{}", log.display(), tail(log));
        }
        text
    }

    /// Whether it is still running.
    fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("rask map can be polled")
            .is_none()
    }

    /// Waits at most `within` for it to exit; checks that it succeeded with every task's own
    /// value, in order, and that every task ran; returns the runs per task.
    async fn finish(mut self, within: Duration) -> Vec<u32> {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "rask map still waiting {within:?} later; logs:\n{}",
                self.logs()
            ),
        };
        assert!(
            status.success(),
            "rask map failed ({status}):\n{}",
            self.logs()
        );
        let out = std::fs::read_to_string(&self.stdout).unwrap();
        let values: Vec<&str> = out.lines().collect();
        assert_eq!(values.len(), self.n, "one result per task");
        for (i, value) in values.into_iter().enumerate() {
            assert_eq!(value, i.to_string(), "task {i}'s own value");
        }
        let runs = recorded_runs(&self.runs, self.n);
        if let Some(i) = runs.iter().position(|r| *r == 0) {
            panic!("task {i} never ran, yet has a result");
        }
        runs
    }
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test]
async fn a_map_outlives_redis_stopped_for_10s() {
    let servers = PrivateServers::start("sigstop").await;
    let env = env_on(&servers.urls(), "sigstop");
    let writes = ResultWrites::watch(&env.settings).await;
    let _workers = ready(env.spawn_program_with(worker_program(), 2, EXTRA)).await;
    let n = 2_000;
    let mut run = MapRun::start(&env, None, "sigstop", n, 10);
    env.eventually("300 results stored", || async { writes.tally().0 >= 300 })
        .await;
    assert!(run.running(), "the map still waits when Redis stops");

    let stopped = Stopped::stop(servers.redis.pid());
    // The fault's length, not a synchronisation: Redis answers nothing for 10 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(stopped);
    let resumed = Instant::now();

    run.finish(RECOVERY).await;
    eprintln!(
        "the map finished {:?} after Redis resumed",
        resumed.elapsed()
    );
    assert_eq!(writes.tally(), (n, 0), "every result stored exactly once");
}

#[tokio::test]
async fn a_30s_partition_of_a_worker_and_a_client_loses_nothing() {
    let ns = Namespace::create();
    let servers = PrivateServers::start_on("partition", ns.host_ip()).await;
    let env = env_on(&servers.urls(), "partition");
    let writes = ResultWrites::watch(&env.settings).await;
    let mut outside = ready(env.spawn_program_with(worker_program(), 1, EXTRA)).await;
    let inside = ready(env.spawn_program_in(&ns, worker_program(), 1, EXTRA)).await;
    let n = 2_000;
    let mut run =
        MapRun::start(&env, Some(&ns), "partition", n, 20).quoting(&[&outside[0], &inside[0]]);
    env.eventually("300 results stored", || async { writes.tally().0 >= 300 })
        .await;
    assert!(
        run.running(),
        "the map still waits when the partition starts"
    );

    let partition = ns.partition();
    // The fault's length, not a synchronisation.
    tokio::time::sleep(PARTITION).await;
    partition.heal();
    let healed = Instant::now();

    let runs = run.finish(RECOVERY_AFTER_PARTITION).await;
    eprintln!(
        "the map finished {:?} after the partition healed; {} tasks ran more than once",
        healed.elapsed(),
        runs.iter().filter(|r| **r > 1).count()
    );
    assert_eq!(writes.tally(), (n, 0), "every result stored exactly once");

    // The worker inside is connected again: with the one outside gone, it alone runs a map.
    outside[0].kill().await.unwrap();
    MapRun::start(&env, None, "after", 100, 0)
        .finish(PATIENCE)
        .await;
}

#[tokio::test]
async fn a_redis_host_crash_hidden_by_a_partition_strands_no_waiter() {
    let ns = Namespace::create();
    let mut servers = PrivateServers::start_on("host-crash", ns.host_ip()).await;
    let env = env_on(&servers.urls(), "host-crash");
    let writes = ResultWrites::watch(&env.settings).await;
    let _outside = ready(env.spawn_program_with(worker_program(), 1, EXTRA)).await;
    let n = 1_000;
    let mut run = MapRun::start(&env, Some(&ns), "host-crash", n, 20);
    env.eventually("100 results stored", || async { writes.tally().0 >= 100 })
        .await;
    assert!(
        run.running(),
        "the map still waits when the partition starts"
    );

    let partition = ns.partition();
    // As if Redis's host crashed and came back: Redis restarts (gracefully, so that its
    // append-only file keeps every result: what a crash does to results is not this test's
    // concern) and the host forgets its connections to the client, whose ends stay open (no
    // FIN or RST gets through): only the client speaking on them can find out.
    servers.redis.restart().await.expect("Redis restarts");
    ns.forget_connections_to(servers.redis.port());
    servers.bind_redis().await;
    // The fault's length, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(10)).await;
    partition.heal();
    let healed = Instant::now();

    run.finish(RECOVERY).await;
    eprintln!(
        "the map finished {:?} after the partition healed",
        healed.elapsed()
    );
}

#[tokio::test]
async fn a_5000_task_map_completes_exactly_over_a_slow_lossy_link() {
    let ns = Namespace::create();
    let servers = PrivateServers::start("slow-link").await;
    let direct = servers.urls();
    // 50 ms each way, through proxies on the host's end of the pair, and 1 % of the packets
    // of the pair lost each way.
    let delay = Duration::from_millis(50);
    let target = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let amqp = DelayProxy::start(ns.host_ip(), target(servers.rabbitmq.port()), delay).await;
    let redis = DelayProxy::start(ns.host_ip(), target(servers.redis.port()), delay).await;
    ns.lose(1.0);
    let env = env_on(
        &ServerUrls {
            amqp: format!("amqp://guest:guest@{}:{}/%2f", ns.host_ip(), amqp.port()),
            redis: format!("redis://{}:{}/", ns.host_ip(), redis.port()),
        },
        "slow-link",
    );
    let writes = ResultWrites::watch(&Settings {
        redis_url: direct.redis.clone(),
        ..env.settings.clone()
    })
    .await;
    let _workers = ready(env.spawn_program_in(&ns, worker_program(), 2, EXTRA)).await;
    let n = 5_000;
    let started = Instant::now();
    MapRun::start(&env, Some(&ns), "slow-link", n, 0)
        .finish(PATIENCE)
        .await;
    eprintln!(
        "{n} tasks over 50 ms and 1 % loss each way took {:?}",
        started.elapsed()
    );
    assert_eq!(writes.tally(), (n, 0), "every result stored exactly once");
}
