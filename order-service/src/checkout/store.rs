//! The checkout's writes to its order, each one script (a `.lua` file beside this one) on the
//! order's slot: taking the key and creating the order, recording a step, ending the order and
//! settling its key, leases and claims for recovery.
//!
//! The order's `owner` field fences out a runner that lost its lease: its changes are refused,
//! so only the owner's view becomes the record. Each script's arguments are built by one
//! function here, by name, in the order its `.lua` file reads them.

use std::sync::LazyLock;
use std::time::Duration;

use shared::CommonError;
use shared::idempotency::scripts::{BEGIN, SETTLE};
use shared::idempotency::{Begin, IdempotencyStore, KeyRef, StoredResponse};
use shared::ids::shard_of;
use shared::lua::{self, CLOCK, Lib};
use shared::lua::{Invocation as ScriptInvocation, Script};
use shared::ratelimit::{self, Decision, Deferred};

use crate::error::OrderError;
use crate::ids::{ChargeId, OrderId, OrderStatus, ReservationId, StepName, StepStatus};
use crate::model::NewOrder;
use crate::orders::store::{
    OrderStore, STEPS, active_key, active_key_of, order_key, outbox_key_of, relative_steps, step_text, steps_key,
    totals_key_of,
};

/// The order record's functions (order.lua).
static ORDER: Lib = Lib {
    name: "order",
    source: include_str!("order.lua"),
    needs: &[&CLOCK, &SETTLE, &STEPS, &shared::lua::COUNTS],
};

static BEGIN_CHECKOUT: LazyLock<Script> =
    LazyLock::new(|| lua::script(&[&BEGIN, &ORDER, &ratelimit::GCRA], include_str!("begin.lua")));
static CREATE: LazyLock<Script> = LazyLock::new(|| lua::script(&[&ORDER], include_str!("create.lua")));
static SETTLE_CHECKOUT: LazyLock<Script> = LazyLock::new(|| lua::script(&[&ORDER], include_str!("settle.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| lua::script(&[&CLOCK], include_str!("claim.lua")));
static LEASE: LazyLock<Script> = LazyLock::new(|| lua::script(&[&CLOCK], include_str!("lease.lua")));
static DUE: LazyLock<Script> = LazyLock::new(|| lua::script(&[&CLOCK], include_str!("due.lua")));
static UPDATE: LazyLock<Script> = LazyLock::new(|| lua::script(&[&ORDER], include_str!("update.lua")));
static UPDATE_AND_SETTLE: LazyLock<Script> =
    LazyLock::new(|| lua::script(&[&ORDER], include_str!("update_and_settle.lua")));
static RELEASE_DONE: LazyLock<Script> = LazyLock::new(|| lua::script(&[&STEPS], include_str!("release_done.lua")));
static ABANDON: LazyLock<Script> = LazyLock::new(|| lua::script(&[&ORDER], include_str!("abandon.lua")));
static AWAIT: LazyLock<Script> = LazyLock::new(|| lua::script(&[&ORDER], include_str!("await.lua")));
static WAKE: LazyLock<Script> = LazyLock::new(|| lua::script(&[&CLOCK], include_str!("wake.lua")));
static UNDO_BEGIN: LazyLock<Script> = LazyLock::new(|| lua::script(&[&ORDER], include_str!("undo_begin.lua")));

/// What [`OrderStore::begin_checkout`] did: refused the request over its caller's rate limit,
/// or decided on its key, with the limit's decision when it took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Limited(Decision),
    Began(Begin, Option<Decision>),
}

/// A checkout's Idempotency-Key record, kept in the slot of the orders made for it: the shard
/// of the client's key, which [`OrderId::new_for_key`] gives the order too.
pub fn checkout_key(key: &str, fingerprint: String) -> KeyRef {
    KeyRef::from_stored(format!("order:{{ord:{}}}:key:{key}", shard_of(key)), fingerprint)
}

/// The client's Idempotency-Key a [`checkout_key`] record is named for: what an order stores,
/// 30 bytes fewer than the record's name.
fn client_key_of(record: &KeyRef) -> &str {
    let name = record.redis_key();
    name.split_once("}:key:").map_or(name, |(_, key)| key)
}

/// The reservation, as recorded on the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: ReservationId,
    pub total_fee: u64,
    pub currency: String,
}

/// What a runner needs to resume an order from its last recorded step.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub reservation: Option<Reservation>,
    pub charge_id: Option<ChargeId>,
    /// Loaded to resume the order: an earlier runner worked on it and may have sent calls
    /// whose answers nobody recorded.
    pub resumed: bool,
    /// The order ended, but the release of its reservation never got through to stock.
    pub release_owed: bool,
    /// Its charge is a Pix waiting for its payer, until then (ms).
    pub awaiting_until_ms: Option<u64>,
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

impl Applied {
    /// order.lua's `update_order` answer.
    fn from_reply(reply: &str) -> Self {
        match reply {
            "ok" => Self::Yes,
            "terminal" => Self::Terminal,
            "fenced" => Self::Fenced,
            _ => Self::Missing,
        }
    }
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
    /// Steps taken before this change and not yet recorded, as `step_text` wrote them when
    /// they happened: recorded ahead of `step`, in the same write.
    pub earlier: Vec<String>,
    pub step: Option<(StepName, StepStatus)>,
    pub status: Option<OrderStatus>,
    pub reservation: Option<&'a Reservation>,
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

/// A new order's keys, in the order its scripts take them: order, steps, active (a processing
/// order is in no totals).
fn push_order_keys(inv: &mut ScriptInvocation<'_>, id: &OrderId) {
    inv.key(order_key(id)).key(steps_key(id)).key(active_key_of(id));
}

/// A new order's keys and arguments, as order.lua's `new_order_from` reads them.
fn push_new_order(inv: &mut ScriptInvocation<'_>, order: &NewOrder, key: &KeyRef, owner: &str, lease: Duration) {
    // Stored in milliseconds, served as RFC 3339 (shared::time::stored_time).
    let at = shared::time::now_ms().to_string();
    let id = &order.order_id;
    push_order_keys(inv, id);
    inv.arg(id.as_str())
        .arg(order.item_id)
        .arg(order.quantity)
        .arg(&order.customer_id)
        .arg(&order.payment_method)
        .arg(&at)
        .arg(client_key_of(key))
        .arg(key.stored_fingerprint())
        .arg(owner)
        .arg(lease.as_millis() as u64);
}

/// A change's arguments, as order.lua's `change_from` reads them.
fn push_change(inv: &mut ScriptInvocation<'_>, change: &Change<'_>, owner: &str) {
    let at = shared::time::now_rfc3339();
    // order.lua's push_steps reads them one per line, oldest first.
    let now = change.step.map(|(n, s)| step_text(n, s, &at));
    let lines: Vec<&str> = change
        .earlier
        .iter()
        .map(String::as_str)
        .chain(now.as_deref())
        .collect();
    let steps = relative_steps(&lines);
    inv.arg(&at)
        .arg(steps)
        .arg(change.status.map(OrderStatus::as_str).unwrap_or(""))
        .arg(change.reservation.map(|r| r.currency.as_str()).unwrap_or(""))
        .arg(change.reservation.map(|r| r.total_fee.to_string()).unwrap_or_default())
        .arg(owner);
}

/// A change's field/value pairs, the last arguments of the scripts that record it: its
/// reservation's id and its fields.
fn push_pairs(inv: &mut ScriptInvocation<'_>, change: &Change<'_>) {
    if let Some(r) = change.reservation {
        inv.arg("reservationId").arg(r.reservation_id.as_str());
    }
    for (field, value) in &change.fields {
        inv.arg(*field).arg(value);
    }
}

impl OrderStore {
    /// Takes the checkout's key ([`checkout_key`]) for `order` and, when the key is new, creates
    /// the order leased to `owner`, in one step. Any other decision leaves nothing behind.
    /// With `limit` (the caller's rate limit, which the middleware left to this step) it takes
    /// that first, and a request over it does nothing at all.
    pub async fn begin_checkout(
        &self,
        order: &NewOrder,
        key: &KeyRef,
        owner: &str,
        idempotency: &IdempotencyStore,
        limit: Option<&Deferred>,
    ) -> Result<Started, OrderError> {
        let reply: Vec<redis::Value> = shared::redis_pool::traced("idempotency.begin", async {
            let mut conn = self.pool.get().await?;
            let mut inv = BEGIN_CHECKOUT.key(key.redis_key());
            push_new_order(&mut inv, order, key, owner, idempotency.lease());
            inv.arg(idempotency.ttl().as_millis() as u64);
            if let Some(limit) = limit {
                inv.key(&limit.key).arg(limit.interval_us).arg(limit.burst);
            }
            Ok::<_, OrderError>(inv.invoke_async(&mut conn).await?)
        })
        .await?;
        let (reply, taken) = match limit {
            None => (reply, None),
            Some(_) => {
                let taken = match reply.get(1) {
                    Some(redis::Value::Array(numbers)) => Decision::from_reply(
                        &numbers
                            .iter()
                            .map(|n| if let redis::Value::Int(n) = n { *n } else { 0 })
                            .collect::<Vec<_>>(),
                    ),
                    _ => return Err(CommonError::Internal("begin.lua answered no rate limit".into()).into()),
                };
                match reply.into_iter().next() {
                    Some(redis::Value::Array(decision)) => (decision, Some(taken)),
                    _ => return Ok(Started::Limited(taken)),
                }
            }
        };
        let decision = IdempotencyStore::decision(&reply)?;
        // A replay whose body neither the key nor its order stores is a completed order's 200,
        // rendered from the order begin.lua names after the answer.
        if let (Begin::Replay(resp), Some(redis::Value::BulkString(token))) = (&decision, reply.get(5))
            && resp.body.is_empty()
        {
            let order_id = OrderId::from_stored(String::from_utf8_lossy(token).into_owned());
            return match self.final_response(&order_id).await? {
                Some(rendered) => Ok(Started::Began(Begin::Replay(rendered), taken)),
                None => Err(CommonError::Internal(format!("the answer of order {order_id} is missing")).into()),
            };
        }
        Ok(Started::Began(decision, taken))
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
        push_new_order(&mut inv, order, key, owner, lease);
        let created: i64 = inv.invoke_async(&mut conn).await?;
        Ok(created == 1)
    }

    /// Applies a change on behalf of `owner`.
    pub async fn update(&self, order_id: &OrderId, owner: &str, change: Change<'_>) -> Result<Applied, OrderError> {
        let mut conn = self.pool.get().await?;
        // Settling needs the answer to store: without one, the change is recorded alone.
        let settling = change.settle.as_ref().zip(change.response);
        let script: &Script = if settling.is_some() {
            &UPDATE_AND_SETTLE
        } else {
            &UPDATE
        };
        let mut inv = script.key(order_key(order_id));
        inv.key(steps_key(order_id)).key(totals_key_of(order_id));
        push_change(&mut inv, &change, owner);
        if let Some((settle, resp)) = settling {
            inv.key(settle.key.redis_key()).key(active_key_of(order_id));
            inv.arg(if settle.store { "finish" } else { "free" });
            settle
                .idempotency
                .finish_args(&mut inv, settle.key, order_id.as_str(), resp);
        }
        inv.key(outbox_key_of(order_id));
        push_pairs(&mut inv, &change);
        // A completed checkout's 200 is rendered from the order's fields when read
        // (OrderStore::final_response): only other answers are stored with the order.
        if let Some(resp) = change
            .response
            .filter(|r| !(r.status == 200 && change.status == Some(OrderStatus::Completed)))
        {
            inv.arg("respStatus").arg(resp.status);
            inv.arg("respCtype").arg(&resp.content_type);
            inv.arg("respBody").arg(&resp.body[..]);
        }
        let reply: String = inv.invoke_async(&mut conn).await?;
        Ok(Applied::from_reply(&reply))
    }

    /// Runs claim.lua or lease.lua: their keys and arguments are the same.
    async fn lease_script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        order_id: &OrderId,
        owner: &str,
        ms: Duration,
    ) -> Result<T, OrderError> {
        let mut conn = self.pool.get().await?;
        Ok(script
            .key(order_key(order_id))
            .key(active_key_of(order_id))
            .arg(order_id.as_str())
            .arg(owner)
            .arg(ms.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Takes over an order whose lease ran out.
    pub async fn claim(&self, order_id: &OrderId, owner: &str, lease: Duration) -> Result<Claim, OrderError> {
        let reply: String = self.lease_script(&CLAIM, order_id, owner, lease).await?;
        Ok(match reply.as_str() {
            "claimed" => Claim::Claimed,
            "held" => Claim::Held,
            _ => Claim::Gone,
        })
    }

    /// Moves the owner's lease to `from_now` from now: renewal while working, or when recovery
    /// should look again. False when the order is no longer this owner's.
    pub async fn lease(&self, order_id: &OrderId, owner: &str, from_now: Duration) -> Result<bool, OrderError> {
        let renewed: i64 = self.lease_script(&LEASE, order_id, owner, from_now).await?;
        Ok(renewed == 1)
    }

    /// Settles the key of an ended order — stores its `answer`, or with None frees it — and
    /// retires the order from recovery's set (unless it still owes a release), in one step.
    pub async fn settle_key(
        &self,
        order_id: &OrderId,
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
                    idempotency.finish_args(&mut inv, key, order_id.as_str(), resp);
                }
                None => {
                    inv.arg("free").arg(order_id.as_str());
                }
            }
            let _: i64 = inv.invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Makes the order await its Pix until `expires_ms` (await.lua): records `change`, stores
    /// `answer` (the 202) under its key, and leaves the order to recovery until then.
    #[allow(clippy::too_many_arguments)]
    pub async fn await_payment(
        &self,
        order_id: &OrderId,
        owner: &str,
        change: Change<'_>,
        key: &KeyRef,
        answer: &StoredResponse,
        idempotency: &IdempotencyStore,
        expires_ms: u64,
    ) -> Result<Applied, OrderError> {
        let mut conn = self.pool.get().await?;
        let mut inv = AWAIT.key(order_key(order_id));
        inv.key(steps_key(order_id))
            .key(totals_key_of(order_id))
            .key(key.redis_key())
            .key(active_key_of(order_id))
            .key(outbox_key_of(order_id));
        push_change(&mut inv, &change, owner);
        idempotency.finish_args(&mut inv, key, order_id.as_str(), answer);
        inv.arg(expires_ms);
        push_pairs(&mut inv, &change);
        let reply: String = inv.invoke_async(&mut conn).await?;
        Ok(Applied::from_reply(&reply))
    }

    /// Makes an order awaiting its Pix due for recovery now (wake.lua): its status before the
    /// call (`awaiting_payment` when it was woken), None for no such order.
    pub async fn wake(&self, order_id: &OrderId) -> Result<Option<String>, OrderError> {
        let mut conn = self.pool.get().await?;
        let status: String = WAKE
            .key(order_key(order_id))
            .key(active_key_of(order_id))
            .arg(order_id.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(Some(status).filter(|s| !s.is_empty()))
    }

    /// Up to `limit` orders of one shard whose lease has run out.
    pub async fn due(&self, shard: u16, limit: usize) -> Result<Vec<OrderId>, OrderError> {
        let mut conn = self.pool.get().await?;
        let ids: Vec<String> = DUE.key(active_key(shard)).arg(limit).invoke_async(&mut conn).await?;
        Ok(ids.into_iter().map(OrderId::from_stored).collect())
    }

    /// The order as created, with its key and progress, for a runner resuming it.
    pub async fn load(&self, order_id: &OrderId) -> Result<Option<(StoredOrder, Progress)>, OrderError> {
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
                "status",
                "pixExpiresAtMs",
                "ik",
            ])
            .query_async(&mut conn)
            .await?;
        let get = |i: usize| fields.get(i).cloned().flatten();
        // The client's key ('ik'), or its record's whole name as orders before #29's sixth
        // pass kept it ('idemKey').
        let record = get(13).map(|key| checkout_key(&key, String::new()).redis_key().to_string());
        let (Some(item_id), Some(quantity), Some(customer_id), Some(payment_method), Some(key), Some(fp)) =
            (get(0), get(1), get(2), get(3), record.or(get(4)), get(5))
        else {
            return Ok(None);
        };
        let (Ok(item_id), Ok(quantity)) = (item_id.parse(), quantity.parse()) else {
            return Ok(None);
        };
        let reservation = match (get(6), get(7).and_then(|a| a.parse().ok()), get(8)) {
            (Some(rid), Some(total_fee), Some(currency)) => Some(Reservation {
                reservation_id: ReservationId::from_stored(rid),
                total_fee,
                currency,
            }),
            _ => None,
        };
        let stored = StoredOrder {
            order: NewOrder {
                order_id: order_id.clone(),
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
                charge_id: get(9).map(ChargeId::from_stored),
                resumed: true,
                release_owed: get(10).is_some(),
                awaiting_until_ms: get(12)
                    .filter(|_| get(11).as_deref() == Some("awaiting_payment"))
                    .and_then(|ms| ms.parse().ok()),
            },
        )))
    }

    /// Records that stock answered an ended order's owed release with `status`
    /// (release_done.lua).
    pub async fn release_done(&self, order_id: &OrderId, status: StepStatus) -> Result<(), OrderError> {
        let mut conn = self.pool.get().await?;
        let at = shared::time::now_rfc3339();
        let _: i64 = RELEASE_DONE
            .key(order_key(order_id))
            .key(steps_key(order_id))
            .arg(step_text(StepName::Release, status, &at))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes back [`OrderStore::begin_checkout`] for `order_id` after Redis did not answer it
    /// (undo_begin.lua): true when neither the key nor an order is left for this request,
    /// false when the key is held by another request's order.
    pub async fn undo_begin(&self, order_id: &OrderId, key: &KeyRef) -> Result<bool, OrderError> {
        let mut conn = self.pool.get().await?;
        let mut inv = UNDO_BEGIN.key(key.redis_key());
        push_order_keys(&mut inv, order_id);
        let outcome: String = inv.arg(order_id.as_str()).invoke_async(&mut conn).await?;
        Ok(outcome == "undone")
    }

    /// Removes an order that never began (abandon.lua); false if it had begun after all.
    pub async fn abandon(&self, order_id: &OrderId) -> Result<bool, OrderError> {
        let mut conn = self.pool.get().await?;
        let mut inv = ABANDON.prepare_invoke();
        push_order_keys(&mut inv, order_id);
        let removed: i64 = inv.arg(order_id.as_str()).invoke_async(&mut conn).await?;
        Ok(removed == 1)
    }
}
