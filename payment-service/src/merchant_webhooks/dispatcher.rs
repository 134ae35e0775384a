//! The dispatcher: sends due deliveries. Every replica runs one; a delivery is claimed for one
//! attempt with a lease (claim.lua), so replicas never send the same attempt twice while alive
//! and a replica killed mid-send leaves the delivery due again when its lease runs out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::schedule::{Next, after_attempt};
use super::store::{Attempt, Claimed};
use super::{ATTEMPTS, DELIVERIES, DeliveryStatus, Endpoint, EndpointId, QUEUE, address};
use crate::AppState;

/// Endpoints with due deliveries looked at per pass.
const BATCH: isize = 256;
/// A lease outlasts the attempt's timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// The queue gauges are refreshed this often.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// The client deliveries are sent with: no redirects (a 3xx is a failed attempt, and a
/// redirect could lead anywhere), and, unless private addresses are allowed, the resolver
/// that hands out public addresses only.
pub fn client(settings: &super::Outbound) -> Result<reqwest::Client, String> {
    let mut builder = shared::tls::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(2)))
        .user_agent("checkout-webhooks/1");
    if !settings.allow_private {
        builder = builder.dns_resolver(Arc::new(address::PublicOnly));
    }
    builder.build().map_err(|e| format!("the webhook client: {e}"))
}

pub async fn run(state: AppState, client: reqwest::Client) {
    let settings = state.settings.clone();
    let mut permits: HashMap<EndpointId, Arc<Semaphore>> = HashMap::new();
    let mut gauges_at = Instant::now();
    loop {
        tokio::time::sleep(settings.webhook_poll).await;
        if gauges_at.elapsed() >= GAUGES_EVERY {
            gauges_at = Instant::now();
            if let Ok((depth, oldest)) = state.store.queue().await {
                let now = shared::time::now_ms();
                QUEUE.set(&[("what", "depth")], depth as i64);
                QUEUE.set(
                    &[("what", "oldest_seconds")],
                    oldest.map_or(0, |at| now.saturating_sub(at) / 1000) as i64,
                );
            }
        }
        let now = shared::time::now_ms();
        let due = match state.store.due_endpoints(now, BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "webhook dispatcher: cannot read the queue; retrying");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        let endpoints: HashMap<EndpointId, Endpoint> = match state.store.endpoints().await {
            Ok(all) => all.into_iter().map(|e| (e.id.clone(), e)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "webhook dispatcher: cannot read the endpoints; retrying");
                continue;
            }
        };
        let lease = (settings.outbound.timeout + LEASE_MARGIN).as_millis() as u64;
        let limit = settings.outbound.endpoint_concurrency;
        for endpoint_id in due {
            let semaphore = permits
                .entry(endpoint_id.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone();
            // As many as this endpoint has free sends; one with none free waits, the others go on.
            let free = semaphore.available_permits();
            if free == 0 {
                continue;
            }
            let claimed = match state.store.claim(&endpoint_id, now, now + lease, free).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook dispatcher: cannot claim");
                    continue;
                }
            };
            let endpoint = endpoints.get(&endpoint_id).cloned();
            for claimed in claimed {
                let Ok(permit) = semaphore.clone().try_acquire_owned() else {
                    break;
                };
                // One span per attempt: a delivery's attempts show in Jaeger and in the logs.
                let span = tracing::info_span!(
                    "webhook attempt",
                    otel.kind = "client",
                    endpoint = claimed.endpoint.as_str(),
                    delivery = claimed.delivery.as_str(),
                    webhook_id = claimed.event_id.as_str(),
                    attempt = claimed.attempts + 1,
                );
                let attempt = send(state.clone(), client.clone(), endpoint.clone(), claimed, permit);
                tokio::spawn(attempt.instrument(span));
            }
        }
    }
}

/// One attempt, recorded with what follows it.
async fn send(
    state: AppState,
    client: reqwest::Client,
    endpoint: Option<Endpoint>,
    claimed: Claimed,
    _permit: OwnedSemaphorePermit,
) {
    let outbound = &state.settings.outbound;
    let started = Instant::now();
    let at = shared::time::now_rfc3339();
    let (status_code, error, result) = match &endpoint {
        None => (None, Some("the endpoint was deleted".to_string()), "deleted"),
        Some(endpoint) => attempt(&client, outbound, endpoint, &claimed).await,
    };
    ATTEMPTS.inc(&[("result", result)]);
    let succeeded = status_code.is_some_and(|s| (200..300).contains(&s));
    let next = if endpoint.is_none() {
        Next::Dead
    } else {
        after_attempt(
            succeeded,
            claimed.attempts,
            claimed.manual,
            &outbound.schedule,
            jitter(),
        )
    };
    let record = Attempt {
        at,
        status_code,
        latency_ms: started.elapsed().as_millis() as u64,
        error,
    };
    let (status, next_ms, outcome) = match next {
        Next::Succeeded => (DeliveryStatus::Succeeded, None, "succeeded"),
        Next::RetryAfter(delay) => (
            DeliveryStatus::Pending,
            Some(shared::time::now_ms() + delay.as_millis() as u64),
            "retried",
        ),
        Next::Dead => (DeliveryStatus::Dead, None, "dead"),
    };
    DELIVERIES.inc(&[("outcome", outcome)]);
    if outcome == "dead" {
        tracing::warn!(status_code = ?record.status_code, error = ?record.error, "webhook dead-lettered");
    } else {
        tracing::info!(
            status_code = ?record.status_code,
            latency_ms = record.latency_ms,
            outcome,
            "webhook attempt"
        );
    }
    if let Err(e) = state.store.record_attempt(&claimed, status, &record, next_ms).await {
        // Not recorded: the lease runs out and the delivery is sent again (at least once).
        tracing::warn!(error = %e, delivery = claimed.delivery.as_str(), "webhook dispatcher: cannot record an attempt");
    }
}

/// Sends one signed request: the status code if one came, the error otherwise, and the
/// attempt's result for the metric.
async fn attempt(
    client: &reqwest::Client,
    outbound: &super::Outbound,
    endpoint: &Endpoint,
    claimed: &Claimed,
) -> (Option<u16>, Option<String>, &'static str) {
    let url = match address::parse_url(&endpoint.url) {
        Ok(url) => url,
        Err(e) => return (None, Some(e), "refused_address"),
    };
    // A name is checked by the client's resolver as it connects; an address in the URL itself
    // is checked here.
    let literal = url.host_str().is_some_and(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
    });
    if literal && let Err(e) = address::check_destination(&url, outbound.allow_private).await {
        return (None, Some(e), "refused_address");
    }
    let secret = match shared::webhooks::Secret::parse(&endpoint.secret) {
        Ok(secret) => secret,
        Err(e) => return (None, Some(format!("the endpoint's secret: {e}")), "error"),
    };
    let timestamp = (shared::time::now_ms() / 1000) as i64;
    let signature = secret.sign(&claimed.event_id, timestamp, claimed.body.as_bytes());
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &claimed.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(claimed.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let class = match code {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            let error = (!(200..300).contains(&code)).then(|| format!("the endpoint answered {code}"));
            (Some(code), error, class)
        }
        Err(e) if e.is_timeout() => (
            None,
            Some(format!(
                "no answer within {}",
                shared::config::show_duration(outbound.timeout)
            )),
            "timeout",
        ),
        Err(e) => {
            // The full chain says why (refused, reset, or the resolver refusing a private address).
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            let result = if why.contains("no public address") {
                "refused_address"
            } else {
                "error"
            };
            (None, Some(why), result)
        }
    }
}

/// A number in [0, 1) from the OS's randomness (a v4 UUID's bits): retries of deliveries that
/// failed together spread out.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}
