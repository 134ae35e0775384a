//! Accounts, API keys, item ownership and marketplace splits through nginx against the real
//! stack: who may do what (401/403/404/400), one active split with its history, concurrent
//! checkouts whose parts always equal the recipients' balances, refunds that reverse exactly,
//! and `verify` rebuilding the recipients' balances from the events.

use serde_json::{Value, json};
use tests_e2e::{Reply, Stack, StackOptions, new_key as key, slug};

async fn stack() -> Stack {
    Stack::launch(StackOptions::default()).await
}

async fn put_item(stack: &Stack, bearer: &str, id: u64, price: u64, owner: Option<&str>) -> Reply {
    let mut body = json!({"name": format!("Item {id}"), "price": price, "currency": "USD", "available": 1000});
    if let Some(owner) = owner {
        body["ownerId"] = json!(owner);
    }
    let method = reqwest::Method::PUT;
    let resp = stack
        .client()
        .request(method, stack.url(&format!("/stock/items/{id}")))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("PUT item");
    Reply::from(resp).await
}

fn rule(recipient: &str, percentage: Value) -> Value {
    json!({"recipientId": recipient, "percentage": percentage, "payoutMethod": "pix", "accountInfo": {"pixKey": format!("{recipient}@example.com")}})
}

async fn create_split(stack: &Stack, bearer: &str, item: u64, rules: Vec<Value>) -> Reply {
    stack
        .send(
            "POST",
            "/payment/splits",
            Some(bearer),
            Some(&json!({"itemId": item, "rules": rules})),
        )
        .await
}

async fn balance(stack: &Stack, recipient: &str) -> Value {
    stack
        .get_json(&format!("/payment/recipients/{recipient}/balance"), true)
        .await["balances"]["USD"]
        .clone()
}

async fn card_checkout(stack: &Stack, item: u64) -> Value {
    let (status, _, body) = stack
        .checkout(
            &key(),
            json!({"itemId": item, "quantity": 1, "customerId": "c1", "paymentMethod": "pm_card_visa"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn charge_of(stack: &Stack, order_id: &str) -> Value {
    let charges = stack
        .get_json(&format!("/payment/charges?orderId={order_id}"), true)
        .await;
    charges["charges"][0].clone()
}

async fn assert_verified(stack: &Stack) {
    let r = stack
        .send("POST", "/payment/admin/verify", Some(stack.token()), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["mismatches"], json!([]), "{}", r.json);
}

/// DELETE of `account`'s API key `key_id`, asked with `bearer`.
async fn revoke_key(stack: &Stack, account: &str, key_id: &str, bearer: &str) -> Reply {
    let path = format!("/payment/accounts/{account}/api-keys/{key_id}");
    stack.send("DELETE", &path, Some(bearer), None).await
}

#[tokio::test]
async fn api_keys_identify_accounts_until_revoked_and_items_obey_their_owner() {
    let stack = stack().await;
    let (alice, alice_key) = stack.account("Alice").await;
    let (_, bob_key) = stack.account("Bob").await;

    // Creating accounts is the platform's; a replay does not show the key again.
    let no_auth = stack
        .send("POST", "/payment/accounts", None, Some(&json!({"name": "x"})))
        .await;
    assert_eq!((no_auth.status, slug(&no_auth.json)), (401, "unauthorized"));
    let by_account = stack
        .send(
            "POST",
            "/payment/accounts",
            Some(&alice_key),
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_eq!((by_account.status, slug(&by_account.json)), (403, "forbidden"));
    let k = key();
    let first = stack
        .post_internal("/payment/accounts", Some(&k), &json!({"name": "Carol"}))
        .await;
    let again = stack
        .post_internal("/payment/accounts", Some(&k), &json!({"name": "Carol"}))
        .await;
    assert_eq!((first.status, again.status), (201, 201));
    assert!(again.replayed());
    assert_eq!(again.json["accountId"], first.json["accountId"]);
    assert_eq!(again.json["apiKey"], Value::Null, "shown once: {}", again.json);

    // Alice's item: hers to change, not Bob's; the platform may change any.
    let created = put_item(&stack, &alice_key, 501, 1000, None).await;
    assert_eq!(created.status, 200, "{}", created.json);
    assert_eq!(stack.item(501).await["ownerId"], json!(alice));
    let by_bob = put_item(&stack, &bob_key, 501, 1, None).await;
    assert_eq!((by_bob.status, slug(&by_bob.json)), (403, "forbidden"));
    assert_eq!(stack.item(501).await["price"], json!(1000), "unchanged");
    let naming_other = put_item(&stack, &bob_key, 502, 1, Some(&alice)).await;
    assert_eq!(naming_other.status, 403, "{}", naming_other.json);
    let unknown_owner = put_item(
        &stack,
        stack.token(),
        503,
        1,
        Some("acct_00000000000000000000000000000000"),
    )
    .await;
    assert_eq!(
        (unknown_owner.status, slug(&unknown_owner.json)),
        (404, "account-not-found"),
        "{}",
        unknown_owner.json
    );
    let bad_key = put_item(&stack, "sk_test_nothing", 501, 1, None).await;
    assert_eq!((bad_key.status, slug(&bad_key.json)), (401, "unauthorized"));

    // A second key, then the first revoked: refused at once, the second still works.
    let issued = stack
        .send(
            "POST",
            &format!("/payment/accounts/{alice}/api-keys"),
            Some(&alice_key),
            Some(&json!({})),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.json);
    let second = issued.json["apiKey"].as_str().unwrap_or_default().to_string();
    let view = stack
        .send("GET", &format!("/payment/accounts/{alice}"), Some(&second), None)
        .await;
    assert_eq!(view.json["keyIds"].as_array().map(Vec::len), Some(2), "{}", view.json);
    let first_id = view.json["keyIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|k| Some(*k) != issued.json["keyId"].as_str())
        .unwrap_or_default()
        .to_string();
    let by_bob = revoke_key(&stack, &alice, &first_id, &bob_key).await;
    assert_eq!(by_bob.status, 403, "{}", by_bob.json);
    let revoked = revoke_key(&stack, &alice, &first_id, &second).await;
    assert_eq!(revoked.status, 200, "{}", revoked.json);
    assert_eq!(
        put_item(&stack, &alice_key, 501, 1000, None).await.status,
        401,
        "revoked"
    );
    assert_eq!(put_item(&stack, &second, 501, 1200, None).await.status, 200);
    let twice = revoke_key(&stack, &alice, &first_id, &second).await;
    assert_eq!((twice.status, slug(&twice.json)), (404, "api-key-not-found"));
    let nobody = stack
        .send("GET", "/payment/accounts/acct_nope", Some(stack.token()), None)
        .await;
    assert_eq!((nobody.status, slug(&nobody.json)), (404, "account-not-found"));
}

#[tokio::test]
async fn only_the_owner_splits_an_item_one_split_is_active_and_bad_rules_name_the_rule() {
    let stack = stack().await;
    let (_, seller_key) = stack.account("Seller").await;
    let (_, other_key) = stack.account("Other").await;
    assert_eq!(put_item(&stack, &seller_key, 601, 1000, None).await.status, 200);
    let half = || vec![rule("seller", json!(50)), rule("platform", json!(50))];

    let no_auth = stack
        .send(
            "POST",
            "/payment/splits",
            None,
            Some(&json!({"itemId": 601, "rules": half()})),
        )
        .await;
    assert_eq!(no_auth.status, 401);
    let not_owner = create_split(&stack, &other_key, 601, half()).await;
    assert_eq!((not_owner.status, slug(&not_owner.json)), (403, "forbidden"));
    let unknown = create_split(&stack, &seller_key, 999_999, half()).await;
    assert_eq!((unknown.status, slug(&unknown.json)), (404, "item-not-found"));
    for (rules, says) in [
        (vec![rule("a", json!(33.33)), rule("b", json!(66.66))], "99.99"),
        (vec![rule("a", json!(50)), rule("a", json!(50))], "rules[1]"),
        (vec![rule("a", json!(33.333)), rule("b", json!(66.667))], "rules[0]"),
        (vec![rule("a", json!(0)), rule("b", json!(100))], "rules[0]"),
        (
            (0..21).map(|i| rule(&format!("r{i}"), json!(1))).collect(),
            "at most 20",
        ),
        (vec![], "at least 1"),
        (
            vec![json!({"recipientId": "a", "percentage": 100, "payoutMethod": "bank", "accountInfo": {"bank": "1"}})],
            "bank",
        ),
    ] {
        let r = create_split(&stack, &seller_key, 601, rules).await;
        assert_eq!((r.status, slug(&r.json)), (400, "split-invalid"), "{}", r.json);
        assert!(
            r.json["detail"].as_str().unwrap_or_default().contains(says),
            "{says}: {}",
            r.json
        );
    }

    let first = create_split(&stack, &seller_key, 601, half()).await;
    assert_eq!(first.status, 201, "{}", first.json);
    assert_eq!(first.json["active"], json!(true));
    let second = create_split(
        &stack,
        stack.token(),
        601,
        vec![rule("seller", json!(90)), rule("platform", json!(10))],
    )
    .await;
    assert_eq!(second.status, 201, "the platform may split any item: {}", second.json);
    let later = shared::time::rfc3339_ms(shared::time::now_ms() + 3_600_000);
    let future = stack
        .send(
            "POST",
            "/payment/splits",
            Some(&seller_key),
            Some(&json!({"itemId": 601, "effectiveFrom": later, "rules": half()})),
        )
        .await;
    assert_eq!(
        (future.status, &future.json["active"]),
        (201, &json!(false)),
        "{}",
        future.json
    );

    let history = stack
        .send("GET", "/payment/splits?itemId=601", Some(&seller_key), None)
        .await;
    assert_eq!(history.status, 200, "{}", history.json);
    assert_eq!(
        history.json["active"]["splitId"], second.json["splitId"],
        "{}",
        history.json
    );
    let ids: Vec<&Value> = history.json["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| &s["splitId"])
        .collect();
    assert_eq!(
        ids,
        [&future.json["splitId"], &second.json["splitId"], &first.json["splitId"]]
    );
    let actives = history.json["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["active"] == json!(true))
        .count();
    assert_eq!(actives, 1, "one active split");
    let by_other = stack
        .send("GET", "/payment/splits?itemId=601", Some(&other_key), None)
        .await;
    assert_eq!(by_other.status, 403);

    // The active split divides the next sale; rule changes never rewrite a past one.
    let order = card_checkout(&stack, 601).await;
    let charge = charge_of(&stack, order["orderId"].as_str().unwrap_or_default()).await;
    assert_eq!(charge["splitId"], second.json["splitId"]);
    assert_eq!(
        charge["splits"],
        json!([
            {"recipientId": "seller", "amount": 900, "reversed": 0},
            {"recipientId": "platform", "amount": 100, "reversed": 0}
        ])
    );
    let third = create_split(&stack, &seller_key, 601, half()).await;
    assert_eq!(third.status, 201);
    let again = stack
        .get_json(
            &format!("/payment/charges/{}", charge["chargeId"].as_str().unwrap_or_default()),
            true,
        )
        .await;
    assert_eq!(again["splits"], charge["splits"], "a past split is not rewritten");
    assert_verified(&stack).await;
}

#[tokio::test]
async fn concurrent_split_checkouts_and_refunds_keep_every_balance_equal_to_its_parts() {
    let stack = stack().await;
    let (seller, seller_key) = stack.account("Seller").await;
    assert_eq!(put_item(&stack, &seller_key, 701, 1001, None).await.status, 200);
    let split = create_split(
        &stack,
        &seller_key,
        701,
        vec![rule(&seller, json!(66.67)), rule("platform", json!(33.33))],
    )
    .await;
    assert_eq!(split.status, 201, "{}", split.json);

    let body = json!({"itemId": 701, "quantity": 1, "customerId": "c1", "paymentMethod": "pm_card_visa"});
    let answers = futures_util::future::join_all((0..12).map(|_| stack.checkout_owned(key(), body.clone()))).await;
    assert!(
        answers.iter().all(|(status, _, _)| *status == 200),
        "every checkout completes"
    );
    // 1001 at 66.67 / 33.33: 667.37 and 333.63, so the cent goes to the larger remainder.
    let seller_balance = balance(&stack, &seller).await;
    let platform_balance = balance(&stack, "platform").await;
    assert_eq!(
        seller_balance,
        json!({"earned": 12 * 667, "reversed": 0, "net": 12 * 667})
    );
    assert_eq!(platform_balance["earned"], json!(12 * 334));

    // A partial refund of an order reverses its parts by the same rule, exactly.
    let order_id = answers[0].2["orderId"].as_str().map(str::to_string).unwrap_or_default();
    let refund = stack
        .post_internal(
            &format!("/order/orders/{order_id}/refunds"),
            Some(&key()),
            &json!({"amount": 101, "restock": false}),
        )
        .await;
    assert_eq!(refund.status, 200, "{}", refund.json);
    let charge = charge_of(&stack, &order_id).await;
    let reversed: u64 = charge["splits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["reversed"].as_u64())
        .sum();
    assert_eq!(reversed, 101, "{charge}");
    let seller_after = balance(&stack, &seller).await;
    let platform_after = balance(&stack, "platform").await;
    let net = |b: &Value| b["net"].as_u64().unwrap_or(0);
    // Books: the recipients' net is what the split charges kept (charged − refunded).
    assert_eq!(net(&seller_after) + net(&platform_after), 12 * 1001 - 101);
    assert_eq!(seller_after["reversed"], charge["splits"][0]["reversed"]);
    // An account reads its own balance, not another's.
    let own = stack
        .send(
            "GET",
            &format!("/payment/recipients/{seller}/balance"),
            Some(&seller_key),
            None,
        )
        .await;
    assert_eq!(own.status, 200);
    let other = stack
        .send("GET", "/payment/recipients/platform/balance", Some(&seller_key), None)
        .await;
    assert_eq!(other.status, 403);
    assert_verified(&stack).await;
}
