//! Request and response bodies, camelCase on the wire, and the limits a charge must respect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::money::{MAX_CHARGE, valid_currency};
use utoipa::ToSchema;

pub const MAX_CUSTOMER_ID_CHARS: usize = 128;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChargeRequest {
    pub order_id: String,
    /// Minor units (cents), 1 to 9000000000000.
    pub amount: u64,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
    pub customer_id: String,
    /// One of Stripe's test payment methods: `pm_card_visa`, `pm_card_chargeDeclined`,
    /// `pm_card_chargeDeclinedInsufficientFunds`.
    pub payment_method: String,
}

impl ChargeRequest {
    /// Everything except the payment method, which the gateway judges. The error is the
    /// `detail` of a 400 `invalid-request`.
    pub fn validate(&self) -> Result<(), String> {
        if !shared::ids::is_safe_id(&self.order_id) {
            return Err("orderId must be 1 to 128 characters of letters, digits, '_' and '-'".into());
        }
        if self.amount == 0 || self.amount > MAX_CHARGE {
            return Err(format!(
                "amount is in minor units and must be between 1 and {MAX_CHARGE}"
            ));
        }
        if !valid_currency(&self.currency) {
            return Err("currency must be an ISO 4217 code such as USD".into());
        }
        let chars = self.customer_id.chars().count();
        if chars == 0 || chars > MAX_CUSTOMER_ID_CHARS || self.customer_id.chars().any(char::is_control) {
            return Err(format!(
                "customerId must be 1 to {MAX_CUSTOMER_ID_CHARS} characters without control characters"
            ));
        }
        Ok(())
    }
}

/// A successful charge (201).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChargeResponse {
    pub charge_id: String,
    /// Always `succeeded`.
    pub status: String,
    pub amount: u64,
    pub currency: String,
    pub order_id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefundRequest {
    pub charge_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundResponse {
    pub refund_id: String,
    pub charge_id: String,
    /// Always `refunded`.
    pub status: String,
    pub amount: u64,
}

/// A recorded charge, as `GET /charges/{chargeId}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub charge_id: String,
    /// `succeeded`, `failed` (declined) or `refunded`.
    pub status: String,
    pub amount: u64,
    pub currency: String,
    pub order_id: String,
    /// Null until the charge is refunded.
    pub refund_id: Option<String>,
    /// Present on a declined (`failed`) charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCharges {
    pub order_id: String,
    /// Oldest first, declined ones included.
    pub charges: Vec<Charge>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargesQuery {
    pub order_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub amount: u64,
}

/// Declined charges are in neither: they moved no money.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CurrencyTotals {
    pub charged: Tally,
    pub refunded: Tally,
}

/// The books, one entry per currency: `{"USD": {"charged": {...}, "refunded": {...}}}`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(transparent)]
pub struct Totals(pub BTreeMap<String, CurrencyTotals>);

impl Totals {
    /// Adds one shard's counter field (`USD:charged:amount` → value); unknown fields are ignored.
    pub fn add_field(&mut self, field: &str, value: u64) {
        let mut parts = field.split(':');
        let (Some(currency), Some(kind), Some(metric), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if !valid_currency(currency) {
            return;
        }
        let entry = self.0.entry(currency.to_string()).or_default();
        let tally = match kind {
            "charged" => &mut entry.charged,
            "refunded" => &mut entry.refunded,
            _ => return,
        };
        match metric {
            "count" => tally.count = tally.count.saturating_add(value),
            "amount" => tally.amount = tally.amount.saturating_add(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChargeRequest {
        ChargeRequest {
            order_id: "ord_0123abcd".into(),
            amount: 999,
            currency: "USD".into(),
            customer_id: "guest".into(),
            payment_method: "pm_card_visa".into(),
        }
    }

    #[test]
    fn a_well_formed_charge_passes_validation() {
        assert_eq!(request().validate(), Ok(()));
        let max = ChargeRequest {
            amount: MAX_CHARGE,
            customer_id: "c".repeat(MAX_CUSTOMER_ID_CHARS),
            ..request()
        };
        assert_eq!(max.validate(), Ok(()));
    }

    #[test]
    fn amounts_outside_one_to_the_cap_are_refused() {
        for amount in [0, MAX_CHARGE + 1, u64::MAX] {
            let r = ChargeRequest { amount, ..request() };
            assert!(r.validate().is_err_and(|e| e.contains("amount")), "{amount}");
        }
    }

    #[test]
    fn currencies_must_be_three_uppercase_letters() {
        for currency in ["usd", "US", "USDD", "U$D", ""] {
            let r = ChargeRequest {
                currency: currency.into(),
                ..request()
            };
            assert!(r.validate().is_err_and(|e| e.contains("currency")), "{currency}");
        }
    }

    #[test]
    fn order_ids_that_could_escape_a_redis_key_are_refused() {
        for order_id in ["", "ord}1", "ord{1", "ord 1", "ord:1", &"o".repeat(129)] {
            let r = ChargeRequest {
                order_id: order_id.into(),
                ..request()
            };
            assert!(r.validate().is_err_and(|e| e.contains("orderId")), "{order_id}");
        }
    }

    #[test]
    fn customer_ids_must_be_1_to_128_printable_characters() {
        for customer_id in [String::new(), "c".repeat(129), "a\nb".into()] {
            let r = ChargeRequest {
                customer_id: customer_id.clone(),
                ..request()
            };
            assert!(r.validate().is_err_and(|e| e.contains("customerId")), "{customer_id:?}");
        }
        // Characters, not bytes: 128 multi-byte characters are fine.
        let r = ChargeRequest {
            customer_id: "é".repeat(128),
            ..request()
        };
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn unknown_charge_fields_are_rejected() {
        let body =
            br#"{"orderId":"o","amount":1,"currency":"USD","customerId":"c","paymentMethod":"pm_card_visa","tip":1}"#;
        assert!(shared::body::parse::<ChargeRequest>(body).is_err());
        let negative =
            br#"{"orderId":"o","amount":-1,"currency":"USD","customerId":"c","paymentMethod":"pm_card_visa"}"#;
        assert!(shared::body::parse::<ChargeRequest>(negative).is_err());
    }

    #[test]
    fn totals_sum_shards_per_currency_and_always_show_both_tallies() {
        let mut t = Totals::default();
        t.add_field("USD:charged:count", 2);
        t.add_field("USD:charged:amount", 1998);
        t.add_field("USD:charged:count", 1);
        t.add_field("USD:charged:amount", 1000);
        t.add_field("USD:refunded:count", 1);
        t.add_field("USD:refunded:amount", 999);
        t.add_field("EUR:charged:count", 1);
        t.add_field("EUR:charged:amount", 500);
        t.add_field("junk", 7);
        t.add_field("usd:charged:count", 7);
        t.add_field("USD:charged:count:x", 7);
        let json = serde_json::to_value(&t).ok();
        let expected = serde_json::json!({
            "EUR": {"charged": {"count": 1, "amount": 500}, "refunded": {"count": 0, "amount": 0}},
            "USD": {"charged": {"count": 3, "amount": 2998}, "refunded": {"count": 1, "amount": 999}},
        });
        assert_eq!(json, Some(expected));
    }
}
