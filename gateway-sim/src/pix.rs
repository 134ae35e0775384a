//! The simulator's Pix: a charge with `paymentMethod: "pix"` is pending with a payment code;
//! `POST /_sim/pix/{reference}/pay` pays it, and the provider then tells the merchant by
//! webhook, signed per Standard Webhooks with `SIM_WEBHOOK_SECRET`, re-sent with doubling
//! backoff (capped) until the merchant answers 2xx, as real providers do. The webhook's id is
//! the same on every re-send; a restarted simulator re-sends what was never acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use shared::webhooks::Secret;

use crate::api::{Sim, lock};
use crate::ledger::Charge;

/// Where and how paid Pix charges are reported.
pub struct Notifier {
    url: Option<String>,
    secret: Option<Secret>,
    http: reqwest::Client,
    max_backoff: Duration,
    /// Webhook requests sent, answered 2xx or not (`GET /_sim/webhooks`).
    pub attempts: AtomicU64,
    pub acknowledged: AtomicU64,
}

impl Notifier {
    pub fn new(url: Option<String>, secret: Option<Secret>, max_backoff: Duration) -> Result<Self, String> {
        let http = shared::tls::client_builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Self {
            url,
            secret,
            http,
            max_backoff,
            attempts: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
        })
    }
}

/// The webhook's id: one per event, the same on every re-send.
pub fn webhook_id(reference: &str) -> String {
    format!("msg_{reference}_succeeded")
}

/// The event a paid Pix reports.
pub fn event_body(c: &Charge) -> Vec<u8> {
    json!({
        "type": "charge.succeeded",
        "data": {
            "reference": c.reference, "orderId": c.order_id, "amount": c.amount,
            "currency": c.currency, "idempotencyKey": c.idempotency_key,
        },
    })
    .to_string()
    .into_bytes()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sends a paid Pix's webhook until the merchant answers 2xx, then notes it in the ledger.
pub fn deliver(sim: Arc<Sim>, charge: Charge) {
    tokio::spawn(async move {
        let notifier = &sim.notifier;
        let (Some(url), Some(secret)) = (&notifier.url, &notifier.secret) else {
            return;
        };
        let id = webhook_id(&charge.reference);
        let body = event_body(&charge);
        let mut backoff = Duration::from_millis(100);
        loop {
            let ts = now_secs();
            notifier.attempts.fetch_add(1, Ordering::Relaxed);
            let sent = notifier
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", secret.sign(&id, ts, &body))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    notifier.acknowledged.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = lock(&sim.ledger).notified(&charge.reference) {
                        eprintln!("ledger: {e}");
                    }
                    return;
                }
                Ok(resp) => eprintln!("webhook {id}: answered {}; re-sending", resp.status()),
                Err(e) => eprintln!("webhook {id}: {e}; re-sending"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(notifier.max_backoff);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ChargeStatus;

    #[test]
    fn a_paid_pixs_webhook_names_the_charge_and_keeps_one_id_for_every_resend() {
        let c = Charge {
            reference: "ch_1".into(),
            idempotency_key: "k".into(),
            order_id: "ord_1".into(),
            amount: 700,
            currency: "BRL".into(),
            customer_id: "c".into(),
            payment_method: "pix".into(),
            status: ChargeStatus::Succeeded,
            decline_code: None,
            pix_code: Some("code".into()),
            notified: false,
        };
        let body: serde_json::Value = serde_json::from_slice(&event_body(&c)).expect("json");
        assert_eq!(body["type"], "charge.succeeded");
        assert_eq!(body["data"]["reference"], "ch_1");
        assert_eq!(body["data"]["amount"], 700);
        assert_eq!(webhook_id("ch_1"), webhook_id("ch_1"));
    }
}
