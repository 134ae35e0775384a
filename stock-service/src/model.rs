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
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutItemRequest {
    pub name: String,
    pub price: u64,
    pub currency: String,
    pub available: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReserveRequest {
    pub item_id: u64,
    pub quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationResponse {
    pub reservation_id: String,
    pub item_id: u64,
    pub quantity: u32,
    pub total_fee: u64,
    pub currency: String,
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
    pub status: String,
}

/// Upper bounds. A reservation's total (price × quantity) is at most what one charge may be
/// ([`shared::money::MAX_CHARGE`]): a larger one would be reserved and then refused by the
/// payment service with a message about an amount the customer never sent. That also keeps
/// every amount exact in Redis' Lua numbers (doubles).
pub const MAX_QUANTITY: u32 = 1000;
pub const MAX_PRICE: u64 = shared::money::MAX_CHARGE / MAX_QUANTITY as u64;
pub const MAX_AVAILABLE: u64 = 1_000_000_000;
