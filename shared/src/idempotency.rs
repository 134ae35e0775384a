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
//! store the answer too ([`ANSWER_LUA`], in the effect's slot, named by [`KeyRef::with_answer_at`]),
//! which saves the round trip of [`IdempotencyStore::finish`]: the key's record then stays
//! "running" until its lease runs out, and a retry that meets it (busy, or taking it over) looks
//! for the stored answer first and replays it.
//!
//! On a single Redis node every key can be reached from one script, so a service whose effect
//! needs nothing from outside Redis before it runs ([`IdempotencyStore::effects_take_keys`];
//! stock's reserve, release and complete) goes one step further: its effect's script takes the
//! key itself ([`ANSWER_LUA`]'s `take_key`) and settles it with the answer, one write for the
//! whole request; the record is then written once, done, never as running first (the script is
//! atomic, so nobody could have seen it running). On Redis Cluster the key's record is a slot of
//! its own, so it is taken first.

use std::sync::LazyLock;
use std::time::Duration;

use crate::redis_pool::Pool;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use redis::Script;
use serde::Serialize;

use crate::problem::{CommonError, PROBLEM_JSON, Problem};
use crate::redis_pool::traced;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Why a key is refused: its form.
pub const KEY_MALFORMED: &str = "the Idempotency-Key must be 1 to 255 printable ASCII characters without spaces";
/// Why a key is refused: it came more than once. Which one the client meant would be a guess,
/// and a wrong guess replays or blocks another request's answer.
pub const KEY_REPEATED: &str = "send one Idempotency-Key header, not several";

/// Validates the header: present once, 1–255 printable ASCII characters, no spaces.
pub fn key_from(req: &HttpRequest) -> Result<String, CommonError> {
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
    Ok(String::from_utf8_lossy(bytes).into_owned())
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
            content_type: "application/json".into(),
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

impl Outcome {
    /// The contract's default: 2xx–4xx answers are definitive, 5xx free the key.
    pub fn by_status(resp: StoredResponse) -> Self {
        if resp.status < 500 {
            Self::Store(resp)
        } else {
            Self::Free(resp)
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

// The Lua of [`CLOCK_LUA`], as a literal so that [`BEGIN_LUA`] can start with it (`concat!`).
macro_rules! clock_lua {
    () => {
        r#"
local clock
local function now_ms()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end
"#
    };
}

/// `now_ms()`: Redis' clock in milliseconds, one clock for every replica, read once per script
/// (a second TIME would cost a command and give the same instant but for microseconds). For
/// scripts that read the time without [`BEGIN_LUA`], which includes it.
pub const CLOCK_LUA: &str = clock_lua!();

/// Decides new / replay / in-use / reused / take-over in one step, on Redis' clock
/// ([`CLOCK_LUA`], included). Fields: state, fp, token, lease (ms), status, ctype, body,
/// location. A Lua function, so a script that must take a key together with other work in the
/// key's slot can call it (the order service creates its order in the same step). With `defer`,
/// a new key's record is not written: the caller writes it once it knows whether the work
/// succeeded ([`ANSWER_LUA`]).
pub const BEGIN_LUA: &str = concat!(
    clock_lua!(),
    r#"
local function hold(key, fp, token, lease_at, ttl_ms)
  redis.call('HSET', key, 'state', 'running', 'fp', fp, 'token', token, 'lease', lease_at)
  redis.call('PEXPIRE', key, ttl_ms)
end
local function begin(key, fp, token, lease_ms, ttl_ms, defer)
  local now = now_ms()
  local rec = redis.call('HMGET', key, 'state', 'fp', 'lease', 'token', 'status', 'ctype', 'body', 'location')
  if not rec[1] then
    if not defer then hold(key, fp, token, now + lease_ms, ttl_ms) end
    return {'new', token}
  end
  if rec[2] ~= fp then return {'reused'} end
  if rec[1] == 'done' then return {'replay', rec[5], rec[6], rec[7], rec[8] or ''} end
  local lease = tonumber(rec[3]) or 0
  if lease > now then return {'busy', tostring(lease - now)} end
  redis.call('HSET', key, 'lease', now + lease_ms)
  return {'resume', rec[4]}
end
"#
);

static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{BEGIN_LUA}\nreturn begin(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4])"
    ))
});

/// Settling a key, as Lua functions (like [`BEGIN_LUA`], for scripts that settle a key together
/// with other work in its slot):
/// - `finish(key, a)` stores the final response unless another owner already did; `a` is
///   token, fingerprint, status, content type, body, location, ttl ms ([`IdempotencyStore::finish_args`]).
///   A vanished record (expired, or lost with a Redis restart) is written again whole, so the
///   answer is still replayed. Only what changes is written (every write is fsynced and lands in
///   the AOF): a running record keeps its fingerprint, token and expiry, and its stale lease,
///   which no reader of a done record uses.
/// - `free(key, token)` frees the key only for its owner and only while running.
pub const SETTLE_LUA: &str = r#"
local function finish(key, a)
  local rec = redis.call('HMGET', key, 'state', 'token')
  if rec[1] == 'done' then return 0 end
  if rec[2] and rec[2] ~= a[1] then return 0 end
  if rec[1] then
    redis.call('HSET', key, 'state', 'done', 'status', a[3], 'ctype', a[4], 'body', a[5])
  else
    redis.call('HSET', key, 'state', 'done', 'fp', a[2], 'token', a[1], 'status', a[3], 'ctype', a[4], 'body', a[5])
    redis.call('PEXPIRE', key, a[7])
  end
  if a[6] ~= '' then redis.call('HSET', key, 'location', a[6]) end
  return 1
end
local function free(key, token)
  local rec = redis.call('HMGET', key, 'state', 'token')
  if rec[1] == 'running' and rec[2] == token then return redis.call('DEL', key) end
  return 0
end
"#;

/// Storing an answer with the effect, as Lua functions for the effect's script (with
/// [`BEGIN_LUA`]). `a[i]` on are [`Answer::add_to`]'s arguments: fingerprint, status, content
/// type, body, ttl ms, and, when the script takes the key itself, the owner's token and the
/// lease (ms); `key` is then the key's record, else the answer's place beside the effect.
/// - `take_key(key, a, i)`, first: when the script takes the key, decides it as `begin` does.
///   It answers nil to go on (new, or taken over: the record gets this owner's token, so this
///   owner's settling counts), or `{'idem', <begin's answer>}` for the script to return as it is:
///   a replay, busy or reused. Without a key to take it answers nil. A new key's record is not
///   written yet: the script is atomic, so nobody can see the key untaken before it ends.
/// - `store_answer(key, a, i, body)`: settles the record with the answer (`body`, or `a[i + 3]`),
///   writing a new key's record once, done, instead of running and then done (every write is
///   fsynced and lands in the AOF); or, beside the effect, writes the hash fp, status, ctype,
///   body and its expiry. The fingerprint is kept there so that a lookup replays only the answer
///   of the request it was stored for.
/// - `hold_key()`, last, on every way out after `take_key`: writes a new key's record as running
///   under this owner when no answer was stored, so the caller settles or frees it as usual.
pub const ANSWER_LUA: &str = r#"
local untaken
local function take_key(key, a, i)
  if not key or not a[i + 5] then return nil end
  local d = begin(key, a[i], a[i + 5], tonumber(a[i + 6]), a[i + 4], true)
  if d[1] == 'new' then
    untaken = {key, a[i], a[i + 5], now_ms() + tonumber(a[i + 6]), a[i + 4]}
    return nil
  end
  if d[1] == 'resume' then
    redis.call('HSET', key, 'token', a[i + 5])
    return nil
  end
  table.insert(d, 1, 'idem')
  return d
end
local function hold_key()
  if untaken then hold(unpack(untaken)) end
  untaken = nil
end
local function store_answer(key, a, i, body)
  body = body or a[i + 3]
  if untaken then
    redis.call('HSET', key, 'state', 'done', 'fp', a[i], 'status', a[i + 1], 'ctype', a[i + 2], 'body', body)
    redis.call('PEXPIRE', key, a[i + 4])
    untaken = nil
  elseif a[i + 5] then
    redis.call('HSET', key, 'state', 'done', 'status', a[i + 1], 'ctype', a[i + 2], 'body', body)
  else
    redis.call('HSET', key, 'fp', a[i], 'status', a[i + 1], 'ctype', a[i + 2], 'body', body)
    redis.call('PEXPIRE', key, a[i + 4])
  end
end
"#;

/// The Lua an effect's script starts with to use [`ANSWER_LUA`]: it and [`BEGIN_LUA`].
pub fn answer_lua() -> String {
    format!("{BEGIN_LUA}{ANSWER_LUA}")
}

static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SETTLE_LUA}\nreturn finish(KEYS[1], ARGV)")));

static FREE: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SETTLE_LUA}\nreturn free(KEYS[1], ARGV[1])")));

// Extends the owner's lease while it is still working.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{CLOCK_LUA}
local rec = redis.call('HMGET', KEYS[1], 'state', 'token')
if rec[1] ~= 'running' or rec[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease', now_ms() + tonumber(ARGV[2]))
return 1
"#
    ))
});

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

    /// Where the effect's script may store this request's answer ([`ANSWER_LUA`]): a key in the
    /// effect's slot, derived from the request, so that the same request names the same place.
    pub fn with_answer_at(mut self, answer_key: String) -> Self {
        self.answer_key = Some(answer_key);
        self
    }

    pub fn answer_key(&self) -> Option<&str> {
        self.answer_key.as_deref()
    }

    /// A record named by its caller: one stored as [`KeyRef::redis_key`], for work that settles
    /// a key later (the order service's recovery worker finishes checkouts whose request is long
    /// gone), or one kept in the slot of the work it guards (the order service's checkout keys).
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

/// An answer for an effect's script to store with the effect ([`IdempotencyStore::answer`]).
pub struct Answer<'a> {
    key: &'a KeyRef,
    response: &'a StoredResponse,
    ttl: Duration,
    /// The owner's token and the lease, when the script takes the key itself.
    takes_key: Option<(&'a str, Duration)>,
}

impl Answer<'_> {
    /// Adds the script's last key and [`ANSWER_LUA`]'s arguments as its last ones: the key's
    /// record and seven (fingerprint, status, content type, body, ttl ms, token, lease ms) when
    /// the script takes the key; else [`KeyRef::answer_key`] and the first five; nothing when
    /// the key has no place for an answer, so the script sees no such key and stores none.
    pub fn add_to(&self, inv: &mut redis::ScriptInvocation<'_>) {
        let Some(answer_key) = self.key.answer_key() else {
            return;
        };
        let at = match self.takes_key {
            Some(_) => self.key.redis_key(),
            None => answer_key,
        };
        inv.key(at)
            .arg(&self.key.fingerprint)
            .arg(self.response.status)
            .arg(&self.response.content_type)
            .arg(&self.response.body[..])
            .arg(self.ttl.as_millis() as u64);
        if let Some((token, lease)) = self.takes_key {
            inv.arg(token).arg(lease.as_millis() as u64);
        }
    }

    /// Reads a script's answer that [`ANSWER_LUA`]'s `take_key` refused to go on with
    /// (`{'idem', ...}`): what the key decided instead. None for any other answer.
    pub fn refusal(reply: &[redis::Value]) -> Option<Result<Begin, CommonError>> {
        match reply.first() {
            Some(redis::Value::BulkString(tag)) if tag == b"idem" => Some(IdempotencyStore::decision(&reply[1..])),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct IdempotencyStore {
    pool: Pool,
    ttl: Duration,
    lease: Duration,
    effects_take_keys: bool,
}

impl IdempotencyStore {
    pub fn new(pool: Pool, ttl: Duration, lease: Duration) -> Self {
        Self {
            pool,
            ttl,
            lease,
            effects_take_keys: false,
        }
    }

    /// For a service whose effects need nothing from outside Redis before their script runs,
    /// on a single Redis node (`on_one_node`): each effect's script that stores its answer
    /// ([`KeyRef::with_answer_at`]) takes the request's key in the same step, so [`Self::run`]
    /// does not take it first. On Redis Cluster the key's record is another slot, so nothing
    /// changes there.
    pub fn effects_take_keys(mut self, on_one_node: bool) -> Self {
        self.effects_take_keys = on_one_node;
        self
    }

    fn taken_by_effect(&self, key: &KeyRef) -> bool {
        self.effects_take_keys && key.answer_key().is_some()
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How long a settled key's answer is kept for replay.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Decides what a request with `new_token` does with `key`.
    ///
    /// Redis not answering does not mean the decision was not taken: a reply can come too late
    /// (a stall longer than REDIS_RESPONSE_TIMEOUT). The key would then be held with this
    /// request's token by a request that is failing, and the caller's retries would meet
    /// 409 in-use until the lease ran out. So a command error first frees the key, which
    /// [`SETTLE_LUA`]'s `free` does only if it is running under this token: nothing has run
    /// under it yet. The free is sent after the late command and so, bar a network that
    /// reorders connections, lands after it; if not, the lease still ends the lock.
    ///
    /// A record left running may have its answer stored beside the effect
    /// ([`KeyRef::with_answer_at`]): when the key is busy or taken over, that answer, if there,
    /// is replayed instead.
    pub async fn begin(&self, key: &KeyRef, new_token: &str) -> Result<Begin, CommonError> {
        let decided = match self.decide(key, new_token).await {
            Err(e @ CommonError::Redis(_)) => {
                if let Err(not_freed) = self.free(key, new_token).await {
                    tracing::warn!(error = %not_freed, "a key's step went unanswered and the key could not be freed; its lease will run out");
                }
                return Err(e);
            }
            decided => decided?,
        };
        let may_be_answered = matches!(decided, Begin::InUse { .. } | Begin::Execute { resumed: true, .. });
        match key.answer_key() {
            Some(answer_key) if may_be_answered => Ok(match self.stored_answer(answer_key, key).await? {
                Some(stored) => Begin::Replay(stored),
                None => decided,
            }),
            _ => Ok(decided),
        }
    }

    /// The answer [`ANSWER_LUA`] stored at `answer_key` for this request, if any.
    async fn stored_answer(&self, answer_key: &str, key: &KeyRef) -> Result<Option<StoredResponse>, CommonError> {
        let (fp, status, ctype, body): (Option<String>, Option<u16>, Option<String>, Option<Vec<u8>>) =
            traced("idempotency.answer", async {
                let mut conn = self.pool.get().await?;
                Ok::<_, CommonError>(
                    redis::cmd("HMGET")
                        .arg(answer_key)
                        .arg(&["fp", "status", "ctype", "body"])
                        .query_async(&mut conn)
                        .await?,
                )
            })
            .await?;
        Ok(match (fp, status, ctype, body) {
            (Some(fp), Some(status), Some(content_type), Some(body)) if fp == key.fingerprint => Some(StoredResponse {
                status,
                content_type,
                body,
                location: None,
            }),
            _ => None,
        })
    }

    async fn decide(&self, key: &KeyRef, new_token: &str) -> Result<Begin, CommonError> {
        let reply: Vec<redis::Value> = traced("idempotency.begin", async {
            let mut conn = self.pool.get().await?;
            Ok::<_, CommonError>(
                BEGIN
                    .key(&key.redis_key)
                    .arg(&key.fingerprint)
                    .arg(new_token)
                    .arg(self.lease.as_millis() as u64)
                    .arg(self.ttl.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await?,
            )
        })
        .await?;
        Self::decision(&reply)
    }

    /// Reads what [`BEGIN_LUA`]'s `begin` answered, and notes it on the request's span.
    pub fn decision(reply: &[redis::Value]) -> Result<Begin, CommonError> {
        let text = |i: usize| reply_text(reply, i);
        let bytes = |i: usize| -> Vec<u8> {
            match reply.get(i) {
                Some(redis::Value::BulkString(b)) => b.clone(),
                _ => Vec::new(),
            }
        };
        let decision = text(0);
        // The request's span says what the key decided: new, resume, replay, busy or reused.
        tracing_opentelemetry::OpenTelemetrySpanExt::set_attribute(
            &tracing::Span::current(),
            "idempotency.decision",
            decision.clone(),
        );
        Ok(match decision.as_str() {
            "new" => Begin::Execute {
                token: text(1),
                resumed: false,
            },
            "resume" => Begin::Execute {
                token: text(1),
                resumed: true,
            },
            "busy" => Begin::InUse {
                retry_after_ms: text(1).parse().unwrap_or(1000),
            },
            "reused" => Begin::Reused,
            "replay" => {
                let location = text(4);
                Begin::Replay(StoredResponse {
                    status: text(1).parse().unwrap_or(500),
                    content_type: text(2),
                    body: bytes(3),
                    location: (!location.is_empty()).then_some(location),
                })
            }
            other => {
                return Err(CommonError::Internal(format!("idempotency script answered {other:?}")));
            }
        })
    }

    pub async fn finish(&self, key: &KeyRef, token: &str, resp: &StoredResponse) -> Result<(), CommonError> {
        traced("idempotency.finish", async {
            let mut conn = self.pool.get().await?;
            let mut inv = FINISH.key(&key.redis_key);
            self.finish_args(&mut inv, key, token, resp);
            let _: i64 = inv.invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// The arguments of [`SETTLE_LUA`]'s `finish`, in order.
    pub fn finish_args(&self, inv: &mut redis::ScriptInvocation<'_>, key: &KeyRef, token: &str, resp: &StoredResponse) {
        inv.arg(token)
            .arg(&key.fingerprint)
            .arg(resp.status)
            .arg(&resp.content_type)
            .arg(&resp.body[..])
            .arg(resp.location.as_deref().unwrap_or(""))
            .arg(self.ttl.as_millis() as u64);
    }

    /// `response` as the answer for `key`'s effect script to store ([`ANSWER_LUA`]), the
    /// request running under `token` (as [`Self::run`] passes it to its execution).
    pub fn answer<'a>(&'a self, key: &'a KeyRef, token: &'a str, response: &'a StoredResponse) -> Answer<'a> {
        Answer {
            key,
            response,
            ttl: self.ttl,
            takes_key: self.taken_by_effect(key).then_some((token, self.lease)),
        }
    }

    pub async fn free(&self, key: &KeyRef, token: &str) -> Result<(), CommonError> {
        traced("idempotency.free", async {
            let mut conn = self.pool.get().await?;
            let _: i64 = FREE.key(&key.redis_key).arg(token).invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    pub async fn renew(&self, key: &KeyRef, token: &str) -> Result<bool, CommonError> {
        traced("idempotency.renew", async {
            let mut conn = self.pool.get().await?;
            let renewed: i64 = RENEW
                .key(&key.redis_key)
                .arg(token)
                .arg(self.lease.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
            Ok(renewed == 1)
        })
        .await
    }

    /// The token of whoever holds (or held) the key; None when there is no record.
    pub async fn token_of(&self, key: &KeyRef) -> Result<Option<String>, CommonError> {
        traced("idempotency.token", async {
            let mut conn = self.pool.get().await?;
            let token: Option<String> = redis::cmd("HGET")
                .arg(&key.redis_key)
                .arg("token")
                .query_async(&mut conn)
                .await?;
            Ok(token)
        })
        .await
    }

    /// Records the outcome. A failure to record is logged, not returned: the record stays
    /// "running" until its lease runs out, and the effect's own marker makes the retry safe.
    pub async fn record(&self, key: &KeyRef, token: &str, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Store(resp) => self.finish(key, token, resp).await,
            Outcome::Free(_) => self.free(key, token).await,
            Outcome::Hold(_) | Outcome::Stored(_) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record the idempotency outcome; the lease will expire");
        }
    }

    /// Records the outcome and renders it.
    pub async fn settle(&self, key: &KeyRef, token: &str, outcome: Outcome) -> HttpResponse {
        self.record(key, token, &outcome).await;
        outcome.response().to_response(false)
    }

    /// Counts and turns the non-executing decisions into their answers: a replay, or an error.
    pub fn refusal(begin: Begin) -> Result<HttpResponse, CommonError> {
        match begin {
            Begin::Replay(stored) => {
                crate::metrics::idempotency_event("replay");
                Ok(stored.to_response(true))
            }
            Begin::InUse { retry_after_ms } => {
                crate::metrics::idempotency_event("in_use");
                Err(CommonError::IdempotencyKeyInUse {
                    retry_after: retry_after_ms.div_ceil(1000),
                })
            }
            Begin::Reused => {
                crate::metrics::idempotency_event("reused");
                Err(CommonError::IdempotencyKeyReused)
            }
            Begin::Execute { .. } => Err(CommonError::Internal("refusal() called for an execution".into())),
        }
    }

    /// The usual flow for an endpoint: decide, execute when told to, settle. `execute` gets
    /// the owner's token and whether an earlier owner's lease ran out, and answers how the
    /// execution ended, or `Err` with what the key decided instead when its effect's script
    /// took the key itself ([`Self::effects_take_keys`]; the key is then not taken first and
    /// `resumed` is unknown, so false).
    pub async fn run<F, Fut>(&self, key: &KeyRef, execute: F) -> Result<HttpResponse, CommonError>
    where
        F: FnOnce(String, bool) -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, Begin>>,
    {
        let fresh = crate::ids::new_id("op");
        let (token, resumed) = if self.taken_by_effect(key) {
            (fresh, false)
        } else {
            match self.begin(key, &fresh).await? {
                Begin::Execute { token, resumed } => (token, resumed),
                other => return Self::refusal(other),
            }
        };
        match execute(token.clone(), resumed).await {
            Ok(outcome) => Ok(self.settle(key, &token, outcome).await),
            Err(refused) => Self::refusal(refused),
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn only_server_errors_free_the_key_by_default() {
        let r = |s: u16| StoredResponse {
            status: s,
            content_type: "application/json".into(),
            body: vec![],
            location: None,
        };
        assert!(matches!(Outcome::by_status(r(201)), Outcome::Store(_)));
        assert!(matches!(Outcome::by_status(r(409)), Outcome::Store(_)));
        assert!(matches!(Outcome::by_status(r(503)), Outcome::Free(_)));
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
    fn an_answer_counts_as_stored_only_where_the_key_names_a_place_for_it() {
        let resp = StoredResponse::json(StatusCode::OK, &"ok");
        let plain = KeyRef::new("svc:op", "k", "fp".into());
        let beside = plain.clone().with_answer_at("svc:{x}:answer:op:k".into());
        assert!(matches!(Outcome::answered(&beside, resp.clone()), Outcome::Stored(_)));
        assert!(matches!(Outcome::answered(&plain, resp), Outcome::Store(_)));
    }
}
