//! Merchant webhooks against the real stack, the receiver a process of its own
//! (`webhook-receiver`, with its own records): deliveries signed per Standard Webhooks with the
//! endpoint's secret, to the item's owner and the platform only; a receiver that fails twice
//! gets the same webhook-id three times; one down for the whole schedule is dead-lettered and
//! a manual retry delivers it; kill -9 of payment (relay and dispatcher) and a Redis restart
//! lose no delivery; SSRF destinations are refused at registration and at delivery.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::webhooks::{Secret, Signed, verify};
use tests_e2e::{Reply, Service, Stack, StackOptions, new_key as key, slug};

async fn stack_with(payment_env: &[(&str, &str)]) -> Stack {
    Stack::launch(StackOptions {
        payment_env: payment_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..StackOptions::default()
    })
    .await
}

async fn owned_item(stack: &Stack, id: u64, owner: &str) {
    let body =
        json!({"name": format!("Item {id}"), "price": 250, "currency": "USD", "available": 1000, "ownerId": owner});
    let resp = stack
        .client()
        .put(stack.url(&format!("/stock/items/{id}")))
        .bearer_auth(stack.token())
        .json(&body)
        .send()
        .await
        .expect("PUT item");
    assert!(resp.status().is_success(), "PUT item: {}", resp.status());
}

/// Registers an endpoint at the receiver's `path`: its id and its secret.
async fn endpoint(stack: &Stack, bearer: &str, path: &str, events: &[&str]) -> (String, String) {
    let body = json!({"url": stack.receiver_url(path), "events": events});
    let r = stack
        .send("POST", "/payment/webhook-endpoints", Some(bearer), Some(&body))
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let secret = r.json["secret"].as_str().unwrap_or_default().to_string();
    assert!(secret.starts_with("whsec_"), "{}", r.json);
    (r.json["id"].as_str().unwrap_or_default().to_string(), secret)
}

async fn checkout(stack: &Stack, item: u64) -> String {
    let (status, _, body) = stack
        .checkout(
            &key(),
            json!({"itemId": item, "quantity": 1, "paymentMethod": "pm_card_visa"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["orderId"].as_str().unwrap_or_default().to_string()
}

/// Waits until the receiver holds `n` requests at `path`.
async fn received(stack: &Stack, path: &str, n: usize, within: Duration) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let got = stack.receiver_requests(path).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            started.elapsed() < within,
            "{path}: {} of {n} requests after {within:?}: {got:?}\npayment log:\n{}",
            got.len(),
            tail(&stack.logs(Service::Payment))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The endpoint's deliveries as payment shows them.
/// A manual retry of `delivery` at `endpoint`, as the platform.
async fn retry(stack: &Stack, endpoint: &str, delivery: &str) -> Reply {
    let path = format!("/payment/webhook-endpoints/{endpoint}/deliveries/{delivery}/retry");
    stack.send("POST", &path, Some(stack.token()), None).await
}

async fn deliveries(stack: &Stack, bearer: &str, endpoint: &str, status: Option<&str>) -> Vec<Value> {
    let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
    let r = stack
        .send(
            "GET",
            &format!("/payment/webhook-endpoints/{endpoint}/deliveries{query}"),
            Some(bearer),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Waits until the endpoint has a delivery in `status`.
async fn delivery_becomes(stack: &Stack, bearer: &str, endpoint: &str, status: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        if let Some(d) = deliveries(stack, bearer, endpoint, Some(status))
            .await
            .into_iter()
            .next()
        {
            return d;
        }
        assert!(
            started.elapsed() < within,
            "no {status} delivery after {within:?}: {:?}",
            deliveries(stack, bearer, endpoint, None).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a received request's signature with `secret`, as a merchant would: its webhook-id.
fn verified(request: &Value, secret: &str) -> String {
    let secret = Secret::parse(secret).expect("a whsec_ secret");
    let signed = Signed {
        id: request["webhookId"].as_str(),
        timestamp: request["timestamp"].as_str(),
        signature: request["signature"].as_str(),
    };
    let now = (shared::time::now_ms() / 1000) as i64;
    let body = request["body"].as_str().unwrap_or_default();
    match verify(&secret, signed, body.as_bytes(), now) {
        Ok(id) => id.to_string(),
        Err(e) => panic!("the signature does not verify: {e}: {request}"),
    }
}

fn body_of(request: &Value) -> Value {
    serde_json::from_str(request["body"].as_str().unwrap_or_default()).unwrap_or_default()
}

#[tokio::test]
async fn a_completed_checkout_is_delivered_signed_to_its_items_owner_and_the_platform_only() {
    let stack = stack_with(&[]).await;
    let (alice, alice_key) = stack.account("Alice").await;
    let (_, bob_key) = stack.account("Bob").await;
    owned_item(&stack, 11, &alice).await;
    let (alice_ep, alice_secret) =
        endpoint(&stack, &alice_key, "/alice", &["order.completed", "charge.succeeded"]).await;
    let (_, bob_secret) = endpoint(&stack, &bob_key, "/bob", &["order.completed"]).await;
    let (_, platform_secret) = endpoint(&stack, stack.token(), "/platform", &["order.completed"]).await;

    let order_id = checkout(&stack, 11).await;

    let alice_got = received(&stack, "/alice", 2, Duration::from_secs(15)).await;
    let platform_got = received(&stack, "/platform", 1, Duration::from_secs(15)).await;
    let mut kinds: Vec<String> = alice_got
        .iter()
        .map(|r| {
            verified(r, &alice_secret);
            body_of(r)["type"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["charge.succeeded", "order.completed"]);
    let completed = alice_got
        .iter()
        .find(|r| body_of(r)["type"] == "order.completed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(verified(&completed, &alice_secret), format!("{order_id}-completed"));
    let data = &body_of(&completed)["data"];
    assert_eq!(
        (
            data["orderId"].as_str(),
            data["amount"].as_u64(),
            data["itemId"].as_u64()
        ),
        (Some(order_id.as_str()), Some(250), Some(11))
    );
    assert_eq!(
        verified(&platform_got[0], &platform_secret),
        format!("{order_id}-completed")
    );
    // A secret verifies only its own endpoint's deliveries.
    let other = Secret::parse(&bob_secret).expect("secret");
    let forged = verify(
        &other,
        Signed {
            id: completed["webhookId"].as_str(),
            timestamp: completed["timestamp"].as_str(),
            signature: completed["signature"].as_str(),
        },
        completed["body"].as_str().unwrap_or_default().as_bytes(),
        (shared::time::now_ms() / 1000) as i64,
    );
    assert!(forged.is_err());

    // Bob owns nothing sold: nothing reaches him.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(stack.receiver_requests("/bob").await.is_empty());

    let listed = deliveries(&stack, &alice_key, &alice_ep, Some("succeeded")).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    for d in &listed {
        assert_eq!(d["attempts"].as_array().map(Vec::len), Some(1), "{d}");
        assert_eq!(d["attempts"][0]["statusCode"], 200, "{d}");
    }
    // Bob may not read Alice's endpoint or its deliveries.
    let r = stack
        .send(
            "GET",
            &format!("/payment/webhook-endpoints/{alice_ep}/deliveries"),
            Some(&bob_key),
            None,
        )
        .await;
    assert_eq!((r.status, slug(&r.json)), (403, "forbidden"), "{}", r.json);
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_same_webhook_id_three_times() {
    let stack = stack_with(&[("WEBHOOK_RETRY_SCHEDULE", "200ms,200ms,200ms")]).await;
    stack.put_item(12, "Mug", 300, 100).await;
    let (ep, secret) = endpoint(&stack, stack.token(), "/flaky", &["order.completed"]).await;
    stack.receiver_plan("/flaky", 2, 503, 0).await;

    let order_id = checkout(&stack, 12).await;

    let got = received(&stack, "/flaky", 3, Duration::from_secs(15)).await;
    let ids: Vec<String> = got.iter().map(|r| verified(r, &secret)).collect();
    assert_eq!(ids, vec![format!("{order_id}-completed"); 3]);
    assert_eq!(
        got.iter()
            .map(|r| r["answered"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>(),
        [503, 503, 200]
    );
    let d = delivery_becomes(&stack, stack.token(), &ep, "succeeded", Duration::from_secs(5)).await;
    let codes: Vec<Value> = d["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| a["statusCode"].clone())
        .collect();
    assert_eq!(codes, [json!(503), json!(503), json!(200)]);
}

#[tokio::test]
async fn a_receiver_down_for_the_whole_schedule_is_dead_lettered_and_a_manual_retry_delivers_it() {
    let mut stack = stack_with(&[("WEBHOOK_RETRY_SCHEDULE", "100ms,100ms")]).await;
    stack.put_item(13, "Mug", 300, 100).await;
    let (ep, secret) = endpoint(&stack, stack.token(), "/down", &["order.completed"]).await;
    stack.kill(Service::Receiver).await;

    let order_id = checkout(&stack, 13).await;

    let dead = delivery_becomes(&stack, stack.token(), &ep, "dead", Duration::from_secs(15)).await;
    let attempts = dead["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 3, "one attempt and two retries: {dead}");
    assert!(
        attempts
            .iter()
            .all(|a| a["statusCode"].is_null() && a["error"].is_string()),
        "{dead}"
    );
    let pending = deliveries(&stack, stack.token(), &ep, Some("pending")).await;
    assert!(pending.is_empty(), "{pending:?}");

    stack.start(Service::Receiver).await;
    let id = dead["id"].as_str().unwrap_or_default();
    let r = retry(&stack, &ep, id).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let got = received(&stack, "/down", 1, Duration::from_secs(10)).await;
    assert_eq!(verified(&got[0], &secret), format!("{order_id}-completed"));
    let done = delivery_becomes(&stack, stack.token(), &ep, "succeeded", Duration::from_secs(5)).await;
    assert_eq!(done["attempts"].as_array().map(Vec::len), Some(4), "{done}");

    let unknown = retry(&stack, &ep, "dlv_00000000000000000000000000000000").await;
    assert_eq!((unknown.status, slug(&unknown.json)), (404, "delivery-not-found"));
}

#[tokio::test]
async fn kill_9_of_payment_and_a_redis_restart_lose_no_delivery() {
    let mut stack = stack_with(&[("WEBHOOK_RETRY_SCHEDULE", "200ms,500ms,1s,1s,1s,1s,1s")]).await;
    stack.put_item(14, "Mug", 300, 1000).await;
    let (_, secret) = endpoint(&stack, stack.token(), "/slow", &["order.completed"]).await;
    // A slow receiver keeps deliveries in flight (four at a time) when payment dies.
    stack.receiver_plan("/slow", 0, 200, 500).await;
    let mut orders = HashSet::new();
    for _ in 0..24 {
        orders.insert(format!("{}-completed", checkout(&stack, 14).await));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = stack.receiver_requests("/slow").await.len();
    stack.kill(Service::Payment).await;
    assert!(
        before < orders.len(),
        "every delivery was done before the kill: nothing tested"
    );
    stack.kill(Service::Redis).await;
    stack.start(Service::Redis).await;
    stack.start(Service::Payment).await;
    for _ in 0..6 {
        orders.insert(format!("{}-completed", checkout(&stack, 14).await));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stack.kill(Service::Payment).await;
    stack.start(Service::Payment).await;

    let started = Instant::now();
    loop {
        let got: HashSet<String> = stack
            .receiver_requests("/slow")
            .await
            .iter()
            .filter(|r| r["answered"] == 200)
            .map(|r| verified(r, &secret))
            .collect();
        let missing: Vec<&String> = orders.difference(&got).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of {} orders never delivered: {missing:?}\npayment log:\n{}",
            missing.len(),
            orders.len(),
            tail(&stack.logs(Service::Payment))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn events_wait_in_the_outbox_while_payment_and_then_stock_are_down() {
    // Payment's workers asleep (an hour's poll): the checkouts' events stay in the outboxes.
    let mut stack = stack_with(&[("WEBHOOK_POLL", "1h")]).await;
    stack.put_item(17, "Mug", 300, 100).await;
    let (_, secret) = endpoint(&stack, stack.token(), "/later", &["order.completed"]).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(format!("{}-completed", checkout(&stack, 17).await));
    }
    // Payment restarts awake while stock, which says who owns the item, is down.
    stack.kill(Service::Stock).await;
    stack.set_env(Service::Payment, "WEBHOOK_POLL", "100ms");
    stack.kill(Service::Payment).await;
    stack.start(Service::Payment).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(stack.receiver_requests("/later").await.is_empty());
    assert!(stack.logs(Service::Payment).contains("left for later"));

    assert_eq!(
        outboxed(&stack).await,
        6,
        "three order.completed, three charge.succeeded"
    );

    stack.start(Service::Stock).await;
    let got = received(&stack, "/later", 3, Duration::from_secs(15)).await;
    let mut ids: Vec<String> = got.iter().map(|r| verified(r, &secret)).collect();
    ids.sort();
    orders.sort();
    assert_eq!(ids, orders);
    // Relayed, every entry leaves its outbox.
    let started = Instant::now();
    while outboxed(&stack).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the outboxes keep relayed entries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Entries in every outbox, order's and payment's.
async fn outboxed(stack: &Stack) -> u64 {
    let pool = stack.redis_pool();
    let mut conn = pool.get().await.expect("redis");
    let mut n = 0;
    for shard in 0..shared::ids::SHARDS {
        for key in [
            shared::outbox::order_outbox(shard),
            shared::outbox::payment_outbox(shard),
        ] {
            let len: u64 = redis::cmd("XLEN").arg(key).query_async(&mut conn).await.expect("XLEN");
            n += len;
        }
    }
    n
}

#[tokio::test]
async fn a_slow_endpoint_holds_only_its_own_deliveries() {
    let stack = stack_with(&[("WEBHOOK_ENDPOINT_CONCURRENCY", "2")]).await;
    stack.put_item(16, "Mug", 300, 100).await;
    endpoint(&stack, stack.token(), "/sluggish", &["order.completed"]).await;
    endpoint(&stack, stack.token(), "/brisk", &["order.completed"]).await;
    // Two at a time, two seconds each: the sluggish endpoint needs ten seconds for ten.
    stack.receiver_plan("/sluggish", 0, 200, 2_000).await;
    let started = Instant::now();
    for _ in 0..10 {
        checkout(&stack, 16).await;
    }
    received(&stack, "/brisk", 10, Duration::from_secs(8)).await;
    let sluggish = stack.receiver_requests("/sluggish").await.len();
    assert!(
        sluggish < 10,
        "the sluggish endpoint got all {sluggish} within {:?}: nothing was held back",
        started.elapsed()
    );
    received(&stack, "/sluggish", 10, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn private_destinations_are_refused_at_registration_and_again_at_delivery() {
    let mut stack = stack_with(&[("WEBHOOK_ALLOW_PRIVATE", "false")]).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://10.0.0.7/hook",
        "http://192.168.1.1/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let r = stack
            .send(
                "POST",
                "/payment/webhook-endpoints",
                Some(stack.token()),
                Some(&json!({"url": url, "events": ["order.completed"]})),
            )
            .await;
        assert_eq!((r.status, slug(&r.json)), (400, "invalid-request"), "{url}: {}", r.json);
    }
    let listed = stack
        .send("GET", "/payment/webhook-endpoints", Some(stack.token()), None)
        .await;
    assert_eq!(listed.json["endpoints"], json!([]), "nothing stored: {}", listed.json);

    // Registered while allowed, then refused at delivery once private addresses are not.
    stack.set_env(Service::Payment, "WEBHOOK_ALLOW_PRIVATE", "true");
    stack.kill(Service::Payment).await;
    stack.start(Service::Payment).await;
    stack.put_item(15, "Mug", 300, 100).await;
    let (ep, _) = endpoint(&stack, stack.token(), "/internal", &["order.completed"]).await;
    stack.set_env(Service::Payment, "WEBHOOK_ALLOW_PRIVATE", "false");
    stack.set_env(Service::Payment, "WEBHOOK_RETRY_SCHEDULE", "100ms");
    stack.kill(Service::Payment).await;
    stack.start(Service::Payment).await;
    checkout(&stack, 15).await;
    let dead = delivery_becomes(&stack, stack.token(), &ep, "dead", Duration::from_secs(15)).await;
    let error = dead["attempts"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("private") || error.contains("public"), "{dead}");
    assert!(stack.receiver_requests("/internal").await.is_empty());
}

#[tokio::test]
async fn endpoints_are_their_accounts_and_bad_requests_say_what_is_wrong() {
    let stack = stack_with(&[]).await;
    let (_, alice_key) = stack.account("Alice").await;
    let (_, bob_key) = stack.account("Bob").await;
    let (ep, secret) = endpoint(
        &stack,
        &alice_key,
        "/a",
        &["order.completed", "order.completed", "wallet.credited"],
    )
    .await;

    let at = format!("/payment/webhook-endpoints/{ep}");
    let mine = stack.send("GET", &at, Some(&alice_key), None).await;
    assert_eq!(mine.status, 200);
    assert_eq!(
        mine.json["events"],
        json!(["order.completed", "wallet.credited"]),
        "duplicates dropped"
    );
    assert_eq!(mine.json["secret"], json!(secret));
    let theirs = stack.send("GET", &at, Some(&bob_key), None).await;
    assert_eq!((theirs.status, slug(&theirs.json)), (403, "forbidden"));
    let bobs = stack
        .send("GET", "/payment/webhook-endpoints", Some(&bob_key), None)
        .await;
    assert_eq!(bobs.json["endpoints"], json!([]));
    let all = stack
        .send("GET", "/payment/webhook-endpoints", Some(stack.token()), None)
        .await;
    assert_eq!(all.json["endpoints"].as_array().map(Vec::len), Some(1));
    let anonymous = stack.send("GET", "/payment/webhook-endpoints", None, None).await;
    assert_eq!(anonymous.status, 401);

    for (body, what) in [
        (
            json!({"url": stack.receiver_url("/x"), "events": ["order.shipped"]}),
            "events[0]",
        ),
        (json!({"url": stack.receiver_url("/x"), "events": []}), "events"),
        (json!({"url": 7, "events": ["order.completed"]}), "url"),
    ] {
        let r = stack
            .send("POST", "/payment/webhook-endpoints", Some(&alice_key), Some(&body))
            .await;
        assert_eq!(
            (r.status, slug(&r.json)),
            (400, "invalid-request"),
            "{body}: {}",
            r.json
        );
        assert!(
            r.json["detail"].as_str().unwrap_or_default().contains(what),
            "{what}: {}",
            r.json
        );
    }
    let no_key = stack
        .client()
        .post(stack.url("/payment/webhook-endpoints"))
        .bearer_auth(&alice_key)
        .json(&json!({"url": stack.receiver_url("/x"), "events": ["order.completed"]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(no_key.status(), 400);
    let bad_status = stack
        .send(
            "GET",
            &format!("/payment/webhook-endpoints/{ep}/deliveries?status=lost"),
            Some(&alice_key),
            None,
        )
        .await;
    assert_eq!(bad_status.status, 400, "{}", bad_status.json);

    let deleted = stack.send("DELETE", &at, Some(&alice_key), None).await;
    assert_eq!((deleted.status, &deleted.json["deleted"]), (200, &json!(true)));
    let gone = stack.send("GET", &at, Some(&alice_key), None).await;
    assert_eq!((gone.status, slug(&gone.json)), (404, "webhook-endpoint-not-found"));
    let unknown = stack
        .send("DELETE", "/payment/webhook-endpoints/we_nope", Some(&alice_key), None)
        .await;
    assert_eq!(unknown.status, 404);
}
