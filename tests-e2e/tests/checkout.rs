//! Checkout through nginx against the real stack: the happy path, idempotency, validation,
//! concurrency, declines and dependencies that go away.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tests_e2e::{Service, Stack, StackOptions, new_key as key, slug};

async fn stack() -> Stack {
    Stack::launch(StackOptions::default()).await
}

/// Charged minus refunded equals completed, per currency, and no order is left processing.
async fn assert_books_balance(stack: &Stack) {
    let client = stack.client();
    let orders: Value = client
        .get(stack.url("/order/totals"))
        .bearer_auth(stack.token())
        .send()
        .await
        .expect("order totals")
        .json()
        .await
        .expect("order totals json");
    let payments: Value = client
        .get(stack.url("/payment/totals"))
        .bearer_auth(stack.token())
        .send()
        .await
        .expect("payment totals")
        .json()
        .await
        .expect("payment totals json");
    let currencies: Vec<&String> = orders.as_object().expect("totals object").keys().collect();
    for currency in currencies {
        let o = &orders[currency];
        assert_eq!(
            o["processing"]["count"], 0,
            "{currency}: orders left processing: {orders}"
        );
        let p = &payments[currency];
        let charged = p["charged"]["amount"].as_i64().unwrap_or(0);
        let refunded = p["refunded"]["amount"].as_i64().unwrap_or(0);
        let completed = o["completed"]["amount"].as_i64().unwrap_or(0);
        assert_eq!(
            charged - refunded,
            completed,
            "{currency}: orders {orders} payments {payments}"
        );
    }
}

#[tokio::test]
async fn checkout_moves_stock_to_sold_and_records_one_charge() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;

    let (status, headers, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 2})).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["itemId"], 1);
    assert_eq!(body["quantity"], 2);
    assert_eq!(body["amount"], 2500);
    assert_eq!(body["currency"], "USD");
    assert!(headers.contains_key("x-request-id"));
    let item = stack.item(1).await;
    assert_eq!(
        (
            item["available"].as_i64(),
            item["reserved"].as_i64(),
            item["sold"].as_i64()
        ),
        (Some(8), Some(0), Some(2))
    );

    let charge_id = body["chargeId"].as_str().expect("chargeId");
    let charge: Value = stack
        .client()
        .get(stack.url(&format!("/payment/charges/{charge_id}")))
        .bearer_auth(stack.token())
        .send()
        .await
        .expect("charge")
        .json()
        .await
        .expect("charge json");
    assert_eq!(charge["status"], "succeeded");
    assert_eq!(charge["amount"], 2500);
    assert_eq!(charge["orderId"], body["orderId"]);

    let order_id = body["orderId"].as_str().expect("orderId");
    let resp = stack
        .client()
        .get(stack.url(&format!("/order/orders/{order_id}")))
        .send()
        .await
        .expect("order");
    assert_eq!(resp.status(), 200);
    let order: Value = resp.json().await.expect("order json");
    assert_eq!(order["status"], "completed");
    assert_eq!(order["chargeId"], charge_id);
    assert_eq!(order["reservationId"], body["reservationId"]);
    let steps: Vec<String> = order["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["name"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "created:succeeded",
            "reserve:succeeded",
            "charge:succeeded",
            "complete:succeeded"
        ]
    );
    // Each step's time reads back as a time, in order: the steps written together are stored
    // with each time after the first as the distance from the one before.
    let ats: Vec<&str> = order["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["at"].as_str().unwrap_or(""))
        .collect();
    assert!(
        ats.iter().all(|at| shared::time::parse_rfc3339_ms(at).is_some()),
        "{ats:?}"
    );
    assert!(ats.windows(2).all(|w| w[0] <= w[1]), "{ats:?}");
    assert_books_balance(&stack).await;
}

#[tokio::test]
async fn the_dearest_checkout_stock_allows_is_one_payment_can_charge() {
    let stack = stack().await;
    // The highest price stock accepts (a dearer one is refused at PUT: see the stock tests),
    // times the most one checkout takes, is a charge payment accepts.
    stack.put_item(1, "Yacht", 9_000_000_000, 1000).await;
    let (status, _, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 1000})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["amount"], 9_000_000_000_000u64);
    assert_books_balance(&stack).await;
}

#[tokio::test]
async fn replay_returns_the_same_bytes_with_the_replayed_header() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let url = stack.url("/order/checkout");
    let send = || {
        stack
            .client()
            .post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", &k)
            .body(r#"{"itemId":1,"quantity":1}"#)
            .send()
    };

    let first = send().await.expect("first");
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.expect("first body");
    // Same payload, different key order and spacing: still the same request.
    let second = stack
        .client()
        .post(&url)
        .header("content-type", "application/json")
        .header("idempotency-key", &k)
        .body(r#"{ "quantity": 1, "itemId": 1 }"#)
        .send()
        .await
        .expect("second");

    assert_eq!(second.status(), 200);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(second.bytes().await.expect("second body"), first_body);
    assert_eq!(stack.item(1).await["sold"], 1, "the replay must not sell again");
}

#[tokio::test]
async fn a_replay_after_the_order_was_refunded_still_answers_what_the_checkout_answered() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let body = json!({"itemId": 1, "quantity": 2});
    let (status, _, first) = stack.checkout(&k, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let order_id = first["orderId"].as_str().unwrap_or_default().to_string();

    // A partial refund, then the rest: the order is no longer "completed".
    for amount in [500, 2000] {
        let refund = stack
            .post_internal(
                &format!("/order/orders/{order_id}/refunds"),
                Some(&key()),
                &json!({"amount": amount, "restock": false}),
            )
            .await;
        assert_eq!(refund.status, 200, "{}", refund.json);
        let (status, headers, replay) = stack.checkout(&k, body.clone()).await;
        assert_eq!(status, 200, "{replay}");
        assert_eq!(
            headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
            Some("true")
        );
        assert_eq!(
            replay, first,
            "a replay answers what the request was answered, not the order now"
        );
    }
}

#[tokio::test]
async fn a_changed_payload_with_the_same_key_is_refused_with_422() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let (status, _, _) = stack.checkout(&k, json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(status, 200);

    let (status, _, body) = stack.checkout(&k, json!({"itemId": 1, "quantity": 2})).await;

    assert_eq!(status, 422, "{body}");
    assert_eq!(slug(&body), "idempotency-key-reused");
    assert_eq!(stack.item(1).await["sold"], 1);
}

#[tokio::test]
async fn bad_checkout_requests_get_a_problem_that_says_what_was_wrong() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let url = stack.url("/order/checkout");
    let cases: Vec<(&str, &[&str], String, u16, &str)> = vec![
        (
            "missing key",
            &[],
            r#"{"itemId":1,"quantity":1}"#.into(),
            400,
            "idempotency-key-missing",
        ),
        (
            "key with a space",
            &["a b"],
            r#"{"itemId":1,"quantity":1}"#.into(),
            400,
            "idempotency-key-invalid",
        ),
        (
            "malformed JSON",
            &["k1"],
            r#"{"itemId":1,"#.into(),
            400,
            "invalid-request",
        ),
        (
            "wrong type",
            &["k2"],
            r#"{"itemId":"one","quantity":1}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "unknown field",
            &["k3"],
            r#"{"itemId":1,"quantity":1,"discount":100}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "quantity 0",
            &["k4"],
            r#"{"itemId":1,"quantity":0}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "quantity 1001",
            &["k5"],
            r#"{"itemId":1,"quantity":1001}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "negative quantity",
            &["k6"],
            r#"{"itemId":1,"quantity":-1}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "item 0",
            &["k7"],
            r#"{"itemId":0,"quantity":1}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "missing quantity",
            &["k8"],
            r#"{"itemId":1}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "two keys",
            &["k10", "k11"],
            r#"{"itemId":1,"quantity":1}"#.into(),
            400,
            "idempotency-key-invalid",
        ),
        (
            "oversized body",
            &["k9"],
            format!(r#"{{"itemId":1,"quantity":1,"customerId":"{}"}}"#, "x".repeat(20_000)),
            413,
            "payload-too-large",
        ),
    ];
    for (what, keys, body, want_status, want_slug) in cases {
        let mut req = stack
            .client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        for k in keys {
            req = req.header("idempotency-key", *k);
        }
        let resp = req.send().await.expect(what);
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want_status, "{what}: {body}");
        assert_eq!(ctype, "application/problem+json", "{what}");
        assert_eq!(slug(&body), want_slug, "{what}: {body}");
        assert!(
            !body["detail"].as_str().unwrap_or("").is_empty(),
            "{what}: the detail must say what was wrong"
        );
    }
    // Nothing was reserved or sold by any of them, and the keys stayed free.
    let item = stack.item(1).await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    let (status, _, body) = stack.checkout("k5", json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(
        status, 200,
        "a key refused for validation is free for the corrected request: {body}"
    );
}

/// A body that is not plain JSON is refused before it is read, with what to send instead: a
/// gzip-compressed body used to be read as is and refused as "malformed JSON" at column 1.
#[tokio::test]
async fn a_body_that_is_not_plain_json_is_415_saying_what_to_send_and_nothing_is_done() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let body = r#"{"itemId":1,"quantity":1}"#;
    let cases = [
        ("text/plain", None, "Content-Type: application/json"),
        ("application/json", Some("gzip"), "without a Content-Encoding"),
    ];
    for (i, (ctype, encoding, says)) in cases.into_iter().enumerate() {
        let mut req = stack
            .client()
            .post(stack.url("/order/checkout"))
            .header("idempotency-key", format!("media-{i}"))
            .header("content-type", ctype)
            .body(body);
        if let Some(encoding) = encoding {
            req = req.header("content-encoding", encoding);
        }
        let resp = req.send().await.expect("checkout");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 415, "{ctype} {encoding:?}: {body}");
        assert_eq!(slug(&body), "unsupported-media-type");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains(says)), "{body}");
    }
    let item = stack.item(1).await;
    assert_eq!((item["available"].as_i64(), item["sold"].as_i64()), (Some(10), Some(0)));
}

#[tokio::test]
async fn an_unknown_item_is_404_and_an_unknown_order_is_404() {
    let stack = stack().await;

    let (status, _, body) = stack.checkout(&key(), json!({"itemId": 424242, "quantity": 1})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(slug(&body), "item-not-found");
    assert!(
        body["orderId"].is_string(),
        "problems after an order exists carry its id: {body}"
    );

    let resp = stack
        .client()
        .get(stack.url("/order/orders/ord_doesnotexist"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(slug(&body), "order-not-found");
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_make_one_order_and_one_charge() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 100).await;
    let k = key();

    let results =
        futures_util::future::join_all((0..50).map(|_| stack.checkout(&k, json!({"itemId": 1, "quantity": 3})))).await;

    let mut by_status: HashMap<u16, usize> = HashMap::new();
    let mut order_ids = std::collections::HashSet::new();
    for (status, _, body) in &results {
        *by_status.entry(*status).or_default() += 1;
        match status {
            200 => {
                order_ids.insert(body["orderId"].as_str().unwrap_or("").to_string());
            }
            409 => assert_eq!(slug(body), "idempotency-key-in-use", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(by_status.get(&200).copied().unwrap_or(0) >= 1, "{by_status:?}");
    assert_eq!(order_ids.len(), 1, "every 200 is the same order: {order_ids:?}");
    let item = stack.item(1).await;
    assert_eq!(
        (item["available"].as_i64(), item["sold"].as_i64()),
        (Some(97), Some(3)),
        "stock went down once"
    );
    let payments: Value = stack
        .client()
        .get(stack.url("/payment/totals"))
        .bearer_auth(stack.token())
        .send()
        .await
        .expect("totals")
        .json()
        .await
        .expect("json");
    assert_eq!(payments["USD"]["charged"]["count"], 1, "{payments}");
    assert_eq!(payments["USD"]["charged"]["amount"], 3750, "{payments}");
}

#[tokio::test]
async fn two_hundred_checkouts_for_fifty_units_sell_exactly_fifty() {
    let stack = stack().await;
    stack.put_item(7, "Limited print", 999, 50).await;

    let results = futures_util::future::join_all(
        (0..200).map(|_| stack.checkout_owned(key(), json!({"itemId": 7, "quantity": 1}))),
    )
    .await;

    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    let out_of_stock = results
        .iter()
        .filter(|(s, _, b)| *s == 409 && slug(b) == "out-of-stock")
        .count();
    let others: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s != 200 && *s != 409)
        .map(|(s, _, b)| (s, b))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert_eq!((ok, out_of_stock), (50, 150));
    let item = stack.item(7).await;
    assert_eq!(
        (
            item["available"].as_i64(),
            item["reserved"].as_i64(),
            item["sold"].as_i64()
        ),
        (Some(0), Some(0), Some(50))
    );
    assert_books_balance(&stack).await;
}

#[tokio::test]
async fn a_declined_card_is_402_and_puts_the_stock_back() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    for (method, code) in [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ] {
        let k = key();
        let (status, _, body) = stack
            .checkout(&k, json!({"itemId": 1, "quantity": 2, "paymentMethod": method}))
            .await;

        assert_eq!(status, 402, "{body}");
        assert_eq!(slug(&body), "payment-declined");
        assert_eq!(body["declineCode"], code);
        assert!(body["detail"].as_str().unwrap_or("").contains(code));
        let item = stack.item(1).await;
        assert_eq!(
            (item["available"].as_i64(), item["reserved"].as_i64()),
            (Some(10), Some(0)),
            "{method}"
        );
        let order_id = body["orderId"].as_str().expect("orderId");
        let order: Value = stack
            .client()
            .get(stack.url(&format!("/order/orders/{order_id}")))
            .send()
            .await
            .expect("order")
            .json()
            .await
            .expect("json");
        assert_eq!(order["status"], "compensated", "{order}");
        // The decline is the stored answer for the key.
        let (again, headers, _) = stack
            .checkout(&k, json!({"itemId": 1, "quantity": 2, "paymentMethod": method}))
            .await;
        assert_eq!(again, 402);
        assert!(headers.contains_key("idempotent-replayed"));
    }
    assert_books_balance(&stack).await;
}

#[tokio::test]
async fn an_unknown_payment_method_is_400_and_releases_the_stock() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;

    let (status, _, body) = stack
        .checkout(
            &key(),
            json!({"itemId": 1, "quantity": 1, "paymentMethod": "pm_card_bitcoin"}),
        )
        .await;

    assert_eq!(status, 400, "{body}");
    assert_eq!(slug(&body), "invalid-request");
    let item = stack.item(1).await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64()),
        (Some(10), Some(0))
    );
}

#[tokio::test]
async fn stock_stopped_for_a_moment_is_ridden_out_by_retries() {
    let mut options = StackOptions::default();
    // Enough retries that a short outage always fits inside the backoff window.
    options.order_env.push(("HTTP_MAX_RETRIES".into(), "10".into()));
    options.order_env.push(("HTTP_RETRY_MAX".into(), "500ms".into()));
    let mut stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    stack.kill(Service::Stock).await;

    let k = key();
    let pending = tokio::spawn({
        let client = stack.client();
        let url = stack.url("/order/checkout");
        async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", k)
                .json(&json!({"itemId": 1, "quantity": 1}))
                .send()
                .await
                .expect("checkout");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.start(Service::Stock).await;
    let (status, body) = pending.await.expect("join");

    assert_eq!(status, 200, "{body}");
    let item = stack.item(1).await;
    assert_eq!((item["available"].as_i64(), item["sold"].as_i64()), (Some(9), Some(1)));
}

#[tokio::test]
async fn stock_down_for_good_is_503_with_nothing_reserved_or_charged_and_the_key_free() {
    let mut stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    stack.kill(Service::Stock).await;
    let k = key();

    let (status, headers, body) = stack.checkout(&k, json!({"itemId": 1, "quantity": 1})).await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(slug(&body), "dependency-unavailable");
    assert!(headers.contains_key("retry-after"));
    stack.start(Service::Stock).await;
    let item = stack.item(1).await;
    assert_eq!(
        (
            item["available"].as_i64(),
            item["reserved"].as_i64(),
            item["sold"].as_i64()
        ),
        (Some(10), Some(0), Some(0))
    );
    let payments: Value = stack
        .client()
        .get(stack.url("/payment/totals"))
        .bearer_auth(stack.token())
        .send()
        .await
        .expect("totals")
        .json()
        .await
        .expect("json");
    assert_eq!(
        payments["USD"]["charged"]["count"].as_i64().unwrap_or(0),
        0,
        "{payments}"
    );
    // The failure was not stored: the same key now goes through.
    let (status, _, body) = stack.checkout(&k, json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn payment_down_for_good_is_503_and_the_reservation_is_released() {
    let mut stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    stack.kill(Service::Payment).await;

    let (status, _, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 4})).await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(slug(&body), "dependency-unavailable");
    let item = stack.item(1).await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    stack.start(Service::Payment).await;
    assert_books_balance(&stack).await;
}

#[tokio::test]
async fn internal_endpoints_refuse_a_missing_or_wrong_token() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let client = stack.client();
    let posts = [
        ("/stock/reserve", json!({"itemId": 1, "quantity": 1})),
        ("/stock/release", json!({"reservationId": "rsv_1_abc"})),
        ("/stock/complete", json!({"reservationId": "rsv_1_abc"})),
        (
            "/payment/charge",
            json!({"orderId": "o1", "amount": 1, "currency": "USD", "customerId": "c", "paymentMethod": "pm_card_visa"}),
        ),
        ("/payment/refund", json!({"chargeId": "ch_x"})),
    ];
    for token in [None, Some("wrong-token")] {
        for (path, body) in &posts {
            let mut req = client.post(stack.url(path)).header("idempotency-key", key()).json(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.expect(path);
            assert_eq!(resp.status(), 401, "{path} with {token:?}");
            let body: Value = resp.json().await.expect("json");
            assert_eq!(slug(&body), "unauthorized");
        }
        let mut put = client
            .put(stack.url("/stock/items/1"))
            .json(&json!({"name": "x", "price": 1, "currency": "USD", "available": 1}));
        let mut order_totals = client.get(stack.url("/order/totals"));
        let mut payment_totals = client.get(stack.url("/payment/totals"));
        if let Some(t) = token {
            put = put.bearer_auth(t);
            order_totals = order_totals.bearer_auth(t);
            payment_totals = payment_totals.bearer_auth(t);
        }
        for (what, req) in [
            ("put item", put),
            ("order totals", order_totals),
            ("payment totals", payment_totals),
        ] {
            assert_eq!(req.send().await.expect(what).status(), 401, "{what} with {token:?}");
        }
    }
    // Nothing changed.
    let item = stack.item(1).await;
    assert_eq!(
        (item["name"].as_str(), item["available"].as_i64()),
        (Some("Mug"), Some(10))
    );
}
