//! Orders, their steps and the reconciliation totals in Redis.
//!
//! Keys (the `{ord:S}` hash tag, S = shard of the order id, keeps an order, its steps and the
//! totals it moves in one Redis Cluster slot, so each change is one atomic script):
//! - `order:{ord:S}:order:<orderId>` hash: the order, and its final response once terminal
//! - `order:{ord:S}:steps:<orderId>` list: one JSON step per saga event
//! - `order:{ord:S}:totals` hash: `<CURRENCY>:<status>:count|amount`
//!
//! An order is counted under currency `XXX` (ISO 4217 "no currency") with amount 0 until its
//! reservation tells its price, then moved to the item's currency.

use std::sync::LazyLock;

use deadpool_redis::Pool;
use redis::Script;
use shared::idempotency::StoredResponse;
use shared::ids::{SHARDS, shard_of};

use crate::error::OrderError;
use crate::model::{Bucket, NewOrder, OrderView, Step, Totals};

pub const NO_CURRENCY: &str = "XXX";

fn tag(order_id: &str) -> String {
    format!("{{ord:{}}}", shard_of(order_id))
}
fn order_key(id: &str) -> String {
    format!("order:{}:order:{id}", tag(id))
}
fn steps_key(id: &str) -> String {
    format!("order:{}:steps:{id}", tag(id))
}
fn totals_key_of(id: &str) -> String {
    format!("order:{}:totals", tag(id))
}

// Creates the order and counts it as processing, unless it exists (a resumed checkout).
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'status', 'respStatus', 'respCtype', 'respBody')
end
redis.call('HSET', KEYS[1], 'orderId', ARGV[1], 'status', 'processing', 'itemId', ARGV[2], 'quantity', ARGV[3],
  'customerId', ARGV[4], 'paymentMethod', ARGV[5], 'currency', 'XXX', 'amount', '0', 'createdAt', ARGV[6], 'updatedAt', ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('HINCRBY', KEYS[3], 'XXX:processing:count', 1)
return {'created'}
"#,
    )
});

// Records one saga event: appends the step, sets fields, and when the status, currency or
// amount changes moves the order between totals buckets in the same step, so the totals
// always match the orders. A terminal order is never changed again.
// ARGV: now, step JSON ('' for none), new status ('' to keep), currency ('' to keep),
// amount ('' to keep), then field/value pairs.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function fmt(n) return string.format('%d', n) end
local cur = redis.call('HMGET', KEYS[1], 'status', 'currency', 'amount')
if not cur[1] then return 'missing' end
if cur[1] ~= 'processing' then return 'terminal' end
local status = cur[1]
if ARGV[3] ~= '' then status = ARGV[3] end
local currency = cur[2]
if ARGV[4] ~= '' then currency = ARGV[4] end
local amount = cur[3]
if ARGV[5] ~= '' then amount = ARGV[5] end
if status ~= cur[1] or currency ~= cur[2] or amount ~= cur[3] then
  redis.call('HINCRBY', KEYS[3], cur[2] .. ':' .. cur[1] .. ':count', -1)
  redis.call('HINCRBY', KEYS[3], cur[2] .. ':' .. cur[1] .. ':amount', fmt(-tonumber(cur[3])))
  redis.call('HINCRBY', KEYS[3], currency .. ':' .. status .. ':count', 1)
  redis.call('HINCRBY', KEYS[3], currency .. ':' .. status .. ':amount', amount)
end
redis.call('HSET', KEYS[1], 'status', status, 'currency', currency, 'amount', amount, 'updatedAt', ARGV[1])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 'ok'
"#,
    )
});

/// What `create` found.
pub enum Created {
    New,
    /// The order exists: a resumed checkout. Carries the final response when it has one.
    Existing {
        status: String,
        response: Option<StoredResponse>,
    },
}

/// One change to an order.
#[derive(Default)]
pub struct Change<'a> {
    pub step: Option<(&'a str, &'a str)>,
    pub status: Option<&'a str>,
    pub currency: Option<&'a str>,
    pub amount: Option<u64>,
    pub fields: Vec<(&'static str, String)>,
    pub response: Option<&'a StoredResponse>,
}

#[derive(Clone)]
pub struct OrderStore {
    pool: Pool,
}

fn step_json(name: &str, status: &str, at: &str) -> String {
    serde_json::to_string(&Step {
        name: name.into(),
        status: status.into(),
        at: at.into(),
    })
    .unwrap_or_default()
}

impl OrderStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    pub async fn create(&self, order: &NewOrder) -> Result<Created, OrderError> {
        let mut conn = self.pool.get().await?;
        let now = shared::time::now_rfc3339();
        let id = &order.order_id;
        let reply: Vec<Option<Vec<u8>>> = CREATE
            .key(order_key(id))
            .key(steps_key(id))
            .key(totals_key_of(id))
            .arg(id)
            .arg(order.item_id)
            .arg(order.quantity)
            .arg(&order.customer_id)
            .arg(&order.payment_method)
            .arg(&now)
            .arg(step_json("created", "succeeded", &now))
            .invoke_async(&mut conn)
            .await?;
        let text = |i: usize| {
            reply
                .get(i)
                .cloned()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        if text(0).as_deref() == Some("created") {
            return Ok(Created::New);
        }
        let status = text(0).unwrap_or_default();
        let response = match (text(1), text(2), reply.get(3).cloned().flatten()) {
            (Some(s), Some(ctype), Some(body)) => s.parse().ok().map(|status| StoredResponse {
                status,
                content_type: ctype,
                body,
                location: None,
            }),
            _ => None,
        };
        Ok(Created::Existing { status, response })
    }

    /// Applies a change; `Ok(false)` when the order was already terminal (or missing).
    pub async fn update(&self, order_id: &str, change: Change<'_>) -> Result<bool, OrderError> {
        let mut conn = self.pool.get().await?;
        let now = shared::time::now_rfc3339();
        let mut inv = UPDATE.key(order_key(order_id));
        inv.key(steps_key(order_id)).key(totals_key_of(order_id));
        inv.arg(&now)
            .arg(change.step.map(|(n, s)| step_json(n, s, &now)).unwrap_or_default())
            .arg(change.status.unwrap_or(""))
            .arg(change.currency.unwrap_or(""))
            .arg(change.amount.map(|a| a.to_string()).unwrap_or_default());
        for (field, value) in &change.fields {
            inv.arg(*field).arg(value);
        }
        if let Some(resp) = change.response {
            inv.arg("respStatus").arg(resp.status);
            inv.arg("respCtype").arg(&resp.content_type);
            inv.arg("respBody").arg(&resp.body[..]);
        }
        let reply: String = inv.invoke_async(&mut conn).await?;
        Ok(reply == "ok")
    }

    pub async fn get(&self, order_id: &str) -> Result<Option<OrderView>, OrderError> {
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
            steps: steps.iter().filter_map(|s| serde_json::from_str(s).ok()).collect(),
            created_at: get(8).unwrap_or_default(),
            updated_at: get(9).unwrap_or_default(),
        }))
    }

    /// Sums the per-shard totals (one pipelined round trip).
    pub async fn totals(&self) -> Result<Totals, OrderError> {
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for shard in 0..SHARDS {
            pipe.cmd("HGETALL").arg(format!("order:{{ord:{shard}}}:totals"));
        }
        let shards: Vec<Vec<(String, i64)>> = pipe.query_async(&mut conn).await?;
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
