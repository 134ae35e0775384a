//! Recording a refund: the charge's refunded amount and status, the refunded totals, the key's
//! marker and the event in one script (refund.lua).

use std::sync::LazyLock;

use shared::lua::Script;

use crate::error::PaymentError;
use crate::splits::store::recipient_prefix;
use crate::store::{
    Store, charge_key, events_key, outbox_key, parse_amount, refund_marker_key, shard_of_charge, totals_key,
};

static REFUND: LazyLock<Script> = LazyLock::new(|| {
    shared::lua::script(
        &[&crate::events::EVENTS, &shared::lua::COUNTS],
        include_str!("refund.lua"),
    )
});

pub fn new_refund_id() -> String {
    shared::ids::new_id("re")
}

#[derive(Debug)]
pub enum RefundOutcome {
    /// `fresh` is false for a refund made before (by this key, or the last one of a charge with
    /// nothing left).
    Refunded {
        refund_id: String,
        amount: u64,
        fresh: bool,
    },
    NotFound,
    NotRefundable {
        status: String,
    },
    /// More than remains to refund.
    Exceeds {
        remaining: u64,
    },
    /// The charge changed since `reversal` was divided: read and divide again.
    Stale,
}

/// A refund's reversal of a split charge's parts, divided by the caller.
pub struct Reversal {
    /// The charge's amountRefunded when it was read.
    pub read_refunded: u64,
    /// The parts after the refund (`recipient:amount:reversed;…`).
    pub parts: String,
    /// Each recipient's reversal (`recipient:amount;…`).
    pub reversals: String,
    /// The split.reversed event (JSON).
    pub event: String,
}

impl Store {
    /// Records a refund of `amount` (what remains when `None`) made by request `key`, the
    /// provider's `reference` for it kept in its event.
    pub async fn refund(
        &self,
        charge_id: &str,
        amount: Option<u64>,
        key: &str,
        reference: &str,
        refund_id: &str,
        reversal: Option<&Reversal>,
    ) -> Result<RefundOutcome, PaymentError> {
        let Some(shard) = shard_of_charge(charge_id) else {
            return Ok(RefundOutcome::NotFound);
        };
        let mut conn = self.pool.get().await?;
        let reply: Vec<String> = REFUND
            .key(charge_key(shard, charge_id))
            .key(totals_key(shard))
            .key(refund_marker_key(shard, key))
            .key(events_key(shard, charge_id))
            .key(self.aggregates_key(shard))
            .key(outbox_key(shard))
            .arg(refund_id)
            .arg(shared::time::now_rfc3339())
            .arg(amount.map(|a| a.to_string()).unwrap_or_default())
            .arg(self.marker_ttl.as_millis() as u64)
            .arg(reference)
            .arg(shared::telemetry::current_trace_id().unwrap_or_default())
            .arg(reversal.map(|r| r.read_refunded.to_string()).unwrap_or_default())
            .arg(reversal.map(|r| r.parts.as_str()).unwrap_or(""))
            .arg(reversal.map(|r| r.reversals.as_str()).unwrap_or(""))
            .arg(reversal.map(|r| r.event.as_str()).unwrap_or(""))
            .arg(recipient_prefix(shard))
            .invoke_async(&mut conn)
            .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        match field(0) {
            kind @ ("refunded" | "already") => Ok(RefundOutcome::Refunded {
                refund_id: field(1).to_string(),
                amount: parse_amount(field(2))?,
                fresh: kind == "refunded",
            }),
            "not_found" => Ok(RefundOutcome::NotFound),
            "stale" => Ok(RefundOutcome::Stale),
            "not_refundable" => Ok(RefundOutcome::NotRefundable {
                status: field(1).to_string(),
            }),
            "exceeds" => Ok(RefundOutcome::Exceeds {
                remaining: parse_amount(field(1))?,
            }),
            other => Err(shared::CommonError::Internal(format!("refund script answered {other:?}")).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_ids_are_distinct_and_prefixed() {
        let (a, b) = (new_refund_id(), new_refund_id());
        assert!(a.starts_with("re_") && a.len() == 25, "{a}");
        assert_ne!(a, b);
    }
}
