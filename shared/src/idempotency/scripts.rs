//! The idempotency scripts, from the `.lua` files beside this one: three libraries that other
//! scripts include ([`BEGIN`], [`SETTLE`], [`ANSWER`]: the order service takes a key and creates
//! its order in one step; stock and payment store an answer with the effect), and the
//! scripts [`super::IdempotencyStore`] runs on a key's record alone.

use std::sync::LazyLock;

use crate::lua::Script;

use crate::lua::{self, CLOCK, Lib};

/// `record_get` and the string form of a record written done at once.
pub static RECORD: Lib = Lib {
    name: "record",
    source: include_str!("record.lua"),
    needs: &[],
};

/// `hold` and `begin`: what a request does with its key.
pub static BEGIN: Lib = Lib {
    name: "begin",
    source: include_str!("begin.lua"),
    needs: &[&CLOCK, &RECORD],
};

/// `finish` and `free`: a key's settling.
pub static SETTLE: Lib = Lib {
    name: "settle",
    source: include_str!("settle.lua"),
    needs: &[&RECORD],
};

/// `answer_from`, `take_key`, `store_answer`, `hold_key`: an answer stored with the effect.
pub static ANSWER: Lib = Lib {
    name: "answer",
    source: include_str!("answer.lua"),
    needs: &[&BEGIN],
};

pub(super) static BEGIN_KEY: LazyLock<Script> = LazyLock::new(|| lua::script(&[&BEGIN], include_str!("begin_key.lua")));
pub(super) static FINISH_KEY: LazyLock<Script> =
    LazyLock::new(|| lua::script(&[&SETTLE], include_str!("finish_key.lua")));
pub(super) static FREE_KEY: LazyLock<Script> = LazyLock::new(|| lua::script(&[&SETTLE], include_str!("free_key.lua")));
pub(super) static BEGIN_NOTED: LazyLock<Script> =
    LazyLock::new(|| lua::script(&[&BEGIN], include_str!("begin_noted.lua")));
pub(super) static RENOTE_KEY: LazyLock<Script> =
    LazyLock::new(|| lua::script(&[&RECORD], include_str!("renote_key.lua")));
pub(super) static RENEW_KEY: LazyLock<Script> =
    LazyLock::new(|| lua::script(&[&CLOCK, &RECORD], include_str!("renew_key.lua")));
/// One field of a key's record, whichever way it is kept (KEYS: the record; ARGV: the field).
pub(super) static RECORD_FIELD: LazyLock<Script> =
    LazyLock::new(|| lua::script(&[&RECORD], "return record_get(KEYS[1], {ARGV[1]})[1]"));

#[cfg(test)]
mod tests {
    //! Each script against a real Redis: the new key, the replay, the wrong owner or state, and
    //! the lapsed lease.
    use std::time::Duration;

    use actix_web::http::StatusCode;

    use super::super::{Answer, Begin, IdempotencyStore, KeyRef, StoredResponse};
    use super::*;
    use crate::testing::TestRedis;

    const LEASE: Duration = Duration::from_millis(300);

    fn store(redis: &TestRedis) -> IdempotencyStore {
        IdempotencyStore::new(redis.pool(), Duration::from_secs(60), LEASE)
    }

    fn created() -> StoredResponse {
        StoredResponse::json(StatusCode::CREATED, &serde_json::json!({"id": 1})).with_location("/x/1".into())
    }

    async fn field(redis: &TestRedis, key: &KeyRef, name: &str) -> Option<String> {
        store(redis).field(key, name).await.ok().flatten()
    }

    /// `command key` (TYPE, PTTL, DEL …) and its answer.
    async fn on_key<T: redis::FromRedisValue>(
        conn: &mut redis::aio::MultiplexedConnection,
        command: &str,
        key: impl redis::ToRedisArgs,
    ) -> T {
        redis::cmd(command)
            .arg(key)
            .query_async(conn)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"))
    }

    #[tokio::test]
    async fn begin_key_takes_a_new_key_then_refuses_it_while_held_and_for_another_body() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp1".into());

        let first = idem.begin(&key, "tok1").await.ok();
        let again = idem.begin(&key, "tok2").await.ok();
        let other_body = idem.begin(&KeyRef::new("t:op", "k1", "fp2".into()), "tok3").await.ok();

        assert_eq!(
            first,
            Some(Begin::Execute {
                token: "tok1".into(),
                resumed: false
            })
        );
        assert!(matches!(again, Some(Begin::InUse { retry_after_ms }) if retry_after_ms <= 300));
        assert_eq!(other_body, Some(Begin::Reused));
        assert_eq!(field(&redis, &key, "state").await.as_deref(), Some("running"));
    }

    #[tokio::test]
    async fn a_record_keeps_64_bits_of_fingerprint_and_ones_that_kept_128_or_256_still_match() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let fp = crate::body::fingerprint("POST", "/x", br#"{"a":1}"#);
        let other = crate::body::fingerprint("POST", "/x", br#"{"a":2}"#);
        let key = KeyRef::new("t:op", "k1", fp.clone());
        let _ = idem.begin(&key, "tok1").await;
        assert_eq!(field(&redis, &key, "fp").await.as_deref(), Some(&fp[..16]));
        let reused = idem.begin(&KeyRef::new("t:op", "k1", other.clone()), "tok2").await.ok();
        assert_eq!(reused, Some(Begin::Reused));

        // Records earlier versions wrote, settled: with the whole fingerprint, and with 128 bits.
        let mut conn = redis.conn().await;
        for (k, kept) in [("k2", fp.as_str()), ("k3", &fp[..32])] {
            let old = KeyRef::new("t:op", k, fp.clone());
            let _: i64 = redis::cmd("HSET")
                .arg(old.redis_key())
                .arg(&["state", "done", "fp", kept, "status", "201", "body", "{}"])
                .query_async(&mut conn)
                .await
                .expect("HSET");
            let same = idem.begin(&old, "tok3").await.ok();
            let another = idem.begin(&KeyRef::new("t:op", k, other.clone()), "tok4").await.ok();

            assert!(
                matches!(same, Some(Begin::Replay(StoredResponse { status: 201, .. }))),
                "{k}: {same:?}"
            );
            assert_eq!(another, Some(Begin::Reused), "{k}");
        }
    }

    #[tokio::test]
    async fn begin_key_hands_a_lapsed_lease_over_with_the_first_owners_token() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp".into());
        let _ = idem.begin(&key, "tok1").await;

        tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
        let taken_over = idem.begin(&key, "tok2").await.ok();

        assert_eq!(
            taken_over,
            Some(Begin::Execute {
                token: "tok1".into(),
                resumed: true
            })
        );
    }

    #[tokio::test]
    async fn finish_key_stores_the_answer_once_and_begin_key_replays_it_byte_for_byte() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp".into());
        let _ = idem.begin(&key, "tok1").await;

        let stranger = idem
            .finish(&key, "someone-else", &StoredResponse::json(StatusCode::OK, &1))
            .await;
        let owner = idem.finish(&key, "tok1", &created()).await;
        let late = idem
            .finish(&key, "tok1", &StoredResponse::json(StatusCode::OK, &2))
            .await;
        let replay = idem.begin(&key, "tok9").await.ok();

        assert!(stranger.is_ok() && owner.is_ok() && late.is_ok());
        assert_eq!(replay, Some(Begin::Replay(created())));
    }

    #[tokio::test]
    async fn a_json_answer_is_stored_without_its_content_type_and_replayed_with_it_any_other_keeps_its_own() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let json = KeyRef::new("t:op", "json", "fp".into());
        let problem = KeyRef::new("t:op", "problem", "fp".into());
        let refused = StoredResponse::problem(&crate::problem::Problem::new(
            StatusCode::CONFLICT,
            "out-of-stock",
            "Out of stock",
            "none left",
        ));
        let _ = idem.begin(&json, "tok1").await;
        let _ = idem.begin(&problem, "tok1").await;

        let _ = idem.finish(&json, "tok1", &created()).await;
        let _ = idem.finish(&problem, "tok1", &refused).await;

        assert_eq!(
            field(&redis, &json, "ctype").await,
            None,
            "application/json is not written"
        );
        assert_eq!(
            field(&redis, &problem, "ctype").await.as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(idem.begin(&json, "tok2").await.ok(), Some(Begin::Replay(created())));
        assert_eq!(idem.begin(&problem, "tok2").await.ok(), Some(Begin::Replay(refused)));
    }

    #[tokio::test]
    async fn finish_key_writes_a_vanished_record_again_whole() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "gone", "fp".into());

        let _ = idem.finish(&key, "tok1", &created()).await;

        assert_eq!(idem.begin(&key, "tok2").await.ok(), Some(Begin::Replay(created())));
        assert_eq!(field(&redis, &key, "token").await.as_deref(), Some("tok1"));
    }

    #[tokio::test]
    async fn free_key_frees_only_its_owners_running_key() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp".into());
        let _ = idem.begin(&key, "tok1").await;

        let _ = idem.free(&key, "someone-else").await;
        let held = field(&redis, &key, "state").await;
        let _ = idem.free(&key, "tok1").await;
        let freed = field(&redis, &key, "state").await;
        let _ = idem.begin(&key, "tok2").await;
        let _ = idem.finish(&key, "tok2", &created()).await;
        let _ = idem.free(&key, "tok2").await;

        assert_eq!(held.as_deref(), Some("running"));
        assert_eq!(freed, None);
        assert_eq!(
            field(&redis, &key, "state").await.as_deref(),
            Some("done"),
            "a done key is never freed"
        );
    }

    #[tokio::test]
    async fn renew_key_extends_only_its_owners_running_lease() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp".into());
        let _ = idem.begin(&key, "tok1").await;

        let stranger = idem.renew(&key, "someone-else").await.ok();
        tokio::time::sleep(LEASE / 2).await;
        let owner = idem.renew(&key, "tok1").await.ok();
        tokio::time::sleep(LEASE * 2 / 3).await;
        let still_held = idem.begin(&key, "tok2").await.ok();
        let _ = idem.finish(&key, "tok1", &created()).await;
        let after_done = idem.renew(&key, "tok1").await.ok();

        assert_eq!((stranger, owner, after_done), (Some(false), Some(true), Some(false)));
        assert!(matches!(still_held, Some(Begin::InUse { .. })), "{still_held:?}");
    }

    #[tokio::test]
    async fn begin_noted_keeps_the_first_owners_note_for_whoever_takes_the_key_over() {
        use super::super::Note;
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp".into());

        let (first, note) = idem.begin_noted(&key, "tok1", "card-a").await.expect("begin");
        assert!(matches!(first, Begin::Execute { resumed: false, .. }));
        assert_eq!(
            note,
            Some(Note {
                text: "card-a".into(),
                inherited: false
            })
        );
        let (busy, none) = idem.begin_noted(&key, "tok2", "card-b").await.expect("busy");
        assert!(matches!(busy, Begin::InUse { .. }) && none.is_none(), "{busy:?}");

        assert!(!idem.renote(&key, "someone-else", "card-c").await.expect("renote"));
        assert!(idem.renote(&key, "tok1", "card-b").await.expect("renote"));
        idem.yield_key(&key, "tok1").await.expect("yield");
        // Yielded: taken over at once, with the note as the first owner left it.
        let (resumed, note) = idem.begin_noted(&key, "tok3", "card-a").await.expect("resume");
        assert!(matches!(resumed, Begin::Execute { resumed: true, .. }), "{resumed:?}");
        assert_eq!(
            note,
            Some(Note {
                text: "card-b".into(),
                inherited: true
            })
        );

        let _ = idem.finish(&key, "tok1", &created()).await;
        assert!(
            !idem.renote(&key, "tok1", "card-a").await.expect("renote"),
            "a done key keeps its record"
        );
        let (replay, _) = idem.begin_noted(&key, "tok4", "card-a").await.expect("replay");
        assert!(matches!(replay, Begin::Replay(_)), "{replay:?}");
    }

    #[tokio::test]
    async fn a_running_record_is_one_string_changed_by_appending_and_a_body_with_a_newline_makes_it_a_hash() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let mut conn = redis.conn().await;
        let key = KeyRef::new("t:op", "k1", "fp".into());
        let (_, _) = idem.begin_noted(&key, "tok1", "card-a").await.expect("begin");
        let kind: String = on_key(&mut conn, "TYPE", key.redis_key()).await;
        let ttl: i64 = on_key(&mut conn, "PTTL", key.redis_key()).await;
        assert_eq!(kind, "string", "taken in one SET with its expiry");
        assert!(ttl > 50_000, "{ttl}");

        assert!(idem.renote(&key, "tok1", "card-b").await.expect("renote"));
        assert!(idem.renew(&key, "tok1").await.expect("renew"));
        let text: String = redis::cmd("GET")
            .arg(key.redis_key())
            .query_async(&mut conn)
            .await
            .expect("GET");
        assert!(
            text.starts_with("e\nrunning\nf\nfp\nt\ntok1\nl\n") && text.contains("\nn\ncard-a\nn\ncard-b\nl\n"),
            "written once, each name its letter, then appended to: {text:?}"
        );
        assert_eq!(
            field(&redis, &key, "note").await.as_deref(),
            Some("card-b"),
            "the last note wins"
        );
        assert_eq!(field(&redis, &key, "state").await.as_deref(), Some("running"));

        // An answer whose body has a newline cannot be a string's field: the record becomes a
        // hash of everything it held, its expiry kept, and replays byte for byte.
        let pretty = StoredResponse {
            status: 201,
            content_type: "application/json".into(),
            body: b"{\n  \"id\": 1\n}".to_vec(),
            location: None,
        };
        idem.finish(&key, "tok1", &pretty).await.expect("finish");
        let kind: String = on_key(&mut conn, "TYPE", key.redis_key()).await;
        let ttl: i64 = on_key(&mut conn, "PTTL", key.redis_key()).await;
        assert_eq!(kind, "hash");
        assert!(ttl > 50_000, "expiry kept: {ttl}");
        assert_eq!(field(&redis, &key, "note").await.as_deref(), Some("card-b"));
        assert_eq!(field(&redis, &key, "fp").await.as_deref(), Some("fp"));
        let replay = idem.begin(&key, "tok2").await.expect("replay");
        assert!(
            matches!(&replay, Begin::Replay(r) if r.body == pretty.body && r.status == 201),
            "{replay:?}"
        );

        // A string record settled with a compact body stays a string: one APPEND.
        let other = KeyRef::new("t:op", "k2", "fp".into());
        let _ = idem.begin(&other, "tok1").await;
        idem.finish(&other, "tok1", &created()).await.expect("finish");
        let kind: String = on_key(&mut conn, "TYPE", other.redis_key()).await;
        assert_eq!(kind, "string");
        let replay = idem.begin(&other, "tok2").await.expect("replay");
        assert_eq!(replay, Begin::Replay(created()));
    }

    #[tokio::test]
    async fn a_running_record_kept_as_a_hash_by_an_earlier_version_is_still_renewed_and_settled() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let mut conn = redis.conn().await;
        let key = KeyRef::new("t:op", "k1", "fp".into());
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(key.redis_key())
            .arg(&[
                "state", "running", "fp", "fp", "token", "tok1", "lease", "0", "note", "card-a",
            ])
            .ignore()
            .cmd("PEXPIRE")
            .arg(key.redis_key())
            .arg(60_000)
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("an old record");
        assert!(idem.renote(&key, "tok1", "card-b").await.expect("renote"));
        assert!(idem.renew(&key, "tok1").await.expect("renew"));
        idem.finish(&key, "tok1", &created()).await.expect("finish");
        let kind: String = on_key(&mut conn, "TYPE", key.redis_key()).await;
        assert_eq!(kind, "hash");
        assert_eq!(idem.begin(&key, "tok2").await.ok(), Some(Begin::Replay(created())));
        assert_eq!(field(&redis, &key, "note").await.as_deref(), Some("card-b"));
    }

    #[tokio::test]
    async fn a_string_record_with_names_in_full_from_an_earlier_version_is_still_read_and_settled() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let mut conn = redis.conn().await;
        let key = KeyRef::new("t:op", "k1", "fp".into());
        let _: () = redis::cmd("SET")
            .arg(key.redis_key())
            .arg("state\nrunning\nfp\nfp\ntoken\ntok1\nlease\n0\nnote\ncard-a")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .expect("an old record");
        assert_eq!(idem.token_of(&key).await.expect("token").as_deref(), Some("tok1"));
        assert!(idem.renote(&key, "tok1", "card-b").await.expect("renote"));
        assert!(idem.renew(&key, "tok1").await.expect("renew"));
        assert_eq!(
            field(&redis, &key, "note").await.as_deref(),
            Some("card-b"),
            "a letter after a name wins"
        );
        idem.finish(&key, "tok1", &created()).await.expect("finish");
        assert_eq!(idem.begin(&key, "tok2").await.ok(), Some(Begin::Replay(created())));
        let text: String = on_key(&mut conn, "GET", key.redis_key()).await;
        assert!(
            text.starts_with("state\nrunning\n") && text.contains("\ne\ndone"),
            "{text:?}"
        );
    }

    /// An effect's script built as stock's and payment's are: take the key, store the answer.
    static EFFECT: LazyLock<Script> = LazyLock::new(|| {
        lua::script(
            &[&ANSWER],
            "local ans = answer_from(ARGV, 2)\n\
             local refused = take_key(KEYS[2], ans)\n\
             if refused then return refused end\n\
             if ARGV[1] == 'seen' then made_by(KEYS[2], ans) end\n\
             redis.call('INCR', KEYS[1])\n\
             if (ARGV[1] == 'answer' or ARGV[1] == 'seen') and KEYS[2] then store_answer(KEYS[2], ans) end\n\
             if ARGV[1] == 'made' and KEYS[2] then store_answer(KEYS[2], ans, nil, 'thing_1') end\n\
             hold_key()\n\
             return {'done'}",
        )
    });

    async fn effect(redis: &TestRedis, answer: &Answer<'_>, store_it: bool) -> Option<Result<Begin, String>> {
        effect_as(redis, answer, if store_it { "answer" } else { "hold" }).await
    }

    /// `mode`: 'answer' stores the answer, 'seen' too after reading what the key made (made_by,
    /// as charge and reserve do), 'made' stores it naming what the effect made (`thing_1`),
    /// 'hold' stores none.
    async fn effect_as(redis: &TestRedis, answer: &Answer<'_>, mode: &str) -> Option<Result<Begin, String>> {
        let mut conn = redis.conn().await;
        let mut inv = EFFECT.key("t:{e}:count");
        inv.arg(mode);
        answer.add_to(&mut inv);
        let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await.ok()?;
        Answer::refusal(&reply).map(|r| r.map_err(|e| e.to_string()))
    }

    #[tokio::test]
    async fn answer_lib_settles_a_key_taken_in_the_effects_script_in_one_write() {
        let redis = TestRedis::start().await;
        let idem = store(&redis).effects_take_keys(true);
        let key = KeyRef::new("t:op", "k1", "fp".into()).with_answer_at("t:{e}:answer:k1".into());
        let resp = created();

        let first = effect(&redis, &idem.answer(&key, "tok1", &resp), true).await;
        let replay = effect(&redis, &idem.answer(&key, "tok2", &resp), true).await;

        assert!(first.is_none(), "the effect went on: {first:?}");
        assert!(
            matches!(replay, Some(Ok(Begin::Replay(StoredResponse { status: 201, .. })))),
            "{replay:?}"
        );
        assert_eq!(field(&redis, &key, "state").await.as_deref(), Some("done"));
        assert_eq!(
            field(&redis, &key, "ctype").await,
            None,
            "application/json is not written"
        );
        assert_eq!(
            field(&redis, &key, "body").await,
            None,
            "nor the body: only a request with this fingerprint replays it, and it carries it"
        );
        assert_eq!(
            replay,
            Some(Ok(Begin::Replay(StoredResponse { location: None, ..resp })))
        );
    }

    /// A record written done at once never changes again: it is one string set with its expiry
    /// (one command in the AOF, not an HSET and a PEXPIRE), and every reader and writer of
    /// records takes it as the hash it replaces.
    #[tokio::test]
    async fn a_key_taken_and_answered_in_one_script_is_one_string_every_script_reads() {
        let redis = TestRedis::start().await;
        let idem = store(&redis).effects_take_keys(true);
        let key = KeyRef::new("t:op", "k1", "fp-one".into()).with_answer_at("t:{e}:answer:k1".into());
        let resp = StoredResponse::json(StatusCode::CREATED, &serde_json::json!({"id": 1}));
        let mut conn = redis.conn().await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .expect("RESETSTAT");

        let first = effect_as(&redis, &idem.answer(&key, "tok1", &resp), "made").await;

        assert!(first.is_none(), "the effect went on: {first:?}");
        let kind: String = on_key(&mut conn, "TYPE", key.redis_key()).await;
        assert_eq!(kind, "string");
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        let written: Vec<&str> = stats
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| l.split(':').next())
            .filter(|c| ["set", "hset", "pexpire", "expire"].contains(c))
            .collect();
        assert_eq!(written, ["set"], "{stats}");
        let ttl: i64 = on_key(&mut conn, "PTTL", key.redis_key()).await;
        assert!(ttl > 0 && ttl <= 60_000, "it expires as a hash record would: {ttl}");

        assert_eq!(field(&redis, &key, "state").await.as_deref(), Some("done"));
        assert_eq!(field(&redis, &key, "status").await.as_deref(), Some("201"));
        assert_eq!(field(&redis, &key, "fp").await.as_deref(), Some("fp-one"));
        assert_eq!(idem.made(&key).await.ok().flatten().as_deref(), Some("thing_1"));
        assert_eq!(idem.token_of(&key).await.ok(), Some(None));
        let replay = effect_as(&redis, &idem.answer(&key, "tok2", &resp), "made").await;
        assert_eq!(
            replay,
            Some(Ok(Begin::Replay(StoredResponse {
                location: None,
                ..resp.clone()
            })))
        );
        let reused = KeyRef::new("t:op", "k1", "fp-two".into());
        assert_eq!(idem.begin(&reused, "tok3").await.ok(), Some(Begin::Reused));
        let plain = KeyRef::new("t:op", "k1", "fp-one".into());
        assert!(
            matches!(
                idem.begin(&plain, "tok4").await,
                Ok(Begin::Replay(StoredResponse { status: 201, .. }))
            ),
            "begin_key.lua replays it"
        );
        // A done record is not renewed, re-noted, finished again or freed.
        assert_eq!(idem.renew(&plain, "tok1").await.ok(), Some(false));
        assert_eq!(idem.renote(&plain, "tok1", "card-b").await.ok(), Some(false));
        idem.free(&plain, "tok1").await.expect("free");
        idem.finish(&plain, "tok1", &StoredResponse::json(StatusCode::OK, &2))
            .await
            .expect("finish");
        let (noted, _) = idem.begin_noted(&plain, "tok5", "card-a").await.expect("begin_noted");
        assert!(
            matches!(noted, Begin::Replay(StoredResponse { status: 201, .. })),
            "{noted:?}"
        );
        assert_eq!(
            field(&redis, &key, "status").await.as_deref(),
            Some("201"),
            "still there"
        );
    }

    #[tokio::test]
    async fn answer_lib_holds_a_key_whose_effect_stored_no_answer() {
        let redis = TestRedis::start().await;
        let idem = store(&redis).effects_take_keys(true);
        let key = KeyRef::new("t:op", "k1", "fp".into()).with_answer_at("t:{e}:answer:k1".into());
        let resp = created();

        let _ = effect(&redis, &idem.answer(&key, "tok1", &resp), false).await;
        let busy = effect(&redis, &idem.answer(&key, "tok2", &resp), false).await;
        tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
        let taken_over = effect(&redis, &idem.answer(&key, "tok3", &resp), false).await;

        assert!(matches!(busy, Some(Ok(Begin::InUse { .. }))), "{busy:?}");
        assert!(taken_over.is_none(), "a lapsed lease is taken over: {taken_over:?}");
        assert_eq!(field(&redis, &key, "token").await.as_deref(), Some("tok3"));
    }

    #[tokio::test]
    async fn answer_lib_settles_a_key_taken_before_the_effect_in_the_effects_own_write_on_one_node() {
        settles_a_held_key_in_the_effects_write("answer").await;
    }

    /// Charge and reserve read what a held key made (made_by) before they settle it: the state
    /// and status read with it decide the settling as a read of its own would.
    #[tokio::test]
    async fn a_held_key_read_by_made_by_is_settled_by_that_read() {
        settles_a_held_key_in_the_effects_write("seen").await;
    }

    /// `mode` as for [`effect_as`]: 'answer' settles the held key after a read of its own,
    /// 'seen' by what made_by read first.
    async fn settles_a_held_key_in_the_effects_write(mode: &str) {
        let redis = TestRedis::start().await;
        let idem = store(&redis).effects_settle_held_keys(true);
        let beside = "t:{e}:answer:k1";
        let key = KeyRef::new("t:op", "k1", "fp".into()).with_answer_at(beside.into());
        let _ = idem.begin(&key, "tok1").await;
        let resp = created();

        let effect_went_on = effect_as(&redis, &idem.answer(&key, "tok1", &resp), mode).await;
        let retry = idem.begin(&key, "tok2").await.ok();

        assert!(effect_went_on.is_none(), "{effect_went_on:?}");
        assert_eq!(field(&redis, &key, "state").await.as_deref(), Some("done"));
        assert_eq!(field(&redis, &key, "token").await.as_deref(), Some("tok1"));
        let replayed = StoredResponse {
            location: None,
            ..created()
        };
        assert_eq!(retry, Some(Begin::Replay(replayed.clone())));
        let mut conn = redis.conn().await;
        let stored_beside: i64 = redis::cmd("EXISTS")
            .arg(beside)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        assert_eq!(stored_beside, 0, "nothing stored beside the effect");

        // A record already settled keeps its answer; a vanished one is written again whole.
        let other = StoredResponse::json(StatusCode::OK, &2);
        let _ = effect_as(&redis, &idem.answer(&key, "tok1", &other), mode).await;
        assert_eq!(
            idem.begin(&key, "tok3").await.ok(),
            Some(Begin::Replay(replayed.clone()))
        );
        let _: i64 = on_key(&mut conn, "DEL", key.redis_key()).await;
        let _ = effect_as(&redis, &idem.answer(&key, "tok1", &resp), mode).await;
        let ttl: i64 = on_key(&mut conn, "PTTL", key.redis_key()).await;
        assert!(ttl > 0, "the rewritten record expires: {ttl}");
        assert_eq!(idem.begin(&key, "tok4").await.ok(), Some(Begin::Replay(replayed)));
        assert_eq!(field(&redis, &key, "token").await.as_deref(), Some("tok1"));
    }

    #[tokio::test]
    async fn a_held_key_whose_caller_renders_its_replay_keeps_no_body_but_what_it_made() {
        let redis = TestRedis::start().await;
        let idem = store(&redis).effects_settle_held_keys(true);
        let key = KeyRef::new("t:op", "k1", "fp".into()).with_answer_at("t:{e}:answer:k1".into());
        let _ = idem.begin(&key, "tok1").await;
        let resp = created();

        let _ = effect_as(&redis, &idem.answer(&key, "tok1", &resp).rendered_on_replay(), "made").await;
        let retry = idem.begin(&key, "tok2").await.ok();

        assert_eq!(field(&redis, &key, "state").await.as_deref(), Some("done"));
        assert_eq!(field(&redis, &key, "body").await, None, "the body is not written");
        assert_eq!(
            retry,
            Some(Begin::Replay(StoredResponse {
                body: Vec::new(),
                location: None,
                ..created()
            })),
            "the replay's status, with nothing for a body: its caller renders it"
        );
        assert_eq!(idem.made(&key).await.ok().flatten().as_deref(), Some("thing_1"));
    }

    #[tokio::test]
    async fn an_answer_stored_beside_the_effect_keeps_its_body_though_its_caller_could_render_it() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp".into()).with_answer_at("t:{e}:answer:k1".into());
        let _ = idem.begin(&key, "tok1").await;
        let resp = created();

        let _ = effect_as(&redis, &idem.answer(&key, "tok1", &resp).rendered_on_replay(), "made").await;
        tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
        let retry = idem.begin(&key, "tok2").await.ok();

        let replayed = StoredResponse {
            location: None,
            ..created()
        };
        assert_eq!(retry, Some(Begin::Replay(replayed)), "replayed by the store itself");
    }

    #[tokio::test]
    async fn answer_lib_stores_beside_the_effect_where_the_key_is_another_slot() {
        let redis = TestRedis::start().await;
        let idem = store(&redis);
        let key = KeyRef::new("t:op", "k1", "fp".into()).with_answer_at("t:{e}:answer:k1".into());
        let _ = idem.begin(&key, "tok1").await;
        let resp = created();

        let _ = effect(&redis, &idem.answer(&key, "tok1", &resp), true).await;
        tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
        let retry = idem.begin(&key, "tok2").await.ok();

        let replayed = StoredResponse {
            location: None,
            ..created()
        };
        assert_eq!(retry, Some(Begin::Replay(replayed)));
    }
}
