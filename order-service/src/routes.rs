//! HTTP handlers: checkout (public, idempotent), order reads (public), totals and order refunds
//! (internal).

use actix_web::web;
use utoipa::OpenApi;

use crate::AppState;
use crate::checkout::routes::{__path_create_checkout, create_checkout};
use crate::model::{
    Bucket, CheckoutCompleted, CheckoutProcessing, CheckoutRequest, CurrencyTotals, OrderView, PixView, Step,
};
use crate::orders::refunds::{__path_refund_order, OrderRefundRequest, OrderRefundResponse, refund_order};
use crate::orders::routes::{
    __path_get_order, __path_get_totals, __path_payment_updated, PaymentUpdateTaken, get_order, get_totals,
    payment_updated,
};

pub fn configure(state: AppState) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg| {
        cfg.app_data(web::Data::new(state.clone()))
            .service(web::resource("/checkout").post(create_checkout))
            .service(web::resource("/orders/{orderId}").get(get_order))
            .service(web::resource("/orders/{orderId}/refunds").post(refund_order))
            .service(web::resource("/orders/{orderId}/payment-updates").post(payment_updated))
            .service(web::resource("/totals").get(get_totals));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "order-service", description = "Checkout orchestration. Every error is application/problem+json."),
    servers((url = "/order")),
    paths(create_checkout, get_order, get_totals, refund_order, payment_updated),
    components(schemas(PaymentUpdateTaken, CheckoutRequest, CheckoutCompleted, CheckoutProcessing, PixView, OrderView, Step, Bucket, CurrencyTotals, OrderRefundRequest, OrderRefundResponse))
)]
struct ApiDoc;

pub fn openapi_json() -> String {
    shared::openapi::render(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_status_an_order_and_its_steps_can_have() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap_or_default();
        let schemas = &doc["components"]["schemas"];
        let statuses = &schemas["OrderStatus"]["enum"];
        assert_eq!(
            statuses,
            &serde_json::json!([
                "processing",
                "awaiting_payment",
                "completed",
                "failed",
                "compensated",
                "partially_refunded",
                "refunded"
            ])
        );
        assert!(schemas["StepStatus"]["enum"].as_array().is_some_and(|e| e.len() == 9));
        assert_eq!(
            schemas["OrderView"]["properties"]["status"]["$ref"],
            "#/components/schemas/OrderStatus"
        );
    }
}
