//! The shutdown signal of worker binaries: SIGINT (Ctrl-C) or SIGTERM (what containers get).

/// Completes on the first SIGINT or SIGTERM. For binaries to pass to [`crate::Worker::run`]; the
/// library itself never installs signal handlers.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
