//! The webhook worker: each replica runs one, as a consumer of the stream's group. A webhook is
//! acknowledged only once applied, so a worker killed at any instant leaves it pending, and
//! another (or the restarted one) takes it over after `WEBHOOK_CLAIM_IDLE`. What a webhook
//! means is [`decide`]'s, a pure function; this module carries it out.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::store::{Paid, Received};
use super::{LAG, PROCESSED};
use crate::AppState;
use crate::model::RefundRequest;

/// Webhooks taken per read.
const BATCH: usize = 32;

/// The part of a provider's event the worker reads.
#[derive(Debug, Deserialize)]
struct ProviderEvent {
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventData {
    reference: String,
    order_id: String,
    amount: u64,
}

/// What to do once paid.lua has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The charge is paid and its order goes on: wake the order, then acknowledge.
    WakeOrder,
    /// Paid after its order expired: refund it whole, then acknowledge.
    RefundLate,
    /// Nothing (more) to do: acknowledge.
    Done,
    /// Not now (the charge's record is not there yet): leave it pending, it comes back.
    Retry,
}

/// What a "paid" means for the charge, given what paid.lua found.
pub fn decide(paid: &Paid) -> Action {
    match paid {
        Paid::Paid => Action::WakeOrder,
        Paid::Late => Action::RefundLate,
        Paid::Already {
            status,
            late_refund: true,
        } if status == "succeeded" => Action::RefundLate,
        // A re-sent or re-processed webhook: waking the order again is harmless, and covers a
        // worker that died between applying and waking.
        Paid::Already {
            late_refund: false,
            status,
        } if status == "succeeded" => Action::WakeOrder,
        Paid::Already { .. } | Paid::Mismatch => Action::Done,
        Paid::Missing => Action::Retry,
    }
}

pub async fn run(state: AppState) {
    let consumer = shared::ids::new_id("wk");
    let settings = state.settings.clone();
    let mut since_claim = Duration::ZERO;
    while let Err(e) = state.store.ensure_group().await {
        tracing::warn!(error = %e, "webhook worker: cannot create its group; retrying");
        tokio::time::sleep(settings.webhook_poll.max(Duration::from_millis(500))).await;
    }
    loop {
        tokio::time::sleep(settings.webhook_poll).await;
        since_claim += settings.webhook_poll;
        let mut taken = Vec::new();
        if since_claim >= settings.webhook_claim_idle / 2 {
            since_claim = Duration::ZERO;
            match state
                .store
                .claim_idle(&consumer, settings.webhook_claim_idle, BATCH)
                .await
            {
                Ok(claimed) => taken.extend(claimed),
                Err(e) => tracing::warn!(error = %e, "webhook worker: cannot claim idle webhooks"),
            }
        }
        match state.store.read_new(&consumer, BATCH).await {
            Ok(new) => taken.extend(new),
            Err(e) => {
                // A Redis restart loses nothing acknowledged; the group is made again if the
                // stream went with it.
                tracing::warn!(error = %e, "webhook worker: cannot read; retrying");
                let _ = state.store.ensure_group().await;
                continue;
            }
        }
        for received in taken {
            process(&state, &received).await;
        }
    }
}

async fn process(state: &AppState, received: &Received) {
    let outcome = apply(state, received).await;
    PROCESSED.inc(&[("outcome", outcome)]);
    if outcome == "retry" {
        return;
    }
    if let Some(at) = received.stored_at_ms() {
        LAG.observe(&[], shared::time::now_ms().saturating_sub(at) as f64 / 1000.0);
    }
    if let Err(e) = state.store.ack(&received.entry_id).await {
        // Applied, not acknowledged: it comes back and is applied again, which changes nothing.
        tracing::warn!(error = %e, entry = %received.entry_id, "webhook worker: cannot acknowledge");
    }
}

/// Applies one webhook; the outcome names what happened ("retry": leave it pending).
async fn apply(state: &AppState, received: &Received) -> &'static str {
    let Ok(event) = serde_json::from_slice::<ProviderEvent>(&received.body) else {
        tracing::warn!(webhook_id = %received.webhook_id, "webhook worker: an event it cannot read; dropped");
        return "ignored";
    };
    // Pix has one way to end paid; any other event (a late "pending", another type) would only
    // move a charge backwards, and charges only move forwards.
    if event.kind != "charge.succeeded" {
        return "ignored";
    }
    let data = &event.data;
    let charge = match state.store.charges_of_order(&data.order_id).await {
        Ok(charges) => charges
            .into_iter()
            .find(|c| c.gateway == received.provider && c.gateway_reference == data.reference),
        Err(e) => {
            tracing::warn!(error = %e, "webhook worker: cannot read the order's charges");
            return "retry";
        }
    };
    let Some(charge) = charge else {
        // The provider's answer to the charge may still be on its way to being recorded.
        tracing::warn!(reference = %data.reference, order_id = %data.order_id, "webhook worker: no charge yet for a paid Pix");
        return "retry";
    };
    let succeeded = json!({
        "type": "charge.succeeded",
        "at": shared::time::now_rfc3339(),
        "correlationId": charge.order_id,
        "data": {
            "chargeId": charge.charge_id, "orderId": charge.order_id, "amount": charge.amount,
            "currency": charge.currency, "paymentMethod": "pix", "gateway": charge.gateway,
            "gatewayReference": charge.gateway_reference, "webhookId": received.webhook_id,
        },
    })
    .to_string();
    let paid = match state.store.pix_paid(&charge.charge_id, data.amount, &succeeded).await {
        Ok(paid) => paid,
        Err(e) => {
            tracing::warn!(error = %e, "webhook worker: cannot apply a paid Pix");
            return "retry";
        }
    };
    if paid == Paid::Paid || paid == Paid::Late {
        crate::events::EVENTS_APPENDED.inc(&[("type", "charge.succeeded")]);
        shared::metrics::event("charge", "succeeded");
    }
    if paid == Paid::Mismatch {
        tracing::error!(charge_id = %charge.charge_id, reported = data.amount, amount = charge.amount, "a provider reports another amount than the charge's; not applied");
        return "mismatch";
    }
    match decide(&paid) {
        Action::WakeOrder => {
            if wake_order(state, &charge.order_id).await {
                if paid == Paid::Paid { "paid" } else { "already" }
            } else {
                "retry"
            }
        }
        Action::RefundLate => {
            if refund_late(state, &charge.charge_id).await {
                "late_refunded"
            } else {
                "retry"
            }
        }
        Action::Done => "already",
        Action::Retry => "retry",
    }
}

/// Tells the order service its order's Pix was paid; true once it heard.
async fn wake_order(state: &AppState, order_id: &str) -> bool {
    let url = format!(
        "{}/orders/{order_id}/payment-updates",
        state.settings.order_url.trim_end_matches('/')
    );
    let sent = state
        .services
        .post(url)
        .bearer_auth(state.settings.common.internal_token.expose())
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match sent {
        // 404: no such order here (it was never ours to complete); nothing to wait for.
        Ok(resp) if resp.status().is_success() || resp.status().as_u16() == 404 => true,
        Ok(resp) => {
            tracing::warn!(%order_id, status = resp.status().as_u16(), "webhook worker: the order service did not take the wake-up");
            false
        }
        Err(e) => {
            tracing::warn!(%order_id, error = %e, "webhook worker: cannot reach the order service");
            false
        }
    }
}

/// Gives a Pix paid after its order expired back to the payer, once whatever the retries.
async fn refund_late(state: &AppState, charge_id: &str) -> bool {
    let body = RefundRequest {
        charge_id: charge_id.to_string(),
        amount: None,
    };
    let key = format!("{charge_id}:late");
    let provider_key = format!("{charge_id}:refund:late");
    match crate::refunds::refund(state, &body, &key, &provider_key).await {
        Ok(resp) if resp.status == 200 => {
            tracing::info!(%charge_id, "a Pix paid after its order expired was refunded");
            true
        }
        Ok(resp) => {
            tracing::warn!(%charge_id, status = resp.status, "webhook worker: the late refund did not go through");
            false
        }
        Err(e) => {
            tracing::warn!(%charge_id, error = %e, "webhook worker: the late refund did not go through");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn already(status: &str, late_refund: bool) -> Paid {
        Paid::Already {
            status: status.into(),
            late_refund,
        }
    }

    #[test]
    fn a_paid_pix_wakes_its_order_and_a_repeat_wakes_it_again_harmlessly() {
        assert_eq!(decide(&Paid::Paid), Action::WakeOrder);
        assert_eq!(decide(&already("succeeded", false)), Action::WakeOrder);
    }

    #[test]
    fn a_payment_after_expiry_is_refunded_until_the_refund_is_recorded() {
        assert_eq!(decide(&Paid::Late), Action::RefundLate);
        assert_eq!(decide(&already("succeeded", true)), Action::RefundLate);
        assert_eq!(decide(&already("refunded", true)), Action::Done);
    }

    #[test]
    fn refunded_or_mismatched_charges_end_the_webhook_and_a_missing_one_waits() {
        assert_eq!(decide(&already("refunded", false)), Action::Done);
        assert_eq!(decide(&already("partially_refunded", false)), Action::Done);
        assert_eq!(decide(&Paid::Mismatch), Action::Done);
        assert_eq!(decide(&Paid::Missing), Action::Retry);
    }
}
