//! receive.lua, paid.lua and cancel.lua against a real Redis: a webhook stored once per id, a
//! Pix paid once and counted once, the race between its payment and its order's expiry.

use std::time::Duration;

use actix_web::http::StatusCode;
use shared::idempotency::{IdempotencyStore, KeyRef, StoredResponse};
use shared::testing::TestRedis;

use super::store::Paid;
use crate::charges::{ChargeOutcome, NewCharge};
use crate::store::{Store, answer_key, new_charge_id_for};

const SUCCEEDED: &str = r#"{"type":"charge.succeeded","at":"t","correlationId":"o","data":{}}"#;
const CANCELED: &str = r#"{"type":"charge.canceled","at":"t","correlationId":"o","data":{}}"#;

fn store(redis: &TestRedis) -> (Store, IdempotencyStore) {
    let ttl = Duration::from_secs(60);
    (
        Store::new(redis.pool(), ttl),
        IdempotencyStore::new(redis.pool(), ttl, Duration::from_millis(300)),
    )
}

/// A pending Pix of 700 BRL at `pix`, recorded as the charge handler records it.
async fn pending_pix(store: &Store, idem: &IdempotencyStore, order_id: &str) -> String {
    let charge_id = new_charge_id_for(order_id);
    let new = NewCharge {
        split: None,
        charge_id: &charge_id,
        order_id,
        amount: 700,
        currency: "BRL",
        customer_id: "guest",
        payment_method: "pix",
        decline_code: None,
        gateway: "pix",
        gateway_reference: "ch_sim_pix",
        pix_code: Some("000201pix"),
        item_id: None,
    };
    let key = format!("{order_id}:charge");
    let key_ref = KeyRef::new("payment:charge", &key, "fp".into()).with_answer_at(answer_key(order_id, &key));
    let resp = StoredResponse::json(StatusCode::CREATED, &serde_json::json!({"chargeId": charge_id}));
    match store.charge(&new, &key, &idem.answer(&key_ref, "tok", &resp)).await {
        Ok(ChargeOutcome::Recorded(r)) => assert_eq!(r.pix_code.as_deref(), Some("000201pix")),
        _ => panic!("the pending Pix was not recorded"),
    }
    charge_id
}

async fn brl_charged(store: &Store) -> (u64, u64) {
    let totals = store.totals().await.expect("totals");
    let brl = totals.currencies.get("BRL").cloned().unwrap_or_default();
    (brl.charged.count, brl.charged.amount)
}

#[tokio::test]
async fn a_webhook_is_stored_once_per_id_and_read_by_the_group_until_acknowledged() {
    let redis = TestRedis::start().await;
    let (store, _) = store(&redis);
    store.ensure_group().await.expect("group");
    store
        .ensure_group()
        .await
        .expect("a second replica's group call is harmless");
    assert!(store.receive_webhook("pix", "msg_1", b"{}").await.expect("receive"));
    assert!(!store.receive_webhook("pix", "msg_1", b"{}").await.expect("re-sent"));
    assert!(
        store
            .receive_webhook("card-a", "msg_1", b"{}")
            .await
            .expect("another provider's id")
    );
    let taken = store.read_new("w1", 10).await.expect("read");
    assert_eq!(taken.len(), 2, "the re-send was not stored");
    assert_eq!(
        (taken[0].provider.as_str(), taken[0].webhook_id.as_str()),
        ("pix", "msg_1")
    );
    assert!(store.read_new("w2", 10).await.expect("read").is_empty(), "taken once");
    // w1 dies holding them: after the idle time another worker takes them over.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let claimed = store
        .claim_idle("w2", Duration::from_millis(50), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    for r in &claimed {
        store.ack(&r.entry_id).await.expect("ack");
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let again = store
        .claim_idle("w3", Duration::from_millis(50), 10)
        .await
        .expect("claim");
    assert!(again.is_empty(), "acknowledged webhooks are done");
}

#[tokio::test]
async fn a_pending_pix_is_not_money_until_paid_and_is_paid_and_counted_once() {
    let redis = TestRedis::start().await;
    let (store, idem) = store(&redis);
    let charge_id = pending_pix(&store, &idem, "ord_pix1").await;
    assert_eq!(brl_charged(&store).await, (0, 0), "pending is not charged");
    let c = store.get_charge(&charge_id).await.expect("read").expect("charge");
    assert_eq!(
        (c.status.as_str(), c.pix.map(|p| p.code)),
        ("pending", Some("000201pix".into()))
    );
    assert_eq!(
        store.pix_paid(&charge_id, 699, "{}").await.expect("paid"),
        Paid::Mismatch
    );
    assert_eq!(brl_charged(&store).await, (0, 0), "another amount is not applied");
    assert_eq!(
        store.pix_paid(&charge_id, 700, SUCCEEDED).await.expect("paid"),
        Paid::Paid
    );
    assert_eq!(
        store.pix_paid(&charge_id, 700, "{}").await.expect("again"),
        Paid::Already {
            status: "succeeded".into(),
            late_refund: false
        }
    );
    assert_eq!(brl_charged(&store).await, (1, 700), "counted once");
    assert_eq!(
        store.cancel_pix(&charge_id, "{}").await.expect("cancel").as_deref(),
        Some("succeeded"),
        "a paid Pix is not canceled: its order completes"
    );
    let events = store.events(&charge_id, 0, Some(10)).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["charge.pending", "charge.succeeded"]);
    // Paid, and only paid (not pending), is published for merchant webhooks: its event, once.
    let outbox = redis
        .stream(&crate::store::outbox_key(shared::ids::shard_of("ord_pix1")))
        .await;
    let pointers: Vec<(&str, &str, &str)> = outbox
        .iter()
        .map(|e| (e["a"].as_str(), e["s"].as_str(), e["i"].as_str()))
        .collect();
    assert_eq!(pointers, [(charge_id.as_str(), "2", "")]);
    assert_eq!(
        store
            .pix_paid(&new_charge_id_for("ord_x"), 700, "{}")
            .await
            .expect("paid"),
        Paid::Missing
    );
}

#[tokio::test]
async fn a_pix_canceled_by_its_orders_expiry_and_paid_later_is_marked_for_refund() {
    let redis = TestRedis::start().await;
    let (store, idem) = store(&redis);
    let charge_id = pending_pix(&store, &idem, "ord_pix2").await;
    assert_eq!(
        store.cancel_pix(&charge_id, CANCELED).await.expect("cancel").as_deref(),
        Some("canceled")
    );
    assert_eq!(
        store.cancel_pix(&charge_id, CANCELED).await.expect("again").as_deref(),
        Some("canceled")
    );
    assert_eq!(
        store.pix_paid(&charge_id, 700, SUCCEEDED).await.expect("paid"),
        Paid::Late
    );
    assert_eq!(
        store.pix_paid(&charge_id, 700, "{}").await.expect("again"),
        Paid::Already {
            status: "succeeded".into(),
            late_refund: true
        },
        "the refund is still owed after a crash"
    );
    assert_eq!(
        brl_charged(&store).await,
        (1, 700),
        "the money came in: it is in the books until refunded"
    );
    let events = store.events(&charge_id, 0, Some(10)).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["charge.pending", "charge.canceled", "charge.succeeded"]);
    assert_eq!(
        store
            .cancel_pix(&new_charge_id_for("ord_y"), CANCELED)
            .await
            .expect("unknown"),
        None
    );
}
