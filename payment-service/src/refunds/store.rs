//! Recording a refund: the charge's status and the refunded totals in one script (refund.lua).

use std::sync::LazyLock;

use redis::Script;

use crate::error::PaymentError;
use crate::store::{Store, charge_key, parse_amount, shard_of_charge, totals_key};

static REFUND: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[], include_str!("refund.lua")));

pub fn new_refund_id() -> String {
    shared::ids::new_id("re")
}

pub enum RefundOutcome {
    /// `fresh` is false when the charge had been refunded before.
    Refunded {
        refund_id: String,
        amount: u64,
        fresh: bool,
    },
    NotFound,
    NotRefundable {
        status: String,
    },
}

impl Store {
    pub async fn refund(&self, charge_id: &str) -> Result<RefundOutcome, PaymentError> {
        let Some(shard) = shard_of_charge(charge_id) else {
            return Ok(RefundOutcome::NotFound);
        };
        let mut conn = self.pool.get().await?;
        let reply: Vec<String> = REFUND
            .key(charge_key(shard, charge_id))
            .key(totals_key(shard))
            .arg(new_refund_id())
            .arg(shared::time::now_rfc3339())
            .invoke_async(&mut conn)
            .await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        match field(0) {
            kind @ ("refunded" | "already_refunded") => Ok(RefundOutcome::Refunded {
                refund_id: field(1).to_string(),
                amount: parse_amount(field(2))?,
                fresh: kind == "refunded",
            }),
            "not_found" => Ok(RefundOutcome::NotFound),
            "not_refundable" => Ok(RefundOutcome::NotRefundable {
                status: field(1).to_string(),
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
        assert!(a.starts_with("re_") && a.len() == 35, "{a}");
        assert_ne!(a, b);
    }
}
