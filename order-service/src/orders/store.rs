//! Orders, their steps and the reconciliation totals in Redis: the keys, and the reads.
//!
//! Keys (the `{ord:S}` hash tag, S = shard of the order id, keeps an order, its steps and the
//! totals it moves in one Redis Cluster slot, so each change is one atomic script):
//! - `order:{ord:S}:order:<orderId>` hash: the order, its steps (`n` of them, fields `s1`..`sN`,
//!   each "name status at", see steps.lua) and its final response once terminal (none for a
//!   completed order: its 200 is rendered from its fields, [`OrderStore::final_response`])
//! - `order:{ord:S}:steps:<orderId>` list: one JSON step per saga event, as older versions
//!   kept them; read before the hash's, never written
//! - `order:{ord:S}:totals` hash: `<CURRENCY>:<bucket>:n|a` (count, amount), the bucket a letter
//!   ([`bucket_of`]); older totals also count in `<CURRENCY>:<status>:count|amount`
//! - `order:{ord:S}:key:<Idempotency-Key>` hash: the checkout's key record (see
//!   `shared::idempotency`), in the shard of the client's key, where its orders are made too
//! - `order:{ord:S}:active` sorted set: orders whose Idempotency-Key is not settled yet, scored
//!   by the time (ms) their runner's lease runs out. A runner renews its lease while it works;
//!   the recovery worker claims an order whose lease ran out (one claimant wins: the claim is
//!   one script) and drives it to its end. The order's `owner` field fences out a runner that
//!   lost its lease: its changes are refused, so only the owner's view becomes the record.
//!
//! An order is counted in the totals when it leaves processing, in its currency's bucket (`XXX`,
//! ISO 4217 "no currency", when its price was never known). Processing orders are counted when
//! the totals are read (totals.lua), under `XXX` with amount 0, whatever their price: a
//! checkout writes its totals once so (see order.lua).

//!
//! The checkout's writes (scripts) are in [`crate::checkout::store`].

use actix_web::http::StatusCode;
use shared::idempotency::StoredResponse;
use shared::ids::SHARDS;
use shared::lua::Lib;
use shared::redis_pool::Pool;

use std::collections::HashMap;

use crate::error::OrderError;
use crate::ids::{OrderId, OrderStatus, StepName, StepStatus};
use crate::model::{Bucket, CheckoutCompleted, CurrencyTotals, OrderView, Step, Totals};

/// Processing orders are reported under this currency, with amount 0; an order whose reservation
/// has not told its price has it.
pub const NO_CURRENCY: &str = "XXX";

/// The bucket of `entry` a totals field's status part names: a letter (order.lua's `bucket`,
/// refund.lua), or the status in full as totals written before #29's twelfth pass name it. None
/// for processing (counted when read, totals.lua; older versions' counts of it are stale) and
/// anything unknown.
fn bucket_of<'a>(entry: &'a mut CurrencyTotals, status: &str) -> Option<&'a mut Bucket> {
    match status {
        "c" | "completed" => Some(&mut entry.completed),
        "f" | "failed" => Some(&mut entry.failed),
        "x" | "compensated" => Some(&mut entry.compensated),
        "w" | "awaiting_payment" => Some(&mut entry.awaiting_payment),
        "r" | "refunds" => Some(&mut entry.refunds),
        _ => None,
    }
}

/// A shard's totals as read (totals.lua): the source, sent with EVAL (read rarely, by the
/// reconciliation endpoint, and pipelined over the shards).
const TOTALS: &str = include_str!("totals.lua");

/// The order's steps, fields of its hash (steps.lua).
pub(crate) static STEPS: Lib = Lib {
    name: "steps",
    source: include_str!("steps.lua"),
    needs: &[],
};

/// A step as steps.lua stores it: "name status at", the name and status as their letters
/// ([`StepName::code`], [`StepStatus::code`]) and `at` in milliseconds since the epoch (13
/// digits where RFC 3339 takes 24): every step is fsynced. [`parse_step`] renders it back.
pub(crate) fn step_text(name: StepName, status: StepStatus, at: &str) -> String {
    // Only a time that renders back as given is shortened (the services write every `at` so).
    match shared::time::parse_rfc3339_ms(at).filter(|&ms| shared::time::rfc3339_ms(ms) == at) {
        Some(ms) => format!("{} {} {ms}", name.code(), status.code()),
        None => format!("{} {} {at}", name.code(), status.code()),
    }
}

/// Steps written together (one write's `st` lines, oldest first), joined a line each: a step
/// after another whose time is in milliseconds keeps its time as `+<ms>` after that one's
/// (a checkout's three steps are written together, and 13 digits are fsynced where 1 – 3
/// say the same). [`parse_steps`] reads them back.
pub(crate) fn relative_steps(lines: &[&str]) -> String {
    let mut out = String::new();
    let mut before: Option<u64> = None;
    for line in lines {
        if !out.is_empty() {
            out.push('\n');
        }
        let (head, at) = line.rsplit_once(' ').unwrap_or((*line, ""));
        let ms = at.parse::<u64>().ok();
        match (before, ms) {
            (Some(b), Some(ms)) if ms >= b => out.push_str(&format!("{head} +{}", ms - b)),
            _ => out.push_str(line),
        }
        before = ms;
    }
    out
}

/// Reads stored steps in order ([`parse_step`] each), a time written `+<ms>` as that long after
/// the step before it ([`relative_steps`]).
fn parse_steps<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<Step> {
    let mut before: Option<u64> = None;
    lines
        .filter_map(|line| {
            let absolute = match line.rsplit_once(' ') {
                Some((head, rel)) if rel.starts_with('+') => {
                    let ms = before.zip(rel[1..].parse::<u64>().ok()).map(|(b, d)| b + d);
                    ms.map(|ms| format!("{head} {ms}"))
                }
                _ => None,
            };
            let line = absolute.as_deref().unwrap_or(line);
            before = line.rsplit_once(' ').and_then(|(_, at)| at.parse().ok());
            parse_step(line)
        })
        .collect()
}

/// Reads a stored step: "name status at" (name and status as letters, or in full as orders
/// stored before #29's twelfth pass have them; `at` in milliseconds, or RFC 3339 as older
/// versions wrote it), or the JSON older versions kept in a list.
fn parse_step(text: &str) -> Option<Step> {
    if text.starts_with('{') {
        return serde_json::from_str(text).ok();
    }
    let mut parts = text.splitn(3, ' ');
    let (name, status, at) = (parts.next()?, parts.next()?, parts.next()?);
    Some(Step {
        name: StepName::name_of_code(name).unwrap_or(name).into(),
        status: StepStatus::name_of_code(status).unwrap_or(status).into(),
        at: shared::time::stored_time(at),
    })
}

/// When the order last changed: the latest of its creation, its `updatedAt` (written by changes
/// without a step) and its last step (RFC 3339 times of one format compare as text).
fn updated_at(fields: &HashMap<String, String>, steps: &[Step]) -> String {
    [
        fields.get("createdAt"),
        fields.get("updatedAt"),
        steps.last().map(|s| &s.at),
    ]
    .into_iter()
    .flatten()
    .max()
    .cloned()
    .unwrap_or_default()
}

/// The steps of an order's hash, in order: the legacy list's, then `s1`..`sN` (`n` of them, as
/// orders stored before #29's eleventh pass keep them), then the lines of `st` (steps.lua).
fn steps_of(fields: &HashMap<String, String>, legacy: &[String]) -> Vec<Step> {
    let n: usize = fields.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut steps: Vec<Step> = parse_steps(
        legacy
            .iter()
            .map(String::as_str)
            .chain((1..=n).filter_map(|i| fields.get(&format!("s{i}")).map(String::as_str)))
            .chain(fields.get("st").into_iter().flat_map(|st| st.lines())),
    );
    // An order is created at its createdAt: only older versions wrote that as a step too.
    if let Some(at) = fields.get("createdAt")
        && steps.first().is_none_or(|s| s.name != StepName::Created.as_str())
    {
        let created = Step {
            name: StepName::Created.as_str().into(),
            status: StepStatus::Succeeded.as_str().into(),
            at: at.clone(),
        };
        steps.insert(0, created);
    }
    steps
}

pub(crate) fn order_key(id: &OrderId) -> String {
    format!("order:{{ord:{}}}:order:{id}", id.shard())
}
pub(crate) fn steps_key(id: &OrderId) -> String {
    format!("order:{{ord:{}}}:steps:{id}", id.shard())
}
pub(crate) fn totals_key_of(id: &OrderId) -> String {
    format!("order:{{ord:{}}}:totals", id.shard())
}
/// The shard's outbox: a stream of ended and refunded orders, appended by the script that makes
/// the change, read by payment-service's merchant-webhook dispatcher (the stream's fields are
/// that service's to read: `t` type, `o` order, `i` item, `q` quantity, `u` customer, `m`
/// amount, `c` currency; for a refund also `r` refund id, `ra` its amount, `f` refunded so far,
/// `s` status; the event's time is the entry id's).
pub(crate) fn outbox_key_of(id: &OrderId) -> String {
    shared::outbox::order_outbox(id.shard())
}
pub(crate) fn active_key_of(id: &OrderId) -> String {
    active_key(id.shard())
}
pub(crate) fn active_key(shard: u16) -> String {
    format!("order:{{ord:{shard}}}:active")
}

#[derive(Clone)]
pub struct OrderStore {
    pub(crate) pool: Pool,
}

/// The fields [`stored_response`] reads, in order.
pub const RESPONSE_FIELDS: [&str; 10] = [
    "status",
    "respStatus",
    "respCtype",
    "respBody",
    "itemId",
    "quantity",
    "amount",
    "currency",
    "reservationId",
    "chargeId",
];

/// The response of an ended order: the one stored with it, or for a completed order without
/// one, its 200 rendered from its fields (a completed checkout's answer is its order: storing
/// its body too cost every checkout some 350 bytes in the AOF). An order refunded since was
/// completed when its checkout answered, and a replay answers what the checkout answered:
/// "completed". None while it is processing.
pub fn stored_response(id: &OrderId, fields: &[Option<Vec<u8>>]) -> Option<StoredResponse> {
    let text = |i: usize| {
        fields
            .get(i)
            .cloned()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let status = text(0)?;
    if status == "processing" || status == "awaiting_payment" {
        return None;
    }
    if let Some(stored) = text(1) {
        return Some(StoredResponse {
            status: stored.parse().ok()?,
            content_type: text(2)?,
            body: fields.get(3).cloned().flatten()?,
            location: None,
        });
    }
    OrderStatus::was_completed(&status).then_some(())?;
    Some(StoredResponse::json(
        StatusCode::OK,
        &CheckoutCompleted {
            order_id: id.to_string(),
            status: OrderStatus::Completed.as_str().into(),
            item_id: text(4)?.parse().ok()?,
            quantity: text(5)?.parse().ok()?,
            amount: text(6)?.parse().ok()?,
            currency: text(7)?,
            reservation_id: text(8)?,
            charge_id: text(9)?,
        },
    ))
}

impl OrderStore {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The final response of an ended order (None while it is processing).
    pub async fn final_response(&self, order_id: &OrderId) -> Result<Option<StoredResponse>, OrderError> {
        let mut conn = self.pool.get().await?;
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(order_key(order_id))
            .arg(&RESPONSE_FIELDS)
            .query_async(&mut conn)
            .await?;
        Ok(stored_response(order_id, &fields))
    }

    pub async fn get(&self, order_id: &OrderId) -> Result<Option<OrderView>, OrderError> {
        let mut conn = self.pool.get().await?;
        // The whole hash: its steps are fields whose names depend on their number.
        let (mut fields, legacy): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .cmd("HGETALL")
            .arg(order_key(order_id))
            .cmd("LRANGE")
            .arg(steps_key(order_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if let Some(at) = fields.get_mut("createdAt") {
            *at = shared::time::stored_time(at);
        }
        let get = |name: &str| fields.get(name).cloned();
        let Some(status) = get("status") else {
            return Ok(None);
        };
        let currency = get("currency").filter(|c| c != NO_CURRENCY);
        let steps = steps_of(&fields, &legacy);
        Ok(Some(OrderView {
            order_id: order_id.to_string(),
            status,
            item_id: get("itemId").and_then(|v| v.parse().ok()).unwrap_or(0),
            quantity: get("quantity").and_then(|v| v.parse().ok()).unwrap_or(0),
            amount: currency.as_ref().and(get("amount")).and_then(|v| v.parse().ok()),
            currency,
            reservation_id: get("reservationId"),
            charge_id: get("chargeId"),
            refund_id: get("refundId"),
            pix: get("pixCode")
                .zip(get("pixExpiresAtMs").and_then(|ms| ms.parse().ok()))
                .map(|(code, ms)| crate::model::PixView::new(code, ms)),
            updated_at: updated_at(&fields, &steps),
            steps,
            created_at: get("createdAt").unwrap_or_default(),
        }))
    }

    /// Sums the per-shard totals (totals.lua; one pipelined round trip on a single node).
    pub async fn totals(&self) -> Result<Totals, OrderError> {
        let mut conn = self.pool.get().await?;
        let cmds = (0..SHARDS)
            .map(|shard| {
                redis::cmd("EVAL")
                    .arg(TOTALS)
                    .arg(2)
                    .arg(format!("order:{{ord:{shard}}}:totals"))
                    .arg(active_key(shard))
                    .to_owned()
            })
            .collect();
        let shards: Vec<(Vec<(String, i64)>, i64)> = conn.each(cmds).await?;
        let mut totals = Totals::new();
        for (fields, processing) in shards {
            if processing > 0 {
                totals.entry(NO_CURRENCY.to_string()).or_default().processing.count += processing;
            }
            for (field, value) in fields {
                let mut parts = field.splitn(3, ':');
                let (Some(currency), Some(status), Some(measure)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let entry = totals.entry(currency.to_string()).or_default();
                let Some(bucket) = bucket_of(entry, status) else {
                    continue;
                };
                match measure {
                    "n" | "count" => bucket.count += value,
                    "a" | "amount" => bucket.amount += value,
                    _ => {}
                }
            }
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_created_at_its_created_at_whether_or_not_a_step_says_so() {
        let at = "2026-12-05T09:59:59.000Z";
        let hash = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let names = |steps: Vec<Step>| steps.into_iter().map(|s| (s.name, s.at)).collect::<Vec<_>>();
        let created = ("created".to_string(), at.to_string());
        let reserve = ("reserve".to_string(), "2026-12-05T10:00:00.000Z".to_string());

        let new = hash(&[
            ("createdAt", at),
            ("n", "1"),
            ("s1", "reserve succeeded 2026-12-05T10:00:00.000Z"),
        ]);
        let older = hash(&[
            ("createdAt", at),
            ("n", "2"),
            ("s1", "created succeeded 2026-12-05T09:59:59.000Z"),
            ("s2", "reserve succeeded 2026-12-05T10:00:00.000Z"),
        ]);
        let fresh = hash(&[("createdAt", at)]);

        assert_eq!(names(steps_of(&new, &[])), [created.clone(), reserve.clone()]);
        assert_eq!(names(steps_of(&older, &[])), [created.clone(), reserve]);
        assert_eq!(names(steps_of(&fresh, &[])), [created]);
    }

    #[test]
    fn steps_read_in_number_order_after_the_legacy_lists_then_the_one_fields() {
        let fields: HashMap<String, String> = [
            ("n", "3"),
            ("s2", "charge succeeded 2026-12-05T10:00:01.000Z"),
            ("s1", "reserve succeeded 2026-12-05T10:00:00.500Z"),
            ("s3", "complete unknown 2026-12-05T10:00:02.000Z"),
            ("s4", "left over past n"),
            // Steps in one field (steps.lua; an order has either these or numbered ones).
            (
                "st",
                "release succeeded 1796464803000\nrestock succeeded 2026-12-05T10:00:04.000Z",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let legacy = [r#"{"name":"created","status":"succeeded","at":"2026-12-05T09:59:59.000Z"}"#.to_string()];

        let steps: Vec<(String, String, String)> = steps_of(&fields, &legacy)
            .into_iter()
            .map(|s| (s.name, s.status, s.at))
            .collect();

        let expect = |n: &str, s: &str, at: &str| (n.to_string(), s.to_string(), at.to_string());
        assert_eq!(
            steps,
            [
                expect("created", "succeeded", "2026-12-05T09:59:59.000Z"),
                expect("reserve", "succeeded", "2026-12-05T10:00:00.500Z"),
                expect("charge", "succeeded", "2026-12-05T10:00:01.000Z"),
                expect("complete", "unknown", "2026-12-05T10:00:02.000Z"),
                expect("release", "succeeded", "2026-12-05T10:00:03.000Z"),
                expect("restock", "succeeded", "2026-12-05T10:00:04.000Z"),
            ]
        );
    }

    #[test]
    fn an_order_was_updated_at_its_latest_change_step_or_not() {
        let at = |s: &str| Step {
            name: "charge".into(),
            status: "succeeded".into(),
            at: s.into(),
        };
        let mut fields: HashMap<String, String> = HashMap::new();
        fields.insert("createdAt".into(), "2026-12-05T10:00:00.000Z".into());
        assert_eq!(updated_at(&fields, &[]), "2026-12-05T10:00:00.000Z");
        let steps = [at("2026-12-05T10:00:00.000Z"), at("2026-12-05T10:00:02.500Z")];
        assert_eq!(updated_at(&fields, &steps), "2026-12-05T10:00:02.500Z");
        fields.insert("updatedAt".into(), "2026-12-05T10:00:09.000Z".into());
        assert_eq!(updated_at(&fields, &steps), "2026-12-05T10:00:09.000Z");
    }

    #[test]
    fn a_sold_order_answers_its_checkouts_200_whatever_was_refunded_since() {
        let id = OrderId::from_stored("ord_x");
        let fields = |status: &str| -> Vec<Option<Vec<u8>>> {
            let values = [status, "", "", "", "7", "2", "2500", "USD", "rsv_7_a", "ch_b"];
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (!(1..=3).contains(&i)).then(|| v.as_bytes().to_vec()))
                .collect()
        };
        let body = |resp: Option<StoredResponse>| -> Option<serde_json::Value> {
            resp.and_then(|r| serde_json::from_slice(&r.body).ok())
        };
        let completed = body(stored_response(&id, &fields("completed")));
        assert_eq!(
            completed.as_ref().map(|b| b["status"].clone()),
            Some("completed".into())
        );
        assert_eq!(completed.as_ref().map(|b| b["chargeId"].clone()), Some("ch_b".into()));
        for later in ["partially_refunded", "refunded"] {
            assert_eq!(body(stored_response(&id, &fields(later))), completed, "{later}");
        }
        for unsold in ["processing", "awaiting_payment", "failed"] {
            assert!(stored_response(&id, &fields(unsold)).is_none(), "{unsold}");
        }
    }

    #[test]
    fn a_step_reads_back_as_written() {
        let text = step_text(StepName::Release, StepStatus::OutOfStock, "2026-12-05T10:00:00.000Z");
        let step = parse_step(&text).expect("parses");
        assert_eq!(
            (step.name.as_str(), step.status.as_str(), step.at.as_str()),
            ("release", "out_of_stock", "2026-12-05T10:00:00.000Z")
        );
        assert_eq!(text, "l o 1796464800000", "stored as letters and milliseconds");
        assert!(parse_step("half").is_none());
    }

    #[test]
    fn every_step_name_and_status_reads_back_from_its_letter_and_in_full() {
        let at = "2026-12-05T10:00:00.000Z";
        for &name in StepName::ALL {
            for &status in StepStatus::ALL {
                let step = parse_step(&step_text(name, status, at)).expect("parses");
                assert_eq!(
                    (step.name.as_str(), step.status.as_str()),
                    (name.as_str(), status.as_str())
                );
                let full = format!("{name} {status} 1796464800000");
                let older = parse_step(&full).expect("an older step parses");
                assert_eq!(
                    (older.name.as_str(), older.status.as_str(), older.at.as_str()),
                    (name.as_str(), status.as_str(), at)
                );
            }
        }
    }

    #[test]
    fn steps_written_together_keep_later_times_relative_and_read_back_absolute() {
        let lines: Vec<String> = [
            (StepName::Reserve, "2026-12-05T10:00:00.100Z"),
            (StepName::Charge, "2026-12-05T10:00:00.115Z"),
            (StepName::Complete, "2026-12-05T10:00:00.115Z"),
        ]
        .iter()
        .map(|(name, at)| step_text(*name, StepStatus::Succeeded, at))
        .collect();

        let written = relative_steps(&lines.iter().map(String::as_str).collect::<Vec<_>>());

        assert_eq!(written, "r s 1796464800100\nc s +15\nk s +0");
        let later = "l o 1796464900000";
        let read = parse_steps(written.lines().chain([later]));
        let ats: Vec<&str> = read.iter().map(|s| s.at.as_str()).collect();
        assert_eq!(
            ats,
            [
                "2026-12-05T10:00:00.100Z",
                "2026-12-05T10:00:00.115Z",
                "2026-12-05T10:00:00.115Z",
                "2026-12-05T10:01:40.000Z"
            ]
        );
    }

    #[test]
    fn a_step_after_one_without_milliseconds_or_earlier_in_time_stays_absolute() {
        let lines = ["c s 2026-12-05T10:00:00Z", "k s 1796464800100", "l o 1796464800000"];
        assert_eq!(relative_steps(&lines), lines.join("\n"));
        let orphan = parse_steps(["k s +5"].into_iter());
        assert_eq!(
            orphan.len(),
            1,
            "a relative step with nothing before it is still a step"
        );
    }

    #[test]
    fn a_step_stored_with_an_rfc3339_time_still_reads_and_an_odd_time_is_kept_as_given() {
        let older = parse_step("charge succeeded 2026-12-05T10:00:00.500Z").expect("parses");
        assert_eq!(older.at, "2026-12-05T10:00:00.500Z");
        let odd = step_text(StepName::Charge, StepStatus::Succeeded, "2026-12-05T10:00:00Z");
        assert_eq!(odd, "c s 2026-12-05T10:00:00Z");
        assert_eq!(parse_step(&odd).expect("parses").at, "2026-12-05T10:00:00Z");
    }
}
