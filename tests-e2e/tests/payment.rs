//! The payment service's contract through nginx, with the internal token: charges over the
//! simulated gateway, refunds, their idempotency, the reads and the books.

use std::time::Duration;

use serde_json::{Value, json};
use shared::idempotency::{Begin, IdempotencyStore, KeyRef};
use tests_e2e::metrics::{moved, scrape};
use tests_e2e::{Reply, Service, Stack, StackOptions, new_key as key, slug};

async fn stack() -> Stack {
    Stack::launch(StackOptions::default()).await
}

/// A request that must be refused: what it is, path, Idempotency-Key, raw body, status, slug.
type BadPost = (
    &'static str,
    &'static str,
    Option<&'static str>,
    String,
    u16,
    &'static str,
);

fn charge_body(order_id: &str, amount: u64, currency: &str, method: &str) -> Value {
    json!({"orderId": order_id, "amount": amount, "currency": currency, "customerId": "cus_1", "paymentMethod": method})
}

async fn charge(stack: &Stack, key: &str, body: &Value) -> Reply {
    stack.post_internal("/payment/charge", Some(key), body).await
}

/// Charges with pm_card_visa and asserts 201; returns the charge id.
async fn charged(stack: &Stack, order_id: &str, amount: u64, currency: &str) -> String {
    let r = charge(stack, &key(), &charge_body(order_id, amount, currency, "pm_card_visa")).await;
    assert_eq!(r.status, 201, "charge {amount} {currency} for {order_id}: {}", r.json);
    r.json["chargeId"].as_str().expect("chargeId").to_string()
}

/// Charges with pm_card_chargeDeclined and asserts 402; returns the declined charge's id.
async fn declined(stack: &Stack, order_id: &str, amount: u64) -> String {
    let r = charge(
        stack,
        &key(),
        &charge_body(order_id, amount, "USD", "pm_card_chargeDeclined"),
    )
    .await;
    assert_eq!(r.status, 402, "charge {amount} for {order_id}: {}", r.json);
    r.json["chargeId"].as_str().expect("chargeId").to_string()
}

async fn refund(stack: &Stack, key: &str, charge_id: &str) -> Reply {
    stack
        .post_internal("/payment/refund", Some(key), &json!({"chargeId": charge_id}))
        .await
}

async fn get(stack: &Stack, path: &str) -> Reply {
    let req = stack.client().get(stack.url(path)).bearer_auth(stack.token());
    Reply::from(req.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))).await
}

/// `(count, amount)` of one tally in `GET /payment/totals`; an absent entry is zero.
async fn tally(stack: &Stack, currency: &str, kind: &str) -> (i64, i64) {
    let totals = stack.get_json("/payment/totals", true).await;
    let t = &totals[currency][kind];
    (t["count"].as_i64().unwrap_or(0), t["amount"].as_i64().unwrap_or(0))
}

#[tokio::test]
async fn charging_pm_card_visa_is_201_with_the_charge() {
    let stack = stack().await;

    let r = charge(&stack, &key(), &charge_body("ord_1", 2500, "USD", "pm_card_visa")).await;

    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.content_type(), "application/json");
    assert!(!r.replayed());
    let charge_id = r.json["chargeId"].as_str().expect("chargeId");
    assert!(charge_id.starts_with("ch_") && charge_id.len() > 3, "{charge_id}");
    assert_eq!(
        r.json,
        json!({"chargeId": charge_id, "status": "succeeded", "amount": 2500, "currency": "USD", "orderId": "ord_1"})
    );
    let stored = get(&stack, &format!("/payment/charges/{charge_id}")).await;
    assert_eq!(stored.status, 200, "{}", stored.json);
    assert_eq!(stored.json["chargeId"], charge_id);
    assert_eq!(stored.json["status"], "succeeded");
    assert_eq!(stored.json["amount"], 2500);
    assert_eq!(stored.json["currency"], "USD");
    assert_eq!(stored.json["orderId"], "ord_1");
    assert_eq!(stored.json["refundId"], Value::Null, "not refunded: {}", stored.json);
    assert_eq!(tally(&stack, "USD", "charged").await, (1, 2500));
}

#[tokio::test]
async fn a_charge_replayed_with_its_key_is_byte_identical_and_charges_once() {
    let stack = stack().await;
    let k = key();
    let url = stack.url("/payment/charge");
    let send = |body: &'static str| {
        stack
            .client()
            .post(&url)
            .bearer_auth(stack.token())
            .header("content-type", "application/json")
            .header("idempotency-key", &k)
            .body(body)
            .send()
    };

    let first = Reply::from(
        send(r#"{"orderId":"ord_2","amount":999,"currency":"USD","customerId":"c","paymentMethod":"pm_card_visa"}"#)
            .await
            .expect("first"),
    )
    .await;
    // The same payload with another key order and spacing is the same request.
    let second = Reply::from(
        send(r#"{ "paymentMethod": "pm_card_visa", "customerId": "c", "currency": "USD", "amount": 999, "orderId": "ord_2" }"#)
            .await
            .expect("second"),
    )
    .await;

    assert_eq!(first.status, 201, "{}", first.json);
    assert!(!first.replayed());
    assert_eq!(second.status, 201, "{}", second.json);
    assert!(second.replayed(), "a replay carries Idempotent-Replayed: true");
    assert_eq!(second.bytes, first.bytes, "a replay is byte for byte the first answer");
    assert_eq!(tally(&stack, "USD", "charged").await, (1, 999), "charged once");
    let listed = stack.get_json("/payment/charges?orderId=ord_2", true).await;
    assert_eq!(listed["charges"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn a_charge_stores_its_answer_with_the_charge_and_replays_it_during_and_after_the_keys_lease() {
    let stack = Stack::launch(StackOptions {
        payment_env: vec![("IDEMPOTENCY_LEASE".into(), "1s".into())],
        ..StackOptions::default()
    })
    .await;
    let k = key();
    let body = charge_body("ord_lease", 700, "USD", "pm_card_visa");

    let first = charge(&stack, &k, &body).await;

    assert_eq!(first.status, 201, "{}", first.json);
    // The charge's script stored the answer, so the key needed no write of its own: on one node
    // in the key's record, settling it; on a cluster (the record another slot) beside the
    // charge, the record left running until its lease runs out.
    let record = format!("idem:{{payment:charge:{k}}}");
    let state = stack.record_field(&record, "state").await;
    let settled_by_the_charge = if stack.on_cluster() { "running" } else { "done" };
    assert_eq!(state.as_deref(), Some(settled_by_the_charge));
    // On one node the record keeps no body: it names the charge, which its replay is rendered
    // from (below, byte for byte the first answer).
    let stored_body = stack.record_field(&record, "body").await;
    assert_eq!(stored_body, None);
    let during = charge(&stack, &k, &body).await;
    assert_eq!((during.status, during.replayed()), (201, true), "{}", during.json);
    assert_eq!(during.bytes, first.bytes);
    // Once the lease has run out, the retry takes the key over and still finds the answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = charge(&stack, &k, &body).await;
    assert_eq!((after.status, after.replayed()), (201, true), "{}", after.json);
    assert_eq!(after.bytes, first.bytes);
    assert_eq!(tally(&stack, "USD", "charged").await, (1, 700), "charged once");
}

#[tokio::test]
async fn an_answer_stored_beside_an_effect_is_replayed_only_to_the_payload_it_answered() {
    let stack = stack().await;
    let pool = stack.redis_pool();
    let idempotency = IdempotencyStore::new(pool.clone(), Duration::from_secs(3600), Duration::from_secs(60));
    let k = key();
    let answer_at = format!("e2e:{{{k}}}:answer");
    let request_b = KeyRef::new("e2e:guard", &k, "fp-b".into()).with_answer_at(answer_at.clone());
    let begin = idempotency.begin(&request_b, "t1").await.expect("begin");
    assert!(matches!(begin, Begin::Execute { resumed: false, .. }), "{begin:?}");
    // What an earlier request with the same key and another payload left there: its answer
    // outlived its key's record by the time between the two writes.
    let mut conn = pool.get().await.expect("redis");
    let store = |fp: &'static str, body: &'static str| {
        redis::cmd("HSET")
            .arg(&answer_at)
            .arg(&["fp", fp, "status", "201", "ctype", "application/json", "body", body])
            .to_owned()
    };
    let _: i64 = store("fp-a", r#"{"a":1}"#).query_async(&mut conn).await.expect("HSET");

    let busy = idempotency.begin(&request_b, "t2").await.expect("begin");

    assert!(
        matches!(busy, Begin::InUse { .. }),
        "another payload's answer is not replayed: {busy:?}"
    );
    let _: i64 = store("fp-b", r#"{"b":1}"#).query_async(&mut conn).await.expect("HSET");
    let answered = idempotency.begin(&request_b, "t3").await.expect("begin");
    assert!(
        matches!(&answered, Begin::Replay(r) if r.status == 201 && r.body == br#"{"b":1}"#),
        "{answered:?}"
    );
}

#[tokio::test]
async fn the_same_key_with_a_different_amount_is_422_idempotency_key_reused() {
    let stack = stack().await;
    let k = key();
    assert_eq!(
        charge(&stack, &k, &charge_body("ord_3", 1000, "USD", "pm_card_visa"))
            .await
            .status,
        201
    );

    let r = charge(&stack, &k, &charge_body("ord_3", 1001, "USD", "pm_card_visa")).await;

    assert_eq!(r.status, 422, "{}", r.json);
    assert_eq!(r.content_type(), "application/problem+json");
    assert_eq!(slug(&r.json), "idempotency-key-reused");
    assert_eq!(
        tally(&stack, "USD", "charged").await,
        (1, 1000),
        "the second request charged nothing"
    );
    // The first answer is still the key's answer.
    let again = charge(&stack, &k, &charge_body("ord_3", 1000, "USD", "pm_card_visa")).await;
    assert_eq!((again.status, again.replayed()), (201, true), "{}", again.json);
}

#[tokio::test]
async fn declined_cards_are_402_payment_declined_with_their_decline_code() {
    let stack = stack().await;
    for (method, code) in [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ] {
        let k = key();
        let order_id = format!("ord_{code}");

        let r = charge(&stack, &k, &charge_body(&order_id, 1500, "USD", method)).await;

        assert_eq!(r.status, 402, "{method}: {}", r.json);
        assert_eq!(r.content_type(), "application/problem+json", "{method}");
        assert_eq!(slug(&r.json), "payment-declined", "{method}");
        assert_eq!(r.json["status"], 402);
        assert_eq!(r.json["declineCode"], code, "{method}: {}", r.json);
        assert!(
            r.json["detail"].as_str().unwrap_or("").contains(code),
            "{method}: the detail names the code"
        );
        // A decline is the key's definitive, stored answer.
        let again = charge(&stack, &k, &charge_body(&order_id, 1500, "USD", method)).await;
        assert_eq!(
            (again.status, again.replayed()),
            (402, true),
            "{method}: {}",
            again.json
        );
        assert_eq!(again.bytes, r.bytes, "{method}");
    }
    // Declines moved no money.
    assert_eq!(tally(&stack, "USD", "charged").await, (0, 0));
}

#[tokio::test]
async fn an_unknown_payment_method_is_400_invalid_request_and_leaves_the_key_free() {
    let stack = stack().await;
    let k = key();

    let r = charge(&stack, &k, &charge_body("ord_4", 1500, "USD", "pm_card_bitcoin")).await;

    assert_eq!(r.status, 400, "{}", r.json);
    assert_eq!(r.content_type(), "application/problem+json");
    assert_eq!(slug(&r.json), "invalid-request");
    assert!(
        r.json["detail"].as_str().unwrap_or("").contains("pm_card_visa"),
        "the detail names the accepted ones"
    );
    assert_eq!(tally(&stack, "USD", "charged").await, (0, 0));
    let corrected = charge(&stack, &k, &charge_body("ord_4", 1500, "USD", "pm_card_visa")).await;
    assert_eq!(
        (corrected.status, corrected.replayed()),
        (201, false),
        "{}",
        corrected.json
    );
}

#[tokio::test]
async fn a_refund_is_200_with_the_amount_and_the_same_200_again() {
    let stack = stack().await;
    let charge_id = charged(&stack, "ord_5", 4200, "USD").await;
    let k = key();

    let first = refund(&stack, &k, &charge_id).await;

    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.content_type(), "application/json");
    let refund_id = first.json["refundId"].as_str().expect("refundId").to_string();
    assert!(!refund_id.is_empty());
    assert_eq!(
        first.json,
        json!({"refundId": refund_id, "chargeId": charge_id, "status": "refunded", "amount": 4200})
    );
    let same_key = refund(&stack, &k, &charge_id).await;
    assert_eq!((same_key.status, same_key.replayed()), (200, true), "{}", same_key.json);
    assert_eq!(same_key.bytes, first.bytes);
    let new_key = refund(&stack, &key(), &charge_id).await;
    assert_eq!(new_key.status, 200, "{}", new_key.json);
    assert_eq!(new_key.json, first.json, "refunding again answers the same refund");
    assert_eq!(tally(&stack, "USD", "refunded").await, (1, 4200), "refunded once");
}

#[tokio::test]
async fn a_charge_is_refunded_through_the_gateway_once_and_a_declined_one_never() {
    let stack = stack().await;
    let before = scrape(&stack, "/payment/metrics").await;
    let charge_id = charged(&stack, "ord_g", 700, "USD").await;
    let declined_id = declined(&stack, "ord_h", 800).await;
    let k = key();

    let first = refund(&stack, &k, &charge_id).await;
    let replayed = refund(&stack, &k, &charge_id).await;
    let again = refund(&stack, &key(), &charge_id).await;
    let refused = refund(&stack, &key(), &declined_id).await;

    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!((replayed.status, replayed.replayed()), (200, true), "{}", replayed.json);
    assert_eq!(
        (again.status, &again.json),
        (200, &first.json),
        "refunded before: the same refund"
    );
    assert_eq!(
        (refused.status, slug(&refused.json)),
        (409, "charge-not-refundable"),
        "{}",
        refused.json
    );
    let after = scrape(&stack, "/payment/metrics").await;
    let gateway = |operation, outcome| {
        moved(
            &after,
            &before,
            "gateway_requests_total",
            &[("gateway", "card-a"), ("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(gateway("charge", "succeeded"), 1.0);
    assert_eq!(gateway("charge", "declined"), 1.0);
    assert_eq!(
        gateway("refund", "refunded"),
        1.0,
        "one refund sent, for the succeeded charge only"
    );
    assert_eq!(tally(&stack, "USD", "refunded").await, (1, 700));
    // The provider saw the same: one refund of the whole charge it took.
    let ledger = stack.sim_ledger(Service::CardA).await;
    let charge = stack.get_json(&format!("/payment/charges/{charge_id}"), true).await;
    assert_eq!(charge["gateway"], "card-a");
    let refunds = ledger["refunds"].as_array().cloned().unwrap_or_default();
    assert_eq!(refunds.len(), 1, "{ledger}");
    assert_eq!(refunds[0]["chargeReference"], charge["gatewayReference"]);
    assert_eq!(refunds[0]["amount"], 700);
}

/// The key of the totals that count a charge: its shard's, named by the charge id's two hex
/// digits after `ch_`.
fn totals_of(charge_id: &str) -> String {
    let shard = u16::from_str_radix(&charge_id[3..5], 16).expect("a charge id's shard");
    format!("payment:{{pay:{shard}}}:totals")
}

/// Puts a string where the charge's totals were (set aside beside them, in their slot), or the
/// totals back. A refund's script reads the totals before its first write, so it then fails
/// after the gateway was asked, having written nothing.
async fn break_totals(stack: &Stack, charge_id: &str, broken: bool) {
    let totals = totals_of(charge_id);
    let aside = format!("{totals}:aside");
    let pool = stack.redis_pool();
    let mut conn = pool.get().await.expect("redis");
    let step = if broken {
        redis::pipe()
            .cmd("RENAME")
            .arg(&totals)
            .arg(&aside)
            .cmd("SET")
            .arg(&totals)
            .arg("not a hash")
            .to_owned()
    } else {
        redis::pipe()
            .cmd("DEL")
            .arg(&totals)
            .cmd("RENAME")
            .arg(&aside)
            .arg(&totals)
            .to_owned()
    };
    let _: () = step.query_async(&mut conn).await.expect("totals set aside or back");
}

#[tokio::test]
async fn a_refund_whose_record_fails_after_the_gateway_is_asked_again_under_the_same_key_and_recorded_once() {
    let stack = stack().await;
    let charge_id = charged(&stack, "ord_r", 900, "USD").await;
    let before = scrape(&stack, "/payment/metrics").await;
    let k = key();

    break_totals(&stack, &charge_id, true).await;
    let failed = refund(&stack, &k, &charge_id).await;
    break_totals(&stack, &charge_id, false).await;
    let between = get(&stack, &format!("/payment/charges/{charge_id}")).await;
    let retried = refund(&stack, &k, &charge_id).await;

    assert_eq!(failed.status, 503, "{}", failed.json);
    assert_eq!(
        (between.json["status"].as_str(), &between.json["refundId"]),
        (Some("succeeded"), &Value::Null),
        "nothing recorded: {}",
        between.json
    );
    assert_eq!((retried.status, retried.replayed()), (200, false), "{}", retried.json);
    assert_eq!(retried.json["amount"], 900);
    let after = scrape(&stack, "/payment/metrics").await;
    let sent = moved(
        &after,
        &before,
        "gateway_requests_total",
        &[("gateway", "card-a"), ("operation", "refund"), ("outcome", "refunded")],
    );
    assert_eq!(sent, 2.0, "the provider was asked again");
    // Both times under the refund's provider key: the provider refunded once.
    let ledger = stack.sim_ledger(Service::CardA).await;
    assert_eq!(
        ledger["refunds"].as_array().map(Vec::len),
        Some(1),
        "one refund at the provider: {ledger}"
    );
    assert_eq!(tally(&stack, "USD", "refunded").await, (1, 900), "recorded once");
}

#[tokio::test]
async fn an_unknown_charge_is_404_charge_not_found() {
    let stack = stack().await;
    let well_formed_but_unknown = format!("ch_00{}", &uuid::Uuid::new_v4().simple().to_string()[2..]);

    for charge_id in [well_formed_but_unknown.as_str(), "ch_nope", "nonsense"] {
        let r = refund(&stack, &key(), charge_id).await;
        assert_eq!(r.status, 404, "refund {charge_id}: {}", r.json);
        assert_eq!(r.content_type(), "application/problem+json");
        assert_eq!(slug(&r.json), "charge-not-found", "refund {charge_id}");
        let r = get(&stack, &format!("/payment/charges/{charge_id}")).await;
        assert_eq!(r.status, 404, "GET {charge_id}: {}", r.json);
        assert_eq!(slug(&r.json), "charge-not-found", "GET {charge_id}");
    }
    assert_eq!(tally(&stack, "USD", "refunded").await, (0, 0));
}

#[tokio::test]
async fn a_refunded_charge_shows_its_refund_and_the_order_lists_charge_and_refund() {
    let stack = stack().await;
    let charge_id = charged(&stack, "ord_6", 1250, "USD").await;
    let other = charged(&stack, "ord_7", 700, "USD").await;
    let refund_id = refund(&stack, &key(), &charge_id).await.json["refundId"]
        .as_str()
        .expect("refundId")
        .to_string();

    let shown = get(&stack, &format!("/payment/charges/{charge_id}")).await;

    assert_eq!(shown.status, 200, "{}", shown.json);
    assert_eq!(shown.json["chargeId"], charge_id);
    assert_eq!(shown.json["status"], "refunded");
    assert_eq!(shown.json["amount"], 1250);
    assert_eq!(shown.json["currency"], "USD");
    assert_eq!(shown.json["orderId"], "ord_6");
    assert_eq!(shown.json["refundId"], refund_id);

    let listed = stack.get_json("/payment/charges?orderId=ord_6", true).await;
    assert_eq!(listed["orderId"], "ord_6", "{listed}");
    let charges = listed["charges"].as_array().expect("charges");
    assert_eq!(charges.len(), 1, "only this order's charges: {listed}");
    assert_eq!(
        charges[0], shown.json,
        "the listing shows the charge as it is, refund included"
    );
    assert!(
        !listed.to_string().contains(&other),
        "another order's charge is not listed"
    );

    let none = stack.get_json("/payment/charges?orderId=ord_unknown", true).await;
    assert_eq!(none["charges"], json!([]), "{none}");
    let missing = get(&stack, "/payment/charges").await;
    assert_eq!(
        (missing.status, slug(&missing.json)),
        (400, "invalid-request"),
        "{}",
        missing.json
    );
}

#[tokio::test]
async fn totals_count_charged_and_refunded_per_currency() {
    let stack = stack().await;
    let a = charged(&stack, "ord_a", 1000, "USD").await;
    charged(&stack, "ord_b", 250, "USD").await;
    let eur = charged(&stack, "ord_c", 500, "EUR").await;
    declined(&stack, "ord_d", 9999).await;
    assert_eq!(tally(&stack, "USD", "charged").await, (2, 1250));
    assert_eq!(tally(&stack, "USD", "refunded").await, (0, 0));
    assert_eq!(tally(&stack, "EUR", "charged").await, (1, 500));

    assert_eq!(refund(&stack, &key(), &a).await.status, 200);
    assert_eq!(refund(&stack, &key(), &a).await.status, 200);
    assert_eq!(refund(&stack, &key(), &eur).await.status, 200);

    let totals = stack.get_json("/payment/totals", true).await;
    assert_eq!(
        totals,
        json!({
            "EUR": {"charged": {"count": 1, "amount": 500}, "refunded": {"count": 1, "amount": 500}},
            "USD": {"charged": {"count": 2, "amount": 1250}, "refunded": {"count": 1, "amount": 1000}},
            "byGateway": {"card-a": {
                "EUR": {"charged": {"count": 1, "amount": 500}, "refunded": {"count": 1, "amount": 500}},
                "USD": {"charged": {"count": 2, "amount": 1250}, "refunded": {"count": 1, "amount": 1000}},
            }},
        })
    );
}

#[tokio::test]
async fn bad_charge_and_refund_requests_get_a_problem_that_says_what_was_wrong() {
    let stack = stack().await;
    let valid = r#"{"orderId":"ord_8","amount":100,"currency":"USD","customerId":"c","paymentMethod":"pm_card_visa"}"#;
    let with = |field: &str, value: &str| {
        let mut v: Value = serde_json::from_str(valid).expect("valid json");
        v[field] = serde_json::from_str(value).expect("a JSON value");
        v.to_string()
    };
    let cases: Vec<BadPost> = vec![
        (
            "missing key",
            "/payment/charge",
            None,
            valid.into(),
            400,
            "idempotency-key-missing",
        ),
        (
            "refund without a key",
            "/payment/refund",
            None,
            r#"{"chargeId":"ch_x"}"#.into(),
            400,
            "idempotency-key-missing",
        ),
        (
            "key with a space",
            "/payment/charge",
            Some("a b"),
            valid.into(),
            400,
            "idempotency-key-invalid",
        ),
        (
            "float amount",
            "/payment/charge",
            Some("k1"),
            with("amount", "12.5"),
            400,
            "invalid-request",
        ),
        (
            "integral float amount",
            "/payment/charge",
            Some("k2"),
            with("amount", "100.0"),
            400,
            "invalid-request",
        ),
        (
            "negative amount",
            "/payment/charge",
            Some("k3"),
            with("amount", "-100"),
            400,
            "invalid-request",
        ),
        (
            "zero amount",
            "/payment/charge",
            Some("k4"),
            with("amount", "0"),
            400,
            "invalid-request",
        ),
        (
            "amount as a string",
            "/payment/charge",
            Some("k5"),
            with("amount", r#""100""#),
            400,
            "invalid-request",
        ),
        (
            "lower-case currency",
            "/payment/charge",
            Some("k6"),
            with("currency", r#""usd""#),
            400,
            "invalid-request",
        ),
        (
            "two-letter currency",
            "/payment/charge",
            Some("k7"),
            with("currency", r#""US""#),
            400,
            "invalid-request",
        ),
        (
            "currency name",
            "/payment/charge",
            Some("k8"),
            with("currency", r#""DOLLAR""#),
            400,
            "invalid-request",
        ),
        (
            "unknown field",
            "/payment/charge",
            Some("k9"),
            with("tip", "1"),
            400,
            "invalid-request",
        ),
        (
            "missing field",
            "/payment/charge",
            Some("k10"),
            r#"{"orderId":"o","amount":1,"currency":"USD"}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "unsafe orderId",
            "/payment/charge",
            Some("k11"),
            with("orderId", r#""ord}1""#),
            400,
            "invalid-request",
        ),
        (
            "unknown refund field",
            "/payment/refund",
            Some("k12"),
            r#"{"chargeId":"ch_x","currency":"USD"}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "malformed JSON",
            "/payment/charge",
            Some("k13"),
            r#"{"orderId":"#.into(),
            400,
            "invalid-request",
        ),
        (
            "oversized body",
            "/payment/charge",
            Some("k14"),
            with("customerId", &format!(r#""{}""#, "x".repeat(20_000))),
            413,
            "payload-too-large",
        ),
    ];
    for (what, path, key, body, want_status, want_slug) in cases {
        let mut req = stack
            .client()
            .post(stack.url(path))
            .bearer_auth(stack.token())
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let r = Reply::from(req.send().await.expect(what)).await;
        assert_eq!(r.status, want_status, "{what}: {}", r.json);
        assert_eq!(r.content_type(), "application/problem+json", "{what}");
        assert_eq!(slug(&r.json), want_slug, "{what}: {}", r.json);
        assert!(
            !r.json["detail"].as_str().unwrap_or("").is_empty(),
            "{what}: the detail must say what was wrong"
        );
    }
    // Nothing was charged, and a key refused for validation is free for the corrected request.
    assert_eq!(tally(&stack, "USD", "charged").await, (0, 0));
    let corrected = charge(&stack, "k1", &serde_json::from_str(valid).expect("valid json")).await;
    assert_eq!(
        (corrected.status, corrected.replayed()),
        (201, false),
        "{}",
        corrected.json
    );
}
