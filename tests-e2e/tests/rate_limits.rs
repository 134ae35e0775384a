//! Per-caller rate limits through nginx against the real stack: a burst passes, the next is
//! 429 `rate-limited` with `Retry-After` and the IETF headers, executes nothing and stores
//! nothing under its Idempotency-Key; an API key is its own caller; the internal token and the
//! operations endpoints are exempt.

use std::time::Duration;

use serde_json::json;
use tests_e2e::{Reply, Stack, StackOptions, new_key as key, slug};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn get(stack: &Stack, path: &str, bearer: Option<&str>) -> Reply {
    let mut req = stack.client().get(stack.url(path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    Reply::from(req.send().await.expect("GET")).await
}

async fn checkout(stack: &Stack, k: &str) -> Reply {
    let resp = stack
        .client()
        .post(stack.url("/order/checkout"))
        .header("idempotency-key", k)
        .json(&json!({"itemId": 1, "quantity": 1, "customerId": "c1", "paymentMethod": "pm_card_visa"}))
        .send()
        .await
        .expect("POST /order/checkout");
    Reply::from(resp).await
}

#[tokio::test]
async fn checkouts_past_the_burst_are_429_and_the_refused_key_runs_later_once() {
    let options = StackOptions {
        order_env: env(&[("RATE_LIMIT_CHECKOUT", "2"), ("RATE_LIMIT_CHECKOUT_BURST", "3")]),
        ..StackOptions::default()
    };
    let stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;

    for _ in 0..3 {
        let ok = checkout(&stack, &key()).await;
        assert_eq!(ok.status, 200, "{}", ok.json);
        assert_eq!(header(&ok, "ratelimit-policy"), "\"checkout\";q=3;w=2");
    }
    let refused_key = key();
    let refused = checkout(&stack, &refused_key).await;
    assert_eq!(
        (refused.status, slug(&refused.json)),
        (429, "rate-limited"),
        "{}",
        refused.json
    );
    let wait: u64 = header(&refused, "retry-after").parse().unwrap_or(0);
    assert!(wait >= 1, "Retry-After: {wait}");
    assert!(
        header(&refused, "ratelimit").starts_with("\"checkout\";r=0;t="),
        "{}",
        header(&refused, "ratelimit")
    );
    assert_eq!(
        stack.item(1).await["sold"],
        json!(3),
        "the refused checkout did nothing"
    );

    // Other routes have their own (default) budget: reading an order is not a checkout.
    let order = get(&stack, "/order/totals", None).await;
    assert_ne!(order.status, 429);

    tokio::time::sleep(Duration::from_secs(wait)).await;
    let later = checkout(&stack, &refused_key).await;
    assert_eq!(
        later.status, 200,
        "nothing was stored under the refused key: {}",
        later.json
    );
    assert!(!later.replayed(), "executed now, not replayed");
    assert_eq!(stack.item(1).await["sold"], json!(4));
}

#[tokio::test]
async fn an_api_key_is_its_own_caller_and_the_token_and_operations_are_exempt() {
    let options = StackOptions {
        stock_env: env(&[("RATE_LIMIT_DEFAULT", "1"), ("RATE_LIMIT_DEFAULT_BURST", "2")]),
        ..StackOptions::default()
    };
    let stack = Stack::launch(options).await;
    for _ in 0..2 {
        let r = get(&stack, "/stock/items", None).await;
        assert_eq!((r.status, &r.json), (200, &json!([])), "an empty catalogue lists as []");
    }
    let limited = get(&stack, "/stock/items", None).await;
    assert_eq!((limited.status, slug(&limited.json)), (429, "rate-limited"));
    assert_eq!(header(&limited, "ratelimit-policy"), "\"default\";q=2;w=2");

    let account = stack
        .post_internal("/payment/accounts", Some(&key()), &json!({"name": "Acme"}))
        .await;
    let api_key = account.json["apiKey"].as_str().unwrap_or_default().to_string();
    let by_key = get(&stack, "/stock/items", Some(&api_key)).await;
    assert_eq!(by_key.status, 200, "an API key has its own budget: {}", by_key.json);

    for _ in 0..5 {
        let internal = get(&stack, "/stock/items", Some(stack.token())).await;
        assert_eq!(internal.status, 200);
        assert!(
            internal.headers.get("ratelimit").is_none(),
            "the internal token is not counted"
        );
        assert_eq!(
            get(&stack, "/stock/health", None).await.status,
            200,
            "operations are exempt"
        );
    }
}
