//! Refunds: `POST /refund` gives a succeeded charge back, whole or in part, through the
//! provider that took it, then records it.

mod store;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::idempotency::{self, IdempotentPost, KeyRef, Outcome, StoredResponse};

use crate::AppState;
use crate::charges::not_found;
use crate::error::PaymentError;
use crate::gateways::client::{RefundReply, Sent};
use crate::model::{Charge, RefundRequest, RefundResponse};
use crate::wallets::WALLET;
pub use store::{RefundOutcome, Reversal, new_refund_id};

#[utoipa::path(
    post, path = "/refund", request_body = RefundRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = RefundResponse, description = "refunded now; or earlier under this key; or, without an amount on a charge with nothing left, its last refund again"),
        (status = 404, description = "charge-not-found"),
        (status = 409, description = "charge-not-refundable (a declined charge), refund-exceeds-charge (more than remains), or idempotency-key-in-use"),
        (status = 503, description = "gateway-unavailable: the charge's provider did not refund it now (retry with the same key: it refunds once whatever the retries)")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn refund_charge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    let IdempotentPost { key, body, key_ref } =
        idempotency::read_post::<RefundRequest>(&req, payload, &state.settings.common.internal_token, "payment:refund")
            .await?;
    let provider_key = refund_key(&body.charge_id, &key_ref);
    let shared_state = state.clone().into_inner();
    let response = state
        .idempotency
        .run(&key_ref, |_, _| async move {
            Ok(Outcome::of(refund(&shared_state, &body, &key, &provider_key).await))
        })
        .await?;
    Ok(response)
}

/// The provider's Idempotency-Key for one refund request of `charge_id`: derived from the charge
/// and from the request's own key, so the retry of a refund whose record failed is answered by
/// the provider with the first refund, while another refund (another key) is another refund.
pub fn refund_key(charge_id: &str, key_ref: &KeyRef) -> String {
    format!(
        "{charge_id}:refund:{}",
        idempotency::short_digest(key_ref.redis_key(), 12)
    )
}

/// Gives (part of) a charge back through the provider that took it (switched off or not; the
/// wallet for a wallet charge), then records the refund. In that order: a refund recorded but
/// never sent would show money returned that the customer never got. A crash in between leaves
/// the charge as it was, so the next attempt with the key asks the provider again under the
/// same [`refund_key`], which it answers with the first refund; so does a provider that did not
/// answer: the key is freed (503) and the retry is safe. The refund script decides the answer
/// (404, 409, the refund this key made, or the last one), whatever the read before it saw.
pub(crate) async fn refund(
    state: &AppState,
    body: &RefundRequest,
    key: &str,
    provider_key: &str,
) -> Result<StoredResponse, PaymentError> {
    let charge_id = &body.charge_id;
    let charge = state.store.get_charge(charge_id).await?;
    let charge_read = charge.clone();
    let charge_gateway = charge.as_ref().map(|c| c.gateway.clone());
    let mut reference = String::new();
    if let Some(charge) = charge.filter(|c| c.status == "succeeded" || c.status == "partially_refunded") {
        let remaining = charge.amount.saturating_sub(charge.amount_refunded);
        let amount = body.amount.unwrap_or(remaining);
        if amount > 0 && amount <= remaining {
            reference = give_back(state, &charge, provider_key, amount).await?;
        }
    }
    let refund_id = new_refund_id();
    // A split charge's reversal is divided from the charge as read; if a concurrent refund
    // changed it first, the script says so and it is read and divided again.
    let mut read = charge_read;
    for _ in 0..8 {
        let reversal = read.as_ref().and_then(|c| reversal_of(c, body.amount, &refund_id));
        let outcome = state
            .store
            .refund(charge_id, body.amount, key, &reference, &refund_id, reversal.as_ref())
            .await?;
        if matches!(outcome, RefundOutcome::Stale) {
            read = state.store.get_charge(charge_id).await?;
            continue;
        }
        return answer(charge_id, outcome, charge_gateway.as_deref(), reversal.is_some());
    }
    Err(
        shared::CommonError::DependencyUnavailable("the charge kept changing under concurrent refunds; retry".into())
            .into(),
    )
}

/// The reversal of a split charge's parts by a refund of `asked` (what remains when `None`),
/// as `charge` stands; `None` for a charge without a split, or a refund the script will refuse
/// or answer from before (nothing, or more than remains).
fn reversal_of(charge: &Charge, asked: Option<u64>, refund_id: &str) -> Option<Reversal> {
    if charge.splits.is_empty() {
        return None;
    }
    let remaining = charge.amount.saturating_sub(charge.amount_refunded);
    let amount = asked.unwrap_or(remaining);
    if amount == 0 || amount > remaining {
        return None;
    }
    let (after, back) = crate::splits::reversal(&charge.splits, amount)?;
    let event = serde_json::json!({
        "type": "split.reversed",
        "at": shared::time::now_rfc3339(),
        "correlationId": charge.order_id,
        "data": {
            "chargeId": charge.charge_id,
            "refundId": refund_id,
            "splitId": charge.split_id,
            "currency": charge.currency,
            "amount": amount,
            "parts": back.iter().map(|(r, a)| serde_json::json!({"recipientId": r, "amount": a})).collect::<Vec<_>>(),
        },
    });
    Some(Reversal {
        read_refunded: charge.amount_refunded,
        parts: crate::splits::encode_parts(&after),
        reversals: back
            .iter()
            .map(|(r, a)| format!("{r}:{a}"))
            .collect::<Vec<_>>()
            .join(";"),
        event: event.to_string(),
    })
}

/// The answer to what the refund script did.
fn answer(
    charge_id: &str,
    outcome: RefundOutcome,
    charge_gateway: Option<&str>,
    reversed: bool,
) -> Result<StoredResponse, PaymentError> {
    match outcome {
        RefundOutcome::Refunded {
            refund_id,
            amount,
            fresh,
        } => {
            shared::metrics::event("refund", if fresh { "refunded" } else { "already_refunded" });
            if fresh {
                crate::events::EVENTS_APPENDED.inc(&[("type", "refund.succeeded")]);
                if charge_gateway == Some(WALLET) {
                    crate::events::EVENTS_APPENDED.inc(&[("type", "wallet.refunded")]);
                    crate::wallets::WALLET_EVENTS.inc(&[("event", "refunded")]);
                }
                if reversed {
                    crate::events::EVENTS_APPENDED.inc(&[("type", "split.reversed")]);
                    crate::splits::SPLIT_EVENTS.inc(&[("event", "reversed")]);
                }
            }
            Ok(StoredResponse::json(
                StatusCode::OK,
                &RefundResponse {
                    refund_id,
                    charge_id: charge_id.to_string(),
                    status: "refunded".into(),
                    amount,
                },
            ))
        }
        RefundOutcome::NotFound => Err(not_found(charge_id)),
        RefundOutcome::NotRefundable { status } => Err(PaymentError::ChargeNotRefundable {
            charge_id: charge_id.to_string(),
            status,
        }),
        RefundOutcome::Exceeds { remaining } => Err(PaymentError::RefundExceedsCharge {
            charge_id: charge_id.to_string(),
            remaining,
        }),
        RefundOutcome::Stale => Err(shared::CommonError::Internal("a stale refund reached its answer".into()).into()),
    }
}

/// Sends `amount` of `charge` back where it came from; the provider's reference for the refund.
async fn give_back(state: &AppState, charge: &Charge, provider_key: &str, amount: u64) -> Result<String, PaymentError> {
    if charge.gateway == WALLET {
        return state.store.wallet_refund(charge, provider_key, amount).await;
    }
    let provider = state
        .gateways
        .get(&charge.gateway)
        .ok_or_else(|| PaymentError::GatewayUnknown {
            gateway: charge.gateway.clone(),
        })?;
    match provider.refund(provider_key, &charge.gateway_reference, amount).await {
        Sent::Answered(RefundReply::Refunded { reference }) => {
            tracing::info!(charge_id = %charge.charge_id, gateway = %charge.gateway, %reference, amount, "provider refunded");
            Ok(reference)
        }
        // Another refund got there first: what remains is less than asked.
        Sent::Answered(RefundReply::Refused { message }) => {
            tracing::info!(charge_id = %charge.charge_id, gateway = %charge.gateway, %message, "provider refused the refund");
            Err(PaymentError::RefundExceedsCharge {
                charge_id: charge.charge_id.clone(),
                remaining: charge.amount.saturating_sub(charge.amount_refunded),
            })
        }
        Sent::NotProcessed { .. } | Sent::Unknown(_) => Err(PaymentError::GatewayUnknown {
            gateway: charge.gateway.clone(),
        }),
    }
}
