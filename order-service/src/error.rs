//! The order service's errors and their one mapping to problem+json. Checkout outcomes that
//! happen after an order exists carry its `orderId`.

use actix_web::http::StatusCode;
use shared::{CommonError, Problem};

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Common(#[from] CommonError),
    #[error("order {0} not found")]
    OrderNotFound(String),
    #[error("item {item_id} not found")]
    ItemNotFound { order_id: String, item_id: u64 },
    #[error("item {item_id} out of stock")]
    OutOfStock {
        order_id: String,
        item_id: u64,
        quantity: u32,
    },
    #[error("payment declined: {decline_code}")]
    PaymentDeclined { order_id: String, decline_code: String },
    #[error("payment method refused: {detail}")]
    PaymentMethodRefused { order_id: String, detail: String },
    #[error("{detail}")]
    DependencyUnavailable { order_id: String, detail: String },
    #[error("order {order_id} is {status} and cannot be refunded")]
    OrderNotRefundable { order_id: String, status: String },
    #[error("refund exceeds what remains of order {order_id}")]
    RefundExceedsCharge { order_id: String, remaining: u64 },
}

shared::service_error!(OrderError);

impl OrderError {
    /// The one mapping to problem+json ([`shared::ServiceError::problem`]).
    fn to_problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::Common(e) => e.problem(),
            Self::OrderNotRefundable { order_id, status } => Problem::new(
                S::CONFLICT,
                "order-not-refundable",
                "Order not refundable",
                format!("order {order_id} is {status}: only a completed order can be refunded"),
            )
            .with("orderId", order_id.as_str()),
            Self::RefundExceedsCharge { order_id, remaining } => Problem::new(
                S::CONFLICT,
                "refund-exceeds-charge",
                "Refund exceeds the charge",
                format!("order {order_id} has {remaining} left to refund"),
            )
            .with("orderId", order_id.as_str())
            .with("remaining", *remaining),
            Self::OrderNotFound(id) => Problem::new(
                S::NOT_FOUND,
                "order-not-found",
                "Order not found",
                format!("no order with id {id}"),
            ),
            Self::ItemNotFound { order_id, item_id } => Problem::new(
                S::NOT_FOUND,
                "item-not-found",
                "Item not found",
                format!("no item with id {item_id}"),
            )
            .with("orderId", order_id.as_str()),
            Self::OutOfStock {
                order_id,
                item_id,
                quantity,
            } => Problem::new(
                S::CONFLICT,
                "out-of-stock",
                "Out of stock",
                format!("item {item_id} does not have {quantity} units available"),
            )
            .with("orderId", order_id.as_str()),
            Self::PaymentDeclined { order_id, decline_code } => Problem::new(
                S::PAYMENT_REQUIRED,
                "payment-declined",
                "Payment declined",
                format!("the payment was declined: {decline_code}"),
            )
            .with("orderId", order_id.as_str())
            .with("declineCode", decline_code.as_str()),
            Self::PaymentMethodRefused { order_id, detail } => {
                Problem::new(S::BAD_REQUEST, "invalid-request", "Invalid request", detail.clone())
                    .with("orderId", order_id.as_str())
            }
            Self::DependencyUnavailable { order_id, detail } => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "Dependency unavailable",
                detail.clone(),
            )
            .with("orderId", order_id.as_str())
            .retry_after(1),
        }
    }
}
