//! create.lua, and the split parts of record.lua and refund.lua, against a real Redis: a charge
//! and its split in one step, reversals by refunds, the stale-read guard, the history's cap, and
//! the items with splits that replicas cache.

use std::time::Duration;

use actix_web::http::StatusCode;
use shared::idempotency::{IdempotencyStore, KeyRef, StoredResponse};
use shared::testing::TestRedis;

use super::rules::{PayoutMethod, Rule};
use super::store::{Earned, MOST_SPLITS, StoredSplit, item_shard, new_split_id};
use super::{SplitPlan, reversal};
use crate::charges::{ChargeOutcome, NewCharge};
use crate::refunds::{RefundOutcome, Reversal, new_refund_id};
use crate::store::{Store, answer_key, new_charge_id_for};

fn stores(redis: &TestRedis) -> (Store, IdempotencyStore) {
    let ttl = Duration::from_secs(60);
    (
        Store::new(redis.pool(), ttl),
        IdempotencyStore::new(redis.pool(), ttl, Duration::from_millis(300)),
    )
}

fn split(item_id: u64, rules: &[(&str, u64)]) -> StoredSplit {
    StoredSplit {
        split_id: new_split_id(item_shard(item_id)),
        item_id,
        effective_from_ms: 0,
        created_at: "t".into(),
        rules: rules
            .iter()
            .map(|(r, bps)| Rule {
                recipient_id: (*r).into(),
                bps: *bps,
                payout_method: PayoutMethod::Pix,
                account_info: serde_json::Map::new(),
            })
            .collect(),
    }
}

/// How the provider answered the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Succeeded,
    Declined,
    /// A Pix waiting for its payer.
    Pending,
}

async fn charge_with(
    store: &Store,
    idem: &IdempotencyStore,
    order: &str,
    amount: u64,
    plan: Option<&SplitPlan>,
    verdict: Verdict,
) -> String {
    let charge_id = new_charge_id_for(order);
    let new = NewCharge {
        charge_id: &charge_id,
        order_id: order,
        amount,
        currency: "USD",
        customer_id: "guest",
        payment_method: "pm_card_visa",
        decline_code: (verdict == Verdict::Declined).then_some("card_declined"),
        gateway: "card-a",
        gateway_reference: "ch_sim",
        pix_code: (verdict == Verdict::Pending).then_some("000201pix"),
        item_id: None,
        split: plan,
    };
    let key = format!("{order}:charge");
    let key_ref = KeyRef::new("payment:charge", &key, "fp".into()).with_answer_at(answer_key(order, &key));
    let resp = StoredResponse::json(StatusCode::CREATED, &serde_json::json!({}));
    match store.charge(&new, &key, &idem.answer(&key_ref, "tok", &resp)).await {
        Ok(ChargeOutcome::Recorded(r)) => r.charge_id,
        _ => panic!("charge not recorded"),
    }
}

async fn earned(store: &Store, recipient: &str) -> Earned {
    let balances = store.recipient_balances(recipient).await.unwrap_or_default();
    balances.get("USD").copied().unwrap_or_default()
}

fn reversal_for(charge: &crate::model::Charge, amount: u64) -> Reversal {
    let (after, back) = reversal(&charge.splits, amount).unwrap_or_default();
    Reversal {
        read_refunded: charge.amount_refunded,
        parts: super::encode_parts(&after),
        reversals: back
            .iter()
            .map(|(r, a)| format!("{r}:{a}"))
            .collect::<Vec<_>>()
            .join(";"),
        event: serde_json::json!({"type": "split.reversed", "at": "t", "correlationId": charge.order_id, "data": {}})
            .to_string(),
    }
}

#[tokio::test]
async fn a_charge_and_its_split_are_recorded_together_and_refunds_reverse_the_parts() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let plan = SplitPlan::of(&split(7, &[("seller", 6667), ("platform", 3333)]), 1001);
    assert_eq!(
        plan.parts.iter().map(|p| p.amount).collect::<Vec<_>>(),
        [667, 334],
        "largest remainder: .6333 beats .3667"
    );

    let id = charge_with(&store, &idem, "ord_s1", 1001, Some(&plan), Verdict::Succeeded).await;
    let declined = charge_with(&store, &idem, "ord_s2", 500, Some(&plan), Verdict::Declined).await;
    let charge = store.get_charge(&id).await.ok().flatten().expect("the charge");
    assert_eq!(charge.split_id.as_deref(), Some(plan.split_id.as_str()));
    assert_eq!(charge.splits, plan.parts);
    let no_split = store
        .get_charge(&declined)
        .await
        .ok()
        .flatten()
        .expect("the declined charge");
    assert!(no_split.splits.is_empty(), "a declined charge pays nobody");
    assert_eq!(
        earned(&store, "seller").await,
        Earned {
            earned: 667,
            reversed: 0
        }
    );
    let kinds: Vec<String> = store
        .events(&id, 0, None)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["charge.succeeded", "split.executed"]);

    // A refund divided from a read that another refund has since changed is refused as stale.
    let stale = reversal_for(&charge, 100);
    let first = store
        .refund(
            &id,
            Some(100),
            "r1",
            "",
            &new_refund_id(),
            Some(&reversal_for(&charge, 100)),
        )
        .await;
    assert!(matches!(first, Ok(RefundOutcome::Refunded { amount: 100, .. })));
    let again = store
        .refund(&id, Some(100), "r2", "", &new_refund_id(), Some(&stale))
        .await;
    assert!(
        matches!(again, Ok(RefundOutcome::Stale)),
        "nothing recorded from a stale read"
    );

    let charge = store.get_charge(&id).await.ok().flatten().expect("the charge");
    let rest = store
        .refund(&id, None, "r3", "", &new_refund_id(), Some(&reversal_for(&charge, 901)))
        .await;
    assert!(matches!(rest, Ok(RefundOutcome::Refunded { amount: 901, .. })));
    let charge = store.get_charge(&id).await.ok().flatten().expect("the charge");
    assert!(
        charge.splits.iter().all(|p| p.reversed == p.amount),
        "{:?}",
        charge.splits
    );
    let (seller, platform) = (earned(&store, "seller").await, earned(&store, "platform").await);
    assert_eq!(
        (seller.earned - seller.reversed, platform.earned - platform.reversed),
        (0, 0)
    );
    assert_eq!(seller.reversed + platform.reversed, 1001);
    assert_eq!(store.all_recipients().await.unwrap_or_default(), ["platform", "seller"]);
}

#[tokio::test]
async fn an_items_history_keeps_every_split_up_to_its_cap() {
    let redis = TestRedis::start().await;
    let (store, _) = stores(&redis);
    for _ in 0..MOST_SPLITS {
        assert_eq!(
            store.create_split(&split(9, &[("a", 10_000)]), "{}").await.ok(),
            Some(true)
        );
    }
    assert_eq!(
        store.create_split(&split(9, &[("a", 10_000)]), "{}").await.ok(),
        Some(false)
    );
    assert_eq!(
        store.splits_of(9).await.map(|h| h.len()).ok(),
        Some(MOST_SPLITS as usize)
    );
    assert_eq!(store.splits_of(10).await.map(|h| h.len()).ok(), Some(0));
}

#[tokio::test]
async fn a_created_split_puts_its_item_among_those_every_replica_reads_before_charging() {
    let redis = TestRedis::start().await;
    let (store, _) = stores(&redis);
    let known = std::sync::Arc::new(super::known::SplitItems::default());
    assert!(
        known.must_read(9),
        "a replica that has never refreshed reads every item"
    );
    known.follow(redis.pool());
    // Items on different shards, so the refresh reads more than one set.
    let other = (11..).find(|i| item_shard(*i) != item_shard(9)).unwrap_or(11);
    for item in [9, other] {
        assert_eq!(
            store.create_split(&split(item, &[("a", 10_000)]), "{}").await.ok(),
            Some(true)
        );
    }
    tokio::time::sleep(super::known::CREATION_WAIT).await;
    assert!(
        known.must_read(9) && known.must_read(other),
        "items with splits are read"
    );
    assert!(!known.must_read(10), "an item without one is charged without a read");
}

#[tokio::test]
async fn a_pending_pix_keeps_its_split_aside_and_executes_it_when_paid() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let plan = SplitPlan::of(&split(7, &[("seller", 7000), ("platform", 3000)]), 1000);
    let id = charge_with(&store, &idem, "ord_sp", 1000, Some(&plan), Verdict::Pending).await;
    assert_eq!(
        earned(&store, "seller").await.earned,
        0,
        "nothing earned before the payer pays"
    );
    let pending = store.get_charge(&id).await.ok().flatten().expect("the charge");
    assert!(pending.splits.is_empty(), "no parts shown before it is paid");
    let succeeded = r#"{"type":"charge.succeeded","at":"t","correlationId":"ord_sp","data":{"amount":1000}}"#;
    let paid = store.pix_paid(&id, 1000, succeeded).await.expect("paid");
    assert_eq!(paid, crate::pix::store::Paid::Paid);
    assert_eq!(
        (
            earned(&store, "seller").await.earned,
            earned(&store, "platform").await.earned
        ),
        (700, 300)
    );
    let charge = store.get_charge(&id).await.ok().flatten().expect("the charge");
    assert_eq!(charge.splits, plan.parts);
    let _ = store.pix_paid(&id, 1000, succeeded).await.expect("again");
    assert_eq!(earned(&store, "seller").await.earned, 700, "executed once");
    let events = store.events(&id, 0, Some(10)).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["charge.pending", "charge.succeeded", "split.executed"]);
}
