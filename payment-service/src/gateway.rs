//! The payment gateway behind every charge and refund. Only the simulator exists: it answers
//! like Stripe does for its test payment methods, deterministically and without any I/O.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use shared::metrics::CounterFamily;

/// `gateway_requests_total{operation, result}`: the gateway asked to charge (`approved`,
/// `declined`) or to refund (`refunded`). Registered when the service starts.
pub static GATEWAY_REQUESTS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "gateway_requests",
        "Requests to the payment gateway, by operation and result",
    )
});

/// Stripe's test payment methods the simulator knows, with the decline code each one earns.
pub const TEST_METHODS: [(&str, Option<&str>); 3] = [
    ("pm_card_visa", None),
    ("pm_card_chargeDeclined", Some("card_declined")),
    ("pm_card_chargeDeclinedInsufficientFunds", Some("insufficient_funds")),
];

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
    pub payment_method: &'a str,
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
    /// Refuses, before anything is recorded, a payment method this gateway cannot charge; the
    /// error names the accepted ones.
    pub fn check_method(&self, payment_method: &str) -> Result<(), String> {
        match self {
            Self::Simulator if simulate(payment_method).is_some() => Ok(()),
            Self::Simulator => Err(format!(
                "paymentMethod must be one of the simulator's test payment methods: {}",
                TEST_METHODS.map(|(m, _)| m).join(", ")
            )),
        }
    }

    /// Asks the gateway to charge. `None` for a payment method [`Gateway::check_method`] refuses.
    pub async fn charge(&self, attempt: &ChargeAttempt<'_>) -> Option<Decision> {
        let decision = match self {
            Self::Simulator => {
                tracing::debug!(
                    idempotency_key = attempt.idempotency_key,
                    order_id = attempt.order_id,
                    amount = attempt.amount,
                    currency = attempt.currency,
                    "simulated gateway charge"
                );
                simulate(attempt.payment_method)?
            }
        };
        let result = match &decision {
            Decision::Approved => "approved",
            Decision::Declined { .. } => "declined",
        };
        GATEWAY_REQUESTS.inc(&[("operation", "charge"), ("result", result)]);
        Some(decision)
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

fn simulate(payment_method: &str) -> Option<Decision> {
    TEST_METHODS
        .iter()
        .find(|(m, _)| *m == payment_method)
        .map(|(_, decline)| match decline {
            None => Decision::Approved,
            Some(code) => Decision::Declined {
                code: (*code).to_string(),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(payment_method: &str) -> ChargeAttempt<'_> {
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
        assert_eq!(g.charge(&attempt("pm_card_visa")).await, Some(Decision::Approved));
        assert_eq!(
            g.charge(&attempt("pm_card_chargeDeclined")).await,
            Some(Decision::Declined {
                code: "card_declined".into()
            })
        );
        assert_eq!(
            g.charge(&attempt("pm_card_chargeDeclinedInsufficientFunds")).await,
            Some(Decision::Declined {
                code: "insufficient_funds".into()
            })
        );
        assert_eq!(g.charge(&attempt("pm_card_mastercard")).await, None);
    }

    #[test]
    fn unknown_payment_methods_are_refused_naming_the_accepted_ones() {
        let g = Gateway::Simulator;
        assert!(g.check_method("pm_card_visa").is_ok());
        for bad in ["", "pm_card_Visa", "tok_visa", "pm_card_visa "] {
            let detail = g.check_method(bad).err().unwrap_or_default();
            for (m, _) in TEST_METHODS {
                assert!(detail.contains(m), "{bad:?}: {detail}");
            }
        }
    }

    #[test]
    fn only_the_simulator_gateway_is_configurable() {
        assert_eq!("simulator".parse::<Gateway>().ok(), Some(Gateway::Simulator));
        assert!("stripe".parse::<Gateway>().is_err());
        assert!("Simulator".parse::<Gateway>().is_err());
    }
}
