//! Request and response bodies, camelCase on the wire, and the limits a charge must respect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::money::{PaymentMethod, valid_currency};
use utoipa::ToSchema;

/// A charge as requested. Its constraints are its schema's, enforced as the document shows
/// them (`shared::schema`); the amount's maximum is [`shared::money::MAX_CHARGE`] (a test
/// checks the two agree).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChargeRequest {
    /// Letters, digits, `_` and `-`: it becomes part of Redis keys.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_-]+$")]
    pub order_id: String,
    /// Minor units (cents).
    #[schema(minimum = 1, maximum = 9000000000000u64)]
    pub amount: u64,
    /// ISO 4217, e.g. `USD`.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
    /// Any characters but control characters.
    #[schema(min_length = 1, max_length = 128, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]+$")]
    pub customer_id: String,
    pub payment_method: PaymentMethod,
}

/// A successful charge (201).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChargeResponse {
    pub charge_id: String,
    /// Always `succeeded`.
    #[schema(pattern = "^succeeded$")]
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
    #[schema(pattern = "^refunded$")]
    pub status: String,
    pub amount: u64,
}

/// A recorded charge, as `GET /charges/{chargeId}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub charge_id: String,
    /// `succeeded`, `failed` (declined) or `refunded`.
    #[schema(pattern = "^(succeeded|failed|refunded)$")]
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

    use serde_json::{Value, json};
    use shared::money::MAX_CHARGE;

    fn request() -> Value {
        json!({"orderId": "ord_0123abcd", "amount": 999, "currency": "USD", "customerId": "guest", "paymentMethod": "pm_card_visa"})
    }

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut body = request();
        body[field] = value;
        body.to_string().into_bytes()
    }

    fn refusal(body: &[u8]) -> Option<String> {
        shared::body::parse::<ChargeRequest>(body).err().map(|e| e.to_string())
    }

    #[test]
    fn a_well_formed_charge_passes_validation() {
        assert_eq!(refusal(request().to_string().as_bytes()), None);
        assert_eq!(refusal(&with("amount", json!(MAX_CHARGE))), None);
        assert_eq!(refusal(&with("customerId", json!("c".repeat(128)))), None);
        // Characters, not bytes: 128 multi-byte characters are fine.
        assert_eq!(refusal(&with("customerId", json!("é".repeat(128)))), None);
    }

    #[test]
    fn amounts_outside_one_to_the_cap_are_refused() {
        for amount in [json!(0), json!(MAX_CHARGE + 1), json!(u64::MAX), json!(-1)] {
            assert!(
                refusal(&with("amount", amount.clone())).is_some_and(|e| e.contains("amount")),
                "{amount}"
            );
        }
    }

    #[test]
    fn currencies_must_be_three_uppercase_letters() {
        for currency in ["usd", "US", "USDD", "U$D", ""] {
            assert!(
                refusal(&with("currency", json!(currency))).is_some_and(|e| e.contains("currency")),
                "{currency}"
            );
        }
    }

    #[test]
    fn order_ids_that_could_escape_a_redis_key_are_refused() {
        for order_id in ["", "ord}1", "ord{1", "ord 1", "ord:1", &"o".repeat(129)] {
            assert!(
                refusal(&with("orderId", json!(order_id))).is_some_and(|e| e.contains("orderId")),
                "{order_id}"
            );
        }
    }

    #[test]
    fn customer_ids_must_be_1_to_128_characters_without_control_characters() {
        for customer_id in [String::new(), "c".repeat(129), "a\nb".into(), "a\u{85}b".into()] {
            assert!(
                refusal(&with("customerId", json!(customer_id))).is_some_and(|e| e.contains("customerId")),
                "{customer_id:?}"
            );
        }
    }

    #[test]
    fn unknown_payment_methods_are_refused_naming_the_accepted_ones() {
        for bad in ["", "pm_card_Visa", "tok_visa", "pm_card_visa "] {
            let detail = refusal(&with("paymentMethod", json!(bad))).unwrap_or_default();
            for method in PaymentMethod::ALL {
                assert!(detail.contains(method.as_str()), "{bad:?}: {detail}");
            }
        }
    }

    #[test]
    fn the_schemas_amount_bound_is_the_largest_charge() {
        let declared = shared::schema::declared::<ChargeRequest>("amount", "maximum");
        assert_eq!(declared, Some(MAX_CHARGE.into()));
        let currency = shared::schema::declared::<ChargeRequest>("currency", "pattern");
        assert_eq!(currency, Some(shared::money::CURRENCY_PATTERN.into()));
    }

    #[test]
    fn unknown_charge_fields_are_rejected() {
        assert!(refusal(&with("tip", json!(1))).is_some_and(|e| e.contains("tip")));
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
