//! HTTP handlers. Every endpoint needs the internal token, checked first; the POSTs also need
//! an Idempotency-Key.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::CommonError;
use shared::ServiceError;
use shared::body::{self, JsonBody};
use shared::idempotency::{self, IdempotencyStore, KeyRef, Outcome, StoredResponse};
use utoipa::OpenApi;

use crate::AppState;
use crate::error::PaymentError;
use crate::gateway::{ChargeAttempt, Decision, Gateway, RefundAttempt, refund_key};
use crate::model::{
    Charge, ChargeRequest, ChargeResponse, ChargesQuery, CurrencyTotals, OrderCharges, RefundRequest, RefundResponse,
    Tally, Totals,
};
use crate::store::{self, ChargeOutcome, NewCharge, Recorded, RefundOutcome, Store};

pub fn configure(state: AppState) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg| {
        cfg.app_data(web::Data::new(state.clone()))
            .service(web::resource("/charge").post(create_charge))
            .service(web::resource("/refund").post(refund_charge))
            .service(web::resource("/charges").get(list_charges))
            .service(web::resource("/charges/{chargeId}").get(get_charge))
            .service(web::resource("/totals").get(get_totals));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "payment-service", description = "Charges, refunds and the books, over a simulated gateway. Every error is application/problem+json."),
    servers((url = "/payment")),
    paths(create_charge, refund_charge, get_charge, list_charges, get_totals),
    components(schemas(ChargeRequest, ChargeResponse, RefundRequest, RefundResponse, Charge, OrderCharges, Totals, CurrencyTotals, Tally))
)]
struct ApiDoc;

pub fn openapi_json() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}

/// Ids echoed in a 404 are cut short: they come from the client.
fn not_found(charge_id: &str) -> PaymentError {
    PaymentError::ChargeNotFound(charge_id.chars().take(128).collect())
}

#[utoipa::path(
    post, path = "/charge", request_body = ChargeRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = ChargeResponse),
        (status = 400, description = "invalid-request (also an unknown paymentMethod), idempotency-key-missing or -invalid"),
        (status = 401, description = "unauthorized"),
        (status = 402, description = "payment-declined, with declineCode and chargeId"),
        (status = 409, description = "idempotency-key-in-use"),
        (status = 422, description = "idempotency-key-reused")
    ),
    security(("bearer" = []))
)]
async fn create_charge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let key = idempotency::key_from(&req)?;
    let JsonBody { value: body, raw } = body::read_json::<ChargeRequest>(&req, payload).await?;
    body.validate().map_err(PaymentError::invalid)?;
    let gateway = state.settings.gateway;
    // Checked before the key is taken: an unknown method is a validation error, never stored.
    gateway
        .check_method(&body.payment_method)
        .map_err(PaymentError::invalid)?;
    let key_ref = KeyRef::new("payment:charge", &key, body::fingerprint("POST", req.path(), &raw))
        .with_answer_at(store::answer_key(&body.order_id, &key));
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
        payment_method: &body.payment_method,
    };
    let decision = match gateway.charge(&attempt).await {
        Some(d) => d,
        None => {
            return Outcome::of(Err(PaymentError::invalid(
                gateway.check_method(&body.payment_method).err().unwrap_or_default(),
            )));
        }
    };
    let decline_code = match &decision {
        Decision::Approved => None,
        Decision::Declined { code } => Some(code.as_str()),
    };
    let charge_id = store::new_charge_id_for(&body.order_id);
    let new = NewCharge {
        charge_id: &charge_id,
        order_id: &body.order_id,
        amount: body.amount,
        currency: &body.currency,
        customer_id: &body.customer_id,
        payment_method: &body.payment_method,
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
    post, path = "/refund", request_body = RefundRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = RefundResponse, description = "refunded now, or earlier (the same refundId)"),
        (status = 401, description = "unauthorized"),
        (status = 404, description = "charge-not-found"),
        (status = 409, description = "charge-not-refundable (a declined charge), or idempotency-key-in-use"),
        (status = 422, description = "idempotency-key-reused")
    ),
    security(("bearer" = []))
)]
async fn refund_charge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let key = idempotency::key_from(&req)?;
    let JsonBody { value: body, raw } = body::read_json::<RefundRequest>(&req, payload).await?;
    let key_ref = KeyRef::new("payment:refund", &key, body::fingerprint("POST", req.path(), &raw));
    let (store, gateway) = (state.store.clone(), state.settings.gateway);
    let response = state
        .idempotency
        .run(&key_ref, |_, _| async move {
            Ok(Outcome::of(refund(&store, gateway, body.charge_id).await))
        })
        .await?;
    Ok(response)
}

/// Gives a succeeded charge back through the gateway, then records the refund. In that order:
/// a refund recorded but never sent would show money returned that the customer never got. A
/// crash in between leaves the charge succeeded, so the next attempt asks the gateway again
/// under the same [`refund_key`], which it answers with the first refund. The refund script
/// decides the answer (404, 409, or the refund made earlier), whatever the read before it saw.
async fn refund(store: &Store, gateway: Gateway, charge_id: String) -> Result<StoredResponse, PaymentError> {
    let charge = store.get_charge(&charge_id).await?;
    if let Some(charge) = charge.filter(|c| c.status == "succeeded") {
        gateway
            .refund(&RefundAttempt {
                idempotency_key: &refund_key(&charge_id),
                charge_id: &charge_id,
                amount: charge.amount,
                currency: &charge.currency,
            })
            .await;
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

#[utoipa::path(
    get, path = "/charges/{chargeId}",
    params(("chargeId" = String, Path, description = "`ch_` and 32 hex digits")),
    responses((status = 200, body = Charge), (status = 401, description = "unauthorized"), (status = 404, description = "charge-not-found")),
    security(("bearer" = []))
)]
async fn get_charge(
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
    params(("orderId" = String, Query, description = "the order whose charges to list")),
    responses(
        (status = 200, body = OrderCharges, description = "oldest first; empty for an unknown order"),
        (status = 400, description = "invalid-request: orderId missing or malformed"),
        (status = 401, description = "unauthorized")
    ),
    security(("bearer" = []))
)]
async fn list_charges(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
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

#[utoipa::path(
    get, path = "/totals",
    responses((status = 200, body = Totals, description = "charged and refunded per currency; declined charges count in neither"), (status = 401, description = "unauthorized")),
    security(("bearer" = []))
)]
async fn get_totals(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    Ok(HttpResponse::Ok().json(state.store.totals().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_endpoint() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap_or_default();
        for path in ["/charge", "/refund", "/charges", "/charges/{chargeId}", "/totals"] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
    }

    #[test]
    fn declines_are_stored_but_validation_errors_and_reused_keys_free_the_key() {
        let declined = Outcome::of(Err(PaymentError::Declined {
            charge_id: "ch_00".into(),
            decline_code: "card_declined".into(),
        }));
        assert!(matches!(declined, Outcome::Store(ref r) if r.status == 402));
        assert!(matches!(Outcome::of(Err(PaymentError::invalid("x"))), Outcome::Free(_)));
        assert!(matches!(
            Outcome::of(Err(PaymentError::from(CommonError::IdempotencyKeyReused))),
            Outcome::Free(_)
        ));
        assert!(matches!(Outcome::of(Err(not_found("ch_x"))), Outcome::Store(ref r) if r.status == 404));
        assert!(matches!(
            Outcome::of(Err(PaymentError::from(CommonError::Internal("boom".into())))),
            Outcome::Free(_)
        ));
    }

    #[test]
    fn a_decline_names_its_code_and_charge() {
        let p = PaymentError::Declined {
            charge_id: "ch_00abc".into(),
            decline_code: "insufficient_funds".into(),
        }
        .problem();
        assert_eq!(p.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(p.slug, "payment-declined");
        assert!(p.detail.contains("insufficient_funds"));
        assert_eq!(p.extensions.get("declineCode"), Some(&"insufficient_funds".into()));
        assert_eq!(p.extensions.get("chargeId"), Some(&"ch_00abc".into()));
    }
}
