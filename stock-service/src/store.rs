//! Items and reservations in Redis.
//!
//! Keys (the `{item:N}` hash tag puts an item and everything that changes its counts in one
//! Redis Cluster slot, so each script below is atomic there too):
//! - `stock:{item:N}` hash: name, price, currency, available, reserved, sold
//! - `stock:{item:N}:rsv:<reservationId>` hash: quantity, totalFee, currency, status, expiresAt
//! - `stock:{item:N}:expiring` sorted set: live reservation ids by expiry time
//! - `stock:{item:N}:op:<Idempotency-Key>`: the reservation a reserve request created, written
//!   in the same script as the reservation, so a retry after a crash finds it
//! - `stock:{catalog}:items` set: ids of every item (a listing index only)

use std::sync::LazyLock;
use std::time::Duration;

use redis::{AsyncCommands, Script};
use shared::redis_pool::Pool;

use crate::error::StockError;
use crate::model::{Item, ReservationResponse};

const INDEX: &str = "stock:{catalog}:items";

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

/// Reservation ids carry their item (`rsv_<itemId>_<random>`), which is how release and
/// complete find the item's slot without a lookup.
pub fn new_reservation_id(item_id: u64) -> String {
    format!("rsv_{item_id}_{}", uuid::Uuid::new_v4().simple())
}

pub fn item_of_reservation(rid: &str) -> Option<u64> {
    let rest = rid.strip_prefix("rsv_")?;
    let (item, random) = rest.split_once('_')?;
    let valid = !random.is_empty() && random.len() <= 64 && random.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        return None;
    }
    item.parse().ok().filter(|id| *id >= 1)
}

// Shared by the scripts below: Redis' clock (one clock for every replica) and the sweep that
// returns lapsed reservations of one item to `available`, bounded so no script runs long.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function sweep(item, expiring, prefix, now, limit)
  local due = redis.call('ZRANGEBYSCORE', expiring, '-inf', now, 'LIMIT', 0, limit)
  for _, rid in ipairs(due) do
    local rk = prefix .. rid
    local r = redis.call('HMGET', rk, 'status', 'quantity')
    if r[1] == 'reserved' then
      local q = tonumber(r[2])
      redis.call('HINCRBY', item, 'available', q)
      redis.call('HINCRBY', item, 'reserved', -q)
      redis.call('HSET', rk, 'status', 'expired')
    end
    redis.call('ZREM', expiring, rid)
  end
  return #due
end
local function fmt(n) return string.format('%d', n) end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

// Reserve: sweep, then either return the reservation this Idempotency-Key already made, or
// check and move units from available to reserved, create the reservation and its marker.
// One script so that concurrent reserves can never both pass the availability check.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
sweep(KEYS[1], KEYS[2], ARGV[1], now, 100)
local prev = redis.call('GET', KEYS[3])
if prev then
  local r = redis.call('HMGET', ARGV[1] .. prev, 'quantity', 'totalFee', 'currency', 'expiresAt')
  if r[1] then return {'reserved', prev, r[1], r[2], r[3], r[4]} end
end
local it = redis.call('HMGET', KEYS[1], 'available', 'price', 'currency')
if not it[1] then return {'not_found'} end
local q = tonumber(ARGV[2])
local avail = tonumber(it[1])
if avail < q then return {'out_of_stock', fmt(avail)} end
redis.call('HINCRBY', KEYS[1], 'available', -q)
redis.call('HINCRBY', KEYS[1], 'reserved', q)
local total = fmt(tonumber(it[2]) * q)
local expires = fmt(now + tonumber(ARGV[4]))
local rk = ARGV[1] .. ARGV[3]
redis.call('HSET', rk, 'quantity', fmt(q), 'totalFee', total, 'currency', it[3], 'status', 'reserved', 'expiresAt', expires)
redis.call('PEXPIRE', rk, tonumber(ARGV[4]) + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[2], expires, ARGV[3])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[5])
return {'reserved', ARGV[3], fmt(q), total, it[3], expires}
"#,
    )
});

// Release: reserved → released (units back to available). Released, expired: already done.
// Completed: refused. A reservation past its expiry is recorded as expired, not released.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local r = redis.call('HMGET', KEYS[2], 'status', 'quantity', 'expiresAt')
if not r[1] then return 'not_found' end
if r[1] == 'completed' then return 'completed' end
if r[1] == 'reserved' then
  local q = tonumber(r[2])
  redis.call('HINCRBY', KEYS[1], 'available', q)
  redis.call('HINCRBY', KEYS[1], 'reserved', -q)
  if tonumber(r[3]) <= now then
    redis.call('HSET', KEYS[2], 'status', 'expired')
  else
    redis.call('HSET', KEYS[2], 'status', 'released')
  end
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 'released'
"#,
    )
});

// Complete: reserved → completed (units from reserved to sold), unless it has expired, in which
// case the expiry is applied now and the completion refused.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local r = redis.call('HMGET', KEYS[2], 'status', 'quantity', 'expiresAt')
if not r[1] then return 'not_found' end
if r[1] == 'completed' then return 'completed' end
if r[1] ~= 'reserved' then return 'released' end
local q = tonumber(r[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if tonumber(r[3]) <= now then
  redis.call('HINCRBY', KEYS[1], 'available', q)
  redis.call('HINCRBY', KEYS[1], 'reserved', -q)
  redis.call('HSET', KEYS[2], 'status', 'expired')
  return 'released'
end
redis.call('HINCRBY', KEYS[1], 'reserved', -q)
redis.call('HINCRBY', KEYS[1], 'sold', q)
redis.call('HSET', KEYS[2], 'status', 'completed')
return 'completed'
"#,
    )
});

// Create or restock: sets name, price, currency and available; reserved and sold are kept.
// With ARGV[5] = 'absent_only' it only creates (the demo seed never overwrites an item).
static UPSERT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and ARGV[5] == 'absent_only' then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'price', ARGV[2], 'currency', ARGV[3], 'available', ARGV[4])
if not exists then redis.call('HSET', KEYS[1], 'reserved', 0, 'sold', 0) end
return 1
"#,
    )
});

static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return sweep(KEYS[1], KEYS[2], ARGV[1], now_ms(), 500)
"#,
    )
});

pub enum ReserveOutcome {
    Reserved(ReservationResponse),
    NotFound,
    OutOfStock { available: i64 },
}

pub enum TransitionOutcome {
    Released,
    Completed,
    NotFound,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    reservation_ttl: Duration,
    marker_ttl: Duration,
}

const DEMO: [(&str, u64); 10] = [
    ("Espresso beans 1kg", 1000),
    ("French press", 2500),
    ("Burr grinder", 4999),
    ("Paper filters (100)", 500),
    ("Espresso machine", 9999),
    ("Milk jug", 1500),
    ("Pour-over kettle", 3000),
    ("Coffee scale", 7500),
    ("Cleaning tablets", 850),
    ("Travel mug", 1999),
];

impl Store {
    pub fn new(pool: Pool, reservation_ttl: Duration, marker_ttl: Duration) -> Self {
        Self {
            pool,
            reservation_ttl,
            marker_ttl,
        }
    }

    pub async fn get_item(&self, id: u64) -> Result<Option<Item>, StockError> {
        let mut conn = self.pool.get().await?;
        let fields: Vec<Option<String>> = item_fields(id).query_async(&mut conn).await?;
        Ok(item_from(id, &fields))
    }

    pub async fn list_items(&self) -> Result<Vec<Item>, StockError> {
        let mut conn = self.pool.get().await?;
        let mut ids: Vec<u64> = conn.smembers(INDEX).await?;
        ids.sort_unstable();
        // Items are separate slots: one pipeline on a single node, one read each on a cluster.
        let rows: Vec<Vec<Option<String>>> = conn.each(ids.iter().map(|id| item_fields(*id)).collect()).await?;
        Ok(ids.iter().zip(rows).filter_map(|(id, f)| item_from(*id, &f)).collect())
    }

    pub async fn put_item(
        &self,
        id: u64,
        name: &str,
        price: u64,
        currency: &str,
        available: u64,
    ) -> Result<Item, StockError> {
        let mut conn = self.pool.get().await?;
        let _: i64 = UPSERT
            .key(item_key(id))
            .arg(name)
            .arg(price)
            .arg(currency)
            .arg(available)
            .arg("upsert")
            .invoke_async(&mut conn)
            .await?;
        let _: i64 = conn.sadd(INDEX, id).await?;
        drop(conn);
        self.get_item(id)
            .await?
            .ok_or_else(|| StockError::ItemNotFound(id.to_string()))
    }

    /// Creates the demo catalogue if there is no item at all. Never overwrites an item.
    pub async fn seed_demo(&self, units: u64) -> Result<bool, StockError> {
        let mut conn = self.pool.get().await?;
        let count: u64 = conn.scard(INDEX).await?;
        if count > 0 {
            return Ok(false);
        }
        for (i, (name, price)) in DEMO.iter().enumerate() {
            let id = i as u64 + 1;
            let _: i64 = UPSERT
                .key(item_key(id))
                .arg(*name)
                .arg(*price)
                .arg("USD")
                .arg(units)
                .arg("absent_only")
                .invoke_async(&mut conn)
                .await?;
            let _: i64 = conn.sadd(INDEX, id).await?;
        }
        tracing::info!(items = DEMO.len(), units, "seeded the demo catalogue");
        Ok(true)
    }

    pub async fn reserve(
        &self,
        item_id: u64,
        quantity: u32,
        idempotency_key: &str,
    ) -> Result<ReserveOutcome, StockError> {
        let mut conn = self.pool.get().await?;
        let rid = new_reservation_id(item_id);
        let reply: Vec<String> = RESERVE
            .key(item_key(item_id))
            .key(expiring_key(item_id))
            .key(op_key(item_id, idempotency_key))
            .arg(reservation_prefix(item_id))
            .arg(quantity)
            .arg(&rid)
            .arg(self.reservation_ttl.as_millis() as u64)
            .arg(self.marker_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        Ok(match field(0) {
            "reserved" => ReserveOutcome::Reserved(ReservationResponse {
                reservation_id: field(1).to_string(),
                item_id,
                quantity: field(2).parse().unwrap_or(quantity),
                total_fee: field(3).parse().unwrap_or(0),
                currency: field(4).to_string(),
                status: "reserved".into(),
                expires_at: shared::time::rfc3339_ms(field(5).parse().unwrap_or(0)),
            }),
            "not_found" => ReserveOutcome::NotFound,
            "out_of_stock" => ReserveOutcome::OutOfStock {
                available: field(1).parse().unwrap_or(0),
            },
            other => {
                return Err(shared::CommonError::Internal(format!("reserve script answered {other:?}")).into());
            }
        })
    }

    pub async fn release(&self, rid: &str) -> Result<TransitionOutcome, StockError> {
        self.transition(&RELEASE, rid).await
    }

    pub async fn complete(&self, rid: &str) -> Result<TransitionOutcome, StockError> {
        self.transition(&COMPLETE, rid).await
    }

    async fn transition(&self, script: &Script, rid: &str) -> Result<TransitionOutcome, StockError> {
        let Some(item_id) = item_of_reservation(rid) else {
            return Ok(TransitionOutcome::NotFound);
        };
        let mut conn = self.pool.get().await?;
        let reply: String = script
            .key(item_key(item_id))
            .key(format!("{}{rid}", reservation_prefix(item_id)))
            .key(expiring_key(item_id))
            .arg(rid)
            .invoke_async(&mut conn)
            .await?;
        Ok(match reply.as_str() {
            "released" => TransitionOutcome::Released,
            "completed" => TransitionOutcome::Completed,
            _ => TransitionOutcome::NotFound,
        })
    }

    /// Returns every lapsed reservation to `available`; returns how many were swept.
    pub async fn sweep_all(&self) -> Result<u64, StockError> {
        let mut conn = self.pool.get().await?;
        let ids: Vec<u64> = conn.smembers(INDEX).await?;
        let mut swept = 0;
        for id in ids {
            let n: u64 = SWEEP
                .key(item_key(id))
                .key(expiring_key(id))
                .arg(reservation_prefix(id))
                .invoke_async(&mut conn)
                .await?;
            swept += n;
        }
        Ok(swept)
    }
}

fn item_fields(id: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(item_key(id))
        .arg(&["name", "price", "currency", "available", "reserved", "sold"]);
    cmd
}

fn item_from(id: u64, f: &[Option<String>]) -> Option<Item> {
    let get = |i: usize| f.get(i).cloned().flatten();
    let num = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Some(Item {
        id,
        name: get(0)?,
        price: get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
        currency: get(2).unwrap_or_default(),
        available: num(3),
        reserved: num(4),
        sold: num(5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_name_their_item() {
        let rid = new_reservation_id(42);
        assert_eq!(item_of_reservation(&rid), Some(42));
        assert!(shared::ids::is_safe_id(&rid));
    }

    #[test]
    fn malformed_reservation_ids_find_no_item() {
        for bad in [
            "",
            "rsv_",
            "rsv_x_abc",
            "rsv_0_abc",
            "rsv_1_",
            "res_1_abc",
            "rsv_1_ab}c",
            "rsv_1_a b",
        ] {
            assert_eq!(item_of_reservation(bad), None, "{bad}");
        }
    }
}
