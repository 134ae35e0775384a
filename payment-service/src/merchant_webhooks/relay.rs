//! The relay: outbox entries become deliveries. Every replica reads the head of every outbox
//! (each order and payment shard's) and deletes an entry only after its deliveries are written
//! (fanout.lua, idempotent: ids derived from event and endpoint), so a replica killed at any
//! instant leaves the entry where the next read finds it. Relayed entries are deleted (one
//! XTRIM per outbox) once every [`TRIM_EVERY`], not after every poll: each trim is fsynced,
//! and 32 of them ten times a second cost a checkout ~25 bytes of AOF at ~850 checkouts/s.
//! Between trims a replica reads on from just past what it relayed; after one, from the head. Two replicas reading the same entry
//! both fan it out, and the second creates nothing. No consumer group: a group's bookkeeping
//! (the pending list, an XCLAIM and an XACK in the AOF per entry) cost the checkout more than
//! the entry itself, and idempotent fan-out makes it unnecessary. An entry that cannot be
//! handled yet (stock does not answer who owns the item) stays and is tried again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;
use redis::streams::{StreamId, StreamRangeReply};
use serde_json::{Value as Json, json};

use super::store::Outgoing;
use super::{EventType, FANOUT, recipients};
use crate::AppState;
use crate::error::PaymentError;

/// Entries read from the head of each outbox per poll.
const BATCH: usize = 128;
/// The longest wait between polls while entries cannot be relayed.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often relayed entries are deleted from their outboxes. A replica killed in between
/// leaves at most this much relayed again by the next reader, which creates nothing twice.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How long an item's owner is trusted once read.
const OWNER_FOR: Duration = Duration::from_secs(2);

/// Which service's scripts wrote an outbox, which says how its entries read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Order,
    Payment,
}

/// Every outbox, order's shards then payment's.
pub fn outboxes() -> Vec<(Source, String)> {
    let shards = 0..shared::ids::SHARDS;
    shards
        .clone()
        .map(|s| (Source::Order, shared::outbox::order_outbox(s)))
        .chain(shards.map(|s| (Source::Payment, shared::outbox::payment_outbox(s))))
        .collect()
}

/// An outbox entry as read: its stream, id and fields.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream: usize,
    pub id: String,
    pub fields: HashMap<String, String>,
}

/// An event ready to fan out, and the item whose owner it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub outgoing: Outgoing,
    pub item: Option<u64>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn entry_of(stream: usize, id: StreamId) -> Entry {
    Entry {
        stream,
        fields: id.map.iter().filter_map(|(k, v)| Some((k.clone(), text(v)?))).collect(),
        id: id.id,
    }
}

fn body(event_id: &str, kind: EventType, at: &str, data: Json) -> String {
    json!({"id": event_id, "type": kind.as_str(), "timestamp": at, "data": data}).to_string()
}

/// An order outbox entry as its webhook (order-service's `orders/store.rs` names the fields),
/// `at` its time (the entry's: Redis' clock when the script ran); None for an entry of no
/// webhook type.
pub fn order_event(fields: &HashMap<String, String>, at: &str) -> Option<Resolved> {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    let num = |k: &str| get(k).parse::<u64>().ok();
    let kind = EventType::of_outbox(get("t"))?;
    let order_id = get("o");
    let mut data = json!({
        "orderId": order_id,
        "itemId": num("i"),
        "quantity": num("q"),
        "customerId": Some(get("u")).filter(|u| !u.is_empty()),
        "amount": num("m"),
        "currency": get("c"),
    });
    let event_id = match kind {
        EventType::OrderCompleted => {
            data["status"] = "completed".into();
            format!("{order_id}-completed")
        }
        EventType::OrderFailed => {
            data["status"] = "failed".into();
            format!("{order_id}-failed")
        }
        EventType::OrderRefunded => {
            data["status"] = get("s").into();
            data["refundId"] = get("r").into();
            data["refundAmount"] = num("ra").into();
            data["amountRefunded"] = num("f").into();
            format!("{order_id}-refund-{}", get("r"))
        }
        _ => return None,
    };
    Some(Resolved {
        outgoing: Outgoing {
            body: body(&event_id, kind, at, data),
            event_id,
            kind,
        },
        item: num("i"),
    })
}

/// A payment outbox entry (a pointer into the event log) as its webhook: the event is read
/// from its aggregate's list. None when it is of no webhook type.
async fn payment_event(state: &AppState, fields: &HashMap<String, String>) -> Result<Option<Resolved>, PaymentError> {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    let Ok(seq) = get("s").parse::<u64>() else {
        return Ok(None);
    };
    let events = state.store.events(get("a"), seq.saturating_sub(1), Some(1)).await?;
    let Some(event) = events.into_iter().next() else {
        return Ok(None);
    };
    let Some(kind) = EventType::of_outbox(&event.kind) else {
        return Ok(None);
    };
    Ok(Some(Resolved {
        outgoing: Outgoing {
            body: body(&event.event_id, kind, &event.at, event.data),
            event_id: event.event_id,
            kind,
        },
        item: get("i").parse().ok(),
    }))
}

/// Items' owners as stock last said, for [`OWNER_FOR`].
#[derive(Default)]
struct Owners(HashMap<u64, (Option<String>, Instant)>);

impl Owners {
    async fn of(&mut self, state: &AppState, item: u64) -> Result<Option<String>, PaymentError> {
        if let Some((owner, at)) = self.0.get(&item)
            && at.elapsed() < OWNER_FOR
        {
            return Ok(owner.clone());
        }
        let owner = match crate::splits::owner_of(state, item).await {
            Ok(owner) => owner,
            Err(PaymentError::ItemNotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if self.0.len() > 10_000 {
            self.0.clear();
        }
        self.0.insert(item, (owner.clone(), Instant::now()));
        Ok(owner)
    }
}

pub async fn run(state: AppState) {
    let streams = outboxes();
    let keys: Vec<&str> = streams.iter().map(|(_, k)| k.as_str()).collect();
    // One node answers every stream's read in one round trip; a cluster, one stream (slot) per
    // round trip.
    let chunk = if state.store.one_node { keys.len() } else { 1 };
    let mut owners = Owners::default();
    let poll = state.settings.webhook_poll;
    // After a failure (stock or Redis not answering), the next polls wait longer, up to
    // MAX_BACKOFF, instead of asking a dependency that is down ten times a second.
    let mut wait = poll;
    // Per outbox, the entries relayed since the last trim (the last one is where reading goes
    // on from), and when that trim was.
    let mut relayed: Vec<Vec<String>> = vec![Vec::new(); keys.len()];
    let mut trimmed_at = Instant::now();
    loop {
        tokio::time::sleep(wait).await;
        let mut entries = Vec::new();
        let mut failed = false;
        for (n, part) in keys.chunks(chunk).enumerate() {
            let from = &relayed[n * chunk..n * chunk + part.len()];
            match read(&state, part, from, n * chunk).await {
                Ok(read) => entries.extend(read),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook relay: cannot read the outboxes; retrying");
                    failed = true;
                }
            }
        }
        let endpoints = if entries.is_empty() {
            Vec::new()
        } else {
            match state.store.endpoints().await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook relay: cannot read the endpoints; retrying");
                    entries.clear();
                    failed = true;
                    Vec::new()
                }
            }
        };
        for entry in entries {
            match relay(&state, &mut owners, &endpoints, streams[entry.stream].0, &entry).await {
                Ok(outcome) => {
                    FANOUT.inc(&[("outcome", outcome)]);
                    relayed[entry.stream].push(entry.id);
                }
                Err(e) => {
                    // This entry and those after it stay for a later poll.
                    tracing::warn!(error = %e, entry = %entry.id, "webhook relay: left for later");
                    failed = true;
                    break;
                }
            }
        }
        wait = if failed { backoff(wait, poll) } else { poll };
        if trimmed_at.elapsed() < TRIM_EVERY || relayed.iter().all(Vec::is_empty) {
            continue;
        }
        trimmed_at = Instant::now();
        let done: Vec<(&str, Vec<String>)> = relayed
            .iter_mut()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(n, ids)| (keys[n], std::mem::take(ids)))
            .collect();
        // Either way the next read starts from the head: what is left there is what was not
        // relayed, or (the trim failed) was and creates nothing new.
        if let Err(e) = delete(&state, &done, state.store.one_node).await {
            tracing::warn!(error = %e, "webhook relay: cannot delete relayed entries");
        }
    }
}

/// Writes an entry's deliveries; what it came to.
async fn relay(
    state: &AppState,
    owners: &mut Owners,
    endpoints: &[super::Endpoint],
    source: Source,
    entry: &Entry,
) -> Result<&'static str, PaymentError> {
    if endpoints.is_empty() {
        // Nobody subscribes to anything: not even the event is read.
        return Ok("unsubscribed");
    }
    let resolved = match source {
        Source::Order => order_event(&entry.fields, &entry_time(&entry.id)),
        Source::Payment => payment_event(state, &entry.fields).await?,
    };
    let Some(Resolved { outgoing, item }) = resolved else {
        return Ok("ignored");
    };
    let subscribed = endpoints.iter().any(|e| e.events.contains(&outgoing.kind));
    if !subscribed {
        return Ok("unsubscribed");
    }
    let owner = match item {
        Some(item) => owners.of(state, item).await?,
        None => None,
    };
    let to = recipients(endpoints, outgoing.kind, owner.as_deref());
    if to.is_empty() {
        return Ok("unsubscribed");
    }
    state.store.fan_out(&outgoing, &to, shared::time::now_ms()).await?;
    Ok("delivered")
}

/// The wait after a failed poll: doubled, between the poll interval and [`MAX_BACKOFF`].
fn backoff(wait: Duration, poll: Duration) -> Duration {
    (wait * 2).clamp(poll, MAX_BACKOFF.max(poll))
}

/// An entry id's time (`<ms>-<seq>`), as the webhooks' timestamps are written.
fn entry_time(id: &str) -> String {
    let ms = id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0);
    shared::time::rfc3339_ms(ms)
}

/// Up to [`BATCH`] entries of each of `keys` (streams `first`, `first + 1`, …): past the last
/// of its `relayed` ids, or from its head.
async fn read(
    state: &AppState,
    keys: &[&str],
    relayed: &[Vec<String>],
    first: usize,
) -> Result<Vec<Entry>, PaymentError> {
    let mut pipe = redis::pipe();
    for (key, relayed) in keys.iter().zip(relayed) {
        pipe.xrange_count(*key, read_from(relayed), "+", BATCH);
    }
    let mut conn = state.store.pool.get().await?;
    let replies: Vec<StreamRangeReply> = pipe.query_async(&mut conn).await?;
    Ok(replies
        .into_iter()
        .enumerate()
        .flat_map(|(n, reply)| reply.ids.into_iter().map(move |id| entry_of(first + n, id)))
        .collect())
}

/// Where an outbox is read from: just past the last entry relayed since its last trim
/// (XRANGE's exclusive `(`), or its head.
fn read_from(relayed: &[String]) -> String {
    relayed
        .last()
        .map_or_else(|| "-".to_string(), |last| format!("({last}"))
}

/// The least id an outbox keeps once every entry up to `last` is relayed (XTRIM's MINID: the
/// entries below it go). Ids are `<ms>-<seq>`, and XADD '*' only ever appends above the last.
fn kept_from(last: &str) -> Option<String> {
    let (ms, seq) = last.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    Some(format!("{ms}-{}", seq.checked_add(1)?))
}

/// Deletes what was relayed: each stream's relayed entries are the head of what was read (the
/// loop stops at the first it cannot relay), so one XTRIM MINID per stream takes them, however
/// many (an XDEL named each, 22 fsynced bytes apiece). On one node every stream in one round
/// trip, on a cluster one per stream.
async fn delete(state: &AppState, done: &[(&str, Vec<String>)], one_node: bool) -> Result<(), PaymentError> {
    let groups: Vec<&[(&str, Vec<String>)]> = if one_node { vec![done] } else { done.chunks(1).collect() };
    for group in groups.into_iter().filter(|g| !g.is_empty()) {
        let mut pipe = redis::pipe();
        for (key, ids) in group {
            match ids.last().and_then(|last| kept_from(last)) {
                Some(min) => pipe.cmd("XTRIM").arg(*key).arg("MINID").arg(min).ignore(),
                None => pipe.xdel(*key, ids).ignore(),
            };
        }
        let mut conn = state.store.pool.get().await?;
        let () = pipe.query_async(&mut conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_outbox_is_read_past_what_was_relayed_since_its_trim_else_from_its_head() {
        assert_eq!(read_from(&[]), "-");
        assert_eq!(
            read_from(&["1796464800000-0".to_string(), "1796464800001-3".to_string()]),
            "(1796464800001-3"
        );
    }

    #[test]
    fn an_outbox_keeps_from_just_above_the_last_relayed_entry() {
        assert_eq!(kept_from("1796464800000-0").as_deref(), Some("1796464800000-1"));
        assert_eq!(kept_from("1796464800000-41").as_deref(), Some("1796464800000-42"));
        assert_eq!(kept_from("garbage"), None);
        assert_eq!(kept_from(&format!("1-{}", u64::MAX)), None);
    }

    #[test]
    fn an_ended_order_is_a_webhook_with_a_stable_id_per_event() {
        let completed = fields(&[
            ("t", "order.completed"),
            ("o", "ord_1"),
            ("i", "7"),
            ("q", "2"),
            ("u", ""),
            ("m", "9000000000000"),
            ("c", "USD"),
        ]);
        let resolved = order_event(&completed, &entry_time("1796464800000-0")).unwrap_or_else(|| panic!("no event"));
        assert_eq!(resolved.outgoing.event_id, "ord_1-completed");
        assert_eq!(resolved.item, Some(7));
        let body: Json = serde_json::from_str(&resolved.outgoing.body).unwrap_or_default();
        assert_eq!(body["type"], "order.completed");
        assert_eq!(body["id"], "ord_1-completed");
        assert_eq!(body["timestamp"], "2026-12-05T10:00:00.000Z");
        assert_eq!(body["data"]["amount"], 9_000_000_000_000u64);
        assert_eq!(body["data"]["customerId"], Json::Null);
        assert_eq!(body["data"]["status"], "completed");

        let refunded = fields(&[
            ("t", "order.refunded"),
            ("o", "ord_1"),
            ("r", "re_9"),
            ("ra", "50"),
            ("f", "50"),
            ("s", "partially_refunded"),
        ]);
        let resolved = order_event(&refunded, "t").unwrap_or_else(|| panic!("no event"));
        assert_eq!(resolved.outgoing.event_id, "ord_1-refund-re_9");
        assert!(order_event(&fields(&[("t", "order.shipped"), ("o", "ord_1")]), "t").is_none());
    }

    #[test]
    fn failed_polls_wait_longer_up_to_a_bound() {
        let poll = Duration::from_millis(100);
        assert_eq!(backoff(poll, poll), Duration::from_millis(200));
        assert_eq!(backoff(Duration::from_secs(4), poll), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_secs(9), Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn every_shard_of_both_services_has_an_outbox() {
        let all = outboxes();
        assert_eq!(all.len(), 2 * shared::ids::SHARDS as usize);
        assert!(all.contains(&(Source::Order, "order:{ord:0}:outbox".to_string())));
        assert!(all.contains(&(Source::Payment, "payment:{pay:15}:outbox".to_string())));
    }
}
