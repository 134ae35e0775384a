//! HTTP handlers. Reads are public; writes need the internal token and, when they are POSTs,
//! an Idempotency-Key.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::body::{self, JsonBody};
use shared::idempotency::{self, KeyRef, Outcome, StoredResponse};
use shared::money::valid_currency;
use utoipa::OpenApi;

use crate::AppState;
use crate::error::StockError;
use crate::model::{
    Item, MAX_AVAILABLE, MAX_PRICE, MAX_QUANTITY, PutItemRequest, ReservationRef, ReservationResponse,
    ReservationStatus, ReserveRequest,
};
use crate::store::{self, ReserveOutcome, Transition, TransitionOutcome};

pub fn configure(state: AppState) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg| {
        cfg.app_data(web::Data::new(state.clone()))
            .service(web::resource("/items").get(list_items))
            .service(web::resource("/items/{id}").get(get_item).put(put_item))
            .service(web::resource("/reserve").post(reserve_stock))
            .service(web::resource("/release").post(release_reservation))
            .service(web::resource("/complete").post(complete_reservation));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "stock-service", description = "Items and reservations. Every error is application/problem+json."),
    servers((url = "/stock")),
    paths(list_items, get_item, put_item, reserve_stock, release_reservation, complete_reservation),
    components(schemas(Item, PutItemRequest, ReserveRequest, ReservationResponse, ReservationRef, ReservationStatus))
)]
struct ApiDoc;

pub fn openapi_json() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}

/// Item ids in paths are positive integers; anything else names no item.
fn parse_item_id(raw: &str) -> Result<u64, StockError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| StockError::ItemNotFound(raw.chars().take(64).collect()))
}

#[utoipa::path(get, path = "/items", responses((status = 200, body = [Item])))]
async fn list_items(state: web::Data<AppState>) -> Result<HttpResponse, StockError> {
    Ok(HttpResponse::Ok().json(state.store.list_items().await?))
}

#[utoipa::path(get, path = "/items/{id}", responses((status = 200, body = Item), (status = 404, description = "item-not-found")))]
async fn get_item(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, StockError> {
    let id = parse_item_id(&id)?;
    let item = state
        .store
        .get_item(id)
        .await?
        .ok_or_else(|| StockError::ItemNotFound(id.to_string()))?;
    Ok(HttpResponse::Ok().json(item))
}

#[utoipa::path(
    put, path = "/items/{id}", request_body = PutItemRequest,
    responses((status = 200, body = Item), (status = 400, description = "invalid-request"), (status = 401, description = "unauthorized")),
    security(("bearer" = []))
)]
async fn put_item(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, StockError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let id = id.parse::<u64>().ok().filter(|id| *id >= 1).ok_or_else(|| {
        shared::CommonError::InvalidRequest("the item id in the path must be a positive integer".into())
    })?;
    let JsonBody { value: body, .. } = body::read_json::<PutItemRequest>(&req, payload).await?;
    let invalid = |m: &str| StockError::Common(shared::CommonError::InvalidRequest(m.into()));
    if body.name.trim().is_empty() || body.name.len() > 200 {
        return Err(invalid("name must be 1 to 200 characters"));
    }
    if !valid_currency(&body.currency) {
        return Err(invalid("currency must be an ISO 4217 code such as USD"));
    }
    if body.price > MAX_PRICE {
        return Err(invalid(&format!(
            "price is in minor units and must be at most {MAX_PRICE}"
        )));
    }
    if body.available > MAX_AVAILABLE {
        return Err(invalid(&format!("available must be at most {MAX_AVAILABLE}")));
    }
    let item = state
        .store
        .put_item(id, body.name.trim(), body.price, &body.currency, body.available)
        .await?;
    Ok(HttpResponse::Ok().json(item))
}

#[utoipa::path(
    post, path = "/reserve", request_body = ReserveRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = ReservationResponse),
        (status = 404, description = "item-not-found"),
        (status = 409, description = "out-of-stock, or idempotency-key-in-use"),
        (status = 422, description = "idempotency-key-reused")
    ),
    security(("bearer" = []))
)]
async fn reserve_stock(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, StockError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let key = idempotency::key_from(&req)?;
    let JsonBody { value: body, raw } = body::read_json::<ReserveRequest>(&req, payload).await?;
    if body.item_id == 0 {
        return Err(shared::CommonError::InvalidRequest("itemId must be at least 1".into()).into());
    }
    if body.quantity == 0 || body.quantity > MAX_QUANTITY {
        return Err(
            shared::CommonError::InvalidRequest(format!("quantity must be between 1 and {MAX_QUANTITY}")).into(),
        );
    }
    let key_ref = KeyRef::new("stock:reserve", &key, body::fingerprint("POST", req.path(), &raw))
        .with_answer_at(store::answer_key(body.item_id, "reserve", &key));
    let store = state.store.clone();
    let (idempotency, key_ref) = (&state.idempotency, &key_ref);
    let response = state
        .idempotency
        .run(key_ref, |token, _| async move {
            // The answer, but for what only the script knows, which it fills in and stores.
            let rid = store::new_reservation_id(body.item_id);
            let template = StoredResponse {
                status: StatusCode::CREATED.as_u16(),
                content_type: "application/json".into(),
                body: store::reservation_template(&rid, body.item_id, body.quantity),
                location: None,
            };
            let answer = idempotency.answer(key_ref, &token, &template);
            let failure = match store.reserve(body.item_id, body.quantity, &rid, &key, &answer).await {
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
async fn release_reservation(
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
async fn complete_reservation(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, StockError> {
    transition(req, payload, state, Transition::Complete).await
}

/// Release and complete share their shape: both are idempotent by state, and the
/// Idempotency-Key adds byte-identical replays and payload-reuse detection on top.
async fn transition(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    action: Transition,
) -> Result<HttpResponse, StockError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let key = idempotency::key_from(&req)?;
    let JsonBody { value: body, raw } = body::read_json::<ReservationRef>(&req, payload).await?;
    let rid = body.reservation_id;
    let mut key_ref = KeyRef::new(
        &format!("stock:{}", action.name()),
        &key,
        body::fingerprint("POST", req.path(), &raw),
    );
    if let Some(item_id) = store::item_of_reservation(&rid) {
        key_ref = key_ref.with_answer_at(store::answer_key(item_id, action.name(), &key));
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
