//! Every stock script against a real Redis: the happy path, the replay, the wrong state and
//! the lapsed reservation.

use std::time::Duration;

use actix_web::http::StatusCode;
use shared::idempotency::{Begin, IdempotencyStore, KeyRef, StoredResponse};
use shared::testing::TestRedis;

use super::store::*;
use crate::error::StockError;
use crate::items::ItemPut;
use crate::store::Store;

const TTL: Duration = Duration::from_millis(400);

async fn stock(redis: &TestRedis, available: u64) -> Store {
    let store = Store::new(redis.pool(), TTL, Duration::from_secs(60));
    let _ = store.put_item(1, &item_put("Mug", 250, available, None), None).await;
    store
}

fn idem(redis: &TestRedis) -> IdempotencyStore {
    IdempotencyStore::new(redis.pool(), Duration::from_secs(60), Duration::from_secs(5))
}

/// A key with no place for an answer: the scripts store none and take no key.
fn plain(key: &str) -> KeyRef {
    KeyRef::new("stock:reserve", key, "fp".into())
}

async fn counts(store: &Store) -> (i64, i64, i64) {
    match store.get_item(1).await {
        Ok(Some(item)) => (item.available, item.reserved, item.sold),
        other => panic!("item 1: {other:?}"),
    }
}

/// Reserves `quantity` of item 1 under the Idempotency-Key `key`.
async fn reserve(store: &Store, idem: &IdempotencyStore, key: &str, quantity: u32) -> ReserveOutcome {
    let rid = new_reservation_id(1);
    let resp = StoredResponse::json(StatusCode::CREATED, &"");
    let key_ref = plain(key);
    let answer = idem.answer(&key_ref, "tok", &resp);
    match store
        .reserve(1, quantity, &rid, key, &answer, store.reservation_ttl)
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => panic!("reserve: {e}"),
    }
}

fn reserved(outcome: ReserveOutcome) -> (String, bool) {
    match outcome {
        ReserveOutcome::Reserved { reservation, fresh } => (reservation.reservation_id, fresh),
        _ => panic!("expected a reservation"),
    }
}

async fn transition(store: &Store, idem: &IdempotencyStore, action: Transition, rid: &str) -> TransitionOutcome {
    let key = plain("t");
    let resp = StoredResponse::json(StatusCode::OK, &"");
    match store.transition(action, rid, &idem.answer(&key, "tok", &resp)).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("{}: {e}", action.name()),
    }
}

fn item_put(name: &'static str, price: u64, available: u64, owner: Option<&'static str>) -> ItemPut<'static> {
    ItemPut {
        name,
        price,
        currency: "USD",
        available,
        owner,
    }
}

#[tokio::test]
async fn upsert_lets_an_account_change_only_its_own_items_and_the_platform_any() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let (alice, bob) = ("acct_a", "acct_b");

    let created = store
        .put_item(2, &item_put("Alice's mug", 100, 3, None), Some(alice))
        .await;
    assert_eq!(
        created.ok().and_then(|i| i.owner_id).as_deref(),
        Some(alice),
        "the creator owns it"
    );
    let by_bob = store.put_item(2, &item_put("Bob's now", 1, 0, None), Some(bob)).await;
    assert!(matches!(
        by_bob,
        Err(StockError::Common(shared::CommonError::Forbidden(_)))
    ));
    let on_platforms = store
        .put_item(1, &item_put("Platform mug", 1, 0, None), Some(alice))
        .await;
    assert!(matches!(
        on_platforms,
        Err(StockError::Common(shared::CommonError::Forbidden(_)))
    ));
    let item = store.get_item(2).await.ok().flatten();
    assert_eq!(
        item.as_ref().map(|i| (i.name.as_str(), i.available)),
        Some(("Alice's mug", 3)),
        "unchanged"
    );

    let restocked = store
        .put_item(2, &item_put("Alice's mug", 100, 9, None), Some(alice))
        .await;
    assert_eq!(restocked.ok().map(|i| i.available), Some(9));
    let moved = store
        .put_item(2, &item_put("Alice's mug", 100, 9, Some(bob)), None)
        .await;
    assert_eq!(
        moved.ok().and_then(|i| i.owner_id).as_deref(),
        Some(bob),
        "the platform moves it"
    );
    let kept = store.put_item(2, &item_put("Bob's mug", 100, 9, None), None).await;
    assert_eq!(
        kept.ok().and_then(|i| i.owner_id).as_deref(),
        Some(bob),
        "left out, the owner is kept"
    );
}

#[tokio::test]
async fn upsert_creates_restocks_keeping_reserved_and_sold_and_the_seed_never_overwrites() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let _ = reserve(&store, &idem, "k1", 2).await;

    let _ = store.put_item(1, &item_put("Big mug", 300, 10, None), None).await;
    let seeded = store.seed_demo(99).await.ok();

    assert_eq!(counts(&store).await, (10, 2, 0));
    assert_eq!(seeded, Some(false), "a catalogue with items is not seeded");
    assert_eq!(
        store.get_item(1).await.ok().flatten().map(|i| i.name),
        Some("Big mug".into())
    );
}

#[tokio::test]
async fn reserve_moves_units_and_its_key_finds_the_same_reservation_again() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);

    let (first, fresh) = reserved(reserve(&store, &idem, "k1", 2).await);
    let (again, fresh_again) = reserved(reserve(&store, &idem, "k1", 2).await);

    assert!(fresh && !fresh_again);
    assert_eq!(first, again);
    assert_eq!(counts(&store).await, (3, 2, 0));
}

#[tokio::test]
async fn reserve_refuses_more_than_is_available_and_an_unknown_item() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 1).await;
    let idem = idem(&redis);

    let too_many = reserve(&store, &idem, "k1", 2).await;
    let rid = new_reservation_id(7);
    let resp = StoredResponse::json(StatusCode::CREATED, &"");
    let unknown = store
        .reserve(
            7,
            1,
            &rid,
            "k2",
            &idem.answer(&plain("k2"), "tok", &resp),
            store.reservation_ttl,
        )
        .await
        .ok();

    assert!(matches!(too_many, ReserveOutcome::OutOfStock { available: 1 }));
    assert!(matches!(unknown, Some(ReserveOutcome::NotFound)));
    assert_eq!(counts(&store).await, (1, 0, 0));
}

#[tokio::test]
async fn reserve_settles_the_key_it_takes_without_a_body_and_its_replay_renders_the_same_bytes() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis).effects_take_keys(true);
    let key = plain("k1").with_answer_at(answer_key(1, "reserve", "k1"));
    let template = StoredResponse {
        status: 201,
        content_type: "application/json".into(),
        body: reservation_template(1, 2),
        location: None,
    };
    let attempt = |token: &'static str| {
        let (store, idem, key, template) = (&store, &idem, &key, &template);
        async move {
            store
                .reserve(
                    1,
                    2,
                    &new_reservation_id(1),
                    "k1",
                    &idem.answer(key, token, template),
                    store.reservation_ttl,
                )
                .await
                .unwrap_or_else(|e| panic!("reserve: {e}"))
        }
    };

    let first = attempt("tok1").await;
    let replay = attempt("tok2").await;

    let ReserveOutcome::Reserved {
        reservation,
        fresh: true,
    } = first
    else {
        panic!("expected a fresh reservation, got {first:?}");
    };
    let ReserveOutcome::Refused(Begin::Replay(stored)) = replay else {
        panic!("expected a replay, got {replay:?}");
    };
    assert_eq!(stored.status, 201);
    assert_eq!(
        String::from_utf8_lossy(&stored.body),
        serde_json::to_string(&reservation).unwrap_or_default(),
        "the replay is the answer the first request rendered, byte for byte"
    );
    assert_eq!(counts(&store).await, (3, 2, 0), "reserved once");
    let field = |name: &'static str| {
        let (idem, key) = (&idem, &key);
        async move { idem.field(key, name).await.expect("field") }
    };
    let (state, body, made) = (field("state").await, field("body").await, field("made").await);
    assert_eq!(state.as_deref(), Some("done"));
    assert_eq!(body, None, "the key's record keeps no body: its replay renders it");
    assert_eq!(made.as_deref(), Some(reservation.reservation_id.as_str()));

    // Should what the key made be gone (deleted by hand), the replay says so, not 201 empty.
    let mut conn = redis.pool().get().await.expect("redis");
    let _: i64 = redis::cmd("DEL")
        .arg(format!(
            "{}{}",
            crate::store::reservation_prefix(1),
            reservation.reservation_id
        ))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let lost = store
        .reserve(
            1,
            2,
            &new_reservation_id(1),
            "k1",
            &idem.answer(&key, "tok3", &template),
            store.reservation_ttl,
        )
        .await;
    assert!(lost.is_err(), "{lost:?}");
    assert_eq!(counts(&store).await, (3, 2, 0), "nothing reserved again");
}

#[tokio::test]
async fn a_complete_that_took_its_key_keeps_no_body_and_replays_the_answer_its_request_carries() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let (rid, _) = reserved(reserve(&store, &idem(&redis), "r1", 2).await);
    let idem = idem(&redis).effects_take_keys(true);
    let key = KeyRef::new("stock:complete", "c1", "fp".into()).with_answer_at(answer_key(1, "complete", "c1"));
    let success = StoredResponse::json(
        StatusCode::OK,
        &serde_json::json!({"reservationId": rid, "status": "completed"}),
    );

    let first = store
        .transition(Transition::Complete, &rid, &idem.answer(&key, "tok1", &success))
        .await;
    let replay = store
        .transition(Transition::Complete, &rid, &idem.answer(&key, "tok2", &success))
        .await;

    assert!(matches!(first, Ok(TransitionOutcome::Completed)), "{first:?}");
    let Ok(TransitionOutcome::Refused(Begin::Replay(stored))) = replay else {
        panic!("expected a replay, got {replay:?}");
    };
    assert_eq!((stored.status, stored.body), (200, success.body.clone()));
    assert_eq!(counts(&store).await, (3, 0, 2), "sold once");
    let state = idem.field(&key, "state").await.expect("field");
    let body = idem.field(&key, "body").await.expect("field");
    assert_eq!((state.as_deref(), body), (Some("done"), None));
}

#[tokio::test]
async fn reserve_names_its_reservation_in_the_answers_record_and_a_rerun_finds_it_there() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    // Not taking keys: the answer goes beside the reservation, as on a cluster.
    let idem = idem(&redis);
    let key = plain("k1").with_answer_at(answer_key(1, "reserve", "k1"));
    let run = |rid: String| {
        let (store, idem, key) = (&store, &idem, &key);
        async move {
            let template = StoredResponse {
                status: 201,
                content_type: "application/json".into(),
                body: reservation_template(1, 2),
                location: None,
            };
            let answer = idem.answer(key, "tok", &template);
            reserved(
                store
                    .reserve(1, 2, &rid, "k1", &answer, store.reservation_ttl)
                    .await
                    .unwrap_or_else(|e| panic!("reserve: {e}")),
            )
        }
    };

    let (first, fresh) = run(new_reservation_id(1)).await;
    // A rerun of the script (its owner died before settling the key) under a new id.
    let (again, fresh_again) = run(new_reservation_id(1)).await;

    assert!(fresh && !fresh_again);
    assert_eq!(first, again, "the reservation the answer's record names");
    assert_eq!(counts(&store).await, (3, 2, 0), "reserved once");
    let mut conn = redis.pool().get().await.expect("redis");
    let (made, body): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(answer_key(1, "reserve", "k1"))
        .arg("made")
        .arg("body")
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    let marker: bool = redis::cmd("EXISTS")
        .arg(crate::store::op_key(1, "k1"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    // Stored beside, the answer is the template filled in: what a replay sends as it is.
    let body = body.unwrap_or_default();
    assert!(body.contains(&first) && !body.contains('\u{1}'), "{body:?}");
    assert_eq!(made, Some(first));
    assert!(!marker, "no marker beside a record that names the reservation");
}

#[tokio::test]
async fn release_returns_units_once_and_refuses_a_completed_reservation() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let (rid, _) = reserved(reserve(&store, &idem, "k1", 2).await);
    let (done, _) = reserved(reserve(&store, &idem, "k2", 1).await);
    let _ = transition(&store, &idem, Transition::Complete, &done).await;

    let first = transition(&store, &idem, Transition::Release, &rid).await;
    let again = transition(&store, &idem, Transition::Release, &rid).await;
    let completed = transition(&store, &idem, Transition::Release, &done).await;
    let unknown = transition(&store, &idem, Transition::Release, &new_reservation_id(1)).await;

    assert!(matches!(first, TransitionOutcome::Released));
    assert!(matches!(again, TransitionOutcome::Released));
    assert!(matches!(completed, TransitionOutcome::Completed));
    assert!(matches!(unknown, TransitionOutcome::NotFound));
    assert_eq!(counts(&store).await, (4, 0, 1));
}

#[tokio::test]
async fn complete_sells_once_and_refuses_a_released_reservation() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let (rid, _) = reserved(reserve(&store, &idem, "k1", 2).await);
    let (released, _) = reserved(reserve(&store, &idem, "k2", 1).await);
    let _ = transition(&store, &idem, Transition::Release, &released).await;

    let first = transition(&store, &idem, Transition::Complete, &rid).await;
    let again = transition(&store, &idem, Transition::Complete, &rid).await;
    let refused = transition(&store, &idem, Transition::Complete, &released).await;

    assert!(matches!(first, TransitionOutcome::Completed));
    assert!(matches!(again, TransitionOutcome::Completed));
    assert!(matches!(refused, TransitionOutcome::Released));
    assert_eq!(counts(&store).await, (3, 0, 2));
}

#[tokio::test]
async fn restock_returns_a_completed_reservations_units_once_and_refuses_any_other() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let (sold, _) = reserved(reserve(&store, &idem, "k1", 2).await);
    let (held, _) = reserved(reserve(&store, &idem, "k2", 1).await);
    let _ = transition(&store, &idem, Transition::Complete, &sold).await;
    assert_eq!(counts(&store).await, (2, 1, 2));

    let first = store.restock(&sold).await.ok();
    let again = store.restock(&sold).await.ok();
    let not_sold = store.restock(&held).await.ok();
    let unknown = store.restock("rsv_nope").await.ok();

    assert_eq!(first, Some(RestockOutcome::Restocked));
    assert_eq!(again, Some(RestockOutcome::Restocked), "restocked once, answered again");
    assert_eq!(not_sold, Some(RestockOutcome::NotCompleted));
    assert_eq!(unknown, Some(RestockOutcome::NotFound));
    assert_eq!(counts(&store).await, (4, 1, 0));
    // A restocked reservation answers release and complete as the completed one it was.
    let release = transition(&store, &idem, Transition::Release, &sold).await;
    assert!(matches!(release, TransitionOutcome::Completed));
    assert_eq!(counts(&store).await, (4, 1, 0));
}

#[tokio::test]
async fn a_lapsed_reservation_cannot_be_completed_and_its_units_return() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let (rid, _) = reserved(reserve(&store, &idem, "k1", 2).await);

    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let refused = transition(&store, &idem, Transition::Complete, &rid).await;
    let release = transition(&store, &idem, Transition::Release, &rid).await;

    assert!(matches!(refused, TransitionOutcome::Released));
    assert!(
        matches!(release, TransitionOutcome::Released),
        "released or expired is done"
    );
    assert_eq!(counts(&store).await, (5, 0, 0));
}

#[tokio::test]
async fn a_reservation_is_one_string_with_its_expiry_and_its_status_changes_are_appended() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let (rid, _) = reserved(reserve(&store, &idem, "k1", 2).await);
    let rk = format!("{}{rid}", crate::store::reservation_prefix(1));
    let mut conn = redis.conn().await;
    let kind: String = redis::cmd("TYPE").arg(&rk).query_async(&mut conn).await.expect("TYPE");
    let ttl: i64 = redis::cmd("PTTL").arg(&rk).query_async(&mut conn).await.expect("PTTL");
    assert_eq!(kind, "string", "written by one SET with its expiry");
    assert!(ttl > TTL.as_millis() as i64, "kept past its hold: {ttl}");

    let _ = transition(&store, &idem, Transition::Complete, &rid).await;
    let _ = store.restock(&rid).await;
    let text: String = redis::cmd("GET").arg(&rk).query_async(&mut conn).await.expect("GET");
    assert!(
        text.starts_with("q\n2\np\n500\nu\nUSD\ns\nreserved\nx\n") && text.ends_with("\ns\ncompleted\ns\nrestocked"),
        "{text:?}"
    );
    let ttl_after: i64 = redis::cmd("PTTL").arg(&rk).query_async(&mut conn).await.expect("PTTL");
    assert!(ttl_after > 0 && ttl_after <= ttl, "expiry kept: {ttl_after}");
    assert_eq!(counts(&store).await, (5, 0, 0));
    // The last status is the one read: restocked answers as completed.
    assert!(matches!(
        transition(&store, &idem, Transition::Release, &rid).await,
        TransitionOutcome::Completed
    ));
}

#[tokio::test]
async fn a_reservation_kept_as_a_hash_by_an_earlier_version_still_completes_and_lapses() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let mut conn = redis.conn().await;
    // Two reservations as earlier versions wrote them (and the units they hold), one lapsed.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    for (rid, expires) in [("rsv_1_old", now + 60_000), ("rsv_1_lapsed", now - 1)] {
        let rk = format!("{}{rid}", crate::store::reservation_prefix(1));
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(&rk)
            .arg(&[
                "quantity", "1", "totalFee", "250", "currency", "USD", "status", "reserved",
            ])
            .arg("expiresAt")
            .arg(expires)
            .ignore()
            .cmd("ZADD")
            .arg("stock:{item:1}:expiring")
            .arg(expires)
            .arg(rid)
            .ignore()
            .cmd("HINCRBY")
            .arg("stock:{item:1}")
            .arg("available")
            .arg(-1)
            .ignore()
            .cmd("HINCRBY")
            .arg("stock:{item:1}")
            .arg("reserved")
            .arg(1)
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("old reservations");
    }
    assert_eq!(counts(&store).await, (3, 2, 0));

    assert_eq!(store.sweep_all().await.ok(), Some(1), "the lapsed one");
    let done = transition(&store, &idem, Transition::Complete, "rsv_1_old").await;
    assert!(matches!(done, TransitionOutcome::Completed), "{done:?}");
    assert_eq!(counts(&store).await, (4, 0, 1));
    let status: Option<String> = redis::cmd("HGET")
        .arg("stock:{item:1}:rsv:rsv_1_old")
        .arg("status")
        .query_async(&mut conn)
        .await
        .expect("still a hash");
    assert_eq!(status.as_deref(), Some("completed"));
}

#[tokio::test]
async fn sweep_returns_every_lapsed_reservation_and_leaves_live_ones() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let _ = reserve(&store, &idem, "k1", 2).await;
    let _ = reserve(&store, &idem, "k2", 1).await;

    let early = store.sweep_all().await.ok();
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let (live, _) = reserved(reserve(&store, &idem, "k3", 1).await);
    // The item could cover k3 without the lapsed units: reserve left them to the sweeper.
    assert_eq!(counts(&store).await, (1, 4, 0));
    let late = store.sweep_all().await.ok();

    assert_eq!((early, late), (Some(0), Some(2)));
    assert_eq!(counts(&store).await, (4, 1, 0));
    assert!(matches!(
        transition(&store, &idem, Transition::Complete, &live).await,
        TransitionOutcome::Completed
    ));
}

#[tokio::test]
async fn a_reserve_the_item_covers_only_with_lapsed_units_sweeps_them_first() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let _ = reserve(&store, &idem, "k1", 3).await;
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;

    // 2 available, 3 held by a lapsed reservation: no sweeper has run, yet 4 fit.
    let (live, _) = reserved(reserve(&store, &idem, "k2", 4).await);

    assert_eq!(counts(&store).await, (1, 4, 0));
    assert_eq!(store.sweep_all().await.ok(), Some(0), "reserve swept the lapsed one");
    assert!(matches!(
        transition(&store, &idem, Transition::Complete, &live).await,
        TransitionOutcome::Completed
    ));
}

#[tokio::test]
async fn sweep_alone_returns_lapsed_units_when_no_request_touches_the_item() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let _ = reserve(&store, &idem, "k1", 2).await;

    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let swept = store.sweep_all().await.ok();

    assert_eq!(swept, Some(1));
    assert_eq!(counts(&store).await, (5, 0, 0));
}

#[tokio::test]
async fn a_reservation_asked_to_hold_longer_outlives_the_ttl_and_its_answer_says_until_when() {
    let redis = TestRedis::start().await;
    let store = stock(&redis, 5).await;
    let idem = idem(&redis);
    let rid = new_reservation_id(1);
    let resp = StoredResponse::json(StatusCode::CREATED, &"");
    let key_ref = plain("long");
    let hold = Duration::from_secs(3600);
    let outcome = store
        .reserve(1, 2, &rid, "long", &idem.answer(&key_ref, "tok", &resp), hold)
        .await
        .expect("reserve");
    let ReserveOutcome::Reserved { reservation, .. } = outcome else {
        panic!("expected a reservation");
    };
    let until = shared::time::parse_rfc3339_ms(&reservation.expires_at).expect("expiresAt");
    let now = shared::time::now_ms();
    assert!(
        until > now + 3_500_000 && until <= now + 3_600_000,
        "{}",
        reservation.expires_at
    );
    tokio::time::sleep(TTL * 2).await;
    store.sweep_all().await.expect("sweep");
    assert_eq!(counts(&store).await, (3, 2, 0), "held past RESERVATION_TTL");
}
