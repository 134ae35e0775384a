//! The charge and refund scripts (refund.lua's tests are here: a refund needs a charge) against
//! a real Redis: the happy path, the replay, the wrong state, and the books they keep.

use std::time::Duration;

use actix_web::http::StatusCode;
use shared::idempotency::{Begin, IdempotencyStore, KeyRef, StoredResponse};
use shared::testing::TestRedis;

use super::store::*;
use crate::refunds::RefundOutcome;
use crate::store::{Store, answer_key, new_charge_id_for};

fn stores(redis: &TestRedis) -> (Store, IdempotencyStore) {
    let ttl = Duration::from_secs(60);
    (
        Store::new(redis.pool(), ttl),
        IdempotencyStore::new(redis.pool(), ttl, Duration::from_millis(300)),
    )
}

fn new_charge<'a>(charge_id: &'a str, amount: u64, decline_code: Option<&'a str>) -> NewCharge<'a> {
    NewCharge {
        split: None,
        charge_id,
        order_id: "ord_1",
        amount,
        currency: "USD",
        customer_id: "guest",
        payment_method: "pm_card_visa",
        decline_code,
        gateway: "card-a",
        gateway_reference: "ch_sim",
        pix_code: None,
        item_id: None,
    }
}

async fn charge(store: &Store, idem: &IdempotencyStore, key: &str, new: &NewCharge<'_>) -> ChargeOutcome {
    let key_ref = KeyRef::new("payment:charge", key, "fp".into()).with_answer_at(answer_key(new.order_id, key));
    let resp = StoredResponse::json(StatusCode::CREATED, &serde_json::json!({"chargeId": new.charge_id}));
    match store.charge(new, key, &idem.answer(&key_ref, "tok", &resp)).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("charge: {e}"),
    }
}

fn recorded(outcome: ChargeOutcome) -> Recorded {
    match outcome {
        ChargeOutcome::Recorded(r) => r,
        ChargeOutcome::KeyReused => panic!("the key was taken as reused"),
    }
}

async fn charged_and_refunded(store: &Store) -> (u64, u64, u64, u64) {
    let totals = store.totals().await.ok().unwrap_or_default();
    let usd = totals.currencies.get("USD").cloned().unwrap_or_default();
    let at_card_a = totals
        .by_gateway
        .get("card-a")
        .and_then(|g| g.get("USD"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(usd, at_card_a, "every charge here went through card-a");
    (
        usd.charged.count,
        usd.charged.amount,
        usd.refunded.count,
        usd.refunded.amount,
    )
}

#[tokio::test]
async fn charge_records_once_counts_it_and_its_key_finds_the_same_charge_again() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let again_id = new_charge_id_for("ord_1");

    let first = recorded(charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await);
    let again = recorded(charge(&store, &idem, "k1", &new_charge(&again_id, 1250, None)).await);

    assert!(first.fresh && !again.fresh);
    assert_eq!(again.charge_id, id);
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 0, 0));
    // The stored answer names the charge: no marker key of its own is written.
    let mut conn = redis.conn().await;
    let made: Option<String> = redis::cmd("HGET")
        .arg(answer_key("ord_1", "k1"))
        .arg("made")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    let marker: i64 = redis::cmd("EXISTS")
        .arg(crate::store::op_key(shared::ids::shard_of("ord_1"), "k1"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!((made.as_deref(), marker), (Some(id.as_str()), 0));
    let listed = store.charges_of_order("ord_1").await.ok().unwrap_or_default();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "succeeded");
}

#[tokio::test]
async fn charge_stores_its_answer_beside_the_charge_for_the_keys_replay() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let key = KeyRef::new("payment:charge", "k1", "fp".into()).with_answer_at(answer_key("ord_1", "k1"));
    let _ = idem.begin(&key, "tok").await;
    let id = new_charge_id_for("ord_1");

    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let retry = idem.begin(&key, "tok2").await.ok();

    let Some(Begin::Replay(stored)) = retry else {
        panic!("expected the stored answer, got {retry:?}");
    };
    assert_eq!(stored.status, 201);
    assert!(String::from_utf8_lossy(&stored.body).contains(&id));
}

#[tokio::test]
async fn a_marker_naming_another_requests_charge_is_a_reused_key() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let other = new_charge_id_for("ord_1");
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;

    let different_amount = charge(&store, &idem, "k1", &new_charge(&other, 999, None)).await;

    assert!(matches!(different_amount, ChargeOutcome::KeyReused));
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 0, 0));
}

#[tokio::test]
async fn a_declined_charge_is_recorded_but_not_counted_and_cannot_be_refunded() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");

    let declined = recorded(charge(&store, &idem, "k1", &new_charge(&id, 1250, Some("card_declined"))).await);
    let refund = store
        .refund(&id, None, "r1", "", &crate::refunds::new_refund_id(), None)
        .await
        .ok();

    assert_eq!(declined.decline_code.as_deref(), Some("card_declined"));
    assert!(matches!(refund, Some(RefundOutcome::NotRefundable { status }) if status == "failed"));
    assert_eq!(charged_and_refunded(&store).await, (0, 0, 0, 0));
}

#[tokio::test]
async fn refund_counts_once_and_answers_the_same_refund_again() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;

    let first = store
        .refund(&id, None, "r1", "re_sim", &crate::refunds::new_refund_id(), None)
        .await
        .ok();
    let again = store
        .refund(&id, None, "r2", "", &crate::refunds::new_refund_id(), None)
        .await
        .ok();
    let unknown = store
        .refund(
            &new_charge_id_for("ord_1"),
            None,
            "r3",
            "",
            &crate::refunds::new_refund_id(),
            None,
        )
        .await
        .ok();

    let (
        Some(RefundOutcome::Refunded {
            refund_id,
            amount: 1250,
            fresh: true,
        }),
        Some(RefundOutcome::Refunded {
            refund_id: same,
            fresh: false,
            ..
        }),
    ) = (first, again)
    else {
        panic!("expected one fresh refund, then the same one");
    };
    assert_eq!(refund_id, same);
    assert!(matches!(unknown, Some(RefundOutcome::NotFound)));
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 1, 1250));
    let stored = store.get_charge(&id).await.ok().flatten();
    assert_eq!(
        stored.map(|c| (c.charge_id, c.status)),
        Some((id.clone(), "refunded".into()))
    );
    // The charge's hash does not repeat its id; the refund's event still names it.
    let events = store.events(&id, 0, None).await.expect("events");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].kind, "refund.succeeded");
    assert_eq!(events[1].data["chargeId"], id.as_str());
}

#[tokio::test]
async fn a_refund_whose_totals_cannot_be_counted_writes_nothing() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;
    let shard = crate::store::shard_of_charge(&id).expect("the charge's shard");
    let totals = crate::store::totals_key(shard);
    let mut conn = redis.conn().await;
    let counted: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&totals)
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    // The totals are the script's first write; a key of the wrong type fails it there.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&totals)
        .cmd("SET")
        .arg(&totals)
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("totals broken");

    let failed = store
        .refund(&id, None, "r1", "re_sim", &crate::refunds::new_refund_id(), None)
        .await;

    assert!(failed.is_err(), "{failed:?}");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&totals)
        .cmd("HSET")
        .arg(&totals)
        .arg(&counted)
        .query_async(&mut conn)
        .await
        .expect("totals back");
    let stored = store.get_charge(&id).await.ok().flatten();
    assert_eq!(
        stored.map(|c| c.status),
        Some("succeeded".into()),
        "the charge is as it was"
    );
    assert_eq!(
        store.events(&id, 0, None).await.expect("events").len(),
        1,
        "no refund event"
    );
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 0, 0));
    let again = store
        .refund(&id, None, "r1", "re_sim", &crate::refunds::new_refund_id(), None)
        .await
        .ok();
    assert!(
        matches!(
            again,
            Some(RefundOutcome::Refunded {
                amount: 1250,
                fresh: true,
                ..
            })
        ),
        "the same key refunds once the totals can be counted: {again:?}"
    );
    assert_eq!(charged_and_refunded(&store).await, (1, 1250, 1, 1250));
}

fn refunded(outcome: Option<RefundOutcome>) -> (String, u64, bool) {
    match outcome {
        Some(RefundOutcome::Refunded {
            refund_id,
            amount,
            fresh,
        }) => (refund_id, amount, fresh),
        _ => panic!("expected a refund"),
    }
}

#[tokio::test]
async fn partial_refunds_add_up_to_the_charge_never_beyond_and_each_key_refunds_once() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1000, None)).await;

    let (first, amount, fresh) = refunded(
        store
            .refund(&id, Some(300), "r1", "", &crate::refunds::new_refund_id(), None)
            .await
            .ok(),
    );
    assert_eq!((amount, fresh), (300, true));
    let partial = store.get_charge(&id).await.ok().flatten().expect("charge");
    assert_eq!(
        (partial.status.as_str(), partial.amount_refunded),
        ("partially_refunded", 300)
    );
    // The same key again: its refund, not another.
    let (again, amount, fresh) = refunded(
        store
            .refund(&id, Some(300), "r1", "", &crate::refunds::new_refund_id(), None)
            .await
            .ok(),
    );
    assert_eq!((again, amount, fresh), (first, 300, false));
    let too_much = store
        .refund(&id, Some(701), "r2", "", &crate::refunds::new_refund_id(), None)
        .await
        .ok();
    assert!(matches!(too_much, Some(RefundOutcome::Exceeds { remaining: 700 })));
    // Without an amount: what remains.
    let (last, amount, _) = refunded(
        store
            .refund(&id, None, "r3", "", &crate::refunds::new_refund_id(), None)
            .await
            .ok(),
    );
    assert_eq!(amount, 700);
    let (answered, amount, fresh) = refunded(
        store
            .refund(&id, None, "r4", "", &crate::refunds::new_refund_id(), None)
            .await
            .ok(),
    );
    assert_eq!(
        (answered, amount, fresh),
        (last, 700, false),
        "nothing left: the last refund again"
    );
    assert!(matches!(
        store
            .refund(&id, Some(1), "r5", "", &crate::refunds::new_refund_id(), None)
            .await
            .ok(),
        Some(RefundOutcome::Exceeds { remaining: 0 })
    ));
    assert_eq!(charged_and_refunded(&store).await, (1, 1000, 2, 1000));

    let events = store.events(&id, 0, None).await.expect("events");
    let kinds: Vec<(&str, u64)> = events.iter().map(|e| (e.kind.as_str(), e.sequence)).collect();
    assert_eq!(
        kinds,
        [
            ("charge.succeeded", 1),
            ("refund.succeeded", 2),
            ("refund.succeeded", 3)
        ]
    );
    assert_eq!(events[0].correlation_id, "ord_1");
    assert_eq!(events[2].data["amountRefunded"], 1000);
    let fold = crate::events::verify::fold_charge(&events).expect("fold");
    assert_eq!((fold.status.as_str(), fold.refunded), ("refunded", 1000));
}

#[tokio::test]
async fn concurrent_partial_refunds_never_exceed_the_charge() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let id = new_charge_id_for("ord_1");
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1000, None)).await;
    let tries: Vec<_> = (0..12)
        .map(|i| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move {
                store
                    .refund(
                        &id,
                        Some(150),
                        &format!("r{i}"),
                        "",
                        &crate::refunds::new_refund_id(),
                        None,
                    )
                    .await
                    .ok()
            })
        })
        .collect();
    let mut done = 0;
    for t in tries {
        if let Ok(Some(RefundOutcome::Refunded { fresh: true, .. })) = t.await {
            done += 1;
        }
    }
    assert_eq!(done, 6, "six of 150 fit in 1000");
    assert_eq!(charged_and_refunded(&store).await, (1, 1000, 6, 900));
    let stored = store.get_charge(&id).await.ok().flatten().expect("charge");
    assert_eq!(
        (stored.status.as_str(), stored.amount_refunded),
        ("partially_refunded", 900)
    );
}

/// Two charges of order ord_1: 1250 succeeded under key k1, 99 declined under k2.
async fn charged_and_declined(store: &Store, idem: &IdempotencyStore) -> (String, String) {
    let id = new_charge_id_for("ord_1");
    let declined_id = new_charge_id_for("ord_1");
    let _ = charge(store, idem, "k1", &new_charge(&id, 1250, None)).await;
    let _ = charge(store, idem, "k2", &new_charge(&declined_id, 99, Some("card_declined"))).await;
    (id, declined_id)
}

#[tokio::test]
async fn a_charge_appends_its_first_event_with_the_order_as_correlation() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let (id, declined_id) = charged_and_declined(&store, &idem).await;
    let _ = charge(&store, &idem, "k1", &new_charge(&id, 1250, None)).await;

    let events = store.events(&id, 0, None).await.expect("events");
    assert_eq!(events.len(), 1, "the retry found the charge and appended nothing");
    assert_eq!(events[0].kind, "charge.succeeded");
    assert_eq!(events[0].event_id, format!("{id}-1"));
    assert_eq!(events[0].data["amount"], 1250);
    assert_eq!(events[0].data["gateway"], "card-a");
    assert!(
        events[0].data.get("declineCode").is_none(),
        "a charge that was not declined has no decline code: {}",
        events[0].data
    );
    assert_eq!(
        (&events[0].data["chargeId"], &events[0].data["orderId"]),
        (&serde_json::json!(id), &serde_json::json!("ord_1")),
        "served with its ids"
    );
    // The charge's createdAt (stored in milliseconds) is served as the event's time.
    let shown = store.get_charge(&id).await.ok().flatten().map(|c| c.created_at);
    assert_eq!(shown.as_deref(), Some(events[0].at.as_str()));
    // Stored without them: its list's name and its correlation are they.
    let shard = crate::store::shard_of_charge(&id).expect("shard");
    let mut conn = redis.conn().await;
    let stored: String = redis::cmd("LINDEX")
        .arg(crate::store::events_key(shard, &id))
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("LINDEX");
    assert!(!stored.contains("chargeId") && !stored.contains("orderId"), "{stored}");
    let declined = store.events(&declined_id, 0, None).await.expect("events");
    assert_eq!(declined[0].kind, "charge.declined");
    assert_eq!(declined[0].data["declineCode"], "card_declined");
}

#[tokio::test]
async fn a_charges_facts_are_its_first_events_alone_and_an_older_hash_of_them_still_reads() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let (id, declined_id) = charged_and_declined(&store, &idem).await;
    let shard = crate::store::shard_of_charge(&id).expect("shard");
    let mut conn = redis.conn().await;

    // The hash holds only what the event does not.
    let hash: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(crate::store::charge_key(shard, &id))
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    let names: Vec<&str> = hash.keys().map(String::as_str).collect();
    assert_eq!(names, ["customerId", "status"], "{hash:?}");
    // Read whole, by id and by order, the facts coming from the event.
    let facts = |c: &crate::model::Charge| {
        (
            c.status.clone(),
            c.amount,
            c.currency.clone(),
            c.order_id.clone(),
            c.gateway.clone(),
            c.gateway_reference.clone(),
            c.decline_code.clone(),
            c.customer_id.clone(),
        )
    };
    let expected = (
        "succeeded".to_string(),
        1250,
        "USD".to_string(),
        "ord_1".to_string(),
        "card-a".to_string(),
        "ch_sim".to_string(),
        None,
        "guest".to_string(),
    );
    let read = store.get_charge(&id).await.expect("read").expect("charge");
    assert_eq!(facts(&read), expected);
    let first = store.events(&id, 0, None).await.expect("events").remove(0);
    assert_eq!(read.created_at, first.at);
    let listed = store.charges_of_order("ord_1").await.expect("listed");
    assert_eq!(listed.len(), 2);
    assert_eq!(facts(&listed[0]), expected);
    assert_eq!(
        (
            listed[1].charge_id.as_str(),
            listed[1].status.as_str(),
            listed[1].amount,
            listed[1].decline_code.as_deref()
        ),
        (declined_id.as_str(), "failed", 99, Some("card_declined"))
    );

    // A charge recorded before the facts left the hash (no event of them): read from its hash,
    // refunded by it, and its hash wins over an event that would say otherwise.
    let older = stored_as_before(
        &mut conn,
        "ord_2",
        &[
            ("orderId", "ord_2"),
            ("amount", "700"),
            ("currency", "EUR"),
            ("customerId", "cus_1"),
            ("paymentMethod", "pm_card_visa"),
            ("status", "succeeded"),
            ("createdAt", "1796464800000"),
            ("gateway", "card-b"),
            ("gatewayReference", "older"),
        ],
        r#"{"type":"charge.succeeded","at":"2026-12-05T10:00:00.000Z","correlationId":"ord_x","data":{"amount":1,"currency":"USD","gateway":"card-a","gatewayReference":"newer"}}"#,
    )
    .await;
    let read = store.get_charge(&older).await.expect("read").expect("charge");
    assert_eq!(
        (
            read.amount,
            read.currency.as_str(),
            read.order_id.as_str(),
            read.gateway.as_str()
        ),
        (700, "EUR", "ord_2", "card-b")
    );
    assert_eq!(
        (read.gateway_reference.as_str(), read.created_at.as_str()),
        ("older", "2026-12-05T10:00:00.000Z")
    );
    // A script reads the facts where they are: a refund of the older charge takes its provider
    // and currency from its hash, of the first charge above from its event's letters, and of a
    // charge whose event names them in full (as #29's eleventh pass recorded them) from those.
    let eleventh = stored_as_before(
        &mut conn,
        "ord_3",
        &[("status", "succeeded"), ("customerId", "cus_1")],
        r#"{"type":"charge.succeeded","at":"2026-12-05T10:00:00.000Z","correlationId":"ord_3","data":{"amount":900,"currency":"GBP","gateway":"card-b","gatewayReference":"full","paymentMethod":"pm_card_visa"}}"#,
    )
    .await;
    let read = store.get_charge(&eleventh).await.expect("read").expect("charge");
    assert_eq!(
        (
            read.amount,
            read.currency.as_str(),
            read.order_id.as_str(),
            read.gateway_reference.as_str()
        ),
        (900, "GBP", "ord_3", "full")
    );
    for (charge, amount) in [(&older, 200), (&id, 250), (&eleventh, 100)] {
        let refund = store
            .refund(
                charge,
                Some(amount),
                &format!("r-{charge}"),
                "re_sim",
                &crate::refunds::new_refund_id(),
                None,
            )
            .await
            .expect("refund");
        assert!(
            matches!(refund, RefundOutcome::Refunded { fresh: true, amount: a, .. } if a == amount),
            "{refund:?}"
        );
    }
    let totals = store.totals().await.expect("totals");
    assert_eq!(
        (
            totals.by_gateway["card-b"]["EUR"].refunded.amount,
            totals.by_gateway["card-a"]["USD"].refunded.amount,
            totals.by_gateway["card-b"]["GBP"].refunded.amount
        ),
        (200, 250, 100)
    );
}

/// A charge of `order_id` stored as an older version left it: its hash's `fields` and its
/// first event as `first_event` says; its id.
async fn stored_as_before(
    conn: &mut redis::aio::MultiplexedConnection,
    order_id: &str,
    fields: &[(&str, &str)],
    first_event: &str,
) -> String {
    let id = new_charge_id_for(order_id);
    let shard = shard_of_order(order_id);
    let _: () = redis::cmd("HSET")
        .arg(crate::store::charge_key(shard, &id))
        .arg(fields)
        .query_async(conn)
        .await
        .expect("HSET");
    let _: () = redis::cmd("RPUSH")
        .arg(crate::store::events_key(shard, &id))
        .arg(first_event)
        .query_async(conn)
        .await
        .expect("RPUSH");
    id
}

fn shard_of_order(order_id: &str) -> u16 {
    shared::ids::shard_of(order_id)
}

/// On one node a new charge is added to no set (~80 bytes fsynced per checkout): verify finds
/// its events by SCAN, and still every aggregate a set names (older versions recorded them so).
#[tokio::test]
async fn on_one_node_verify_finds_charges_by_their_events_and_older_ones_by_their_set() {
    let redis = TestRedis::start().await;
    let (store, idem) = stores(&redis);
    let store = store.on_one_node(true);
    let (id, declined_id) = charged_and_declined(&store, &idem).await;
    let shard = shard_of_order("ord_1");
    let mut conn = redis.conn().await;
    let set = crate::store::aggregates_key(shard);
    let recorded: u64 = redis::cmd("SCARD")
        .arg(&set)
        .query_async(&mut conn)
        .await
        .expect("SCARD");
    let _: () = redis::cmd("SADD")
        .arg(&set)
        .arg("ch_older")
        .query_async(&mut conn)
        .await
        .expect("SADD");

    let found = crate::events::verify::aggregates(&store).await.expect("aggregates");

    let nameless: u64 = redis::cmd("EXISTS")
        .arg("")
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(
        (recorded, nameless),
        (0, 0),
        "no set member for a new charge, in no set"
    );
    let in_shard: Vec<&str> = found[usize::from(shard)].iter().map(String::as_str).collect();
    let mut expected = vec!["ch_older", id.as_str(), declined_id.as_str()];
    expected.sort();
    assert_eq!(in_shard, expected);
    assert_eq!(
        found.iter().map(|s| s.len()).sum::<usize>(),
        3,
        "nothing else: {found:?}"
    );
}
