//! The docker-compose topology, without Docker: reads `docker-compose.yml`, substitutes the values
//! of `.env.example` as `docker compose` would, and runs it on this machine: a private RabbitMQ
//! with the `rabbitmq` service's user and vhost (and no use of `guest`), the `redis` service's own
//! command (password and all), `worker` replicas scaled past the file's `deploy.replicas` (as
//! `--scale worker=N` would), the `gpu-worker` replicas of pool `gpu` the demo's analysis runs
//! on, and the one-shot `demo`, each with its command and environment. The
//! only rewrites: service hostnames become the local servers' addresses, and each worker's
//! metrics endpoint takes a free port (replicas share one host here, not one container each).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rask::local::{self, Lifetime, WorkerSpec};
use rask_common::Settings;
use rask_tests::{PrivateRabbitMq, PATIENCE};
use serde_yaml::Value;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `KEY=VALUE` lines of an env file (comments and blank lines skipped).
fn env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Compose's variable substitution: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`,
/// `${NAME-default}`, `${NAME:?error}` and `${NAME?error}` (panicking with the error, as
/// compose refuses the file).
fn interpolate(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}').expect("a closing brace");
            let expression = &braced[..end];
            rest = &braced[end + 1..];
            let name_len = expression
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expression.len());
            let (name, modifier) = expression.split_at(name_len);
            let value = vars.get(name).map(String::as_str);
            let set = value.filter(|v| !v.is_empty());
            out.push_str(&match modifier {
                "" => value.unwrap_or("").to_owned(),
                m if m.starts_with(":-") => set.unwrap_or(&m[2..]).to_owned(),
                m if m.starts_with('-') => value.unwrap_or(&m[1..]).to_owned(),
                m if m.starts_with(":?") || m.starts_with('?') => match (m.starts_with(':'), value)
                {
                    (true, _) if set.is_some() => set.unwrap().to_owned(),
                    (false, Some(v)) => v.to_owned(),
                    _ => panic!("compose refuses the file: {name}: {m}"),
                },
                m => panic!("unsupported substitution ${{{name}{m}}}"),
            });
        } else {
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push_str(vars.get(&rest[..name_len]).map_or("", String::as_str));
            rest = &rest[name_len..];
        }
    }
    out.push_str(rest);
    out
}

/// Substitutes every string of `value`.
fn interpolate_all(value: &mut Value, vars: &HashMap<String, String>) {
    match value {
        Value::String(s) => *s = interpolate(s, vars),
        Value::Sequence(items) => items.iter_mut().for_each(|v| interpolate_all(v, vars)),
        Value::Mapping(map) => map.iter_mut().for_each(|(_, v)| interpolate_all(v, vars)),
        _ => {}
    }
}

/// `docker-compose.yml` as `docker compose --env-file .env.example config` renders it:
/// variables substituted, `<<` merges applied.
fn rendered() -> Value {
    let vars = env_file(&std::fs::read_to_string(root().join(".env.example")).unwrap());
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut compose: Value = serde_yaml::from_str(&text).unwrap();
    // A merge may bring in a mapping with merges of its own (`x-rask-worker-env` merges
    // `x-rask-env`): apply them until none is left.
    loop {
        let before = compose.clone();
        compose.apply_merge().unwrap();
        if compose == before {
            break;
        }
    }
    interpolate_all(&mut compose, &vars);
    compose
}

/// A service's environment (a mapping or a list of `KEY=VALUE`).
fn environment(service: &Value) -> HashMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("unexpected environment value {other:?}"),
    };
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(list) => list
            .iter()
            .filter_map(|v| scalar(v).split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect(),
        Value::Null => HashMap::new(),
        other => panic!("unexpected environment {other:?}"),
    }
}

/// A service's command, as a list.
fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_sequence()
        .expect("commands are lists in docker-compose.yml")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

#[test]
fn the_compose_file_keeps_its_promises() {
    let compose = rendered();
    let services = compose["services"].as_mapping().unwrap();
    for (name, service) in services {
        assert!(
            service["healthcheck"]["test"].is_sequence(),
            "{name:?} has a healthcheck"
        );
        for dependency in service["depends_on"].as_mapping().into_iter().flatten() {
            assert_eq!(
                dependency.1["condition"], "service_healthy",
                "{name:?} waits for {:?} to be healthy",
                dependency.0
            );
        }
    }
    for server in ["rabbitmq", "redis"] {
        assert!(
            compose["services"][server]["ports"].is_null(),
            "{server}'s port is not published"
        );
    }
    assert_eq!(compose["services"]["worker"]["deploy"]["replicas"], 2);
    // The demo's analysis pool, with the resource its tasks need.
    let gpu = environment(&compose["services"]["gpu-worker"]);
    assert_eq!(
        (gpu["RASK_POOLS"].as_str(), gpu["RASK_RESOURCES"].as_str()),
        ("gpu", "gpu=1")
    );
    assert_eq!(
        compose["services"]["demo"]["depends_on"]["gpu-worker"]["condition"],
        "service_healthy"
    );
    let env = environment(&compose["services"]["rabbitmq"]);
    assert_ne!(env["RABBITMQ_DEFAULT_USER"], "guest");
    // No secret has a default in the file itself: without .env it does not render.
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    for secret in ["RABBITMQ_PASSWORD", "REDIS_PASSWORD", "RASK_SIGNING_KEYS"] {
        assert!(text.contains(&format!("${{{secret}:?")), "{secret}");
        assert!(!text.contains(&format!("${{{secret}:-")), "{secret}");
    }
}

#[tokio::test]
async fn the_demo_completes_with_scaled_workers() {
    let compose = rendered();
    let services = &compose["services"];
    let dir = std::env::temp_dir().join(format!(
        "rask-compose-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).unwrap();

    // RabbitMQ as the `rabbitmq` service sets it up: its user and vhost.
    let rabbit_env = environment(&services["rabbitmq"]);
    let (user, password, vhost) = (
        &rabbit_env["RABBITMQ_DEFAULT_USER"],
        &rabbit_env["RABBITMQ_DEFAULT_PASS"],
        &rabbit_env["RABBITMQ_DEFAULT_VHOST"],
    );
    let rabbitmq = PrivateRabbitMq::start("compose", "").await;
    let (add_user, add_vhost) = (["add_user", user, password], ["add_vhost", vhost]);
    tokio::join!(rabbitmq.ctl(&add_user), rabbitmq.ctl(&add_vhost));
    rabbitmq
        .ctl(&["set_permissions", "-p", vhost, user, ".*", ".*", ".*"])
        .await;

    // Redis by the `redis` service's own command, on a local port and folder.
    let redis_port = local::free_port().unwrap();
    let redis_command = command(&services["redis"]);
    let redis_log = std::fs::File::create(dir.join("redis.log")).unwrap();
    let _redis = tokio::process::Command::new(&redis_command[0])
        .args(&redis_command[1..])
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(&dir)
        .args(["--save", "", "--daemonize", "no"])
        .stdout(redis_log.try_clone().unwrap())
        .stderr(redis_log)
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts");

    // The rask services' environment, pointed at the local servers.
    let rewrite = |env: HashMap<String, String>| -> Vec<(String, String)> {
        env.into_iter()
            .map(|(k, v)| {
                let v = v
                    .replace(
                        "@rabbitmq:5672",
                        &format!("@127.0.0.1:{}", rabbitmq.spec.port),
                    )
                    .replace("@redis:6379", &format!("@127.0.0.1:{redis_port}"));
                (k, v)
            })
            .collect()
    };
    let worker_env = rewrite(environment(&services["worker"]));
    let lookup = |name: &str| {
        worker_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the worker service sets {name}"))
    };
    assert!(!lookup("RASK_SIGNING_KEYS").is_empty(), "signing is on");
    let settings = Settings {
        amqp_url: lookup("RASK_AMQP_URL"),
        redis_url: lookup("RASK_REDIS_URL"),
        ..Settings::default()
    };
    let redis = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ping = async {
            let mut c = redis.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "Redis answers PING with the compose password: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `docker compose up --scale worker=3`: one more replica than the file's default; and the
    // file's `gpu-worker` replicas, which serve pool gpu with one gpu slot each.
    let replicas = services["worker"]["deploy"]["replicas"].as_u64().unwrap() as usize + 1;
    let gpu_replicas = services["gpu-worker"]["deploy"]["replicas"]
        .as_u64()
        .unwrap() as usize;
    assert!(gpu_replicas >= 1, "the demo needs a worker of pool gpu");
    let mut workers = Vec::new();
    for (service, count) in [("worker", replicas), ("gpu-worker", gpu_replicas)] {
        let service_env = rewrite(environment(&services[service]));
        let worker_command = command(&services[service]);
        for i in 0..count {
            let mut env = service_env.clone();
            env.retain(|(k, _)| k != "RASK_METRICS_LISTEN");
            env.push(("RASK_METRICS_LISTEN".into(), "127.0.0.1:0".into()));
            let spec = WorkerSpec {
                program: local::sibling_binary(&worker_command[0]).expect("rask-worker is built"),
                args: worker_command[1..].to_vec(),
                env,
                log: dir.join(format!("{service}-{i}.log")),
            };
            workers.push(
                local::Worker::spawn(&spec, Lifetime::TiedToCaller).expect("a worker starts"),
            );
        }
    }
    for worker in &mut workers {
        worker
            .wait_ready(PATIENCE)
            .await
            .expect("a worker is ready");
    }
    let connection = rask_common::broker::connect(&settings, "compose test")
        .await
        .expect("the compose user reaches the compose vhost");
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            settings.queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        queue.consumer_count() as usize,
        replicas,
        "every replica of `worker` consumes the default pool's queue, no `gpu-worker` does"
    );
    let _ = connection.close(200, "done".into()).await;

    // The one-shot demo, as the `demo` service runs it.
    let demo_command = command(&services["demo"]);
    let demo = tokio::process::Command::new(
        local::sibling_binary(&demo_command[0]).expect("rask is built"),
    )
    .args(&demo_command[1..])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .envs(rewrite(environment(&services["demo"])))
    .kill_on_drop(true)
    .output();
    let output = tokio::time::timeout(PATIENCE, demo)
        .await
        .expect("the demo finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("images on the cluster"), "{stdout}");
    assert!(
        stdout.contains("image analysis on pool gpu with gpu=1 per task")
            && stdout.contains("on workers of pool gpu")
            && !stdout.contains("on workers of pool default"),
        "the analysis runs on the gpu-worker service: {stdout}"
    );
    // Secrets stay out of what the demo prints.
    for secret in [password, &lookup("RASK_SIGNING_KEYS")] {
        assert!(!stdout.contains(secret.as_str()));
        assert!(!String::from_utf8_lossy(&output.stderr).contains(secret.as_str()));
    }
    // ... and out of `rask status`, which lists the replicas.
    let status =
        tokio::process::Command::new(local::sibling_binary("rask").expect("rask is built"))
            .args(["status", "--json"])
            .envs(rewrite(environment(&services["demo"])))
            .kill_on_drop(true)
            .output();
    let status = tokio::time::timeout(PATIENCE, status)
        .await
        .expect("rask status finishes")
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(!shown.contains(password.as_str()) && !shown.contains(&lookup("RASK_SIGNING_KEYS")));
    let report: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(
        report["workers"].as_array().map(Vec::len),
        Some(replicas + gpu_replicas),
        "{report}"
    );
    // ... and out of the workers' logs.
    for worker in &workers {
        let log = std::fs::read_to_string(worker.log_path()).unwrap();
        assert!(!log.contains(password.as_str()), "{log}");
        assert!(!log.contains(&lookup("RASK_SIGNING_KEYS")), "{log}");
    }
    drop(workers);
    let _ = std::fs::remove_dir_all(&dir);
}
