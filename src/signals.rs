//! Process signals: SIGTERM (the kubelet) or SIGINT (a terminal) start a graceful shutdown.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Waits for SIGTERM or SIGINT (or a shutdown started elsewhere), then stops being ready at once and tells
/// every loop to finish the work in hand and stop.
pub async fn shutdown_on_signal(
    shutdown: CancellationToken,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| anyhow::anyhow!("cannot listen for SIGTERM: {err}"))?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        () = shutdown.cancelled() => {}
    }
    health.start_shutdown();
    shutdown.cancel();
    Ok(())
}
