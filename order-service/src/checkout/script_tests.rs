//! Every checkout script against a real Redis: the happy path, the replay, the wrong state or
//! owner, and the lapsed lease.

use std::time::Duration;

use actix_web::http::StatusCode;
use shared::idempotency::{Begin, IdempotencyStore, KeyRef, StoredResponse};
use shared::ratelimit::Deferred;
use shared::testing::TestRedis;

use super::store::{Applied, Change, Claim, Progress, Reservation, Settle, Started, StoredOrder, checkout_key};
use crate::ids::{OrderId, OrderStatus, ReservationId, StepName, StepStatus};
use crate::model::{CheckoutCompleted, NewOrder};
use crate::orders::store::{OrderStore, step_text};

const LEASE: Duration = Duration::from_millis(300);

struct Fixture {
    redis: TestRedis,
    store: OrderStore,
    idem: IdempotencyStore,
}

async fn fixture() -> Fixture {
    let redis = TestRedis::start().await;
    let store = OrderStore::new(redis.pool());
    let idem = IdempotencyStore::new(redis.pool(), Duration::from_secs(60), LEASE);
    Fixture { redis, store, idem }
}

fn order(key: &str) -> (NewOrder, KeyRef) {
    let order = NewOrder {
        order_id: OrderId::new_for_key(key),
        item_id: 1,
        quantity: 2,
        customer_id: "guest".into(),
        payment_method: "pm_card_visa".into(),
    };
    (order, checkout_key(key, "fp".into()))
}

fn reservation() -> Reservation {
    Reservation {
        reservation_id: ReservationId::from_stored("rsv_1_abc"),
        total_fee: 500,
        currency: "USD".into(),
    }
}

impl Fixture {
    async fn begin(&self, order: &NewOrder, key: &KeyRef, owner: &str) -> Option<Begin> {
        match self.store.begin_checkout(order, key, owner, &self.idem, None).await {
            Ok(Started::Began(begin, None)) => Some(begin),
            _ => None,
        }
    }

    /// Ends `order` (as run1) with `change`, answering `resp` and storing it under `key` in the
    /// same step (update_and_settle.lua).
    async fn end(&self, order: &NewOrder, key: &KeyRef, change: Change<'_>, resp: &StoredResponse) -> Option<Applied> {
        let change = Change {
            response: Some(resp),
            settle: Some(Settle {
                key,
                store: true,
                idempotency: &self.idem,
            }),
            ..change
        };
        self.store.update(&order.order_id, "run1", change).await.ok()
    }

    /// The order a key's record points at (order.lua's hold_pointer), None when the record is
    /// not a pointer (a hash record, or none).
    async fn pointer(&self, key: &KeyRef) -> Option<String> {
        let mut conn = self.redis.conn().await;
        let kind: String = redis::cmd("TYPE")
            .arg(key.redis_key())
            .query_async(&mut conn)
            .await
            .ok()?;
        if kind != "string" {
            return None;
        }
        let text: String = redis::cmd("GET")
            .arg(key.redis_key())
            .query_async(&mut conn)
            .await
            .ok()?;
        text.strip_prefix("t\n").map(str::to_string)
    }

    /// The key's record as the hash keys taken before #29's seventh pass were (and a Pix's
    /// 202 is): running for `order`, fingerprint "fp", its lease `lease_ms` from now.
    async fn hash_record(&self, key: &KeyRef, order: &OrderId, lease_ms: i64) {
        let mut conn = self.redis.conn().await;
        let now = shared::time::now_ms() as i64;
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(key.redis_key())
            .ignore()
            .cmd("HSET")
            .arg(key.redis_key())
            .arg(&["state", "running", "fp", "fp", "token", order.as_str()])
            .arg("lease")
            .arg(now + lease_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(key.redis_key())
            .arg(60_000)
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("a hash record");
    }

    async fn due(&self, id: &OrderId) -> Vec<OrderId> {
        self.store.due(id.shard(), 10).await.unwrap_or_default()
    }

    /// Processing orders as GET /order/totals counts them (under XXX), or -1 if it fails.
    async fn processing(&self) -> i64 {
        match self.store.totals().await {
            Ok(totals) => totals.get("XXX").map_or(0, |t| t.processing.count),
            Err(_) => -1,
        }
    }

    /// The order shard's outbox: (type, order, amount, currency) per entry.
    async fn outbox(&self, id: &OrderId) -> Vec<(String, String, String, String)> {
        let get = |e: &std::collections::HashMap<String, String>, k: &str| e.get(k).cloned().unwrap_or_default();
        self.redis
            .stream(&shared::outbox::order_outbox(id.shard()))
            .await
            .iter()
            .map(|e| (get(e, "t"), get(e, "o"), get(e, "m"), get(e, "c")))
            .collect()
    }

    /// Begins `order` (as run1), writes `older` into `hash` as an older version left them, then
    /// completes the order, answering 200.
    async fn complete_over(
        &self,
        order: &NewOrder,
        key: &KeyRef,
        hash: &str,
        older: &[(&str, &str)],
    ) -> Option<Applied> {
        let _ = self.begin(order, key, "run1").await;
        let mut conn = self.redis.conn().await;
        let _: () = redis::cmd("HSET")
            .arg(hash)
            .arg(older)
            .query_async(&mut conn)
            .await
            .expect("HSET as an older version");
        let r = reservation();
        let complete = Change {
            step: Some((StepName::Complete, StepStatus::Succeeded)),
            status: Some(OrderStatus::Completed),
            reservation: Some(&r),
            ..Change::default()
        };
        let resp = StoredResponse::json(StatusCode::OK, &serde_json::json!({"ok": true}));
        self.end(order, key, complete, &resp).await
    }

    async fn step(&self, id: &OrderId, status: OrderStatus, owner: &str) -> Applied {
        let change = Change {
            step: Some((StepName::Reserve, StepStatus::Succeeded)),
            status: Some(status),
            ..Change::default()
        };
        self.store.update(id, owner, change).await.unwrap_or(Applied::Unknown)
    }
}

/// The bytes Redis has appended to its AOF so far (AOF on, its first rewrite done).
async fn aof_text(f: &Fixture) -> String {
    let mut conn = f.redis.conn().await;
    let dir: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query_async(&mut conn)
        .await
        .expect("dir");
    let dir = std::path::Path::new(&dir[1]).join("appendonlydir");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).expect("appendonlydir").flatten() {
        if entry.file_name().to_string_lossy().ends_with(".incr.aof") {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(entry.path()).expect("aof")));
        }
    }
    text
}

#[tokio::test]
async fn begin_takes_the_callers_rate_limit_first_and_a_request_over_it_writes_nothing() {
    let f = fixture().await;
    let mut conn = f.redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .expect("appendonly");
    for _ in 0..100 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await
            .expect("info");
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One request a minute, a burst of one.
    let limit = Deferred {
        key: "rl:{order-service:checkout:ip:10.0.0.1}".into(),
        interval_us: 60_000_000,
        burst: 1,
    };
    let (a, key_a) = order("k-limited-a");
    let (b, key_b) = order("k-limited-b");

    let first = f
        .store
        .begin_checkout(&a, &key_a, "run1", &f.idem, Some(&limit))
        .await
        .ok();
    let second = f
        .store
        .begin_checkout(&b, &key_b, "run1", &f.idem, Some(&limit))
        .await
        .ok();

    match first {
        Some(Started::Began(Begin::Execute { resumed: false, .. }, Some(d))) => {
            assert!(d.allowed && d.remaining == 0, "{d:?}")
        }
        other => panic!("the first request is allowed and begins: {other:?}"),
    }
    match second {
        Some(Started::Limited(d)) => assert!(
            !d.allowed && d.retry_after > Duration::from_secs(50),
            "refused for about a minute: {d:?}"
        ),
        other => panic!("the second is over the limit: {other:?}"),
    }
    assert!(
        f.store.load(&b.order_id).await.ok().flatten().is_none(),
        "no order for it"
    );
    let held: bool = redis::cmd("EXISTS")
        .arg(key_b.redis_key())
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert!(!held, "nothing stored under its key");
    let aof = aof_text(&f).await;
    assert!(
        aof.contains(a.order_id.as_str()),
        "the first order's writes are in the AOF"
    );
    assert!(
        !aof.contains("rl:{"),
        "the limiter's timestamp is kept out of it:\n{aof}"
    );
}

#[tokio::test]
async fn begin_creates_the_order_with_its_key_and_refuses_a_second_request_while_it_runs() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let (other, _) = order("k1");

    let first = f.begin(&o, &key, "run1").await;
    let again = f.begin(&other, &key, "run2").await;
    let reused = f.begin(&other, &checkout_key("k1", "other-body".into()), "run3").await;

    assert_eq!(
        first,
        Some(Begin::Execute {
            token: o.order_id.to_string(),
            resumed: false
        })
    );
    assert!(matches!(again, Some(Begin::InUse { .. })), "{again:?}");
    assert_eq!(reused, Some(Begin::Reused));
    assert!(f.store.load(&o.order_id).await.ok().flatten().is_some());
    assert!(
        f.store.load(&other.order_id).await.ok().flatten().is_none(),
        "a refused request writes nothing"
    );
    assert_eq!(f.processing().await, 1);
    // Its creation time is stored in milliseconds and served as RFC 3339.
    let mut conn = f.redis.conn().await;
    let stored: Option<String> = redis::cmd("HGET")
        .arg(crate::orders::store::order_key(&o.order_id))
        .arg("createdAt")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    let stored_ms: Option<u64> = stored.and_then(|t| t.parse().ok());
    let served = f.store.get(&o.order_id).await.ok().flatten().map(|v| v.created_at);
    assert_eq!(served.as_deref().and_then(shared::time::parse_rfc3339_ms), stored_ms);
    assert!(stored_ms.is_some());
}

/// The checkout writes its totals once, when its order ends: processing orders are counted when
/// the totals are read, from recovery's set, whatever else that set holds; the counts older
/// versions kept are left out.
#[tokio::test]
async fn processing_orders_are_counted_when_read_and_older_counts_are_left_out() {
    let f = fixture().await;
    let (running, running_key) = order("k-running");
    let (ended, ended_key) = order("k-ended");
    let _ = f.begin(&running, &running_key, "run1").await;
    let _ = f.begin(&ended, &ended_key, "run1").await;
    // Ended, its key not settled yet: still in recovery's set, no longer processing.
    let _ = f.step(&ended.order_id, OrderStatus::Failed, "run1").await;
    let mut conn = f.redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("order:{{ord:{}}}:totals", running.order_id.shard()))
        .arg("XXX:processing:count")
        .arg(7)
        .query_async(&mut conn)
        .await
        .expect("an older version's count");
    let in_set: i64 = redis::cmd("ZSCORE")
        .arg(crate::orders::store::active_key(ended.order_id.shard()))
        .arg(ended.order_id.as_str())
        .query_async::<Option<f64>>(&mut conn)
        .await
        .expect("ZSCORE")
        .map_or(0, |_| 1);

    assert_eq!(in_set, 1, "the ended order is still in recovery's set");
    assert_eq!(f.processing().await, 1);
    let totals = f.store.totals().await.ok().unwrap_or_default();
    assert_eq!(totals.get("XXX").map(|t| t.failed.count), Some(1), "{totals:?}");
}

/// Totals are counted in letters (`USD:c:n`, `USD:c:a`); a shard's older fields, named in full,
/// add to the same buckets.
#[tokio::test]
async fn an_ended_order_is_counted_in_letters_and_older_totals_named_in_full_add_to_them() {
    let f = fixture().await;
    let (o, key) = order("k-letters");
    let totals = format!("order:{{ord:{}}}:totals", o.order_id.shard());
    let older = [("USD:completed:count", "2"), ("USD:completed:amount", "1000")];

    assert_eq!(f.complete_over(&o, &key, &totals, &older).await, Some(Applied::Yes));
    let mut conn = f.redis.conn().await;
    let letters: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg(&totals)
        .arg(&["USD:c:n", "USD:c:a"])
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    assert_eq!(letters, [Some(1), Some(500)]);
    let usd = f
        .store
        .totals()
        .await
        .ok()
        .unwrap_or_default()
        .get("USD")
        .cloned()
        .unwrap_or_default();
    assert_eq!((usd.completed.count, usd.completed.amount), (3, 1500));
}

#[tokio::test]
async fn create_makes_an_order_once() {
    let f = fixture().await;
    let (o, key) = order("k1");

    let first = f.store.create(&o, &key, "run1", LEASE).await.ok();
    let again = f.store.create(&o, &key, "run2", LEASE).await.ok();

    assert_eq!((first, again), (Some(true), Some(false)));
    assert_eq!(f.processing().await, 1);
}

#[tokio::test]
async fn update_moves_the_totals_with_the_order_and_refuses_other_owners_and_ended_orders() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let r = reservation();

    let priced = f
        .store
        .update(
            &o.order_id,
            "run1",
            Change {
                step: Some((StepName::Reserve, StepStatus::Succeeded)),
                reservation: Some(&r),
                ..Change::default()
            },
        )
        .await
        .ok();
    // Priced while processing, it is still counted under XXX with amount 0, and not in USD.
    assert_eq!(f.processing().await, 1);
    let priced_totals = f.store.totals().await.ok().unwrap_or_default();
    assert!(!priced_totals.contains_key("USD"), "{priced_totals:?}");
    let fenced = f.step(&o.order_id, OrderStatus::Failed, "someone-else").await;
    let ended = f.step(&o.order_id, OrderStatus::Failed, "run1").await;
    let after_end = f.step(&o.order_id, OrderStatus::Completed, "run1").await;
    let missing = f
        .step(&OrderId::new_for_key("nobody"), OrderStatus::Failed, "run1")
        .await;

    assert_eq!(priced, Some(Applied::Yes));
    assert_eq!(
        (fenced, ended, after_end, missing),
        (Applied::Fenced, Applied::Yes, Applied::Terminal, Applied::Missing)
    );
    let view = f.store.get(&o.order_id).await.ok().flatten();
    assert_eq!(view.as_ref().map(|v| v.status.as_str()), Some("failed"));
    assert_eq!(
        view.as_ref().and_then(|v| v.reservation_id.clone()),
        Some("rsv_1_abc".into())
    );
    let totals = f.store.totals().await.ok().unwrap_or_default();
    let usd = totals.get("USD").cloned().unwrap_or_default();
    assert_eq!((usd.failed.count, usd.failed.amount, usd.processing.count), (1, 500, 0));
    assert_eq!(f.processing().await, 0);
    // The end, and only the end (not the fenced, refused or later changes), is in the outbox.
    let id = o.order_id.as_str().to_string();
    assert_eq!(
        f.outbox(&o.order_id).await,
        [("order.failed".into(), id, "500".into(), "USD".into())]
    );
}

#[tokio::test]
async fn update_and_settle_ends_the_order_stores_its_answer_and_retires_it_in_one_step() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let r = reservation();
    let reserved = Change {
        step: Some((StepName::Reserve, StepStatus::Succeeded)),
        reservation: Some(&r),
        ..Change::default()
    };
    let charged = Change {
        step: Some((StepName::Charge, StepStatus::Succeeded)),
        fields: vec![("chargeId", "ch_1".into())],
        ..Change::default()
    };
    assert_eq!(
        f.store.update(&o.order_id, "run1", reserved).await.ok(),
        Some(Applied::Yes)
    );
    assert_eq!(
        f.store.update(&o.order_id, "run1", charged).await.ok(),
        Some(Applied::Yes)
    );
    let resp = StoredResponse::json(
        StatusCode::OK,
        &CheckoutCompleted {
            order_id: o.order_id.to_string(),
            status: "completed".into(),
            item_id: o.item_id,
            quantity: o.quantity,
            amount: r.total_fee,
            currency: r.currency.clone(),
            reservation_id: r.reservation_id.to_string(),
            charge_id: "ch_1".into(),
        },
    );

    let complete = Change {
        step: Some((StepName::Complete, StepStatus::Succeeded)),
        status: Some(OrderStatus::Completed),
        ..Change::default()
    };
    let ended = f.end(&o, &key, complete, &resp).await;
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;

    assert_eq!(ended, Some(Applied::Yes));
    // The body is stored nowhere, and the key still only points at its order: a completed
    // order's 200 is rendered from its fields, byte for byte the answer its checkout gave.
    let mut conn = f.redis.conn().await;
    let order_body: Option<String> = redis::cmd("HGET")
        .arg(format!("order:{{ord:{}}}:order:{}", o.order_id.shard(), o.order_id))
        .arg("respBody")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(
        (f.pointer(&key).await, order_body),
        (Some(o.order_id.to_string()), None)
    );
    assert_eq!(f.begin(&o, &key, "run2").await, Some(Begin::Replay(resp.clone())));
    let steps: Vec<(String, String)> = f
        .store
        .get(&o.order_id)
        .await
        .ok()
        .flatten()
        .map(|v| v.steps.into_iter().map(|s| (s.name, s.status)).collect())
        .unwrap_or_default();
    assert_eq!(
        steps,
        [
            ("created".into(), "succeeded".into()),
            ("reserve".into(), "succeeded".into()),
            ("charge".into(), "succeeded".into()),
            ("complete".into(), "succeeded".into())
        ]
    );
    assert_eq!(f.store.final_response(&o.order_id).await.ok().flatten(), Some(resp));
    assert!(
        f.due(&o.order_id).await.is_empty(),
        "a settled order leaves recovery's set"
    );
    let kinds: Vec<String> = f.outbox(&o.order_id).await.into_iter().map(|e| e.0).collect();
    assert_eq!(kinds, ["order.completed"]);
}

#[tokio::test]
async fn an_end_records_the_steps_taken_since_the_last_write_in_order_with_their_own_times() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let r = reservation();
    let reserved_at = "2026-12-05T10:00:00.001Z";
    let charged_at = "2026-12-05T10:00:00.002Z";
    let complete = Change {
        earlier: vec![
            step_text(StepName::Reserve, StepStatus::Succeeded, reserved_at),
            step_text(StepName::Charge, StepStatus::Succeeded, charged_at),
        ],
        step: Some((StepName::Complete, StepStatus::Succeeded)),
        status: Some(OrderStatus::Completed),
        reservation: Some(&r),
        fields: vec![("chargeId", "ch_1".into())],
        ..Change::default()
    };
    let resp = StoredResponse::json(StatusCode::OK, &serde_json::json!({"ok": true}));

    assert_eq!(f.end(&o, &key, complete, &resp).await, Some(Applied::Yes));
    let view = f.store.get(&o.order_id).await.ok().flatten().expect("the order");
    let steps: Vec<(&str, &str, &str)> = view
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str(), s.at.as_str()))
        .collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert_eq!(
        steps[..3],
        [
            ("created", "succeeded", view.created_at.as_str()),
            ("reserve", "succeeded", reserved_at),
            ("charge", "succeeded", charged_at),
        ]
    );
    assert_eq!((steps[3].0, steps[3].1), ("complete", "succeeded"));
    // What the unwritten steps learnt is recorded with them: priced, with both ids.
    assert_eq!(
        (
            view.amount,
            view.currency.as_deref(),
            view.reservation_id.as_deref(),
            view.charge_id.as_deref()
        ),
        (Some(500), Some("USD"), Some("rsv_1_abc"), Some("ch_1"))
    );
    let mut conn = f.redis.conn().await;
    let (n, st): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(format!("order:{{ord:{}}}:order:{}", o.order_id.shard(), o.order_id))
        .arg("n")
        .arg("st")
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    // One field for the three steps written: 'created' is the order's createdAt.
    let st = st.unwrap_or_default();
    let lines: Vec<&str> = st.lines().collect();
    assert_eq!((n, lines.len()), (None, 3), "{st}");
    assert!(lines[0].starts_with("r s ") && lines[2].starts_with("k s "), "{st}");
}

#[tokio::test]
async fn an_order_stored_with_numbered_steps_goes_on_numbering_them() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let order = format!("order:{{ord:{}}}:order:{}", o.order_id.shard(), o.order_id);
    // As versions before #29's eleventh pass wrote its first step.
    let older = [("n", "1"), ("s1", "reserve succeeded 2026-12-05T10:00:00.001Z")];

    assert_eq!(f.complete_over(&o, &key, &order, &older).await, Some(Applied::Yes));
    let mut conn = f.redis.conn().await;
    let (n, s2, st): (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&order)
        .arg(&["n", "s2", "st"])
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    assert_eq!(n.as_deref(), Some("2"));
    assert!(s2.is_some_and(|s| s.starts_with("k s ")) && st.is_none());
    let view = f.store.get(&o.order_id).await.ok().flatten().expect("the order");
    let names: Vec<&str> = view.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["created", "reserve", "complete"]);
}

#[tokio::test]
async fn settle_frees_the_key_but_keeps_an_order_that_owes_a_release_due_for_recovery() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let owed = Change {
        status: Some(OrderStatus::Compensated),
        fields: vec![("releaseOwed", "rsv_1_abc".into())],
        ..Change::default()
    };
    let _ = f.store.update(&o.order_id, "run1", owed).await;

    let settled = f.store.settle_key(&o.order_id, &key, None, &f.idem).await;
    let retry = f.begin(&o, &key, "run2").await;

    assert!(settled.is_ok());
    assert!(
        matches!(retry, Some(Begin::Execute { resumed: false, .. })),
        "the key is free: {retry:?}"
    );
    assert_eq!(f.due(&o.order_id).await, vec![o.order_id.clone()]);
}

#[tokio::test]
async fn an_end_that_owes_a_release_settles_its_key_and_stays_due_for_recovery() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let resp = StoredResponse::json(StatusCode::CONFLICT, &serde_json::json!({"status": "compensated"}));

    // The debt is written by the very change that ends the order and settles its key.
    let owed = Change {
        status: Some(OrderStatus::Compensated),
        fields: vec![("releaseOwed", "rsv_1_abc".into())],
        ..Change::default()
    };
    let ended = f.end(&o, &key, owed, &resp).await;

    assert_eq!(ended, Some(Applied::Yes));
    assert_eq!(f.begin(&o, &key, "run2").await, Some(Begin::Replay(resp)));
    assert_eq!(f.due(&o.order_id).await, vec![o.order_id.clone()]);
}

#[tokio::test]
async fn release_done_clears_the_debt_and_records_the_step_once() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let owed = Change {
        fields: vec![("releaseOwed", "rsv_1_abc".into())],
        ..Change::default()
    };
    let _ = f.store.update(&o.order_id, "run1", owed).await;

    let _ = f.store.release_done(&o.order_id, StepStatus::Succeeded).await;
    let _ = f.store.release_done(&o.order_id, StepStatus::Succeeded).await;

    let progress = f.store.load(&o.order_id).await.ok().flatten().map(|(_, p)| p);
    assert_eq!(progress.map(|p| p.release_owed), Some(false));
    let steps = f
        .store
        .get(&o.order_id)
        .await
        .ok()
        .flatten()
        .map(|v| v.steps)
        .unwrap_or_default();
    assert_eq!(steps.iter().filter(|s| s.name == "release").count(), 1);
}

#[tokio::test]
async fn claim_waits_out_a_live_lease_then_one_claimant_wins_and_a_missing_order_is_gone() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;

    let early = f.store.claim(&o.order_id, "rec1", LEASE).await.ok();
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let won = f.store.claim(&o.order_id, "rec1", LEASE).await.ok();
    let lost = f.store.claim(&o.order_id, "rec2", LEASE).await.ok();
    let gone = f.store.claim(&OrderId::new_for_key("nobody"), "rec1", LEASE).await.ok();
    let old_owner = f.step(&o.order_id, OrderStatus::Failed, "run1").await;

    assert_eq!(
        (early, won, lost, gone),
        (
            Some(Claim::Held),
            Some(Claim::Claimed),
            Some(Claim::Held),
            Some(Claim::Gone)
        )
    );
    assert_eq!(
        old_owner,
        Applied::Fenced,
        "the runner that lost its lease is fenced out"
    );
}

#[tokio::test]
async fn lease_extends_only_its_owners_and_due_lists_only_lapsed_orders() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;

    let stranger = f
        .store
        .lease(&o.order_id, "someone-else", Duration::from_secs(5))
        .await
        .ok();
    let owner = f.store.lease(&o.order_id, "run1", Duration::from_millis(1)).await.ok();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let lapsed = f.due(&o.order_id).await;
    let _ = f.store.lease(&o.order_id, "run1", Duration::from_secs(5)).await;
    let live = f.due(&o.order_id).await;

    assert_eq!((stranger, owner), (Some(false), Some(true)));
    assert_eq!(lapsed, vec![o.order_id.clone()]);
    assert!(live.is_empty());
}

#[tokio::test]
async fn abandon_drops_an_order_that_never_began_and_keeps_one_that_did() {
    let f = fixture().await;
    let (never, key) = order("k1");
    let (begun, begun_key) = order("k2");
    let _ = f.store.create(&never, &key, "run1", LEASE).await;
    let _ = f.begin(&begun, &begun_key, "run2").await;
    let r = reservation();
    let reserved = Change {
        reservation: Some(&r),
        ..Change::default()
    };
    let _ = f.store.update(&begun.order_id, "run2", reserved).await;

    let dropped = f.store.abandon(&never.order_id).await.ok();
    let kept = f.store.abandon(&begun.order_id).await.ok();

    assert_eq!((dropped, kept), (Some(true), Some(false)));
    assert!(f.store.get(&never.order_id).await.ok().flatten().is_none());
    assert_eq!(f.processing().await, 1, "only the order that began");
}

#[tokio::test]
async fn undo_begin_takes_back_this_requests_key_and_order_but_not_anothers() {
    let f = fixture().await;
    let (mine, key) = order("k1");
    let (theirs, _) = order("k1");
    let _ = f.begin(&mine, &key, "run1").await;

    let not_mine = f.store.undo_begin(&theirs.order_id, &key).await.ok();
    let undone = f.store.undo_begin(&mine.order_id, &key).await.ok();
    let retry = f.begin(&theirs, &key, "run2").await;

    assert_eq!((not_mine, undone), (Some(false), Some(true)));
    assert!(f.store.get(&mine.order_id).await.ok().flatten().is_none());
    assert!(
        matches!(retry, Some(Begin::Execute { resumed: false, .. })),
        "{retry:?}"
    );
}

#[tokio::test]
async fn an_awaited_pix_replays_its_202_until_the_end_replaces_it_and_a_wake_makes_it_due_now() {
    let f = fixture().await;
    let (o, key) = order("pix-1");
    let id = &o.order_id;
    assert!(matches!(f.begin(&o, &key, "r1").await, Some(Begin::Execute { .. })));
    let r = reservation();
    let reserved = Change {
        step: Some((StepName::Reserve, StepStatus::Succeeded)),
        reservation: Some(&r),
        ..Change::default()
    };
    assert_eq!(f.store.update(id, "r1", reserved).await.ok(), Some(Applied::Yes));
    assert_eq!(
        f.store.wake(id).await.expect("wake").as_deref(),
        Some("processing"),
        "a processing order is not woken"
    );
    assert!(f.due(id).await.is_empty());
    let awaiting = StoredResponse::json(StatusCode::ACCEPTED, &serde_json::json!({"status": "awaiting_payment"}))
        .with_location(format!("/order/orders/{id}"));
    let change = Change {
        step: Some((StepName::Charge, StepStatus::Pending)),
        status: Some(OrderStatus::AwaitingPayment),
        fields: vec![("chargeId", "ch_1".into()), ("pixExpiresAtMs", "99999999999999".into())],
        ..Change::default()
    };
    let far = 99_999_999_999_999;
    let applied = f
        .store
        .await_payment(id, "r1", change, &key, &awaiting, &f.idem, far)
        .await;
    assert_eq!(applied.ok(), Some(Applied::Yes));
    // The key answers the 202 to every retry; recovery leaves the order until its expiry.
    match f.idem.begin(&key, "other").await.ok() {
        Some(Begin::Replay(resp)) => assert_eq!((resp.status, resp.location.is_some()), (202, true)),
        other => panic!("expected the 202 replayed, got {other:?}"),
    }
    assert!(f.due(id).await.is_empty(), "not due before its expiry");
    let (_, progress) = f.store.load(id).await.expect("load").expect("order");
    assert_eq!(progress.awaiting_until_ms, Some(far));
    assert_eq!(
        f.store.final_response(id).await.expect("read"),
        None,
        "awaiting has not ended"
    );
    // Payment heard it was paid: due now, and claimable.
    assert_eq!(
        f.store.wake(id).await.expect("wake").as_deref(),
        Some("awaiting_payment")
    );
    assert_eq!(f.due(id).await, vec![id.clone()]);
    assert_eq!(f.store.claim(id, "rec", LEASE).await.ok(), Some(Claim::Claimed));
    let paid = Change {
        step: Some((StepName::Charge, StepStatus::Succeeded)),
        status: Some(OrderStatus::Processing),
        ..Change::default()
    };
    assert_eq!(f.store.update(id, "rec", paid).await.ok(), Some(Applied::Yes));
    // The end replaces the stored 202 with the final answer, and drops its Location.
    let done = StoredResponse::json(StatusCode::OK, &serde_json::json!({"status": "completed"}));
    let end = Change {
        step: Some((StepName::Complete, StepStatus::Succeeded)),
        status: Some(OrderStatus::Completed),
        response: Some(&done),
        settle: Some(Settle {
            key: &key,
            store: true,
            idempotency: &f.idem,
        }),
        ..Change::default()
    };
    assert_eq!(f.store.update(id, "rec", end).await.ok(), Some(Applied::Yes));
    match f.idem.begin(&key, "other").await.ok() {
        Some(Begin::Replay(resp)) => assert_eq!((resp.status, resp.location), (200, None)),
        other => panic!("expected the final answer replayed, got {other:?}"),
    }
    assert_eq!(
        f.store.wake(id).await.expect("wake").as_deref(),
        Some("completed"),
        "an ended order is not woken"
    );
    assert!(f.due(id).await.is_empty());
    let unknown = OrderId::new_for_key("pix-none");
    assert_eq!(f.store.wake(&unknown).await.expect("wake"), None);
}

/// A resumed order must settle the key it was made for: the order keeps the client's key, and
/// an order stored before (with its record's whole name) still names the same record.
#[tokio::test]
async fn a_loaded_order_names_its_keys_record_whether_it_stored_the_key_or_the_records_name() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let record_of = |loaded: Option<(StoredOrder, Progress)>| loaded.map(|(s, _)| s.idempotency_key);
    assert_eq!(
        record_of(f.store.load(&o.order_id).await.ok().flatten()),
        Some(key.redis_key().to_string())
    );
    let mut conn = f.redis.conn().await;
    let hash = crate::orders::store::order_key(&o.order_id);
    let ik: Option<String> = redis::cmd("HGET")
        .arg(&hash)
        .arg("ik")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(ik.as_deref(), Some("k1"), "the client's key, not the record's name");

    let _: () = redis::pipe()
        .cmd("HDEL")
        .arg(&hash)
        .arg("ik")
        .ignore()
        .cmd("HSET")
        .arg(&hash)
        .arg("idemKey")
        .arg(key.redis_key())
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("older order");
    assert_eq!(
        record_of(f.store.load(&o.order_id).await.ok().flatten()),
        Some(key.redis_key().to_string())
    );
}

/// The key's record is one string naming its order, set with its expiry in one command; what a
/// retry needs (fingerprint, lease, answer) is read from the order.
#[tokio::test]
async fn a_new_keys_record_points_at_its_order_which_decides_every_retry() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let (other, _) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let mut conn = f.redis.conn().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key.redis_key())
        .query_async(&mut conn)
        .await
        .expect("PTTL");

    let busy = f.begin(&other, &key, "run2").await;
    let reused = f.begin(&other, &checkout_key("k1", "other-body".into()), "run3").await;
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let lapsed = f.begin(&other, &key, "run4").await;
    let declined = StoredResponse::json(StatusCode::PAYMENT_REQUIRED, &serde_json::json!({"type": "declined"}));
    let failed = Change {
        step: Some((StepName::Charge, StepStatus::Declined)),
        status: Some(OrderStatus::Failed),
        ..Change::default()
    };
    let _ = f.store.claim(&o.order_id, "run1", LEASE).await;
    let ended = f.end(&o, &key, failed, &declined).await;

    assert_eq!(f.pointer(&key).await, Some(o.order_id.to_string()));
    assert!(ttl > 59_000 && ttl <= 60_000, "the key's expiry is set with it: {ttl}");
    assert_eq!(
        f.idem.token_of(&key).await.ok().flatten(),
        Some(o.order_id.to_string()),
        "recovery reads the key's order as it read a hash record's token"
    );
    assert!(
        matches!(busy, Some(Begin::InUse { .. })),
        "the order's lease is live: {busy:?}"
    );
    assert_eq!(reused, Some(Begin::Reused), "the order's fingerprint is the request's");
    assert_eq!(
        lapsed,
        Some(Begin::Execute {
            token: o.order_id.to_string(),
            resumed: true
        }),
        "a lapsed lease lets the retry take the order over"
    );
    assert_eq!(ended, Some(Applied::Yes));
    assert_eq!(
        f.pointer(&key).await,
        Some(o.order_id.to_string()),
        "the answer is the order's: the key is not written again"
    );
    assert_eq!(f.begin(&other, &key, "run5").await, Some(Begin::Replay(declined)));
}

/// A pointer as versions before #29's eleventh pass wrote it ("token\n<order id>").
#[tokio::test]
async fn a_pointer_with_its_name_in_full_from_an_earlier_version_is_still_followed() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let (other, _) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    let mut conn = f.redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(key.redis_key())
        .arg(format!("token\n{}", o.order_id))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("an older pointer");

    let busy = f.begin(&other, &key, "run2").await;
    let declined = StoredResponse::json(StatusCode::PAYMENT_REQUIRED, &serde_json::json!({"type": "declined"}));
    let failed = Change {
        step: Some((StepName::Charge, StepStatus::Declined)),
        status: Some(OrderStatus::Failed),
        ..Change::default()
    };
    let ended = f.end(&o, &key, failed, &declined).await;

    assert!(matches!(busy, Some(Begin::InUse { .. })), "{busy:?}");
    assert_eq!(f.idem.token_of(&key).await.ok().flatten(), Some(o.order_id.to_string()));
    assert_eq!(ended, Some(Applied::Yes));
    assert_eq!(f.begin(&other, &key, "run3").await, Some(Begin::Replay(declined)));
}

/// Keys taken before the pointer (hash records) are decided and settled as they were.
#[tokio::test]
async fn a_hash_record_from_before_the_pointer_is_still_decided_and_settled_by_the_shared_record() {
    let f = fixture().await;
    let (o, key) = order("k1");
    let (other, _) = order("k1");
    let _ = f.begin(&o, &key, "run1").await;
    f.hash_record(&key, &o.order_id, 60_000).await;

    let busy = f.begin(&other, &key, "run2").await;
    let declined = StoredResponse::json(StatusCode::PAYMENT_REQUIRED, &serde_json::json!({"type": "declined"}));
    let failed = Change {
        status: Some(OrderStatus::Failed),
        ..Change::default()
    };
    let ended = f.end(&o, &key, failed, &declined).await;

    assert!(matches!(busy, Some(Begin::InUse { .. })), "{busy:?}");
    assert_eq!(ended, Some(Applied::Yes));
    assert_eq!(f.pointer(&key).await, None, "still a hash record");
    let mut conn = f.redis.conn().await;
    let state: Option<String> = redis::cmd("HGET")
        .arg(key.redis_key())
        .arg("state")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(state.as_deref(), Some("done"));
    assert_eq!(f.begin(&other, &key, "run3").await, Some(Begin::Replay(declined)));
}

/// A pointer whose order is gone (dropped as never begun) leaves the key free for a new order.
#[tokio::test]
async fn a_key_pointing_at_an_order_that_is_gone_is_taken_afresh() {
    let f = fixture().await;
    let (gone, key) = order("k1");
    let (next, _) = order("k1");
    let _ = f.begin(&gone, &key, "run1").await;
    let mut conn = f.redis.conn().await;
    let _: () = redis::cmd("DEL")
        .arg(crate::orders::store::order_key(&gone.order_id))
        .query_async(&mut conn)
        .await
        .expect("DEL");

    let retry = f.begin(&next, &key, "run2").await;

    assert_eq!(
        retry,
        Some(Begin::Execute {
            token: next.order_id.to_string(),
            resumed: false
        })
    );
    assert_eq!(f.pointer(&key).await, Some(next.order_id.to_string()));
    assert!(f.store.load(&next.order_id).await.ok().flatten().is_some());
}
