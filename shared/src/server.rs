//! Starts a service the same way from `main` and from tests: settings, telemetry, Redis, then
//! an actix server with the shared middleware around the service's routes.

use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};

use std::sync::Arc;

use crate::config::CommonSettings;
use crate::idempotency::IdempotencyStore;
use crate::ops::Ops;
use crate::redis_pool::Pool;

/// What a service's handlers share: its settings, its store, its Idempotency-Key records, and
/// the accounts that tell who a caller is.
pub struct AppState<S, T> {
    pub settings: Arc<S>,
    pub store: T,
    pub idempotency: IdempotencyStore,
    pub accounts: crate::accounts::Accounts,
}

impl<S, T: Clone> Clone for AppState<S, T> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            store: self.store.clone(),
            idempotency: self.idempotency.clone(),
            accounts: self.accounts.clone(),
        }
    }
}

/// Serves `routes` with the middleware and operations routes every service wears, outermost
/// first: request id, the request's trace span (inside the request id, so the span carries
/// it), metrics, problem+json for stray errors (inside the span, so the span sees the final
/// status), the caller's rate limit. `openapi` is the service's document, served at `/openapi.json`.
pub async fn serve<F>(settings: &CommonSettings, pool: Pool, openapi: String, routes: F) -> Result<(), String>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let limiter = web::Data::new(crate::ratelimit::Limiter::new(
        pool.clone(),
        settings.service,
        settings.internal_token.clone(),
        settings.rate_limits.clone(),
    ));
    let ops = Ops::new(pool, openapi);
    let bind = (settings.host.clone(), settings.port);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(limiter.clone())
            // Innermost: a refusal still gets its request id, span, metrics and problem+json.
            .wrap(from_fn(crate::ratelimit::middleware))
            .wrap(ErrorHandlers::new().default_handler(crate::problem::problemize))
            .wrap(from_fn(crate::metrics::middleware))
            .wrap(from_fn(crate::telemetry::middleware))
            .wrap(from_fn(crate::request_id::middleware))
            .configure(crate::ops::configure(ops.clone()))
            .configure(routes.clone())
    })
    .workers(settings.workers)
    .backlog(4096)
    .shutdown_timeout(settings.shutdown_grace.as_secs())
    .bind(bind)
    .map_err(|e| e.to_string())?;
    tracing::info!(service = settings.service, host = %settings.host, port = settings.port, "listening");
    server.run().await.map_err(|e| e.to_string())
}

/// The start every service shares: settings read once (a bad value exits with status 2 and
/// names the variable), telemetry, the problem type base and a warning for the development
/// token, then the service's own `run` until it stops.
pub async fn main_entry<S, F, Fut>(
    service: &'static str,
    settings: Result<S, crate::config::ConfigError>,
    common: fn(&S) -> &CommonSettings,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{service}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = crate::telemetry::init(service, &common(&settings).log_filter, common(&settings).log_format);
    crate::problem::set_type_base(&common(&settings).problem_type_base);
    if common(&settings).uses_default_token() {
        tracing::warn!("INTERNAL_TOKEN is the development default; set a secret outside development");
    }
    match run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{service} stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
