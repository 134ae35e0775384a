//! Orders, their steps and the reconciliation totals in Redis.
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

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use shared::idempotency::{BEGIN_LUA, Begin, CLOCK_LUA, IdempotencyStore, KeyRef, SETTLE_LUA, StoredResponse};
use shared::ids::{SHARDS, new_id_in_shard, shard_of};
use shared::redis_pool::Pool;

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
fn active_key_of(id: &str) -> String {
    format!("order:{}:active", tag(id))
}
fn active_key(shard: u16) -> String {
    format!("order:{{ord:{shard}}}:active")
}

/// A checkout's Idempotency-Key record, kept in the slot of the orders made for it: the shard
/// of the client's key, which [`new_order_id`] gives the order too.
pub fn checkout_key(key: &str, fingerprint: String) -> KeyRef {
    KeyRef::from_stored(format!("order:{{ord:{}}}:key:{key}", shard_of(key)), fingerprint)
}

/// A fresh order id in the slot of the checkout key `key`.
pub fn new_order_id(key: &str) -> String {
    new_id_in_shard("ord", shard_of(key))
}

// Creates the order, counts it as processing and leases it to its runner; 0 if it exists.
// keys: order, steps, totals, active. a: id, itemId, quantity, customerId, paymentMethod, now,
// step JSON, idempotency key, fingerprint, owner, lease ms.
const CREATE_LUA: &str = r#"
local function create_order(keys, a)
  if redis.call('EXISTS', keys[1]) == 1 then return 0 end
  local now = now_ms()
  redis.call('HSET', keys[1], 'orderId', a[1], 'status', 'processing', 'itemId', a[2], 'quantity', a[3],
    'customerId', a[4], 'paymentMethod', a[5], 'currency', 'XXX', 'amount', '0', 'createdAt', a[6],
    'updatedAt', a[6], 'idemKey', a[8], 'fp', a[9], 'owner', a[10])
  redis.call('RPUSH', keys[2], a[7])
  redis.call('HINCRBY', keys[3], 'XXX:processing:count', 1)
  redis.call('ZADD', keys[4], now + tonumber(a[11]), a[1])
  return 1
end
"#;

// For a checkout whose key's order is gone. KEYS: order, steps, totals, active; ARGV as above.
// CREATE_LUA reads the clock (`now_ms`) that BEGIN_LUA brings where both run in one script.
static CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}\n{CREATE_LUA}\nreturn create_order(KEYS, ARGV)")));

// Takes the checkout's Idempotency-Key and, when it is new, creates its order in the same step:
// the key's record shares the order's slot, so no crash can leave one without the other.
// KEYS: key record, order, steps, totals, active. ARGV: CREATE's, then the key's ttl ms.
static BEGIN_CHECKOUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{BEGIN_LUA}
{CREATE_LUA}
local decision = begin(KEYS[1], ARGV[9], ARGV[1], tonumber(ARGV[11]), ARGV[12])
if decision[1] == 'new' then create_order({{KEYS[2], KEYS[3], KEYS[4], KEYS[5]}}, ARGV) end
return decision"#
    ))
});

// Settles the checkout's key and, in the same step, takes its order out of recovery's set: a
// settled key leaves recovery nothing to do — unless the order still owes stock a release
// (`releaseOwed`): then it stays in the set, due at once, until a release gets through
// (RELEASE_DONE). mode: 'finish' or 'free'; a: `finish`'s arguments (token = order id first).
static SETTLE_CHECKOUT_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"{SETTLE_LUA}
{CLOCK_LUA}
local function settle_checkout(key, active, order, mode, a)
  if mode == 'free' then free(key, a[1]) else finish(key, a) end
  if redis.call('HEXISTS', order, 'releaseOwed') == 1 then
    redis.call('ZADD', active, now_ms(), a[1])
  else
    redis.call('ZREM', active, a[1])
  end
end
"#
    )
});

// KEYS: key record, active, order. ARGV: mode, then `finish`'s arguments.
static SETTLE_CHECKOUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}\nsettle_checkout(KEYS[1], KEYS[2], KEYS[3], ARGV[1], {{unpack(ARGV, 2)}})\nreturn 1",
        *SETTLE_CHECKOUT_LUA
    ))
});

// Takes over an order whose runner's lease ran out: exactly one caller wins, because the score
// moves into the future in the same step. KEYS: order, active. ARGV: id, owner, lease ms.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{CLOCK_LUA}
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) > now then return 'held' end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'claims', 1)
return 'claimed'
"#
    ))
});

// Extends the owner's lease, or sets when recovery should look again (defer). KEYS: order,
// active. ARGV: id, owner, ms from now.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{CLOCK_LUA}
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
"#
    ))
});

// Orders whose lease has run out. KEYS: active. ARGV: how many.
static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{CLOCK_LUA}
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
"#
    ))
});

// Records one saga event: appends the step, sets fields, and when the status, currency or
// amount changes moves the order between totals buckets in the same step, so the totals
// always match the orders. A terminal order is never changed again, and only its owner
// changes it. ARGV: now, step JSON ('' for none), new status ('' to keep), currency ('' to
// keep), amount ('' to keep), owner, then field/value pairs.
const UPDATE_LUA: &str = r#"
local function update(keys, a, pairs_from)
  local function fmt(n) return string.format('%d', n) end
  local cur = redis.call('HMGET', keys[1], 'status', 'currency', 'amount', 'owner')
  if not cur[1] then return 'missing' end
  if cur[1] ~= 'processing' then return 'terminal' end
  if cur[4] and cur[4] ~= a[6] then return 'fenced' end
  local status = cur[1]
  if a[3] ~= '' then status = a[3] end
  local currency = cur[2]
  if a[4] ~= '' then currency = a[4] end
  local amount = cur[3]
  if a[5] ~= '' then amount = a[5] end
  -- One HSET of what changed: every write is fsynced and lands in the AOF.
  local set = {'updatedAt', a[1]}
  local function put(field, value) set[#set + 1] = field; set[#set + 1] = value end
  if status ~= cur[1] or currency ~= cur[2] or amount ~= cur[3] then
    local function add(bucket, field, n)
      if tonumber(n) ~= 0 then redis.call('HINCRBY', keys[3], bucket .. ':' .. field, n) end
    end
    add(cur[2] .. ':' .. cur[1], 'count', -1)
    add(cur[2] .. ':' .. cur[1], 'amount', fmt(-tonumber(cur[3])))
    add(currency .. ':' .. status, 'count', 1)
    add(currency .. ':' .. status, 'amount', amount)
    if status ~= cur[1] then put('status', status) end
    if currency ~= cur[2] then put('currency', currency) end
    if amount ~= cur[3] then put('amount', amount) end
  end
  for i = pairs_from, #a, 2 do put(a[i], a[i + 1]) end
  redis.call('HSET', keys[1], unpack(set))
  if a[2] ~= '' then redis.call('RPUSH', keys[2], a[2]) end
  return 'ok'
end
"#;

static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{UPDATE_LUA}\nreturn update(KEYS, ARGV, 7)")));

// Records the order's end and, in the same step, settles its key and retires it from
// recovery's set — one round trip for the checkout's last state change. KEYS: UPDATE's, then
// key record, active. ARGV: UPDATE's first six, 'finish' or 'free', `finish`'s seven
// arguments (token = order id first), then field/value pairs.
static UPDATE_AND_SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{UPDATE_LUA}
{}
local r = update(KEYS, ARGV, 15)
if r == 'ok' then settle_checkout(KEYS[4], KEYS[5], KEYS[1], ARGV[7], {{unpack(ARGV, 8, 14)}}) end
return r"#,
        *SETTLE_CHECKOUT_LUA
    ))
});

// An ended order's owed release was answered: no longer owed, and the step is on its record.
// Recovery retires the order when it settles its key. KEYS: order, steps. ARGV: step JSON.
static RELEASE_DONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HDEL', KEYS[1], 'releaseOwed') == 1 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return 1
"#,
    )
});

// Deletes an order that never began: created, but its Idempotency-Key was never taken for it
// (an older version wrote the two apart, and a process could die in between, or another
// request held the key; BEGIN_CHECKOUT now writes both at once), or taken by a request that
// never learnt so (UNDO_BEGIN). Nothing downstream can have happened — the saga starts only
// after its request learns the key is taken — so it leaves no trace, totals included.
// keys: order, steps, totals, active.
const ABANDON_LUA: &str = r#"
local function abandon(keys, id)
  local cur = redis.call('HMGET', keys[1], 'status', 'reservationId', 'chargeId')
  if cur[1] ~= 'processing' or cur[2] or cur[3] then return 0 end
  redis.call('DEL', keys[1], keys[2])
  redis.call('HINCRBY', keys[3], 'XXX:processing:count', -1)
  redis.call('ZREM', keys[4], id)
  return 1
end
"#;

// KEYS: order, steps, totals, active. ARGV: id.
static ABANDON: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{ABANDON_LUA}\nreturn abandon(KEYS, ARGV[1])")));

// Takes back BEGIN_CHECKOUT for a request that got no answer from it: frees the key if it was
// taken for this request's order, and abandons that order. 'undone' when the key is not held
// for this request (any more); 'held' when another request's order holds it.
// KEYS: key record, order, steps, totals, active. ARGV: the request's order id.
static UNDO_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{SETTLE_LUA}
{ABANDON_LUA}
local holder = redis.call('HGET', KEYS[1], 'token')
if holder and holder ~= ARGV[1] then return 'held' end
free(KEYS[1], ARGV[1])
abandon({{KEYS[2], KEYS[3], KEYS[4], KEYS[5]}}, ARGV[1])
return 'undone'"#
    ))
});

/// What a runner needs to resume an order from its last recorded step.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The reservation, once recorded: id, total fee, currency.
    pub reservation: Option<(String, u64, String)>,
    pub charge_id: Option<String>,
    /// Loaded to resume the order: an earlier runner worked on it and may have sent calls
    /// whose answers nobody recorded.
    pub resumed: bool,
    /// The order ended, but the release of its reservation never got through to stock.
    pub release_owed: bool,
}

/// What an attempt to change an order found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The order had already ended; nothing changed.
    Terminal,
    /// Another runner owns the order now; nothing changed.
    Fenced,
    Missing,
    /// Redis did not answer: the change may or may not have been applied.
    Unknown,
}

/// What a claim on an order found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the order now.
    Claimed,
    /// Its runner's lease is still live.
    Held,
    /// No such order (it was never created).
    Gone,
}

/// An order as stored, with what is needed to finish it and settle its key.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub order: NewOrder,
    pub idempotency_key: String,
    pub fingerprint: String,
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
    /// With the order's end: settle its key in the same step (and retire the order).
    pub settle: Option<Settle<'a>>,
}

/// How an order's end settles its key: its answer stored (`store`), or the key freed.
pub struct Settle<'a> {
    pub key: &'a KeyRef,
    pub store: bool,
    pub idempotency: &'a IdempotencyStore,
}

#[derive(Clone)]
pub struct OrderStore {
    pool: Pool,
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
    if text(0).as_deref().is_none_or(|s| s == "processing") {
        return None;
    }
    Some(StoredResponse {
        status: text(1)?.parse().ok()?,
        content_type: text(2)?,
        body: fields.get(3).cloned().flatten()?,
        location: None,
    })
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

    /// Takes the checkout's key ([`checkout_key`]) for `order` (its id from [`new_order_id`])
    /// and, when the key is new, creates the order leased to `owner`, in one step. Any other
    /// decision leaves nothing behind.
    pub async fn begin_checkout(
        &self,
        order: &NewOrder,
        key: &KeyRef,
        owner: &str,
        idempotency: &IdempotencyStore,
    ) -> Result<Begin, OrderError> {
        let reply: Vec<redis::Value> = shared::redis_pool::traced("idempotency.begin", async {
            let mut conn = self.pool.get().await?;
            let mut inv = BEGIN_CHECKOUT.key(key.redis_key());
            self.create_args(&mut inv, order, key, owner, idempotency.lease());
            Ok::<_, OrderError>(
                inv.arg(idempotency.ttl().as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await?,
            )
        })
        .await?;
        Ok(IdempotencyStore::decision(&reply)?)
    }

    fn create_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        order: &NewOrder,
        key: &KeyRef,
        owner: &str,
        lease: Duration,
    ) {
        let now = shared::time::now_rfc3339();
        let id = &order.order_id;
        inv.key(order_key(id))
            .key(steps_key(id))
            .key(totals_key_of(id))
            .key(active_key_of(id))
            .arg(id)
            .arg(order.item_id)
            .arg(order.quantity)
            .arg(&order.customer_id)
            .arg(&order.payment_method)
            .arg(&now)
            .arg(step_json("created", "succeeded", &now))
            .arg(key.redis_key())
            .arg(key.fingerprint())
            .arg(owner)
            .arg(lease.as_millis() as u64);
    }

    /// Creates the order, leased to `owner` for `lease`, remembering its Idempotency-Key so
    /// that whoever finishes the order can settle the key. False if it already exists.
    pub async fn create(
        &self,
        order: &NewOrder,
        key: &KeyRef,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, OrderError> {
        let mut conn = self.pool.get().await?;
        let mut inv = CREATE.prepare_invoke();
        self.create_args(&mut inv, order, key, owner, lease);
        let created: i64 = inv.invoke_async(&mut conn).await?;
        Ok(created == 1)
    }

    /// Applies a change on behalf of `owner`.
    pub async fn update(&self, order_id: &str, owner: &str, change: Change<'_>) -> Result<Applied, OrderError> {
        let mut conn = self.pool.get().await?;
        let now = shared::time::now_rfc3339();
        // Settling needs the answer to store: without one, the change is recorded alone.
        let settling = change.settle.as_ref().zip(change.response);
        let script: &Script = if settling.is_some() {
            &UPDATE_AND_SETTLE
        } else {
            &UPDATE
        };
        let mut inv = script.key(order_key(order_id));
        inv.key(steps_key(order_id)).key(totals_key_of(order_id));
        inv.arg(&now)
            .arg(change.step.map(|(n, s)| step_json(n, s, &now)).unwrap_or_default())
            .arg(change.status.unwrap_or(""))
            .arg(change.currency.unwrap_or(""))
            .arg(change.amount.map(|a| a.to_string()).unwrap_or_default())
            .arg(owner);
        if let Some((settle, resp)) = settling {
            inv.key(settle.key.redis_key()).key(active_key_of(order_id));
            inv.arg(if settle.store { "finish" } else { "free" });
            settle.idempotency.finish_args(&mut inv, settle.key, order_id, resp);
        }
        for (field, value) in &change.fields {
            inv.arg(*field).arg(value);
        }
        if let Some(resp) = change.response {
            inv.arg("respStatus").arg(resp.status);
            inv.arg("respCtype").arg(&resp.content_type);
            inv.arg("respBody").arg(&resp.body[..]);
        }
        let reply: String = inv.invoke_async(&mut conn).await?;
        Ok(match reply.as_str() {
            "ok" => Applied::Yes,
            "terminal" => Applied::Terminal,
            "fenced" => Applied::Fenced,
            _ => Applied::Missing,
        })
    }

    /// Takes over an order whose lease ran out.
    pub async fn claim(&self, order_id: &str, owner: &str, lease: Duration) -> Result<Claim, OrderError> {
        let mut conn = self.pool.get().await?;
        let reply: String = CLAIM
            .key(order_key(order_id))
            .key(active_key_of(order_id))
            .arg(order_id)
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(match reply.as_str() {
            "claimed" => Claim::Claimed,
            "held" => Claim::Held,
            _ => Claim::Gone,
        })
    }

    /// Moves the owner's lease to `from_now` from now: renewal while working, or when recovery
    /// should look again. False when the order is no longer this owner's.
    pub async fn lease(&self, order_id: &str, owner: &str, from_now: Duration) -> Result<bool, OrderError> {
        let mut conn = self.pool.get().await?;
        let renewed: i64 = LEASE
            .key(order_key(order_id))
            .key(active_key_of(order_id))
            .arg(order_id)
            .arg(owner)
            .arg(from_now.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Settles the key of an ended order — stores its `answer`, or with None frees it — and
    /// retires the order from recovery's set (unless it still owes a release), in one step.
    pub async fn settle_key(
        &self,
        order_id: &str,
        key: &KeyRef,
        answer: Option<&StoredResponse>,
        idempotency: &IdempotencyStore,
    ) -> Result<(), OrderError> {
        let operation = if answer.is_some() {
            "idempotency.finish"
        } else {
            "idempotency.free"
        };
        shared::redis_pool::traced(operation, async {
            let mut conn = self.pool.get().await?;
            let mut inv = SETTLE_CHECKOUT.key(key.redis_key());
            inv.key(active_key_of(order_id)).key(order_key(order_id));
            match answer {
                Some(resp) => {
                    inv.arg("finish");
                    idempotency.finish_args(&mut inv, key, order_id, resp);
                }
                None => {
                    inv.arg("free").arg(order_id);
                }
            }
            let _: i64 = inv.invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` orders of one shard whose lease has run out.
    pub async fn due(&self, shard: u16, limit: usize) -> Result<Vec<String>, OrderError> {
        let mut conn = self.pool.get().await?;
        Ok(DUE.key(active_key(shard)).arg(limit).invoke_async(&mut conn).await?)
    }

    /// The order as created, with its key and progress, for a runner resuming it.
    pub async fn load(&self, order_id: &str) -> Result<Option<(StoredOrder, Progress)>, OrderError> {
        let mut conn = self.pool.get().await?;
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(order_key(order_id))
            .arg(&[
                "itemId",
                "quantity",
                "customerId",
                "paymentMethod",
                "idemKey",
                "fp",
                "reservationId",
                "amount",
                "currency",
                "chargeId",
                "releaseOwed",
            ])
            .query_async(&mut conn)
            .await?;
        let get = |i: usize| fields.get(i).cloned().flatten();
        let (Some(item_id), Some(quantity), Some(customer_id), Some(payment_method), Some(key), Some(fp)) =
            (get(0), get(1), get(2), get(3), get(4), get(5))
        else {
            return Ok(None);
        };
        let (Ok(item_id), Ok(quantity)) = (item_id.parse(), quantity.parse()) else {
            return Ok(None);
        };
        let reservation = match (get(6), get(7).and_then(|a| a.parse().ok()), get(8)) {
            (Some(rid), Some(amount), Some(currency)) => Some((rid, amount, currency)),
            _ => None,
        };
        let stored = StoredOrder {
            order: NewOrder {
                order_id: order_id.to_string(),
                item_id,
                quantity,
                customer_id,
                payment_method,
            },
            idempotency_key: key,
            fingerprint: fp,
        };
        Ok(Some((
            stored,
            Progress {
                reservation,
                charge_id: get(9),
                resumed: true,
                release_owed: get(10).is_some(),
            },
        )))
    }

    /// Records that stock answered an ended order's owed release with `status` (see
    /// RELEASE_DONE).
    pub async fn release_done(&self, order_id: &str, status: &str) -> Result<(), OrderError> {
        let mut conn = self.pool.get().await?;
        let now = shared::time::now_rfc3339();
        let _: i64 = RELEASE_DONE
            .key(order_key(order_id))
            .key(steps_key(order_id))
            .arg(step_json("release", status, &now))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes back [`OrderStore::begin_checkout`] for `order_id` after Redis did not answer it
    /// (see UNDO_BEGIN): true when neither the key nor an order is left for this request,
    /// false when the key is held by another request's order.
    pub async fn undo_begin(&self, order_id: &str, key: &KeyRef) -> Result<bool, OrderError> {
        let mut conn = self.pool.get().await?;
        let outcome: String = UNDO_BEGIN
            .key(key.redis_key())
            .key(order_key(order_id))
            .key(steps_key(order_id))
            .key(totals_key_of(order_id))
            .key(active_key_of(order_id))
            .arg(order_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(outcome == "undone")
    }

    /// Removes an order that never began (see ABANDON); false if it had begun after all.
    pub async fn abandon(&self, order_id: &str) -> Result<bool, OrderError> {
        let mut conn = self.pool.get().await?;
        let removed: i64 = ABANDON
            .key(order_key(order_id))
            .key(steps_key(order_id))
            .key(totals_key_of(order_id))
            .key(active_key_of(order_id))
            .arg(order_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// The final response of an ended order (None while it is processing).
    pub async fn final_response(&self, order_id: &str) -> Result<Option<StoredResponse>, OrderError> {
        let mut conn = self.pool.get().await?;
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(order_key(order_id))
            .arg(&["status", "respStatus", "respCtype", "respBody"])
            .query_async(&mut conn)
            .await?;
        Ok(stored_response(&fields))
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
