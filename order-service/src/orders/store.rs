//! Orders, their steps and the reconciliation totals in Redis: the keys, and the reads.
//!
//! Keys (the `{ord:S}` hash tag, S = shard of the order id, keeps an order, its steps and the
//! totals it moves in one Redis Cluster slot, so each change is one atomic script):
//! - `order:{ord:S}:order:<orderId>` hash: the order, and its final response once terminal
//! - `order:{ord:S}:steps:<orderId>` list: one JSON step per saga event
//! - `order:{ord:S}:totals` hash: `<CURRENCY>:<status>:count|amount`
//! - `order:{ord:S}:key:<Idempotency-Key>` hash: the checkout's key record (see
//!   `shared::idempotency`), in the shard of the client's key, where its orders are made too
//! - `order:{ord:S}:active` sorted set: orders whose Idempotency-Key is not settled yet, scored
//!   by the time (ms) their runner's lease runs out. A runner renews its lease while it works;
//!   the recovery worker claims an order whose lease ran out (one claimant wins: the claim is
//!   one script) and drives it to its end. The order's `owner` field fences out a runner that
//!   lost its lease: its changes are refused, so only the owner's view becomes the record.
//!
//! An order is counted under currency `XXX` (ISO 4217 "no currency") with amount 0 until its
//! reservation tells its price, then moved to the item's currency.

//!
//! The checkout's writes (scripts) are in [`crate::checkout::store`].

use shared::idempotency::StoredResponse;
use shared::ids::SHARDS;
use shared::redis_pool::Pool;

use crate::error::OrderError;
use crate::ids::OrderId;
use crate::model::{Bucket, OrderView, Totals};

/// An order is counted under this currency, with amount 0, until its reservation tells its price.
pub const NO_CURRENCY: &str = "XXX";

pub(crate) fn order_key(id: &OrderId) -> String {
    format!("order:{{ord:{}}}:order:{id}", id.shard())
}
pub(crate) fn steps_key(id: &OrderId) -> String {
    format!("order:{{ord:{}}}:steps:{id}", id.shard())
}
pub(crate) fn totals_key_of(id: &OrderId) -> String {
    format!("order:{{ord:{}}}:totals", id.shard())
}
/// The shard's outbox: a stream of ended and refunded orders, appended by the script that makes
/// the change, read by payment-service's merchant-webhook dispatcher (the stream's fields are
/// that service's to read: `t` type, `o` order, `i` item, `q` quantity, `u` customer, `m`
/// amount, `c` currency; for a refund also `r` refund id, `ra` its amount, `f` refunded so far,
/// `s` status; the event's time is the entry id's).
pub(crate) fn outbox_key_of(id: &OrderId) -> String {
    shared::outbox::order_outbox(id.shard())
}
pub(crate) fn active_key_of(id: &OrderId) -> String {
    active_key(id.shard())
}
pub(crate) fn active_key(shard: u16) -> String {
    format!("order:{{ord:{shard}}}:active")
}

#[derive(Clone)]
pub struct OrderStore {
    pub(crate) pool: Pool,
}

/// Reads `status, respStatus, respCtype, respBody`: the response once the order has ended.
fn stored_response(fields: &[Option<Vec<u8>>]) -> Option<StoredResponse> {
    let text = |i: usize| {
        fields
            .get(i)
            .cloned()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    if text(0)
        .as_deref()
        .is_none_or(|s| s == "processing" || s == "awaiting_payment")
    {
        return None;
    }
    Some(StoredResponse {
        status: text(1)?.parse().ok()?,
        content_type: text(2)?,
        body: fields.get(3).cloned().flatten()?,
        location: None,
    })
}

impl OrderStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The final response of an ended order (None while it is processing).
    pub async fn final_response(&self, order_id: &OrderId) -> Result<Option<StoredResponse>, OrderError> {
        let mut conn = self.pool.get().await?;
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(order_key(order_id))
            .arg(&["status", "respStatus", "respCtype", "respBody"])
            .query_async(&mut conn)
            .await?;
        Ok(stored_response(&fields))
    }

    pub async fn get(&self, order_id: &OrderId) -> Result<Option<OrderView>, OrderError> {
        let mut conn = self.pool.get().await?;
        let (fields, steps): (Vec<Option<String>>, Vec<String>) = redis::pipe()
            .cmd("HMGET")
            .arg(order_key(order_id))
            .arg(&[
                "status",
                "itemId",
                "quantity",
                "amount",
                "currency",
                "reservationId",
                "chargeId",
                "refundId",
                "createdAt",
                "updatedAt",
                "pixCode",
                "pixExpiresAtMs",
            ])
            .cmd("LRANGE")
            .arg(steps_key(order_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let get = |i: usize| fields.get(i).cloned().flatten();
        let Some(status) = get(0) else {
            return Ok(None);
        };
        let currency = get(4).filter(|c| c != NO_CURRENCY);
        Ok(Some(OrderView {
            order_id: order_id.to_string(),
            status,
            item_id: get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
            quantity: get(2).and_then(|v| v.parse().ok()).unwrap_or(0),
            amount: currency.as_ref().and(get(3)).and_then(|v| v.parse().ok()),
            currency,
            reservation_id: get(5),
            charge_id: get(6),
            refund_id: get(7),
            pix: get(10)
                .zip(get(11).and_then(|ms| ms.parse().ok()))
                .map(|(code, ms)| crate::model::PixView::new(code, ms)),
            steps: steps.iter().filter_map(|s| serde_json::from_str(s).ok()).collect(),
            created_at: get(8).unwrap_or_default(),
            updated_at: get(9).unwrap_or_default(),
        }))
    }

    /// Sums the per-shard totals (one pipelined round trip on a single node).
    pub async fn totals(&self) -> Result<Totals, OrderError> {
        let mut conn = self.pool.get().await?;
        let cmds = (0..SHARDS)
            .map(|shard| {
                redis::cmd("HGETALL")
                    .arg(format!("order:{{ord:{shard}}}:totals"))
                    .to_owned()
            })
            .collect();
        let shards: Vec<Vec<(String, i64)>> = conn.each(cmds).await?;
        let mut totals = Totals::new();
        for (field, value) in shards.into_iter().flatten() {
            let mut parts = field.splitn(3, ':');
            let (Some(currency), Some(status), Some(measure)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let entry = totals.entry(currency.to_string()).or_default();
            let bucket: &mut Bucket = match status {
                "completed" => &mut entry.completed,
                "failed" => &mut entry.failed,
                "compensated" => &mut entry.compensated,
                "processing" => &mut entry.processing,
                "awaiting_payment" => &mut entry.awaiting_payment,
                "refunds" => &mut entry.refunds,
                _ => continue,
            };
            match measure {
                "count" => bucket.count += value,
                "amount" => bucket.amount += value,
                _ => {}
            }
        }
        Ok(totals)
    }
}
