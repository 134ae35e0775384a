//! The webhook records in Redis (keys in [`super`]'s notes) and the scripts that change them.

use std::sync::LazyLock;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use shared::lua::Script;
use utoipa::ToSchema;

use super::{DeliveryId, DeliveryStatus, Endpoint, EndpointId, EventType};
use crate::error::PaymentError;
use crate::store::Store;

/// `refresh_due`: the two-level queue (due.lua).
static DUE_LIB: shared::lua::Lib = shared::lua::Lib {
    name: "due",
    source: include_str!("due.lua"),
    needs: &[],
};
static FANOUT: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[&DUE_LIB], include_str!("fanout.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[&DUE_LIB], include_str!("claim.lua")));
static ATTEMPT: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[&DUE_LIB], include_str!("attempt.lua")));
static RETRY: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[&DUE_LIB], include_str!("retry.lua")));

const ENDPOINTS: &str = "payment:{wh}:endpoints";
/// Endpoints with deliveries to send, each by its earliest due time (ms).
const DUE: &str = "payment:{wh}:due";
const PENDING: &str = "payment:{wh}:pending";
const DELIVERY_PREFIX: &str = "payment:{wh}:d:";
/// How long a succeeded or dead delivery and its attempts stay readable (and retryable by
/// hand), as Stripe keeps events: 30 days.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn delivery_key(id: &str) -> String {
    format!("{DELIVERY_PREFIX}{id}")
}
/// An endpoint's deliveries to send, each by its next attempt (ms).
fn endpoint_due_key(endpoint: &EndpointId) -> String {
    format!("payment:{{wh}}:due:{}", endpoint.as_str())
}
fn attempts_key(id: &str) -> String {
    format!("payment:{{wh}}:att:{id}")
}
fn history_key(endpoint: &EndpointId) -> String {
    format!("payment:{{wh}}:ep:{}", endpoint.as_str())
}

/// An event ready to fan out: what every one of its deliveries sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The `webhook-id`: the same for every attempt and every endpoint.
    pub event_id: String,
    pub kind: EventType,
    /// The JSON body, fixed at fan-out.
    pub body: String,
}

/// A delivery taken for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub endpoint: EndpointId,
    pub delivery: DeliveryId,
    pub event_id: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// A manual retry's single attempt.
    pub manual: bool,
}

/// One attempt, as its history keeps and shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub at: String,
    /// The endpoint's answer; null when none came (timeout, refused connection, refused address).
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// A delivery with its attempts.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: String,
    pub endpoint_id: String,
    /// The `webhook-id` every attempt carries.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: DeliveryStatus,
    pub created_at: String,
    /// When the next attempt is due; null once succeeded or dead.
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<Attempt>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

fn rfc3339_of_ms(ms: &str) -> Option<String> {
    let ms: u64 = ms.parse().ok()?;
    Some(shared::time::rfc3339_ms(ms))
}

impl Store {
    pub async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<(), PaymentError> {
        let json = serde_json::to_string(endpoint)
            .map_err(|e| PaymentError::from(shared::CommonError::Internal(format!("endpoint: {e}"))))?;
        let mut conn = self.pool.get().await?;
        let _: i64 = conn.hset(ENDPOINTS, endpoint.id.as_str(), json).await?;
        Ok(())
    }

    pub async fn endpoint(&self, id: &EndpointId) -> Result<Option<Endpoint>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let raw: Option<String> = conn.hget(ENDPOINTS, id.as_str()).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Every endpoint, oldest first.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let raw: Vec<String> = conn.hvals(ENDPOINTS).await?;
        let mut all: Vec<Endpoint> = raw.iter().filter_map(|r| serde_json::from_str(r).ok()).collect();
        all.sort_by(|a, b| (&a.created_at, a.id.as_str()).cmp(&(&b.created_at, b.id.as_str())));
        Ok(all)
    }

    /// False when there was no such endpoint. Its pending deliveries are dead-lettered when
    /// their turn comes (the dispatcher finds no endpoint); its history stays readable by id.
    pub async fn delete_endpoint(&self, id: &EndpointId) -> Result<bool, PaymentError> {
        let mut conn = self.pool.get().await?;
        let removed: i64 = conn.hdel(ENDPOINTS, id.as_str()).await?;
        Ok(removed == 1)
    }

    /// Creates the event's deliveries to `endpoints` (fanout.lua): how many were new.
    pub async fn fan_out(&self, event: &Outgoing, endpoints: &[&Endpoint], now_ms: u64) -> Result<u64, PaymentError> {
        let mut inv = FANOUT.key(DUE);
        inv.key(PENDING)
            .arg(now_ms)
            .arg(&event.event_id)
            .arg(event.kind.as_str())
            .arg(&event.body)
            .arg(RETENTION.as_millis() as u64);
        for endpoint in endpoints {
            let delivery = DeliveryId::of(&event.event_id, &endpoint.id);
            inv.key(delivery_key(delivery.as_str()))
                .key(endpoint_due_key(&endpoint.id))
                .key(history_key(&endpoint.id))
                .arg(endpoint.id.as_str())
                .arg(delivery.as_str());
        }
        let mut conn = self.pool.get().await?;
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Up to `count` endpoints with a delivery due at `now_ms`, the longest waiting first.
    pub async fn due_endpoints(&self, now_ms: u64, count: isize) -> Result<Vec<EndpointId>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let ids: Vec<String> = conn.zrangebyscore_limit(DUE, "-inf", now_ms, 0, count).await?;
        Ok(ids.iter().filter_map(|id| EndpointId::parse(id)).collect())
    }

    /// Takes up to `count` of the endpoint's due deliveries for one attempt each, until
    /// `until_ms` (claim.lua); none when another replica took them first.
    pub async fn claim(
        &self,
        endpoint: &EndpointId,
        now_ms: u64,
        until_ms: u64,
        count: usize,
    ) -> Result<Vec<Claimed>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let reply: Vec<String> = CLAIM
            .key(DUE)
            .key(endpoint_due_key(endpoint))
            .arg(endpoint.as_str())
            .arg(now_ms)
            .arg(until_ms)
            .arg(count)
            .arg(DELIVERY_PREFIX)
            .invoke_async(&mut conn)
            .await?;
        Ok(reply
            .chunks(5)
            .filter_map(|d| {
                Some(Claimed {
                    endpoint: endpoint.clone(),
                    delivery: DeliveryId::parse(d.first()?)?,
                    event_id: d.get(1)?.clone(),
                    body: d.get(2)?.clone(),
                    attempts: d.get(3)?.parse().unwrap_or(0),
                    manual: d.get(4).is_some_and(|m| m == "1"),
                })
            })
            .collect())
    }

    /// Records an attempt and what follows (attempt.lua): `next_ms` for a retry.
    pub async fn record_attempt(
        &self,
        claimed: &Claimed,
        outcome: DeliveryStatus,
        attempt: &Attempt,
        next_ms: Option<u64>,
    ) -> Result<(), PaymentError> {
        let outcome = match (outcome, next_ms) {
            (DeliveryStatus::Pending, Some(_)) => "retry",
            (other, _) => other.as_str(),
        };
        let json = serde_json::to_string(attempt)
            .map_err(|e| PaymentError::from(shared::CommonError::Internal(format!("attempt: {e}"))))?;
        let mut conn = self.pool.get().await?;
        let _: String = ATTEMPT
            .key(delivery_key(claimed.delivery.as_str()))
            .key(attempts_key(claimed.delivery.as_str()))
            .key(DUE)
            .key(endpoint_due_key(&claimed.endpoint))
            .key(PENDING)
            .arg(claimed.endpoint.as_str())
            .arg(claimed.delivery.as_str())
            .arg(outcome)
            .arg(json)
            .arg(next_ms.unwrap_or(0))
            .arg(RETENTION.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Makes a delivery due now (retry.lua): the status it had, None when there is no such
    /// delivery of that endpoint.
    pub async fn retry_delivery(
        &self,
        endpoint: &EndpointId,
        delivery: &DeliveryId,
        now_ms: u64,
    ) -> Result<Option<DeliveryStatus>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let owner: Option<String> = conn.hget(delivery_key(delivery.as_str()), "endpointId").await?;
        if owner.as_deref() != Some(endpoint.as_str()) {
            return Ok(None);
        }
        let had: String = RETRY
            .key(delivery_key(delivery.as_str()))
            .key(DUE)
            .key(endpoint_due_key(endpoint))
            .key(PENDING)
            .key(attempts_key(delivery.as_str()))
            .arg(endpoint.as_str())
            .arg(delivery.as_str())
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(DeliveryStatus::parse(&had))
    }

    /// One delivery with its attempts, if it is `endpoint`'s.
    pub async fn delivery(&self, endpoint: &EndpointId, id: &DeliveryId) -> Result<Option<DeliveryView>, PaymentError> {
        Ok(self
            .deliveries_by_id(std::slice::from_ref(&id.as_str().to_string()))
            .await?
            .into_iter()
            .find(|d| d.endpoint_id == endpoint.as_str()))
    }

    /// The endpoint's deliveries, newest first, at most `limit`, of one status if given.
    pub async fn deliveries(
        &self,
        endpoint: &EndpointId,
        status: Option<DeliveryStatus>,
        limit: usize,
    ) -> Result<Vec<DeliveryView>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let mut found = Vec::new();
        let mut start = 0isize;
        // Newest first, a page of ids at a time, until `limit` of the wanted status are found.
        while found.len() < limit {
            let ids: Vec<String> = conn.zrevrange(history_key(endpoint), start, start + 199).await?;
            if ids.is_empty() {
                break;
            }
            start += ids.len() as isize;
            let page = self.deliveries_by_id(&ids).await?;
            found.extend(page.into_iter().filter(|d| status.is_none_or(|s| d.status == s)));
        }
        found.truncate(limit);
        Ok(found)
    }

    async fn deliveries_by_id(&self, ids: &[String]) -> Result<Vec<DeliveryView>, PaymentError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(delivery_key(id))
                .arg(&[
                    "id",
                    "endpointId",
                    "eventId",
                    "type",
                    "status",
                    "createdAt",
                    "nextAt",
                    "body",
                ])
                .cmd("LRANGE")
                .arg(attempts_key(id))
                .arg(0)
                .arg(-1);
        }
        let mut conn = self.pool.get().await?;
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut views = Vec::new();
        for pair in replies.chunks(2) {
            let (Ok(fields), Ok(attempts)) = (
                redis::from_redis_value::<Vec<Option<String>>>(pair[0].clone()),
                redis::from_redis_value::<Vec<String>>(pair.get(1).cloned().unwrap_or(redis::Value::Nil)),
            ) else {
                continue;
            };
            let field = |i: usize| fields.get(i).cloned().flatten().unwrap_or_default();
            let Some(status) = DeliveryStatus::parse(&field(4)) else {
                continue;
            };
            views.push(DeliveryView {
                id: field(0),
                endpoint_id: field(1),
                event_id: field(2),
                kind: field(3),
                status,
                created_at: rfc3339_of_ms(&field(5)).unwrap_or_default(),
                next_attempt_at: (status == DeliveryStatus::Pending)
                    .then(|| rfc3339_of_ms(&field(6)))
                    .flatten(),
                attempts: attempts.iter().filter_map(|a| serde_json::from_str(a).ok()).collect(),
                payload: serde_json::from_str(&field(7)).unwrap_or(serde_json::Value::Null),
            });
        }
        Ok(views)
    }

    /// Deliveries not yet succeeded or dead, and the creation (ms) of the oldest.
    pub async fn queue(&self) -> Result<(u64, Option<u64>), PaymentError> {
        let mut conn = self.pool.get().await?;
        let (depth, oldest): (u64, Vec<(String, f64)>) = redis::pipe()
            .zcard(PENDING)
            .zrange_withscores(PENDING, 0, 0)
            .query_async(&mut conn)
            .await?;
        Ok((depth, oldest.first().map(|(_, s)| *s as u64)))
    }
}
