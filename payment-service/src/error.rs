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
        }
    }
}
