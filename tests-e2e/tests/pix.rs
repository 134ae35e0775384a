//! Pix through nginx against the real stack, the provider simulator a process of its own that
//! sends signed webhooks: a paid Pix completes its order and its key then replays 200; an
//! unpaid one expires, releases its units, and a payment after that is refunded; duplicate,
//! re-sent and out-of-order webhooks change nothing twice; forged, unsigned, stale and oversized
//! ones are refused and record nothing; kill -9 between a webhook's 200 and its processing
//! still completes the order. Every test ends with the books balanced against the simulator's
//! ledger and `verify` finding nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::webhooks::Secret;
use tests_e2e::{PIX_WEBHOOK_SECRET, Service, Stack, StackOptions, new_key as key, slug};

async fn stack_with(order_env: &[(&str, &str)], payment_env: &[(&str, &str)]) -> Stack {
    let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Stack::launch(StackOptions {
        order_env: env(order_env),
        payment_env: env(payment_env),
        ..StackOptions::default()
    })
    .await
}

fn pix_body(item: u64) -> Value {
    json!({"itemId": item, "quantity": 2, "paymentMethod": "pix"})
}

/// Polls `GET /order/orders/{id}` until its status is `want`.
async fn order_becomes(stack: &Stack, order_id: &str, want: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
        if order["status"] == want {
            return order;
        }
        assert!(
            started.elapsed() < within,
            "order {order_id} is {} after {within:?}, not {want}: {order}\npayment log:\n{}",
            order["status"],
            stack.logs(Service::Payment)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The order's one charge at payment.
async fn charge_of(stack: &Stack, order_id: &str) -> Value {
    let listed = stack
        .get_json(&format!("/payment/charges?orderId={order_id}"), true)
        .await;
    let charges = listed["charges"].as_array().cloned().unwrap_or_default();
    assert_eq!(charges.len(), 1, "{listed}");
    charges[0].clone()
}

/// Stocks item 1 and starts a Pix checkout of 2 units (900): its order id and its pending
/// charge at payment.
async fn awaiting_checkout(stack: &Stack) -> (String, Value) {
    stack.put_item(1, "Mug", 450, 10).await;
    let (status, _, body) = stack.checkout(&key(), pix_body(1)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "awaiting_payment", "{body}");
    let order_id = body["orderId"].as_str().unwrap_or_default().to_string();
    let charge = charge_of(stack, &order_id).await;
    (order_id, charge)
}

async fn pay_at_provider(stack: &Stack, reference: &str) {
    let resp = stack
        .client()
        .post(stack.direct_url(Service::Pix, &format!("/_sim/pix/{reference}/pay")))
        .send()
        .await
        .expect("pay at the simulator");
    assert_eq!(resp.status(), 200, "pay {reference}");
}

/// A webhook to payment through nginx, signed with `secret` at `ts` (None: unsigned).
async fn send_webhook(
    stack: &Stack,
    provider: &str,
    id: &str,
    ts: i64,
    body: &[u8],
    secret: Option<&str>,
) -> (u16, Value) {
    let mut req = stack
        .client()
        .post(stack.url(&format!("/payment/webhooks/{provider}")))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string());
    if let Some(secret) = secret {
        let secret = Secret::parse(secret).expect("secret");
        req = req.header("webhook-signature", secret.sign(id, ts, body));
    }
    let resp = req.body(body.to_vec()).send().await.expect("POST webhook");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A webhook as the Pix provider signs it, now.
async fn send_signed(stack: &Stack, id: &str, body: &[u8]) -> (u16, Value) {
    send_webhook(stack, "pix", id, now_secs(), body, Some(PIX_WEBHOOK_SECRET)).await
}

fn now_secs() -> i64 {
    (shared::time::now_ms() / 1000) as i64
}

/// The books: payment's pix totals equal the simulator's ledger, and verify finds nothing.
async fn assert_books(stack: &Stack) {
    let ledger = stack.sim_ledger(Service::Pix).await;
    let sum = |rows: &Value, filter: &dyn Fn(&Value) -> bool| -> (u64, u64) {
        let rows: Vec<&Value> = rows
            .as_array()
            .map(|a| a.iter().filter(|r| filter(r)).collect())
            .unwrap_or_default();
        (
            rows.len() as u64,
            rows.iter().map(|r| r["amount"].as_u64().unwrap_or(0)).sum(),
        )
    };
    let charged = sum(&ledger["charges"], &|c: &Value| c["status"] == "succeeded");
    let refunded = sum(&ledger["refunds"], &|_| true);
    let totals = stack.get_json("/payment/totals", true).await;
    let ours = &totals["byGateway"]["pix"]["USD"];
    let pair = |v: &Value| (v["count"].as_u64().unwrap_or(0), v["amount"].as_u64().unwrap_or(0));
    assert_eq!(
        pair(&ours["charged"]),
        charged,
        "charged: ours {totals} / ledger {ledger}"
    );
    assert_eq!(
        pair(&ours["refunded"]),
        refunded,
        "refunded: ours {totals} / ledger {ledger}"
    );
    let report = stack.post_internal("/payment/admin/verify", None, &json!({})).await;
    assert_eq!(report.json["mismatches"], json!([]), "{}", report.json);
}

#[tokio::test]
async fn a_paid_pix_completes_its_order_and_the_key_then_replays_200() {
    let stack = stack_with(&[], &[]).await;
    stack.put_item(1, "Mug", 450, 10).await;
    let k = key();
    let (status, headers, body) = stack.checkout(&k, pix_body(1)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "awaiting_payment");
    let code = body["pix"]["code"].as_str().unwrap_or_default().to_string();
    assert!(!code.is_empty() && body["pix"]["expiresAt"].is_string(), "{body}");
    let order_id = body["orderId"].as_str().unwrap_or_default().to_string();
    assert!(headers.get("location").is_some());
    // The key replays the wait, byte for byte, until the order ends.
    let (again, again_headers, again_body) = stack.checkout(&k, pix_body(1)).await;
    assert_eq!((again, &again_body), (202, &body));
    assert_eq!(
        again_headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
    assert_eq!(order["status"], "awaiting_payment", "{order}");
    assert_eq!(order["pix"]["code"], code.as_str());
    let item = stack.item(1).await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64()),
        (Some(8), Some(2))
    );
    let charge = charge_of(&stack, &order_id).await;
    assert_eq!(
        (charge["status"].as_str(), charge["gateway"].as_str()),
        (Some("pending"), Some("pix"))
    );
    let totals = stack.get_json("/order/totals", true).await;
    assert_eq!(totals["USD"]["awaiting_payment"]["count"], 1, "{totals}");

    pay_at_provider(&stack, charge["gatewayReference"].as_str().unwrap_or_default()).await;
    let done = order_becomes(&stack, &order_id, "completed", Duration::from_secs(15)).await;
    let steps: Vec<String> = done["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        s["name"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        steps.ends_with(&[
            "charge:pending".into(),
            "charge:succeeded".into(),
            "complete:succeeded".into()
        ]),
        "{steps:?}"
    );
    let (final_status, _, final_body) = stack.checkout(&k, pix_body(1)).await;
    assert_eq!(final_status, 200, "{final_body}");
    assert_eq!(final_body["status"], "completed");
    let item = stack.item(1).await;
    assert_eq!((item["reserved"].as_i64(), item["sold"].as_i64()), (Some(0), Some(2)));
    assert_eq!(charge_of(&stack, &order_id).await["status"], "succeeded");
    let totals = stack.get_json("/order/totals", true).await;
    assert_eq!(totals["USD"]["completed"]["amount"], 900, "{totals}");
    assert_eq!(totals["USD"]["awaiting_payment"]["count"], 0, "{totals}");
    // Payment's own replay of the charge, under the key order-service sent it with, still
    // answers what it answered then, pending with its code, though the charge is paid now (on
    // one node that answer is rendered from the charge).
    let charged_again = stack
        .post_internal(
            "/payment/charge",
            Some(&format!("{order_id}:charge")),
            &json!({"orderId": order_id, "amount": 900, "currency": "USD", "customerId": "guest",
                "paymentMethod": "pix", "itemId": 1}),
        )
        .await;
    assert_eq!(
        (charged_again.status, charged_again.replayed()),
        (201, true),
        "{}",
        charged_again.json
    );
    assert_eq!(
        (
            &charged_again.json["chargeId"],
            &charged_again.json["status"],
            &charged_again.json["pix"]["code"]
        ),
        (&charge["chargeId"], &json!("pending"), &charge["pix"]["code"]),
        "{}",
        charged_again.json
    );
    assert_books(&stack).await;
}

#[tokio::test]
async fn an_unpaid_pix_expires_releases_its_units_and_a_payment_after_expiry_is_refunded() {
    let stack = stack_with(&[("PIX_TTL", "2s")], &[]).await;
    stack.put_item(1, "Mug", 450, 10).await;
    let k = key();
    let (status, _, body) = stack.checkout(&k, pix_body(1)).await;
    assert_eq!(status, 202, "{body}");
    let order_id = body["orderId"].as_str().unwrap_or_default().to_string();
    let failed = order_becomes(&stack, &order_id, "failed", Duration::from_secs(15)).await;
    assert!(failed["steps"].to_string().contains("expired"), "{failed}");
    let item = stack.item(1).await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64()),
        (Some(10), Some(0)),
        "{item}"
    );
    let (expired, _, expired_body) = stack.checkout(&k, pix_body(1)).await;
    assert_eq!(expired, 402, "{expired_body}");
    assert_eq!(slug(&expired_body), "payment-declined");
    assert_eq!(expired_body["declineCode"], "pix_expired");
    let charge = charge_of(&stack, &order_id).await;
    assert_eq!(charge["status"], "canceled", "{charge}");

    // The payer pays anyway: the money comes in and goes straight back.
    pay_at_provider(&stack, charge["gatewayReference"].as_str().unwrap_or_default()).await;
    let started = Instant::now();
    while charge_of(&stack, &order_id).await["status"] != "refunded" {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "late payment not refunded:\n{}",
            stack.logs(Service::Payment)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ledger = stack.sim_ledger(Service::Pix).await;
    assert_eq!(ledger["refunds"].as_array().map(Vec::len), Some(1), "{ledger}");
    assert_eq!(
        stack.get_json(&format!("/order/orders/{order_id}"), false).await["status"],
        "failed"
    );
    let item = stack.item(1).await;
    assert_eq!(item["sold"].as_i64(), Some(0), "nothing sold for an expired order");
    assert_books(&stack).await;
}

#[tokio::test]
async fn duplicate_resent_and_out_of_order_webhooks_change_nothing_twice() {
    let stack = stack_with(&[], &[]).await;
    let (order_id, charge) = awaiting_checkout(&stack).await;
    let reference = charge["gatewayReference"].as_str().unwrap_or_default().to_string();
    // A stale "pending" arriving before anything: ignored (charges only move forwards).
    let pending =
        json!({"type": "charge.pending", "data": {"reference": reference, "orderId": order_id, "amount": 900}});
    let pending = pending.to_string().into_bytes();
    let (s, _) = send_signed(&stack, "msg_e2e_pending", &pending).await;
    assert_eq!(s, 200);
    pay_at_provider(&stack, &reference).await;
    order_becomes(&stack, &order_id, "completed", Duration::from_secs(15)).await;
    // The provider sends it again (same webhook-id), and the same event under another id, and
    // the stale "pending" once more, after the success.
    let resend = stack
        .client()
        .post(stack.direct_url(Service::Pix, &format!("/_sim/pix/{reference}/resend")))
        .send()
        .await
        .expect("resend");
    assert_eq!(resend.status(), 202);
    let paid =
        json!({"type": "charge.succeeded", "data": {"reference": reference, "orderId": order_id, "amount": 900}});
    let paid = paid.to_string().into_bytes();
    let (s, b) = send_signed(&stack, "msg_e2e_again", &paid).await;
    assert_eq!((s, b["duplicate"].as_bool()), (200, Some(false)));
    let (s, b) = send_signed(&stack, "msg_e2e_again", &paid).await;
    assert_eq!(
        (s, b["duplicate"].as_bool()),
        (200, Some(true)),
        "the same id is stored once"
    );
    let (s, _) = send_signed(&stack, "msg_e2e_pending2", &pending).await;
    assert_eq!(s, 200);
    // Give the worker time to apply them all, then count: one charge, one success.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = stack
        .get_json(
            &format!(
                "/payment/events?aggregateId={}",
                charge["chargeId"].as_str().unwrap_or("")
            ),
            true,
        )
        .await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, ["charge.pending", "charge.succeeded"], "{events}");
    let order = stack.get_json(&format!("/order/orders/{order_id}"), false).await;
    assert_eq!(order["status"], "completed");
    let item = stack.item(1).await;
    assert_eq!(item["sold"].as_i64(), Some(2), "{item}");
    assert_books(&stack).await;
}

#[tokio::test]
async fn forged_unsigned_stale_and_oversized_webhooks_are_refused_and_record_nothing() {
    let stack = stack_with(&[], &[]).await;
    let body = br#"{"type":"charge.succeeded","data":{"reference":"ch_x","orderId":"ord_x","amount":1}}"#;
    let now = now_secs();
    let other = Secret::generate().expect("random");
    let cases: [(&str, i64, Option<&str>); 3] = [
        ("msg_forged", now, Some(other.as_str())),
        ("msg_unsigned", now, None),
        ("msg_stale", now - 6 * 60, Some(PIX_WEBHOOK_SECRET)),
    ];
    for (id, ts, secret) in cases {
        let (status, problem) = send_webhook(&stack, "pix", id, ts, body, secret).await;
        assert_eq!((status, slug(&problem)), (401, "invalid-signature"), "{id}: {problem}");
    }
    let big = vec![b' '; 20 * 1024];
    let (status, problem) = send_webhook(&stack, "pix", "msg_big", now, &big, Some(PIX_WEBHOOK_SECRET)).await;
    assert_eq!((status, slug(&problem)), (413, "payload-too-large"));
    for provider in ["nope", "card-a"] {
        let (status, problem) = send_webhook(&stack, provider, "msg_p", now, body, Some(PIX_WEBHOOK_SECRET)).await;
        assert_eq!((status, slug(&problem)), (404, "gateway-not-found"), "{provider}");
    }
    // None of them was recorded: their ids are new to a valid webhook.
    for (id, _, _) in cases {
        let (status, reply) = send_signed(&stack, id, body).await;
        assert_eq!((status, reply["duplicate"].as_bool()), (200, Some(false)), "{id}");
    }
    let metrics = stack
        .client()
        .get(stack.url("/payment/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    for outcome in [
        "invalid_signature",
        "stale",
        "malformed",
        "too_large",
        "unknown_provider",
    ] {
        assert!(metrics.contains(&format!("outcome=\"{outcome}\"")), "{outcome} counted");
    }
}

#[tokio::test]
async fn kill_9_of_payment_between_a_webhooks_200_and_its_processing_still_completes_the_order() {
    // The worker polls once an hour: the webhook is stored and answered, never processed by
    // this process, which is then killed; its successor processes it.
    let mut stack = stack_with(&[], &[("WEBHOOK_POLL", "1h")]).await;
    let (order_id, charge) = awaiting_checkout(&stack).await;
    pay_at_provider(&stack, charge["gatewayReference"].as_str().unwrap_or_default()).await;
    let started = Instant::now();
    loop {
        let hooks = stack.get_json_direct(Service::Pix, "/_sim/webhooks").await;
        if hooks["acknowledged"].as_u64() == Some(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "webhook never acknowledged: {hooks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.get_json(&format!("/order/orders/{order_id}"), false).await["status"],
        "awaiting_payment",
        "stored, not processed"
    );
    stack.kill(Service::Payment).await;
    stack.set_env(Service::Payment, "WEBHOOK_POLL", "100ms");
    stack.start(Service::Payment).await;
    order_becomes(&stack, &order_id, "completed", Duration::from_secs(15)).await;
    assert_books(&stack).await;
}

#[tokio::test]
async fn kill_9_of_order_service_while_a_pix_is_paid_still_completes_the_order() {
    let mut stack = stack_with(&[], &[]).await;
    let (order_id, charge) = awaiting_checkout(&stack).await;
    stack.kill(Service::Order).await;
    pay_at_provider(&stack, charge["gatewayReference"].as_str().unwrap_or_default()).await;
    // Payment applies it and cannot wake the order: it keeps the webhook and tries again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(charge_of(&stack, &order_id).await["status"], "succeeded");
    stack.start(Service::Order).await;
    order_becomes(&stack, &order_id, "completed", Duration::from_secs(15)).await;
    let item = stack.item(1).await;
    assert_eq!(item["sold"].as_i64(), Some(2), "{item}");
    assert_books(&stack).await;
}
