//! Graceful shutdown: SIGTERM stops a service from accepting, lets what it accepted finish
//! within SHUTDOWN_GRACE, and leaves the rest to recovery — never a 5xx for accepted work.

use std::time::Duration;

use serde_json::json;
use tests_e2e::{Fault, FaultPlan, Service, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_in_flight_when_the_order_service_gets_sigterm_still_completes() {
    let mut options = StackOptions {
        fault_proxies: true,
        ..StackOptions::default()
    };
    options.order_env.push(("SHUTDOWN_GRACE".into(), "10s".into()));
    let mut stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    // The completion takes a while, so the checkout is mid-saga when the signal arrives.
    stack
        .proxy(Service::Stock)
        .set(FaultPlan::always(Fault::Delay(Duration::from_millis(1500))).on_path("/complete"));
    let client = stack.client();
    let url = stack.url("/order/checkout");
    let pending = tokio::spawn(async move {
        let resp = client
            .post(url)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"itemId": 1, "quantity": 1}))
            .send()
            .await
            .expect("checkout");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    stack.stop(Service::Order, Duration::from_secs(15)).await;
    let (status, body) = pending.await.expect("join");

    assert_eq!(status, 200, "accepted before SIGTERM, so it finishes: {body}");
    stack.start(Service::Order).await;
    let item = stack.item(1).await;
    assert_eq!(
        (
            item["available"].as_i64(),
            item["reserved"].as_i64(),
            item["sold"].as_i64()
        ),
        (Some(9), Some(0), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_got_sigterm_stops_accepting_and_nginx_answers_503_problem() {
    let mut stack = Stack::launch(StackOptions::default()).await;
    stack.stop(Service::Stock, Duration::from_secs(15)).await;

    let resp = stack.client().get(stack.url("/stock/items")).send().await.expect("get");

    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
}
