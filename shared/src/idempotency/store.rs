//! The key's record in Redis and the usual flow of an endpoint over it: decide, execute, settle.

use std::time::Duration;

use actix_web::HttpResponse;

use super::scripts::{BEGIN_KEY, BEGIN_NOTED, FINISH_KEY, FREE_KEY, RECORD_FIELD, RENEW_KEY, RENOTE_KEY};
use super::{Answer, Begin, KeyRef, Note, Outcome, StoredResponse, read_ctype, reply_text, stored_ctype};
use crate::problem::CommonError;
use crate::redis_pool::{Pool, traced};

#[derive(Clone)]
pub struct IdempotencyStore {
    pool: Pool,
    ttl: Duration,
    lease: Duration,
    effects_take_keys: bool,
    effects_settle_held_keys: bool,
}

impl IdempotencyStore {
    /// With the TTL and lease every service reads (IDEMPOTENCY_TTL, IDEMPOTENCY_LEASE).
    pub fn for_service(pool: Pool, settings: &crate::config::CommonSettings) -> Self {
        Self::new(pool, settings.idempotency_ttl, settings.idempotency_lease)
    }

    pub fn new(pool: Pool, ttl: Duration, lease: Duration) -> Self {
        Self {
            pool,
            ttl,
            lease,
            effects_take_keys: false,
            effects_settle_held_keys: false,
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

    /// For a service whose effect needs something from outside Redis first (a provider's
    /// answer), so the key is taken before: on a single Redis node (`on_one_node`), the effect's
    /// script that stores its answer settles the key's record with it, instead of storing the
    /// answer beside the effect while the record stays running (one hash and its expiry fewer
    /// per request). On Redis Cluster the record is another slot, so nothing changes there.
    pub fn effects_settle_held_keys(mut self, on_one_node: bool) -> Self {
        self.effects_settle_held_keys = on_one_node;
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
    /// `settle.lua`'s `free` does only if it is running under this token: nothing has run
    /// under it yet. The free is sent after the late command and so, bar a network that
    /// reorders connections, lands after it; if not, the lease still ends the lock.
    ///
    /// A record left running may have its answer stored beside the effect
    /// ([`KeyRef::with_answer_at`]): when the key is busy or taken over, that answer, if there,
    /// is replayed instead.
    pub async fn begin(&self, key: &KeyRef, new_token: &str) -> Result<Begin, CommonError> {
        Ok(self.begin_with(key, new_token, None).await?.0)
    }

    /// [`Self::begin`], keeping `note` beside a running record (`begin_noted.lua`): an
    /// execution's progress that the next owner of the key must know, such as the provider a
    /// payment may have reached. The [`Note`] is the one an earlier owner left (`inherited`), or
    /// `note`; `None` when the request does not execute.
    pub async fn begin_noted(
        &self,
        key: &KeyRef,
        new_token: &str,
        note: &str,
    ) -> Result<(Begin, Option<Note>), CommonError> {
        self.begin_with(key, new_token, Some(note)).await
    }

    async fn begin_with(
        &self,
        key: &KeyRef,
        new_token: &str,
        note: Option<&str>,
    ) -> Result<(Begin, Option<Note>), CommonError> {
        let decided = match self.decide(key, new_token, note).await {
            Err(e @ CommonError::Redis(_)) => {
                if let Err(not_freed) = self.free(key, new_token).await {
                    tracing::warn!(error = %not_freed, "a key's step went unanswered and the key could not be freed; its lease will run out");
                }
                return Err(e);
            }
            decided => decided?,
        };
        let (decided, note) = decided;
        let may_be_answered = matches!(decided, Begin::InUse { .. } | Begin::Execute { resumed: true, .. });
        match key.answer_key() {
            Some(answer_key) if may_be_answered => Ok(match self.stored_answer(answer_key, key).await? {
                Some(stored) => (Begin::Replay(stored), None),
                None => (decided, note),
            }),
            _ => Ok((decided, note)),
        }
    }

    /// The answer `answer.lua` stored at `answer_key` for this request, if any.
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
            (Some(fp), Some(status), ctype, Some(body)) if super::same_fp(&fp, &key.fingerprint) => {
                Some(StoredResponse {
                    status,
                    content_type: read_ctype(ctype),
                    body,
                    location: None,
                })
            }
            _ => None,
        })
    }

    async fn decide(
        &self,
        key: &KeyRef,
        new_token: &str,
        note: Option<&str>,
    ) -> Result<(Begin, Option<Note>), CommonError> {
        let reply: Vec<redis::Value> = traced("idempotency.begin", async {
            let mut conn = self.pool.get().await?;
            let mut inv = match note {
                Some(_) => BEGIN_NOTED.key(&key.redis_key),
                None => BEGIN_KEY.key(&key.redis_key),
            };
            inv.arg(key.stored_fingerprint())
                .arg(new_token)
                .arg(self.lease.as_millis() as u64)
                .arg(self.ttl.as_millis() as u64);
            if let Some(note) = note {
                inv.arg(note);
            }
            Ok::<_, CommonError>(inv.invoke_async(&mut conn).await?)
        })
        .await?;
        let decided = Self::decision(&reply)?;
        let note = match (&decided, note) {
            (Begin::Execute { .. }, Some(_)) => Some(Note {
                text: reply_text(&reply, 2),
                inherited: reply_text(&reply, 3) == "1",
            }),
            _ => None,
        };
        Ok((decided, note))
    }

    /// Replaces the note of a key this request holds ([`Self::begin_noted`]). `false`: the key
    /// is no longer this request's (its lease ran out and another took it over).
    pub async fn renote(&self, key: &KeyRef, token: &str, note: &str) -> Result<bool, CommonError> {
        traced("idempotency.renote", async {
            let mut conn = self.pool.get().await?;
            let done: i64 = RENOTE_KEY
                .key(&key.redis_key)
                .arg(token)
                .arg(note)
                .invoke_async(&mut conn)
                .await?;
            Ok(done == 1)
        })
        .await
    }

    /// Ends this request's lease now, keeping the record (and its note) running: the next
    /// request with the key takes it over at once and goes on from the note, where a freed key
    /// would start afresh and a held one would answer 409 until the lease ran out.
    pub async fn yield_key(&self, key: &KeyRef, token: &str) -> Result<(), CommonError> {
        traced("idempotency.yield", async {
            let mut conn = self.pool.get().await?;
            let _: i64 = RENEW_KEY
                .key(&key.redis_key)
                .arg(token)
                .arg(0)
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Reads what `begin.lua`'s `begin` answered, and notes it on the request's span.
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
                    content_type: read_ctype(Some(text(2))),
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
            let mut inv = FINISH_KEY.key(&key.redis_key);
            self.finish_args(&mut inv, key, token, resp);
            let _: i64 = inv.invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// The arguments of `settle.lua`'s `finish`, in order.
    pub fn finish_args(&self, inv: &mut crate::lua::Invocation<'_>, key: &KeyRef, token: &str, resp: &StoredResponse) {
        inv.arg(token)
            .arg(key.stored_fingerprint())
            .arg(resp.status)
            .arg(stored_ctype(&resp.content_type))
            .arg(&resp.body[..])
            .arg(resp.location.as_deref().unwrap_or(""))
            .arg(self.ttl.as_millis() as u64);
    }

    /// `response` as the answer for `key`'s effect script to store (`answer.lua`), the
    /// request running under `token` (as [`Self::run`] passes it to its execution).
    pub fn answer<'a>(&'a self, key: &'a KeyRef, token: &'a str, response: &'a StoredResponse) -> Answer<'a> {
        Answer {
            key,
            response,
            ttl: self.ttl,
            takes_key: self.taken_by_effect(key).then_some((token, self.lease)),
            settles_held: (!self.taken_by_effect(key) && self.effects_settle_held_keys).then_some(token),
            rendered_on_replay: false,
        }
    }

    /// What the key's request made, as its effect's script named it in the key's record
    /// (`answer.lua`'s `made`): for a caller that renders the record's replay from it
    /// ([`Answer::rendered_on_replay`]).
    pub async fn made(&self, key: &KeyRef) -> Result<Option<String>, CommonError> {
        traced("idempotency.made", self.field(key, "made")).await
    }

    /// One field of the key's record (`state`, `fp`, `token`, `status`, `made`, …), whichever
    /// way the record is kept (record.lua: a hash, or a string once written done at once).
    pub async fn field(&self, key: &KeyRef, name: &str) -> Result<Option<String>, CommonError> {
        let mut conn = self.pool.get().await?;
        Ok(RECORD_FIELD
            .key(&key.redis_key)
            .arg(name)
            .invoke_async(&mut conn)
            .await?)
    }

    pub async fn free(&self, key: &KeyRef, token: &str) -> Result<(), CommonError> {
        traced("idempotency.free", async {
            let mut conn = self.pool.get().await?;
            let _: i64 = FREE_KEY.key(&key.redis_key).arg(token).invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    pub async fn renew(&self, key: &KeyRef, token: &str) -> Result<bool, CommonError> {
        traced("idempotency.renew", async {
            let mut conn = self.pool.get().await?;
            let renewed: i64 = RENEW_KEY
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
        traced("idempotency.token", self.field(key, "token")).await
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
