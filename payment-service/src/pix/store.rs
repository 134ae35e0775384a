//! The Pix scripts' I/O: storing a received webhook, reading the stream as a consumer group,
//! a paid charge, a canceled one.

use std::sync::LazyLock;
use std::time::Duration;

use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use shared::lua::Script;

use crate::error::PaymentError;
use crate::splits::store::recipients_key;
use crate::store::{Store, charge_key, events_key, outbox_key, shard_of_charge, totals_key};

static RECEIVE: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[], include_str!("receive.lua")));
static PAID: LazyLock<Script> = LazyLock::new(|| {
    shared::lua::script(
        &[&crate::events::EVENTS, &shared::lua::COUNTS],
        include_str!("paid.lua"),
    )
});
static CANCEL: LazyLock<Script> =
    LazyLock::new(|| shared::lua::script(&[&crate::events::EVENTS], include_str!("cancel.lua")));

pub const STREAM: &str = "payment:{whk}:webhooks";
pub const GROUP: &str = "workers";
/// How long a webhook-id is remembered: far longer than any provider re-sends.
const SEEN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The stream is trimmed to about this many entries (applied ones; see docs/failures.md).
const STREAM_CAP: u64 = 100_000;

fn seen_key(provider: &str, id: &str) -> String {
    format!("payment:{{whk}}:seen:{provider}:{id}")
}

/// A received webhook, as the stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub entry_id: String,
    pub provider: String,
    pub webhook_id: String,
    pub body: Vec<u8>,
}

impl Received {
    /// When it was stored (the entry id's milliseconds).
    pub fn stored_at_ms(&self) -> Option<u64> {
        self.entry_id.split('-').next()?.parse().ok()
    }
}

/// What paid.lua found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paid {
    /// Moved from pending to succeeded now.
    Paid,
    /// Moved from canceled (its order expired) to succeeded: to be refunded.
    Late,
    /// Already past pending: its status, and whether it is a late payment still to refund.
    Already {
        status: String,
        late_refund: bool,
    },
    Missing,
    /// The provider reports another amount than the charge's: not applied.
    Mismatch,
}

fn value_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn entries(ids: Vec<redis::streams::StreamId>) -> Vec<Received> {
    ids.into_iter()
        .filter_map(|e| {
            let field = |name: &str| e.map.get(name).and_then(value_bytes);
            Some(Received {
                provider: String::from_utf8(field("provider")?).ok()?,
                webhook_id: String::from_utf8(field("id")?).ok()?,
                body: field("body")?,
                entry_id: e.id,
            })
        })
        .collect()
}

impl Store {
    /// Stores a verified webhook once per id: true when new, false for a re-sent one.
    pub async fn receive_webhook(&self, provider: &str, id: &str, body: &[u8]) -> Result<bool, PaymentError> {
        let mut conn = self.pool.get().await?;
        let outcome: String = RECEIVE
            .key(seen_key(provider, id))
            .key(STREAM)
            .arg(provider)
            .arg(id)
            .arg(body)
            .arg(SEEN_FOR.as_millis() as u64)
            .arg(STREAM_CAP)
            .invoke_async(&mut conn)
            .await?;
        Ok(outcome == "stored")
    }

    /// Creates the consumer group (and the stream) unless it exists.
    pub async fn ensure_group(&self) -> Result<(), PaymentError> {
        let mut conn = self.pool.get().await?;
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(STREAM, GROUP, "0").await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `count` webhooks no consumer has taken yet, now `consumer`'s.
    pub async fn read_new(&self, consumer: &str, count: usize) -> Result<Vec<Received>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let opts = StreamReadOptions::default().group(GROUP, consumer).count(count);
        let reply: Option<StreamReadReply> = conn.xread_options(&[STREAM], &[">"], &opts).await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| entries(k.ids)).collect())
            .unwrap_or_default())
    }

    /// Up to `count` webhooks taken by a consumer and not acknowledged for `idle`, now
    /// `consumer`'s (a dead worker's, or one that could not finish them yet).
    pub async fn claim_idle(
        &self,
        consumer: &str,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<Received>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let opts = StreamAutoClaimOptions::default().count(count);
        let reply: StreamAutoClaimReply = conn
            .xautoclaim_options(STREAM, GROUP, consumer, idle.as_millis() as u64, "0-0", opts)
            .await?;
        Ok(entries(reply.claimed))
    }

    pub async fn ack(&self, entry_id: &str) -> Result<(), PaymentError> {
        let mut conn = self.pool.get().await?;
        let _: i64 = conn.xack(STREAM, GROUP, &[entry_id]).await?;
        Ok(())
    }

    /// Applies a provider's "paid" to a Pix charge (paid.lua).
    pub async fn pix_paid(&self, charge_id: &str, amount: u64, event: &str) -> Result<Paid, PaymentError> {
        let Some(shard) = shard_of_charge(charge_id) else {
            return Ok(Paid::Missing);
        };
        let mut conn = self.pool.get().await?;
        let reply: Vec<String> = PAID
            .key(charge_key(shard, charge_id))
            .key(totals_key(shard))
            .key(events_key(shard, charge_id))
            .key(self.aggregates_key(shard))
            .key(recipients_key(shard))
            .key(outbox_key(shard))
            .arg(charge_id)
            .arg(amount.to_string())
            .arg(event)
            .arg(shared::time::now_rfc3339())
            .arg(crate::splits::store::recipient_prefix(shard))
            .invoke_async(&mut conn)
            .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        Ok(match field(0) {
            "paid" => Paid::Paid,
            "late" => Paid::Late,
            "already" => Paid::Already {
                status: field(1).to_string(),
                late_refund: field(2) == "1",
            },
            "mismatch" => Paid::Mismatch,
            _ => Paid::Missing,
        })
    }

    /// Cancels a pending Pix (cancel.lua): the status after the call, None for no such charge.
    pub async fn cancel_pix(&self, charge_id: &str, event: &str) -> Result<Option<String>, PaymentError> {
        let Some(shard) = shard_of_charge(charge_id) else {
            return Ok(None);
        };
        let mut conn = self.pool.get().await?;
        let status: String = CANCEL
            .key(charge_key(shard, charge_id))
            .key(events_key(shard, charge_id))
            .key(self.aggregates_key(shard))
            .arg(charge_id)
            .arg(event)
            .invoke_async(&mut conn)
            .await?;
        Ok(Some(status).filter(|s| !s.is_empty()))
    }
}
