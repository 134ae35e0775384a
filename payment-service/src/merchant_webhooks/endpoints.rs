//! The HTTP API of merchant webhooks: endpoints (register, list, read, delete), their
//! deliveries with every attempt, and a manual retry. An account sees and changes only its own
//! endpoints; the platform (internal token) sees all, and its own endpoints receive every event.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use shared::accounts::Caller;
use shared::idempotency::{self, IdempotentPost, Outcome, StoredResponse};
use utoipa::ToSchema;

use super::store::DeliveryView;
use super::{DeliveryId, DeliveryStatus, Endpoint, EndpointId, EventType, address};
use crate::AppState;
use crate::error::PaymentError;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRequest {
    /// `http` or `https`; private, loopback and link-local addresses are refused unless
    /// `WEBHOOK_ALLOW_PRIVATE=true`.
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    /// The event types to receive.
    #[schema(min_items = 1, max_items = 6)]
    pub events: Vec<EventType>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    /// `we_` and 32 hex digits.
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    /// `whsec_…`: verify each delivery's `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
    /// The owning account; null for the platform's.
    pub account_id: Option<String>,
    pub created_at: String,
}

impl From<Endpoint> for EndpointView {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id.as_str().to_string(),
            url: e.url,
            events: e.events,
            secret: e.secret,
            account_id: e.account_id,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointDeleted {
    pub id: String,
    pub deleted: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    pub endpoint_id: String,
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Deserialize)]
struct DeliveriesQuery {
    status: Option<String>,
    limit: Option<String>,
}

fn endpoint_in_path(raw: &str) -> Result<EndpointId, PaymentError> {
    EndpointId::parse(raw).ok_or_else(|| PaymentError::WebhookEndpointNotFound(raw.chars().take(64).collect()))
}

/// The endpoint, if the caller may see it: 404 when there is none, 403 when it is another's.
async fn visible(state: &AppState, caller: &Caller, raw: &str) -> Result<Endpoint, PaymentError> {
    let id = endpoint_in_path(raw)?;
    let endpoint = state
        .store
        .endpoint(&id)
        .await?
        .ok_or_else(|| PaymentError::WebhookEndpointNotFound(id.as_str().to_string()))?;
    caller.may_act_for(endpoint.account_id.as_deref())?;
    Ok(endpoint)
}

async fn register(
    state: &AppState,
    id: EndpointId,
    caller: &Caller,
    body: EndpointRequest,
) -> Result<StoredResponse, PaymentError> {
    let url = address::parse_url(body.url.trim()).map_err(PaymentError::invalid)?;
    address::check_destination(&url, state.settings.outbound.allow_private)
        .await
        .map_err(PaymentError::invalid)?;
    // Each type once, in the order first asked for.
    let mut events: Vec<EventType> = Vec::new();
    for e in body.events {
        if !events.contains(&e) {
            events.push(e);
        }
    }
    let secret =
        shared::webhooks::Secret::generate().map_err(|e| PaymentError::from(shared::CommonError::Internal(e)))?;
    let endpoint = Endpoint {
        id,
        url: url.to_string(),
        events,
        secret,
        account_id: match caller {
            Caller::Platform => None,
            Caller::Account(a) => Some(a.to_string()),
        },
        created_at: shared::time::now_rfc3339(),
    };
    state.store.put_endpoint(&endpoint).await?;
    tracing::info!(endpoint = endpoint.id.as_str(), url = %endpoint.url, "webhook endpoint registered");
    Ok(StoredResponse::json(StatusCode::CREATED, &EndpointView::from(endpoint)))
}

#[utoipa::path(
    post, path = "/webhook-endpoints", request_body = EndpointRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = EndpointView, description = "registered, with its signing secret"),
        (status = 400, description = "invalid-request: not an http(s) URL, a private address, an unknown event type"),
        (status = 401, description = "unauthorized")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_endpoint(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let IdempotentPost { body, key_ref, .. } =
        idempotency::read_post_as::<EndpointRequest>(&req, payload, &caller.scope("payment:webhook-endpoints")).await?;
    // A retried request (its first run died before answering) makes the same endpoint.
    let id = EndpointId::derived(&format!("{}\n{}", key_ref.redis_key(), key_ref.fingerprint()));
    let shared_state = state.clone().into_inner();
    Ok(state
        .idempotency
        .run(&key_ref, |_, _| async move {
            Ok(Outcome::of(register(&shared_state, id, &caller, body).await))
        })
        .await?)
}

#[utoipa::path(
    get, path = "/webhook-endpoints",
    responses(
        (status = 200, body = EndpointList, description = "the caller's endpoints (the platform: all), oldest first"),
        (status = 401, description = "unauthorized")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_endpoints(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let endpoints = state
        .store
        .endpoints()
        .await?
        .into_iter()
        .filter(|e| caller.may_act_for(e.account_id.as_deref()).is_ok())
        .map(EndpointView::from)
        .collect();
    Ok(HttpResponse::Ok().json(EndpointList { endpoints }))
}

#[utoipa::path(
    get, path = "/webhook-endpoints/{endpointId}",
    params(("endpointId" = String, Path, description = "`we_` and 32 hex digits")),
    responses(
        (status = 200, body = EndpointView),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: another account's"),
        (status = 404, description = "webhook-endpoint-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_endpoint(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    Ok(HttpResponse::Ok().json(EndpointView::from(visible(&state, &caller, &path).await?)))
}

#[utoipa::path(
    delete, path = "/webhook-endpoints/{endpointId}",
    params(("endpointId" = String, Path, description = "`we_` and 32 hex digits")),
    responses(
        (status = 200, body = EndpointDeleted, description = "deleted: nothing more is sent to it; its pending deliveries are dead-lettered"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: another account's"),
        (status = 404, description = "webhook-endpoint-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_endpoint(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let endpoint = visible(&state, &caller, &path).await?;
    if !state.store.delete_endpoint(&endpoint.id).await? {
        return Err(PaymentError::WebhookEndpointNotFound(endpoint.id.as_str().to_string()));
    }
    tracing::info!(endpoint = endpoint.id.as_str(), "webhook endpoint deleted");
    Ok(HttpResponse::Ok().json(EndpointDeleted {
        id: endpoint.id.as_str().to_string(),
        deleted: true,
    }))
}

#[utoipa::path(
    get, path = "/webhook-endpoints/{endpointId}/deliveries",
    params(
        ("endpointId" = String, Path, description = "`we_` and 32 hex digits"),
        ("status" = Option<DeliveryStatus>, Query, description = "only deliveries in this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "default 20")
    ),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, description = "invalid-request: status or limit malformed"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: another account's"),
        (status = 404, description = "webhook-endpoint-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_deliveries(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let query = web::Query::<DeliveriesQuery>::from_query(req.query_string())
        .map_err(|e| PaymentError::invalid(format!("invalid query: {e}")))?
        .into_inner();
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => {
            Some(DeliveryStatus::parse(s).ok_or_else(|| PaymentError::invalid("status: pending, succeeded or dead"))?)
        }
    };
    let limit = crate::wallets::page_limit(query.limit.as_deref())?;
    let endpoint = visible(&state, &caller, &path).await?;
    let deliveries = state.store.deliveries(&endpoint.id, status, limit as usize).await?;
    Ok(HttpResponse::Ok().json(DeliveryPage {
        endpoint_id: endpoint.id.as_str().to_string(),
        deliveries,
    }))
}

#[utoipa::path(
    post, path = "/webhook-endpoints/{endpointId}/deliveries/{deliveryId}/retry",
    params(
        ("endpointId" = String, Path, description = "`we_` and 32 hex digits"),
        ("deliveryId" = String, Path, description = "`dlv_` and 32 hex digits")
    ),
    responses(
        (status = 200, body = DeliveryView, description = "due at once: a dead or succeeded delivery gets one more attempt (failing, it is dead again); a pending one is brought forward"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: another account's"),
        (status = 404, description = "webhook-endpoint-not-found, delivery-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retry_delivery(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let (endpoint, delivery) = path.into_inner();
    let endpoint = visible(&state, &caller, &endpoint).await?;
    let not_found = || PaymentError::DeliveryNotFound(delivery.chars().take(64).collect());
    let id = DeliveryId::parse(&delivery).ok_or_else(not_found)?;
    let had = state
        .store
        .retry_delivery(&endpoint.id, &id, shared::time::now_ms())
        .await?
        .ok_or_else(not_found)?;
    tracing::info!(
        delivery = id.as_str(),
        had = had.as_str(),
        "webhook delivery retried by hand"
    );
    let view = state.store.delivery(&endpoint.id, &id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(view))
}
