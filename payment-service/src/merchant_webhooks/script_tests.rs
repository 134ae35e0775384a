//! The outbox writes (events.lua's `publish` in the charge, refund and wallet scripts) and the
//! delivery scripts (fanout.lua, claim.lua, attempt.lua, retry.lua) against a real Redis.

use std::time::Duration;

use actix_web::http::StatusCode;
use shared::idempotency::{IdempotencyStore, KeyRef, StoredResponse};
use shared::testing::TestRedis;

use super::store::{Attempt, Outgoing};
use super::{DeliveryId, DeliveryStatus, Endpoint, EndpointId, EventType};
use crate::charges::{ChargeOutcome, NewCharge};
use crate::refunds::RefundOutcome;
use crate::store::{Store, answer_key, new_charge_id_for, outbox_key};
use crate::wallets::{Kind, Movement};

fn store(redis: &TestRedis) -> Store {
    Store::new(redis.pool(), Duration::from_secs(60))
}

fn endpoint(n: u8) -> Endpoint {
    Endpoint {
        id: EndpointId::derived(&n.to_string()),
        url: format!("http://127.0.0.1:9/{n}"),
        events: vec![EventType::OrderCompleted],
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        account_id: None,
        created_at: String::new(),
    }
}

fn event(id: &str) -> Outgoing {
    Outgoing {
        event_id: id.into(),
        kind: EventType::OrderCompleted,
        body: format!(r#"{{"id":"{id}","type":"order.completed","timestamp":"t","data":{{}}}}"#),
    }
}

/// The outbox entries of a shard: (aggregate, sequence, item).
async fn outbox(redis: &TestRedis, shard: u16) -> Vec<(String, String, String)> {
    let get = |e: &std::collections::HashMap<String, String>, k: &str| e.get(k).cloned().unwrap_or_default();
    redis
        .stream(&outbox_key(shard))
        .await
        .iter()
        .map(|e| (get(e, "a"), get(e, "s"), get(e, "i")))
        .collect()
}

#[tokio::test]
async fn a_succeeded_charge_its_refund_and_a_credit_each_point_the_outbox_at_their_event() {
    let redis = TestRedis::start().await;
    let store = store(&redis);
    let idem = IdempotencyStore::new(redis.pool(), Duration::from_secs(60), Duration::from_millis(300));
    let order_id = "ord_hook";
    let shard = shared::ids::shard_of(order_id);
    let charge_id = new_charge_id_for(order_id);
    let mut new = NewCharge {
        split: None,
        charge_id: &charge_id,
        order_id,
        amount: 500,
        currency: "USD",
        customer_id: "guest",
        payment_method: "pm_card_visa",
        decline_code: None,
        gateway: "card-a",
        gateway_reference: "ch_sim",
        pix_code: None,
        item_id: Some(42),
    };
    let key = format!("{order_id}:charge");
    let key_ref = KeyRef::new("payment:charge", &key, "fp".into()).with_answer_at(answer_key(order_id, &key));
    let resp = StoredResponse::json(StatusCode::CREATED, &serde_json::json!({}));
    let recorded = store.charge(&new, &key, &idem.answer(&key_ref, "tok", &resp)).await;
    assert!(matches!(recorded, Ok(ChargeOutcome::Recorded(_))));
    assert_eq!(
        outbox(&redis, shard).await,
        [(charge_id.clone(), "1".into(), "42".into())]
    );

    // Its replay records nothing, and publishes nothing.
    let again = store.charge(&new, &key, &idem.answer(&key_ref, "tok", &resp)).await;
    assert!(matches!(again, Ok(ChargeOutcome::Recorded(ref r)) if !r.fresh));
    assert_eq!(outbox(&redis, shard).await.len(), 1);

    // A declined charge is not published.
    let declined_id = new_charge_id_for(order_id);
    new.charge_id = &declined_id;
    new.decline_code = Some("card_declined");
    let declined_key = format!("{order_id}:charge:2");
    let _ = store
        .charge(&new, &declined_key, &idem.answer(&key_ref, "tok", &resp))
        .await;
    assert_eq!(outbox(&redis, shard).await.len(), 1);

    let refunded = store
        .refund(&charge_id, Some(200), "ord_hook:refund", "re_sim", "re_1", None)
        .await;
    assert!(matches!(refunded, Ok(RefundOutcome::Refunded { .. })));
    let entries = outbox(&redis, shard).await;
    assert_eq!(entries[1], (charge_id.clone(), "2".into(), "42".into()));
    let events = store.events(&charge_id, 1, Some(1)).await.expect("events");
    assert_eq!(events[0].kind, "refund.succeeded");

    let customer = "cust_hook";
    let credit = Movement {
        customer_id: customer,
        kind: Kind::Credit,
        amount: 900,
        currency: "USD",
        key: "credit:k",
        transaction_id: "tx_1",
        charge_id: None,
        correlation: customer,
    };
    store.move_wallet(&credit).await.expect("credit");
    let debit = Movement {
        kind: Kind::Debit,
        key: "debit:k",
        transaction_id: "tx_2",
        amount: 100,
        ..credit
    };
    store.move_wallet(&debit).await.expect("debit");
    let wallet_entries = outbox(&redis, shared::ids::shard_of(customer)).await;
    let wallet_entries: Vec<_> = wallet_entries.iter().filter(|(a, ..)| a.starts_with("wal_")).collect();
    assert_eq!(
        wallet_entries,
        [&(format!("wal_{customer}"), "1".to_string(), String::new())]
    );
}

#[tokio::test]
async fn an_event_fans_out_once_per_endpoint_however_often_it_is_relayed() {
    let redis = TestRedis::start().await;
    let store = store(&redis);
    let (a, b) = (endpoint(1), endpoint(2));
    assert_eq!(
        store.fan_out(&event("ord_1-completed"), &[&a, &b], 1_000).await.ok(),
        Some(2)
    );
    assert_eq!(
        store.fan_out(&event("ord_1-completed"), &[&a, &b], 2_000).await.ok(),
        Some(0)
    );
    let due = store.due_endpoints(1_000, 10).await.expect("due");
    assert_eq!(due.len(), 2);
    assert!(store.due_endpoints(999, 10).await.expect("due").is_empty());
    assert_eq!(store.queue().await.ok(), Some((2, Some(1_000))));
    let listed = store.deliveries(&a.id, None, 10).await.expect("deliveries");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event_id, "ord_1-completed");
    assert_eq!(listed[0].status, DeliveryStatus::Pending);
    assert_eq!(listed[0].payload["type"], "order.completed");
    // An event past the retention later: the endpoint's history forgets the old id.
    let later = 1_000 + super::store::RETENTION.as_millis() as u64 + 1;
    store
        .fan_out(&event("ord_2-completed"), &[&a], later)
        .await
        .expect("fan out");
    let mut conn = redis.conn().await;
    let history: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("payment:{{wh}}:ep:{}", a.id.as_str()))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert_eq!(history, [DeliveryId::of("ord_2-completed", &a.id).as_str()]);
}

#[tokio::test]
async fn a_claim_is_a_lease_one_claimant_holds_until_it_runs_out() {
    let redis = TestRedis::start().await;
    let store = store(&redis);
    let e = endpoint(1);
    store
        .fan_out(&event("ord_2-completed"), &[&e], 1_000)
        .await
        .expect("fan out");
    let first = store.claim(&e.id, 1_000, 6_000, 4).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert!(first[0].attempts == 0 && !first[0].manual && first[0].event_id == "ord_2-completed");
    assert!(
        store.claim(&e.id, 2_000, 7_000, 4).await.expect("claim").is_empty(),
        "claimed twice"
    );
    assert!(store.due_endpoints(5_999, 10).await.expect("due").is_empty());
    // The claimant died: at the lease's end it is due again.
    assert_eq!(
        store.due_endpoints(6_000, 10).await.expect("due"),
        std::slice::from_ref(&e.id)
    );
    assert_eq!(store.claim(&e.id, 6_000, 11_000, 4).await.expect("claim").len(), 1);
}

#[tokio::test]
async fn one_endpoints_backlog_never_hides_anothers_due_delivery() {
    let redis = TestRedis::start().await;
    let store = store(&redis);
    let (slow, other) = (endpoint(1), endpoint(2));
    for n in 0..300 {
        store
            .fan_out(&event(&format!("ord_{n}-completed")), &[&slow], 1_000 + n)
            .await
            .expect("fan out");
    }
    store
        .fan_out(&event("ord_x-completed"), &[&other], 5_000)
        .await
        .expect("fan out");
    // However many of its own are due, the slow endpoint is one entry: the other is found.
    let due = store.due_endpoints(6_000, 2).await.expect("due");
    assert_eq!(due, [slow.id.clone(), other.id.clone()]);
    let taken = store.claim(&slow.id, 6_000, 60_000, 4).await.expect("claim");
    assert_eq!(taken.len(), 4, "no more than its free sends");
    assert_eq!(taken[0].event_id, "ord_0-completed", "oldest first");
    assert_eq!(store.claim(&other.id, 6_000, 60_000, 4).await.expect("claim").len(), 1);
    assert_eq!(
        store.due_endpoints(6_000, 10).await.expect("due"),
        std::slice::from_ref(&slow.id)
    );
}

#[tokio::test]
async fn attempts_are_recorded_and_a_dead_delivery_comes_back_by_a_manual_retry() {
    let redis = TestRedis::start().await;
    let store = store(&redis);
    let e = endpoint(1);
    let d = DeliveryId::of("ord_3-completed", &e.id);
    store
        .fan_out(&event("ord_3-completed"), &[&e], 1_000)
        .await
        .expect("fan out");
    let failed = |code| Attempt {
        at: "t".into(),
        status_code: Some(code),
        latency_ms: 3,
        error: Some("the endpoint answered 500".into()),
    };
    let one = |mut v: Vec<super::store::Claimed>| {
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    };
    let claimed = one(store.claim(&e.id, 1_000, 9_000, 4).await.expect("claim"));
    store
        .record_attempt(&claimed, DeliveryStatus::Pending, &failed(500), Some(4_000))
        .await
        .expect("record");
    assert!(store.due_endpoints(3_999, 10).await.expect("due").is_empty());
    assert_eq!(
        store.due_endpoints(4_000, 10).await.expect("due"),
        std::slice::from_ref(&e.id)
    );
    let claimed = one(store.claim(&e.id, 4_000, 9_000, 4).await.expect("claim"));
    assert_eq!(claimed.attempts, 1);
    store
        .record_attempt(&claimed, DeliveryStatus::Dead, &failed(503), None)
        .await
        .expect("record");
    assert!(store.due_endpoints(u64::MAX / 2, 10).await.expect("due").is_empty());
    assert_eq!(store.queue().await.ok(), Some((0, None)));
    let dead = store
        .deliveries(&e.id, Some(DeliveryStatus::Dead), 10)
        .await
        .expect("deliveries");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(),
        [Some(500), Some(503)]
    );
    assert!(dead[0].next_attempt_at.is_none());
    // Finished, it is kept for the retention; retried by hand, it is kept until it ends again.
    let ttl = |key: String| {
        let redis = &redis;
        async move {
            let mut conn = redis.conn().await;
            let ms: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.expect("PTTL");
            ms
        }
    };
    let retention = super::store::RETENTION.as_millis() as i64;
    let delivery_key = format!("payment:{{wh}}:d:{}", d.as_str());
    let attempts_key = format!("payment:{{wh}}:att:{}", d.as_str());
    assert!((retention - 60_000..=retention).contains(&ttl(delivery_key.clone()).await));
    assert!((retention - 60_000..=retention).contains(&ttl(attempts_key.clone()).await));

    assert_eq!(
        store.retry_delivery(&e.id, &d, 20_000).await.ok(),
        Some(Some(DeliveryStatus::Dead))
    );
    assert_eq!(store.queue().await.ok(), Some((1, Some(1_000))));
    assert_eq!((ttl(delivery_key).await, ttl(attempts_key).await), (-1, -1));
    let claimed = one(store.claim(&e.id, 20_000, 29_000, 4).await.expect("claim"));
    assert!(claimed.manual);
    let ok = Attempt {
        status_code: Some(204),
        error: None,
        ..failed(204)
    };
    store
        .record_attempt(&claimed, DeliveryStatus::Succeeded, &ok, None)
        .await
        .expect("record");
    let done = store.delivery(&e.id, &d).await.expect("read").expect("there");
    assert_eq!(done.status, DeliveryStatus::Succeeded);
    assert_eq!(done.attempts.len(), 3);
    // Another endpoint's id finds nothing.
    assert_eq!(store.retry_delivery(&endpoint(2).id, &d, 30_000).await.ok(), Some(None));
}

#[tokio::test]
async fn endpoints_are_stored_listed_and_deleted() {
    let redis = TestRedis::start().await;
    let store = store(&redis);
    let (a, b) = (endpoint(1), endpoint(2));
    store.put_endpoint(&a).await.expect("put");
    store.put_endpoint(&b).await.expect("put");
    assert_eq!(store.endpoint(&a.id).await.ok(), Some(Some(a.clone())));
    assert_eq!(store.endpoints().await.expect("list").len(), 2);
    assert_eq!(store.delete_endpoint(&a.id).await.ok(), Some(true));
    assert_eq!(store.delete_endpoint(&a.id).await.ok(), Some(false));
    assert_eq!(store.endpoints().await.expect("list"), [b]);
}
