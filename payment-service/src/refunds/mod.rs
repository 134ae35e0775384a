//! Refunds: `POST /refund` gives a succeeded charge back through the provider that took it,
//! then records it.

mod store;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::idempotency::{self, IdempotentPost, Outcome, StoredResponse};

use crate::AppState;
use crate::charges::not_found;
use crate::error::PaymentError;
use crate::gateways::Gateways;
use crate::gateways::client::Sent;
use crate::model::{RefundRequest, RefundResponse};
use crate::store::Store;
pub use store::{RefundOutcome, new_refund_id};

#[utoipa::path(
    post, path = "/refund", request_body = RefundRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = RefundResponse, description = "refunded now, or earlier (the same refundId)"),
        (status = 404, description = "charge-not-found"),
        (status = 409, description = "charge-not-refundable (a declined charge), or idempotency-key-in-use"),
        (status = 503, description = "gateway-unavailable: the charge's provider did not refund it now (retry: it refunds once whatever the retries)")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn refund_charge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    let IdempotentPost { body, key_ref, .. } =
        idempotency::read_post::<RefundRequest>(&req, payload, &state.settings.common.internal_token, "payment:refund")
            .await?;
    let (store, gateways) = (state.store.clone(), state.gateways.clone());
    let response = state
        .idempotency
        .run(&key_ref, |_, _| async move {
            Ok(Outcome::of(refund(&store, &gateways, body.charge_id).await))
        })
        .await?;
    Ok(response)
}

/// The provider's Idempotency-Key for refunding `charge_id`: derived from the charge, not from
/// the client's key. A charge is refunded once whatever key asks, so every request to refund
/// it (a retry after a crash between the provider's answer and our record, or another key
/// racing this one) is one refund at the provider.
pub fn refund_key(charge_id: &str) -> String {
    format!("{charge_id}:refund")
}

/// Gives a succeeded charge back through the provider that took it (switched off or not), then
/// records the refund. In that order: a refund recorded but never sent would show money
/// returned that the customer never got. A crash in between leaves the charge succeeded, so the
/// next attempt asks the provider again under the same [`refund_key`], which it answers with
/// the first refund; so does a provider that did not answer: the key is freed (503) and the
/// retry is safe. The refund script decides the answer (404, 409, or the refund made earlier),
/// whatever the read before it saw.
async fn refund(store: &Store, gateways: &Gateways, charge_id: String) -> Result<StoredResponse, PaymentError> {
    let charge = store.get_charge(&charge_id).await?;
    if let Some(charge) = charge.filter(|c| c.status == "succeeded") {
        let provider = gateways
            .get(&charge.gateway)
            .ok_or_else(|| PaymentError::GatewayUnknown {
                gateway: charge.gateway.clone(),
            })?;
        match provider
            .refund(&refund_key(&charge_id), &charge.gateway_reference, charge.amount)
            .await
        {
            Sent::Answered(reply) => {
                tracing::info!(%charge_id, gateway = %charge.gateway, reference = %reply.reference, "provider refunded")
            }
            Sent::NotProcessed { .. } | Sent::Unknown(_) => {
                return Err(PaymentError::GatewayUnknown {
                    gateway: charge.gateway,
                });
            }
        }
    }
    match store.refund(&charge_id).await? {
        RefundOutcome::Refunded {
            refund_id,
            amount,
            fresh,
        } => {
            shared::metrics::event("refund", if fresh { "refunded" } else { "already_refunded" });
            Ok(StoredResponse::json(
                StatusCode::OK,
                &RefundResponse {
                    refund_id,
                    charge_id,
                    status: "refunded".into(),
                    amount,
                },
            ))
        }
        RefundOutcome::NotFound => Err(not_found(&charge_id)),
        RefundOutcome::NotRefundable { status } => Err(PaymentError::ChargeNotRefundable { charge_id, status }),
    }
}
