//! Per-caller rate limits through nginx against the real stack: a burst passes, the next is
//! 429 `rate-limited` with `Retry-After` and the IETF headers, executes nothing and stores
//! nothing under its Idempotency-Key; an API key is its own caller; the internal token and the
//! operations endpoints are exempt; two replicas of a service share one budget per caller.

use std::time::{Duration, Instant};

use serde_json::json;
use tests_e2e::{Reply, Service, Stack, StackOptions, new_key as key, slug};

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

/// A GET of the catalogue straight at one replica, as nginx would pass it for `client`.
async fn get_as(stack: &Stack, port: u16, client: &str) -> u16 {
    stack
        .client()
        .get(format!("http://127.0.0.1:{port}/items"))
        .header("x-real-ip", client)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn two_replicas_admit_one_callers_budget_between_them_and_recover_after_the_window() {
    let (rate, burst) = (2.0, 5);
    let options = StackOptions {
        stock_env: env(&[("RATE_LIMIT_DEFAULT", "2"), ("RATE_LIMIT_DEFAULT_BURST", "5")]),
        ..StackOptions::default()
    };
    let mut stack = Stack::launch(options).await;
    let ports = [stack.port(Service::Stock), stack.start_replica(Service::Stock).await];

    let started = Instant::now();
    let sends = (0..40).map(|i| get_as(&stack, ports[i % 2], "203.0.113.9"));
    let statuses = futures_util::future::join_all(sends).await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + refused, 40, "every answer is 200 or 429: {statuses:?}");
    // Two buckets would admit twice the burst; one shared bucket admits the burst and what the
    // rate refilled while the requests ran.
    let budget = burst + (rate * elapsed).ceil() as usize;
    assert!(
        (burst..=budget).contains(&admitted),
        "{admitted} admitted by two replicas in {elapsed:.2} s; one budget allows {burst}..={budget}"
    );
    for port in ports {
        assert_eq!(
            get_as(&stack, port, "203.0.113.10").await,
            200,
            "another caller has its own budget"
        );
    }

    // The window: at 2/s the bucket refills one request every 500 ms.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get_as(&stack, ports[1], "203.0.113.9").await,
        200,
        "admitted again after the window"
    );
    assert_eq!(get_as(&stack, ports[0], "203.0.113.9").await, 200, "by either replica");
}
