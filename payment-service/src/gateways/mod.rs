//! Payment providers reached over HTTP: the registry (`PAYMENT_GATEWAYS`, `PAYMENT_ROUTES`), a
//! circuit breaker and a manual switch per provider, and the calls with their metrics. Which
//! provider a charge goes to, and when it may move on, is [`failover`]'s rule.

pub mod admin;
pub mod breaker;
pub mod client;
pub mod failover;
pub mod routes;
mod switch;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use shared::metrics::{CounterFamily, GaugeFamily, HistogramFamily};

use self::breaker::{Breaker, Permit, Policy, State};
use self::client::{ChargeReply, ChargeRequest, ProviderClient, RefundReply, Sent};
pub use self::routes::{GatewayList, MethodKind, RouteTable};
pub use self::switch::{SWITCH_REFRESH, switch_events_key};

/// `gateway_requests_total{gateway, operation, outcome}`.
pub static REQUESTS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "gateway_requests",
        "Requests to payment providers, by provider, operation and outcome (succeeded, declined, refunded, not_processed, unknown, skipped by the breaker)",
    )
});
/// `gateway_request_duration_seconds{gateway, operation}`.
pub static LATENCY: LazyLock<HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::register(
        "gateway_request_duration_seconds",
        "Latency of requests to payment providers",
    )
});
/// `gateway_breaker_state{gateway, state}`: 1 for the state the breaker is in, 0 for the others.
pub static BREAKER_STATE: LazyLock<GaugeFamily> = LazyLock::new(|| {
    GaugeFamily::register(
        "gateway_breaker_state",
        "Circuit breaker state per provider (1 = current)",
    )
});
/// `gateway_breaker_transitions_total{gateway, to}`.
pub static BREAKER_TRANSITIONS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "gateway_breaker_transitions",
        "Circuit breaker transitions per provider",
    )
});
/// `gateway_failovers_total{from, to}`: charges moved to the next provider.
pub static FAILOVERS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "gateway_failovers",
        "Charges moved on to the next provider of their route",
    )
});

/// Latency samples kept per provider for the p50 that `GET /gateways` shows.
const LATENCY_SAMPLES: usize = 256;

pub struct Provider {
    pub name: String,
    client: ProviderClient,
    breaker: Mutex<Breaker>,
    enabled: AtomicBool,
    requests: AtomicU64,
    failures: AtomicU64,
    latencies_ms: Mutex<VecDeque<u64>>,
}

/// A provider as `GET /gateways` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayView {
    pub name: String,
    pub url: String,
    /// The payment-method types whose route lists it.
    #[schema(value_type = Vec<String>)]
    pub methods: Vec<MethodKind>,
    /// The manual switch: when false new charges skip it; refunds of its charges still go to it.
    pub enabled: bool,
    #[schema(pattern = "^(closed|open|half_open)$")]
    pub breaker: String,
    /// Requests sent since this replica started.
    pub requests: u64,
    /// Of those, the ones that failed (not processed, or no answer).
    pub failures: u64,
    /// Median latency of the last requests, in milliseconds; null before the first.
    pub latency_ms_p50: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Provider {
    fn breaker_moved(&self, to: Option<State>) {
        if let Some(to) = to {
            tracing::warn!(gateway = %self.name, breaker = to.as_str(), "circuit breaker moved");
            BREAKER_TRANSITIONS.inc(&[("gateway", &self.name), ("to", to.as_str())]);
            self.publish_state(to);
        }
    }

    fn publish_state(&self, current: State) {
        for s in [State::Closed, State::Open, State::HalfOpen] {
            BREAKER_STATE.set(
                &[("gateway", &self.name), ("state", s.as_str())],
                i64::from(s == current),
            );
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Switched on and its breaker not open: a new charge may be sent here.
    pub fn usable(&self) -> bool {
        self.enabled() && lock(&self.breaker).state(Instant::now()) != State::Open
    }

    /// Sends one request through the breaker: refused by an open breaker without a request
    /// (nothing sent), otherwise sent and its result reported to the breaker and the metrics.
    async fn through_breaker<T, F, Fut>(&self, operation: &str, outcome: fn(&T) -> &'static str, send: F) -> Sent<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (Sent<T>, Duration)>,
    {
        let (permit, moved) = lock(&self.breaker).permit(Instant::now());
        self.breaker_moved(moved);
        if permit == Permit::Refused {
            REQUESTS.inc(&[
                ("gateway", &self.name),
                ("operation", operation),
                ("outcome", "skipped"),
            ]);
            return Sent::NotProcessed { by_answer: false };
        }
        let (sent, took) = send().await;
        let ok = matches!(sent, Sent::Answered(_));
        let label = match &sent {
            Sent::Answered(reply) => outcome(reply),
            Sent::NotProcessed { .. } => "not_processed",
            Sent::Unknown(_) => "unknown",
        };
        if let Sent::Unknown(why) = &sent {
            tracing::warn!(gateway = %self.name, operation, reason = %why, "provider outcome unknown");
        }
        REQUESTS.inc(&[("gateway", &self.name), ("operation", operation), ("outcome", label)]);
        LATENCY.observe(&[("gateway", &self.name), ("operation", operation)], took.as_secs_f64());
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut samples = lock(&self.latencies_ms);
            if samples.len() == LATENCY_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(took.as_millis() as u64);
        }
        let moved = lock(&self.breaker).report(permit, ok, Instant::now());
        self.breaker_moved(moved);
        sent
    }

    pub async fn charge(&self, req: &ChargeRequest<'_>) -> Sent<ChargeReply> {
        self.through_breaker(
            "charge",
            |r: &ChargeReply| match r {
                ChargeReply::Succeeded { .. } => "succeeded",
                ChargeReply::Declined { .. } => "declined",
                ChargeReply::Pending { .. } => "pending",
            },
            || self.client.charge(req),
        )
        .await
    }

    pub async fn refund(&self, key: &str, reference: &str, amount: u64) -> Sent<RefundReply> {
        self.through_breaker(
            "refund",
            |r: &RefundReply| match r {
                RefundReply::Refunded { .. } => "refunded",
                RefundReply::Refused { .. } => "refused",
            },
            || self.client.refund(key, reference, amount),
        )
        .await
    }

    fn view(&self, methods: Vec<MethodKind>) -> GatewayView {
        let p50 = {
            let samples = lock(&self.latencies_ms);
            let mut sorted: Vec<u64> = samples.iter().copied().collect();
            sorted.sort_unstable();
            sorted.get(sorted.len() / 2).copied()
        };
        GatewayView {
            name: self.name.clone(),
            url: self.client.base().to_string(),
            methods,
            enabled: self.enabled(),
            breaker: lock(&self.breaker).state(Instant::now()).as_str().to_string(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            latency_ms_p50: p50,
        }
    }
}

/// Timeouts and breaker policy shared by every provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub breaker: Policy,
}

pub struct Gateways {
    providers: Vec<Provider>,
    routes: RouteTable,
}

impl Gateways {
    pub fn new(list: &GatewayList, routes: &RouteTable, settings: &ProviderSettings) -> Result<Self, String> {
        let now = Instant::now();
        let providers = list
            .0
            .iter()
            .map(|(name, url)| {
                let provider = Provider {
                    name: name.clone(),
                    client: ProviderClient::new(url, settings.timeout, settings.connect_timeout)?,
                    breaker: Mutex::new(Breaker::new(settings.breaker, now)),
                    enabled: AtomicBool::new(true),
                    requests: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    latencies_ms: Mutex::new(VecDeque::new()),
                };
                provider.publish_state(State::Closed);
                Ok(provider)
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            providers,
            routes: routes.clone(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The ordered providers for a payment-method type (empty when it has no route).
    pub fn route(&self, kind: MethodKind) -> &[String] {
        self.routes.route(kind)
    }

    /// The first provider of `kind`'s route after `after` that may take a new charge.
    pub fn next_usable(&self, kind: MethodKind, after: Option<&str>) -> Option<&Provider> {
        let name = failover::next_usable(self.route(kind), after, |n| self.get(n).is_some_and(Provider::usable))?;
        self.get(name)
    }

    pub fn views(&self) -> Vec<GatewayView> {
        self.providers
            .iter()
            .map(|p| p.view(self.routes.methods_of(&p.name)))
            .collect()
    }

    fn apply_switches(&self, switches: &HashMap<String, bool>) {
        for p in &self.providers {
            let enabled = switches.get(&p.name).copied().unwrap_or(true);
            if p.enabled.swap(enabled, Ordering::Relaxed) != enabled {
                tracing::warn!(gateway = %p.name, enabled, "gateway switched");
            }
        }
    }
}
