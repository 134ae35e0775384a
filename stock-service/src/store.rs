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
//!   for the key's replays (`shared::idempotency::ANSWER_LUA`). On a single node the script
//!   takes the key's record itself and settles it with the answer instead.
//! - `stock:{catalog}:items` set: ids of every item (a listing index only)

use std::sync::LazyLock;
use std::time::Duration;

use redis::{AsyncCommands, Script};
use shared::idempotency::{Answer, Begin};
use shared::redis_pool::{Pool, traced};

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

/// Where a reserve, release or complete (`endpoint`) of the item stores its answer: in the
/// item's slot, which the request names, so a retry of the same request looks in the same place.
pub fn answer_key(item_id: u64, endpoint: &str, idempotency_key: &str) -> String {
    format!("stock:{{item:{item_id}}}:answer:{endpoint}:{idempotency_key}")
}

/// Marks a hole in an answer template. JSON text never holds it raw (serde escapes control
/// characters), so no value can be taken for a hole.
const HOLE: char = '\u{1}';

/// The 201 answer to a reserve, with the three values only the script knows left as holes for
/// its `fill`, in this order: totalFee, currency (inside its quotes), expiresAt (likewise).
pub fn reservation_template(rid: &str, item_id: u64, quantity: u32) -> Vec<u8> {
    let probe = ReservationResponse {
        reservation_id: rid.to_string(),
        item_id,
        quantity,
        total_fee: 0,
        currency: HOLE.to_string(),
        status: "reserved".into(),
        expires_at: HOLE.to_string(),
    };
    serde_json::to_string(&probe)
        .unwrap_or_default()
        .replacen(r#""totalFee":0"#, &format!(r#""totalFee":{HOLE}"#), 1)
        .replace(r#""\u0001""#, &format!("\"{HOLE}\""))
        .into_bytes()
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

// Shared by the scripts below, beside CLOCK_LUA's `now_ms` (which `answer_lua` brings through
// BEGIN_LUA): the sweep that returns lapsed reservations of one item to `available`, bounded so
// no script runs long, and filling the holes of an answer template (`reservation_template`).
const PRELUDE: &str = r#"
local function fill(tpl, values)
  local out, pos = {}, 1
  for _, v in ipairs(values) do
    local at = string.find(tpl, '\1', pos, true)
    table.insert(out, string.sub(tpl, pos, at - 1))
    table.insert(out, v)
    pos = at + 1
  end
  table.insert(out, string.sub(tpl, pos))
  return table.concat(out)
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
    Script::new(&format!(
        "{}{}{PRELUDE}\n{body}",
        shared::idempotency::answer_lua(),
        shared::time::RFC3339_LUA
    ))
}

// Reserve: take the request's key when told to (KEYS[4], ARGV[6..12]; a replay, busy or reused
// key is answered `{'idem', ...}` at once), sweep, then either return the reservation this
// Idempotency-Key already made ('found'), or check and move units from available to reserved,
// create the reservation and its marker ('reserved'), and store the request's answer when given
// its template (KEYS[4], ARGV[6..10]). One script so that concurrent reserves can never both
// pass the availability check. A key taken here and settled with the answer is written once, as
// done (`hold_key` writes it running when there is no answer to settle it with).
// KEYS: item, expiring, marker[, answer or key]. ARGV: reservation key prefix, quantity, new
// reservationId, reservation TTL (ms), marker TTL (ms)[, the answer's fingerprint, status,
// content type, body template, TTL (ms)[, token, lease (ms)]].
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local refused = take_key(KEYS[4], ARGV, 6)
if refused then return refused end
local function reserve()
  local now = now_ms()
  sweep(KEYS[1], KEYS[2], ARGV[1], now, 100)
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local r = redis.call('HMGET', ARGV[1] .. prev, 'quantity', 'totalFee', 'currency', 'expiresAt')
    if r[1] then return {'found', prev, r[1], r[2], r[3], r[4]} end
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
end
local out = reserve()
if out[1] == 'reserved' and KEYS[4] then
  store_answer(KEYS[4], ARGV, 6, fill(ARGV[9], {out[4], out[5], rfc3339_ms(tonumber(out[6]))}))
end
hold_key()
return out
"#,
    )
});

// Release and complete answer 'released', 'completed' or 'not_found'. The one each succeeds
// with stores the request's answer (KEYS[4], ARGV[2..6]) when given one, so the
// Idempotency-Key's record needs no second write. Told to take the key first (ARGV[7..8]), they
// answer a replay, busy or reused key with `{'idem', ...}` instead.
// KEYS: item, reservation, expiring[, answer or key]. ARGV: reservationId[, the answer's
// fingerprint, status, content type, body, TTL (ms)[, token, lease (ms)]].
fn transition_script(succeeds_with: &str, body: &str) -> Script {
    script(&format!(
        "local refused = take_key(KEYS[4], ARGV, 2)\nif refused then return refused end\n\
         local function apply()\n{body}\nend\nlocal out = apply()\n\
         if out == '{succeeds_with}' and KEYS[4] then store_answer(KEYS[4], ARGV, 2) end\nhold_key()\nreturn out\n"
    ))
}

// Release: reserved → released (units back to available). Released, expired: already done.
// Completed: refused. A reservation past its expiry is recorded as expired, not released.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    transition_script(
        Transition::Release.status(),
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
    transition_script(
        Transition::Complete.status(),
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
    /// `fresh`: made now, its answer stored with it; otherwise the one the key made before.
    Reserved {
        reservation: ReservationResponse,
        fresh: bool,
    },
    NotFound,
    OutOfStock {
        available: i64,
    },
    /// The script took the request's key and did not go on: what the key decided instead.
    Refused(Begin),
}

pub enum TransitionOutcome {
    Released,
    Completed,
    NotFound,
    /// As for [`ReserveOutcome::Refused`].
    Refused(Begin),
}

/// The two ways a reservation ends by request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Release,
    Complete,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Complete => "complete",
        }
    }

    /// What its script answers, and the reservation's status, when it succeeds.
    pub fn status(self) -> &'static str {
        match self {
            Self::Release => "released",
            Self::Complete => "completed",
        }
    }
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

    /// Reserves under `idempotency_key` as `rid` (from [`new_reservation_id`]), storing
    /// `answer` (its body a [`reservation_template`]) with it, unless the key reserved before:
    /// that reservation is returned, not fresh.
    pub async fn reserve(
        &self,
        item_id: u64,
        quantity: u32,
        rid: &str,
        idempotency_key: &str,
        answer: &Answer<'_>,
    ) -> Result<ReserveOutcome, StockError> {
        let mut invocation = RESERVE.key(item_key(item_id));
        invocation
            .key(expiring_key(item_id))
            .key(op_key(item_id, idempotency_key))
            .arg(reservation_prefix(item_id))
            .arg(quantity)
            .arg(rid)
            .arg(self.reservation_ttl.as_millis() as u64)
            .arg(self.marker_ttl.as_millis() as u64);
        answer.add_to(&mut invocation);
        let reply: Vec<redis::Value> = self.invoke("stock.reserve", &invocation).await?;
        if let Some(decided) = Answer::refusal(&reply) {
            return Ok(ReserveOutcome::Refused(decided?));
        }
        let field = |i: usize| shared::idempotency::reply_text(&reply, i);
        Ok(match field(0).as_str() {
            kind @ ("reserved" | "found") => ReserveOutcome::Reserved {
                reservation: ReservationResponse {
                    reservation_id: field(1),
                    item_id,
                    quantity: field(2).parse().unwrap_or(quantity),
                    total_fee: field(3).parse().unwrap_or(0),
                    currency: field(4),
                    status: "reserved".into(),
                    expires_at: shared::time::rfc3339_ms(field(5).parse().unwrap_or(0)),
                },
                fresh: kind == "reserved",
            },
            "not_found" => ReserveOutcome::NotFound,
            "out_of_stock" => ReserveOutcome::OutOfStock {
                available: field(1).parse().unwrap_or(0),
            },
            other => {
                return Err(shared::CommonError::Internal(format!("reserve script answered {other:?}")).into());
            }
        })
    }

    /// Releases or completes `rid`; when that succeeds, `answer` is stored in the same step.
    pub async fn transition(
        &self,
        action: Transition,
        rid: &str,
        answer: &Answer<'_>,
    ) -> Result<TransitionOutcome, StockError> {
        let Some(item_id) = item_of_reservation(rid) else {
            return Ok(TransitionOutcome::NotFound);
        };
        let (script, operation) = match action {
            Transition::Release => (&*RELEASE, "stock.release"),
            Transition::Complete => (&*COMPLETE, "stock.complete"),
        };
        let mut invocation = script.key(item_key(item_id));
        invocation
            .key(format!("{}{rid}", reservation_prefix(item_id)))
            .key(expiring_key(item_id))
            .arg(rid);
        answer.add_to(&mut invocation);
        let reply: redis::Value = self.invoke(operation, &invocation).await?;
        if let redis::Value::Array(reply) = &reply
            && let Some(decided) = Answer::refusal(reply)
        {
            return Ok(TransitionOutcome::Refused(decided?));
        }
        let reply = shared::idempotency::reply_text(std::slice::from_ref(&reply), 0);
        Ok(match reply.as_str() {
            "released" => TransitionOutcome::Released,
            "completed" => TransitionOutcome::Completed,
            _ => TransitionOutcome::NotFound,
        })
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
    fn answers_live_in_their_items_slot() {
        assert_eq!(
            answer_key(42, "complete", "k}{1"),
            "stock:{item:42}:answer:complete:k}{1"
        );
    }

    #[test]
    fn a_filled_reservation_template_is_the_answer_serde_renders() {
        let rid = new_reservation_id(u64::MAX);
        let template = String::from_utf8(reservation_template(&rid, u64::MAX, 1000)).unwrap_or_default();
        let (total, currency, expires) = ("9000000000000", "USD", "2026-11-24T08:00:00.000Z");
        // What the script's `fill` does: each hole in turn takes the next value.
        let mut filled = String::new();
        let mut values = [total, currency, expires].into_iter();
        for (i, piece) in template.split(HOLE).enumerate() {
            if i > 0 {
                filled.push_str(values.next().unwrap_or("<too many holes>"));
            }
            filled.push_str(piece);
        }
        assert_eq!(values.next(), None, "a value left over: too few holes in {template}");
        let answer = ReservationResponse {
            reservation_id: rid,
            item_id: u64::MAX,
            quantity: 1000,
            total_fee: 9_000_000_000_000,
            currency: currency.into(),
            status: "reserved".into(),
            expires_at: expires.into(),
        };
        assert_eq!(filled, serde_json::to_string(&answer).unwrap_or_default());
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
