//! The routing table, the OpenAPI document and the books (`GET /totals`). The handlers live
//! with their capability: [`crate::charges`], [`crate::refunds`]. Every endpoint needs the
//! internal token, checked first; the POSTs also need an Idempotency-Key.

use actix_web::{HttpRequest, HttpResponse, web};
use utoipa::OpenApi;

use crate::AppState;
use crate::accounts::{
    __path_create_account, __path_get_account, __path_issue_key, __path_revoke_key, AccountCreated, AccountView,
    CreateAccountRequest, IssueKeyRequest, KeyIssued, KeyRevoked, create_account, get_account, issue_key, revoke_key,
};
use crate::charges::{
    __path_create_charge, __path_get_charge, __path_list_charges, create_charge, get_charge, list_charges,
};
use crate::error::PaymentError;
use crate::events::verify::{__path_verify, VerifyReport, verify};
use crate::events::{__path_list_events, Event, EventPage, list_events};
use crate::gateways::GatewayView;
use crate::gateways::admin::{
    __path_list_gateways, __path_switch_gateway, SwitchRequest, list_gateways, switch_gateway,
};
use crate::merchant_webhooks::endpoints;
use crate::model::{
    Charge, ChargeRequest, ChargeResponse, CurrencyTotals, OrderCharges, RefundRequest, RefundResponse, Tally, Totals,
};
use crate::refunds::{__path_refund_charge, refund_charge};
use crate::splits::rules::{PayoutMethod, RuleRequest, SplitRequest};
use crate::splits::{
    __path_create_split, __path_list_splits, __path_recipient_balance, RecipientBalance, RecipientTotals, RuleView,
    Split, SplitHistory, SplitPart, create_split, list_splits, recipient_balance,
};
use crate::wallets::{
    __path_credit_wallet, __path_get_wallet, __path_list_transactions, CreditRequest, CreditResponse, Transaction,
    TransactionPage, WalletView, credit_wallet, get_wallet, list_transactions,
};

pub fn configure(state: AppState) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg| {
        cfg.app_data(web::Data::new(state.clone()))
            .service(web::resource("/charge").post(create_charge))
            .service(web::resource("/refund").post(refund_charge))
            .service(web::resource("/charges").get(list_charges))
            .service(web::resource("/charges/{chargeId}").get(get_charge))
            .service(web::resource("/charges/{chargeId}/cancel").post(crate::pix::cancel_charge))
            .service(web::resource("/webhooks/{provider}").post(crate::pix::receiver::receive))
            .service(web::resource("/totals").get(get_totals))
            .service(web::resource("/gateways").get(list_gateways))
            .service(web::resource("/gateways/{name}").put(switch_gateway))
            .service(web::resource("/wallets/{customerId}").get(get_wallet))
            .service(web::resource("/wallets/{customerId}/credits").post(credit_wallet))
            .service(web::resource("/wallets/{customerId}/transactions").get(list_transactions))
            .service(web::resource("/events").get(list_events))
            .service(web::resource("/admin/verify").post(verify))
            .service(web::resource("/splits").post(create_split).get(list_splits))
            .service(web::resource("/recipients/{recipientId}/balance").get(recipient_balance))
            .service(web::resource("/accounts").post(create_account))
            .service(web::resource("/accounts/{accountId}").get(get_account))
            .service(web::resource("/accounts/{accountId}/api-keys").post(issue_key))
            .service(web::resource("/accounts/{accountId}/api-keys/{keyId}").delete(revoke_key))
            .service(
                web::resource("/webhook-endpoints")
                    .post(endpoints::create_endpoint)
                    .get(endpoints::list_endpoints),
            )
            .service(
                web::resource("/webhook-endpoints/{endpointId}")
                    .get(endpoints::get_endpoint)
                    .delete(endpoints::delete_endpoint),
            )
            .service(web::resource("/webhook-endpoints/{endpointId}/deliveries").get(endpoints::list_deliveries))
            .service(
                web::resource("/webhook-endpoints/{endpointId}/deliveries/{deliveryId}/retry")
                    .post(endpoints::retry_delivery),
            );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "payment-service", description = "Charges, refunds and the books, through payment providers reached over HTTP. Every error is application/problem+json."),
    servers((url = "/payment")),
    paths(create_charge, refund_charge, get_charge, list_charges, get_totals, list_gateways, switch_gateway,
        credit_wallet, get_wallet, list_transactions, list_events, verify,
        create_account, get_account, issue_key, revoke_key, create_split, list_splits, recipient_balance,
        crate::pix::cancel_charge, crate::pix::receiver::receive,
        endpoints::create_endpoint, endpoints::list_endpoints, endpoints::get_endpoint, endpoints::delete_endpoint,
        endpoints::list_deliveries, endpoints::retry_delivery),
    components(schemas(ChargeRequest, ChargeResponse, crate::model::PixCode, crate::pix::receiver::WebhookReceived, RefundRequest, RefundResponse, Charge, OrderCharges, Totals, CurrencyTotals, Tally, GatewayView, SwitchRequest,
        CreditRequest, CreditResponse, WalletView, Transaction, TransactionPage, Event, EventPage, VerifyReport,
        CreateAccountRequest, AccountCreated, IssueKeyRequest, KeyIssued, KeyRevoked, AccountView,
        SplitRequest, RuleRequest, PayoutMethod, Split, RuleView, SplitHistory, SplitPart, RecipientBalance, RecipientTotals,
        endpoints::EndpointRequest, endpoints::EndpointView, endpoints::EndpointList, endpoints::EndpointDeleted,
        endpoints::DeliveryPage, crate::merchant_webhooks::store::DeliveryView, crate::merchant_webhooks::store::Attempt,
        crate::merchant_webhooks::EventType, crate::merchant_webhooks::DeliveryStatus))
)]
struct ApiDoc;

pub fn openapi_json() -> String {
    shared::openapi::render(ApiDoc::openapi())
}

#[utoipa::path(
    get, path = "/totals",
    responses((status = 200, body = Totals, description = "charged and refunded per currency, and per provider under byGateway; declined charges count in neither")),
    security(("bearer" = []))
)]
async fn get_totals(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    Ok(HttpResponse::Ok().json(state.store.totals().await?))
}

#[cfg(test)]
mod tests {
    use actix_web::http::StatusCode;
    use shared::idempotency::Outcome;
    use shared::{CommonError, ServiceError};

    use super::*;
    use crate::charges::not_found;

    #[test]
    fn the_openapi_document_lists_every_endpoint() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap_or_default();
        for path in [
            "/charge",
            "/refund",
            "/charges",
            "/charges/{chargeId}",
            "/totals",
            "/gateways",
            "/gateways/{name}",
        ] {
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
