//! Logging set-up, done once per process: JSON lines (or text) on stdout, filtered by RUST_LOG.

use tracing_subscriber::EnvFilter;

/// Flushes telemetry when dropped; hold it for the life of `main`.
pub struct TelemetryGuard;

pub fn init(service: &'static str, format: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(crate::config::RUST_LOG.default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let installed = if format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    };
    if installed.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
    TelemetryGuard
}
