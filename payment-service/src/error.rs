//! The payment service's errors and their one mapping to problem+json.

use actix_web::http::StatusCode;
use shared::{CommonError, Problem};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Common(#[from] CommonError),
    #[error("charge {charge_id} declined: {decline_code}")]
    Declined { charge_id: String, decline_code: String },
    #[error("charge {0} not found")]
    ChargeNotFound(String),
    #[error("charge {charge_id} is {status} and cannot be refunded")]
    ChargeNotRefundable { charge_id: String, status: String },
    /// No provider of the route could take the request, and none of them took it: declined
    /// with `processing_error`.
    #[error("no {kind} provider available")]
    NoGateway { kind: String },
    /// A provider may have taken the request and did not say: it is resolved there, by the
    /// next request with the same Idempotency-Key.
    #[error("provider {gateway} did not answer")]
    GatewayUnknown { gateway: String },
    #[error("gateway {0} not found")]
    GatewayNotFound(String),
    #[error("refund exceeds what remains of charge {charge_id}")]
    RefundExceedsCharge { charge_id: String, remaining: u64 },
    #[error("wallet of {0} not found")]
    WalletNotFound(String),
    #[error("the wallet's balance would pass its limit")]
    WalletLimit,
    #[error("account {0} not found")]
    AccountNotFound(String),
    #[error("API key {0} not found")]
    ApiKeyNotFound(String),
    #[error("item {0} not found")]
    ItemNotFound(String),
    /// A split's rules refused: which rule, and why.
    #[error("invalid split: {0}")]
    SplitInvalid(String),
    /// A provider's webhook whose signature or timestamp does not hold: nothing is recorded.
    #[error("invalid webhook signature: {0}")]
    InvalidSignature(String),
    #[error("webhook endpoint {0} not found")]
    WebhookEndpointNotFound(String),
    #[error("delivery {0} not found")]
    DeliveryNotFound(String),
}

shared::service_error!(PaymentError);

impl PaymentError {
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::Common(CommonError::InvalidRequest(detail.into()))
    }
}

impl PaymentError {
    /// The one mapping to problem+json ([`shared::ServiceError::problem`]).
    fn to_problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::Common(e) => e.problem(),
            Self::Declined {
                charge_id,
                decline_code,
            } => Problem::new(
                S::PAYMENT_REQUIRED,
                "payment-declined",
                "Payment declined",
                format!("the payment was declined: {decline_code}"),
            )
            .with("declineCode", decline_code.as_str())
            .with("chargeId", charge_id.as_str()),
            Self::ChargeNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "charge-not-found",
                "Charge not found",
                format!("no charge with id {id}"),
            ),
            Self::ChargeNotRefundable { charge_id, status } => Problem::new(
                S::CONFLICT,
                "charge-not-refundable",
                "Charge not refundable",
                format!("charge {charge_id} is {status}; only a succeeded charge can be refunded"),
            )
            .with("chargeId", charge_id.as_str()),
            // As Stripe answers `processing_error`: a decline, final for this request, with
            // nothing charged anywhere; a new attempt (a new key) may find a provider back.
            Self::NoGateway { kind } => Problem::new(
                S::PAYMENT_REQUIRED,
                "payment-declined",
                "Payment declined",
                format!("no {kind} provider could process the payment (processing_error); nothing was charged"),
            )
            .with("declineCode", "processing_error"),
            Self::GatewayUnknown { gateway } => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "gateway-unavailable",
                "Payment provider did not answer",
                format!(
                    "{gateway} may have taken the request and did not answer; it will be resolved at {gateway}: retry with the same Idempotency-Key"
                ),
            )
            .with("gateway", gateway.as_str())
            .retry_after(1),
            Self::RefundExceedsCharge { charge_id, remaining } => Problem::new(
                S::CONFLICT,
                "refund-exceeds-charge",
                "Refund exceeds the charge",
                format!("charge {charge_id} has {remaining} left to refund"),
            )
            .with("chargeId", charge_id.as_str())
            .with("remaining", *remaining),
            Self::WalletNotFound(customer) => Problem::new(
                S::NOT_FOUND,
                "wallet-not-found",
                "Wallet not found",
                format!("customer {customer} has no wallet: it was never credited"),
            ),
            Self::WalletLimit => Problem::new(
                S::CONFLICT,
                "wallet-limit-exceeded",
                "Wallet limit exceeded",
                "the balance would pass 9000000000000000 minor units; nothing was credited",
            ),
            Self::AccountNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "account-not-found",
                "Account not found",
                format!("no account with id {id}"),
            ),
            Self::ApiKeyNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "api-key-not-found",
                "API key not found",
                format!("the account has no live key with id {id}"),
            ),
            Self::ItemNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "item-not-found",
                "Item not found",
                format!("no item with id {id}"),
            ),
            Self::SplitInvalid(detail) => {
                Problem::new(S::BAD_REQUEST, "split-invalid", "Invalid split", detail.clone())
            }
            Self::InvalidSignature(detail) => Problem::new(
                S::UNAUTHORIZED,
                "invalid-signature",
                "Invalid signature",
                detail.clone(),
            ),
            Self::WebhookEndpointNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "webhook-endpoint-not-found",
                "Webhook endpoint not found",
                format!("no webhook endpoint with id {id}"),
            ),
            Self::DeliveryNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "delivery-not-found",
                "Delivery not found",
                format!("the endpoint has no delivery with id {id}"),
            ),
            Self::GatewayNotFound(name) => Problem::new(
                S::NOT_FOUND,
                "gateway-not-found",
                "Gateway not found",
                format!("no payment provider named {name}"),
            ),
        }
    }
}
