//! Items and reservations in Redis.
//!
//! Keys (the `{item:N}` hash tag puts an item and everything that changes its counts in one
//! Redis Cluster slot, so each script below is atomic there too):
//! - `stock:{item:N}` hash: name, price, currency, available, reserved, sold
//! - `stock:{item:N}:rsv:<reservationId>`: quantity, totalFee, currency, status, expiresAt, as
//!   one string of name/value pairs (shared's record.lua; a hash before #29's eighth pass)
//! - `stock:{item:N}:expiring` sorted set: live reservation ids by expiry time
//! - `stock:{item:N}:op:<Idempotency-Key>`: the reservation a reserve request without a place
//!   for its answer created, written in the same script as the reservation, so a retry after a
//!   crash finds it. A request with one names the reservation in its answer's record instead
//!   (field `made`: the key's record on one node, the hash below on a cluster)
//! - `stock:{item:N}:answer:<reserve|release|complete>:<Idempotency-Key>` hash: on Redis
//!   Cluster, the answer to a reserve, release or complete that succeeded, stored by its script
//!   for the key's replays (shared's `answer.lua`). On a single node the script
//!   takes the key's record itself and settles it with the answer instead.
//! - `stock:{catalog}:items` set: ids of every item (a listing index only)
//!
//! This file holds the keys and the [`Store`] handle; the catalogue's reads and writes are in
//! `items/store.rs`, reservations' in `reservations/store.rs`, each script a `.lua` file there.

use std::time::Duration;

use shared::redis_pool::{Pool, traced};

use crate::error::StockError;

pub(crate) const INDEX: &str = "stock:{catalog}:items";

pub(crate) fn item_key(id: u64) -> String {
    format!("stock:{{item:{id}}}")
}
pub(crate) fn expiring_key(id: u64) -> String {
    format!("stock:{{item:{id}}}:expiring")
}
pub(crate) fn reservation_prefix(id: u64) -> String {
    format!("stock:{{item:{id}}}:rsv:")
}
pub(crate) fn op_key(id: u64, idempotency_key: &str) -> String {
    format!("stock:{{item:{id}}}:op:{idempotency_key}")
}

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    pub(crate) reservation_ttl: Duration,
    pub(crate) marker_ttl: Duration,
}

impl Store {
    pub fn new(pool: Pool, reservation_ttl: Duration, marker_ttl: Duration) -> Self {
        Self {
            pool,
            reservation_ttl,
            marker_ttl,
        }
    }

    /// Runs a request's script (reserve, release, complete) on a pooled connection as one traced
    /// Redis operation.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &shared::lua::Invocation<'_>,
    ) -> Result<T, StockError> {
        traced(operation, async {
            let mut conn = self.pool.get().await?;
            Ok(invocation.invoke_async(&mut conn).await?)
        })
        .await
    }
}
