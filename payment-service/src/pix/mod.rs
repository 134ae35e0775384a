//! Asynchronous payments (Pix): the charge is taken pending ([`crate::charges`]); the provider
//! tells us how it ends by a signed webhook.
//!
//! - [`receiver`]: `POST /webhooks/{provider}` verifies the Standard Webhooks signature and
//!   timestamp, stores the webhook once per `webhook-id` in a Redis stream (receive.lua), and
//!   only then answers 200. Nothing is processed on the request path.
//! - [`worker`]: every replica reads the stream as one consumer group; an entry is acknowledged
//!   only once applied, and one a dead worker held is taken over after `WEBHOOK_CLAIM_IDLE`.
//!   Applying is idempotent (paid.lua moves a charge out of pending once), then the order is
//!   woken; a payment that arrives after the order expired is refunded.
//! - `POST /charges/{id}/cancel` (cancel.lua): the order service cancels a Pix whose order
//!   expired; whichever of cancel and paid runs first decides, atomically, on the charge.
//!
//! Keys: `payment:{whk}:seen:<provider>:<webhook-id>` (kept 7 days) and the stream
//! `payment:{whk}:webhooks`, one slot for all webhooks (a provider's rate, not the checkout's).

pub mod receiver;
#[cfg(test)]
mod script_tests;
pub mod store;
pub mod worker;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::LazyLock;

use shared::metrics::{CounterFamily, HistogramFamily};
use shared::webhooks::Secret;

/// `webhooks_received_total{provider, outcome}`: stored, duplicate, or why it was refused.
pub static RECEIVED: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "webhooks_received",
        "Provider webhooks received, by provider and outcome (stored, duplicate, invalid_signature, stale, malformed, unknown_provider, too_large)",
    )
});
/// `webhooks_processed_total{outcome}`.
pub static PROCESSED: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "webhooks_processed",
        "Stored provider webhooks applied by the worker, by outcome (paid, late_refunded, already, ignored, mismatch, retry)",
    )
});
/// `webhook_lag_seconds`: from storing a webhook to applying it.
pub static LAG: LazyLock<HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::register(
        "webhook_lag_seconds",
        "Time from storing a provider webhook to applying it",
    )
});

/// `PROVIDER_WEBHOOK_SECRETS`: the secret each provider signs its webhooks with.
#[derive(Debug, Clone, Default)]
pub struct ProviderSecrets(HashMap<String, Secret>);

impl ProviderSecrets {
    pub fn get(&self, provider: &str) -> Option<&Secret> {
        self.0.get(provider)
    }
}

impl FromStr for ProviderSecrets {
    type Err = String;

    /// `name=whsec_…` pairs, comma-separated. The error never repeats a secret.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut map = HashMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((name, secret)) = entry.split_once('=') else {
                return Err("each entry is provider=whsec_…".into());
            };
            let secret = Secret::parse(secret.trim()).map_err(|e| format!("{}: {e}", name.trim()))?;
            if map.insert(name.trim().to_string(), secret).is_some() {
                return Err(format!("{} is listed twice", name.trim()));
            }
        }
        Ok(Self(map))
    }
}

#[utoipa::path(
    post, path = "/charges/{chargeId}/cancel",
    params(("chargeId" = String, Path, description = "`ch_`, its shard as 2 hex digits and 20 letters or digits (older charges: `ch_` and 32 hex digits)")),
    responses(
        (status = 200, body = crate::model::Charge, description = "the charge after the call: a pending Pix is canceled (a payment that arrives later is refunded); any other is answered as it stands, so a Pix paid first stays succeeded. Naturally idempotent: no Idempotency-Key is needed"),
        (status = 404, description = "charge-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel_charge(
    req: actix_web::HttpRequest,
    state: actix_web::web::Data<crate::AppState>,
    charge_id: actix_web::web::Path<String>,
) -> Result<actix_web::HttpResponse, crate::error::PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let not_found = || crate::charges::not_found(&charge_id);
    let charge = state.store.get_charge(&charge_id).await?.ok_or_else(not_found)?;
    let event = serde_json::json!({
        "type": "charge.canceled",
        "at": shared::time::now_rfc3339(),
        "correlationId": charge.order_id,
        "data": {"chargeId": charge.charge_id, "orderId": charge.order_id, "amount": charge.amount, "currency": charge.currency},
    })
    .to_string();
    if state.store.cancel_pix(&charge_id, &event).await?.as_deref() == Some("canceled") && charge.status == "pending" {
        crate::events::EVENTS_APPENDED.inc(&[("type", "charge.canceled")]);
        tracing::info!(charge_id = %charge.charge_id, order_id = %charge.order_id, "pending Pix canceled");
    }
    let now = state.store.get_charge(&charge_id).await?.ok_or_else(not_found)?;
    Ok(actix_web::HttpResponse::Ok().json(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_secrets_parse_per_provider_and_refuse_what_is_not_a_secret() {
        let secrets: ProviderSecrets =
            "pix=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, card-a=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                .parse()
                .expect("secrets");
        assert!(secrets.get("pix").is_some() && secrets.get("card-a").is_some());
        assert!(secrets.get("card-b").is_none());
        assert!("".parse::<ProviderSecrets>().is_ok());
        let refused = "pix=hunter2".parse::<ProviderSecrets>().err().unwrap_or_default();
        assert!(refused.contains("whsec_") && !refused.contains("hunter2"), "{refused}");
        assert!("pix".parse::<ProviderSecrets>().is_err());
    }
}
