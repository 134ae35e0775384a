//! Wallets, partial refunds and the event log through nginx against the real stack: a wallet
//! checkout debits exactly once, concurrency never overdraws, partial refunds never exceed
//! the charge, every change has its event, and `verify` rebuilds it all from the events.

use std::time::Duration;

use serde_json::{Value, json};
use tests_e2e::{Reply, Stack, StackOptions, new_key as key, slug};

async fn stack() -> Stack {
    Stack::launch(StackOptions::default()).await
}

async fn credit(stack: &Stack, customer: &str, amount: i64, currency: &str) -> Reply {
    stack
        .post_internal(
            &format!("/payment/wallets/{customer}/credits"),
            Some(&key()),
            &json!({"amount": amount, "currency": currency}),
        )
        .await
}

async fn balance(stack: &Stack, customer: &str) -> i64 {
    stack.get_json(&format!("/payment/wallets/{customer}"), true).await["balances"]["USD"]
        .as_i64()
        .unwrap_or(0)
}

async fn wallet_checkout(stack: &Stack, customer: &str, item: u64) -> (u16, Value) {
    let (status, _, body) = stack
        .checkout(
            &key(),
            json!({"itemId": item, "quantity": 1, "customerId": customer, "paymentMethod": "wallet"}),
        )
        .await;
    (status, body)
}

async fn verify(stack: &Stack) -> Value {
    let r = stack.post_internal("/payment/admin/verify", None, &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json
}

async fn assert_verified(stack: &Stack) {
    let report = verify(stack).await;
    assert_eq!(report["mismatches"], json!([]), "{report}");
    assert!(report["checked"].as_u64().unwrap_or(0) > 0, "{report}");
}

async fn events(stack: &Stack, aggregate: &str) -> Vec<Value> {
    stack
        .get_json(&format!("/payment/events?aggregateId={aggregate}"), true)
        .await["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_wallet_checkout_debits_once_and_its_refund_credits_the_wallet_back() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 400, 10).await;
    let credited = credit(&stack, "cus_a", 1000, "USD").await;
    assert_eq!(credited.status, 201, "{}", credited.json);
    assert_eq!(credited.json["balance"], 1000);

    let (status, body) = wallet_checkout(&stack, "cus_a", 1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(balance(&stack, "cus_a").await, 600);
    let order_id = body["orderId"].as_str().expect("orderId");
    let listed = stack
        .get_json(&format!("/payment/charges?orderId={order_id}"), true)
        .await;
    let charge = listed["charges"][0].clone();
    assert_eq!(charge["gateway"], "wallet");
    let charge_id = charge["chargeId"].as_str().expect("chargeId").to_string();

    let part = stack
        .post_internal(
            "/payment/refund",
            Some(&key()),
            &json!({"chargeId": charge_id, "amount": 150}),
        )
        .await;
    assert_eq!((part.status, &part.json["amount"]), (200, &json!(150)), "{}", part.json);
    assert_eq!(balance(&stack, "cus_a").await, 750);
    let stored = stack.get_json(&format!("/payment/charges/{charge_id}"), true).await;
    assert_eq!(
        (&stored["status"], &stored["amountRefunded"]),
        (&json!("partially_refunded"), &json!(150))
    );

    let page = stack
        .get_json("/payment/wallets/cus_a/transactions?limit=2", true)
        .await;
    let kinds: Vec<&str> = page["transactions"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, ["refund", "debit"], "{page}");
    let cursor = page["nextCursor"].as_str().expect("a next page").to_string();
    let rest = stack
        .get_json(
            &format!("/payment/wallets/cus_a/transactions?limit=2&cursor={cursor}"),
            true,
        )
        .await;
    assert_eq!(rest["transactions"][0]["type"], "credit");
    assert_eq!(rest["nextCursor"], Value::Null);

    let wallet_events: Vec<String> = events(&stack, "wal_cus_a")
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(wallet_events, ["wallet.credited", "wallet.debited", "wallet.refunded"]);
    let charge_events = events(&stack, &charge_id).await;
    assert_eq!(charge_events[0]["type"], "charge.succeeded");
    assert_eq!(charge_events[0]["correlationId"], order_id);
    assert_eq!(charge_events[1]["type"], "refund.succeeded");
    let totals = stack.get_json("/payment/totals", true).await;
    assert_eq!(totals["byGateway"]["wallet"]["USD"]["charged"]["amount"], 400);
    assert_eq!(totals["byGateway"]["wallet"]["USD"]["refunded"]["amount"], 150);
    assert_verified(&stack).await;
}

#[tokio::test]
async fn too_little_in_the_wallet_declines_with_insufficient_funds_debits_nothing_and_releases_the_stock() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 400, 10).await;
    assert_eq!(credit(&stack, "cus_b", 300, "USD").await.status, 201);
    let (status, body) = wallet_checkout(&stack, "cus_b", 1).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["declineCode"], "insufficient_funds");
    assert_eq!(balance(&stack, "cus_b").await, 300);
    assert_eq!(stack.item(1).await["available"], 10);
    // No wallet at all is the same: nothing to debit.
    let (status, body) = wallet_checkout(&stack, "cus_nobody", 1).await;
    assert_eq!(
        (status, &body["declineCode"]),
        (402, &json!("insufficient_funds")),
        "{body}"
    );
    assert_verified(&stack).await;
}

#[tokio::test]
async fn concurrent_wallet_checkouts_succeed_exactly_as_far_as_the_balance_covers() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 250, 100).await;
    assert_eq!(credit(&stack, "cus_c", 1000, "USD").await.status, 201);
    let tries: Vec<_> = (0..12)
        .map(|_| {
            stack.spawn_checkout(json!({"itemId": 1, "quantity": 1, "customerId": "cus_c", "paymentMethod": "wallet"}))
        })
        .collect();
    // Meanwhile the balance is read again and again: never below zero.
    let watcher = {
        let client = stack.client();
        let url = stack.url("/payment/wallets/cus_c");
        let token = stack.token().to_string();
        tokio::spawn(async move {
            let mut lowest = i64::MAX;
            for _ in 0..50 {
                if let Ok(resp) = client.get(&url).bearer_auth(&token).send().await
                    && let Ok(v) = resp.json::<Value>().await
                {
                    lowest = lowest.min(v["balances"]["USD"].as_i64().unwrap_or(i64::MAX));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lowest
        })
    };
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await.unwrap_or(0));
    }
    assert!(watcher.await.unwrap_or(-1) >= 0, "a balance below zero was seen");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 8, "{statuses:?}");
    assert_eq!(balance(&stack, "cus_c").await, 0);
    assert_eq!(stack.item(1).await["sold"], 4);
    assert_verified(&stack).await;
}

#[tokio::test]
async fn partial_refunds_racing_each_other_never_exceed_the_charge() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1000, 10).await;
    let (status, body) = stack
        .checkout(&key(), json!({"itemId": 1, "quantity": 1}))
        .await
        .into_status_body();
    assert_eq!(status, 200, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId").to_string();
    let listed = stack
        .get_json(&format!("/payment/charges?orderId={order_id}"), true)
        .await;
    let charge_id = listed["charges"][0]["chargeId"].as_str().expect("chargeId").to_string();
    let tries: Vec<_> = (0..10)
        .map(|_| {
            let client = stack.client();
            let url = stack.url("/payment/refund");
            let token = stack.token().to_string();
            let charge_id = charge_id.clone();
            tokio::spawn(async move {
                let resp = client
                    .post(url)
                    .bearer_auth(token)
                    .header("idempotency-key", key())
                    .json(&json!({"chargeId": charge_id, "amount": 300}))
                    .send()
                    .await
                    .expect("refund");
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut ok = 0;
    for t in tries {
        let (status, body) = t.await.expect("task");
        match status {
            200 => ok += 1,
            409 => assert_eq!(slug(&body), "refund-exceeds-charge", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(ok, 3, "three of 300 fit in 1000");
    let stored = stack.get_json(&format!("/payment/charges/{charge_id}"), true).await;
    assert_eq!(stored["amountRefunded"], 900);
    let rest = stack
        .post_internal("/payment/refund", Some(&key()), &json!({"chargeId": charge_id}))
        .await;
    assert_eq!((rest.status, &rest.json["amount"]), (200, &json!(100)), "{}", rest.json);
    let over = stack
        .post_internal(
            "/payment/refund",
            Some(&key()),
            &json!({"chargeId": charge_id, "amount": 1}),
        )
        .await;
    assert_eq!(
        (over.status, slug(&over.json)),
        (409, "refund-exceeds-charge"),
        "{}",
        over.json
    );
    let ledger = stack.sim_ledger(tests_e2e::Service::CardA).await;
    let refunded: i64 = ledger["refunds"]
        .as_array()
        .map(|r| r.iter().map(|x| x["amount"].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(refunded, 1000, "the provider refunded exactly the charge: {ledger}");
    assert_verified(&stack).await;
}

#[tokio::test]
async fn bad_wallet_input_gets_a_problem_and_records_nothing() {
    let stack = stack().await;
    let cases: &[(&str, Value, u16, &str)] = &[
        (
            "/payment/wallets/cus_d/credits",
            json!({"amount": -5, "currency": "USD"}),
            400,
            "invalid-request",
        ),
        (
            "/payment/wallets/cus_d/credits",
            json!({"amount": 0, "currency": "USD"}),
            400,
            "invalid-request",
        ),
        (
            "/payment/wallets/cus_d/credits",
            json!({"amount": 1.5, "currency": "USD"}),
            400,
            "invalid-request",
        ),
        (
            "/payment/wallets/cus_d/credits",
            json!({"amount": 9_000_000_000_001_i64, "currency": "USD"}),
            400,
            "invalid-request",
        ),
        (
            "/payment/wallets/cus_d/credits",
            json!({"amount": "5", "currency": "USD"}),
            400,
            "invalid-request",
        ),
        (
            "/payment/wallets/cus_d/credits",
            json!({"amount": 5, "currency": "usd"}),
            400,
            "invalid-request",
        ),
        (
            "/payment/wallets/cus_d/credits",
            json!({"amount": 5}),
            400,
            "invalid-request",
        ),
        (
            "/payment/wallets/bad%20name/credits",
            json!({"amount": 5, "currency": "USD"}),
            400,
            "invalid-request",
        ),
    ];
    for (path, body, status, want) in cases {
        let r = stack.post_internal(path, Some(&key()), body).await;
        assert_eq!((r.status, slug(&r.json)), (*status, *want), "{path} {body}: {}", r.json);
    }
    let missing_key = stack
        .post_internal(
            "/payment/wallets/cus_d/credits",
            None,
            &json!({"amount": 5, "currency": "USD"}),
        )
        .await;
    assert_eq!(missing_key.status, 400, "{}", missing_key.json);
    let unknown = stack
        .client()
        .get(stack.url("/payment/wallets/cus_d"))
        .bearer_auth(stack.token())
        .send()
        .await
        .expect("GET wallet");
    assert_eq!(unknown.status(), 404, "nothing was recorded for cus_d");
    let events = stack.get_json("/payment/events?aggregateId=wal_cus_d", true).await;
    assert_eq!(events["events"], json!([]));
    let no_aggregate = stack
        .client()
        .get(stack.url("/payment/events"))
        .bearer_auth(stack.token())
        .send()
        .await
        .expect("GET events");
    assert_eq!(no_aggregate.status(), 400);
}

trait StatusBody {
    fn into_status_body(self) -> (u16, Value);
}

impl StatusBody for (u16, reqwest::header::HeaderMap, Value) {
    fn into_status_body(self) -> (u16, Value) {
        (self.0, self.2)
    }
}

async fn refund_order(stack: &Stack, order_id: &str, key: &str, body: Value) -> Reply {
    stack
        .post_internal(&format!("/order/orders/{order_id}/refunds"), Some(key), &body)
        .await
}

/// charged − refunded (payment) = completed − refunds (orders), and sold = units of completed
/// orders not restocked.
async fn assert_order_books(stack: &Stack, item: u64, sold_units: i64) {
    let payments = stack.get_json("/payment/totals", true).await;
    let orders = stack.get_json("/order/totals", true).await;
    let net = payments["USD"]["charged"]["amount"].as_i64().unwrap_or(0)
        - payments["USD"]["refunded"]["amount"].as_i64().unwrap_or(0);
    let kept = orders["USD"]["completed"]["amount"].as_i64().unwrap_or(0)
        - orders["USD"]["refunds"]["amount"].as_i64().unwrap_or(0);
    assert_eq!(net, kept, "payments {payments} orders {orders}");
    assert_eq!(stack.item(item).await["sold"], sold_units);
}

#[tokio::test]
async fn a_completed_order_is_refunded_in_parts_then_whole_with_its_units_restocked_once() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 500, 10).await;
    let (status, body) = stack
        .checkout(&key(), json!({"itemId": 1, "quantity": 2}))
        .await
        .into_status_body();
    assert_eq!(status, 200, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId").to_string();
    assert_order_books(&stack, 1, 2).await;

    let k = key();
    let part = refund_order(&stack, &order_id, &k, json!({"amount": 300, "restock": false})).await;
    assert_eq!(part.status, 200, "{}", part.json);
    assert_eq!(
        (
            &part.json["status"],
            &part.json["amount"],
            &part.json["amountRefunded"],
            &part.json["restocked"]
        ),
        (&json!("partially_refunded"), &json!(300), &json!(300), &json!(false))
    );
    let replay = refund_order(&stack, &order_id, &k, json!({"amount": 300, "restock": false})).await;
    assert_eq!(
        (replay.status, replay.bytes.clone()),
        (200, part.bytes.clone()),
        "the key replays"
    );
    assert_order_books(&stack, 1, 2).await;

    let rest = refund_order(&stack, &order_id, &key(), json!({"restock": true})).await;
    assert_eq!(rest.status, 200, "{}", rest.json);
    assert_eq!(
        (
            &rest.json["status"],
            &rest.json["amount"],
            &rest.json["amountRefunded"],
            &rest.json["restocked"]
        ),
        (&json!("refunded"), &json!(700), &json!(1000), &json!(true))
    );
    let item = stack.item(1).await;
    assert_eq!((&item["available"], &item["sold"]), (&json!(10), &json!(0)), "{item}");
    assert_order_books(&stack, 1, 0).await;
    let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
    assert_eq!(order["status"], "refunded");

    let more = refund_order(&stack, &order_id, &key(), json!({"amount": 1, "restock": true})).await;
    assert_eq!(
        (more.status, slug(&more.json)),
        (409, "refund-exceeds-charge"),
        "{}",
        more.json
    );
    assert_eq!(stack.item(1).await["available"], 10, "restocked once");
    assert_verified(&stack).await;
}

#[tokio::test]
async fn refunding_an_order_that_did_not_complete_or_does_not_exist_is_refused() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 500, 10).await;
    let (status, body) = stack
        .checkout(
            &key(),
            json!({"itemId": 1, "quantity": 1, "paymentMethod": "pm_card_chargeDeclined"}),
        )
        .await
        .into_status_body();
    assert_eq!(status, 402, "{body}");
    let declined = body["orderId"].as_str().expect("orderId").to_string();
    let r = refund_order(&stack, &declined, &key(), json!({"restock": false})).await;
    assert_eq!((r.status, slug(&r.json)), (409, "order-not-refundable"), "{}", r.json);
    let r = refund_order(&stack, "ord_nope", &key(), json!({"restock": false})).await;
    assert_eq!((r.status, slug(&r.json)), (404, "order-not-found"), "{}", r.json);
    for bad in [
        json!({}),
        json!({"restock": "yes"}),
        json!({"restock": true, "amount": 0}),
        json!({"restock": true, "amount": -1}),
    ] {
        let r = refund_order(&stack, &declined, &key(), bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.json);
    }
}
