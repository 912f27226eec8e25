//! A Redis and a replica of it, both a test's own, for tests of `redis_wait_replicas`: the
//! test stops the replica ([`crate::Stopped`]) to make waits fall short.

use std::time::Duration;

use rask::local::{self, Fsync, Lifetime, RedisSpec, ServerProcess, WorkerSpec};

use crate::{TempDir, PATIENCE};

/// A primary (append-only) and one replica on free ports, stopped when dropped or when the
/// test process exits.
pub struct ReplicatedRedis {
    /// The primary.
    pub primary: ServerProcess,
    replica: local::Worker,
    _dir: TempDir,
}

impl ReplicatedRedis {
    /// Starts both and returns once the replica is in sync; panics with the servers' error.
    pub async fn start(name: &str) -> Self {
        let dir = TempDir::new(name);
        let spec = RedisSpec {
            dir: dir.path.join("primary"),
            port: local::free_port().expect("a free port"),
            append_only: true,
            fsync: Fsync::EverySec,
            cluster: false,
        };
        let primary = ServerProcess::start_redis(&spec, Lifetime::TiedToCaller)
            .await
            .expect("starting Redis");
        let client = redis::Client::open(primary.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // The replica's first sync starts at once, not after the default 5 s wait for others.
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-diskless-sync-delay")
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
        let replica_dir = dir.path.join("replica");
        std::fs::create_dir_all(&replica_dir).unwrap();
        let replica_port = local::free_port().expect("a free port");
        // Any program runs tied to the test process this way, not only workers.
        let replica = local::Worker::spawn(
            &WorkerSpec {
                program: "redis-server".into(),
                args: [
                    "--port",
                    &replica_port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &replica_dir.display().to_string(),
                    "--replicaof",
                    "127.0.0.1",
                    &primary.port().to_string(),
                ]
                .map(str::to_owned)
                .to_vec(),
                env: Vec::new(),
                log: replica_dir.join("redis.log"),
            },
            Lifetime::TiedToCaller,
        )
        .expect("redis-server starts");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap();
            if info.contains("state=online") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replica did not sync: {info}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ReplicatedRedis {
            primary,
            replica,
            _dir: dir,
        }
    }

    /// The replica's process id (to stop it with [`crate::Stopped`]).
    pub fn replica_pid(&self) -> u32 {
        self.replica.pid()
    }
}
