//! The stock service's contract through nginx, with the internal token: items, reservations,
//! their idempotency, their expiry and the invariant `available + reserved + sold`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests_e2e::{Reply, Stack, StackOptions, new_key as key, slug};

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

async fn reserve(stack: &Stack, key: &str, item_id: u64, quantity: u32) -> Reply {
    stack
        .post_internal(
            "/stock/reserve",
            Some(key),
            &json!({"itemId": item_id, "quantity": quantity}),
        )
        .await
}

/// Reserves and asserts 201; returns the reservation id.
async fn reserved(stack: &Stack, item_id: u64, quantity: u32) -> String {
    let r = reserve(stack, &key(), item_id, quantity).await;
    assert_eq!(r.status, 201, "reserve {quantity} of {item_id}: {}", r.json);
    r.json["reservationId"].as_str().expect("reservationId").to_string()
}

async fn release(stack: &Stack, key: &str, rid: &str) -> Reply {
    stack
        .post_internal("/stock/release", Some(key), &json!({"reservationId": rid}))
        .await
}

async fn complete(stack: &Stack, key: &str, rid: &str) -> Reply {
    stack
        .post_internal("/stock/complete", Some(key), &json!({"reservationId": rid}))
        .await
}

async fn put(stack: &Stack, id: &str, body: &Value) -> Reply {
    let req = stack
        .client()
        .put(stack.url(&format!("/stock/items/{id}")))
        .bearer_auth(stack.token())
        .json(body);
    Reply::from(req.send().await.expect("PUT item")).await
}

/// The lease field of a key's record: only a record that was ever running has one.
async fn lease_of(stack: &Stack, record: &str) -> Option<u64> {
    stack.record_field(record, "lease").await.and_then(|l| l.parse().ok())
}

/// `(available, reserved, sold)` of an item.
async fn counts(stack: &Stack, id: u64) -> (i64, i64, i64) {
    let item = stack.item(id).await;
    let n = |f: &str| {
        item[f]
            .as_i64()
            .unwrap_or_else(|| panic!("{f} is not an integer: {item}"))
    };
    (n("available"), n("reserved"), n("sold"))
}

#[tokio::test]
async fn put_creates_an_item_and_a_restock_sets_available_but_keeps_reserved_and_sold() {
    let stack = stack().await;

    let created = put(
        &stack,
        "1",
        &json!({"name": "Mug", "price": 1250, "currency": "USD", "available": 10}),
    )
    .await;

    assert_eq!(created.status, 200, "{}", created.json);
    assert_eq!(
        created.json,
        json!({"id": 1, "name": "Mug", "price": 1250, "currency": "USD", "available": 10, "reserved": 0, "sold": 0})
    );
    let held = reserved(&stack, 1, 3).await;
    let sold = reserved(&stack, 1, 2).await;
    assert_eq!(complete(&stack, &key(), &sold).await.status, 200);
    assert_eq!(counts(&stack, 1).await, (5, 3, 2));

    let restocked = put(
        &stack,
        "1",
        &json!({"name": "Big mug", "price": 1500, "currency": "USD", "available": 40}),
    )
    .await;

    assert_eq!(restocked.status, 200, "{}", restocked.json);
    assert_eq!(
        restocked.json,
        json!({"id": 1, "name": "Big mug", "price": 1500, "currency": "USD", "available": 40, "reserved": 3, "sold": 2})
    );
    assert_eq!(stack.item(1).await, restocked.json, "GET shows what PUT answered");
    // The reservation made before the restock is still live and still completes.
    assert_eq!(complete(&stack, &key(), &held).await.status, 200);
    assert_eq!(counts(&stack, 1).await, (40, 0, 5));
}

#[tokio::test]
async fn items_are_listed_and_read_publicly_and_an_unknown_item_is_404() {
    let stack = stack().await;
    stack.put_item(2, "Kettle", 3000, 4).await;
    stack.put_item(1, "Mug", 1250, 10).await;

    // Reads need no token.
    let list = stack.get_json("/stock/items", false).await;
    let one = stack.get_json("/stock/items/2", false).await;

    assert_eq!(
        list,
        json!([
            {"id": 1, "name": "Mug", "price": 1250, "currency": "USD", "available": 10, "reserved": 0, "sold": 0},
            {"id": 2, "name": "Kettle", "price": 3000, "currency": "USD", "available": 4, "reserved": 0, "sold": 0},
        ])
    );
    assert_eq!(
        one,
        json!({"id": 2, "name": "Kettle", "price": 3000, "currency": "USD", "available": 4, "reserved": 0, "sold": 0})
    );
    for path in ["/stock/items/999", "/stock/items/0", "/stock/items/mug"] {
        let r = Reply::from(stack.client().get(stack.url(path)).send().await.expect(path)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.json);
        assert_eq!(r.content_type(), "application/problem+json", "{path}");
        assert_eq!(slug(&r.json), "item-not-found", "{path}: {}", r.json);
        assert_eq!(r.json["status"], 404, "{path}");
    }
}

#[tokio::test]
async fn reserve_is_201_with_the_reservation_and_moves_units_from_available_to_reserved() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let before = shared::time::now_ms();

    let r = reserve(&stack, &key(), 1, 3).await;

    let after = shared::time::now_ms();
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.content_type(), "application/json");
    assert!(!r.replayed());
    let body = r.json.as_object().expect("an object");
    let mut fields: Vec<&str> = body.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "currency",
            "expiresAt",
            "itemId",
            "quantity",
            "reservationId",
            "status",
            "totalFee"
        ]
    );
    assert!(
        r.json["reservationId"].as_str().is_some_and(|s| !s.is_empty()),
        "{}",
        r.json
    );
    assert_eq!(r.json["itemId"], 1);
    assert_eq!(r.json["quantity"], 3);
    assert_eq!(r.json["totalFee"], 3750, "price × quantity, in minor units");
    assert_eq!(r.json["currency"], "USD");
    assert_eq!(r.json["status"], "reserved");
    // The default RESERVATION_TTL is 10 minutes; the timestamps are fixed-width RFC 3339 in UTC,
    // so they compare as strings.
    let expires = r.json["expiresAt"].as_str().expect("expiresAt");
    let ttl = 10 * 60 * 1000;
    let (lo, hi) = (
        shared::time::rfc3339_ms(before + ttl - 2000),
        shared::time::rfc3339_ms(after + ttl + 2000),
    );
    assert!(
        lo.as_str() <= expires && expires <= hi.as_str(),
        "expiresAt {expires} not within [{lo}, {hi}]"
    );
    assert_eq!(counts(&stack, 1).await, (7, 3, 0));
}

#[tokio::test]
async fn a_reserve_replayed_with_its_key_is_byte_identical_and_reserves_only_once() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();

    let first = reserve(&stack, &k, 1, 2).await;
    let second = reserve(&stack, &k, 1, 2).await;

    assert_eq!(first.status, 201, "{}", first.json);
    assert!(!first.replayed());
    assert_eq!(second.status, 201, "{}", second.json);
    assert!(second.replayed(), "a replay carries Idempotent-Replayed: true");
    assert_eq!(second.bytes, first.bytes, "a replay is byte for byte the first answer");
    assert_eq!(counts(&stack, 1).await, (8, 2, 0), "reserved once");

    // The same key with another payload is refused and changes nothing.
    let reused = reserve(&stack, &k, 1, 5).await;
    assert_eq!(reused.status, 422, "{}", reused.json);
    assert_eq!(slug(&reused.json), "idempotency-key-reused");
    assert_eq!(counts(&stack, 1).await, (8, 2, 0));
}

#[tokio::test]
async fn a_reserves_answer_filled_in_by_its_script_is_the_one_rust_renders_now_and_later() {
    let OneReserve {
        stack,
        key: k,
        first,
        record,
        beside,
    } = one_reserve().await;
    // The replay is the answer the script filled in and stored; the first was rendered in Rust.
    let replay = reserve(&stack, &k, 1, 2).await;
    assert_eq!((replay.status, replay.replayed()), (201, true), "{}", replay.json);
    assert_eq!(
        String::from_utf8_lossy(&replay.bytes),
        String::from_utf8_lossy(&first.bytes),
        "the script's answer and Rust's agree byte for byte"
    );
    // What the key's expiry does, without the wait: its record and, on a cluster, the answer
    // stored with the reservation go (on one node the record holds the answer). They were all
    // that named the reservation, so the key is new again, as the contract's 24 h say: a second
    // reservation, the first one untouched.
    let pool = stack.redis_pool();
    let mut conn = pool.get().await.expect("redis");
    for (gone, exists) in [(record, true), (beside, stack.on_cluster())] {
        let deleted: i64 = redis::cmd("DEL").arg(&gone).query_async(&mut conn).await.expect("DEL");
        assert_eq!(deleted, i64::from(exists), "{gone}");
    }

    let again = reserve(&stack, &k, 1, 2).await;

    assert_eq!((again.status, again.replayed()), (201, false), "{}", again.json);
    assert_ne!(
        again.json["reservationId"], first.json["reservationId"],
        "an expired key reserves anew"
    );
    assert_eq!(counts(&stack, 1).await, (6, 4, 0), "the first reservation untouched");
}

/// One reserve of 2 units of item 1 (10 stocked) under a fresh key: its answer, and where the
/// key's record and an answer stored beside the reservation live.
struct OneReserve {
    stack: Stack,
    key: String,
    first: Reply,
    record: String,
    beside: String,
}

async fn one_reserve() -> OneReserve {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let k = key();
    let first = reserve(&stack, &k, 1, 2).await;
    assert_eq!(first.status, 201, "{}", first.json);
    OneReserve {
        stack,
        record: format!("idem:{{stock:reserve:{k}}}"),
        beside: format!("stock:{{item:1}}:answer:reserve:{k}"),
        key: k,
        first,
    }
}

#[tokio::test]
async fn a_reserve_settles_its_key_in_its_own_script_on_one_node_and_beside_it_on_a_cluster() {
    let OneReserve {
        stack,
        first,
        record,
        beside,
        ..
    } = one_reserve().await;
    let pool = stack.redis_pool();
    let mut conn = pool.get().await.expect("redis");
    let state = stack.record_field(&record, "state").await;
    let status: Option<u16> = stack.record_field(&record, "status").await.and_then(|s| s.parse().ok());
    let body = stack.record_field(&record, "body").await;
    let (beside_status, beside_body): (Option<u16>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(&beside)
        .arg(&["status", "body"])
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    if stack.on_cluster() {
        // The key's record is a slot of its own: taken first, left running, answered beside.
        assert_eq!(state.as_deref(), Some("running"));
        assert_eq!((beside_status, beside_body), (Some(201), Some(first.bytes.to_vec())));
    } else {
        // One write: the script took the key, reserved and settled the key with its status.
        assert_eq!((state.as_deref(), status), (Some("done"), Some(201)));
        assert_eq!(
            body, None,
            "the record keeps no body: a replay renders it from the reservation (the test above)"
        );
        assert_eq!((beside_status, beside_body), (None, None), "nothing stored beside it");
        // Written once, done: a record that was running first would keep its lease.
        assert_eq!(
            lease_of(&stack, &record).await,
            None,
            "the record was never written as running"
        );
    }
}

#[tokio::test]
async fn a_key_left_running_is_busy_until_its_lease_ends_then_taken_over_and_settled() {
    let OneReserve {
        stack,
        key: k,
        first,
        record,
        beside,
    } = one_reserve().await;
    // As if its owner had died after the reservation, before any answer was stored: the
    // record running under another token, no answer anywhere; only the record the script
    // wrote (on one node the key's, on a cluster the one beside the reservation) still names
    // what the key made.
    let pool = stack.redis_pool();
    let mut conn = pool.get().await.expect("redis");
    // The record is one string (on one node written done at once; on a cluster taken running,
    // its answer appended): what it keeps of the request (its fingerprint, what it made) goes
    // into a hash, as a record running under a version before #29's eighth pass was.
    let (fp, made) = (
        stack.record_field(&record, "fp").await,
        stack.record_field(&record, "made").await,
    );
    let kind: String = redis::cmd("TYPE")
        .arg(&record)
        .query_async(&mut conn)
        .await
        .expect("TYPE");
    assert_eq!(kind, "string", "a key's record is one string of its fields");
    if kind == "string" {
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(&record)
            .ignore()
            .cmd("HSET")
            .arg(&record)
            .arg(&[
                "fp",
                fp.as_deref().unwrap_or_default(),
                "made",
                made.as_deref().unwrap_or_default(),
            ])
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("the record as a hash");
    }
    for at in [&beside, &record] {
        let _: i64 = redis::cmd("HDEL")
            .arg(at)
            .arg(&["status", "ctype", "body"])
            .query_async(&mut conn)
            .await
            .expect("HDEL");
    }
    let far = 4_000_000_000_000_u64;
    let _: i64 = redis::cmd("HSET")
        .arg(&record)
        .arg(&["state", "running", "token", "dead-owner", "lease"])
        .arg(far)
        .query_async(&mut conn)
        .await
        .expect("HSET");

    let busy = reserve(&stack, &k, 1, 2).await;
    assert_eq!(busy.status, 409, "{}", busy.json);
    assert_eq!(slug(&busy.json), "idempotency-key-in-use");
    assert_eq!(counts(&stack, 1).await, (8, 2, 0), "nothing reserved while busy");

    let _: i64 = redis::cmd("HSET")
        .arg(&record)
        .arg(&["lease", "0"])
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let taken = reserve(&stack, &k, 1, 2).await;
    assert_eq!((taken.status, taken.replayed()), (201, false), "{}", taken.json);
    assert_eq!(
        taken.bytes, first.bytes,
        "the reservation its record names, the same answer"
    );
    assert_eq!(counts(&stack, 1).await, (8, 2, 0), "reserved once");
    // The new owner settled the key: the next retry is a replay.
    let state: Option<String> = redis::cmd("HGET")
        .arg(&record)
        .arg("state")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(state.as_deref(), Some("done"), "settled by the owner that took it over");
    let replay = reserve(&stack, &k, 1, 2).await;
    assert_eq!((replay.status, replay.replayed()), (201, true), "{}", replay.json);
    assert_eq!(replay.bytes, first.bytes);
}

#[tokio::test]
async fn scripts_write_timestamps_exactly_as_rust_does() {
    let stack = stack().await;
    let pool = stack.redis_pool();
    let mut conn = pool.get().await.expect("redis");
    let instants: [u64; 9] = [
        0,
        951_782_400_000,     // 2000-02-29
        1_709_251_199_999,   // 2024-02-29, last millisecond
        1_735_689_599_999,   // 2024-12-31, last millisecond
        1_795_420_800_000,   // 2026-11-23
        1_798_761_600_001,   // 2027-01-01
        4_107_542_400_000,   // 2100-03-01, after a year that is not a leap year
        253_402_300_799_999, // 9999-12-31, last millisecond
        1_234_567_890_123,
    ];
    let script = shared::lua::script(
        &[&shared::lua::RFC3339],
        "local out = {}\nfor i, ms in ipairs(ARGV) do out[i] = rfc3339_ms(tonumber(ms)) end\nreturn out",
    );
    let mut invocation = script.key("e2e:{time}");
    for ms in instants {
        invocation.arg(ms);
    }

    let written: Vec<String> = invocation.invoke_async(&mut conn).await.expect("FCALL");

    let expected: Vec<String> = instants.iter().map(|ms| shared::time::rfc3339_ms(*ms)).collect();
    assert_eq!(written, expected);
}

#[tokio::test]
async fn reserving_more_than_is_available_is_409_out_of_stock_and_an_unknown_item_is_404() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 3).await;
    let k = key();

    let r = reserve(&stack, &k, 1, 4).await;

    assert_eq!(r.status, 409, "{}", r.json);
    assert_eq!(r.content_type(), "application/problem+json");
    assert_eq!(slug(&r.json), "out-of-stock");
    assert_eq!(counts(&stack, 1).await, (3, 0, 0));
    // A business refusal is the key's stored answer.
    let again = reserve(&stack, &k, 1, 4).await;
    assert_eq!((again.status, again.replayed()), (409, true));
    assert_eq!(again.bytes, r.bytes);
    // Until it was settled with that answer the key was held, running under its lease, so a
    // duplicate arriving in between met a busy key rather than none.
    assert!(
        lease_of(&stack, &format!("idem:{{stock:reserve:{k}}}")).await.is_some(),
        "the refused reserve's key was held before it was settled"
    );
    // Exactly what is available can be reserved; then nothing more.
    assert_eq!(reserve(&stack, &key(), 1, 3).await.status, 201);
    let none_left = reserve(&stack, &key(), 1, 1).await;
    assert_eq!(
        (none_left.status, slug(&none_left.json)),
        (409, "out-of-stock"),
        "{}",
        none_left.json
    );
    assert_eq!(counts(&stack, 1).await, (0, 3, 0));

    let unknown = reserve(&stack, &key(), 424242, 1).await;
    assert_eq!(unknown.status, 404, "{}", unknown.json);
    assert_eq!(slug(&unknown.json), "item-not-found");
}

#[tokio::test]
async fn release_puts_the_units_back_and_answers_the_same_200_every_time() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let rid = reserved(&stack, 1, 4).await;
    assert_eq!(counts(&stack, 1).await, (6, 4, 0));
    let k = key();

    let first = release(&stack, &k, &rid).await;

    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json, json!({"reservationId": rid, "status": "released"}));
    assert_eq!(counts(&stack, 1).await, (10, 0, 0), "the units are available again");

    let same_key = release(&stack, &k, &rid).await;
    assert_eq!(same_key.status, 200, "{}", same_key.json);
    assert!(same_key.replayed());
    assert_eq!(same_key.bytes, first.bytes);

    let new_key = release(&stack, &key(), &rid).await;
    assert_eq!(new_key.status, 200, "{}", new_key.json);
    assert!(
        !new_key.replayed(),
        "a new key executes again, and finds the reservation released"
    );
    assert_eq!(new_key.json, first.json);
    assert_eq!(
        counts(&stack, 1).await,
        (10, 0, 0),
        "releasing again returns nothing twice"
    );
}

#[tokio::test]
async fn complete_is_idempotent_and_release_and_complete_refuse_each_other() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let to_complete = reserved(&stack, 1, 2).await;
    let to_release = reserved(&stack, 1, 3).await;

    let done = complete(&stack, &key(), &to_complete).await;

    assert_eq!(done.status, 200, "{}", done.json);
    assert_eq!(done.json, json!({"reservationId": to_complete, "status": "completed"}));
    assert_eq!(counts(&stack, 1).await, (5, 3, 2));
    let again = complete(&stack, &key(), &to_complete).await;
    assert_eq!(again.status, 200, "{}", again.json);
    assert_eq!(again.json, done.json);
    assert_eq!(
        counts(&stack, 1).await,
        (5, 3, 2),
        "completing again sells nothing more"
    );

    let k = key();
    let refused = release(&stack, &k, &to_complete).await;
    assert_eq!(refused.status, 409, "{}", refused.json);
    assert_eq!(refused.content_type(), "application/problem+json");
    assert_eq!(slug(&refused.json), "reservation-completed");
    assert_eq!(counts(&stack, 1).await, (5, 3, 2));
    // Its script stored no answer, so it held the key until the refusal was stored.
    assert!(
        lease_of(&stack, &format!("idem:{{stock:release:{k}}}")).await.is_some(),
        "the refused release's key was held before it was settled"
    );

    assert_eq!(release(&stack, &key(), &to_release).await.status, 200);
    let refused = complete(&stack, &key(), &to_release).await;
    assert_eq!(refused.status, 409, "{}", refused.json);
    assert_eq!(slug(&refused.json), "reservation-released");
    assert_eq!(counts(&stack, 1).await, (8, 0, 2));
}

#[tokio::test]
async fn an_unknown_reservation_is_404_for_release_and_complete() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let well_formed_but_unknown = format!("rsv_1_{}", uuid::Uuid::new_v4().simple());

    for rid in [well_formed_but_unknown.as_str(), "rsv_999_abc", "nonsense"] {
        for path in ["/stock/release", "/stock/complete"] {
            let r = stack
                .post_internal(path, Some(&key()), &json!({"reservationId": rid}))
                .await;
            assert_eq!(r.status, 404, "{path} {rid}: {}", r.json);
            assert_eq!(slug(&r.json), "reservation-not-found", "{path} {rid}");
        }
    }
    assert_eq!(counts(&stack, 1).await, (10, 0, 0));
}

#[tokio::test]
async fn a_hundred_concurrent_reserves_of_thirty_units_never_oversell() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 30).await;
    let watching = std::sync::atomic::AtomicBool::new(true);

    // While the reserves run, every snapshot of the item keeps the invariant.
    let watch = async {
        let mut snapshots = 0;
        while watching.load(std::sync::atomic::Ordering::Relaxed) {
            let (a, r, s) = counts(&stack, 1).await;
            assert_eq!(a + r + s, 30, "available {a} + reserved {r} + sold {s}");
            assert!(a >= 0 && r >= 0, "available {a}, reserved {r}");
            snapshots += 1;
        }
        snapshots
    };
    let reserves = async {
        let replies = futures_util::future::join_all((0..100).map(|_| async {
            let k = key();
            reserve(&stack, &k, 1, 1).await
        }))
        .await;
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        replies
    };
    let (replies, snapshots) = tokio::join!(reserves, watch);

    let created: Vec<&str> = replies
        .iter()
        .filter(|r| r.status == 201)
        .filter_map(|r| r.json["reservationId"].as_str())
        .collect();
    let refused = replies
        .iter()
        .filter(|r| r.status == 409 && slug(&r.json) == "out-of-stock")
        .count();
    let others: Vec<_> = replies
        .iter()
        .filter(|r| r.status != 201 && r.status != 409)
        .map(|r| &r.json)
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert_eq!((created.len(), refused), (30, 70));
    let distinct: std::collections::HashSet<&&str> = created.iter().collect();
    assert_eq!(distinct.len(), 30, "every reservation is its own");
    assert_eq!(counts(&stack, 1).await, (0, 30, 0));
    assert!(snapshots > 0);

    // Completing some and releasing the others keeps the sum too.
    for (i, rid) in created.iter().enumerate() {
        let r = if i % 3 == 0 {
            complete(&stack, &key(), rid).await
        } else {
            release(&stack, &key(), rid).await
        };
        assert_eq!(r.status, 200, "{}", r.json);
    }
    assert_eq!(counts(&stack, 1).await, (20, 0, 10));
}

#[tokio::test]
async fn a_lapsed_reservation_returns_its_units_and_can_no_longer_be_completed() {
    let mut options = StackOptions::default();
    options.stock_env.push(("RESERVATION_TTL".into(), "1s".into()));
    options
        .stock_env
        .push(("RESERVATION_SWEEP_INTERVAL".into(), "100ms".into()));
    let stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let rid = reserved(&stack, 1, 4).await;
    assert_eq!(counts(&stack, 1).await, (6, 4, 0));

    // The sweeper returns the units without any request touching the reservation.
    let started = Instant::now();
    loop {
        let now = counts(&stack, 1).await;
        if now == (10, 0, 0) {
            break;
        }
        assert_eq!(now.0 + now.1 + now.2, 10, "{now:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the reservation never lapsed: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it lapsed long before its TTL"
    );

    let late = complete(&stack, &key(), &rid).await;

    assert_eq!(late.status, 409, "{}", late.json);
    assert_eq!(slug(&late.json), "reservation-released");
    assert_eq!(counts(&stack, 1).await, (10, 0, 0), "nothing sold");
    // Releasing a lapsed reservation is the same 200 as releasing it by hand, and returns nothing twice.
    let released = release(&stack, &key(), &rid).await;
    assert_eq!(released.status, 200, "{}", released.json);
    assert_eq!(released.json, json!({"reservationId": rid, "status": "released"}));
    assert_eq!(counts(&stack, 1).await, (10, 0, 0));
}

#[tokio::test]
async fn a_lapsed_reservation_is_refused_on_complete_even_before_the_sweeper_runs() {
    let mut options = StackOptions::default();
    options.stock_env.push(("RESERVATION_TTL".into(), "1s".into()));
    // A sweeper that practically never runs: complete itself must notice the expiry.
    options
        .stock_env
        .push(("RESERVATION_SWEEP_INTERVAL".into(), "1h".into()));
    let stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let rid = reserved(&stack, 1, 4).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let late = complete(&stack, &key(), &rid).await;

    assert_eq!(late.status, 409, "{}", late.json);
    assert_eq!(slug(&late.json), "reservation-released");
    assert_eq!(counts(&stack, 1).await, (10, 0, 0), "the units are back in available");
}

#[tokio::test]
async fn bad_stock_requests_get_a_problem_that_says_what_was_wrong() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let rid = reserved(&stack, 1, 1).await;
    let client = stack.client();
    let posts: Vec<BadPost> = vec![
        (
            "reserve without a key",
            "/stock/reserve",
            None,
            r#"{"itemId":1,"quantity":1}"#.into(),
            400,
            "idempotency-key-missing",
        ),
        (
            "release without a key",
            "/stock/release",
            None,
            format!(r#"{{"reservationId":"{rid}"}}"#),
            400,
            "idempotency-key-missing",
        ),
        (
            "complete without a key",
            "/stock/complete",
            None,
            format!(r#"{{"reservationId":"{rid}"}}"#),
            400,
            "idempotency-key-missing",
        ),
        (
            "key with a space",
            "/stock/reserve",
            Some("a b"),
            r#"{"itemId":1,"quantity":1}"#.into(),
            400,
            "idempotency-key-invalid",
        ),
        (
            "unknown field",
            "/stock/reserve",
            Some("k1"),
            r#"{"itemId":1,"quantity":1,"note":"x"}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "unknown field on release",
            "/stock/release",
            Some("k2"),
            format!(r#"{{"reservationId":"{rid}","force":true}}"#),
            400,
            "invalid-request",
        ),
        (
            "malformed JSON",
            "/stock/reserve",
            Some("k3"),
            r#"{"itemId":1,"#.into(),
            400,
            "invalid-request",
        ),
        (
            "quantity 0",
            "/stock/reserve",
            Some("k4"),
            r#"{"itemId":1,"quantity":0}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "negative quantity",
            "/stock/reserve",
            Some("k5"),
            r#"{"itemId":1,"quantity":-1}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "fractional quantity",
            "/stock/reserve",
            Some("k6"),
            r#"{"itemId":1,"quantity":1.5}"#.into(),
            400,
            "invalid-request",
        ),
        (
            "oversized body",
            "/stock/reserve",
            Some("k7"),
            format!(r#"{{"itemId":1,"quantity":1,"pad":"{}"}}"#, "x".repeat(20_000)),
            413,
            "payload-too-large",
        ),
    ];
    for (what, path, key, body, want_status, want_slug) in posts {
        let mut req = client
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

    let puts = [
        (
            "negative available",
            json!({"name": "Mug", "price": 1250, "currency": "USD", "available": -1}),
        ),
        (
            "float price",
            json!({"name": "Mug", "price": 12.5, "currency": "USD", "available": 10}),
        ),
        (
            "integral float price",
            json!({"name": "Mug", "price": 1250.0, "currency": "USD", "available": 10}),
        ),
        (
            "negative price",
            json!({"name": "Mug", "price": -1, "currency": "USD", "available": 10}),
        ),
        (
            "price as a string",
            json!({"name": "Mug", "price": "1250", "currency": "USD", "available": 10}),
        ),
        (
            "lower-case currency",
            json!({"name": "Mug", "price": 1250, "currency": "usd", "available": 10}),
        ),
        (
            "empty name",
            json!({"name": " ", "price": 1250, "currency": "USD", "available": 10}),
        ),
        (
            "missing available",
            json!({"name": "Mug", "price": 1250, "currency": "USD"}),
        ),
        (
            "unknown field",
            json!({"name": "Mug", "price": 1250, "currency": "USD", "available": 10, "sold": 0}),
        ),
    ];
    for (what, body) in puts {
        let r = put(&stack, "1", &body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.json);
        assert_eq!(slug(&r.json), "invalid-request", "{what}: {}", r.json);
    }
    // A price whose largest reservation no charge may hold is refused when the item is stocked,
    // not after a reservation, by the payment service, about an amount the client never sent.
    let dear = put(
        &stack,
        "1",
        &json!({"name": "Yacht", "price": 9_000_000_001u64, "currency": "USD", "available": 1000}),
    )
    .await;
    assert_eq!(dear.status, 400, "{}", dear.json);
    assert_eq!(slug(&dear.json), "invalid-request", "{}", dear.json);
    assert!(
        dear.json["detail"].as_str().unwrap_or("").contains("9000000000"),
        "the detail names the limit: {}",
        dear.json
    );
    let oversized = put(
        &stack,
        "1",
        &json!({"name": "x".repeat(20_000), "price": 1250, "currency": "USD", "available": 10}),
    )
    .await;
    assert_eq!(
        (oversized.status, slug(&oversized.json)),
        (413, "payload-too-large"),
        "{}",
        oversized.json
    );

    // Nothing changed, and the keys refused for validation are free for a corrected request.
    assert_eq!(
        stack.item(1).await,
        json!({"id": 1, "name": "Mug", "price": 1250, "currency": "USD", "available": 9, "reserved": 1, "sold": 0})
    );
    let corrected = reserve(&stack, "k1", 1, 1).await;
    assert_eq!(corrected.status, 201, "{}", corrected.json);
}
