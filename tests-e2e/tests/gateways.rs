//! Payment providers as real processes (`gateway-sim` as card-a and card-b): failover only
//! where it cannot double-charge, the circuit breaker, the manual switch, lost answers and a
//! provider killed mid-checkout; after each, our books equal each provider's ledger.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests_e2e::metrics::{scrape, value};
use tests_e2e::{Service, Stack, StackOptions, new_key as key, slug};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Quick recovery, and a breaker that opens after 3 failures and cools down in 1 s.
async fn stack() -> Stack {
    Stack::launch(StackOptions {
        order_env: env(&[("RECOVERY_INTERVAL", "200ms"), ("RECOVERY_RETRY", "300ms")]),
        payment_env: env(&[
            ("BREAKER_FAILURES", "3"),
            ("BREAKER_WINDOW", "10s"),
            ("BREAKER_COOLDOWN", "1s"),
            ("GATEWAY_TIMEOUT", "500ms"),
        ]),
        ..StackOptions::default()
    })
    .await
}

async fn buy(stack: &Stack, item: u64) -> (u16, Value) {
    let (status, _, body) = stack.checkout(&key(), json!({"itemId": item, "quantity": 1})).await;
    (status, body)
}

/// The gateway of the order's succeeded charge, as payment recorded it.
async fn charged_at(stack: &Stack, order_id: &str) -> Option<String> {
    let listed = stack
        .get_json(&format!("/payment/charges?orderId={order_id}"), true)
        .await;
    listed["charges"]
        .as_array()?
        .iter()
        .find(|c| c["status"] == "succeeded" || c["status"] == "refunded")
        .and_then(|c| c["gateway"].as_str().map(str::to_string))
}

async fn gateway(stack: &Stack, name: &str) -> Value {
    let all = stack.get_json("/payment/gateways", true).await;
    all.as_array()
        .and_then(|a| a.iter().find(|g| g["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

async fn switch(stack: &Stack, name: &str, body: &str) -> (u16, Value) {
    let resp = stack
        .client()
        .put(stack.url(&format!("/payment/gateways/{name}")))
        .bearer_auth(stack.token())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("PUT /payment/gateways");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until no order is processing (recovery has resolved every unknown).
async fn settle(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let totals = stack.get_json("/order/totals", true).await;
        let processing: i64 = totals
            .as_object()
            .map(|m| m.values().map(|c| c["processing"]["count"].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if processing == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "orders still processing: {totals}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The invariant across providers: each order charged at most once over both ledgers (net of
/// refunds, at most one charge stands), every provider's ledger equals our `byGateway`, and
/// charged − refunded equals completed.
async fn assert_books_match_ledgers(stack: &Stack) {
    let totals = stack.get_json("/payment/totals", true).await;
    let mut standing: HashMap<String, i64> = HashMap::new();
    for sim in [Service::CardA, Service::CardB] {
        let ledger = stack.sim_ledger(sim).await;
        let charges = ledger["charges"].as_array().cloned().unwrap_or_default();
        let refunds = ledger["refunds"].as_array().cloned().unwrap_or_default();
        let succeeded: Vec<&Value> = charges.iter().filter(|c| c["status"] == "succeeded").collect();
        let refunded_refs: Vec<&str> = refunds.iter().filter_map(|r| r["chargeReference"].as_str()).collect();
        for c in &succeeded {
            let order = c["orderId"].as_str().unwrap_or_default().to_string();
            let net = if refunded_refs.contains(&c["reference"].as_str().unwrap_or_default()) {
                0
            } else {
                1
            };
            *standing.entry(order).or_default() += net;
        }
        let sum = |items: &[&Value]| -> (i64, i64) {
            (
                items.len() as i64,
                items.iter().map(|v| v["amount"].as_i64().unwrap_or(0)).sum(),
            )
        };
        let refunds: Vec<&Value> = refunds.iter().collect();
        let ours = &totals["byGateway"][sim.name()]["USD"];
        let ours_charged = (
            ours["charged"]["count"].as_i64().unwrap_or(0),
            ours["charged"]["amount"].as_i64().unwrap_or(0),
        );
        let ours_refunded = (
            ours["refunded"]["count"].as_i64().unwrap_or(0),
            ours["refunded"]["amount"].as_i64().unwrap_or(0),
        );
        assert_eq!(
            sum(&succeeded),
            ours_charged,
            "{}: ledger charges vs byGateway {totals}",
            sim.name()
        );
        assert_eq!(
            sum(&refunds),
            ours_refunded,
            "{}: ledger refunds vs byGateway {totals}",
            sim.name()
        );
    }
    let twice: Vec<_> = standing.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "orders charged more than once across providers: {twice:?}"
    );
    let orders = stack.get_json("/order/totals", true).await;
    let completed = orders["USD"]["completed"]["amount"].as_i64().unwrap_or(0);
    let net = totals["USD"]["charged"]["amount"].as_i64().unwrap_or(0)
        - totals["USD"]["refunded"]["amount"].as_i64().unwrap_or(0);
    assert_eq!(net, completed, "charged − refunded vs completed: {totals} {orders}");
    let standing_orders = standing.values().filter(|n| **n == 1).count() as i64;
    assert_eq!(
        standing_orders,
        orders["USD"]["completed"]["count"].as_i64().unwrap_or(0),
        "every completed order has exactly one standing charge"
    );
}

#[tokio::test]
async fn a_checkout_is_charged_at_card_a_and_recorded_with_its_reference() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 5).await;
    let (status, body) = buy(&stack, 1).await;
    assert_eq!(status, 200, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId");
    let listed = stack
        .get_json(&format!("/payment/charges?orderId={order_id}"), true)
        .await;
    let charge = &listed["charges"][0];
    assert_eq!(charge["gateway"], "card-a");
    let ledger = stack.sim_ledger(Service::CardA).await;
    assert_eq!(ledger["charges"][0]["reference"], charge["gatewayReference"]);
    assert_eq!(ledger["charges"][0]["orderId"], order_id);
    assert_eq!(ledger["charges"][0]["amount"], 1250);
    assert_books_match_ledgers(&stack).await;
}

#[tokio::test]
async fn a_provider_refusing_connections_fails_over_to_the_next() {
    let mut stack = stack().await;
    stack.put_item(1, "Mug", 1000, 5).await;
    stack.kill(Service::CardA).await;
    let (status, body) = buy(&stack, 1).await;
    assert_eq!(status, 200, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId");
    assert_eq!(charged_at(&stack, order_id).await.as_deref(), Some("card-b"));
    let metrics = scrape(&stack, "/payment/metrics").await;
    assert_eq!(
        value(
            &metrics,
            "gateway_failovers_total",
            &[("from", "card-a"), ("to", "card-b")]
        ),
        1.0
    );
    stack.start(Service::CardA).await;
    assert_books_match_ledgers(&stack).await;
}

#[tokio::test]
async fn a_provider_answering_not_processed_fails_over_and_holds_nothing() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1000, 5).await;
    stack.sim_faults(Service::CardA, json!({"errorRate": 1.0})).await;
    let (status, body) = buy(&stack, 1).await;
    assert_eq!(status, 200, "{body}");
    let order_id = body["orderId"].as_str().expect("orderId");
    assert_eq!(charged_at(&stack, order_id).await.as_deref(), Some("card-b"));
    assert_eq!(stack.sim_ledger(Service::CardA).await["charges"], json!([]));
    assert_books_match_ledgers(&stack).await;
}

#[tokio::test]
async fn no_provider_able_to_process_declines_with_processing_error_and_charges_nothing() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1000, 5).await;
    for sim in [Service::CardA, Service::CardB] {
        stack.sim_faults(sim, json!({"errorRate": 1.0})).await;
    }
    let (status, body) = buy(&stack, 1).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["declineCode"], "processing_error", "{body}");
    assert_eq!(stack.item(1).await["available"], 5, "the units were released");
    for sim in [Service::CardA, Service::CardB] {
        stack.sim_faults(sim, json!({})).await;
        assert_eq!(stack.sim_ledger(sim).await["charges"], json!([]));
    }
    assert_books_match_ledgers(&stack).await;
}

#[tokio::test]
async fn the_breaker_opens_skips_its_provider_half_opens_and_closes() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 100, 50).await;
    stack.sim_faults(Service::CardA, json!({"errorRate": 1.0})).await;
    for _ in 0..3 {
        assert_eq!(buy(&stack, 1).await.0, 200);
    }
    let a = gateway(&stack, "card-a").await;
    assert_eq!(a["breaker"], "open", "{a}");
    let sent_while_open = a["requests"].as_u64().unwrap_or(0);
    let (status, body) = buy(&stack, 1).await;
    assert_eq!(status, 200);
    assert_eq!(
        charged_at(&stack, body["orderId"].as_str().unwrap_or_default())
            .await
            .as_deref(),
        Some("card-b")
    );
    assert_eq!(
        gateway(&stack, "card-a").await["requests"].as_u64(),
        Some(sent_while_open),
        "an open breaker is skipped without a request"
    );
    stack.sim_faults(Service::CardA, json!({})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gateway(&stack, "card-a").await["breaker"], "half_open");
    let (status, body) = buy(&stack, 1).await;
    assert_eq!(status, 200);
    assert_eq!(
        charged_at(&stack, body["orderId"].as_str().unwrap_or_default())
            .await
            .as_deref(),
        Some("card-a"),
        "the trial went to card-a"
    );
    assert_eq!(gateway(&stack, "card-a").await["breaker"], "closed");
    let metrics = scrape(&stack, "/payment/metrics").await;
    for to in ["open", "half_open", "closed"] {
        assert_eq!(
            value(
                &metrics,
                "gateway_breaker_transitions_total",
                &[("gateway", "card-a"), ("to", to)]
            ),
            1.0,
            "{to}"
        );
    }
    assert_books_match_ledgers(&stack).await;
}

#[tokio::test]
async fn the_manual_switch_routes_new_charges_away_but_refunds_still_go_to_the_charging_provider() {
    let mut stack = stack().await;
    stack.put_item(1, "Mug", 300, 10).await;
    let (_, first) = buy(&stack, 1).await;
    let first_order = first["orderId"].as_str().unwrap_or_default().to_string();
    assert_eq!(charged_at(&stack, &first_order).await.as_deref(), Some("card-a"));

    let (status, view) = switch(&stack, "card-a", r#"{"enabled": false}"#).await;
    assert_eq!((status, &view["enabled"]), (200, &json!(false)), "{view}");
    let events = stack.get_json("/payment/events?aggregateId=gw_card-a", true).await;
    assert_eq!(events["events"][0]["type"], "gateway.switched", "{events}");
    assert_eq!(events["events"][0]["data"]["enabled"], false);
    // Persisted: a restarted replica obeys it too.
    stack.kill(Service::Payment).await;
    stack.start(Service::Payment).await;
    assert_eq!(gateway(&stack, "card-a").await["enabled"], false);
    let (_, second) = buy(&stack, 1).await;
    let second_order = second["orderId"].as_str().unwrap_or_default().to_string();
    assert_eq!(charged_at(&stack, &second_order).await.as_deref(), Some("card-b"));

    let listed = stack
        .get_json(&format!("/payment/charges?orderId={first_order}"), true)
        .await;
    let charge_id = listed["charges"][0]["chargeId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let refund = stack
        .post_internal("/payment/refund", Some(&key()), &json!({"chargeId": charge_id}))
        .await;
    assert_eq!(refund.status, 200, "{}", refund.json);
    let refunds = stack.sim_ledger(Service::CardA).await["refunds"].clone();
    assert_eq!(
        refunds.as_array().map(Vec::len),
        Some(1),
        "card-a refunded its own charge: {refunds}"
    );

    assert_eq!(switch(&stack, "card-a", r#"{"enabled": true}"#).await.0, 200);
    let (_, third) = buy(&stack, 1).await;
    let third_order = third["orderId"].as_str().unwrap_or_default().to_string();
    assert_eq!(charged_at(&stack, &third_order).await.as_deref(), Some("card-a"));

    // A switch another replica persisted is obeyed here within a second.
    let pool = stack.redis_pool();
    let mut conn = pool.get().await.expect("a Redis connection");
    let _: i64 = redis::cmd("HSET")
        .arg("payment:{gateways}:enabled")
        .arg("card-a")
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("HSET the switch");
    let switched_at = Instant::now();
    while gateway(&stack, "card-a").await["enabled"] != false {
        assert!(switched_at.elapsed() < Duration::from_secs(1), "not obeyed within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn switching_an_unknown_gateway_is_404_and_a_malformed_switch_400() {
    let stack = stack().await;
    let (status, body) = switch(&stack, "card-z", r#"{"enabled": false}"#).await;
    assert_eq!((status, slug(&body)), (404, "gateway-not-found"), "{body}");
    for bad in [
        r#"{"enabled": "no"}"#,
        r#"{}"#,
        r#"{"enabled": true, "x": 1}"#,
        "not json",
        "[true]",
    ] {
        let (status, body) = switch(&stack, "card-a", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["status"], 400, "problem+json for {bad}");
    }
    assert_eq!(gateway(&stack, "card-a").await["enabled"], true, "nothing switched");
    let resp = stack
        .client()
        .get(stack.url("/payment/gateways"))
        .send()
        .await
        .expect("GET /payment/gateways");
    assert_eq!(resp.status(), 401, "the internal token is required");
}

#[tokio::test]
async fn lost_answers_at_card_a_never_lead_to_a_charge_at_card_b() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 200, 100).await;
    stack
        .sim_faults(Service::CardA, json!({"dropResponseRate": 0.5, "latencyMs": 20}))
        .await;
    let checkouts: Vec<_> = (0..24)
        .map(|_| {
            let stack = &stack;
            async move { buy(stack, 1).await.0 }
        })
        .collect();
    let statuses = futures_util::future::join_all(checkouts).await;
    assert!(statuses.iter().all(|s| [200, 202].contains(s)), "{statuses:?}");
    stack.sim_faults(Service::CardA, json!({})).await;
    settle(&stack).await;
    let metrics = scrape(&stack, "/payment/metrics").await;
    assert!(
        value(
            &metrics,
            "gateway_requests_total",
            &[("gateway", "card-a"), ("operation", "charge"), ("outcome", "unknown")]
        ) > 0.0,
        "some answers were lost"
    );
    assert_books_match_ledgers(&stack).await;
    let orders = stack.get_json("/order/totals", true).await;
    assert_eq!(orders["USD"]["completed"]["count"], 24, "{orders}");
}

#[tokio::test]
async fn a_provider_killed_during_concurrent_checkouts_charges_no_order_twice() {
    let mut stack = stack().await;
    stack.put_item(1, "Mug", 150, 100).await;
    stack.sim_faults(Service::CardA, json!({"latencyMs": 150})).await;
    let checkouts: Vec<_> = (0..16)
        .map(|_| stack.spawn_checkout(json!({"itemId": 1, "quantity": 1})))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stack.kill(Service::CardA).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.start(Service::CardA).await;
    for c in checkouts {
        let status = c.await.unwrap_or(0);
        assert!([200, 202, 503].contains(&status), "{status}");
    }
    settle(&stack).await;
    assert_books_match_ledgers(&stack).await;
}
