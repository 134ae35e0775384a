//! Order reads (public) and the reconciliation totals (internal).

use actix_web::{HttpRequest, HttpResponse, web};
use shared::ids;

use crate::AppState;
use crate::error::OrderError;
use crate::ids::OrderId;
use crate::model::{CurrencyTotals, OrderView};

#[utoipa::path(
    get, path = "/orders/{orderId}",
    params(("orderId" = String, Path, description = "the order's id, as the checkout answered it")),
    responses((status = 200, body = OrderView), (status = 404, description = "order-not-found"))
)]
pub(crate) async fn get_order(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, OrderError> {
    let id = id.into_inner();
    if !ids::is_safe_id(&id) {
        return Err(OrderError::OrderNotFound(id.chars().take(64).collect()));
    }
    let order = state
        .store
        .get(&OrderId::from_stored(id.clone()))
        .await?
        .ok_or_else(|| OrderError::OrderNotFound(id.clone()))?;
    Ok(HttpResponse::Ok().json(order))
}

#[utoipa::path(
    get, path = "/totals",
    responses((status = 200, body = std::collections::BTreeMap<String, CurrencyTotals>)),
    security(("bearer" = []))
)]
pub(crate) async fn get_totals(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, OrderError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    Ok(HttpResponse::Ok().json(state.store.totals().await?))
}
