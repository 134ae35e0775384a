//! What more than one service must agree on about money: the largest charge, what a currency
//! code looks like, and the payment methods a checkout and a charge accept.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest amount of one charge, in minor units. Amounts stay far below 2^53, so they remain
/// exact wherever Redis' Lua sees them as numbers, and per-shard totals have room in HINCRBY's
/// 64-bit integers. The stock service caps prices by it, so that whatever it reserves can be
/// charged.
pub const MAX_CHARGE: u64 = 9_000_000_000_000;

/// A currency code's pattern in a schema: the form [`valid_currency`] checks.
pub const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";

/// The payment methods the gateway takes: Stripe's test payment methods, which its simulator
/// follows. A checkout and a charge accept exactly these (the schema lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PaymentMethod {
    #[serde(rename = "pm_card_visa")]
    CardVisa,
    #[serde(rename = "pm_card_chargeDeclined")]
    CardChargeDeclined,
    #[serde(rename = "pm_card_chargeDeclinedInsufficientFunds")]
    CardChargeDeclinedInsufficientFunds,
    /// The customer's wallet at payment-service.
    #[serde(rename = "wallet")]
    Wallet,
    /// Pix: an asynchronous payment, settled later by the provider's webhook.
    #[serde(rename = "pix")]
    Pix,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 5] = [
        Self::CardVisa,
        Self::CardChargeDeclined,
        Self::CardChargeDeclinedInsufficientFunds,
        Self::Wallet,
        Self::Pix,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CardVisa => "pm_card_visa",
            Self::CardChargeDeclined => "pm_card_chargeDeclined",
            Self::CardChargeDeclinedInsufficientFunds => "pm_card_chargeDeclinedInsufficientFunds",
            Self::Wallet => "wallet",
            Self::Pix => "pix",
        }
    }
}

/// An ISO 4217 alphabetic code in the form the contract asks for: three upper-case letters.
pub fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_methods_serialise_as_their_stripe_names() {
        for method in PaymentMethod::ALL {
            assert_eq!(
                serde_json::to_value(method).ok(),
                Some(serde_json::json!(method.as_str()))
            );
        }
    }

    #[test]
    fn currency_codes_are_three_upper_case_letters() {
        assert!(valid_currency("USD"));
        for bad in ["usd", "US", "USDX", "U5D", "", "ÜSD"] {
            assert!(!valid_currency(bad), "{bad:?}");
        }
    }
}
