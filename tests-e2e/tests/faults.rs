//! Fault injection: checkouts while processes are SIGKILLed and restarted (the three services and
//! Redis, which keeps every acknowledged write in its AOF) and while the proxies between the order
//! service and its dependencies delay, drop and cut requests or close their ports (a dependency
//! down with nothing in front of it: connections refused). After the faults stop and recovery
//! has had its time, the books must balance, to the unit and to the cent.
//!
//! `fault_rounds_leave_every_order_settled_and_the_books_balanced` runs FAULT_ROUNDS rounds
//! (default 20) from a seed it prints (FAULT_SEED replays one); it stops at the first round that
//! breaks an invariant unless FAULT_KEEP_GOING is set. A seed fixes the workload, each round's
//! kill schedule and proxy plans and the proxies' draws; how they interleave with the processes
//! is up to the machine, so a replay reproduces a failure often, not always. The other tests each
//! pin one nasty case down deterministically.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tests_e2e::{Fault, FaultCounts, FaultPlan, SeededRng, Service, Stack, StackOptions, new_key as key, slug};

// ----- the stack under faults -----

/// The order service's key and order lease: short, so recovery steps in within seconds.
const LEASE: Duration = Duration::from_secs(2);
/// Longer than the whole test: no reservation may lapse during it, so one still held, or
/// expired, once its order has ended is a reservation the checkout left behind. (A shorter TTL
/// would free such units before the books are read and hide the leak. Lapsing before completion
/// has tests of its own, in stock.rs and below.)
const RESERVATION_TTL: Duration = Duration::from_secs(1800);
/// The order service's per-attempt timeout towards stock and payment.
const ATTEMPT_TIMEOUT_MS: u64 = 800;
const CHECKOUT_DEADLINE: Duration = Duration::from_secs(3);
/// Distinct keys per round (a quarter of them sent twice, concurrently).
const CHECKOUTS_PER_ROUND: usize = 14;
/// How long recovery may take once the faults stop: the lease runs out (up to 3 leases when a
/// claimant dies too), a saga of retried calls, and slack for a loaded 2-core machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3 * 2 + 3 + 16);

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Short timeouts and leases everywhere, so that faults resolve within a round.
fn fault_options(seed: u64) -> StackOptions {
    let lease = format!("{}s", LEASE.as_secs());
    let attempt = format!("{ATTEMPT_TIMEOUT_MS}ms");
    let deadline = format!("{}s", CHECKOUT_DEADLINE.as_secs());
    let ttl = format!("{}s", RESERVATION_TTL.as_secs());
    StackOptions {
        order_env: env(&[
            ("IDEMPOTENCY_LEASE", &lease),
            ("RECOVERY_INTERVAL", "200ms"),
            ("RECOVERY_RETRY", "500ms"),
            ("CHECKOUT_DEADLINE", &deadline),
            ("HTTP_ATTEMPT_TIMEOUT", &attempt),
            ("HTTP_CONNECT_TIMEOUT", "300ms"),
            ("HTTP_MAX_RETRIES", "2"),
            ("HTTP_RETRY_BASE", "20ms"),
            ("HTTP_RETRY_MAX", "200ms"),
        ]),
        // A stock or payment process killed mid-request leaves its own key running until its
        // lease runs out; the order service's retries wait for that.
        stock_env: env(&[
            ("IDEMPOTENCY_LEASE", &lease),
            ("RESERVATION_TTL", &ttl),
            ("RESERVATION_SWEEP_INTERVAL", "200ms"),
        ]),
        // A provider's timeout under the order service's attempt timeout, so a slow provider is
        // an unknown charge at payment, not a lost answer from payment.
        payment_env: env(&[
            ("IDEMPOTENCY_LEASE", &lease),
            ("GATEWAY_TIMEOUT", "400ms"),
            ("BREAKER_FAILURES", "4"),
            ("BREAKER_COOLDOWN", "500ms"),
            // A webhook whose sender was killed is sent again when its lease (this + 10 s) ends.
            ("WEBHOOK_TIMEOUT", "2s"),
        ]),
        fault_proxies: true,
        fault_seed: seed,
        redis_cluster: false,
    }
}

// ----- reading the state: Redis for what has no public listing, the APIs for the rest -----

async fn redis(stack: &Stack) -> MultiplexedConnection {
    redis::Client::open(stack.redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the stack's Redis")
}

async fn scan(conn: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            keys.sort();
            keys.dedup();
            return Ok(keys);
        }
        cursor = next;
    }
}

async fn hash(conn: &mut MultiplexedConnection, key: &str) -> redis::RedisResult<HashMap<String, String>> {
    let pairs: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL").arg(key).query_async(conn).await?;
    Ok(pairs
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect())
}

/// An order as stored: `order:{ord:S}:order:<orderId>`.
#[derive(Debug, Clone)]
struct Order {
    id: String,
    status: String,
    item_id: u64,
    quantity: i64,
    amount: i64,
    currency: String,
    reservation_id: Option<String>,
    charge_id: Option<String>,
    /// The reservation a release is still owed for (recovery sends it until stock hears it).
    release_owed: Option<String>,
}

impl Order {
    fn from_hash(id: String, h: &HashMap<String, String>) -> Order {
        let text = |f: &str| h.get(f).filter(|v| !v.is_empty()).cloned();
        Order {
            id,
            status: text("status").unwrap_or_default(),
            item_id: text("itemId").and_then(|v| v.parse().ok()).unwrap_or(0),
            quantity: text("quantity").and_then(|v| v.parse().ok()).unwrap_or(0),
            amount: text("amount").and_then(|v| v.parse().ok()).unwrap_or(0),
            currency: text("currency").unwrap_or_default(),
            reservation_id: text("reservationId"),
            charge_id: text("chargeId"),
            release_owed: text("releaseOwed"),
        }
    }
}

async fn all_orders(conn: &mut MultiplexedConnection) -> redis::RedisResult<BTreeMap<String, Order>> {
    let mut orders = BTreeMap::new();
    for key in scan(conn, "order:*:order:*").await? {
        let h = hash(conn, &key).await?;
        if !h.contains_key("status") {
            continue;
        }
        let id = key.rsplit(':').next().unwrap_or("").to_string();
        orders.insert(id.clone(), Order::from_hash(id, &h));
    }
    Ok(orders)
}

/// The order service's Idempotency-Key records: client key → (state, token, status, body).
#[derive(Debug, Clone)]
struct KeyRecord {
    state: String,
    token: String,
    status: Option<u16>,
    body: String,
}

/// Checkout key records: `order:{ord:S}:key:<client key>` (see order_service::checkout::store).
const CHECKOUT_KEYS: &str = "order:{ord:*}:key:*";

async fn all_key_records(conn: &mut MultiplexedConnection) -> redis::RedisResult<BTreeMap<String, KeyRecord>> {
    let mut records = BTreeMap::new();
    for redis_key in scan(conn, CHECKOUT_KEYS).await? {
        let client_key = redis_key
            .split_once(":key:")
            .map_or(redis_key.as_str(), |(_, k)| k)
            .to_string();
        if let Some(record) = read_key_record(conn, &redis_key).await? {
            records.insert(client_key, record);
        }
    }
    Ok(records)
}

/// A key record as a replay reads it (begin.lua), None when there is none. A new key's record
/// points at its order ("t\n<order id>", order.lua's hold_pointer): done once the order
/// holds its answer (`OrderStore::final_response`), running until then. A hash record (a key
/// holding a Pix's 202, or taken before the pointer) says so itself; an empty stored body is
/// its order's, and a completed order, which stores none, answers its 200 rendered from its
/// fields.
async fn read_key_record(conn: &mut MultiplexedConnection, redis_key: &str) -> redis::RedisResult<Option<KeyRecord>> {
    let kind: String = redis::cmd("TYPE").arg(redis_key).query_async(conn).await?;
    let Some((slot, _)) = redis_key.split_once(":key:") else {
        return Ok(None);
    };
    match kind.as_str() {
        "none" => Ok(None),
        "string" => {
            let text: String = redis::cmd("GET").arg(redis_key).query_async(conn).await?;
            let token = shared::idempotency::packed_field(&text, "token")
                .unwrap_or_default()
                .to_string();
            let answer = order_answer(conn, slot, &token).await?;
            Ok(Some(KeyRecord {
                state: if answer.is_some() { "done" } else { "running" }.to_string(),
                token,
                status: answer.as_ref().map(|r| r.status),
                body: answer
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .unwrap_or_default(),
            }))
        }
        _ => {
            let h = hash(conn, redis_key).await?;
            let token = h.get("token").cloned().unwrap_or_default();
            let mut body = h.get("body").cloned().unwrap_or_default();
            if body.is_empty() && h.get("state").map(String::as_str) == Some("done") {
                let order_key = format!("{slot}:order:{token}");
                let stored: Option<String> = redis::cmd("HGET")
                    .arg(&order_key)
                    .arg("respBody")
                    .query_async(conn)
                    .await?;
                body = match stored {
                    Some(stored) => stored,
                    None => order_answer(conn, slot, &token)
                        .await?
                        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                        .unwrap_or_default(),
                };
            }
            Ok(Some(KeyRecord {
                state: h.get("state").cloned().unwrap_or_default(),
                token,
                status: h.get("status").and_then(|s| s.parse().ok()),
                body,
            }))
        }
    }
}

/// The answer order `token` of `slot` holds, as the order service renders it; None while it has
/// none.
async fn order_answer(
    conn: &mut MultiplexedConnection,
    slot: &str,
    token: &str,
) -> redis::RedisResult<Option<shared::idempotency::StoredResponse>> {
    let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
        .arg(format!("{slot}:order:{token}"))
        .arg(&order_service::orders::store::RESPONSE_FIELDS)
        .query_async(conn)
        .await?;
    let order_id = order_service::ids::OrderId::from_stored(token.to_string());
    Ok(order_service::orders::store::stored_response(&order_id, &fields))
}

async fn key_record(stack: &Stack, client_key: &str) -> Option<KeyRecord> {
    let mut conn = redis(stack).await;
    let redis_key = order_service::checkout::store::checkout_key(client_key, String::new())
        .redis_key()
        .to_string();
    read_key_record(&mut conn, &redis_key)
        .await
        .expect("the key's record and its order")
}

/// A reservation's status (`reserved`, `released`, `expired`, `completed`), if still stored:
/// one string of its fields (a hash before #29's eighth pass).
async fn reservation_status(conn: &mut MultiplexedConnection, item_id: u64, rid: &str) -> Option<String> {
    let key = format!("stock:{{item:{item_id}}}:rsv:{rid}");
    match redis::cmd("GET").arg(&key).query_async::<Option<String>>(conn).await {
        Ok(packed) => packed.and_then(|p| shared::idempotency::packed_field(&p, "status").map(str::to_string)),
        Err(_) => redis::cmd("HGET")
            .arg(&key)
            .arg("status")
            .query_async(conn)
            .await
            .ok()
            .flatten(),
    }
}

async fn get_internal(stack: &Stack, path: &str) -> Value {
    stack.get_json(path, true).await
}

async fn charges_of(stack: &Stack, order_id: &str) -> Vec<Value> {
    let listed = get_internal(stack, &format!("/payment/charges?orderId={order_id}")).await;
    listed["charges"].as_array().cloned().unwrap_or_default()
}

/// Polls the public order view until it leaves `processing`.
async fn wait_for_terminal(stack: &Stack, order_id: &str, timeout: Duration) -> Value {
    let started = Instant::now();
    loop {
        let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
        if order["status"] != "processing" {
            return order;
        }
        assert!(
            started.elapsed() < timeout,
            "order {order_id} still processing after {timeout:?}: {order}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Orders still `processing` or owing stock a release, and checkout keys still `running`, as
/// descriptions: what recovery has yet to finish.
async fn unsettled(stack: &Stack) -> Result<Vec<String>, String> {
    let mut conn = redis::Client::open(stack.redis_url())
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let orders = all_orders(&mut conn).await.map_err(|e| e.to_string())?;
    let keys = all_key_records(&mut conn).await.map_err(|e| e.to_string())?;
    let mut open: Vec<String> = orders
        .values()
        .filter(|o| o.status == "processing")
        .map(|o| format!("order {} (item {}) is still processing", o.id, o.item_id))
        .collect();
    open.extend(orders.values().filter_map(|o| {
        let rid = o.release_owed.as_deref()?;
        Some(format!(
            "order {} ({}) still owes stock the release of {rid}",
            o.id, o.status
        ))
    }));
    open.extend(
        keys.iter()
            .filter(|(_, r)| r.state == "running")
            .map(|(k, r)| format!("Idempotency-Key {k} (order {}) is still running", r.token)),
    );
    Ok(open)
}

/// Waits until no order is processing or owes a release and no checkout key is running.
async fn wait_until_settled(stack: &Stack, timeout: Duration) -> Result<Duration, Vec<String>> {
    wait_until_settled_but(stack, timeout, &[]).await
}

/// [`wait_until_settled`], except for what is already known to be stuck (`known`, as
/// [`unsettled`] describes it).
async fn wait_until_settled_but(stack: &Stack, timeout: Duration, known: &[String]) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    loop {
        let open = unsettled(stack).await.map(|open| {
            open.into_iter()
                .filter(|line| !known.contains(line))
                .collect::<Vec<_>>()
        });
        if matches!(&open, Ok(open) if open.is_empty()) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(open.unwrap_or_else(|e| vec![format!("cannot read Redis: {e}")]));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ----- what the clients were told -----

#[derive(Debug, Clone)]
struct Reply {
    round: u64,
    key: String,
    status: u16,
    slug: String,
    order_id: Option<String>,
    body: Value,
    /// What was sent with the key.
    request: Value,
}

impl Reply {
    fn describe(&self) -> String {
        format!(
            "key {} (sent in round {}) got {} {}",
            self.key,
            self.round,
            self.status,
            if self.slug.is_empty() { "" } else { &self.slug }
        )
    }

    /// An answer the order service stores for the key and replays: the order's final outcome.
    fn is_definitive(&self) -> bool {
        match self.status {
            200 | 402 | 404 => true,
            409 => self.slug == "out-of-stock",
            _ => false,
        }
    }
}

async fn send_checkout(client: reqwest::Client, url: String, round: u64, key: String, request: Value) -> Reply {
    let resp = client
        .post(url)
        .header("idempotency-key", &key)
        .json(&request)
        .send()
        .await;
    let (status, body) = match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        // The connection itself failed (nginx was not the one killed, so this is rare).
        Err(e) => (0, Value::String(e.to_string())),
    };
    Reply {
        round,
        key,
        status,
        slug: slug(&body).to_string(),
        order_id: body["orderId"].as_str().map(str::to_string),
        body,
        request,
    }
}

// ----- the invariants -----

/// What the test put in: units stocked per item, and every answer a client got.
#[derive(Default)]
struct Ledger {
    stocked: BTreeMap<u64, i64>,
    replies: Vec<Reply>,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    count: i64,
    amount: i64,
}

/// Sends a checkout in the background and returns once one of its calls is being held by
/// `proxy` (whose plan must delay that call, e.g. stock's `/reserve`): the moment to crash
/// something mid-saga.
async fn checkout_held_by(
    stack: &Stack,
    proxy: &tests_e2e::ProxyHandle,
    k: &str,
    body: &Value,
) -> tokio::task::JoinHandle<Reply> {
    let client = tokio::spawn(send_checkout(
        stack.client(),
        stack.url("/order/checkout"),
        0,
        k.to_string(),
        body.clone(),
    ));
    proxy.wait_until_holding().await;
    client
}

fn tally(v: &Value) -> Tally {
    Tally {
        count: v["count"].as_i64().unwrap_or(0),
        amount: v["amount"].as_i64().unwrap_or(0),
    }
}

/// Every invariant of the books, once recovery has nothing left to do ([`wait_until_settled`]).
/// No reservation lapses in these tests ([`RESERVATION_TTL`]), so none may be left holding its
/// units, or left to expire, by an order that has ended.
async fn violations(stack: &Stack, ledger: &Ledger) -> Vec<String> {
    let mut v = Vec::new();
    let mut conn = redis(stack).await;
    let orders = all_orders(&mut conn).await.expect("read the orders");
    let records = all_key_records(&mut conn).await.expect("read the idempotency records");

    // Orders and their money.
    let mut charged: BTreeMap<String, Tally> = BTreeMap::new();
    let mut refunded: BTreeMap<String, Tally> = BTreeMap::new();
    let mut completed_amount: BTreeMap<String, i64> = BTreeMap::new();
    let mut sold_by_orders: BTreeMap<u64, i64> = BTreeMap::new();
    for o in orders.values() {
        let who = format!("order {} (item {}, {} {})", o.id, o.item_id, o.amount, o.currency);
        let charges = charges_of(stack, &o.id).await;
        for c in &charges {
            let currency = c["currency"].as_str().unwrap_or("").to_string();
            let amount = c["amount"].as_i64().unwrap_or(0);
            if c["status"] == "succeeded" || c["status"] == "refunded" {
                let t = charged.entry(currency.clone()).or_default();
                t.count += 1;
                t.amount += amount;
            }
            if c["status"] == "refunded" {
                let t = refunded.entry(currency).or_default();
                t.count += 1;
                t.amount += amount;
            }
            if c["orderId"] != o.id.as_str() {
                v.push(format!("{who}: listed a charge of another order: {c}"));
            }
        }
        // Declined charges move no money; everything else is a real charge.
        let money: Vec<&Value> = charges.iter().filter(|c| c["status"] != "failed").collect();
        let rsv = match &o.reservation_id {
            Some(rid) => reservation_status(&mut conn, o.item_id, rid).await,
            None => None,
        };
        match o.status.as_str() {
            "completed" => {
                *completed_amount.entry(o.currency.clone()).or_default() += o.amount;
                *sold_by_orders.entry(o.item_id).or_default() += o.quantity;
                if o.reservation_id.is_none() {
                    v.push(format!("{who}: completed without a reservationId"));
                }
                if let Some(status) = rsv.as_deref().filter(|s| *s != "completed") {
                    v.push(format!("{who}: completed but its reservation is {status}"));
                }
                match money.as_slice() {
                    [c] => {
                        let ok = c["status"] == "succeeded"
                            && c["refundId"].is_null()
                            && c["amount"].as_i64() == Some(o.amount)
                            && c["currency"] == o.currency.as_str()
                            && c["chargeId"].as_str() == o.charge_id.as_deref();
                        if !ok {
                            v.push(format!(
                                "{who}: completed, but its charge is not one succeeded, unrefunded charge of its amount (chargeId {:?}): {c}",
                                o.charge_id
                            ));
                        }
                    }
                    other => v.push(format!(
                        "{who}: completed with {} charges instead of exactly one: {other:?}",
                        other.len()
                    )),
                }
            }
            "failed" | "compensated" => {
                for c in &money {
                    if c["status"] != "refunded" || c["refundId"].is_null() {
                        v.push(format!("{who}: {} but charged and not refunded: {c}", o.status));
                    }
                }
                match rsv.as_deref() {
                    Some("completed") => v.push(format!("{who}: {} but its reservation was completed", o.status)),
                    Some("reserved") => {
                        v.push(format!("{who}: {} but its reservation still holds its units", o.status))
                    }
                    Some("expired") => v.push(format!(
                        "{who}: {} but its reservation was left to expire, not released",
                        o.status
                    )),
                    _ => {}
                }
            }
            other => v.push(format!("{who}: status {other:?} once everything settled")),
        }
    }

    // No charge without its order: the per-order listings add up to the payment service's books.
    let payments = get_internal(stack, "/payment/totals").await;
    let order_totals = get_internal(stack, "/order/totals").await;
    let mut currencies: Vec<String> = payments
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    currencies.extend(
        order_totals
            .as_object()
            .map(|m| m.keys().cloned())
            .into_iter()
            .flatten(),
    );
    currencies.extend(completed_amount.keys().cloned());
    currencies.sort();
    currencies.dedup();
    for cur in &currencies {
        let p = &payments[cur.as_str()];
        let (p_charged, p_refunded) = (tally(&p["charged"]), tally(&p["refunded"]));
        let listed_charged = charged.get(cur).copied().unwrap_or_default();
        let listed_refunded = refunded.get(cur).copied().unwrap_or_default();
        if p_charged != listed_charged || p_refunded != listed_refunded {
            v.push(format!(
                "{cur}: the payment books count {} charges ({} in amount) and {} refunds ({}) more than the charges of known orders: a charge exists without its order",
                p_charged.count - listed_charged.count,
                p_charged.amount - listed_charged.amount,
                p_refunded.count - listed_refunded.count,
                p_refunded.amount - listed_refunded.amount
            ));
        }
        let o = &order_totals[cur.as_str()];
        let completed = tally(&o["completed"]);
        let by_orders = completed_amount.get(cur).copied().unwrap_or(0);
        if completed.amount != by_orders {
            v.push(format!(
                "{cur}: /order/totals counts {} more completed than the completed orders add up to",
                completed.amount - by_orders
            ));
        }
        if tally(&o["processing"]).count != 0 {
            v.push(format!("{cur}: /order/totals still counts processing orders: {o}"));
        }
        // Stated as the difference, which stays the same in later rounds' reports of one break.
        let net = p_charged.amount - p_refunded.amount;
        if net != completed.amount {
            v.push(format!(
                "{cur}: charged − refunded differs from completed by {} (charged − refunded − completed)",
                net - completed.amount
            ));
        }
    }

    // Stock: nothing created or lost, sold is exactly what completed orders bought.
    for (&item, &stocked) in &ledger.stocked {
        let it = stack.item(item).await;
        let (available, reserved, sold) = (
            it["available"].as_i64().unwrap_or(-1),
            it["reserved"].as_i64().unwrap_or(-1),
            it["sold"].as_i64().unwrap_or(-1),
        );
        if available + reserved + sold != stocked {
            v.push(format!(
                "item {item}: available {available} + reserved {reserved} + sold {sold} ≠ stocked {stocked}"
            ));
        }
        let want_sold = sold_by_orders.get(&item).copied().unwrap_or(0);
        if sold != want_sold {
            v.push(format!(
                "item {item}: sold {sold} but its completed orders bought {want_sold}"
            ));
        }
        if reserved != 0 {
            v.push(format!(
                "item {item}: {reserved} units still reserved once every order has ended"
            ));
        }
    }

    // Keys: none in progress; a stored answer is the order's final outcome.
    for (k, r) in &records {
        let order = orders.get(&r.token);
        match (r.state.as_str(), order) {
            ("running", _) => v.push(format!("Idempotency-Key {k} (order {}) left running", r.token)),
            ("done", None) => v.push(format!(
                "Idempotency-Key {k} stores an answer for unknown order {}",
                r.token
            )),
            ("done", Some(o)) => {
                let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                let consistent = match r.status {
                    Some(200) => o.status == "completed",
                    Some(402 | 404 | 409) => o.status == "failed" || o.status == "compensated",
                    _ => false,
                };
                if !consistent {
                    v.push(format!(
                        "Idempotency-Key {k} stores {:?} for order {} which is {}",
                        r.status, o.id, o.status
                    ));
                }
                if body["orderId"].as_str() != Some(o.id.as_str()) {
                    v.push(format!("Idempotency-Key {k}: stored body names another order: {body}"));
                }
            }
            (other, _) => v.push(format!("Idempotency-Key {k}: unknown state {other:?}")),
        }
    }

    // Clients: every answer they got agrees with how their order ended.
    let mut ok_orders: HashMap<&str, &str> = HashMap::new();
    for reply in &ledger.replies {
        let what = reply.describe();
        let Some(order_id) = reply.order_id.as_deref() else {
            if reply.is_definitive() {
                v.push(format!("{what} without an orderId: {}", reply.body));
            }
            continue;
        };
        let Some(o) = orders.get(order_id) else {
            v.push(format!("{what} for order {order_id}, which does not exist"));
            continue;
        };
        match reply.status {
            200 => {
                if o.status != "completed" {
                    v.push(format!("{what} for order {order_id}, which ended {}", o.status));
                }
                if let Some(prev) = ok_orders.insert(&reply.key, order_id).filter(|p| *p != order_id) {
                    v.push(format!("{what}: 200 for two orders {prev} and {order_id}"));
                }
            }
            // Business refusals, and 503 "everything undone": never for an order that completed.
            402 | 404 | 409 | 503 if o.status == "completed" => {
                v.push(format!("{what} for order {order_id}, which completed"));
            }
            _ => {}
        }
        if reply.is_definitive() {
            match records.get(&reply.key) {
                Some(r) if r.state == "done" && r.token == order_id && r.status == Some(reply.status) => {}
                other => v.push(format!(
                    "{what} for order {order_id}, but the key's record does not replay it: {other:?}"
                )),
            }
        }
    }
    v
}

/// The providers' books against ours: no order charged at more than one provider (net of
/// refunds), and each provider's ledger equal to its `byGateway` entry.
async fn ledgers_match(stack: &Stack) -> Vec<String> {
    let mut v = Vec::new();
    let totals = get_internal(stack, "/payment/totals").await;
    let mut standing: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for sim in [Service::CardA, Service::CardB] {
        let ledger = stack.sim_ledger(sim).await;
        let charges = ledger["charges"].as_array().cloned().unwrap_or_default();
        let refunds = ledger["refunds"].as_array().cloned().unwrap_or_default();
        let refunded: Vec<&str> = refunds.iter().filter_map(|r| r["chargeReference"].as_str()).collect();
        let succeeded: Vec<&Value> = charges.iter().filter(|c| c["status"] == "succeeded").collect();
        for c in &succeeded {
            if !refunded.contains(&c["reference"].as_str().unwrap_or_default()) {
                standing
                    .entry(c["orderId"].as_str().unwrap_or_default().to_string())
                    .or_default()
                    .push(sim.name());
            }
        }
        let count_amount = |items: &[&Value]| -> (i64, i64) {
            (
                items.len() as i64,
                items.iter().map(|c| c["amount"].as_i64().unwrap_or(0)).sum(),
            )
        };
        let refunds: Vec<&Value> = refunds.iter().collect();
        let theirs = (count_amount(&succeeded), count_amount(&refunds));
        let ours = &totals["byGateway"][sim.name()]["USD"];
        let ours = (tally(&ours["charged"]), tally(&ours["refunded"]));
        let ours = ((ours.0.count, ours.0.amount), (ours.1.count, ours.1.amount));
        if theirs != ours {
            v.push(format!(
                "{}: its ledger (charged, refunded) {theirs:?} but byGateway says {ours:?}",
                sim.name()
            ));
        }
    }
    for (order, at) in standing.iter().filter(|(_, at)| at.len() > 1) {
        v.push(format!("order {order} stands charged at {at:?}"));
    }
    v
}

/// Credits a wallet before a round's faults begin (retried until payment takes it: a process
/// killed late in the round before may still be coming back).
async fn credit_wallet(stack: &Stack, customer: &str, amount: i64) {
    let k = key();
    for _ in 0..100 {
        let r = stack
            .post_internal(
                &format!("/payment/wallets/{customer}/credits"),
                Some(&k),
                &json!({"amount": amount, "currency": "USD"}),
            )
            .await;
        if r.status == 201 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not credit {customer}");
}

/// Splits an item's sales 70/30 before a round's faults begin (retried as a credit is): the
/// round's kills then fall on charges recorded with their parts, and `verify` checks every
/// recipient's balance against the events after the round.
async fn split_item(stack: &Stack, item: u64) {
    let k = key();
    let rules = json!([
        {"recipientId": "seller", "percentage": 70, "payoutMethod": "pix", "accountInfo": {"pixKey": "seller@example.com"}},
        {"recipientId": "platform", "percentage": 30, "payoutMethod": "bank", "accountInfo": {"bank": "001", "account": "12345-6"}}
    ]);
    for _ in 0..100 {
        let r = stack
            .post_internal("/payment/splits", Some(&k), &json!({"itemId": item, "rules": rules}))
            .await;
        if r.status == 201 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not split item {item}");
}

/// Registers the platform's endpoint at the receiver's `/faults` for every completed order.
async fn subscribe_to_completed_orders(stack: &Stack) {
    let body = json!({"url": stack.receiver_url("/faults"), "events": ["order.completed"]});
    let r = stack
        .post_internal("/payment/webhook-endpoints", Some(&key()), &body)
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
}

/// Every order that completed (refunded since, or not) has had its `order.completed` webhook
/// answered 2xx at least once, at most `within` after the faults stopped.
async fn webhooks_delivered(stack: &Stack, within: Duration) -> Vec<String> {
    let mut conn = redis(stack).await;
    let orders = all_orders(&mut conn).await.expect("read the orders");
    let completed: Vec<String> = orders
        .values()
        .filter(|o| matches!(o.status.as_str(), "completed" | "partially_refunded" | "refunded"))
        .map(|o| format!("{}-completed", o.id))
        .collect();
    let started = Instant::now();
    loop {
        let got: std::collections::HashSet<String> = stack
            .receiver_requests("/faults")
            .await
            .iter()
            .filter(|r| r["answered"] == 200)
            .filter_map(|r| r["webhookId"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<&String> = completed.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() {
            println!(
                "  webhooks: all {} completed orders delivered, {:?} after the faults stopped",
                completed.len(),
                started.elapsed()
            );
            return Vec::new();
        }
        if started.elapsed() > within {
            return vec![format!(
                "{} of {} completed orders never had their order.completed webhook delivered: {missing:?}",
                missing.len(),
                completed.len()
            )];
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The payment event log against the stored state: `verify` rebuilds every charge, refund,
/// wallet balance, recipient balance and byGateway from the events alone.
async fn events_match(stack: &Stack) -> Vec<String> {
    let r = stack.post_internal("/payment/admin/verify", None, &json!({})).await;
    if r.status != 200 {
        return vec![format!("verify answered {}: {}", r.status, r.json)];
    }
    r.json["mismatches"]
        .as_array()
        .map(|m| m.iter().map(|x| format!("event log: {x}")).collect())
        .unwrap_or_default()
}

/// Each key with a stored answer replays it over HTTP, byte for byte the stored body.
async fn replays_match(stack: &Stack, ledger: &Ledger, round: u64) -> Vec<String> {
    let mut v = Vec::new();
    let mut conn = redis(stack).await;
    let records = all_key_records(&mut conn).await.expect("read the idempotency records");
    let mut seen = std::collections::HashSet::new();
    for reply in ledger.replies.iter().filter(|r| r.round == round) {
        if !seen.insert(reply.key.clone()) {
            continue;
        }
        let Some(record) = records.get(&reply.key).filter(|r| r.state == "done") else {
            // Freed (everything undone): a retry would run a new checkout, which is its right.
            continue;
        };
        let resp = stack
            .client()
            .post(stack.url("/order/checkout"))
            .header("idempotency-key", &reply.key)
            .json(&reply.request)
            .send()
            .await
            .expect("replay");
        let status = resp.status().as_u16();
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let text = resp.text().await.unwrap_or_default();
        if Some(status) != record.status || !replayed || text != record.body {
            v.push(format!(
                "key {} (order {}): replay answered {status} (replayed: {replayed}) {text}, stored {:?} {}",
                reply.key, record.token, record.status, record.body
            ));
        }
    }
    v
}

// ----- the rounds -----

#[derive(Default)]
struct Summary {
    rounds: u64,
    checkouts: u64,
    duplicates: u64,
    statuses: BTreeMap<u16, u64>,
    kills: BTreeMap<&'static str, u64>,
    late_kills: BTreeMap<&'static str, u64>,
    outages: BTreeMap<&'static str, u64>,
    late_outages: BTreeMap<&'static str, u64>,
    proxy_plans: BTreeMap<&'static str, u64>,
    sim_faults: BTreeMap<&'static str, u64>,
    settle: Duration,
    took: Duration,
}

fn service_name(s: Service) -> &'static str {
    s.name()
}

fn summary_text(seed: u64, s: &Summary, proxies: &[(&str, FaultCounts)], violations: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "fault rounds: FAULT_SEED={seed}");
    let _ = writeln!(
        out,
        "  rounds {} · checkouts {} ({} sent twice) · answers {:?}",
        s.rounds, s.checkouts, s.duplicates, s.statuses
    );
    let _ = writeln!(out, "  SIGKILL + restart while checkouts ran: {:?}", s.kills);
    let _ = writeln!(out, "  card-a faults while checkouts ran: {:?}", s.sim_faults);
    let _ = writeln!(out, "  SIGKILL + restart while recovery ran: {:?}", s.late_kills);
    let _ = writeln!(out, "  port closed while checkouts ran: {:?}", s.outages);
    let _ = writeln!(out, "  port closed while recovery ran: {:?}", s.late_outages);
    let _ = writeln!(out, "  proxy plans set: {:?}", s.proxy_plans);
    let mut total = FaultCounts::default();
    for (name, c) in proxies {
        total.add(c);
        let _ = writeln!(
            out,
            "  {name} proxy: delay {} · drop {} · cut-after-send {} · cut-mid-response {} (of {} requests; {} found the service dead)",
            c.delayed, c.dropped, c.cut_after_send, c.cut_mid_response, c.requests, c.upstream_unreachable
        );
    }
    let _ = writeln!(
        out,
        "  proxy faults: {} · process kills: {} · outages: {}",
        total.faults(),
        s.kills.values().chain(s.late_kills.values()).sum::<u64>(),
        s.outages.values().chain(s.late_outages.values()).sum::<u64>()
    );
    let _ = writeln!(out, "  longest wait for recovery: {:?} · took {:?}", s.settle, s.took);
    let _ = writeln!(out, "  violations: {}", violations.len());
    for line in violations.iter().take(40) {
        let _ = writeln!(out, "    - {line}");
    }
    out
}

fn seed_from_env() -> u64 {
    match std::env::var("FAULT_SEED") {
        Ok(s) => s.trim().parse().expect("FAULT_SEED must be an unsigned integer"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

/// A proxy fault for one round, or none.
fn pick_proxy_fault(rng: &mut SeededRng) -> Option<(Fault, f64)> {
    if !rng.chance(0.75) {
        return None;
    }
    let fault = match rng.between(0, 4) {
        // Slow, but within the per-attempt timeout.
        0 => Fault::Delay(Duration::from_millis(rng.between(100, ATTEMPT_TIMEOUT_MS / 2))),
        // Beyond it: the caller retries while the held request is delivered late.
        1 => Fault::Delay(Duration::from_millis(
            rng.between(ATTEMPT_TIMEOUT_MS + 100, ATTEMPT_TIMEOUT_MS * 2),
        )),
        2 => Fault::Drop,
        3 => Fault::CutAfterSend,
        _ => Fault::CutMidResponse,
    };
    Some((fault, rng.between(15, 60) as f64 / 100.0))
}

/// An outage of stock or payment with nothing in front of it, or none: the proxy's port closed
/// (connections refused, so the caller knows its call never left) `at` ms from now for `down`
/// ms. Unlike a killed service behind the proxy, this is what tells the saga "nothing happened".
fn pick_outage(rng: &mut SeededRng, chance: f64, at: (u64, u64)) -> Option<(Service, u64, u64)> {
    if !rng.chance(chance) {
        return None;
    }
    let service = *rng.pick(&[Service::Stock, Service::Payment]);
    Some((service, rng.between(at.0, at.1), rng.between(100, 1500)))
}

/// Runs an outage from [`pick_outage`] in the background.
fn start_outage(stack: &Stack, outage: Option<(Service, u64, u64)>) -> Option<tokio::task::JoinHandle<()>> {
    let (service, at, down) = outage?;
    let proxy = stack.proxy(service);
    Some(tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(at)).await;
        proxy.close_port();
        tokio::time::sleep(Duration::from_millis(down)).await;
        proxy.open_port();
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rounds_leave_every_order_settled_and_the_books_balanced() {
    let seed = seed_from_env();
    let rounds: u64 = std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or(20);
    println!("FAULT_SEED={seed} FAULT_ROUNDS={rounds} (set them to replay this run)");
    let started = Instant::now();
    let mut stack = Stack::launch(fault_options(seed)).await;
    let mut rng = SeededRng::new(seed);
    let mut ledger = Ledger::default();
    let mut summary = Summary::default();
    // Violations, each once (a broken book shows again in every later round).
    let mut found: Vec<String> = Vec::new();
    let keep_going = std::env::var_os("FAULT_KEEP_GOING").is_some();
    // With FAULT_KEEP_GOING, what stayed unsettled is not waited for again.
    let mut stuck: Vec<String> = Vec::new();
    subscribe_to_completed_orders(&stack).await;

    for round in 0..rounds {
        summary.rounds += 1;
        // Fresh items each round, scarce enough that some checkouts run out of stock.
        let base = 100 + round * 10;
        let items = [(base + 1, 1250, 3), (base + 2, 999, 5), (base + 3, 500, 12)];
        for (id, price, units) in items {
            stack.put_item(id, &format!("Item {id}"), price, units).await;
            ledger.stocked.insert(id, units);
        }
        let unknown_item = base + 9;
        split_item(&stack, base + 2).await;
        // A wallet for the round's wallet checkouts: enough for some of them, not all.
        let wallet = format!("cus_r{round}");
        credit_wallet(&stack, &wallet, 4000).await;

        // The checkouts: mixed items and quantities, some declined, some keys sent twice.
        let mut sends = Vec::new();
        for _ in 0..CHECKOUTS_PER_ROUND {
            let item = if rng.chance(0.08) {
                unknown_item
            } else {
                rng.pick(&items).0
            };
            let quantity = rng.between(1, 3);
            let body = if rng.chance(0.25) {
                json!({"itemId": item, "quantity": quantity, "paymentMethod": "wallet", "customerId": wallet})
            } else {
                let method = if rng.chance(0.2) {
                    "pm_card_chargeDeclined"
                } else {
                    "pm_card_visa"
                };
                json!({"itemId": item, "quantity": quantity, "paymentMethod": method})
            };
            let k = key();
            let copies = if rng.chance(0.25) { 2 } else { 1 };
            summary.checkouts += 1;
            summary.duplicates += u64::from(copies == 2);
            for copy in 0..copies {
                let delay = rng.between(0, 300) + copy * rng.between(0, 60);
                sends.push((k.clone(), body.clone(), delay));
            }
        }

        // The faults: at most two process kills at random points, and a plan per proxy.
        for service in [Service::Stock, Service::Payment] {
            let proxy = stack.proxy(service);
            match pick_proxy_fault(&mut rng) {
                Some((fault, p)) => {
                    *summary.proxy_plans.entry(fault.name()).or_default() += 1;
                    proxy.set(FaultPlan::sometimes(fault, p));
                }
                None => proxy.pass(),
            }
        }
        // And the providers: card-a's faults (refused work, lost answers, slowness) for the round.
        let sim_fault = match rng.between(0, 9) {
            0 | 1 => Some(("errors", json!({"errorRate": 0.5}))),
            2 | 3 => Some(("drops", json!({"dropResponseRate": 0.4}))),
            4 => Some(("slow", json!({"latencyMs": 300}))),
            _ => None,
        };
        if let Some((name, faults)) = &sim_fault {
            *summary.sim_faults.entry(name).or_default() += 1;
            stack.sim_faults(Service::CardA, faults.clone()).await;
        }
        let mut kills = Vec::new();
        for _ in 0..2 {
            if rng.chance(if kills.is_empty() { 0.7 } else { 0.25 }) {
                let victim = *rng.pick(&[
                    Service::Order,
                    Service::Stock,
                    Service::Payment,
                    Service::Redis,
                    Service::CardA,
                    Service::CardB,
                ]);
                kills.push((victim, rng.between(0, 600), rng.between(50, 800)));
            }
        }

        let late_kill = rng.chance(0.2).then(|| {
            let victim = *rng.pick(&[Service::Order, Service::Order, Service::Payment, Service::Redis]);
            let lease = LEASE.as_millis() as u64;
            (victim, rng.between(lease / 2, lease + 800), rng.between(50, 500))
        });
        let outage = pick_outage(&mut rng, 0.25, (0, 600));
        let lease = LEASE.as_millis() as u64;
        let late_outage = pick_outage(&mut rng, 0.25, (lease / 2, lease + 800));
        for (o, tally) in [(outage, &mut summary.outages), (late_outage, &mut summary.late_outages)] {
            if let Some((service, _, _)) = o {
                *tally.entry(service_name(service)).or_default() += 1;
            }
        }
        let outage = start_outage(&stack, outage);

        let tasks: Vec<_> = sends
            .into_iter()
            .map(|(k, body, delay)| {
                let client = stack.client();
                let url = stack.url("/order/checkout");
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    send_checkout(client, url, round, k, body).await
                })
            })
            .collect();
        for (victim, at, down) in kills {
            tokio::time::sleep(Duration::from_millis(at)).await;
            stack.kill(victim).await;
            *summary.kills.entry(service_name(victim)).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(down)).await;
            stack.start(victim).await;
        }
        for task in tasks {
            let reply = task.await.expect("a checkout task panicked");
            *summary.statuses.entry(reply.status).or_default() += 1;
            ledger.replies.push(reply);
        }
        if let Some(outage) = outage {
            outage.await.expect("the outage task panicked");
        }

        // Faults stop, except that a process may die again while recovery does its work (the
        // lease runs out LEASE after the last renewal); then the books must balance.
        stack.heal_proxies();
        if sim_fault.is_some() {
            stack.sim_faults(Service::CardA, json!({})).await;
        }
        let late_outage = start_outage(&stack, late_outage);
        if let Some((victim, at, down)) = late_kill {
            tokio::time::sleep(Duration::from_millis(at)).await;
            stack.kill(victim).await;
            *summary.late_kills.entry(service_name(victim)).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(down)).await;
            stack.start(victim).await;
        }
        if let Some(outage) = late_outage {
            outage.await.expect("the outage task panicked");
        }
        match wait_until_settled_but(&stack, SETTLE_TIMEOUT, &stuck).await {
            Ok(took) => summary.settle = summary.settle.max(took),
            Err(open) => {
                for line in open {
                    found.push(format!(
                        "after round {round}: not settled {SETTLE_TIMEOUT:?} after the faults stopped: {line}"
                    ));
                    stuck.push(line);
                }
                if !keep_going {
                    break;
                }
            }
        }
        let mut round_violations = violations(&stack, &ledger).await;
        round_violations.extend(ledgers_match(&stack).await);
        round_violations.extend(events_match(&stack).await);
        round_violations.extend(replays_match(&stack, &ledger, round).await);
        let before = found.len();
        for violation in round_violations {
            if !found.iter().any(|f| f.ends_with(&violation)) {
                found.push(format!("after round {round}: {violation}"));
            }
        }
        if found.len() > before && !keep_going {
            break;
        }
    }

    // Merchant webhooks: payment was killed while relaying and sending; every completed order
    // is still told, at least once (a lease ends 12 s after a killed send).
    for violation in webhooks_delivered(&stack, Duration::from_secs(40)).await {
        found.push(format!("after the rounds: {violation}"));
    }
    summary.took = started.elapsed();
    let proxies = [
        ("stock", stack.proxy(Service::Stock).counts()),
        ("payment", stack.proxy(Service::Payment).counts()),
    ];
    let report = summary_text(seed, &summary, &proxies, &found);
    println!("{report}");
    let faults = stack.proxy_counts();
    assert!(
        faults.faults() > 0 || rounds < 5,
        "the proxies never injected a fault: {faults:?}"
    );
    assert!(
        found.is_empty(),
        "invariants violated (replay with FAULT_SEED={seed}):\n{report}"
    );
}

// ----- one nasty case each -----

fn focused_options(extra_order_env: &[(&str, &str)]) -> StackOptions {
    let mut options = fault_options(1);
    options.order_env.extend(env(extra_order_env));
    options
}

/// Every invariant of [`violations`] holds on a stack that stocked item 1 with 10 units and
/// whose clients were answered `replies`.
async fn assert_books_of_item_1_hold(stack: &Stack, replies: Vec<Reply>) {
    let books = Ledger {
        stocked: BTreeMap::from([(1, 10)]),
        replies,
    };
    let found = violations(stack, &books).await;
    assert!(found.is_empty(), "{found:#?}");
}

/// The order completed, with one charge of `amount` that stands, and stock's and payment's books
/// show nothing else.
async fn assert_completed_with_one_charge(stack: &Stack, order_id: &str, item: u64, quantity: i64, amount: i64) {
    assert_completed_with_its_one_charge(stack, order_id, amount).await;
    let payments = get_internal(stack, "/payment/totals").await;
    assert_eq!(payments["USD"]["charged"]["count"], 1, "{payments}");
    assert_eq!(payments["USD"]["charged"]["amount"], amount, "{payments}");
    let it = stack.item(item).await;
    assert_eq!(
        (it["reserved"].as_i64(), it["sold"].as_i64()),
        (Some(0), Some(quantity)),
        "{it}"
    );
}

/// The order completed, with one charge of `amount` that stands.
async fn assert_completed_with_its_one_charge(stack: &Stack, order_id: &str, amount: i64) {
    let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
    assert_eq!(order["status"], "completed", "{order}");
    let charges = charges_of(stack, order_id).await;
    assert_eq!(charges.len(), 1, "exactly one charge for {order_id}: {charges:?}");
    assert_eq!(charges[0]["status"], "succeeded", "{charges:?}");
    assert_eq!(charges[0]["amount"], amount, "{charges:?}");
    assert!(charges[0]["refundId"].is_null(), "{charges:?}");
    assert_eq!(order["chargeId"], charges[0]["chargeId"], "{order}");
}

/// The checkout that answered `answer` (202, or 200 when a resend already got through) of
/// `quantity` units of item 1 completes with one charge of `amount`, nothing stays unsettled,
/// and its key replays the completion.
async fn assert_completes_once_and_replays(
    stack: &Stack,
    k: &str,
    body: Value,
    answer: &Value,
    quantity: i64,
    amount: i64,
) {
    let order_id = answer["orderId"].as_str().expect("orderId").to_string();
    let order = wait_for_terminal(stack, &order_id, SETTLE_TIMEOUT).await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_completed_with_one_charge(stack, &order_id, 1, quantity, amount).await;
    wait_until_settled(stack, SETTLE_TIMEOUT)
        .await
        .unwrap_or_else(|open| panic!("not settled {SETTLE_TIMEOUT:?} after the faults stopped: {open:#?}"));
    let (again, headers, replay) = stack.checkout(k, body).await;
    assert_eq!(
        (again, replay["orderId"].as_str()),
        (200, Some(order_id.as_str())),
        "{replay}"
    );
    assert!(headers.contains_key("idempotent-replayed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_answer_is_lost_is_resolved_without_a_second_charge() {
    let stack = Stack::launch(focused_options(&[])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let payment = stack.proxy(Service::Payment);
    // The first charge reaches payment and is made; its answer never comes back.
    payment.set(FaultPlan::always(Fault::CutAfterSend).on_path("/charge").times(1));
    let k = key();
    let body = json!({"itemId": 1, "quantity": 2});

    let (status, _, answer) = stack.checkout(&k, body.clone()).await;

    assert_eq!(payment.counts().cut_after_send, 1, "the fault fired");
    assert!(status == 200 || status == 202, "{status} {answer}");
    let order_id = answer["orderId"].as_str().expect("orderId").to_string();
    let order = wait_for_terminal(&stack, &order_id, SETTLE_TIMEOUT).await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_completed_with_one_charge(&stack, &order_id, 1, 2, 2500).await;
    let (again, headers, replay) = stack.checkout(&k, body).await;
    assert_eq!(
        (again, replay["orderId"].as_str()),
        (200, Some(order_id.as_str())),
        "{replay}"
    );
    assert!(headers.contains_key("idempotent-replayed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_every_answer_is_lost_stays_processing_until_it_is_resent_and_completes() {
    // One retry: both attempts reach payment, and both answers are lost.
    let stack = Stack::launch(focused_options(&[("HTTP_MAX_RETRIES", "1")])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let payment = stack.proxy(Service::Payment);
    payment.set(FaultPlan::always(Fault::CutAfterSend).on_path("/charge").times(2));
    let k = key();
    let body = json!({"itemId": 1, "quantity": 1});

    let (status, _, answer) = stack.checkout(&k, body.clone()).await;

    assert_eq!(payment.counts().cut_after_send, 2, "both answers were lost");
    // Never a failure while money may have moved: 202, or 200 if a resend already got through.
    assert!(status == 202 || status == 200, "{status} {answer}");
    assert_completes_once_and_replays(&stack, &k, body, &answer, 1, 1250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_whose_every_answer_is_lost_is_resent_until_it_is_heard_not_left_to_expire() {
    // One retry: both attempts reach stock (one reservation, for one key), both answers are lost.
    // Expiry cannot be what returns the units: reservations outlive the test (RESERVATION_TTL).
    let stack = Stack::launch(focused_options(&[("HTTP_MAX_RETRIES", "1")])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let stock = stack.proxy(Service::Stock);
    stock.set(FaultPlan::always(Fault::CutAfterSend).on_path("/reserve").times(2));
    let k = key();
    let body = json!({"itemId": 1, "quantity": 2});

    let (status, _, answer) = stack.checkout(&k, body.clone()).await;

    assert_eq!(stock.counts().cut_after_send, 2, "both answers were lost");
    // Stock may hold units for this order: not 503 ("everything undone"), but 202, or 200 if a
    // resend already got through.
    assert!(status == 202 || status == 200, "{status} {answer}");
    assert_completes_once_and_replays(&stack, &k, body, &answer, 2, 2500).await;
}

/// A stack with item 1 (10 mugs at 12.50) whose `service` proxy holds the first call to `path`
/// for 1.5 s. Its reservations outlive the test ([`RESERVATION_TTL`]), so neither an expiry
/// frees units nor a lapse stops an order from completing.
async fn stack_holding_the_first(service: Service, path: &str) -> (Stack, tests_e2e::ProxyHandle) {
    let stack = Stack::launch(focused_options(&[("HTTP_ATTEMPT_TIMEOUT", "10s")])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let proxy = stack.proxy(service);
    proxy.set(
        FaultPlan::always(Fault::Delay(Duration::from_millis(1500)))
            .on_path(path)
            .times(1),
    );
    (stack, proxy)
}

/// Sends a checkout whose call `proxy` holds, kills the order service meanwhile, and returns
/// the id of the order it left behind (the key's token).
async fn order_of_checkout_killed_while_held(
    stack: &mut Stack,
    proxy: &tests_e2e::ProxyHandle,
    k: &str,
    body: &Value,
) -> String {
    let client = checkout_held_by(stack, proxy, k, body).await;
    stack.kill(Service::Order).await;
    let reply = client.await.expect("client task");
    assert!(reply.order_id.is_none(), "the dead service answered nothing: {reply:?}");
    key_record(stack, k)
        .await
        .expect("the key was taken before the crash")
        .token
}

/// The order as it stands once recovery has recorded an attempt at `step`, or once it ended.
async fn order_once_recovery_tried(stack: &Stack, order_id: &str, step: &str) -> Value {
    let waited = Instant::now();
    loop {
        let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
        let tried = order["steps"]
            .as_array()
            .is_some_and(|steps| steps.iter().any(|s| s["name"] == step));
        if tried || order["status"] != "processing" {
            return order;
        }
        assert!(
            waited.elapsed() < SETTLE_TIMEOUT,
            "recovery never tried the {step}: {order}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_made_before_a_crash_is_waited_for_not_left_to_expire_when_stock_is_then_unreachable() {
    // The order service dies while its reserve is on the way; the reserve lands after it died.
    let (mut stack, stock) = stack_holding_the_first(Service::Stock, "/reserve").await;
    let k = key();
    let body = json!({"itemId": 1, "quantity": 2});
    let order_id = order_of_checkout_killed_while_held(&mut stack, &stock, &k, &body).await;
    let waited = Instant::now();
    while stack.item(1).await["reserved"] != 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the held reserve never reached stock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stock is down with nothing in front of it: recovery's reserve is refused outright, so it
    // provably never left. That proves nothing about the reserve sent before the crash.
    stock.close_port();
    stack.start(Service::Order).await;
    let held = order_once_recovery_tried(&stack, &order_id, "reserve").await;
    assert_eq!(
        held["status"], "processing",
        "ended while stock held units for it: {held}"
    );

    // Stock back: the same key replays the reservation made before the crash, and the order
    // goes on with it.
    stock.open_port();
    let order = wait_for_terminal(&stack, &order_id, SETTLE_TIMEOUT).await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_completed_with_one_charge(&stack, &order_id, 1, 2, 2500).await;
    wait_until_settled(&stack, SETTLE_TIMEOUT)
        .await
        .unwrap_or_else(|open| panic!("not settled {SETTLE_TIMEOUT:?} after the faults stopped: {open:#?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_reach_stock_is_sent_again_by_recovery_not_left_to_expire() {
    // Expiry cannot be what returns the units: reservations outlive the test (RESERVATION_TTL).
    let stack = Stack::launch(focused_options(&[])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let stock = stack.proxy(Service::Stock);
    // The card is declined; every release the checkout sends is dropped before stock sees it.
    stock.set(FaultPlan::always(Fault::Drop).on_path("/release"));
    let body = json!({"itemId": 1, "quantity": 2, "paymentMethod": "pm_card_chargeDeclined"});

    let (status, _, answer) = stack.checkout(&key(), body).await;

    assert_eq!((status, slug(&answer)), (402, "payment-declined"), "{answer}");
    assert!(stock.counts().dropped >= 1, "the release was dropped");
    let order_id = answer["orderId"].as_str().expect("orderId").to_string();
    let held = stack.item(1).await;
    assert_eq!(held["reserved"], 2, "the release has not got through yet: {held}");
    stock.pass();
    let waited = Instant::now();
    loop {
        let item = stack.item(1).await;
        if item["reserved"] == 0 {
            assert_eq!(item["available"], 10, "{item}");
            break;
        }
        assert!(
            waited.elapsed() < SETTLE_TIMEOUT,
            "the units are still held {SETTLE_TIMEOUT:?} after stock came back: {item}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Recovery records the release on the order after stock has answered it: wait for that
    // write too (a busy machine can show the units back before it).
    let last_step = |order: &Value| {
        order["steps"]
            .as_array()
            .and_then(|s| s.last())
            .map(|l| (l["name"].clone(), l["status"].clone()))
            .unwrap_or_default()
    };
    let order = loop {
        let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
        if last_step(&order) == (json!("release"), json!("succeeded")) || waited.elapsed() >= SETTLE_TIMEOUT {
            break order;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order["status"], "compensated", "{order}");
    assert_eq!(last_step(&order), (json!("release"), json!("succeeded")), "{order}");
    assert!(
        charges_of(&stack, &order_id)
            .await
            .iter()
            .all(|c| c["status"] != "succeeded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_service_was_killed_mid_checkout_is_finished_by_recovery() {
    // The order service waits on a slow reserve (no attempt timeout gets in the way) and dies.
    let mut stack = Stack::launch(focused_options(&[("HTTP_ATTEMPT_TIMEOUT", "10s")])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let stock = stack.proxy(Service::Stock);
    stock.set(
        FaultPlan::always(Fault::Delay(Duration::from_millis(1500)))
            .on_path("/reserve")
            .times(1),
    );
    let k = key();
    let body = json!({"itemId": 1, "quantity": 3});
    let client = checkout_held_by(&stack, &stock, &k, &body).await;

    stack.kill(Service::Order).await;
    let reply = client.await.expect("client task");
    stack.start(Service::Order).await;

    assert!(reply.order_id.is_none(), "the dead service answered nothing: {reply:?}");
    let record = key_record(&stack, &k)
        .await
        .expect("the key was taken before the crash");
    let order_id = record.token.clone();
    let order = wait_for_terminal(&stack, &order_id, SETTLE_TIMEOUT).await;
    wait_until_settled(&stack, SETTLE_TIMEOUT)
        .await
        .unwrap_or_else(|open| panic!("not settled {SETTLE_TIMEOUT:?} after the faults stopped: {open:#?}"));
    let record = key_record(&stack, &k).await;
    let (again, headers, replay) = stack.checkout(&k, body).await;
    match order["status"].as_str() {
        Some("completed") => {
            assert_completed_with_one_charge(&stack, &order_id, 1, 3, 3750).await;
            assert_eq!(again, 200, "the key replays the completion: {replay}");
            assert_eq!(replay["orderId"].as_str(), Some(order_id.as_str()));
            assert!(headers.contains_key("idempotent-replayed"));
        }
        Some("failed" | "compensated") => {
            // Undone: no money moved, and the key either replays the refusal or is free again.
            let charges = charges_of(&stack, &order_id).await;
            assert!(
                charges.iter().all(|c| c["status"] != "succeeded"),
                "{order} {charges:?}"
            );
            match record {
                Some(r) if r.state == "done" => {
                    assert_eq!(Some(again), r.status, "{replay}");
                    assert!(headers.contains_key("idempotent-replayed"));
                }
                other => assert!(other.is_none(), "the key is neither settled nor free: {other:?}"),
            }
        }
        other => panic!("order {order_id} ended {other:?}: {order}"),
    }
    assert_books_of_item_1_hold(&stack, vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_made_before_a_crash_is_waited_for_not_undone_when_payment_is_then_unreachable() {
    // The order service dies while its charge is on the way; the charge lands after it died.
    let (mut stack, payment) = stack_holding_the_first(Service::Payment, "/charge").await;
    let k = key();
    let body = json!({"itemId": 1, "quantity": 1});
    let order_id = order_of_checkout_killed_while_held(&mut stack, &payment, &k, &body).await;
    let waited = Instant::now();
    while charges_of(&stack, &order_id).await.is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the held charge never reached payment"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Payment is down with nothing in front of it: recovery's charge is refused outright, so it
    // provably never left. That proves nothing about the charge sent before the crash.
    payment.close_port();
    stack.start(Service::Order).await;
    let held = order_once_recovery_tried(&stack, &order_id, "charge").await;
    let charges = charges_of(&stack, &order_id).await;
    assert_eq!(
        held["status"], "processing",
        "ended with a charge standing while payment was unreachable: {held} {charges:?}"
    );
    let steps = held["steps"].as_array().cloned().unwrap_or_default();
    assert!(
        steps.iter().all(|s| s["name"] != "release"),
        "the reservation was released under a standing charge: {held}"
    );

    // Payment back: the same key replays the charge made before the crash, and the order goes on.
    payment.open_port();
    let order = wait_for_terminal(&stack, &order_id, SETTLE_TIMEOUT).await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_completed_with_one_charge(&stack, &order_id, 1, 1, 1250).await;
    wait_until_settled(&stack, SETTLE_TIMEOUT)
        .await
        .unwrap_or_else(|open| panic!("not settled {SETTLE_TIMEOUT:?} after payment came back: {open:#?}"));
    let (again, _, replay) = stack.checkout(&k, body).await;
    assert_eq!(
        (again, replay["orderId"].as_str()),
        (200, Some(order_id.as_str())),
        "{replay}"
    );
    assert_books_of_item_1_hold(&stack, vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_made_before_a_crash_is_found_not_made_again_when_recovery_comes_after_payment_forgot_its_key() {
    // The order service dies while its charge is on the way; the charge lands after it died.
    let (mut stack, payment) = stack_holding_the_first(Service::Payment, "/charge").await;
    let k = key();
    let body = json!({"itemId": 1, "quantity": 1});
    let order_id = order_of_checkout_killed_while_held(&mut stack, &payment, &k, &body).await;

    // The order service stays down longer than payment keeps the charge's Idempotency-Key
    // (IDEMPOTENCY_TTL, 24 h by default, at least a minute): its record, which the charge's
    // script settled with the answer naming the charge (one node: nothing beside it, no marker
    // key), expires. Deleting it is what that expiry does, without the wait.
    let charge_key = format!("{order_id}:charge");
    let mut conn = redis(&stack).await;
    let record = format!("idem:{{payment:charge:{charge_key}}}");
    let waited = Instant::now();
    loop {
        if stack.record_field(&record, "made").await.is_some() {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the held charge never settled at payment"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let beside = scan(&mut conn, &format!("payment:*:answer:charge:{charge_key}"))
        .await
        .expect("SCAN");
    assert_eq!(beside.len(), 0, "the answer is in the key's record: {beside:?}");
    let markers = scan(&mut conn, &format!("payment:*:op:charge:{charge_key}"))
        .await
        .expect("SCAN");
    assert_eq!(
        markers.len(),
        0,
        "a stored answer names the charge, no marker: {markers:?}"
    );
    let deleted: i64 = redis::cmd("DEL")
        .arg(&record)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(deleted, 1, "the key's record");
    let charges = charges_of(&stack, &order_id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");

    // Recovery resumes the order. Resending the charge would be a new charge now; it must find
    // the one made before the crash and complete the order with it.
    payment.pass();
    stack.start(Service::Order).await;
    assert_completes_once_and_replays(&stack, &k, body, &json!({"orderId": order_id}), 1, 1250).await;
    let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
    assert_eq!(order["chargeId"], charges[0]["chargeId"], "{order}");
    assert_books_of_item_1_hold(&stack, vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_checkout_survives_a_crash_of_redis() {
    let mut stack = Stack::launch(StackOptions::default()).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let body = json!({"itemId": 1, "quantity": 2});
    let (status, _, answer) = stack.checkout(&k, body.clone()).await;
    assert_eq!(status, 200, "{answer}");

    stack.kill(Service::Redis).await;
    stack.start(Service::Redis).await;

    let order_id = answer["orderId"].as_str().expect("orderId");
    // The services' pools reconnect on their own; give them a moment.
    let started = Instant::now();
    let order = loop {
        let resp = stack
            .client()
            .get(stack.url(&format!("/order/orders/{order_id}")))
            .send()
            .await
            .expect("GET order");
        if resp.status() == 200 {
            break resp.json::<Value>().await.expect("json");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "order unreadable after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(order["status"], "completed", "{order}");
    assert_completed_with_one_charge(&stack, order_id, 1, 2, 2500).await;
    let (again, headers, replay) = stack.checkout(&k, body).await;
    assert_eq!((again, &replay), (200, &answer));
    assert!(headers.contains_key("idempotent-replayed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalls_shorter_than_its_response_timeout_slow_checkouts_down_but_fail_none() {
    // Redis stops answering for a moment, as in a long fsync (`appendfsync always` on a busy
    // disk), a fork, or a starved host, and every command sent meanwhile waits. Within
    // REDIS_RESPONSE_TIMEOUT (default 2s) that must cost latency only. With the client
    // library's 500ms, such stalls failed checkouts with 503, and left others 202 with a step
    // unrecorded or a downstream key locked until its lease ran out.
    const STALL: Duration = Duration::from_millis(700);
    const UNITS: i64 = 100_000;
    let stack = std::sync::Arc::new(Stack::launch(StackOptions::default()).await);
    stack.put_item(1, "Mug", 100, UNITS).await;
    let load_ends = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let stack = stack.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                while Instant::now() < load_ends {
                    let (status, _, body) = stack.checkout_owned(key(), json!({"itemId": 1, "quantity": 1})).await;
                    replies.push((status, slug(&body).to_string()));
                }
                replies
            })
        })
        .collect();
    let mut stalls = 0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while Instant::now() + STALL < load_ends {
        stack.pause(Service::Redis);
        tokio::time::sleep(STALL).await;
        stack.unpause(Service::Redis);
        stalls += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut outcomes: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for client in clients {
        for reply in client.await.expect("a client task") {
            *outcomes.entry(reply).or_default() += 1;
        }
    }
    let sold = outcomes.get(&(200, String::new())).copied().unwrap_or(0);
    assert!(stalls >= 3 && sold > 0, "{stalls} stalls, {outcomes:?}");
    assert_eq!(
        outcomes.len(),
        1,
        "every checkout through {stalls} stalls succeeds: {outcomes:?}"
    );
    let item = stack.item(1).await;
    assert_eq!(
        (
            item["available"].as_i64(),
            item["reserved"].as_i64(),
            item["sold"].as_i64()
        ),
        (Some(UNITS - sold as i64), Some(0), Some(sold as i64)),
        "{item}"
    );
    let payments = get_internal(&stack, "/payment/totals").await;
    assert_eq!(payments["USD"]["charged"]["count"], sold, "{payments}");
    assert_eq!(payments["USD"]["refunded"]["count"], 0, "{payments}");
}

/// The Redis response timeout of the services in the unanswered-step tests below (the default,
/// set so the stalls stay matched to it). [`ONE_TIMEOUT_STALL`] ends half a second after the
/// first command times out and half a second before a connection opened then would give up
/// (the client library's connection timeout is 1s); [`TWO_TIMEOUTS_STALL`] outlasts both.
/// A checkout's rate limit is checked before its first command, but gives up (and lets it
/// through) after 100 ms, which these margins absorb.
const STALL_TEST_REDIS_TIMEOUT: &str = "2s";
const ONE_TIMEOUT_STALL: Duration = Duration::from_millis(2500);
const TWO_TIMEOUTS_STALL: Duration = Duration::from_secs(6);

/// Sends `request` while Redis is stopped for `stall`: with [`ONE_TIMEOUT_STALL`], the
/// service's first command is applied after its sender gave up on it, as when a reply is lost,
/// and the next is answered; with [`TWO_TIMEOUTS_STALL`], the next goes unanswered too.
/// `warm_up` makes the same kind of request first: the service's scripts are then loaded (a
/// first FCALL of a function Redis lacks would only be refused) and its connection is handed
/// over without a PING, which the stopped Redis would not answer either.
async fn sent_into_a_redis_stall<T>(
    stack: &Stack,
    stall: Duration,
    warm_up: impl std::future::Future<Output = ()>,
    request: impl std::future::Future<Output = T>,
) -> T {
    warm_up.await;
    stack.pause(Service::Redis);
    let (answer, ()) = tokio::join!(request, async {
        tokio::time::sleep(stall).await;
        stack.unpause(Service::Redis);
    });
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_whose_key_step_went_unanswered_leaves_the_key_free_for_its_retry() {
    let stack = Stack::launch(StackOptions {
        stock_env: env(&[("REDIS_RESPONSE_TIMEOUT", STALL_TEST_REDIS_TIMEOUT)]),
        ..StackOptions::default()
    })
    .await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let body = json!({"itemId": 1, "quantity": 2});
    let reserve = "/stock/reserve";
    let warm_up = async {
        let r = stack.post_internal(reserve, Some(&key()), &body).await;
        assert_eq!(r.status, 201, "{}", r.json);
    };

    let sent = stack.post_internal(reserve, Some(&k), &body);
    let r = sent_into_a_redis_stall(&stack, ONE_TIMEOUT_STALL, warm_up, sent).await;
    assert_eq!((r.status, slug(&r.json)), (503, "dependency-unavailable"), "{}", r.json);
    // Nothing was reserved, so the retry must not wait out a lease for a request that is gone.
    let r = stack.post_internal(reserve, Some(&k), &body).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let item = stack.item(1).await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64()),
        (Some(6), Some(4)),
        "{item}"
    );
}

/// A stack whose order service has [`STALL_TEST_REDIS_TIMEOUT`], a 2s lease and a busy recovery
/// worker, after one checkout of 2 of 10 mugs; then a checkout of 2 more, with key `k`, sent
/// into a Redis stall of `stall`. Returns its answer.
async fn checkout_sent_into_a_redis_stall(stall: Duration, k: &str) -> (Stack, u16, Value) {
    let stack = Stack::launch(StackOptions {
        order_env: env(&[
            ("REDIS_RESPONSE_TIMEOUT", STALL_TEST_REDIS_TIMEOUT),
            ("IDEMPOTENCY_LEASE", "2s"),
            ("RECOVERY_INTERVAL", "200ms"),
        ]),
        ..StackOptions::default()
    })
    .await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let warm_up = async {
        let (status, _, answer) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 2})).await;
        assert_eq!(status, 200, "{answer}");
    };
    let (status, _, answer) = sent_into_a_redis_stall(
        &stack,
        stall,
        warm_up,
        stack.checkout(k, json!({"itemId": 1, "quantity": 2})),
    )
    .await;
    (stack, status, answer)
}

/// After [`checkout_sent_into_a_redis_stall`]: the warm-up and the checkout that answered
/// `answer` each completed with one charge, and nothing else was sold or charged.
async fn assert_warm_up_and_checkout_each_sold_once(stack: &Stack, answer: &Value) {
    assert_completed_with_its_one_charge(stack, answer["orderId"].as_str().expect("orderId"), 2500).await;
    let payments = get_internal(stack, "/payment/totals").await;
    assert_eq!(payments["USD"]["charged"]["count"], 2, "{payments}");
    assert_eq!(payments["USD"]["refunded"]["count"], 0, "{payments}");
    let item = stack.item(1).await;
    assert_eq!(
        (
            item["available"].as_i64(),
            item["reserved"].as_i64(),
            item["sold"].as_i64()
        ),
        (Some(6), Some(0), Some(4)),
        "{item}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_answered_503_because_redis_stalled_is_never_carried_out_later() {
    // The step that takes the checkout's key and creates its order was applied, but its answer
    // came too late. 503 tells the client nothing happened; recovery must not then find that
    // order and charge for it.
    let k = key();
    let (stack, status, answer) = checkout_sent_into_a_redis_stall(ONE_TIMEOUT_STALL, &k).await;
    assert_eq!((status, slug(&answer)), (503, "dependency-unavailable"), "{answer}");

    // Past the order's lease, recovery has had many turns.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let totals = get_internal(&stack, "/order/totals").await;
    assert_eq!(
        totals["USD"]["completed"]["count"], 1,
        "only the warm-up completed: {totals}"
    );
    assert_eq!(
        totals["XXX"]["processing"]["count"].as_i64().unwrap_or(0),
        0,
        "{totals}"
    );
    let payments = get_internal(&stack, "/payment/totals").await;
    assert_eq!(
        payments["USD"]["charged"]["count"], 1,
        "only the warm-up was charged: {payments}"
    );
    // The key was left free: the retry is the checkout's one execution.
    let (status, _, answer) = stack.checkout(&k, json!({"itemId": 1, "quantity": 2})).await;
    assert_eq!(status, 200, "{answer}");
    assert_warm_up_and_checkout_each_sold_once(&stack, &answer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_whose_step_cannot_be_taken_back_while_redis_stalls_sends_its_client_back_to_its_key() {
    // Redis stays stopped past the attempt to take the step back too: whether the order exists
    // is unknown, so the client is not told it failed but to retry its key, which then gets
    // the checkout's one outcome.
    let k = key();
    let (stack, status, answer) = checkout_sent_into_a_redis_stall(TWO_TIMEOUTS_STALL, &k).await;
    assert_eq!((status, slug(&answer)), (409, "idempotency-key-in-use"), "{answer}");

    let started = Instant::now();
    let answer = loop {
        let (status, _, answer) = stack.checkout(&k, json!({"itemId": 1, "quantity": 2})).await;
        match status {
            200 => break answer,
            202 | 409 => assert!(started.elapsed() < Duration::from_secs(15), "still {status}: {answer}"),
            other => panic!("{other}: {answer}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_warm_up_and_checkout_each_sold_once(&stack, &answer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_never_hands_out_a_connection_that_a_redis_restart_broke() {
    // Each thread's one connection is handed out without a check, so this is the case that
    // matters: every connection was in use a moment before Redis died.
    let mut stack = Stack::launch(StackOptions::default()).await;
    let pool = shared::redis_pool::connect(&stack.redis_url(), false, Duration::from_secs(2)).expect("pool");
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = pool.get().await.expect("connection");
        let _: String = redis::cmd("PING").query_async(&mut conn).await.expect("PING");
        held.push(conn);
    }
    drop(held);
    // One connection per thread that asked: this runtime has two.
    assert!(
        (1..=2).contains(&pool.open_connections()),
        "the connections in use are open, one per thread: {}",
        pool.open_connections()
    );

    stack.kill(Service::Redis).await;
    stack.start(Service::Redis).await;

    for i in 0..8 {
        let mut conn = pool.get().await.expect("connection after the restart");
        let reply: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        assert_eq!(reply.ok().as_deref(), Some("PONG"), "request {i} after the restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_told_everything_was_undone_is_never_completed_later() {
    // Every reserve attempt outlasts the attempt timeout, so the checkout gives up on stock and
    // ends with 503 "nothing was charged" — while Redis is down, so that ending cannot be written.
    let mut stack = Stack::launch(focused_options(&[("HTTP_ATTEMPT_TIMEOUT", "300ms")])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let stock = stack.proxy(Service::Stock);
    stock.set(FaultPlan::always(Fault::Delay(Duration::from_millis(1500))).on_path("/reserve"));
    let k = key();
    let body = json!({"itemId": 1, "quantity": 1});
    let client = checkout_held_by(&stack, &stock, &k, &body).await;
    stack.kill(Service::Redis).await;
    let reply = client.await.expect("client task");
    stack.heal_proxies();
    stack.start(Service::Redis).await;
    let Some(order_id) = reply.order_id.clone() else {
        panic!("the order service answered without an order: {reply:?}");
    };

    let order = wait_for_terminal(&stack, &order_id, SETTLE_TIMEOUT).await;

    if reply.status == 503 {
        // The client was told everything was undone and the key is free: it may well buy again
        // with a new key. The order must not go on to take its money and stock after all.
        assert_ne!(
            order["status"], "completed",
            "answered 503 dependency-unavailable, then completed: {order}"
        );
        let charges = charges_of(&stack, &order_id).await;
        assert!(charges.iter().all(|c| c["status"] != "succeeded"), "{charges:?}");
    } else {
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    wait_until_settled(&stack, SETTLE_TIMEOUT)
        .await
        .unwrap_or_else(|open| panic!("not settled {SETTLE_TIMEOUT:?} after the faults stopped: {open:#?}"));
    assert_books_of_item_1_hold(&stack, vec![reply]).await;
}

/// A checkout of one unit of item 1 under key `k` with body `raw`, as a runner would write it:
/// a pool on the stack's Redis, the order and its key's record.
fn dead_runners_checkout(
    stack: &Stack,
    k: &str,
    raw: &[u8],
) -> (
    shared::redis_pool::Pool,
    order_service::model::NewOrder,
    shared::idempotency::KeyRef,
) {
    let pool = shared::redis_pool::connect(&stack.redis_url(), false, Duration::from_secs(2)).expect("pool");
    let key_ref = order_service::checkout::store::checkout_key(k, shared::body::fingerprint("POST", "/checkout", raw));
    let order = order_service::model::NewOrder {
        order_id: order_service::ids::OrderId::new_for_key(k),
        item_id: 1,
        quantity: 1,
        customer_id: "guest".into(),
        payment_method: "pm_card_visa".into(),
    };
    (pool, order, key_ref)
}

/// An order leased to a runner that died at once (its lease already run out), written with the
/// service's own store code but without taking its key: the service now takes the key and
/// creates the order in one step, so this state comes only from an older version's crash.
async fn order_left_by_a_dead_runner(stack: &Stack, k: &str, raw: &[u8]) -> String {
    let (pool, order, key_ref) = dead_runners_checkout(stack, k, raw);
    order_service::orders::store::OrderStore::new(pool)
        .create(&order, &key_ref, "run_dead", Duration::from_millis(1))
        .await
        .expect("create the order");
    order.order_id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_process_died_before_taking_its_key_is_dropped_and_the_key_stays_free() {
    let stack = Stack::launch(focused_options(&[])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let raw = br#"{"itemId":1,"quantity":1}"#;
    // The SIGKILL window between writing the order and taking its key.
    let order_id = order_left_by_a_dead_runner(&stack, &k, raw).await;

    let settled = wait_until_settled(&stack, SETTLE_TIMEOUT).await;

    assert!(
        settled.is_ok(),
        "not settled {SETTLE_TIMEOUT:?} after the crash: {settled:#?}"
    );
    let resp = stack
        .client()
        .get(stack.url(&format!("/order/orders/{order_id}")))
        .send()
        .await
        .expect("get order");
    assert_eq!(resp.status(), 404, "an order that never began leaves no trace");
    let totals = stack.get_json("/order/totals", true).await;
    let processing: i64 = totals
        .as_object()
        .map(|m| m.values().map(|c| c["processing"]["count"].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(processing, 0, "{totals}");
    let (status, headers, body) = stack.checkout(&k, serde_json::from_slice(raw).expect("json")).await;
    assert_eq!(status, 200, "the key was never taken, so it is free: {body}");
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_ne!(body["orderId"], order_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_by_a_process_that_died_before_any_step_is_finished_by_recovery() {
    let stack = Stack::launch(focused_options(&[])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let raw = br#"{"itemId":1,"quantity":1}"#;
    // The SIGKILL window between taking the key and the saga's first step: the key and its
    // order written as the service writes them (one step, the key pointing at the order), the
    // runner's lease already run out.
    let (pool, order, key_ref) = dead_runners_checkout(&stack, &k, raw);
    let idempotency =
        shared::idempotency::IdempotencyStore::new(pool.clone(), Duration::from_secs(3600), Duration::from_millis(1));
    let begin = order_service::orders::store::OrderStore::new(pool)
        .begin_checkout(&order, &key_ref, "run_dead", &idempotency, None)
        .await
        .expect("begin");
    assert!(
        matches!(
            begin,
            order_service::checkout::store::Started::Began(
                shared::idempotency::Begin::Execute { resumed: false, .. },
                None
            )
        ),
        "{begin:?}"
    );
    let order_id = order.order_id.to_string();

    let settled = wait_until_settled(&stack, SETTLE_TIMEOUT).await;

    assert!(
        settled.is_ok(),
        "not settled {SETTLE_TIMEOUT:?} after the crash: {settled:#?}"
    );
    let (status, headers, body) = stack.checkout(&k, serde_json::from_slice(raw).expect("json")).await;
    assert_eq!(
        status, 200,
        "recovery finished the checkout and stored its answer: {body}"
    );
    assert!(
        headers.contains_key("idempotent-replayed"),
        "the answer is the stored one"
    );
    assert_eq!(body["orderId"], order_id.as_str());
    assert_completed_with_one_charge(&stack, &order_id, 1, 1, 1250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charged_order_whose_completion_was_lost_goes_forward_and_is_not_failed_with_the_money_kept() {
    let stack = Stack::launch(focused_options(&[])).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let stock = stack.proxy(Service::Stock);
    // Reserve and charge go through; every completion attempt is lost on the way.
    stock.set(FaultPlan::always(Fault::Drop).on_path("/complete"));
    let k = key();
    let (status, _, answer) = stack.checkout(&k, json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(
        status, 202,
        "the charge succeeded and the completion is unknown: {answer}"
    );
    let order_id = answer["orderId"].as_str().expect("orderId").to_string();
    let charges = charges_of(&stack, &order_id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");

    // While recovery takes the order up, stock stays unreachable for a while: every call.
    let dropped = stock.counts().dropped;
    stock.set(FaultPlan::always(Fault::Drop));
    let waited = Instant::now();
    while stock.counts().dropped < dropped + 3 && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stock.counts().dropped >= dropped + 3, "recovery never called stock");
    stock.pass();

    // Forward, since the charge succeeded and stock never refused the completion.
    let order = wait_for_terminal(&stack, &order_id, SETTLE_TIMEOUT).await;
    let charges = charges_of(&stack, &order_id).await;
    assert_eq!(
        order["status"], "completed",
        "charged and never refused by stock, yet ended otherwise: {order} {charges:?}"
    );
    assert_completed_with_one_charge(&stack, &order_id, 1, 1, 1250).await;
}
