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
    /// The item sold, when the charge is for one: a succeeded charge is divided by the item's
    /// split in effect, if it has one.
    #[schema(minimum = 1, maximum = 9223372036854775807u64)]
    pub item_id: Option<u64>,
}

/// A successful charge (201).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChargeResponse {
    pub charge_id: String,
    /// `succeeded`; `pending` for a Pix waiting for its payer.
    #[schema(pattern = "^(succeeded|pending)$")]
    pub status: String,
    pub amount: u64,
    pub currency: String,
    pub order_id: String,
    /// A pending Pix: the code the payer pays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pix: Option<PixCode>,
}

/// What the payer of a Pix needs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PixCode {
    pub code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefundRequest {
    pub charge_id: String,
    /// Minor units; what remains of the charge when left out.
    #[schema(minimum = 1, maximum = 9000000000000u64)]
    pub amount: Option<u64>,
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
    /// `succeeded`, `failed` (declined), `partially_refunded` or `refunded`; a Pix is `pending`
    /// until paid, `canceled` when its order expired first.
    #[schema(pattern = "^(succeeded|failed|partially_refunded|refunded|pending|canceled)$")]
    pub status: String,
    pub amount: u64,
    pub currency: String,
    pub order_id: String,
    /// The last refund's id; null until the charge is refunded.
    pub refund_id: Option<String>,
    /// Refunded so far, in minor units.
    pub amount_refunded: u64,
    pub customer_id: String,
    /// Present on a declined (`failed`) charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<String>,
    /// The provider that took (or declined) the charge; refunds go to it.
    pub gateway: String,
    /// The provider's own id for the charge.
    pub gateway_reference: String,
    /// The split the charge was divided by, and each recipient's part; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<crate::splits::SplitPart>,
    /// A Pix's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pix: Option<PixCode>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCharges {
    pub order_id: String,
    /// Oldest first, declined ones included.
    pub charges: Vec<Charge>,
}

fn add(entry: &mut CurrencyTotals, kind: &str, metric: &str, value: u64) {
    let tally = if matches!(kind, "c" | "charged") {
        &mut entry.charged
    } else {
        &mut entry.refunded
    };
    if matches!(metric, "n" | "count") {
        tally.count = tally.count.saturating_add(value);
    } else {
        tally.amount = tally.amount.saturating_add(value);
    }
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

/// The books, one entry per currency, and the same per provider under `byGateway`:
/// `{"USD": {"charged": {...}, "refunded": {...}}, "byGateway": {"card-a": {"USD": {...}}}}`.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    #[serde(flatten)]
    pub currencies: BTreeMap<String, CurrencyTotals>,
    #[serde(rename = "byGateway")]
    pub by_gateway: BTreeMap<String, BTreeMap<String, CurrencyTotals>>,
}

/// Written by hand: utoipa renders a flattened map beside a named field as an `allOf` whose
/// map half would refuse `byGateway`. Here `byGateway` is a property and every other member a
/// currency (additionalProperties).
impl utoipa::PartialSchema for Totals {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Ref};
        let currencies = || ObjectBuilder::new().additional_properties(Some(Ref::from_schema_name("CurrencyTotals")));
        ObjectBuilder::new()
            .description(Some("Per currency, and per provider under byGateway"))
            .property(
                "byGateway",
                ObjectBuilder::new().additional_properties(Some(currencies())),
            )
            .required("byGateway")
            .additional_properties(Some(Ref::from_schema_name("CurrencyTotals")))
            .into()
    }
}

impl ToSchema for Totals {}

impl Totals {
    /// Adds one shard's counter field, `card-a:USD:c:a` → value (charged, amount; `r` refunded,
    /// `n` count), to its currency and its provider. Fields named in full
    /// (`card-a:USD:charged:amount`, as older versions counted) add to the same, and a field
    /// without a provider, from before providers, to its currency only; unknown fields are
    /// ignored.
    pub fn add_field(&mut self, field: &str, value: u64) {
        let parts: Vec<&str> = field.split(':').collect();
        let (gateway, currency, kind, metric) = match parts[..] {
            [gateway, currency, kind, metric] => (Some(gateway), currency, kind, metric),
            [currency, kind, metric] => (None, currency, kind, metric),
            _ => return,
        };
        if !valid_currency(currency)
            || !matches!(kind, "c" | "r" | "charged" | "refunded")
            || !matches!(metric, "n" | "a" | "count" | "amount")
        {
            return;
        }
        add(
            self.currencies.entry(currency.to_string()).or_default(),
            kind,
            metric,
            value,
        );
        if let Some(gateway) = gateway {
            let per_gateway = self.by_gateway.entry(gateway.to_string()).or_default();
            add(
                per_gateway.entry(currency.to_string()).or_default(),
                kind,
                metric,
                value,
            );
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
    fn totals_sum_shards_per_currency_and_per_provider_and_always_show_both_tallies() {
        let mut t = Totals::default();
        // Letters, and beside them the full names older versions counted in.
        t.add_field("card-a:USD:charged:count", 1);
        t.add_field("card-a:USD:charged:amount", 998);
        t.add_field("card-a:USD:c:n", 1);
        t.add_field("card-a:USD:c:a", 1000);
        t.add_field("card-b:USD:c:n", 1);
        t.add_field("card-b:USD:c:a", 1000);
        t.add_field("card-a:USD:r:n", 1);
        t.add_field("card-a:USD:r:a", 999);
        t.add_field("EUR:charged:count", 1);
        t.add_field("EUR:charged:amount", 500);
        t.add_field("junk", 7);
        t.add_field("card-a:usd:charged:count", 7);
        t.add_field("card-a:USD:charged:count:x", 7);
        t.add_field("card-a:USD:owed:count", 7);
        let json = serde_json::to_value(&t).ok();
        let zero = serde_json::json!({"count": 0, "amount": 0});
        let expected = serde_json::json!({
            "EUR": {"charged": {"count": 1, "amount": 500}, "refunded": zero},
            "USD": {"charged": {"count": 3, "amount": 2998}, "refunded": {"count": 1, "amount": 999}},
            "byGateway": {
                "card-a": {"USD": {"charged": {"count": 2, "amount": 1998}, "refunded": {"count": 1, "amount": 999}}},
                "card-b": {"USD": {"charged": {"count": 1, "amount": 1000}, "refunded": zero}},
            },
        });
        assert_eq!(json, Some(expected));
    }
}
