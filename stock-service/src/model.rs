//! Request and response bodies, camelCase on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: u64,
    pub name: String,
    /// Minor units (cents).
    pub price: u64,
    pub currency: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// The account that owns the item (`acct_…`): it, or the platform, may change it. Null for
    /// the platform's own items (then left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
}

/// Creates or restocks an item. Its constraints are its schema's, enforced as the document
/// shows them (`shared::schema`); the bounds are [`MAX_PRICE`] and [`MAX_AVAILABLE`] (a test
/// checks the two agree).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutItemRequest {
    /// Not blank; stored trimmed.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// Minor units (cents): at most 9 000 000 000, so that 1 000 units (the most one checkout
    /// takes) stay within one charge's limit.
    #[schema(maximum = 9000000000u64)]
    pub price: u64,
    /// ISO 4217, e.g. `USD`.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
    #[schema(maximum = 1000000000u64)]
    pub available: u64,
    /// The owning account (`acct_` and 32 hex digits). Set by the platform; an account that
    /// puts an item owns it, and may only name itself. Left out: the owner is kept.
    #[schema(pattern = "^acct_[0-9a-f]{32}$")]
    pub owner_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReserveRequest {
    #[schema(minimum = 1)]
    pub item_id: u64,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: u32,
    /// How long the reservation holds, in seconds, when it should not be RESERVATION_TTL: a
    /// checkout paid later (Pix) holds its units while the payer pays.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub hold_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationResponse {
    pub reservation_id: String,
    pub item_id: u64,
    pub quantity: u32,
    pub total_fee: u64,
    pub currency: String,
    #[schema(pattern = "^reserved$")]
    pub status: String,
    pub expires_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservationRef {
    pub reservation_id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationStatus {
    pub reservation_id: String,
    #[schema(pattern = "^(released|completed|restocked)$")]
    pub status: String,
}

/// Upper bounds. A reservation's total (price × quantity) is at most what one charge may be
/// ([`shared::money::MAX_CHARGE`]): a larger one would be reserved and then refused by the
/// payment service with a message about an amount the customer never sent. That also keeps
/// every amount exact in Redis' Lua numbers (doubles).
pub const MAX_QUANTITY: u32 = 1000;
pub const MAX_PRICE: u64 = shared::money::MAX_CHARGE / MAX_QUANTITY as u64;
pub const MAX_AVAILABLE: u64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use shared::schema::declared;

    use super::*;

    #[test]
    fn the_schemas_bounds_are_the_limits_the_code_computes_with() {
        assert_eq!(declared::<PutItemRequest>("price", "maximum"), Some(MAX_PRICE.into()));
        assert_eq!(
            declared::<PutItemRequest>("available", "maximum"),
            Some(MAX_AVAILABLE.into())
        );
        assert_eq!(
            declared::<ReserveRequest>("quantity", "maximum"),
            Some(MAX_QUANTITY.into())
        );
    }
}
