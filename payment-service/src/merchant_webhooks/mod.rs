//! Merchant webhooks (outbound): accounts register endpoints for the events they want, and
//! every such event is delivered to each matching endpoint at least once, signed per Standard
//! Webhooks with the endpoint's `whsec_` secret.
//!
//! The path of an event, each step durable before the next:
//! 1. The script that makes a change appends a pointer to the shard's outbox stream in the same
//!    step (`shared::outbox`; order-service for `order.*`, payment's events.lua `publish` for
//!    charges, refunds and credits): never a change without its event.
//! 2. [`relay`]: each replica reads every outbox from its head, finds the endpoints the event
//!    belongs to ([`recipients`]) and writes one delivery per endpoint (fanout.lua, with ids
//!    derived from the event and the endpoint, so a re-read creates nothing twice); only then
//!    is the outbox entry deleted (by a trim once a second). An entry a dead replica read is
//!    still there for the next.
//! 3. [`dispatcher`]: deliveries wait in their endpoint's sorted set scored by their next
//!    attempt, and endpoints with something due in another. A replica claims an endpoint's due
//!    deliveries by pushing their scores past the attempt's timeout (claim.lua: a lease, so a
//!    replica killed mid-send leaves them due again), sends them, and records each attempt and
//!    what comes next (attempt.lua; [`schedule::after_attempt`] decides). At most
//!    `WEBHOOK_ENDPOINT_CONCURRENCY` sends per endpoint at once per replica: a slow endpoint
//!    holds only its own.
//!
//! [`address`] keeps endpoints off private networks (at registration and again at every
//! connection, against DNS rebinding); [`endpoints`] is the HTTP API.
//!
//! Keys, one slot `{wh}` (a merchant's rate, not the checkout's): `payment:{wh}:endpoints` hash
//! id → endpoint JSON; `payment:{wh}:d:<deliveryId>` hash; `payment:{wh}:att:<deliveryId>` list
//! of attempts; `payment:{wh}:due:<endpointId>` sorted set (delivery ids → next attempt, ms)
//! and `payment:{wh}:due` (endpoint ids → their earliest), a two-level queue, so one endpoint's
//! backlog never hides another's due deliveries; `payment:{wh}:pending` sorted set (delivery
//! ids → created, ms: the queue's depth and age); `payment:{wh}:ep:<endpointId>` sorted set
//! (delivery ids → created, ms: the history).

pub mod address;
pub mod dispatcher;
pub mod endpoints;
pub mod relay;
pub mod schedule;
#[cfg(test)]
mod script_tests;
pub mod store;

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::metrics::{CounterFamily, GaugeFamily};
use utoipa::ToSchema;

pub use schedule::Schedule;

/// The settings of outbound webhooks.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub allow_private: bool,
    pub timeout: Duration,
    pub schedule: Schedule,
    pub endpoint_concurrency: usize,
}

/// `webhook_deliveries_total{outcome}`: succeeded, retried (an attempt failed, another is
/// scheduled), dead (dead-lettered).
pub static DELIVERIES: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "webhook_deliveries",
        "Merchant webhook delivery attempts by outcome: succeeded, retried, dead",
    )
});
/// `webhook_attempts_total{result}`: 2xx, other statuses by class, timeout, connect, refused_address.
pub static ATTEMPTS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "webhook_attempts",
        "Merchant webhook HTTP attempts by result: 2xx, 3xx, 4xx, 5xx, timeout, error, refused_address",
    )
});
/// `webhook_queue_depth` and `webhook_oldest_pending_seconds`.
pub static QUEUE: LazyLock<GaugeFamily> = LazyLock::new(|| {
    GaugeFamily::register(
        "webhook_queue",
        "Merchant webhook deliveries not yet succeeded or dead (what=depth), and the age in seconds of the oldest (what=oldest_seconds)",
    )
});
/// `webhook_fanout_total{outcome}`: outbox entries turned into deliveries, or matching none.
pub static FANOUT: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "webhook_fanout",
        "Outbox events read by the relay, by outcome: delivered (to at least one endpoint), unsubscribed, ignored",
    )
});

/// The events an endpoint may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "order.completed")]
    OrderCompleted,
    #[serde(rename = "order.failed")]
    OrderFailed,
    #[serde(rename = "order.refunded")]
    OrderRefunded,
    #[serde(rename = "charge.succeeded")]
    ChargeSucceeded,
    #[serde(rename = "charge.refunded")]
    ChargeRefunded,
    #[serde(rename = "wallet.credited")]
    WalletCredited,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCompleted => "order.completed",
            Self::OrderFailed => "order.failed",
            Self::OrderRefunded => "order.refunded",
            Self::ChargeSucceeded => "charge.succeeded",
            Self::ChargeRefunded => "charge.refunded",
            Self::WalletCredited => "wallet.credited",
        }
    }

    /// The webhook type of an outbox entry: order-service writes the webhook's own names; the
    /// payment event log's `refund.succeeded` is a `charge.refunded`.
    pub fn of_outbox(kind: &str) -> Option<Self> {
        Some(match kind {
            "order.completed" => Self::OrderCompleted,
            "order.failed" => Self::OrderFailed,
            "order.refunded" => Self::OrderRefunded,
            "charge.succeeded" => Self::ChargeSucceeded,
            "refund.succeeded" => Self::ChargeRefunded,
            "wallet.credited" => Self::WalletCredited,
            _ => return None,
        })
    }
}

/// An endpoint's id: `we_` and 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointId(String);

impl EndpointId {
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("we_")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(raw.to_string()))
    }
    /// From the request that creates it: a retried request makes the same endpoint.
    pub fn derived(seed: &str) -> Self {
        Self(format!("we_{}", shared::idempotency::short_digest(seed, 16)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A delivery's id: `dlv_` and 32 hex digits, derived from its event and endpoint, so the
/// relay re-reading an event finds the delivery it made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryId(String);

impl DeliveryId {
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("dlv_")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(raw.to_string()))
    }
    pub fn of(event_id: &str, endpoint: &EndpointId) -> Self {
        Self(format!(
            "dlv_{}",
            shared::idempotency::short_digest(&format!("{event_id}\n{}", endpoint.as_str()), 16)
        ))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or being sent).
    Pending,
    Succeeded,
    /// Every attempt of the schedule failed: dead-lettered, until a manual retry.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: EndpointId,
    pub url: String,
    pub events: Vec<EventType>,
    /// `whsec_…`.
    pub secret: String,
    /// The account it belongs to; `None`: the platform's (registered with the internal token).
    pub account_id: Option<String>,
    pub created_at: String,
}

/// The endpoints an event goes to: those subscribed to its type that belong to the platform
/// (which sees every event) or to the account that owns the event's item. A wallet credit is
/// the platform's act on a customer's wallet, with no item: only platform endpoints get it.
pub fn recipients<'a>(endpoints: &'a [Endpoint], kind: EventType, owner: Option<&str>) -> Vec<&'a Endpoint> {
    endpoints
        .iter()
        .filter(|e| e.events.contains(&kind))
        .filter(|e| match e.account_id.as_deref() {
            None => true,
            Some(account) => kind != EventType::WalletCredited && owner == Some(account),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(n: u8, account: Option<&str>, events: &[EventType]) -> Endpoint {
        Endpoint {
            id: EndpointId::derived(&n.to_string()),
            url: format!("https://example.com/{n}"),
            events: events.to_vec(),
            secret: "whsec_x".into(),
            account_id: account.map(str::to_string),
            created_at: String::new(),
        }
    }

    #[test]
    fn an_event_goes_to_the_platform_and_to_its_items_owner_if_subscribed() {
        use EventType::*;
        let all = [
            endpoint(1, None, &[OrderCompleted, WalletCredited]),
            endpoint(2, Some("acct_a"), &[OrderCompleted, ChargeSucceeded, WalletCredited]),
            endpoint(3, Some("acct_b"), &[OrderCompleted]),
            endpoint(4, Some("acct_a"), &[OrderFailed]),
        ];
        let ids = |kind, owner| -> Vec<u8> {
            recipients(&all, kind, owner)
                .iter()
                .map(|e| all.iter().position(|a| a.id == e.id).map_or(0, |p| p as u8 + 1))
                .collect()
        };
        assert_eq!(ids(OrderCompleted, Some("acct_a")), [1, 2]);
        assert_eq!(ids(OrderCompleted, Some("acct_b")), [1, 3]);
        assert_eq!(ids(OrderCompleted, None), [1]);
        assert_eq!(ids(ChargeSucceeded, Some("acct_a")), [2]);
        assert_eq!(ids(OrderFailed, Some("acct_b")), Vec::<u8>::new());
        assert_eq!(ids(WalletCredited, Some("acct_a")), [1]);
    }

    #[test]
    fn ids_parse_only_in_their_own_shape_and_deliveries_are_derived() {
        assert!(EndpointId::parse(EndpointId::derived("k").as_str()).is_some());
        assert!(EndpointId::parse("we_xyz").is_none());
        assert!(EndpointId::parse("dlv_0123456789abcdef0123456789abcdef").is_none());
        let e = EndpointId::derived("k");
        assert_eq!(
            DeliveryId::of("ord_1-completed", &e),
            DeliveryId::of("ord_1-completed", &e)
        );
        assert_ne!(
            DeliveryId::of("ord_1-completed", &e),
            DeliveryId::of("ord_1-failed", &e)
        );
        assert!(DeliveryId::parse(DeliveryId::of("x", &e).as_str()).is_some());
    }

    #[test]
    fn refund_succeeded_in_the_log_is_a_charge_refunded_webhook() {
        assert_eq!(
            EventType::of_outbox("refund.succeeded"),
            Some(EventType::ChargeRefunded)
        );
        assert_eq!(EventType::of_outbox("split.executed"), None);
        for t in [EventType::OrderCompleted, EventType::WalletCredited] {
            assert_eq!(EventType::of_outbox(t.as_str()), Some(t));
        }
    }
}
