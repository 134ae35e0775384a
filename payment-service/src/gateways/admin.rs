//! `GET /gateways` (every provider with its switch, breaker and figures) and
//! `PUT /gateways/{name}` (the manual switch). Internal token.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use shared::body::{self, JsonBody};
use utoipa::ToSchema;

use super::GatewayView;
use crate::AppState;
use crate::error::PaymentError;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// false: new charges skip this provider (refunds of its charges still go to it).
    pub enabled: bool,
}

#[utoipa::path(
    get, path = "/gateways",
    responses((status = 200, body = Vec<GatewayView>, description = "every configured provider, as this replica sees it")),
    security(("bearer" = []))
)]
pub(crate) async fn list_gateways(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    Ok(HttpResponse::Ok().json(state.gateways.views()))
}

#[utoipa::path(
    put, path = "/gateways/{name}", request_body = SwitchRequest,
    params(("name" = String, Path, description = "a provider named in PAYMENT_GATEWAYS")),
    responses(
        (status = 200, body = GatewayView, description = "switched; every replica obeys within a second"),
        (status = 404, description = "gateway-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn switch_gateway(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    if state.gateways.get(&name).is_none() {
        return Err(PaymentError::GatewayNotFound(name.chars().take(64).collect()));
    }
    let JsonBody { value: body, .. } = body::read_json::<SwitchRequest>(&req, payload).await?;
    state.gateways.switch(&state.pool, &name, body.enabled).await?;
    tracing::warn!(gateway = %name, enabled = body.enabled, "gateway switched by hand");
    let view = state.gateways.views().into_iter().find(|g| g.name == *name);
    Ok(HttpResponse::Ok().json(view))
}
