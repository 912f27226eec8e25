//! Two deployments sharing one RabbitMQ and one Redis, told apart only by their vhost and Redis
//! key prefix (same exchange and queue names, same task key): neither runs, sees or deletes the
//! other's tasks and results. And the Redis ACL of docs/security.md, on a Redis Cluster.

use rask::TaskKey;
use rask_common::message::encode_value;
use rask_common::{broker, Settings, Store, TaskMessage};
use rask_tests::{PrivateRabbitMq, ServerUrls, TestEnv, PATIENCE};
use rask_worker::Registry;

/// A deployment on `vhost` of `rabbitmq` and the shared Redis under `prefix`, with the default
/// exchange and queue names.
async fn deployment(rabbitmq: &PrivateRabbitMq, vhost: &str, prefix: &str) -> TestEnv {
    let redis = rask_tests::shared_servers().await.redis;
    let urls = ServerUrls {
        amqp: rabbitmq.url(vhost),
        redis,
    };
    let mut env = TestEnv::on(urls, vhost);
    let defaults = Settings::default();
    env.settings = Settings {
        exchange: defaults.exchange,
        queue: defaults.queue,
        dead_letter_exchange: defaults.dead_letter_exchange,
        dead_letter_queue: defaults.dead_letter_queue,
        key_prefix: prefix.to_owned(),
        ..env.settings
    };
    env
}

/// Publishes `inc(n)` under `key` in `env`'s deployment.
async fn publish_inc(env: &TestEnv, key: &TaskKey, n: i64) {
    let connection = broker::connect(&env.settings, "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let message = TaskMessage::new(key.clone(), "inc", encode_value(&(n,)).unwrap());
    let to = broker::Destination::tasks(&env.settings);
    broker::publish_task(&channel, &to, &message, &message.encode().unwrap())
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn deployments_on_shared_servers_do_not_see_each_other() {
    let rabbitmq = PrivateRabbitMq::start("isolation", "").await;
    rabbitmq.add_vhost("alpha").await;
    rabbitmq.add_vhost("beta").await;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let alpha = deployment(&rabbitmq, "alpha", &format!("iso-{run}-alpha")).await;
    let beta = deployment(&rabbitmq, "beta", &format!("iso-{run}-beta")).await;
    let (alpha_client, beta_client) = (alpha.client().await, beta.client().await);

    // The same task key in both, with different arguments; only alpha has a worker.
    let key = TaskKey::unique("inc");
    let alpha_worker = alpha.run_worker(Registry::with_builtins());
    publish_inc(&alpha, &key, 1).await;
    publish_inc(&beta, &key, 100).await;
    let alpha_future = alpha_client.future::<i64>(key.clone());
    assert_eq!(alpha_future.result_within(PATIENCE).await.unwrap(), 2);

    // Beta's task waits in beta's queue, untouched by alpha's worker; nothing is stored for it.
    assert_eq!(beta.queue_depth(&beta.settings.queue).await, (1, 0));
    let beta_store = Store::connect(&beta.settings).await.unwrap();
    assert_eq!(
        beta_store
            .get_outcomes(std::slice::from_ref(&key))
            .await
            .unwrap(),
        vec![None]
    );

    // Beta's own worker runs it and stores beta's result under beta's prefix.
    let beta_worker = beta.run_worker(Registry::with_builtins());
    let beta_future = beta_client.future::<i64>(key.clone());
    assert_eq!(beta_future.result_within(PATIENCE).await.unwrap(), 101);
    assert_eq!(
        alpha_client
            .future::<i64>(key.clone())
            .result_within(PATIENCE)
            .await
            .unwrap(),
        2
    );

    // Purging alpha deletes alpha's results only.
    let alpha_store = Store::connect(&alpha.settings).await.unwrap();
    assert_eq!(alpha_store.purge().await.unwrap(), 1);
    let both = [
        alpha_store
            .get_outcomes(std::slice::from_ref(&key))
            .await
            .unwrap(),
        beta_store
            .get_outcomes(std::slice::from_ref(&key))
            .await
            .unwrap(),
    ];
    assert!(both[0][0].is_none() && both[1][0].is_some(), "{both:?}");

    alpha_worker.stop().await.unwrap();
    beta_worker.stop().await.unwrap();
}

/// The Redis ACL of docs/security.md on every node of a Redis Cluster: with both key patterns a
/// deployment's user runs tasks and its workers register (the registry keys are `{prefix}:…` on
/// a cluster); with `~prefix:*` alone, as the doc said before, the registry is out of reach.
#[tokio::test]
async fn the_documented_redis_acl_admits_every_key_of_a_clustered_deployment() {
    let cluster = rask_tests::redis_cluster::PrivateRedisCluster::start("acl").await;
    let mut env = TestEnv::new("acl").await;
    let prefix = env.settings.key_prefix.clone();
    for url in cluster.urls() {
        let node = redis::Client::open(url).unwrap();
        let mut conn = node.get_multiplexed_async_connection().await.unwrap();
        let users = [
            (
                "deployment",
                vec![format!("~{prefix}:*"), format!("~{{{prefix}}}:*")],
            ),
            ("narrow", vec![format!("~{prefix}:*")]),
        ];
        for (user, keys) in users {
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(user)
                .arg("on")
                .arg(">secret-password")
                .arg("resetkeys")
                .arg(keys)
                .arg("resetchannels")
                .arg(format!("&{prefix}:*"))
                .arg("+@all")
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    }
    let as_user = |user: &str| -> Vec<String> {
        cluster
            .urls()
            .iter()
            .map(|url| url.replacen("redis://", &format!("redis://{user}:secret-password@"), 1))
            .collect()
    };
    env.settings.redis_cluster_urls = as_user("deployment");
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let future = client.submit(rask::builtins::inc, (41,)).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 42);
    let store = Store::connect(&env.settings).await.unwrap();
    env.eventually("the worker in the registry", || async {
        rask_common::ops::live_workers(&store).await.unwrap().len() == 1
    })
    .await;

    let narrow = Settings {
        redis_cluster_urls: as_user("narrow"),
        ..env.settings.clone()
    };
    let store = Store::connect(&narrow).await.unwrap();
    let refused = rask_common::ops::live_workers(&store).await.unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("noperm"),
        "{refused}"
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}
