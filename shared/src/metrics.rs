//! Prometheus metrics: one registry per process, rendered at `/metrics` (OpenMetrics text, so
//! counters end in `_total`).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `http_requests_total` | route, method, status | requests served |
//! | `http_request_duration_seconds` | route, method, status | their latency (histogram) |
//! | `business_events_total` | kind, outcome | [`event`]: checkouts by outcome, compensations, recoveries, reservations, charges |
//! | `downstream_calls_total` | dependency, result | calls to another service, by final status or `unavailable` |
//! | `downstream_attempts_total` | dependency, result | attempts of those calls, by status or transport error |
//! | `downstream_retries_total` | dependency | attempts after the first |
//! | `idempotency_events_total` | event | `replay`, `in_use` (conflict), `reused` |
//! | `redis_connections` | | Redis connections open: one per thread that uses Redis, shared by its tasks (sampled at scrape) |
//!
//! A service adds counters, gauges and histograms of its own with [`CounterFamily::register`],
//! [`GaugeFamily::register`] and [`HistogramFamily::register`].

use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    /// Locked only to register a service's family at start-up and to render a scrape.
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    idempotency: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    calls: Family<Labels, Counter>,
    connections: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let requests = Family::<Labels, Counter>::default();
    let latency = Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
    let idempotency = Family::<Labels, Counter>::default();
    let events = Family::<Labels, Counter>::default();
    let attempts = Family::<Labels, Counter>::default();
    let retries = Family::<Labels, Counter>::default();
    let calls = Family::<Labels, Counter>::default();
    let connections = Gauge::default();
    registry.register(
        "http_requests",
        "HTTP requests by route, method and status",
        requests.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "HTTP request latency by route, method and status",
        latency.clone(),
    );
    registry.register(
        "idempotency_events",
        "Idempotency-Key replays, in-use conflicts and reuses",
        idempotency.clone(),
    );
    registry.register(
        "business_events",
        "Business outcomes: checkouts, compensations, reservations, charges",
        events.clone(),
    );
    registry.register(
        "downstream_attempts",
        "Calls to other services, one per attempt, by result",
        attempts.clone(),
    );
    registry.register(
        "downstream_retries",
        "Attempts after the first of calls to other services",
        retries.clone(),
    );
    registry.register(
        "downstream_calls",
        "Calls to other services, by final status (or unavailable after every retry)",
        calls.clone(),
    );
    registry.register(
        "redis_connections",
        "Redis connections open, one per thread that uses Redis",
        connections.clone(),
    );
    Metrics {
        registry: Mutex::new(registry),
        requests,
        latency,
        idempotency,
        events,
        attempts,
        retries,
        calls,
        connections,
    }
});

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn idempotency_event(event: &str) {
    METRICS.idempotency.get_or_create(&labels(&[("event", event)])).inc();
}

/// A business outcome, e.g. `("checkout", "completed")`, `("compensation", "release")`,
/// `("recovery", "claimed")`. Also noted on the current trace span (see
/// [`crate::telemetry::note_event`]), so a compensation is visible in the checkout's trace.
pub fn event(kind: &str, outcome: &str) {
    METRICS
        .events
        .get_or_create(&labels(&[("kind", kind), ("outcome", outcome)]))
        .inc();
    crate::telemetry::note_event(kind, outcome);
}

/// One attempt after the first of a call to `dependency`.
pub fn retry(dependency: &str) {
    METRICS
        .retries
        .get_or_create(&labels(&[("dependency", dependency)]))
        .inc();
}

/// A finished call to `dependency`: its final status, or `unavailable`.
pub fn call(dependency: &str, result: &str) {
    METRICS
        .calls
        .get_or_create(&labels(&[("dependency", dependency), ("result", result)]))
        .inc();
}

pub fn attempt(dependency: &str, result: &str) {
    METRICS
        .attempts
        .get_or_create(&labels(&[("dependency", dependency), ("result", result)]))
        .inc();
}

/// A counter family of a service's own (`<name>_total`), in the process' registry.
#[derive(Clone)]
pub struct CounterFamily(Family<Labels, Counter>);

impl CounterFamily {
    /// Registers it; call once, at start-up (a `LazyLock` the service forces in its `run`), so
    /// that `/metrics` lists it before its first count.
    pub fn register(name: &'static str, help: &'static str) -> Self {
        let family = Family::<Labels, Counter>::default();
        if let Ok(mut registry) = METRICS.registry.lock() {
            registry.register(name, help, family.clone());
        }
        Self(family)
    }

    pub fn inc(&self, pairs: &[(&str, &str)]) {
        self.0.get_or_create(&labels(pairs)).inc();
    }
}

/// A gauge family of a service's own, registered like [`CounterFamily`].
#[derive(Clone)]
pub struct GaugeFamily(Family<Labels, Gauge>);

impl GaugeFamily {
    pub fn register(name: &'static str, help: &'static str) -> Self {
        let family = Family::<Labels, Gauge>::default();
        if let Ok(mut registry) = METRICS.registry.lock() {
            registry.register(name, help, family.clone());
        }
        Self(family)
    }

    pub fn set(&self, pairs: &[(&str, &str)], value: i64) {
        self.0.get_or_create(&labels(pairs)).set(value);
    }
}

/// A latency histogram family (seconds, the buckets of `http_request_duration_seconds`) of a
/// service's own, registered like [`CounterFamily`].
#[derive(Clone)]
pub struct HistogramFamily(Family<Labels, Histogram>);

impl HistogramFamily {
    pub fn register(name: &'static str, help: &'static str) -> Self {
        let family = Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        if let Ok(mut registry) = METRICS.registry.lock() {
            registry.register(name, help, family.clone());
        }
        Self(family)
    }

    pub fn observe(&self, pairs: &[(&str, &str)], seconds: f64) {
        self.0.get_or_create(&labels(pairs)).observe(seconds);
    }
}

pub fn render(pool: Option<&crate::redis_pool::Pool>) -> String {
    if let Some(pool) = pool {
        METRICS.connections.set(pool.open_connections() as i64);
    }
    let mut out = String::new();
    let encoded = match METRICS.registry.lock() {
        Ok(registry) => encode(&mut out, &registry).is_ok(),
        Err(_) => false,
    };
    if !encoded {
        out.clear();
    }
    out
}

/// Counts and times every request by its route pattern (not its raw path, which would let
/// clients create unbounded label values).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let res = next.call(req).await?;
    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16().to_string();
    METRICS
        .requests
        .get_or_create(&labels(&[("route", &route), ("method", &method), ("status", &status)]))
        .inc();
    METRICS
        .latency
        .get_or_create(&labels(&[("route", &route), ("method", &method), ("status", &status)]))
        .observe(started.elapsed().as_secs_f64());
    Ok(res)
}
