//! Traces against real servers (issue 19): worker processes export their `rask.run` spans over
//! OTLP/HTTP to a small collector this test runs (an HTTP listener that decodes and keeps the
//! posted spans), and so does the test process for its client's `rask.publish` spans.
//!
//! - A graph persisted inside a caller's span is one trace: every node's run, released ones
//!   included, is a child of the client's publish span, itself a child of the caller's span;
//!   an independent submit after it starts a trace of its own.
//! - The calls of a batch message each get a span under the map's publish span; a retried task's
//!   attempts share their parent.
//! - A `traceparent` header alone (no body field) is read; a malformed one is ignored: the task
//!   runs as any other.
//! - The `rask` CLI exports its own publish span; the worker's run joins that trace.
//! - An `https://` endpoint is verified against `tls_ca_file` and given the client certificate;
//!   without the CA, the exporter refuses the collector's certificate and sends nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use rask::builtins::{add, inc};
use rask::{Delayed, Future, RetryPolicy, TaskOptions};
use rask_common::Settings;
use rask_common::{TaskKey, TaskMessage};
use rask_tests::tasks::whoami;
use rask_tests::TestCertificates;
use rask_tests::{TestEnv, PATIENCE};
use rask_worker::otlp::Otlp;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::Instrument;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// String and integer attributes, as text.
    attributes: HashMap<String, String>,
}

impl Span {
    fn attribute(&self, name: &str) -> &str {
        self.attributes.get(name).map_or("", String::as_str)
    }
}

/// A minimal OTLP/HTTP collector: answers every `POST /v1/traces` with 200 and keeps the spans
/// of its protobuf body.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// TLS handshakes that failed (a client that did not trust the collector's certificate, or
    /// presented none).
    refused: Arc<AtomicUsize>,
}

impl Collector {
    /// Listens on a free port of 127.0.0.1; returns the collector and its endpoint URL.
    async fn start() -> (Collector, String) {
        Collector::listen(None).await
    }

    /// Listens over TLS with the server certificate of `certificates`, requiring a client
    /// certificate signed by their CA; returns the collector and its `https://` URL.
    async fn start_tls(certificates: &TestCertificates) -> (Collector, String) {
        Collector::listen(Some(tls_acceptor(certificates))).await
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let kept = collector.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (kept, tls) = (kept.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => kept.serve(stream).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => kept.serve(stream).await,
                            Err(_) => {
                                kept.refused.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        (collector, format!("{scheme}://{address}"))
    }

    /// Serves one connection's requests (HTTP/1.1, kept alive) until the client closes it.
    async fn serve(self, stream: impl AsyncRead + AsyncWrite + Unpin) {
        let mut stream = BufReader::new(stream);
        loop {
            let mut length = 0;
            let mut line = String::new();
            loop {
                line.clear();
                match stream.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            self.keep(&body);
            let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                         content-length: 0\r\n\r\n";
            if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Decodes an export request and keeps its spans.
    fn keep(&self, body: &[u8]) {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
        let mut spans = self.spans.lock().unwrap();
        for scope in request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
        {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .into_iter()
                    .filter_map(|kv| {
                        let value = match kv.value?.value? {
                            Value::StringValue(s) => s,
                            Value::IntValue(i) => i.to_string(),
                            other => format!("{other:?}"),
                        };
                        Some((kv.key, value))
                    })
                    .collect();
                spans.push(Span {
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes,
                });
            }
        }
    }

    /// The spans received so far.
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The `rask.run` spans of `key` received so far.
    fn runs_of(&self, key: &TaskKey) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == "rask.run" && s.attribute("rask.key") == key.as_str())
            .collect()
    }

    /// Waits until every key of `keys` has at least `runs` run spans, and returns them by key.
    async fn wait_for_runs(
        &self,
        env: &TestEnv,
        keys: &[TaskKey],
        runs: usize,
    ) -> HashMap<TaskKey, Vec<Span>> {
        env.eventually("the run spans reach the collector", || async {
            keys.iter().all(|k| self.runs_of(k).len() >= runs)
        })
        .await;
        keys.iter().map(|k| (k.clone(), self.runs_of(k))).collect()
    }
}

/// An environment whose workers (`rask-test-worker` processes, started here) and client export
/// spans to a new collector; with the test process's own exporter.
async fn traced(name: &str) -> (TestEnv, Collector, Vec<rask::local::Worker>, Otlp) {
    let (collector, endpoint) = Collector::start().await;
    let mut env = TestEnv::new(name).await;
    env.settings.otlp_endpoint.clone_from(&endpoint);
    let workers = env.spawn_program_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_rask-test-worker")),
        2,
        &[
            ("RASK_OTLP_ENDPOINT", endpoint.as_str()),
            // Spans leave the workers within 100 ms rather than the SDK's 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let otlp = Otlp::start(&env.settings, "traces-test")
        .unwrap()
        .expect("an endpoint is set");
    (env, collector, workers, otlp)
}

/// A binary reduction tree of `add` over `inc(base + i)` leaves; returns the root and every
/// node's key.
fn tree(base: i64, leaves: i64) -> (Delayed<i64>, Vec<TaskKey>) {
    let mut keys = Vec::new();
    let mut level: Vec<Delayed<i64>> = (0..leaves).map(|i| inc.delayed(base + i)).collect();
    keys.extend(level.iter().map(|d| d.key().clone()));
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| add.delayed(&pair[0], &pair[1]))
            .collect();
        keys.extend(level.iter().map(|d| d.key().clone()));
    }
    (level.pop().unwrap(), keys)
}

// Multi-threaded: the collector's tasks must answer while `Otlp::shutdown` blocks this thread
// (the test body runs on it, so the subscriber set here is the body's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_graph_is_one_trace_parented_to_its_producer() {
    let (env, collector, _workers, otlp) = traced("traces-graph").await;
    let subscriber = {
        use tracing_subscriber::layer::SubscriberExt;
        tracing_subscriber::registry().with(otlp.layer())
    };
    let _default = tracing::subscriber::set_default(subscriber);
    let client = env.client().await;

    // A graph of 7 nodes (4 leaves, 3 released by workers), persisted inside a caller's span.
    let base = 1_000 * i64::from(std::process::id() % 1_000);
    let (root, keys) = tree(base, 4);
    let caller = tracing::info_span!("caller");
    let future: Future<i64> = client
        .persist(&root)
        .instrument(caller.clone())
        .await
        .unwrap();
    let expected: i64 = (0..4).map(|i| base + i + 1).sum();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), expected);
    drop(caller);

    // Then an independent submit, outside any span: a trace of its own.
    let single = client.submit(inc, (base + 100,)).await.unwrap();
    assert_eq!(single.result_within(PATIENCE).await.unwrap(), base + 101);
    otlp.shutdown(); // sends the test process's spans (the caller's, the client's)

    let runs = collector.wait_for_runs(&env, &keys, 1).await;
    let spans = collector.spans();
    let caller = spans
        .iter()
        .find(|s| s.name == "caller")
        .expect("the caller's span");
    let publishes: Vec<&Span> = spans.iter().filter(|s| s.name == "rask.publish").collect();
    let graph = publishes
        .iter()
        .find(|s| s.attribute("rask.operation") == "graph")
        .expect("the graph's publish span");
    assert_eq!(
        graph.trace_id, caller.trace_id,
        "the graph joins its caller's trace"
    );
    assert_eq!(graph.parent_span_id, caller.span_id);
    for key in &keys {
        let spans = &runs[key];
        for span in spans {
            assert_eq!(
                span.trace_id, caller.trace_id,
                "{key}: one trace for the graph"
            );
            assert_eq!(
                span.parent_span_id, graph.span_id,
                "{key}: a child of the producer's publish span, released or not"
            );
            assert_eq!(span.attribute("rask.outcome"), "succeeded", "{key}");
            assert!(!span.attribute("rask.worker").is_empty(), "{key}");
        }
    }
    let added = keys
        .iter()
        .filter(|k| k.as_str().starts_with("add"))
        .count();
    assert_eq!(added, 3, "the released nodes are among those checked");

    let [alone] = collector
        .wait_for_runs(&env, &[single.key().clone()], 1)
        .await[single.key()]
    .clone()
    .try_into()
    .expect("one run of the single task");
    assert_ne!(
        alone.trace_id, caller.trace_id,
        "an independent submit: its own trace"
    );
    let submit = publishes
        .iter()
        .find(|s| s.attribute("rask.operation") == "submit")
        .expect("the submit's publish span");
    assert_eq!(alone.trace_id, submit.trace_id);
    assert_eq!(alone.parent_span_id, submit.span_id);
    assert!(submit.parent_span_id.is_empty(), "a root: no caller span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_its_publish_span_and_the_run_joins_its_trace() {
    let (env, collector, _workers, otlp) = traced("traces-cli").await;
    otlp.shutdown();
    let n = 1_000 * i64::from(std::process::id() % 1_000) + 500;
    let out = env.rask(&["submit", "inc", &n.to_string()], "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (n + 1).to_string()
    );

    // The command sent its spans before it exited.
    let publish = collector
        .spans()
        .into_iter()
        .find(|s| s.name == "rask.publish")
        .expect("the CLI's publish span reached the collector");
    assert_eq!(publish.attribute("rask.function"), "inc");
    env.eventually("the run span of the submitted task arrives", || async {
        collector
            .spans()
            .iter()
            .any(|s| s.name == "rask.run" && s.trace_id == publish.trace_id)
    })
    .await;
    let run = collector
        .spans()
        .into_iter()
        .find(|s| s.name == "rask.run" && s.trace_id == publish.trace_id)
        .unwrap();
    assert_eq!(
        run.parent_span_id, publish.span_id,
        "the run is the publish's child"
    );
    assert_eq!(run.attribute("rask.function"), "inc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_calls_and_retries_are_children_of_their_publish() {
    // No exporter in the test process: the client makes the trace context itself (its publish
    // span is not exported, so the workers' spans share a parent no one sent).
    let (env, collector, _workers, otlp) = traced("traces-batch").await;
    otlp.shutdown();
    let client = env.client().await;

    let base = 1_000 * i64::from(std::process::id() % 1_000);
    let options = TaskOptions::default().batch(4);
    let calls = client
        .map_with(inc, (0..8).map(|i| (base + i,)), &options)
        .await
        .unwrap();
    let values = client.gather(&calls).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (0..8).map(|i| base + i + 1).collect::<Vec<_>>());
    let keys: Vec<TaskKey> = calls.iter().map(|f| f.key().clone()).collect();
    let runs = collector.wait_for_runs(&env, &keys, 1).await;
    let first = &runs[&keys[0]][0];
    for key in &keys {
        for span in &runs[key] {
            assert_eq!(span.trace_id, first.trace_id, "{key}: the map's trace");
            assert_eq!(
                span.parent_span_id, first.parent_span_id,
                "{key}: one parent"
            );
        }
    }
    let own: Vec<&Vec<u8>> = keys.iter().map(|k| &runs[k][0].span_id).collect();
    let distinct: std::collections::HashSet<_> = own.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "each call its own span");

    // A task failing once, retried: both attempts in one trace, under one parent.
    let policy = RetryPolicy::new(3).backoff(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_millis(10),
    );
    let retried = client
        .submit_with(whoami, (7, 1), &TaskOptions::default().retry(policy))
        .await
        .unwrap();
    let (_, attempt, _, _) = retried.result_within(PATIENCE).await.unwrap();
    assert_eq!(attempt, 1);
    let attempts = &collector
        .wait_for_runs(&env, &[retried.key().clone()], 2)
        .await[retried.key()];
    let outcome = |attempt: &str| {
        attempts
            .iter()
            .find(|s| s.attribute("rask.attempt") == attempt)
            .unwrap_or_else(|| panic!("attempt {attempt}: {attempts:?}"))
    };
    let (failed, succeeded) = (outcome("0"), outcome("1"));
    assert_eq!(failed.attribute("rask.outcome"), "retried");
    assert_eq!(succeeded.attribute("rask.outcome"), "succeeded");
    assert_eq!(failed.trace_id, succeeded.trace_id);
    assert_eq!(failed.parent_span_id, succeeded.parent_span_id);
    assert_ne!(
        failed.trace_id, first.trace_id,
        "another submit, another trace"
    );
}

/// Publishes a task message `inc(x)` with only `traceparent` header (no `trace` in its body), as a
/// producer that writes no body field would; returns its key.
async fn publish_with_header(
    env: &TestEnv,
    channel: &lapin::Channel,
    x: i64,
    traceparent: &str,
) -> TaskKey {
    let message = TaskMessage::new(
        TaskKey::unique("inc"),
        "inc",
        rmp_serde::to_vec(&(x,)).unwrap(),
    );
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(traceparent.into()),
    );
    channel
        .basic_publish(
            env.settings.exchange.as_str().into(),
            env.settings.queue.as_str().into(),
            BasicPublishOptions::default(),
            &message.encode().unwrap(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    message.key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_header_is_read_and_a_malformed_one_ignored() {
    let (env, collector, _workers, otlp) = traced("traces-headers").await;
    otlp.shutdown();
    let client = env.client().await;
    let connection = rask_common::broker::connect(&env.settings, "test publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let base = 1_000 * i64::from(std::process::id() % 1_000);
    let bad = publish_with_header(&env, &channel, base, "00-not-a-trace-context").await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let good = publish_with_header(&env, &channel, base + 1, parent).await;
    for (key, x) in [(&bad, base), (&good, base + 1)] {
        let future: Future<i64> = client.future(key.clone());
        assert_eq!(
            future.result_within(PATIENCE).await.unwrap(),
            x + 1,
            "{key}"
        );
    }
    let runs = collector
        .wait_for_runs(&env, &[bad.clone(), good.clone()], 1)
        .await;
    // The malformed one runs as any other, the root of a trace of its own.
    let [bad_run] = runs[&bad].clone().try_into().expect("one run");
    assert!(bad_run.parent_span_id.is_empty(), "no parent: {bad_run:?}");
    // The valid one is a child of the header's context.
    let [good_run] = runs[&good].clone().try_into().expect("one run");
    assert_eq!(good_run.trace_id, hex(&parent[3..35]));
    assert_eq!(good_run.parent_span_id, hex(&parent[36..52]));
    let _ = connection.close(200, "done".into()).await;
}

/// The bytes of lowercase hex `text`.
fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A TLS acceptor with the server certificate of `certificates`, requiring client certificates
/// signed by their CA.
fn tls_acceptor(certificates: &TestCertificates) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&certificates.server_cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(&certificates.server_key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&certificates.ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Exports one span named `name` through an exporter started with `settings`, then shuts the
/// exporter down (which sends it, or fails to).
fn export_one_span(settings: &Settings, name: &'static str) {
    use tracing_subscriber::layer::SubscriberExt;
    let otlp = Otlp::start(settings, "traces-tls-test")
        .unwrap()
        .expect("an endpoint is set");
    let subscriber = tracing_subscriber::registry().with(otlp.layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::info_span!("export", otel.name = name).in_scope(|| {});
    });
    otlp.shutdown();
}

// Multi-threaded: the collector's tasks must answer while `Otlp::shutdown` blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_is_verified_against_tls_ca_file() {
    let env = TestEnv::new("traces-tls").await;
    let folder = std::env::temp_dir().join(format!("rask-traces-tls-{}", std::process::id()));
    let certificates = TestCertificates::generate(&folder);

    // Trusting the CA and presenting the client certificate: the span arrives.
    let (collector, endpoint) = Collector::start_tls(&certificates).await;
    let trusting = certificates.apply(&Settings {
        otlp_endpoint: endpoint,
        ..Settings::default()
    });
    export_one_span(&trusting, "over-tls");
    env.eventually("the span reaches the collector over TLS", || async {
        collector.spans().iter().any(|s| s.name == "over-tls")
    })
    .await;
    assert_eq!(collector.refused.load(Ordering::SeqCst), 0);

    // Without the CA (system roots only): the collector's certificate is refused, nothing is sent.
    let (refusing, endpoint) = Collector::start_tls(&certificates).await;
    let untrusting = Settings {
        otlp_endpoint: endpoint,
        ..Settings::default()
    };
    export_one_span(&untrusting, "refused");
    env.eventually("the TLS handshake fails", || async {
        refusing.refused.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(refusing.spans().is_empty(), "no span without trust");
    std::fs::remove_dir_all(&folder).unwrap();
}
