//! Charges, refunds and the books in Redis.
//!
//! Keys all carry the `{pay:S}` hash tag, S = `shared::ids::shard_of(orderId)` (0..16): a charge,
//! its order's index and the totals that count it share one Redis Cluster slot, so each script
//! below writes an effect and its counters atomically, and the books balance at every instant.
//! - `payment:{pay:S}:charge:<chargeId>` hash: orderId, amount, currency, customerId,
//!   paymentMethod, status (succeeded | failed | refunded), declineCode, refundId, createdAt
//!   (ms; RFC 3339 text before #29's seventh pass), refundedAt, gateway, gatewayReference
//! - `payment:{pay:S}:order:<orderId>` list: the order's charge ids, oldest first
//! - `payment:{pay:S}:totals` hash: `<gateway>:<CUR>:c:n` (charged, count), `…:c:a` (charged,
//!   amount), `…:r:n`, `…:r:a` (refunded): every write is fsynced, so the names are letters;
//!   totals written before #29's twelfth pass keep counting in `…:charged:count` and the like,
//!   and the reader adds both. The per-currency books are their sum
//! - `payment:{pay:S}:op:charge:<Idempotency-Key>`: the charge that key created, written in the
//!   same script as the charge, so a retry after a crash finds it instead of charging again
//! - `payment:{pay:S}:answer:charge:<Idempotency-Key>` hash: the charge's answer, stored by the
//!   same script for the key's replays (shared's `answer.lua`)
//!
//! Charge ids carry their shard (`ch_` + 2 hex digits of shard + 20 base-62 digits; 30 hex in
//! charges made before #29's sixth pass), which is how refunds and reads find the slot without
//! an index. Amounts travel as decimal strings and are added exactly, never through Lua's
//! numbers past 2^53.
//!
//! This file holds the keys, the ids and the [`Store`] handle with its reads; the writes are
//! with their capability: `charges/store.rs` and `refunds/store.rs`, each script a `.lua` file
//! beside them.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use shared::ids::SHARDS;
use shared::redis_pool::Pool;

use crate::error::PaymentError;
use crate::model::{Charge, Totals};

pub(crate) fn tag(shard: u16) -> String {
    format!("payment:{{pay:{shard}}}")
}
pub(crate) fn charge_prefix(shard: u16) -> String {
    format!("{}:charge:", tag(shard))
}
pub(crate) fn charge_key(shard: u16, charge_id: &str) -> String {
    format!("{}{charge_id}", charge_prefix(shard))
}
pub(crate) fn order_key(shard: u16, order_id: &str) -> String {
    format!("{}:order:{order_id}", tag(shard))
}
pub(crate) fn totals_key(shard: u16) -> String {
    format!("{}:totals", tag(shard))
}
/// An aggregate's (a charge's, a wallet's) event log: a list, oldest first.
pub(crate) fn events_key(shard: u16, aggregate_id: &str) -> String {
    format!("{}:ev:{aggregate_id}", tag(shard))
}
/// What every [`events_key`] matches, as a SCAN pattern.
pub(crate) const EVENTS_KEYS: &str = "payment:{pay:*}:ev:*";
/// The shard and aggregate an [`events_key`] names; None for any other key.
pub(crate) fn events_key_parts(key: &str) -> Option<(u16, &str)> {
    let (shard, aggregate) = key.strip_prefix("payment:{pay:")?.split_once("}:ev:")?;
    let shard = shard.parse().ok()?;
    (events_key(shard, aggregate) == key).then_some((shard, aggregate))
}
/// The shard's aggregates that have events (for `verify`): on a cluster, and on one node as
/// versions before #29's twelfth pass recorded them ([`Store::aggregates_key`]).
pub(crate) fn aggregates_key(shard: u16) -> String {
    format!("{}:aggregates", tag(shard))
}
/// The shard's outbox: a stream of pointers to events merchants may subscribe to, appended by
/// the script that appends the event (events.lua's `publish`), read by the webhook dispatcher.
pub fn outbox_key(shard: u16) -> String {
    shared::outbox::payment_outbox(shard)
}
/// The refund a refund request's key made (`<refundId>|<amount>`), in the charge's slot.
pub(crate) fn refund_marker_key(shard: u16, idempotency_key: &str) -> String {
    format!("{}:op:refund:{idempotency_key}", tag(shard))
}
pub(crate) fn op_key(shard: u16, idempotency_key: &str) -> String {
    // The key may contain braces; Redis takes the first `{…}`, which is ours, as the tag.
    format!("{}:op:charge:{idempotency_key}", tag(shard))
}

/// Where the charge script stores the answer to a charge request: in the order's slot, which the
/// request names, so a retry of the same request looks in the same place.
pub fn answer_key(order_id: &str, idempotency_key: &str) -> String {
    format!(
        "{}:answer:charge:{idempotency_key}",
        tag(shared::ids::shard_of(order_id))
    )
}

/// A new charge id for the order: in its shard, see [`new_charge_id`].
pub fn new_charge_id_for(order_id: &str) -> String {
    new_charge_id(shared::ids::shard_of(order_id))
}

/// A new charge id for an order's shard: `ch_` + the shard as 2 hex digits + 20 base-62 digits
/// of a UUID's random bits (119 of its 122). Charges made before #29's sixth pass have 30
/// random hex digits there instead (32 in all); both read.
pub fn new_charge_id(shard: u16) -> String {
    let random = uuid::Uuid::new_v4().as_u128();
    format!("ch_{:02x}{}", shard % SHARDS, shared::ids::base62(random, 20))
}

/// The shard a charge id names, if it is exactly of a form [`new_charge_id`] makes (or made).
pub fn shard_of_charge(charge_id: &str) -> Option<u16> {
    let rest = charge_id.strip_prefix("ch_")?;
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let well_formed = match rest.len() {
        32 => hex(rest),
        22 => rest.get(..2).is_some_and(hex) && rest.bytes().all(|b| b.is_ascii_alphanumeric()),
        _ => false,
    };
    if !well_formed {
        return None;
    }
    let shard = u16::from_str_radix(rest.get(..2)?, 16).ok()?;
    (shard < SHARDS).then_some(shard)
}

/// A charge's fields as [`charge_from`] reads them. The first is the charge's id only in
/// charges written before #29's sixth pass: its key's name has it, so it is no longer stored.
const CHARGE_FIELDS: [&str; 16] = [
    "chargeId",
    "status",
    "amount",
    "currency",
    "orderId",
    "refundId",
    "declineCode",
    "createdAt",
    "refundedAt",
    "gateway",
    "gatewayReference",
    "amountRefunded",
    "customerId",
    "splitId",
    "splits",
    "pixCode",
];

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    pub(crate) marker_ttl: Duration,
    /// One Redis node (not a cluster): a script may then touch keys of several slots, and a
    /// wallet checkout debits and records its charge in one (wallet_charge.lua).
    pub(crate) one_node: bool,
}

impl Store {
    pub fn new(pool: Pool, marker_ttl: Duration) -> Self {
        Self {
            pool,
            marker_ttl,
            one_node: false,
        }
    }

    /// See [`Store::one_node`].
    pub fn on_one_node(mut self, one_node: bool) -> Self {
        self.one_node = one_node;
        self
    }

    /// The set a script adds a new aggregate to (events.lua's append_event): the shard's on a
    /// cluster, none ('') on one node, where `verify` finds the event lists by SCAN instead. A
    /// set member was ~80 bytes fsynced per checkout; a cluster-wide SCAN would have to visit
    /// every master, so a cluster keeps the set.
    pub(crate) fn aggregates_key(&self, shard: u16) -> String {
        if self.one_node {
            String::new()
        } else {
            aggregates_key(shard)
        }
    }

    pub async fn get_charge(&self, charge_id: &str) -> Result<Option<Charge>, PaymentError> {
        let Some(shard) = shard_of_charge(charge_id) else {
            return Ok(None);
        };
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        add_charge_reads(&mut pipe, shard, charge_id);
        let (fields, first): (Vec<Option<String>>, Option<String>) = pipe.query_async(&mut conn).await?;
        charge_from(charge_id, &fields, first.as_deref())
    }

    /// The order's charges, oldest first: its index, then every charge in one pipeline.
    pub async fn charges_of_order(&self, order_id: &str) -> Result<Vec<Charge>, PaymentError> {
        let shard = shared::ids::shard_of(order_id);
        let mut conn = self.pool.get().await?;
        let ids: Vec<String> = conn.lrange(order_key(shard, order_id), 0, -1).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            add_charge_reads(&mut pipe, shard, id);
        }
        // Each charge's two replies in turn: its fields, then its first event.
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await?;
        let mut charges = Vec::with_capacity(ids.len());
        for (id, pair) in ids.iter().zip(rows.chunks(2)) {
            let first = pair.get(1).and_then(|e| e.first().cloned().flatten());
            if let Some(c) = charge_from(id, &pair[0], first.as_deref())? {
                charges.push(c);
            }
        }
        Ok(charges)
    }

    /// Every shard's counters, summed (one pipeline on a single node; shards are separate slots).
    pub async fn totals(&self) -> Result<Totals, PaymentError> {
        let mut conn = self.pool.get().await?;
        let cmds = (0..SHARDS)
            .map(|shard| redis::cmd("HGETALL").arg(totals_key(shard)).to_owned())
            .collect();
        let shards: Vec<HashMap<String, String>> = conn.each(cmds).await?;
        let mut totals = Totals::default();
        for counters in shards {
            for (field, value) in counters {
                totals.add_field(&field, parse_amount(&value)?);
            }
        }
        Ok(totals)
    }
}

/// Stored numbers are written only by the scripts above; anything else is corruption.
pub(crate) fn parse_amount(raw: &str) -> Result<u64, PaymentError> {
    raw.parse().map_err(|_| {
        shared::CommonError::Internal(format!("stored amount {raw:?} is not a non-negative integer")).into()
    })
}

/// A charge's reads: its hash's fields (CHARGE_FIELDS), then its first event, which holds its
/// facts (see [`charge_from`]).
fn add_charge_reads(pipe: &mut redis::Pipeline, shard: u16, charge_id: &str) {
    pipe.cmd("HMGET").arg(charge_key(shard, charge_id)).arg(&CHARGE_FIELDS);
    pipe.cmd("LINDEX").arg(events_key(shard, charge_id)).arg(0);
}

/// A charge's fact as its first event says it (events.lua's charge_fact, for the fields of
/// CHARGE_FIELDS at `i`): charges recorded since #29's eleventh pass keep their facts there
/// alone; older ones in their hash too, which wins.
fn fact_of(first: &serde_json::Value, i: usize) -> Option<String> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    // Named by letters since #29's twelfth pass (events::CHARGE_LETTERS), in full before.
    let either = |v: &serde_json::Value, full: &str, letter: &str| v.get(letter).or_else(|| v.get(full)).and_then(text);
    let data = first
        .get("d")
        .or_else(|| first.get("data"))
        .unwrap_or(&serde_json::Value::Null);
    match CHARGE_FIELDS.get(i).copied()? {
        "orderId" => either(first, "correlationId", "c"),
        "createdAt" => text(&first["at"]),
        name @ ("amount" | "currency" | "gateway" | "gatewayReference" | "declineCode") => {
            either(data, name, crate::events::charge_letter(name)?)
        }
        _ => None,
    }
}

/// The charge `charge_id` from its fields as read (CHARGE_FIELDS) and its first event (the
/// facts its hash does not hold); None when it has none (every charge has a status).
fn charge_from(
    charge_id: &str,
    fields: &[Option<String>],
    first: Option<&str>,
) -> Result<Option<Charge>, PaymentError> {
    let first: serde_json::Value = match first {
        Some(raw) => serde_json::from_str(raw).map_err(|e| {
            PaymentError::from(shared::CommonError::Internal(format!(
                "charge {charge_id}'s first event: {e}"
            )))
        })?,
        None => serde_json::Value::Null,
    };
    let f: Vec<Option<String>> = (0..CHARGE_FIELDS.len())
        .map(|i| {
            fields
                .get(i)
                .cloned()
                .flatten()
                .or_else(|| fact_of(&first, i))
                .filter(|v| !v.is_empty())
        })
        .collect();
    let get = |i: usize| f.get(i).cloned().flatten();
    if get(1).is_none() {
        return Ok(None);
    }
    Ok(Some(Charge {
        charge_id: charge_id.to_string(),
        status: get(1).unwrap_or_default(),
        amount: parse_amount(&get(2).unwrap_or_default())?,
        currency: get(3).unwrap_or_default(),
        order_id: get(4).unwrap_or_default(),
        refund_id: get(5),
        decline_code: get(6),
        created_at: get(7).map(|at| shared::time::stored_time(&at)).unwrap_or_default(),
        refunded_at: get(8),
        gateway: get(9).unwrap_or_default(),
        gateway_reference: get(10).unwrap_or_default(),
        amount_refunded: match (get(11), get(1).as_deref()) {
            (Some(raw), _) => parse_amount(&raw)?,
            // Refunded whole before partial refunds were recorded.
            (None, Some("refunded")) => parse_amount(&get(2).unwrap_or_default())?,
            (None, _) => 0,
        },
        customer_id: get(12).unwrap_or_default(),
        split_id: get(13),
        splits: get(14).map(|s| crate::splits::decode_parts(&s)).unwrap_or_default(),
        pix: get(15).map(|code| crate::model::PixCode { code }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_ids_carry_their_shard() {
        for shard in 0..SHARDS {
            let id = new_charge_id(shard);
            assert_eq!(id.len(), 3 + 22, "{id}");
            assert!(id.starts_with(&format!("ch_{shard:02x}")), "{id}");
            assert_eq!(shard_of_charge(&id), Some(shard), "{id}");
            assert!(shared::ids::is_safe_id(&id));
        }
    }

    #[test]
    fn malformed_charge_ids_find_no_shard() {
        let ok = "ch_0f0123456789abcdef0123456789abcd";
        assert_eq!(shard_of_charge(ok), Some(15), "made before #29's sixth pass");
        assert_eq!(shard_of_charge("ch_0fAbcdEFGH0123456789xz"), Some(15));
        for bad in [
            "ch_0fAbcdEFGH0123456789x",  // 21 after the prefix
            "ch_0FAbcdEFGH0123456789xz", // shard in uppercase
            "ch_10AbcdEFGH0123456789xz", // shard 16
            "ch_0fAbcdEFGH0123456789x}", // would break the key's hash tag
            "ch_0fAbcdEFGH0123456789x-", // not a base-62 digit
            "",
            "ch_",
            "ch_0f0123456789abcdef0123456789abc",      // 31 hex
            "ch_0f0123456789abcdef0123456789abcde",    // 33 hex
            "ch_100123456789abcdef0123456789abcd",     // shard 16
            "ch_ff0123456789abcdef0123456789abcd",     // shard 255
            "ch_0F0123456789abcdef0123456789abcd",     // uppercase
            "ch_0g0123456789abcdef0123456789abcd",     // not hex
            "cx_0f0123456789abcdef0123456789abcd",     // prefix
            "ch_0f0123456789abcdef0123456789abc}",     // would break the key's hash tag
            "ch_+f0123456789abcdef0123456789abcd",     // sign accepted by from_str_radix
            "ch_0f0123456789abcdef0123456789ab\u{e9}", // non-ASCII
        ] {
            assert_eq!(shard_of_charge(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_key_of_a_shard_shares_one_hash_tag() {
        let shard = shared::ids::shard_of("ord_1");
        let tag = format!("{{pay:{shard}}}");
        let id = new_charge_id(shard);
        for key in [
            charge_key(shard, &id),
            order_key(shard, "ord_1"),
            totals_key(shard),
            op_key(shard, "ord_1:charge}{x"),
            outbox_key(shard),
            answer_key("ord_1", "ord_1:charge}{x"),
        ] {
            let open = key.find('{').unwrap_or(usize::MAX);
            let close = key[open..].find('}').map(|c| open + c + 1).unwrap_or(0);
            assert_eq!(key.get(open..close), Some(tag.as_str()), "{key}");
        }
    }

    #[test]
    fn stored_charges_read_back_with_nulls_for_empty_fields() {
        let row: Vec<Option<String>> = [
            "ch_00aa",
            "failed",
            "1000000000000",
            "USD",
            "ord_1",
            "",
            "card_declined",
            "t0",
            "",
            "card-a",
            "ch_sim1",
        ]
        .iter()
        .map(|s| Some((*s).to_string()))
        .collect();
        let c = charge_from("ch_00aa", &row, None).ok().flatten();
        assert_eq!(c.as_ref().map(|c| c.amount), Some(1_000_000_000_000));
        assert_eq!(c.as_ref().and_then(|c| c.refund_id.clone()), None);
        assert_eq!(
            c.as_ref().and_then(|c| c.decline_code.clone()).as_deref(),
            Some("card_declined")
        );
        assert_eq!(c.as_ref().map(|c| c.charge_id.as_str()), Some("ch_00aa"));
        assert!(matches!(charge_from("ch_00aa", &[None, None], None), Ok(None)));
        // Charges since #29's sixth pass do not repeat their id: it is the one they were read by.
        let mut newer = row.clone();
        newer[0] = None;
        let c = charge_from("ch_00bb", &newer, None).ok().flatten();
        assert_eq!(c.map(|c| c.charge_id), Some("ch_00bb".to_string()));
    }
}
