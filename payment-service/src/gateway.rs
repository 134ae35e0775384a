//! The payment gateway behind every charge and refund. Only the simulator exists: it answers
//! like Stripe does for its test payment methods, deterministically and without any I/O.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use shared::metrics::CounterFamily;
use shared::money::PaymentMethod;

/// `gateway_requests_total{operation, result}`: the gateway asked to charge (`approved`,
/// `declined`) or to refund (`refunded`). Registered when the service starts.
pub static GATEWAY_REQUESTS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "gateway_requests",
        "Requests to the payment gateway, by operation and result",
    )
});

/// The decline code each of Stripe's test payment methods earns at the simulator.
fn decline_code(method: PaymentMethod) -> Option<&'static str> {
    match method {
        PaymentMethod::CardVisa => None,
        PaymentMethod::CardChargeDeclined => Some("card_declined"),
        PaymentMethod::CardChargeDeclinedInsufficientFunds => Some("insufficient_funds"),
    }
}

/// What the gateway said about one charge attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Declined { code: String },
}

/// One charge as sent to the gateway.
#[derive(Debug)]
pub struct ChargeAttempt<'a> {
    /// Derived from the client's Idempotency-Key. A real gateway must be sent this same key
    /// (Stripe's `Idempotency-Key`), so that a retry after a crash between the gateway's answer
    /// and our record cannot charge the card twice: the gateway answers the retry with the
    /// first attempt's result.
    pub idempotency_key: &'a str,
    pub order_id: &'a str,
    pub amount: u64,
    pub currency: &'a str,
    pub customer_id: &'a str,
    pub payment_method: PaymentMethod,
}

/// One refund as sent to the gateway: always of the whole charge.
#[derive(Debug)]
pub struct RefundAttempt<'a> {
    /// From [`refund_key`]: derived from the charge, not from the client's Idempotency-Key. A
    /// charge is refunded once whatever key asks, so every request to refund it (a retry after
    /// a crash between the gateway's answer and our record, or another key racing this one) is
    /// one refund to the gateway.
    pub idempotency_key: &'a str,
    pub charge_id: &'a str,
    pub amount: u64,
    pub currency: &'a str,
}

/// The gateway's Idempotency-Key for refunding `charge_id`.
pub fn refund_key(charge_id: &str) -> String {
    format!("{charge_id}:refund")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    Simulator,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown gateway (accepted: simulator)")]
pub struct UnknownGateway;

impl FromStr for Gateway {
    type Err = UnknownGateway;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "simulator" => Ok(Self::Simulator),
            _ => Err(UnknownGateway),
        }
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Simulator => "simulator",
        })
    }
}

impl Gateway {
    /// Asks the gateway to charge.
    pub async fn charge(&self, attempt: &ChargeAttempt<'_>) -> Decision {
        let decision = match self {
            Self::Simulator => {
                tracing::debug!(
                    idempotency_key = attempt.idempotency_key,
                    order_id = attempt.order_id,
                    amount = attempt.amount,
                    currency = attempt.currency,
                    "simulated gateway charge"
                );
                simulate(attempt.payment_method)
            }
        };
        let result = match &decision {
            Decision::Approved => "approved",
            Decision::Declined { .. } => "declined",
        };
        GATEWAY_REQUESTS.inc(&[("operation", "charge"), ("result", result)]);
        decision
    }

    /// Asks the gateway to give a succeeded charge back. The simulator always does, as Stripe
    /// does for its test cards. A real gateway's failure would be an error here that frees the
    /// client's key (503) before anything is recorded, like a Redis failure; the order's saga
    /// retries its refund until one is recorded.
    pub async fn refund(&self, attempt: &RefundAttempt<'_>) {
        match self {
            // At info, unlike a charge: refunds are rare, and this line is the trace of money
            // sent back should the record after it fail.
            Self::Simulator => tracing::info!(
                idempotency_key = attempt.idempotency_key,
                charge_id = attempt.charge_id,
                amount = attempt.amount,
                currency = attempt.currency,
                "simulated gateway refund"
            ),
        }
        GATEWAY_REQUESTS.inc(&[("operation", "refund"), ("result", "refunded")]);
    }
}

fn simulate(payment_method: PaymentMethod) -> Decision {
    match decline_code(payment_method) {
        None => Decision::Approved,
        Some(code) => Decision::Declined { code: code.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(payment_method: PaymentMethod) -> ChargeAttempt<'static> {
        ChargeAttempt {
            idempotency_key: "ord_1:charge",
            order_id: "ord_1",
            amount: 999,
            currency: "USD",
            customer_id: "guest",
            payment_method,
        }
    }

    #[actix_web::test]
    async fn the_simulator_follows_stripes_test_payment_methods() {
        let g = Gateway::Simulator;
        assert_eq!(g.charge(&attempt(PaymentMethod::CardVisa)).await, Decision::Approved);
        assert_eq!(
            g.charge(&attempt(PaymentMethod::CardChargeDeclined)).await,
            Decision::Declined {
                code: "card_declined".into()
            }
        );
        assert_eq!(
            g.charge(&attempt(PaymentMethod::CardChargeDeclinedInsufficientFunds))
                .await,
            Decision::Declined {
                code: "insufficient_funds".into()
            }
        );
    }

    #[test]
    fn only_the_simulator_gateway_is_configurable() {
        assert_eq!("simulator".parse::<Gateway>().ok(), Some(Gateway::Simulator));
        assert!("stripe".parse::<Gateway>().is_err());
        assert!("Simulator".parse::<Gateway>().is_err());
    }
}
