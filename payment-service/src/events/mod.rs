//! The payment event log: every change to a charge or a wallet appends one immutable event to
//! its aggregate's list in the same script as the change (events.lua), so the log and the state
//! can never disagree. `GET /events` reads one aggregate's events in order; `POST /admin/verify`
//! ([`verify`]) rebuilds charges, refunds, wallet balances and the books from the events alone
//! and reports where the stored state differs.

pub mod verify;

use std::sync::LazyLock;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use shared::lua::Lib;
use shared::metrics::CounterFamily;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::PaymentError;
use crate::store::{Store, events_key, shard_of_charge};

/// `append_event`, `int`: for the scripts that make changes.
pub static EVENTS: Lib = Lib {
    name: "events",
    source: include_str!("events.lua"),
    needs: &[],
};

/// `payment_events_total{type}`: events appended, counted by the handlers that made them.
pub static EVENTS_APPENDED: LazyLock<CounterFamily> =
    LazyLock::new(|| CounterFamily::register("payment_events", "Events appended to the payment event log, by type"));

/// One event as stored and served.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `<aggregateId>-<sequence>`.
    pub event_id: String,
    /// 1, 2, 3, … per aggregate, without gaps.
    pub sequence: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub aggregate_id: String,
    pub at: String,
    /// The order a charge's or a debit's events belong to (a credit's: its customer).
    pub correlation_id: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub aggregate_id: String,
    pub events: Vec<Event>,
    /// Pass as `after` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    aggregate_id: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// The shard an aggregate's events live in: a charge's (`ch_…`) or a wallet's (`wal_<customer>`).
pub fn shard_of_aggregate(aggregate_id: &str) -> Option<u16> {
    if let Some(customer) = aggregate_id.strip_prefix("wal_") {
        return shared::ids::is_safe_id(customer).then(|| shared::ids::shard_of(customer));
    }
    if let Some(hex) = aggregate_id.strip_prefix("spl_") {
        // A split's id is shaped as a charge's, with its item's shard.
        return shard_of_charge(&format!("ch_{hex}"));
    }
    shard_of_charge(aggregate_id)
}

/// An event as its list keeps it: its id, sequence and aggregate are its list and position. A
/// charge's first event (charges::store::event_of) names its type, correlation and data `t`,
/// `c` and `d`, and its data's fields by [`CHARGE_LETTERS`]; every other event, and charges'
/// first events stored before #29's twelfth pass, in full.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEvent {
    #[serde(rename = "type", alias = "t")]
    kind: String,
    at: String,
    #[serde(alias = "c")]
    correlation_id: String,
    #[serde(alias = "d")]
    data: serde_json::Value,
}

/// A charge's first event's data fields, in full and as it stores them (events.lua's
/// `charge_letter` says the same; a script test reads the facts back through both).
pub const CHARGE_LETTERS: [(&str, &str); 7] = [
    ("amount", "a"),
    ("currency", "u"),
    ("paymentMethod", "m"),
    ("gateway", "g"),
    ("gatewayReference", "r"),
    ("traceId", "x"),
    ("declineCode", "d"),
];

/// The letter a charge's first event stores `name` under.
pub fn charge_letter(name: &str) -> Option<&'static str> {
    CHARGE_LETTERS.iter().find(|(full, _)| *full == name).map(|(_, l)| *l)
}

fn parse_event(raw: &str, aggregate_id: &str, sequence: u64) -> Result<Event, PaymentError> {
    let mut stored: StoredEvent = serde_json::from_str(raw)
        .map_err(|e| PaymentError::from(shared::CommonError::Internal(format!("stored event {raw:?}: {e}"))))?;
    // A charge's own events (charge.*) are stored without the ids their aggregate and
    // correlation already are (since #29's seventh pass): served, they carry them as before.
    if stored.kind.starts_with("charge.")
        && let Some(data) = stored.data.as_object_mut()
    {
        for (full, letter) in CHARGE_LETTERS {
            if let Some(value) = data.remove(letter) {
                data.insert(full.into(), value);
            }
        }
        data.entry("chargeId").or_insert_with(|| aggregate_id.into());
        data.entry("orderId")
            .or_insert_with(|| stored.correlation_id.clone().into());
    }
    Ok(Event {
        event_id: format!("{aggregate_id}-{sequence}"),
        sequence,
        kind: stored.kind,
        aggregate_id: aggregate_id.to_string(),
        at: stored.at,
        correlation_id: stored.correlation_id,
        data: stored.data,
    })
}

impl Store {
    /// An aggregate's events from sequence `after + 1`, at most `limit` (all when `None`).
    pub async fn events(&self, aggregate_id: &str, after: u64, limit: Option<u64>) -> Result<Vec<Event>, PaymentError> {
        let key = if aggregate_id.starts_with("gw_") {
            crate::gateways::switch_events_key(aggregate_id)
        } else {
            match shard_of_aggregate(aggregate_id) {
                Some(shard) => events_key(shard, aggregate_id),
                None => return Ok(Vec::new()),
            }
        };
        let mut conn = self.pool.get().await?;
        let stop: i64 = limit.map_or(-1, |l| (after + l) as i64 - 1);
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(key)
            .arg(after)
            .arg(stop)
            .query_async(&mut conn)
            .await?;
        raw.iter()
            .enumerate()
            .map(|(i, r)| parse_event(r, aggregate_id, after + i as u64 + 1))
            .collect()
    }
}

#[utoipa::path(
    get, path = "/events",
    params(
        ("aggregateId" = String, Query, min_length = 1, max_length = 160, pattern = "^[A-Za-z0-9_-]+$", description = "a charge id (`ch_…`), a wallet (`wal_<customerId>`) or a provider's switch (`gw_<name>`)"),
        ("after" = Option<String>, Query, pattern = "^[0-9]{1,19}$", description = "the sequence to read after (a page's nextCursor); 0 when left out"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "default 20")
    ),
    responses(
        (status = 200, body = EventPage, description = "in sequence order; empty for an unknown aggregate"),
        (status = 400, description = "invalid-request: aggregateId missing, or after or limit malformed")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let query = web::Query::<EventsQuery>::from_query(req.query_string())
        .map_err(|e| PaymentError::invalid(format!("invalid query: {e}")))?
        .into_inner();
    let aggregate_id = query
        .aggregate_id
        .filter(|id| {
            id.len() <= 160 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        .ok_or_else(|| PaymentError::invalid("aggregateId is required: a charge id or wal_<customerId>"))?;
    let after = match query.after.as_deref() {
        None => 0,
        Some(a) => a
            .parse::<u64>()
            .ok()
            .filter(|_| a.len() <= 19)
            .ok_or_else(|| PaymentError::invalid("after: a sequence number (a page's nextCursor)"))?,
    };
    let limit = crate::wallets::page_limit(query.limit.as_deref())?;
    // One more than asked, to know whether a next page exists.
    let mut events = state.store.events(&aggregate_id, after, Some(limit + 1)).await?;
    let next_cursor = (events.len() as u64 > limit).then(|| {
        events.truncate(limit as usize);
        events.last().map(|e| e.sequence.to_string()).unwrap_or_default()
    });
    Ok(HttpResponse::Ok().json(EventPage {
        aggregate_id,
        events,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_event_stored_without_its_ids_is_served_with_them_and_older_ones_as_stored() {
        let compact = r#"{"type":"charge.succeeded","at":"t","correlationId":"ord_1","data":{"amount":5}}"#;
        let older = r#"{"type":"charge.succeeded","at":"t","correlationId":"ord_1","data":{"amount":5,"chargeId":"ch_1","orderId":"ord_1"}}"#;
        let refund = r#"{"type":"refund.succeeded","at":"t","correlationId":"ord_1","data":{"refundId":"re_1"}}"#;

        let lettered = r#"{"t":"charge.succeeded","at":"t","c":"ord_1","d":{"a":5}}"#;

        let served = |raw: &str| parse_event(raw, "ch_1", 1).expect("parsed").data;

        let full = serde_json::json!({"amount": 5, "chargeId": "ch_1", "orderId": "ord_1"});
        assert_eq!(served(compact), full);
        assert_eq!(served(older), full);
        assert_eq!(served(lettered), full);
        assert_eq!(
            served(refund),
            serde_json::json!({"refundId": "re_1"}),
            "only charge.* events"
        );
    }
}
