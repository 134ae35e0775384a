//! The charge and refund scripts (refund.lua's tests are here: a refund needs a charge) against
//! a real Redis: the happy path, the replay, the wrong state, and the books they keep.

use std::time::Duration;

use actix_web::http::StatusCode;
use shared::idempotency::{Begin, IdempotencyStore, KeyRef, StoredResponse};
use shared::testing::TestRedis;

use super::store::*;
use crate::refunds::RefundOutcome;
use crate::store::{Store, answer_key, new_charge_id_for};

fn stores(redis: &TestRedis) -> (Store, IdempotencyStore) {
    let ttl = Duration::from_secs(60);
    (
        Store::new(redis.pool(), ttl),
        IdempotencyStore::new(redis.pool(), ttl, Duration::from_millis(300)),
    )
}

fn new_charge<'a>(charge_id: &'a str, amount: u64, decline_code: Option<&'a str>) -> NewCharge<'a> {
    NewCharge {
        charge_id,
        order_id: "ord_1",
        amount,
        currency: "USD",
        customer_id: "guest",
        payment_method: "pm_card_visa",
        decline_code,
        gateway: "card-a",
        gateway_reference: "ch_sim",
    }
}

async fn charge(store: &Store, idem: &IdempotencyStore, key: &str, new: &NewCharge<'_>) -> ChargeOutcome {
    let key_ref = KeyRef::new("payment:charge", key, "fp".into()).with_answer_at(answer_key(new.order_id, key));
    let resp = StoredResponse::json(StatusCode::CREATED, &serde_json::json!({"chargeId": new.charge_id}));
    match store.charge(new, key, &idem.answer(&key_ref, "tok", &resp)).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("charge: {e}"),
    }
}

fn recorded(outcome: ChargeOutcome) -> Recorded {
    match outcome {
        ChargeOutcome::Recorded(r) => r,
        ChargeOutcome::KeyReused => panic!("the key was taken as reused"),
    }
}

async fn charged_and_refunded(store: &Store) -> (u64, u64, u64, u64) {
    let totals = store.totals().await.ok().unwrap_or_default();
    let usd = totals.currencies.get("USD").cloned().unwrap_or_default();
    let at_card_a = totals
        .by_gateway
        .get("card-a")
        .and_then(|g| g.get("USD"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(usd, at_card_a, "every charge here went through card-a");
    (
        usd.charged.count,
        usd.charged.amount,
        usd.refunded.count,
        usd.refunded.amount,
    )
}

#[tokio::test]
async fn charge_records_once_counts_it_and_its_key_finds_the_same_charge_again() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let again_id = new_charge_id_for("ord_1");

    let first = recorded(charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await);
    let again = recorded(charge(&store, &idem, "k1", &new_charge(&again_id, 1250, None)).await);

    assert!(first.fresh && !again.fresh);
    assert_eq!(again.charge_id, id);
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 0, 0));
    let listed = store.charges_of_order("ord_1").await.ok().unwrap_or_default();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "succeeded");
}

#[tokio::test]
async fn charge_stores_its_answer_beside_the_charge_for_the_keys_replay() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let key = KeyRef::new("payment:charge", "k1", "fp".into()).with_answer_at(answer_key("ord_1", "k1"));
    let _ = idem.begin(&key, "tok").await;
    let id = new_charge_id_for("ord_1");

    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let retry = idem.begin(&key, "tok2").await.ok();

    let Some(Begin::Replay(stored)) = retry else {
        panic!("expected the stored answer, got {retry:?}");
    };
    assert_eq!(stored.status, 201);
    assert!(String::from_utf8_lossy(&stored.body).contains(&id));
}

#[tokio::test]
async fn a_marker_naming_another_requests_charge_is_a_reused_key() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let other = new_charge_id_for("ord_1");
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;

    let different_amount = charge(&store, &idem, "k1", &new_charge(&other, 999, None)).await;

    assert!(matches!(different_amount, ChargeOutcome::KeyReused));
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 0, 0));
}

#[tokio::test]
async fn a_declined_charge_is_recorded_but_not_counted_and_cannot_be_refunded() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");

    let declined = recorded(charge(&store, &idem, "k1", &new_charge(&id, 1250, Some("card_declined"))).await);
    let refund = store.refund(&id).await.ok();

    assert_eq!(declined.decline_code.as_deref(), Some("card_declined"));
    assert!(matches!(refund, Some(RefundOutcome::NotRefundable { status }) if status == "failed"));
    assert_eq!(charged_and_refunded(&store).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn refund_counts_once_and_answers_the_same_refund_again() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;

    let first = store.refund(&id).await.ok();
    let again = store.refund(&id).await.ok();
    let unknown = store.refund(&new_charge_id_for("ord_1")).await.ok();

    let (
        Some(RefundOutcome::Refunded {
            refund_id,
            amount: 1250,
            fresh: true,
        }),
        Some(RefundOutcome::Refunded {
            refund_id: same,
            fresh: false,
            ..
        }),
    ) = (first, again)
    else {
        panic!("expected one fresh refund, then the same one");
    };
    assert_eq!(refund_id, same);
    assert!(matches!(unknown, Some(RefundOutcome::NotFound)));
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 1, 1250));
    let stored = store.get_charge(&id).await.ok().flatten();
    assert_eq!(stored.map(|c| c.status), Some("refunded".into()));
}
