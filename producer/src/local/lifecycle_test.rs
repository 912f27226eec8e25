//! The servers' whole lifecycle against the real programs: start RabbitMQ
//! and Redis tied to the test on free ports, use them, kill, restart on the
//! same data, stop. Needs rabbitmq-server and redis-server installed
//! (scripts/install-deps.sh); takes about 10 s.

use std::path::PathBuf;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use super::{free_port, pid, port_is_free, Lifetime, RabbitMqSpec, RedisSpec, ServerProcess};

/// A fresh folder for this test run.
fn test_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    std::env::temp_dir().join(format!("rask-lifecycle-{}-{nanos}", std::process::id()))
}

/// Whether a durable queue named `queue` exists (declared passively).
async fn queue_exists(url: &str, queue: &str) -> bool {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("AMQP connect");
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let exists = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .is_ok();
    let _ = connection.close(200, "done".into()).await;
    exists
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("Redis URL");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis connect")
}

#[tokio::test]
async fn servers_start_serve_survive_kill_and_restart_then_stop() {
    let dir = test_dir();
    let rabbitmq_spec = RabbitMqSpec {
        dir: dir.join("rabbitmq"),
        port: free_port().expect("port"),
        dist_port: free_port().expect("port"),
        node_name: format!("rask-test-{}", std::process::id()),
    };
    let redis_spec = RedisSpec {
        dir: dir.join("redis"),
        port: free_port().expect("port"),
        append_only: true,
        fsync: Default::default(),
        cluster: false,
    };
    let (rabbitmq, redis) = tokio::join!(
        ServerProcess::start_rabbitmq(&rabbitmq_spec, Lifetime::TiedToCaller),
        ServerProcess::start_redis(&redis_spec, Lifetime::TiedToCaller),
    );
    let (mut rabbitmq, mut redis) = (
        rabbitmq.expect("RabbitMQ starts"),
        redis.expect("Redis starts"),
    );
    assert_eq!(pid::name(rabbitmq.pid()).as_deref(), Some("beam.smp"));
    assert_eq!(pid::name(redis.pid()).as_deref(), Some("redis-server"));
    assert!(rabbitmq.is_running() && redis.is_running());

    // Durable state in both.
    let url = rabbitmq.url();
    {
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("AMQP connect");
        let channel = connection.create_channel().await.expect("channel");
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare("lifecycle".into(), durable, FieldTable::default())
            .await
            .expect("declare");
        let _ = connection.close(200, "done".into()).await;
    }
    let mut connection = redis_connection(&redis.url()).await;
    let () = redis::cmd("SET")
        .arg("lifecycle")
        .arg("kept")
        .query_async(&mut connection)
        .await
        .expect("SET");
    drop(connection);

    // RabbitMQ: a crash, then a restart on the same data.
    let old_pid = rabbitmq.pid();
    rabbitmq.kill().await.expect("kill RabbitMQ");
    assert!(!rabbitmq.is_running() && !pid::is_alive(old_pid));
    assert!(port_is_free(rabbitmq_spec.port));
    // Redis: a graceful restart (the append-only file is flushed on stop).
    let (restarted_rabbitmq, restarted_redis) = tokio::join!(rabbitmq.restart(), redis.restart());
    restarted_rabbitmq.expect("RabbitMQ restarts");
    restarted_redis.expect("Redis restarts");
    assert_ne!(rabbitmq.pid(), old_pid);
    assert!(
        queue_exists(&url, "lifecycle").await,
        "the durable queue survived the crash"
    );
    let mut connection = redis_connection(&redis.url()).await;
    let value: String = redis::cmd("GET")
        .arg("lifecycle")
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(value, "kept");
    drop(connection);

    // Stop gracefully; the ports come free. Dropping a tied server stops it too.
    rabbitmq.stop().await.expect("stop RabbitMQ");
    assert!(port_is_free(rabbitmq_spec.port) && port_is_free(rabbitmq_spec.dist_port));
    let redis_pid = redis.pid();
    drop(redis);
    assert!(
        pid::wait_until_gone(redis_pid, std::time::Duration::from_secs(10)).await,
        "dropped Redis stops"
    );
    let _ = std::fs::remove_dir_all(dir);
}
