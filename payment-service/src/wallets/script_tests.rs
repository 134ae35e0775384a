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
