//! Request and response bodies, camelCase on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const MAX_QUANTITY: u32 = 1000;

/// A checkout as requested. Its constraints are its schema's, enforced as the document shows
/// them (`shared::schema`); the quantity's maximum is [`MAX_QUANTITY`] (a test checks the two
/// agree).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckoutRequest {
    #[schema(minimum = 1)]
    pub item_id: u64,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: u32,
    /// Printable ASCII without spaces; `guest` when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub customer_id: Option<String>,
    /// `pm_card_visa` when absent.
    #[serde(default)]
    pub payment_method: Option<shared::money::PaymentMethod>,
}

/// A checkout request after validation and defaults.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: crate::ids::OrderId,
    pub item_id: u64,
    pub quantity: u32,
    pub customer_id: String,
    pub payment_method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutCompleted {
    pub order_id: String,
    #[schema(pattern = "^completed$")]
    pub status: String,
    pub item_id: u64,
    pub quantity: u32,
    pub amount: u64,
    pub currency: String,
    pub reservation_id: String,
    pub charge_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutProcessing {
    pub order_id: String,
    /// `processing`; `awaiting_payment` for a Pix waiting for its payer, with `pix`.
    #[schema(pattern = "^(processing|awaiting_payment)$")]
    pub status: String,
    /// What the payer of a Pix needs: the code, and when the checkout expires unpaid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pix: Option<PixView>,
}

/// A checkout awaiting its Pix: what the payer needs, until when.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PixView {
    pub code: String,
    pub expires_at: String,
}

impl PixView {
    /// Kept as milliseconds on the order (the expiry recovery compares); shown as RFC 3339.
    pub fn new(code: String, expires_ms: u64) -> Self {
        Self {
            code,
            expires_at: shared::time::rfc3339_ms(expires_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Step {
    #[schema(value_type = crate::ids::StepName)]
    pub name: String,
    #[schema(value_type = crate::ids::StepStatus)]
    pub status: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    #[schema(value_type = crate::ids::OrderStatus)]
    pub status: String,
    pub item_id: u64,
    pub quantity: u32,
    pub amount: Option<u64>,
    pub currency: Option<String>,
    pub reservation_id: Option<String>,
    pub charge_id: Option<String>,
    pub refund_id: Option<String>,
    /// A Pix checkout's code and expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pix: Option<PixView>,
    pub steps: Vec<Step>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Bucket {
    pub count: i64,
    pub amount: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CurrencyTotals {
    pub completed: Bucket,
    pub failed: Bucket,
    pub compensated: Bucket,
    pub processing: Bucket,
    /// Pix checkouts waiting for their payer (reserved, not paid yet).
    #[serde(default)]
    pub awaiting_payment: Bucket,
    /// Refunds of completed orders (`POST /orders/{orderId}/refunds`): how many, how much. A
    /// refunded order still counts as completed: charged − refunded = completed − refunds.
    pub refunds: Bucket,
}

pub type Totals = BTreeMap<String, CurrencyTotals>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schemas_quantity_bound_is_the_one_the_code_computes_with() {
        let declared = shared::schema::declared::<CheckoutRequest>("quantity", "maximum");
        assert_eq!(declared, Some(MAX_QUANTITY.into()));
    }
}
