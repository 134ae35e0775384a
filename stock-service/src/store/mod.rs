//! Items and reservations in Redis.
//!
//! Keys (the `{item:N}` hash tag puts an item and everything that changes its counts in one
//! Redis Cluster slot, so each script below is atomic there too):
//! - `stock:{item:N}` hash: name, price, currency, available, reserved, sold
//! - `stock:{item:N}:rsv:<reservationId>` hash: quantity, totalFee, currency, status, expiresAt
//! - `stock:{item:N}:expiring` sorted set: live reservation ids by expiry time
//! - `stock:{item:N}:op:<Idempotency-Key>`: the reservation a reserve request created, written
//!   in the same script as the reservation, so a retry after a crash finds it
//! - `stock:{item:N}:answer:<reserve|release|complete>:<Idempotency-Key>` hash: on Redis
//!   Cluster, the answer to a reserve, release or complete that succeeded, stored by its script
//!   for the key's replays (shared's `answer.lua`). On a single node the script
//!   takes the key's record itself and settles it with the answer instead.
//! - `stock:{catalog}:items` set: ids of every item (a listing index only)
//!
//! Layout: [`items`] the catalogue, [`reservations`] reserve, release, complete and expiry; each
//! script is a `.lua` file beside them, with its test against a real Redis.

mod items;
mod reservations;

use std::time::Duration;

use shared::redis_pool::{Pool, traced};

use crate::error::StockError;

pub use reservations::{
    ReserveOutcome, Transition, TransitionOutcome, answer_key, item_of_reservation, new_reservation_id,
    reservation_template,
};

pub(crate) const INDEX: &str = "stock:{catalog}:items";

fn item_key(id: u64) -> String {
    format!("stock:{{item:{id}}}")
}
fn expiring_key(id: u64) -> String {
    format!("stock:{{item:{id}}}:expiring")
}
fn reservation_prefix(id: u64) -> String {
    format!("stock:{{item:{id}}}:rsv:")
}
fn op_key(id: u64, idempotency_key: &str) -> String {
    format!("stock:{{item:{id}}}:op:{idempotency_key}")
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    reservation_ttl: Duration,
    marker_ttl: Duration,
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
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StockError> {
        traced(operation, async {
            let mut conn = self.pool.get().await?;
            Ok(invocation.invoke_async(&mut conn).await?)
        })
        .await
    }
}

#[cfg(test)]
mod script_tests;
