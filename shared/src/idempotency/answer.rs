//! An answer an effect's script stores in the same step as the effect (`answer.lua`).

use std::time::Duration;

use super::{Begin, IdempotencyStore, KeyRef, StoredResponse};
use crate::problem::CommonError;

/// An answer for an effect's script to store with the effect ([`IdempotencyStore::answer`]).
pub struct Answer<'a> {
    pub(super) key: &'a KeyRef,
    pub(super) response: &'a StoredResponse,
    pub(super) ttl: Duration,
    /// The owner's token and the lease, when the script takes the key itself.
    pub(super) takes_key: Option<(&'a str, Duration)>,
    /// The owner's token, when the script settles the key this request took before it
    /// ([`IdempotencyStore::effects_settle_held_keys`]).
    pub(super) settles_held: Option<&'a str>,
    /// The caller renders a replay of the key's record from what the key made
    /// ([`IdempotencyStore::made`]), so a record this answer settles keeps no body.
    pub(super) rendered_on_replay: bool,
}

impl Answer<'_> {
    /// Declares that the caller renders this answer again, from what the key made, whenever
    /// the key's record is replayed: the record the answer settles (a held key's, on one node)
    /// is then written without its body, every byte of which is fsynced. An answer stored
    /// beside the effect (a cluster) keeps its body: it is replayed by [`IdempotencyStore`]
    /// itself.
    #[must_use]
    pub fn rendered_on_replay(mut self) -> Self {
        self.rendered_on_replay = true;
        self
    }

    /// Adds the script's last key and `answer.lua`'s arguments as its last ones: the key's
    /// record and seven (fingerprint, status, content type, body, ttl ms, token, lease ms) when
    /// the script takes the key, or (…, token, `held`) when it settles the key taken before;
    /// else [`KeyRef::answer_key`] and the first five; nothing when the key has no place for
    /// an answer, so the script sees no such key and stores none.
    pub fn add_to(&self, inv: &mut crate::lua::Invocation<'_>) {
        let Some(answer_key) = self.key.answer_key() else {
            return;
        };
        let at = match (self.takes_key, self.settles_held) {
            (None, None) => answer_key,
            _ => self.key.redis_key(),
        };
        // answer.lua leaves out a held record's empty body.
        let body = match self.settles_held {
            Some(_) if self.rendered_on_replay => &[][..],
            _ => &self.response.body[..],
        };
        inv.key(at)
            .arg(self.key.stored_fingerprint())
            .arg(self.response.status)
            .arg(super::stored_ctype(&self.response.content_type))
            .arg(body)
            .arg(self.ttl.as_millis() as u64);
        if let Some((token, lease)) = self.takes_key {
            inv.arg(token).arg(lease.as_millis() as u64);
        } else if let Some(token) = self.settles_held {
            inv.arg(token).arg("held");
        }
    }

    /// Reads a script's answer that `answer.lua`'s `take_key` refused to go on with
    /// (`{'idem', ...}`): what the key decided instead. None for any other answer.
    pub fn refusal(reply: &[redis::Value]) -> Option<Result<Begin, CommonError>> {
        match reply.first() {
            Some(redis::Value::BulkString(tag)) if tag == b"idem" => Some(IdempotencyStore::decision(&reply[1..])),
            _ => None,
        }
    }
}
