//! The integration-test harness: real RabbitMQ and Redis processes, isolated tests.
//!
//! Servers: when `RASK_TEST_AMQP_URL` and `RASK_TEST_REDIS_URL` are set (as `scripts/test.sh`
//! does, starting one RabbitMQ and one Redis for the whole suite), tests use them; otherwise the
//! first test in a process starts a private pair on free ports with their own data folders, tied
//! to the test process so they stop when it exits. Fault-injection tests start their own with
//! [`PrivateServers`], which they may kill and restart; cluster tests start a RabbitMQ cluster
//! of private nodes with [`PrivateCluster`].
//!
//! Isolation: every [`TestEnv`] has its own exchange, queues and Redis key prefix, so tests share
//! servers without seeing each other's tasks or results.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use rask::local::{self, Lifetime, RabbitMqSpec, RedisSpec, ServerProcess, WorkerSpec};
use rask::{Client, Settings};
use rask_worker::{Registry, Worker};
use tokio::sync::OnceCell;

pub mod blob_tasks;
pub mod dashboard;
pub mod netns;
pub mod poison;
pub mod redis_cluster;
pub mod replica;
pub mod runs;
pub mod s3;
pub mod slow_link;
pub mod tasks;
pub mod writes;
use tokio_util::sync::CancellationToken;

/// How long any test waits for results before failing (instead of hanging).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// URLs of the servers the tests in this process use.
#[derive(Debug, Clone)]
pub struct ServerUrls {
    /// AMQP URL of RabbitMQ.
    pub amqp: String,
    /// URL of Redis.
    pub redis: String,
}

static SHARED: OnceCell<(ServerUrls, Option<PrivateServers>)> = OnceCell::const_new();

/// The servers shared by the tests of this process (see the module docs).
pub async fn shared_servers() -> ServerUrls {
    let (urls, _servers) = SHARED
        .get_or_init(|| async {
            match (
                std::env::var("RASK_TEST_AMQP_URL"),
                std::env::var("RASK_TEST_REDIS_URL"),
            ) {
                (Ok(amqp), Ok(redis)) => (ServerUrls { amqp, redis }, None),
                _ => {
                    let servers = PrivateServers::start("shared").await;
                    (servers.urls(), Some(servers))
                }
            }
        })
        .await;
    urls.clone()
}

/// A RabbitMQ and a Redis (append-only) of one test's own, on free ports, stopped when dropped
/// or when the test process exits.
pub struct PrivateServers {
    /// The RabbitMQ node.
    pub rabbitmq: ServerProcess,
    /// The Redis server.
    pub redis: ServerProcess,
    rabbitmq_spec: RabbitMqSpec,
    /// The address they listen on besides 127.0.0.1 (see [`PrivateServers::start_on`]).
    address: Option<Ipv4Addr>,
    _dir: TempDir,
}

impl PrivateServers {
    /// Starts both; panics with the servers' own error (a test cannot go on without them).
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, None).await
    }

    /// Starts both listening on `address` too (e.g. [`netns::Namespace::host_ip`], for
    /// processes in a network namespace); their [`PrivateServers::urls`] then name `address`.
    /// RabbitMQ admits its `guest` user from there too (`loopback_users = none`).
    pub async fn start_on(name: &str, address: Ipv4Addr) -> Self {
        Self::start_with(name, Some(address)).await
    }

    async fn start_with(name: &str, address: Option<Ipv4Addr>) -> Self {
        let dir = TempDir::new(name);
        let node_name = format!("rasktest{}{}", std::process::id(), unique_suffix());
        let rabbit = RabbitMqSpec {
            dir: dir.path.join("rabbitmq"),
            port: local::free_port().expect("a free port"),
            dist_port: local::free_port().expect("a free port"),
            node_name,
        };
        let redis = RedisSpec {
            dir: dir.path.join("redis"),
            port: local::free_port().expect("a free port"),
            append_only: true,
            fsync: Default::default(),
            cluster: false,
        };
        if let Some(address) = address {
            // The node reads DIR/rabbitmq.conf (RABBITMQ_CONFIG_FILE=DIR/rabbitmq).
            std::fs::create_dir_all(&rabbit.dir).unwrap();
            let conf = format!(
                "loopback_users = none\n\
                 listeners.tcp.1 = 127.0.0.1:{port}\n\
                 listeners.tcp.2 = {address}:{port}\n",
                port = rabbit.port
            );
            std::fs::write(rabbit.dir.join("rabbitmq.conf"), conf).unwrap();
        }
        let (rabbitmq, redis) = tokio::join!(
            ServerProcess::start_rabbitmq(&rabbit, Lifetime::TiedToCaller),
            ServerProcess::start_redis(&redis, Lifetime::TiedToCaller)
        );
        let servers = PrivateServers {
            rabbitmq: rabbitmq.expect("starting RabbitMQ"),
            redis: redis.expect("starting Redis"),
            rabbitmq_spec: rabbit,
            address,
            _dir: dir,
        };
        servers.bind_redis().await;
        servers
    }

    /// Makes Redis listen on the extra address too (`CONFIG SET bind`: the harness starts
    /// Redis on 127.0.0.1 only), and answer clients there without a password (protected mode
    /// off: the address is a test's own); call it again after restarting Redis.
    pub async fn bind_redis(&self) {
        let Some(address) = self.address else { return };
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("bind")
            .arg(format!("127.0.0.1 {address}"))
            .arg("protected-mode")
            .arg("no")
            .query_async(&mut conn)
            .await
            .expect("Redis listens on the extra address");
    }

    /// Runs `rabbitmqctl ARGS` against the RabbitMQ node (see [`rabbitmqctl`]).
    pub async fn ctl(&self, args: &[&str]) -> String {
        rabbitmqctl(&self.rabbitmq_spec, args).await
    }

    /// Their URLs: on 127.0.0.1, or on the address of [`PrivateServers::start_on`].
    pub fn urls(&self) -> ServerUrls {
        match self.address {
            None => ServerUrls {
                amqp: self.rabbitmq.url(),
                redis: self.redis.url(),
            },
            Some(address) => ServerUrls {
                amqp: format!("amqp://guest:guest@{address}:{}/%2f", self.rabbitmq.port()),
                redis: format!("redis://{address}:{}/", self.redis.port()),
            },
        }
    }
}

/// One test's isolated corner of the servers: own exchange, queues and key prefix.
pub struct TestEnv {
    /// Settings naming this test's exchange, queues and prefix; clients and workers use them.
    pub settings: Settings,
    dir: TempDir,
}

impl TestEnv {
    /// An environment on the shared servers, named after the test. When the servers are
    /// clusters (`RASK_TEST_AMQP_URLS`: RabbitMQ nodes; `RASK_TEST_QUEUE_TYPE`: `quorum`;
    /// `RASK_TEST_REDIS_CLUSTER_URLS`: the nodes of a Redis Cluster, the store, while
    /// `RASK_TEST_REDIS_URL` still names a single Redis for the tests' own counters), its
    /// settings say so, so that a whole suite runs against them.
    pub async fn new(name: &str) -> Self {
        let mut env = Self::on(shared_servers().await, name);
        let list = |var: &str| -> Vec<String> {
            std::env::var(var)
                .unwrap_or_default()
                .split(',')
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect()
        };
        env.settings.amqp_urls = list("RASK_TEST_AMQP_URLS");
        env.settings.redis_cluster_urls = list("RASK_TEST_REDIS_CLUSTER_URLS");
        match std::env::var("RASK_TEST_QUEUE_TYPE").as_deref() {
            Ok("quorum") => {
                env.settings.queue_type = rask_common::settings::QueueType::Quorum;
                env.settings.max_priority = 0;
            }
            Ok("classic") | Err(_) => {}
            Ok(other) => panic!("RASK_TEST_QUEUE_TYPE={other}: classic or quorum"),
        }
        env
    }

    /// An environment on given servers.
    pub fn on(urls: ServerUrls, name: &str) -> Self {
        let id = format!("t-{name}-{}", unique_suffix());
        let settings = Settings {
            amqp_url: urls.amqp,
            redis_url: urls.redis,
            exchange: format!("{id}.x"),
            queue: format!("{id}.tasks"),
            dead_letter_exchange: format!("{id}.dead"),
            dead_letter_queue: format!("{id}.dead"),
            key_prefix: id.clone(),
            concurrency: 2,
            ..Settings::default()
        };
        TestEnv {
            settings,
            dir: TempDir::new(&id),
        }
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(self.settings.clone())
            .await
            .expect("client connects")
    }

    /// The `RASK_*` variables that give a process this environment's settings.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let mut vars: Vec<(String, String)> = vec![
            ("RASK_AMQP_URL".into(), s.amqp_url.clone()),
            ("RASK_REDIS_URL".into(), s.redis_url.clone()),
            ("RASK_EXCHANGE".into(), s.exchange.clone()),
            ("RASK_QUEUE".into(), s.queue.clone()),
            (
                "RASK_DEAD_LETTER_EXCHANGE".into(),
                s.dead_letter_exchange.clone(),
            ),
            ("RASK_DEAD_LETTER_QUEUE".into(), s.dead_letter_queue.clone()),
            ("RASK_KEY_PREFIX".into(), s.key_prefix.clone()),
            (
                "RASK_RESULT_TTL".into(),
                humantime::format_duration(s.result_ttl).to_string(),
            ),
            ("RASK_CONCURRENCY".into(), s.concurrency.to_string()),
            ("RASK_QUEUE_TYPE".into(), s.queue_type.to_string()),
            ("RASK_QUEUE_SHARDS".into(), s.queue_shards.to_string()),
            ("RASK_MAX_PRIORITY".into(), s.max_priority.to_string()),
            ("RASK_EVENTS".into(), s.events.to_string()),
        ];
        if !s.amqp_urls.is_empty() {
            vars.push(("RASK_AMQP_URLS".into(), s.amqp_urls.join(",")));
        }
        if !s.redis_cluster_urls.is_empty() {
            vars.push((
                "RASK_REDIS_CLUSTER_URLS".into(),
                s.redis_cluster_urls.join(","),
            ));
        }
        if !s.blob_url.is_empty() {
            vars.push(("RASK_BLOB_URL".into(), s.blob_url.clone()));
        }
        if !s.s3_endpoint.is_empty() {
            vars.push(("RASK_S3_ENDPOINT".into(), s.s3_endpoint.clone()));
        }
        if !s.otlp_endpoint.is_empty() {
            vars.push(("RASK_OTLP_ENDPOINT".into(), s.otlp_endpoint.clone()));
        }
        if s.redis_wait_replicas > 0 {
            vars.push((
                "RASK_REDIS_WAIT_REPLICAS".into(),
                s.redis_wait_replicas.to_string(),
            ));
        }
        vars
    }

    /// Starts `n` stock `rask-worker` processes with this environment (stopped on drop).
    pub fn spawn_workers(&self, n: usize) -> Vec<local::Worker> {
        self.spawn_workers_with(n, &[])
    }

    /// Like [`TestEnv::spawn_workers`], with extra `RASK_*` variables (e.g. a shorter grace).
    pub fn spawn_workers_with(&self, n: usize, extra: &[(&str, &str)]) -> Vec<local::Worker> {
        let program = local::sibling_binary("rask-worker")
            .expect("rask-worker is built (run `cargo build --workspace --bins` first)");
        self.spawn_program_with(&program, n, extra)
    }

    /// Starts `n` processes of the worker binary `program` (e.g.
    /// `env!("CARGO_BIN_EXE_rask-test-worker")`, which also runs [`tasks`]) with this
    /// environment and the extra `RASK_*` variables `extra` (stopped on drop).
    pub fn spawn_program_with(
        &self,
        program: &std::path::Path,
        n: usize,
        extra: &[(&str, &str)],
    ) -> Vec<local::Worker> {
        self.spawn(program, &[], n, extra)
    }

    /// Like [`TestEnv::spawn_program_with`], the processes running in the network namespace
    /// `ns` (`ip netns exec`).
    pub fn spawn_program_in(
        &self,
        ns: &netns::Namespace,
        program: &std::path::Path,
        n: usize,
        extra: &[(&str, &str)],
    ) -> Vec<local::Worker> {
        let args = [
            "netns".into(),
            "exec".into(),
            ns.name().into(),
            program.display().to_string(),
        ];
        self.spawn(std::path::Path::new("ip"), &args, n, extra)
    }

    /// Starts `n` processes of `program ARGS` with this environment and `extra`.
    fn spawn(
        &self,
        program: &std::path::Path,
        args: &[String],
        n: usize,
        extra: &[(&str, &str)],
    ) -> Vec<local::Worker> {
        (0..n)
            .map(|_| {
                let mut env = self.env_vars();
                env.extend(
                    extra
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
                let spec = WorkerSpec {
                    program: program.to_owned(),
                    args: args.to_vec(),
                    env,
                    log: self
                        .dir
                        .path
                        .join(format!("worker-{}.log", unique_suffix())),
                };
                local::Worker::spawn(&spec, Lifetime::TiedToCaller).expect("worker starts")
            })
            .collect()
    }

    /// Takes the first `n` (at most 65,535) messages of this environment's dead-letter queue,
    /// failing the test if fewer arrive within [`PATIENCE`]; any others stay in the queue.
    pub async fn dead_letters(&self, n: usize) -> Vec<lapin::message::Delivery> {
        use futures::StreamExt;
        let connection = rask_common::broker::connect(&self.settings, "test dead-letter reader")
            .await
            .expect("RabbitMQ answers");
        let channel = connection.create_channel().await.unwrap();
        let window = u16::try_from(n).expect("at most 65,535 dead letters at once");
        channel
            .basic_qos(window, lapin::options::BasicQosOptions::default())
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                self.settings.dead_letter_queue.as_str().into(),
                "dead-letter reader".into(),
                lapin::options::BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let dead: Vec<_> = tokio::time::timeout(PATIENCE, consumer.take(n).collect::<Vec<_>>())
            .await
            .unwrap_or_else(|_| panic!("{n} messages reach the dead-letter queue"))
            .into_iter()
            .map(|d| d.unwrap())
            .collect();
        if let Some(last) = dead.last() {
            let all = lapin::options::BasicAckOptions { multiple: true };
            last.ack(all).await.unwrap();
        }
        let _ = connection.close(200, "done".into()).await;
        dead
    }

    /// Makes the Redis user `user` (a fresh password; `on`, then the ACL `rules`) on every node
    /// of this environment's Redis, and returns this environment's settings logged in as it:
    /// for tests of what a user may not do, or of one user's connections.
    pub async fn as_redis_user(&self, user: &str, rules: &[String]) -> Settings {
        let password = uuid::Uuid::new_v4().simple().to_string();
        for url in self.settings.redis_nodes() {
            let node = redis::Client::open(url).expect("a Redis URL");
            let mut conn = node
                .get_multiplexed_async_connection()
                .await
                .expect("the test connects to Redis");
            let () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(user)
                .arg("on")
                .arg(format!(">{password}"))
                .arg(rules)
                .query_async(&mut conn)
                .await
                .expect("Redis takes the user");
        }
        let logged_in = |url: &str| {
            let (scheme, rest) = url.split_once("://").expect("a URL");
            assert!(!rest.contains('@'), "{url} has no login yet");
            format!("{scheme}://{user}:{password}@{rest}")
        };
        let mut settings = self.settings.clone();
        settings.redis_url = logged_in(&settings.redis_url);
        for url in &mut settings.redis_cluster_urls {
            *url = logged_in(url);
        }
        settings
    }

    /// Publishes `body` to the task queue (persistent, waiting for the broker's confirm), for
    /// messages the client would not write; the queue must be declared (a client connected).
    pub async fn publish_body(&self, body: &[u8]) {
        self.publish_with_headers(body, lapin::types::FieldTable::default())
            .await;
    }

    /// [`TestEnv::publish_body`] with `headers`, for headers the client would not write.
    pub async fn publish_with_headers(&self, body: &[u8], headers: lapin::types::FieldTable) {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let connection = rask_common::broker::connect(&self.settings, "test publisher")
            .await
            .expect("the test publisher connects");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                self.settings.exchange.as_str().into(),
                self.settings.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .unwrap();
        assert!(
            confirm.await.unwrap().is_ack(),
            "the broker takes the message"
        );
    }

    /// Runs a worker with `registry` inside this test process until the handle stops it.
    pub fn run_worker(&self, registry: Registry) -> RunningWorker {
        let stop = CancellationToken::new();
        let worker = Worker::new(self.settings.clone(), registry);
        let token = stop.clone();
        let task = tokio::spawn(async move { worker.run(token.cancelled_owned()).await });
        RunningWorker { stop, task }
    }

    /// A path for files of this test (deleted when the environment drops).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    /// Runs the built `rask ARGS` with this environment's settings, feeding `stdin`; fails the
    /// test if it hangs.
    pub async fn rask(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use tokio::io::AsyncWriteExt;
        let program = local::sibling_binary("rask").expect("rask is built");
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(self.env_vars())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("rask starts");
        let mut input = child.stdin.take().expect("stdin is piped");
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("rask {args:?} hung"))
            .unwrap()
    }

    /// Messages ready in `queue` and its consumers, as RabbitMQ reports them now.
    pub async fn queue_depth(&self, queue: &str) -> (u32, u32) {
        let connection = rask_common::broker::connect(&self.settings, "test inspector")
            .await
            .expect("RabbitMQ answers");
        let channel = connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"));
        let _ = connection.close(200, "done".into()).await;
        (declared.message_count(), declared.consumer_count())
    }

    /// Polls `condition` until it holds, failing the test after [`PATIENCE`].
    pub async fn eventually<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        mut condition: impl FnMut() -> F,
    ) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !condition().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The reason a worker gave for dead-lettering `message` (its `x-rask-reason` header).
pub fn dead_letter_reason(message: &lapin::message::Delivery) -> Option<String> {
    let headers = message.properties.headers().clone().unwrap_or_default();
    match headers.inner().get(rask_common::message::REASON_HEADER)? {
        lapin::types::AMQPValue::LongString(text) => Some(text.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A Redis counter of one test, for tasks that count their runs with `INCR`.
pub struct Counter {
    /// The Redis URL a counting task is given.
    pub url: String,
    /// The counter's key (under the test's prefix).
    pub key: String,
}

impl Counter {
    /// The counter `name` of `env`'s test.
    pub fn new(env: &TestEnv, name: &str) -> Self {
        Counter {
            url: env.settings.redis_url.clone(),
            key: format!("{}:test-counter:{name}", env.settings.key_prefix),
        }
    }

    /// How many runs it counted (0 if none).
    pub async fn runs(&self) -> i64 {
        read_counter(&self.url, &self.key).await
    }
}

/// The number of members of the sorted set `key` in the Redis at `redis_url`.
pub async fn read_zcard(redis_url: &str, key: &str) -> u64 {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The integer at `key` in the Redis at `redis_url` (0 if unset).
pub async fn read_counter(redis_url: &str, key: &str) -> i64 {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let value: Option<i64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    value.unwrap_or(0)
}

/// The task failure an error carries; panics (failing the test) on any other error.
pub fn failure(error: rask::Error) -> rask::TaskFailure {
    match error {
        rask::Error::Task(f) => *f,
        other => panic!("expected a task failure, got {other:?}"),
    }
}

/// A worker running inside the test process.
pub struct RunningWorker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<rask_worker::Result<()>>,
}

impl RunningWorker {
    /// Runs `worker` (made with settings of the test's choosing) inside the test process until
    /// the handle stops it.
    pub fn start(worker: Worker) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move { worker.run(token.cancelled_owned()).await });
        RunningWorker { stop, task }
    }

    /// Stops it gracefully and returns how its run ended.
    pub async fn stop(self) -> rask_worker::Result<()> {
        self.stop.cancel();
        self.task.await.expect("worker task does not panic")
    }
}

/// A process stopped with SIGSTOP (Redis, say: it then answers nothing, while the kernel
/// keeps its connections open); resumed with SIGCONT when dropped, even if the test fails.
pub struct Stopped(nix::unistd::Pid);

impl Stopped {
    /// Stops the process `pid`.
    pub fn stop(pid: u32) -> Self {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A folder deleted on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "rask-test-{}-{name}-{}",
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

impl TestEnv {
    /// `rask status --json` parsed (fails the test if the command fails).
    pub async fn status_json(&self) -> serde_json::Value {
        let out = self.rask(&["status", "--json"], "").await;
        assert!(
            out.status.success(),
            "rask status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "rask status --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Polls `rask status --json` until `condition` holds for it (failing the test after
    /// [`PATIENCE`]) and returns that status.
    pub async fn status_when(
        &self,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = self.status_json().await;
            if condition(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; last status: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A plain HTTP/1.0 GET of `path` on `address` (for worker `/metrics` and `/health` and the
/// dashboard): the status code and the body.
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("the HTTP server answers")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {head}"));
    (code, body.to_owned())
}

/// The value of the Prometheus sample `series` (name and labels exactly as exposed, e.g.
/// `rask_tasks_succeeded_total{function="inc"}`) in the text `metrics`, 0 if absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// TLS material made at test time (rcgen): a CA, a server certificate for `localhost` and
/// `127.0.0.1`, and a client certificate, all signed by the CA, as PEM files.
pub struct TestCertificates {
    /// The CA certificate, to trust (`tls_ca_file`).
    pub ca: PathBuf,
    /// The servers' certificate.
    pub server_cert: PathBuf,
    /// Its private key.
    pub server_key: PathBuf,
    /// The client certificate (`tls_cert_file`).
    pub client_cert: PathBuf,
    /// Its private key (`tls_key_file`).
    pub client_key: PathBuf,
}

impl TestCertificates {
    /// Makes them in `dir`.
    pub fn generate(dir: &std::path::Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).expect("a folder for certificates");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rask test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            "rask test client",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("writing a certificate");
            path
        };
        TestCertificates {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }

    /// `settings` trusting the CA and presenting the client certificate.
    pub fn apply(&self, settings: &Settings) -> Settings {
        Settings {
            tls_ca_file: Some(self.ca.clone()),
            tls_cert_file: Some(self.client_cert.clone()),
            tls_key_file: Some(self.client_key.clone()),
            ..settings.clone()
        }
    }

    /// The `RASK_TLS_*` variables of [`TestCertificates::apply`].
    pub fn env_vars(&self) -> Vec<(String, String)> {
        [
            ("RASK_TLS_CA_FILE", &self.ca),
            ("RASK_TLS_CERT_FILE", &self.client_cert),
            ("RASK_TLS_KEY_FILE", &self.client_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.display().to_string()))
        .collect()
    }
}

/// A private RabbitMQ and Redis serving TLS with [`TestCertificates`] (stopped on drop).
/// RabbitMQ's TLS listener requires a client certificate signed by the CA (its plain listener
/// stays, on loopback, for the readiness probe of [`ServerProcess`]); Redis listens on TLS only
/// and verifies the client certificates presented (`tls-auth-clients yes`).
pub struct TlsServers {
    /// The RabbitMQ node.
    pub rabbitmq: PrivateRabbitMq,
    /// The certificates both use.
    pub certificates: TestCertificates,
    /// `amqps://guest:guest@127.0.0.1:PORT/%2f`.
    pub amqps_url: String,
    /// `rediss://127.0.0.1:PORT/`.
    pub rediss_url: String,
    /// Killed on drop.
    _redis: tokio::process::Child,
    _dir: TempDir,
}

impl TlsServers {
    /// Makes certificates and starts both; panics with the servers' error.
    pub async fn start(name: &str) -> Self {
        let dir = TempDir::new(name);
        let certificates = TestCertificates::generate(&dir.path.join("tls"));
        let amqps_port = local::free_port().expect("a free port");
        let conf = format!(
            "listeners.ssl.default = 127.0.0.1:{amqps_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            certificates.ca.display(),
            certificates.server_cert.display(),
            certificates.server_key.display(),
        );
        let rediss_port = local::free_port().expect("a free port");
        let redis_dir = dir.path.join("redis");
        std::fs::create_dir_all(&redis_dir).unwrap();
        let redis_log = std::fs::File::create(redis_dir.join("redis.log")).unwrap();
        let redis = tokio::process::Command::new("redis-server")
            .current_dir(&redis_dir)
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .args(["--tls-port", &rediss_port.to_string()])
            .arg("--tls-cert-file")
            .arg(&certificates.server_cert)
            .arg("--tls-key-file")
            .arg(&certificates.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&certificates.ca)
            .args(["--tls-auth-clients", "yes"])
            .stdout(redis_log.try_clone().unwrap())
            .stderr(redis_log)
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        let rabbitmq = PrivateRabbitMq::start(&format!("{name}-rabbitmq"), &conf).await;
        let servers = TlsServers {
            rabbitmq,
            amqps_url: format!("amqps://guest:guest@127.0.0.1:{amqps_port}/%2f"),
            rediss_url: format!("rediss://127.0.0.1:{rediss_port}/"),
            certificates,
            _redis: redis,
            _dir: dir,
        };
        servers.wait_for_redis().await;
        servers
    }

    /// Polls Redis over TLS until it answers `PING`, failing after [`PATIENCE`].
    async fn wait_for_redis(&self) {
        let settings = self.certificates.apply(&Settings {
            redis_url: self.rediss_url.clone(),
            ..Settings::default()
        });
        let client = rask_common::store::client(&settings).expect("a Redis client");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let pong = async {
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(2), pong).await {
                Ok(Ok(_)) => return,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "Redis with TLS did not answer: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The URLs of the TLS listeners.
    pub fn urls(&self) -> ServerUrls {
        ServerUrls {
            amqp: self.amqps_url.clone(),
            redis: self.rediss_url.clone(),
        }
    }
}

/// Runs `rabbitmqctl ARGS` against the node of `spec` (the script itself, not the `/usr/sbin`
/// wrapper that switches users: the node's Erlang cookie is in its folder, its `HOME`); panics
/// with the tool's output if it fails, else returns its stdout.
pub async fn rabbitmqctl(spec: &RabbitMqSpec, args: &[&str]) -> String {
    let output = tokio::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
        .arg("-n")
        .arg(format!("{}@localhost", spec.node_name))
        .args(args)
        .env("HOME", &spec.dir)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_CONF_ENV_FILE", spec.dir.join("rabbitmq-env.conf"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("rabbitmqctl ends")
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A RabbitMQ cluster of private nodes on loopback (booted in parallel, then joined to the first
/// with `rabbitmqctl join_cluster`; they share an Erlang cookie written into each node's folder,
/// its `HOME`) and a Redis, all of one test, stopped on drop.
pub struct PrivateCluster {
    /// The nodes, the first being the one the others joined.
    pub nodes: Vec<ServerProcess>,
    /// Where and how each runs.
    pub specs: Vec<RabbitMqSpec>,
    /// The Redis server (append-only).
    pub redis: ServerProcess,
    _dir: TempDir,
}

impl PrivateCluster {
    /// Starts `size` nodes and a Redis and joins the nodes into one cluster; panics with the
    /// servers' or `rabbitmqctl`'s error.
    pub async fn start(name: &str, size: usize) -> Self {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        assert!(size >= 1, "a cluster has nodes");
        let dir = TempDir::new(name);
        let cookie = format!("RASKTEST{}", uuid::Uuid::new_v4().simple()).to_uppercase();
        let base = format!("rasktest{}{}", std::process::id(), unique_suffix());
        let specs: Vec<RabbitMqSpec> = (0..size)
            .map(|i| RabbitMqSpec {
                dir: dir.path.join(format!("rabbitmq-{i}")),
                port: local::free_port().expect("a free port"),
                dist_port: local::free_port().expect("a free port"),
                node_name: format!("{base}n{i}"),
            })
            .collect();
        for spec in &specs {
            std::fs::create_dir_all(&spec.dir).unwrap();
            // Erlang refuses a cookie file others may read.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(spec.dir.join(".erlang.cookie"))
                .expect("writing the Erlang cookie");
            file.write_all(cookie.as_bytes()).unwrap();
        }
        let redis = RedisSpec {
            dir: dir.path.join("redis"),
            port: local::free_port().expect("a free port"),
            append_only: true,
            fsync: Default::default(),
            cluster: false,
        };
        let (nodes, redis) = tokio::join!(
            futures::future::join_all(
                specs
                    .iter()
                    .map(|spec| ServerProcess::start_rabbitmq(spec, Lifetime::TiedToCaller))
            ),
            ServerProcess::start_redis(&redis, Lifetime::TiedToCaller)
        );
        let nodes: Vec<ServerProcess> = nodes
            .into_iter()
            .map(|node| node.expect("starting a RabbitMQ node"))
            .collect();
        let first = format!("{}@localhost", specs[0].node_name);
        // `join_cluster` resets the (fresh) node first; `start_app` returns once it serves.
        for spec in &specs[1..] {
            rabbitmqctl(spec, &["stop_app"]).await;
            rabbitmqctl(spec, &["join_cluster", &first]).await;
            rabbitmqctl(spec, &["start_app"]).await;
        }
        let status = rabbitmqctl(&specs[0], &["cluster_status", "--formatter", "json"]).await;
        let status: serde_json::Value = serde_json::from_str(&status)
            .unwrap_or_else(|e| panic!("cluster_status is JSON ({e}): {status}"));
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        assert_eq!(running, size, "every node runs in the cluster: {status}");
        PrivateCluster {
            nodes,
            specs,
            redis: redis.expect("starting Redis"),
            _dir: dir,
        }
    }

    /// The AMQP URLs of the nodes, in order (for `amqp_urls`).
    pub fn amqp_urls(&self) -> Vec<String> {
        self.specs.iter().map(RabbitMqSpec::url).collect()
    }

    /// The first node's AMQP URL and Redis's.
    pub fn urls(&self) -> ServerUrls {
        ServerUrls {
            amqp: self.specs[0].url(),
            redis: self.redis.url(),
        }
    }
}

/// A private RabbitMQ node of one test, with a `rabbitmq.conf` of its own (TLS listeners, say)
/// and [`PrivateRabbitMq::ctl`] to administer it (vhosts, say); stopped on drop.
pub struct PrivateRabbitMq {
    /// The node.
    pub server: ServerProcess,
    /// Where and how it runs.
    pub spec: RabbitMqSpec,
    _dir: TempDir,
}

impl PrivateRabbitMq {
    /// Starts a node whose `rabbitmq.conf` is `conf` (`""` for the defaults); panics with the
    /// node's error.
    pub async fn start(name: &str, conf: &str) -> Self {
        let dir = TempDir::new(name);
        let spec = RabbitMqSpec {
            dir: dir.path.join("rabbitmq"),
            port: local::free_port().expect("a free port"),
            dist_port: local::free_port().expect("a free port"),
            node_name: format!("rasktest{}{}", std::process::id(), unique_suffix()),
        };
        std::fs::create_dir_all(&spec.dir).unwrap();
        // The node reads DIR/rabbitmq.conf (RABBITMQ_CONFIG_FILE=DIR/rabbitmq).
        std::fs::write(spec.dir.join("rabbitmq.conf"), conf).unwrap();
        let server = ServerProcess::start_rabbitmq(&spec, Lifetime::TiedToCaller)
            .await
            .expect("starting RabbitMQ");
        PrivateRabbitMq {
            server,
            spec,
            _dir: dir,
        }
    }

    /// Runs `rabbitmqctl ARGS` against the node (see [`rabbitmqctl`]).
    pub async fn ctl(&self, args: &[&str]) -> String {
        rabbitmqctl(&self.spec, args).await
    }

    /// Adds `vhost`, where the `guest` user may do everything.
    pub async fn add_vhost(&self, vhost: &str) {
        self.ctl(&["add_vhost", vhost]).await;
        self.ctl(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])
            .await;
    }

    /// The AMQP URL of `vhost` (percent-encoded), as the `guest` user.
    pub fn url(&self, vhost: &str) -> String {
        let encoded: String = vhost
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("amqp://guest:guest@127.0.0.1:{}/{encoded}", self.spec.port)
    }
}
