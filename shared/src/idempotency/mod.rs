//! `Idempotency-Key` handling, after draft-ietf-httpapi-idempotency-key-header and Stripe.
//!
//! One record per (service, endpoint, key) in Redis, decided by one Lua script so that two
//! concurrent requests can never both see "new":
//! - new → "running", with the request fingerprint, an owner token and a lease;
//! - running, lease live → 409 `idempotency-key-in-use` with `Retry-After`;
//! - running, lease run out (its owner died) → taken over by this request, same token (an
//!   effect's script that takes the key itself, below, gives it this request's own);
//! - done → the stored status, headers and body, byte for byte, `Idempotent-Replayed: true`;
//! - different fingerprint → 422 `idempotency-key-reused`.
//!
//! The business effect is recorded with its own idempotency marker in the script that applies
//! it (in the effect's hash slot), so a crash between the effect and [`IdempotencyStore::finish`]
//! leaves a running record whose lease runs out, and the retry finds the effect already done.
//!
//! An endpoint whose usual answer is known before its effect's script runs can have that script
//! store the answer too (`answer.lua`, in the effect's slot, named by [`KeyRef::with_answer_at`]),
//! which saves the round trip of [`IdempotencyStore::finish`]: the key's record then stays
//! "running" until its lease runs out, and a retry that meets it (busy, or taking it over) looks
//! for the stored answer first and replays it.
//!
//! On a single Redis node every key can be reached from one script, so a service whose effect
//! needs nothing from outside Redis before it runs ([`IdempotencyStore::effects_take_keys`])
//! goes one step further: its effect's script takes the
//! key itself (`answer.lua`'s `take_key`) and settles it with the answer, one write for the
//! whole request; the record is then written once, done, never as running first (the script is
//! atomic, so nobody could have seen it running). Such a record never changes again, so it is
//! kept as one string set with its expiry by one command, not a hash and its PEXPIRE
//! (`record.lua`; every script reads both forms, and [`IdempotencyStore::field`] does in Rust).
//! A service that must take the key before its
//! effect's script runs (payment asks a provider in between) has that script settle the key's
//! record with the answer instead ([`IdempotencyStore::effects_settle_held_keys`]). On Redis
//! Cluster the key's record is a slot of its own, so it is taken first and the answer is stored
//! beside the effect.
//!
//! Layout: this file holds the HTTP side (the header, stored responses, decisions); [`store`]
//! the Redis record and its flow; [`answer`] answers stored by an effect's own script;
//! [`scripts`] the `.lua` files beside it.

mod answer;
pub mod scripts;
mod store;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use serde::Serialize;

use crate::problem::{CommonError, PROBLEM_JSON, Problem, ServiceError};

pub use answer::Answer;
pub use store::IdempotencyStore;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Why a key is refused: its form.
pub const KEY_MALFORMED: &str = "the Idempotency-Key must be 1 to 255 printable ASCII characters without spaces";
/// Why a key is refused: it came more than once. Which one the client meant would be a guess,
/// and a wrong guess replays or blocks another request's answer.
pub const KEY_REPEATED: &str = "send one Idempotency-Key header, not several";

/// A client's Idempotency-Key, as validated by [`key_from`]: 1–255 printable ASCII characters
/// without spaces (so it can stand inside a Redis key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for IdempotencyKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates the header: present once, 1–255 printable ASCII characters, no spaces.
pub fn key_from(req: &HttpRequest) -> Result<IdempotencyKey, CommonError> {
    let mut values = req.headers().get_all(HEADER);
    let Some(value) = values.next() else {
        return Err(CommonError::IdempotencyKeyMissing);
    };
    if values.next().is_some() {
        return Err(CommonError::IdempotencyKeyInvalid(KEY_REPEATED));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(CommonError::IdempotencyKeyInvalid(KEY_MALFORMED));
    }
    Ok(IdempotencyKey(String::from_utf8_lossy(bytes).into_owned()))
}

/// An internal, idempotent POST as it arrives, checked in the order every such endpoint checks
/// it: the internal token, then the key, then the body.
pub struct IdempotentPost<T> {
    pub key: IdempotencyKey,
    pub body: T,
    /// The key's record under `scope` (`service:endpoint`), with the request's fingerprint.
    pub key_ref: KeyRef,
}

/// Reads an internal, idempotent POST ([`IdempotentPost`]).
pub async fn read_post<T: serde::de::DeserializeOwned + utoipa::ToSchema + 'static>(
    req: &HttpRequest,
    payload: actix_web::web::Payload,
    token: &crate::config::Secret,
    scope: &str,
) -> Result<IdempotentPost<T>, CommonError> {
    crate::auth::require(req, token)?;
    read_post_as(req, payload, scope).await
}

/// Reads an idempotent POST whose caller was already identified (an API key or the internal
/// token, [`crate::accounts`]): the key, then the body. `scope` carries the caller, so each
/// caller's keys are its own.
pub async fn read_post_as<T: serde::de::DeserializeOwned + utoipa::ToSchema + 'static>(
    req: &HttpRequest,
    payload: actix_web::web::Payload,
    scope: &str,
) -> Result<IdempotentPost<T>, CommonError> {
    let key = key_from(req)?;
    let body = crate::body::read_json::<T>(req, payload).await?;
    let key_ref = KeyRef::new(scope, &key, body.fingerprint("POST", req.path()));
    Ok(IdempotentPost {
        key,
        body: body.value,
        key_ref,
    })
}

/// The content type most answers have: a key's record leaves it out (an empty `ctype`), one
/// field less per record in the AOF.
pub const JSON: &str = "application/json";

/// A record's `ctype` as stored: empty for [`JSON`].
pub fn stored_ctype(content_type: &str) -> &str {
    if content_type == JSON { "" } else { content_type }
}

/// A stored `ctype` read back: none or empty is [`JSON`].
pub fn read_ctype(stored: Option<String>) -> String {
    stored.filter(|c| !c.is_empty()).unwrap_or_else(|| JSON.into())
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub location: Option<String>,
}

impl StoredResponse {
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Self {
        Self {
            status: status.as_u16(),
            content_type: JSON.into(),
            body: serde_json::to_vec(value).unwrap_or_default(),
            location: None,
        }
    }

    pub fn problem(problem: &Problem) -> Self {
        Self {
            status: problem.status.as_u16(),
            content_type: PROBLEM_JSON.into(),
            body: problem.body(),
            location: None,
        }
    }

    pub fn with_location(mut self, location: String) -> Self {
        self.location = Some(location);
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn to_response(&self, replayed: bool) -> HttpResponse {
        let mut builder = HttpResponseBuilder::new(self.status());
        if let Ok(v) = HeaderValue::from_str(&self.content_type) {
            builder.insert_header((header::CONTENT_TYPE, v));
        }
        if let Some(loc) = self.location.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
            builder.insert_header((header::LOCATION, loc));
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE || self.status() == StatusCode::ACCEPTED {
            builder.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if replayed {
            builder.insert_header((
                HeaderName::from_static(REPLAYED_HEADER),
                HeaderValue::from_static("true"),
            ));
        }
        builder.body(self.body.clone())
    }
}

/// What [`IdempotencyStore::begin`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Execute. `resumed` when a previous owner's lease ran out; `token` is then the previous one.
    Execute {
        token: String,
        resumed: bool,
    },
    Replay(StoredResponse),
    InUse {
        retry_after_ms: u64,
    },
    Reused,
}

/// What [`IdempotencyStore::begin_noted`] found beside a key it let execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    /// Left by an earlier owner whose lease ran out: it may have acted on it.
    pub inherited: bool,
}

/// How a finished execution leaves its key.
#[derive(Debug)]
pub enum Outcome {
    /// A definitive answer: stored and replayed to every retry.
    Store(StoredResponse),
    /// A transient failure whose effects were undone: the key is freed for a retry.
    Free(StoredResponse),
    /// Still unresolved (work goes on, or its result is unknown): the key stays locked until its
    /// lease runs out, so a retry cannot start a second execution.
    Hold(StoredResponse),
    /// A definitive answer that the effect's script already stored, in the same step as the
    /// effect (at the key's [`KeyRef::with_answer_at`], or in the key's record when the script
    /// took the key itself): nothing is left to record.
    Stored(StoredResponse),
}

/// The contract's one rule for which answers are final, stored and replayed: successes and
/// business refusals (402, 404, 409, …). Not final: validation errors (400, 422), which leave the
/// key free to be retried with a corrected request; 202, whose work goes on; and 5xx, whose
/// effects were undone.
pub fn is_final(status: u16) -> bool {
    !matches!(status, 202 | 400 | 422) && status < 500
}

impl Outcome {
    /// What an answer leaves under its key, by [`is_final`].
    pub fn by_status(resp: StoredResponse) -> Self {
        if is_final(resp.status) {
            Self::Store(resp)
        } else if resp.status == 202 {
            Self::Hold(resp)
        } else {
            Self::Free(resp)
        }
    }

    /// A handler's result as its key keeps it ([`Self::by_status`]); a failure's cause is
    /// logged, once, here.
    pub fn of<E: ServiceError>(result: Result<StoredResponse, E>) -> Self {
        match result {
            Ok(resp) => Self::by_status(resp),
            Err(e) => {
                if let Some(common) = e.common() {
                    common.log();
                }
                Self::by_status(StoredResponse::problem(&e.problem()))
            }
        }
    }

    /// What an execution leaves when its effect's script was given `resp` through
    /// [`IdempotencyStore::answer`] and the effect happened: stored by the script when `key`
    /// names a place for it (only then does [`Answer::add_to`] pass it to the script), else to be
    /// stored as usual.
    pub fn answered(key: &KeyRef, resp: StoredResponse) -> Self {
        if key.answer_key().is_some() {
            Self::Stored(resp)
        } else {
            Self::by_status(resp)
        }
    }

    pub fn response(&self) -> &StoredResponse {
        match self {
            Self::Store(r) | Self::Free(r) | Self::Hold(r) | Self::Stored(r) => r,
        }
    }

    pub fn into_response(self) -> StoredResponse {
        match self {
            Self::Store(r) | Self::Free(r) | Self::Hold(r) | Self::Stored(r) => r,
        }
    }
}

/// A key's record, scoped per service and endpoint.
#[derive(Debug, Clone)]
pub struct KeyRef {
    redis_key: String,
    fingerprint: String,
    answer_key: Option<String>,
}

impl KeyRef {
    /// `scope` is `service:endpoint`, e.g. `stock:reserve`.
    pub fn new(scope: &str, key: &str, fingerprint: String) -> Self {
        // The hash tag covers scope and key: each record is its own slot on Redis Cluster.
        Self {
            redis_key: format!("idem:{{{scope}:{key}}}"),
            fingerprint,
            answer_key: None,
        }
    }

    /// Where the effect's script may store this request's answer (`answer.lua`): a key in the
    /// effect's slot, derived from the request, so that the same request names the same place.
    pub fn with_answer_at(mut self, answer_key: String) -> Self {
        self.answer_key = Some(answer_key);
        self
    }

    pub fn answer_key(&self) -> Option<&str> {
        self.answer_key.as_deref()
    }

    /// A record named by its caller: one stored as [`KeyRef::redis_key`], for work that settles
    /// a key long after its request is gone (a background worker finishing it), or one kept in
    /// the slot of the work it guards, so that one script can take the key and do the work.
    pub fn from_stored(redis_key: String, fingerprint: String) -> Self {
        Self {
            redis_key,
            fingerprint,
            answer_key: None,
        }
    }

    pub fn redis_key(&self) -> &str {
        &self.redis_key
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The fingerprint as records keep it: its first [`STORED_FP_LEN`] characters. Ids derived
    /// from a request (a provider's key) keep using the whole [`Self::fingerprint`], so that a
    /// request retried across versions still derives the same ones.
    pub fn stored_fingerprint(&self) -> &str {
        stored_fp(&self.fingerprint)
    }
}

/// How much of a fingerprint a record keeps: 16 hex characters, 64 bits of SHA-256. A
/// fingerprint only tells one request from another under the same key: two different bodies
/// sent with one key collide with a chance of 2^-64, and a collision would only replay that
/// caller's own earlier answer instead of refusing the reused key (no money moves, nobody
/// else's answer is shown). Every checkout writes five of them into the fsynced AOF.
pub const STORED_FP_LEN: usize = 16;

/// `fp` as records keep it ([`KeyRef::stored_fingerprint`]).
pub fn stored_fp(fp: &str) -> &str {
    fp.get(..STORED_FP_LEN).unwrap_or(fp)
}

/// Whether a record's fingerprint is this request's: compared as stored, so that records
/// written whole (before fingerprints were cut) still match (begin.lua compares the same way).
pub fn same_fp(stored: &str, fp: &str) -> bool {
    stored_fp(stored) == stored_fp(fp)
}

/// The first `bytes` bytes of SHA-256 over `text`, as hex: for keys derived from a request's
/// Idempotency-Key and sent on to another service or provider, the same for every retry.
pub fn short_digest(text: &str, bytes: usize) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The letter a string record writes for each field name (record.lua's record_letter).
const RECORD_LETTERS: [(&str, &str); 14] = [
    ("state", "e"),
    ("fp", "f"),
    ("token", "t"),
    ("lease", "l"),
    ("note", "n"),
    ("status", "s"),
    ("made", "m"),
    ("body", "b"),
    ("ctype", "c"),
    ("location", "L"),
    ("quantity", "q"),
    ("totalFee", "p"),
    ("currency", "u"),
    ("expiresAt", "x"),
];

/// A field of a record kept as one string (record.lua: "name\nvalue" pairs joined by "\n", a
/// name written as its letter or, by older versions, in full; changes appended, so a name's
/// last value is its value), for readers outside Lua.
pub fn packed_field<'a>(packed: &'a str, name: &str) -> Option<&'a str> {
    let letter = RECORD_LETTERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l);
    let parts: Vec<&str> = packed.split('\n').collect();
    parts
        .chunks_exact(2)
        .filter(|pair| pair[0] == name || Some(pair[0]) == letter)
        .map(|pair| pair[1])
        .next_back()
}

/// Element `i` of a script's answer as text; empty when missing or not text or a number.
pub fn reply_text(reply: &[redis::Value], i: usize) -> String {
    match reply.get(i) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        Some(redis::Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_letters_of_record_names_are_record_luas_both_ways() {
        let lua = include_str!("record.lua");
        let body = |function: &str| {
            let from = lua.find(&format!("local function {function}(")).unwrap_or(0);
            let rest = &lua[from..];
            rest[..rest.find("\nend\n").unwrap_or(0)].to_string()
        };
        let (letter_of, name_of) = (body("record_letter"), body("record_name"));
        for (name, letter) in super::RECORD_LETTERS {
            assert!(
                letter_of.contains(&format!("name == '{name}' then return '{letter}'")),
                "record_letter: {name}"
            );
            assert!(
                name_of.contains(&format!("l == '{letter}' then return '{name}'")),
                "record_name: {letter}"
            );
            assert!(
                super::RECORD_LETTERS.iter().all(|(n, _)| *n != letter),
                "{letter} is also a name"
            );
        }
        assert_eq!(
            (
                letter_of.matches("then return").count(),
                name_of.matches("then return").count()
            ),
            (super::RECORD_LETTERS.len(), super::RECORD_LETTERS.len()),
            "no letter left out"
        );
    }

    #[test]
    fn a_packed_records_field_is_its_last_value_by_letter_or_name() {
        let letters = "s\nreserved\nq\n2\nstatus\ncompleted\nL\n";
        assert_eq!(
            super::packed_field(letters, "status"),
            Some("completed"),
            "a name in full (older) wins when later"
        );
        assert_eq!(super::packed_field(letters, "quantity"), Some("2"));
        assert_eq!(super::packed_field(letters, "location"), Some(""));
    }

    #[test]
    fn a_packed_records_field_is_its_last_value() {
        let packed = "status\nreserved\nquantity\n2\nstatus\ncompleted\nlocation\n";
        assert_eq!(super::packed_field(packed, "status"), Some("completed"));
        assert_eq!(super::packed_field(packed, "quantity"), Some("2"));
        assert_eq!(super::packed_field(packed, "location"), Some(""));
        assert_eq!(super::packed_field(packed, "2"), None, "values are not names");
        assert_eq!(super::packed_field(packed, "body"), None);
    }

    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn keys_must_be_printable_ascii_without_spaces() {
        let ok = TestRequest::default()
            .insert_header((HEADER, "order-123_ABC:x"))
            .to_http_request();
        assert_eq!(key_from(&ok).ok().as_deref(), Some("order-123_ABC:x"));
        let missing = TestRequest::default().to_http_request();
        assert!(matches!(key_from(&missing), Err(CommonError::IdempotencyKeyMissing)));
        let spaced = TestRequest::default().insert_header((HEADER, "a b")).to_http_request();
        assert!(matches!(
            key_from(&spaced),
            Err(CommonError::IdempotencyKeyInvalid(KEY_MALFORMED))
        ));
        let long = TestRequest::default()
            .insert_header((HEADER, "k".repeat(256)))
            .to_http_request();
        assert!(matches!(
            key_from(&long),
            Err(CommonError::IdempotencyKeyInvalid(KEY_MALFORMED))
        ));
        let max = TestRequest::default()
            .insert_header((HEADER, "k".repeat(255)))
            .to_http_request();
        assert!(key_from(&max).is_ok());
    }

    #[test]
    fn two_keys_on_one_request_are_refused_rather_than_one_picked() {
        for keys in [["k1", "k2"], ["k1", "k1"]] {
            let mut req = TestRequest::default();
            for key in keys {
                req = req.append_header((HEADER, key));
            }
            let refused = key_from(&req.to_http_request());
            assert!(
                matches!(refused, Err(CommonError::IdempotencyKeyInvalid(KEY_REPEATED))),
                "{keys:?}"
            );
        }
    }

    #[test]
    fn only_successes_and_business_refusals_are_stored() {
        let r = |s: u16| StoredResponse {
            status: s,
            content_type: "application/json".into(),
            body: vec![],
            location: None,
        };
        assert!(matches!(Outcome::by_status(r(201)), Outcome::Store(_)));
        assert!(matches!(Outcome::by_status(r(409)), Outcome::Store(_)));
        assert!(matches!(Outcome::by_status(r(503)), Outcome::Free(_)));
        assert!(
            matches!(Outcome::by_status(r(400)), Outcome::Free(_)),
            "validation errors are not stored"
        );
        assert!(matches!(Outcome::by_status(r(422)), Outcome::Free(_)));
        assert!(matches!(Outcome::by_status(r(202)), Outcome::Hold(_)));
    }

    #[test]
    fn a_script_that_took_the_key_and_stopped_is_read_as_the_keys_decision_and_nothing_else_is() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let busy = [bulk("idem"), bulk("busy"), bulk("1500")];
        assert_eq!(
            Answer::refusal(&busy).and_then(Result::ok),
            Some(Begin::InUse { retry_after_ms: 1500 })
        );
        let reused = [bulk("idem"), bulk("reused")];
        assert_eq!(Answer::refusal(&reused).and_then(Result::ok), Some(Begin::Reused));
        let replay = [
            bulk("idem"),
            bulk("replay"),
            bulk("201"),
            bulk("application/json"),
            bulk("{}"),
            bulk(""),
        ];
        assert!(matches!(
            Answer::refusal(&replay).and_then(Result::ok),
            Some(Begin::Replay(StoredResponse { status: 201, .. }))
        ));
        let effect = [bulk("reserved"), bulk("rsv_1_x")];
        assert!(Answer::refusal(&effect).is_none());
        assert!(Answer::refusal(&[]).is_none());
    }

    #[test]
    fn a_stored_fingerprint_is_its_first_64_bits_and_matches_the_whole_one_and_older_cuts() {
        let whole = crate::body::fingerprint("POST", "/x", b"{}");
        let key = KeyRef::new("svc:op", "k", whole.clone());
        assert_eq!(whole.len(), 64);
        assert_eq!(key.stored_fingerprint(), &whole[..16]);
        assert!(
            same_fp(&whole[..32], &whole),
            "a record written when 128 bits were kept still matches"
        );
        assert_eq!(
            key.fingerprint(),
            whole,
            "ids derived from the request keep the whole one"
        );
        assert!(same_fp(key.stored_fingerprint(), &whole) && same_fp(&whole, key.stored_fingerprint()));
        let other = crate::body::fingerprint("POST", "/x", b"[]");
        assert!(!same_fp(&other, &whole) && !same_fp(stored_fp(&other), &whole));
        assert_eq!(stored_fp("fp"), "fp", "a short one is kept whole");
    }

    #[test]
    fn an_answer_counts_as_stored_only_where_the_key_names_a_place_for_it() {
        let resp = StoredResponse::json(StatusCode::OK, &"ok");
        let plain = KeyRef::new("svc:op", "k", "fp".into());
        let beside = plain.clone().with_answer_at("svc:{x}:answer:op:k".into());
        assert!(matches!(Outcome::answered(&beside, resp.clone()), Outcome::Stored(_)));
        assert!(matches!(Outcome::answered(&plain, resp), Outcome::Store(_)));
    }
}
