//! Reservations: reserve, release, complete (internal, idempotent), and the expiry of lapsed
//! ones. Never oversells: every change of an item's counts is one script on its slot.

pub mod expiry;
#[cfg(test)]
mod script_tests;
mod store;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::idempotency::{self, IdempotentPost, Outcome, StoredResponse};

use crate::AppState;
use crate::error::StockError;
use crate::model::{ReservationRef, ReservationResponse, ReservationStatus, ReserveRequest};
pub use store::{
    ReserveOutcome, RestockOutcome, Transition, TransitionOutcome, answer_key, item_of_reservation, new_reservation_id,
    reservation_template,
};

#[utoipa::path(
    post, path = "/reserve", request_body = ReserveRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = ReservationResponse),
        (status = 404, description = "item-not-found"),
        (status = 409, description = "out-of-stock, or idempotency-key-in-use")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn reserve_stock(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, StockError> {
    let IdempotentPost { key, body, key_ref } =
        idempotency::read_post::<ReserveRequest>(&req, payload, &state.settings.common.internal_token, "stock:reserve")
            .await?;
    let key_ref = key_ref.with_answer_at(answer_key(body.item_id, "reserve", &key));
    let store = state.store.clone();
    let (idempotency, key_ref) = (&state.idempotency, &key_ref);
    let response = state
        .idempotency
        .run(key_ref, |token, _| async move {
            // The answer, but for what only the script knows, which it fills in and stores.
            let rid = new_reservation_id(body.item_id);
            let template = StoredResponse {
                status: StatusCode::CREATED.as_u16(),
                content_type: "application/json".into(),
                body: reservation_template(body.item_id, body.quantity),
                location: None,
            };
            let answer = idempotency.answer(key_ref, &token, &template);
            let hold = body
                .hold_seconds
                .map(std::time::Duration::from_secs)
                .unwrap_or(store.reservation_ttl);
            let failure = match store
                .reserve(body.item_id, body.quantity, &rid, &key, &answer, hold)
                .await
            {
                Ok(ReserveOutcome::Reserved { reservation, fresh }) => {
                    shared::metrics::event("reservation", "reserved");
                    let resp = StoredResponse::json(StatusCode::CREATED, &reservation);
                    // A fresh one's answer is stored; one the key made before is stored as usual.
                    return Ok(if fresh {
                        Outcome::answered(key_ref, resp)
                    } else {
                        Outcome::by_status(resp)
                    });
                }
                Ok(ReserveOutcome::Refused(decided)) => return Err(decided),
                Ok(ReserveOutcome::NotFound) => StockError::ItemNotFound(body.item_id.to_string()),
                Ok(ReserveOutcome::OutOfStock { available }) => {
                    shared::metrics::event("reservation", "out_of_stock");
                    StockError::OutOfStock {
                        item_id: body.item_id,
                        requested: body.quantity,
                        available,
                    }
                }
                Err(e) => e,
            };
            Ok(Outcome::of(Err(failure)))
        })
        .await?;
    Ok(response)
}

#[utoipa::path(
    post, path = "/release", request_body = ReservationRef,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = ReservationStatus),
        (status = 404, description = "reservation-not-found"),
        (status = 409, description = "reservation-completed")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn release_reservation(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, StockError> {
    transition(req, payload, state, Transition::Release).await
}

#[utoipa::path(
    post, path = "/complete", request_body = ReservationRef,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = ReservationStatus),
        (status = 404, description = "reservation-not-found"),
        (status = 409, description = "reservation-released (released or expired)")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn complete_reservation(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, StockError> {
    transition(req, payload, state, Transition::Complete).await
}

#[utoipa::path(
    post, path = "/restock", request_body = ReservationRef,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = ReservationStatus, description = "restocked now or before: the units went from sold back to available"),
        (status = 404, description = "reservation-not-found"),
        (status = 409, description = "reservation-not-completed: only a completed reservation's units can come back")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn restock_reservation(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, StockError> {
    let IdempotentPost { body, key_ref, .. } =
        idempotency::read_post::<ReservationRef>(&req, payload, &state.settings.common.internal_token, "stock:restock")
            .await?;
    let rid = body.reservation_id;
    let store = state.store.clone();
    let response = state
        .idempotency
        .run(&key_ref, |_, _| async move {
            let result = match store.restock(&rid).await {
                Ok(RestockOutcome::Restocked) => {
                    shared::metrics::event("reservation", "restocked");
                    Ok(StoredResponse::json(
                        StatusCode::OK,
                        &ReservationStatus {
                            reservation_id: rid,
                            status: "restocked".into(),
                        },
                    ))
                }
                Ok(RestockOutcome::NotCompleted) => Err(StockError::ReservationNotCompleted(rid)),
                Ok(RestockOutcome::NotFound) => Err(StockError::ReservationNotFound(rid.chars().take(128).collect())),
                Err(e) => Err(e),
            };
            Ok(Outcome::of(result))
        })
        .await?;
    Ok(response)
}

/// Release and complete share their shape: both are idempotent by state, and the
/// Idempotency-Key adds byte-identical replays and payload-reuse detection on top.
async fn transition(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    action: Transition,
) -> Result<HttpResponse, StockError> {
    let scope = format!("stock:{}", action.name());
    let IdempotentPost { key, body, mut key_ref } =
        idempotency::read_post::<ReservationRef>(&req, payload, &state.settings.common.internal_token, &scope).await?;
    let rid = body.reservation_id;
    if let Some(item_id) = store::item_of_reservation(&rid) {
        key_ref = key_ref.with_answer_at(answer_key(item_id, action.name(), &key));
    }
    // The answer to a transition that succeeds is known before it runs: its script stores it.
    let success = StoredResponse::json(
        StatusCode::OK,
        &ReservationStatus {
            reservation_id: rid.clone(),
            status: action.status().into(),
        },
    );
    let store = state.store.clone();
    let (idempotency, key_ref) = (&state.idempotency, &key_ref);
    let response = state
        .idempotency
        .run(key_ref, |token, _| async move {
            let result = store
                .transition(action, &rid, &idempotency.answer(key_ref, &token, &success))
                .await;
            let failure = match (action, result) {
                (_, Err(e)) => e,
                (_, Ok(TransitionOutcome::NotFound)) => {
                    StockError::ReservationNotFound(rid.chars().take(128).collect())
                }
                (Transition::Release, Ok(TransitionOutcome::Released))
                | (Transition::Complete, Ok(TransitionOutcome::Completed)) => {
                    shared::metrics::event("reservation", action.status());
                    return Ok(Outcome::answered(key_ref, success));
                }
                (_, Ok(TransitionOutcome::Refused(decided))) => return Err(decided),
                (Transition::Release, Ok(TransitionOutcome::Completed)) => StockError::ReservationCompleted(rid),
                (Transition::Complete, Ok(TransitionOutcome::Released)) => StockError::ReservationReleased(rid),
            };
            Ok(Outcome::of(Err(failure)))
        })
        .await?;
    Ok(response)
}
