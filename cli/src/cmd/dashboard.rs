//! `rask dashboard`: a live web page of the deployment. One static page (`dashboard.html`,
//! plain HTML and JavaScript, compiled into the binary: no build step, no files to deploy)
//! polls `/api/status` (the JSON of `rask status --json`) every second and draws workers and
//! their load, queue depth, throughput over time, failures, recent errors and dead letters;
//! and polls `/api/events` (task events, see `rask events`) to draw the task stream (a row per
//! worker slot, a bar per task colored by function) and the progress per function; draws each
//! worker's memory and CPU over time from `/api/usage` (`usage.rs`); and, for a key entered,
//! the picture of its persisted graph from `/api/graph` (nodes in layers, colored by state).
//! `/metrics` serves the cluster's Prometheus gauges (`exporter.rs`).

mod exporter;
mod usage;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use rask::Monitor;

use crate::cli::{DashboardArgs, Global};
use crate::output::settings;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

pub(crate) async fn run(global: &Global, args: DashboardArgs) -> Result<ExitCode> {
    let monitor = Arc::new(
        Monitor::connect(settings(global)?)
            .await
            .context("connecting to Redis")?,
    );
    let history = Arc::new(usage::UsageHistory::default());
    let sampler = tokio::spawn(usage::sample(monitor.clone(), history.clone()));
    let app = axum::Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/graph", get(graph))
        .route("/metrics", get(metrics))
        .with_state(monitor)
        .route(
            "/api/usage",
            get(move || {
                let history = history.clone();
                async move { axum::Json(history.snapshot()) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    println!("dashboard: http://{address}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the dashboard")?;
    sampler.abort();
    Ok(ExitCode::SUCCESS)
}

/// Most stream entries one `/api/events` answer reads (a worker's entry carries up to 512
/// events, a producer's up to 2,048; the page polls on with `after`).
const EVENTS_PAGE: usize = 64;

/// The query of `/api/events`: after the entry `after`, or from `since_minutes` ago.
#[derive(serde::Deserialize)]
struct EventsQuery {
    after: Option<String>,
    since_minutes: Option<u64>,
}

/// `/api/events`: task events (a JSON array, oldest first), or 502 with the error.
async fn events(
    State(monitor): State<Arc<Monitor>>,
    axum::extract::Query(query): axum::extract::Query<EventsQuery>,
) -> Response {
    let since = query
        .since_minutes
        .map(|m| std::time::Duration::from_secs(m * 60));
    match monitor
        .events(query.after.as_deref(), since, EVENTS_PAGE)
        .await
    {
        Ok(events) => axum::Json(events).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}")).into_response(),
    }
}

/// `/api/status`: the deployment now, or 502 with the error.
async fn status(State(monitor): State<Arc<Monitor>>) -> Response {
    match monitor.status().await {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}")).into_response(),
    }
}

/// Most tasks of a graph `/api/graph` reads (the picture of a larger one is truncated).
const GRAPH_NODES: usize = 2500;

/// The query of `/api/graph`: the key of a graph task.
#[derive(serde::Deserialize)]
struct GraphQuery {
    key: String,
}

/// `/api/graph`: the persisted graph of `key` with its tasks' states (a [`rask::GraphView`]);
/// 400 for a malformed key, 404 when `key` has no graph record, 502 with the error.
async fn graph(
    State(monitor): State<Arc<Monitor>>,
    axum::extract::Query(query): axum::extract::Query<GraphQuery>,
) -> Response {
    let key = match rask::TaskKey::new(query.key.trim()) {
        Ok(key) => key,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}")).into_response(),
    };
    match monitor.graph_view(&key, GRAPH_NODES).await {
        Ok(Some(view)) => axum::Json(view).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no graph record for {key} (not a graph task, or its record expired)"),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}")).into_response(),
    }
}

/// `/metrics`: the cluster's Prometheus gauges (`exporter.rs`), or 503 with the error (so that
/// Prometheus records a failed scrape rather than stale values).
async fn metrics(State(monitor): State<Arc<Monitor>>) -> Response {
    let read = async {
        Ok::<_, rask::Error>((monitor.status().await?, monitor.event_stream_head().await?))
    };
    match read.await {
        Ok((status, events)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            exporter::encode(&status, &events, rask_common::events::now_ms()),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}")).into_response(),
    }
}
