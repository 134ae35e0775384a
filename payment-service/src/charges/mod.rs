//! Charges: `POST /charge` (through the gateway, then recorded with its key's marker in one
//! script), and reading them back by id or by order.

#[cfg(test)]
mod script_tests;
mod store;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::CommonError;
use shared::ServiceError;
use shared::idempotency::{self, IdempotencyStore, IdempotentPost, KeyRef, Outcome, StoredResponse};

use crate::AppState;
use crate::error::PaymentError;
use crate::gateway::{ChargeAttempt, Decision, Gateway};
use crate::model::{Charge, ChargeRequest, ChargeResponse, ChargesQuery, OrderCharges};
use crate::store::{Store, answer_key, new_charge_id_for};
pub use store::{ChargeOutcome, NewCharge, Recorded};

/// Ids echoed in a 404 are cut short: they come from the client.
pub(crate) fn not_found(charge_id: &str) -> PaymentError {
    PaymentError::ChargeNotFound(charge_id.chars().take(128).collect())
}

#[utoipa::path(
    post, path = "/charge", request_body = ChargeRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = ChargeResponse),
        (status = 400, description = "invalid-request (also an unknown paymentMethod), idempotency-key-missing or -invalid"),
        (status = 402, description = "payment-declined, with declineCode and chargeId")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_charge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    let IdempotentPost { key, body, key_ref } =
        idempotency::read_post::<ChargeRequest>(&req, payload, &state.settings.common.internal_token, "payment:charge")
            .await?;
    let gateway = state.settings.gateway;
    let key_ref = key_ref.with_answer_at(answer_key(&body.order_id, &key));
    let store = state.store.clone();
    let (idempotency, key_ref) = (&state.idempotency, &key_ref);
    let response = state
        .idempotency
        .run(key_ref, |token, _| async move {
            Ok(charge(&store, idempotency, key_ref, &token, gateway, &body, &key).await)
        })
        .await?;
    Ok(response)
}

/// Asks the gateway, then records the charge with its key's marker and, in the same step, its
/// answer. A declined charge is recorded too (the order's history shows it) and answered 402.
async fn charge(
    store: &Store,
    idempotency: &IdempotencyStore,
    key_ref: &KeyRef,
    token: &str,
    gateway: Gateway,
    body: &ChargeRequest,
    key: &str,
) -> Outcome {
    let attempt = ChargeAttempt {
        idempotency_key: key,
        order_id: &body.order_id,
        amount: body.amount,
        currency: &body.currency,
        customer_id: &body.customer_id,
        payment_method: body.payment_method,
    };
    let decision = gateway.charge(&attempt).await;
    let decline_code = match &decision {
        Decision::Approved => None,
        Decision::Declined { code } => Some(code.as_str()),
    };
    let charge_id = new_charge_id_for(&body.order_id);
    let new = NewCharge {
        charge_id: &charge_id,
        order_id: &body.order_id,
        amount: body.amount,
        currency: &body.currency,
        customer_id: &body.customer_id,
        payment_method: body.payment_method.as_str(),
        decline_code,
    };
    // The answer is known before the charge is recorded: the script stores it with the charge.
    let answer = answer_to(&Recorded {
        charge_id: charge_id.clone(),
        order_id: body.order_id.clone(),
        amount: body.amount,
        currency: body.currency.clone(),
        decline_code: decline_code.map(str::to_string),
        fresh: true,
    });
    let recorded = match store
        .charge(&new, key, &idempotency.answer(key_ref, token, &answer))
        .await
    {
        Ok(ChargeOutcome::Recorded(r)) => r,
        Ok(ChargeOutcome::KeyReused) => return Outcome::of(Err(PaymentError::from(CommonError::IdempotencyKeyReused))),
        Err(e) => return Outcome::of(Err(e)),
    };
    let event = match (&recorded.decline_code, recorded.fresh) {
        (_, false) => "found",
        (None, true) => "succeeded",
        (Some(_), true) => "declined",
    };
    shared::metrics::event("charge", event);
    match &recorded.decline_code {
        None => tracing::info!(charge_id = %recorded.charge_id, order_id = %recorded.order_id, "charge succeeded"),
        Some(decline_code) => tracing::info!(
            charge_id = %recorded.charge_id,
            order_id = %recorded.order_id,
            %decline_code,
            "charge declined"
        ),
    }
    if recorded.fresh {
        Outcome::answered(key_ref, answer)
    } else {
        // An earlier execution's charge, found by its marker: its answer is stored as usual.
        Outcome::by_status(answer_to(&recorded))
    }
}

/// The answer to a charge request: 201 with the charge, or 402 with its decline.
fn answer_to(recorded: &Recorded) -> StoredResponse {
    match &recorded.decline_code {
        None => StoredResponse::json(
            StatusCode::CREATED,
            &ChargeResponse {
                charge_id: recorded.charge_id.clone(),
                status: "succeeded".into(),
                amount: recorded.amount,
                currency: recorded.currency.clone(),
                order_id: recorded.order_id.clone(),
            },
        ),
        Some(decline_code) => StoredResponse::problem(
            &PaymentError::Declined {
                charge_id: recorded.charge_id.clone(),
                decline_code: decline_code.clone(),
            }
            .problem(),
        ),
    }
}

#[utoipa::path(
    get, path = "/charges/{chargeId}",
    params(("chargeId" = String, Path, description = "`ch_` and 32 hex digits")),
    responses((status = 200, body = Charge), (status = 404, description = "charge-not-found")),
    security(("bearer" = []))
)]
pub(crate) async fn get_charge(
    req: HttpRequest,
    state: web::Data<AppState>,
    charge_id: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let charge = state
        .store
        .get_charge(&charge_id)
        .await?
        .ok_or_else(|| not_found(&charge_id))?;
    Ok(HttpResponse::Ok().json(charge))
}

#[utoipa::path(
    get, path = "/charges",
    params(("orderId" = String, Query, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_-]+$", description = "the order whose charges to list")),
    responses(
        (status = 200, body = OrderCharges, description = "oldest first; empty for an unknown order"),
        (status = 400, description = "invalid-request: orderId missing or malformed")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_charges(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let query = web::Query::<ChargesQuery>::from_query(req.query_string())
        .map_err(|e| PaymentError::invalid(format!("invalid query: {e}")))?;
    let order_id = query
        .into_inner()
        .order_id
        .filter(|id| shared::ids::is_safe_id(id))
        .ok_or_else(|| {
            PaymentError::invalid("the orderId query parameter is required: 1 to 128 letters, digits, '_' and '-'")
        })?;
    let charges = state.store.charges_of_order(&order_id).await?;
    Ok(HttpResponse::Ok().json(OrderCharges { order_id, charges }))
}
