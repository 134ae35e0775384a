//! move.lua against a real Redis: credits, debits, the limit, the marker, and concurrency.

use std::time::Duration;

use shared::testing::TestRedis;

use super::store::{Kind, Moved, Movement};
use crate::store::Store;

fn movement<'a>(kind: Kind, amount: u64, key: &'a str) -> Movement<'a> {
    Movement {
        customer_id: "cus_1",
        kind,
        amount,
        currency: "USD",
        key,
        transaction_id: Box::leak(super::new_transaction_id().into_boxed_str()),
        charge_id: None,
        correlation: "ord_1",
    }
}

async fn balance(store: &Store) -> u64 {
    let balances = store.wallet_balances("cus_1").await.ok().flatten().unwrap_or_default();
    balances.get("USD").copied().unwrap_or(0)
}

#[tokio::test]
async fn credits_and_debits_move_the_balance_and_a_key_moves_it_once() {
    let redis = TestRedis::start().await;
    let store = Store::new(redis.pool(), Duration::from_secs(60));
    assert!(
        store.wallet_balances("cus_1").await.expect("read").is_none(),
        "no wallet yet"
    );

    let credited = store
        .move_wallet(&movement(Kind::Credit, 1000, "c1"))
        .await
        .expect("credit");
    let again = store
        .move_wallet(&movement(Kind::Credit, 1000, "c1"))
        .await
        .expect("credit again");
    let Moved::Done { tx, fresh: true } = credited else {
        panic!("expected a fresh credit, got {credited:?}")
    };
    assert_eq!(
        again,
        Moved::Done {
            tx: tx.clone(),
            fresh: false
        }
    );
    assert_eq!(tx.balance_after, 1000);

    let debit = store
        .move_wallet(&movement(Kind::Debit, 400, "d1"))
        .await
        .expect("debit");
    assert!(
        matches!(debit, Moved::Done { ref tx, .. } if tx.balance_after == 600),
        "{debit:?}"
    );
    let too_much = store
        .move_wallet(&movement(Kind::Debit, 601, "d2"))
        .await
        .expect("debit");
    assert_eq!(too_much, Moved::Insufficient { balance: 600 });
    let back = store
        .move_wallet(&movement(Kind::Refund, 100, "r1"))
        .await
        .expect("refund");
    assert!(matches!(back, Moved::Done { ref tx, .. } if tx.kind == "refund" && tx.balance_after == 700));
    assert_eq!(balance(&store).await, 700);

    let (page, next) = store.wallet_transactions("cus_1", None, 2).await.expect("page");
    assert_eq!(
        page.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(),
        ["refund", "debit"]
    );
    let (rest, end) = store.wallet_transactions("cus_1", next, 2).await.expect("page");
    assert_eq!(rest.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(), ["credit"]);
    assert_eq!(end, None);

    let events = store.events("wal_cus_1", 0, None).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["wallet.credited", "wallet.debited", "wallet.refunded"]);
    let folded = crate::events::verify::fold_wallet(&events).expect("fold");
    assert_eq!(folded.get("USD"), Some(&700));
}

#[tokio::test]
async fn a_credit_past_the_exact_integer_limit_is_refused_and_moves_nothing() {
    let redis = TestRedis::start().await;
    let store = Store::new(redis.pool(), Duration::from_secs(60));
    let _ = store
        .move_wallet(&movement(Kind::Credit, 9_000_000_000_000, "c1"))
        .await;
    let mut key = 2;
    while balance(&store).await + 9_000_000_000_000 <= 9_000_000_000_000_000 {
        let k = format!("c{key}");
        let _ = store.move_wallet(&movement(Kind::Credit, 9_000_000_000_000, &k)).await;
        key += 1;
        if key > 1100 {
            break;
        }
    }
    let before = balance(&store).await;
    let refused = store
        .move_wallet(&movement(Kind::Credit, 9_000_000_000_000, "last"))
        .await
        .expect("credit");
    assert_eq!(refused, Moved::Limit { balance: before });
    assert_eq!(balance(&store).await, before);
}

#[tokio::test]
async fn concurrent_debits_take_exactly_what_the_balance_covers_and_never_below_zero() {
    let redis = TestRedis::start().await;
    let store = Store::new(redis.pool(), Duration::from_secs(60));
    let _ = store.move_wallet(&movement(Kind::Credit, 1000, "c1")).await;
    let tries: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = format!("d{i}");
                store.move_wallet(&movement(Kind::Debit, 150, &key)).await.ok()
            })
        })
        .collect();
    let mut debited = 0;
    for t in tries {
        if let Ok(Some(Moved::Done { .. })) = t.await {
            debited += 1;
        }
    }
    assert_eq!(debited, 6);
    assert_eq!(balance(&store).await, 100);
}

#[tokio::test]
async fn wallet_charge_debits_and_records_in_one_step_and_leaves_anything_else_to_the_caller() {
    use shared::idempotency::{IdempotencyStore, KeyRef, StoredResponse};

    use crate::charges::{ChargeOutcome, NewCharge, WalletCharge};

    let redis = TestRedis::start().await;
    let store = Store::new(redis.pool(), Duration::from_secs(60)).on_one_node(true);
    let idem = IdempotencyStore::new(redis.pool(), Duration::from_secs(60), Duration::from_secs(5));
    let _ = store.move_wallet(&movement(Kind::Credit, 500, "c1")).await;
    let charge_id = crate::store::new_charge_id_for("ord_w");
    let debit = Movement {
        customer_id: "cus_1",
        kind: Kind::Debit,
        amount: 300,
        currency: "USD",
        key: "pay_1",
        transaction_id: "wtx_1",
        charge_id: Some(&charge_id),
        correlation: "ord_w",
    };
    let new = NewCharge {
        split: None,
        charge_id: &charge_id,
        order_id: "ord_w",
        amount: 300,
        currency: "USD",
        customer_id: "cus_1",
        payment_method: "wallet",
        decline_code: None,
        gateway: "wallet",
        gateway_reference: "wtx_1",
        pix_code: None,
        item_id: None,
    };
    let key = KeyRef::new("payment:charge", "k1", "fp".into());
    let resp = StoredResponse::json(actix_web::http::StatusCode::CREATED, &serde_json::json!({}));
    let first = store
        .wallet_charge(&debit, &new, "k1", &idem.answer(&key, "tok", &resp))
        .await
        .expect("script");
    assert!(
        matches!(first, WalletCharge::Charged(ChargeOutcome::Recorded(ref r)) if r.fresh && r.charge_id == charge_id)
    );
    assert_eq!(balance(&store).await, 200);
    let charge = store.get_charge(&charge_id).await.expect("read").expect("recorded");
    assert_eq!(
        (charge.gateway.as_str(), charge.gateway_reference.as_str()),
        ("wallet", "wtx_1")
    );

    // The same debit again (a retry): found, nothing recorded twice; the caller records.
    let again = store
        .wallet_charge(&debit, &new, "k1", &idem.answer(&key, "tok", &resp))
        .await
        .expect("script");
    assert!(matches!(
        again,
        WalletCharge::NotDebited(Moved::Done { fresh: false, .. })
    ));
    // Too little: nothing debited, nothing recorded.
    let other = crate::store::new_charge_id_for("ord_x");
    let big = Movement {
        amount: 201,
        key: "pay_2",
        charge_id: Some(&other),
        ..debit
    };
    let new_big = NewCharge {
        charge_id: &other,
        order_id: "ord_x",
        amount: 201,
        ..new
    };
    let short = store
        .wallet_charge(&big, &new_big, "k2", &idem.answer(&key, "tok", &resp))
        .await
        .expect("script");
    assert!(matches!(
        short,
        WalletCharge::NotDebited(Moved::Insufficient { balance: 200 })
    ));
    assert!(store.get_charge(&other).await.expect("read").is_none());
    assert_eq!(balance(&store).await, 200);
}
