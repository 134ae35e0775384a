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

/// What a payment update found.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentUpdateTaken {
    pub order_id: String,
    /// The order's status when the update came.
    #[schema(value_type = crate::ids::OrderStatus)]
    pub status: String,
    /// True when the order was awaiting its Pix and is being looked at now.
    pub woken: bool,
}

#[utoipa::path(
    post, path = "/orders/{orderId}/payment-updates",
    params(("orderId" = String, Path, description = "the order whose Pix payment changed")),
    responses(
        (status = 202, body = PaymentUpdateTaken, description = "taken: an order awaiting its Pix is looked at now (payment is asked how the Pix stands; nothing is taken from this call's body, so it needs none and no Idempotency-Key)"),
        (status = 404, description = "order-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn payment_updated(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, OrderError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let id = id.into_inner();
    if !ids::is_safe_id(&id) {
        return Err(OrderError::OrderNotFound(id.chars().take(64).collect()));
    }
    let order_id = OrderId::from_stored(id.clone());
    let status = state
        .store
        .wake(&order_id)
        .await?
        .ok_or_else(|| OrderError::OrderNotFound(id.clone()))?;
    let woken = status == crate::ids::OrderStatus::AwaitingPayment.as_str();
    if woken {
        // Due now: recovery would find it at its next pass; this replica takes it at once.
        let runner = state.runner.clone();
        tokio::spawn(async move { crate::checkout::recovery::recover(&runner, &order_id).await });
    }
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/order/orders/{id}")))
        .json(PaymentUpdateTaken {
            order_id: id,
            status,
            woken,
        }))
}
