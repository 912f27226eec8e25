//! TLS to RabbitMQ (`amqps://`) and Redis (`rediss://`) with certificates made at test time:
//! servers are verified against `tls_ca_file`, RabbitMQ requires the client certificate of
//! `tls_cert_file`/`tls_key_file`, and tasks run end to end with every connection on TLS.

use rask_common::message::encode_value;
use rask_common::{broker, Outcome, Settings, Store, TaskKey, TaskMessage};
use rask_tests::{TestEnv, TlsServers, PATIENCE};

/// Whether `connect` fails (within [`PATIENCE`], so that a retrying client cannot hang the test).
async fn fails<T, E>(connect: impl std::future::Future<Output = Result<T, E>>) -> bool {
    tokio::time::timeout(PATIENCE, connect)
        .await
        .expect("connecting ends")
        .is_err()
}

// One test: a TLS RabbitMQ takes seconds to boot.
#[tokio::test]
async fn tasks_run_over_tls_with_verified_certificates() {
    let servers = TlsServers::start("tls").await;
    let mut env = TestEnv::on(servers.urls(), "tls");
    let untrusting = env.settings.clone();
    env.settings = servers.certificates.apply(&env.settings);

    // Without the CA neither server is trusted; without a client certificate RabbitMQ refuses.
    assert!(fails(broker::connect(&untrusting, "test")).await);
    let redis = rask_common::store::client(&untrusting).unwrap();
    assert!(fails(redis.get_multiplexed_async_connection()).await);
    let anonymous = Settings {
        tls_cert_file: None,
        tls_key_file: None,
        ..env.settings.clone()
    };
    assert!(fails(broker::connect(&anonymous, "test")).await);
    let missing = Settings {
        tls_ca_file: Some(env.path("nowhere.pem")),
        ..env.settings.clone()
    };
    let error = broker::connect(&missing, "test").await.unwrap_err();
    assert!(
        matches!(
            error,
            rask_common::Error::TlsFile {
                setting: "tls_ca_file",
                ..
            }
        ),
        "{error}"
    );

    // Workers on TLS only, configured through RASK_TLS_* variables.
    let tls_vars = servers.certificates.env_vars();
    let extra: Vec<(&str, &str)> = tls_vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _workers = env.spawn_workers_with(2, &extra);

    // A producer publishing over TLS, and reading results over TLS.
    let connection = broker::connect(&env.settings, "test producer")
        .await
        .unwrap();
    let channel = broker::declare_topology(&connection, &env.settings)
        .await
        .unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let to = broker::Destination::tasks(&env.settings);
    let messages: Vec<TaskMessage> = (0..20)
        .map(|i| TaskMessage::new(TaskKey::unique("inc"), "inc", encode_value(&(i,)).unwrap()))
        .collect();
    for message in &messages {
        broker::publish_task(&channel, &to, message, &message.encode().unwrap())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let store = Store::connect(&env.settings).await.unwrap();
    let keys: Vec<TaskKey> = messages.iter().map(|m| m.key.clone()).collect();
    env.eventually("20 results over TLS", || {
        let (store, keys) = (store.clone(), keys.clone());
        async move {
            store
                .get_outcomes(&keys)
                .await
                .unwrap()
                .iter()
                .all(Option::is_some)
        }
    })
    .await;
    let outcomes = store.get_outcomes(&keys).await.unwrap();
    for (i, bytes) in outcomes.into_iter().enumerate() {
        match Outcome::decode(&bytes.unwrap()).unwrap() {
            Outcome::Value(value) => {
                let value: i64 = rask_common::message::decode_value(&value).unwrap();
                assert_eq!(value, i as i64 + 1);
            }
            other => panic!("task {i} failed: {other:?}"),
        }
    }
    let _ = connection.close(200, "done".into()).await;

    // The `rask` client over TLS too, its completion listener included, with the tls_* settings
    // alone (Redis requires the client certificate).
    let program = rask::local::sibling_binary("rask").expect("rask is built");
    let output = tokio::process::Command::new(program)
        .args(["submit", "inc", "41"])
        .envs(env.env_vars())
        .envs(tls_vars.iter().cloned())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("rask submit ends")
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
}
