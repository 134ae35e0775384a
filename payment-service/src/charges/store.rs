//! Recording a charge: the charge, its order's index, the totals and the key's marker in one
//! script (charge.lua).

use std::sync::LazyLock;

use redis::Script;
use shared::idempotency::Answer;

use crate::error::PaymentError;
use crate::store::{
    Store, aggregates_key, charge_key, charge_prefix, events_key, op_key, order_key, parse_amount, totals_key,
};

static CHARGE: LazyLock<Script> = LazyLock::new(|| {
    shared::lua::script(
        &[&shared::idempotency::scripts::ANSWER, &crate::events::EVENTS],
        include_str!("charge.lua"),
    )
});

/// A new charge to record, with the gateway's verdict.
#[derive(Debug)]
pub struct NewCharge<'a> {
    /// From [`new_charge_id_for`] the order.
    pub charge_id: &'a str,
    pub order_id: &'a str,
    pub amount: u64,
    pub currency: &'a str,
    pub customer_id: &'a str,
    pub payment_method: &'a str,
    /// `None` when the provider approved.
    pub decline_code: Option<&'a str>,
    /// The provider that answered, and its own id for the charge.
    pub gateway: &'a str,
    pub gateway_reference: &'a str,
}

/// The charge an Idempotency-Key stands for, freshly recorded or found: the same fields either
/// way, so the response built from them is the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub charge_id: String,
    pub order_id: String,
    pub amount: u64,
    pub currency: String,
    /// `None`: the charge succeeded.
    pub decline_code: Option<String>,
    /// False when the key's marker named an earlier charge.
    pub fresh: bool,
}

pub enum ChargeOutcome {
    Recorded(Recorded),
    /// The key's marker names a charge for a different request.
    KeyReused,
}

impl Store {
    /// Records `new` under `idempotency_key`, with `answer` stored beside it, unless the key
    /// already made a charge: that one is returned (not fresh) and `answer` is not stored.
    pub async fn charge(
        &self,
        new: &NewCharge<'_>,
        idempotency_key: &str,
        answer: &Answer<'_>,
    ) -> Result<ChargeOutcome, PaymentError> {
        let shard = shared::ids::shard_of(new.order_id);
        let charge_id = new.charge_id;
        let status = if new.decline_code.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let mut conn = self.pool.get().await?;
        let mut invocation = CHARGE.key(charge_key(shard, charge_id));
        invocation
            .key(order_key(shard, new.order_id))
            .key(totals_key(shard))
            .key(op_key(shard, idempotency_key))
            .key(events_key(shard, charge_id))
            .key(aggregates_key(shard))
            .arg(charge_id)
            .arg(new.order_id)
            .arg(new.amount.to_string())
            .arg(new.currency)
            .arg(new.customer_id)
            .arg(new.payment_method)
            .arg(status)
            .arg(new.decline_code.unwrap_or(""))
            .arg(shared::time::now_rfc3339())
            .arg(self.marker_ttl.as_millis() as u64)
            .arg(charge_prefix(shard))
            .arg(new.gateway)
            .arg(new.gateway_reference)
            .arg(shared::telemetry::current_trace_id().unwrap_or_default());
        answer.add_to(&mut invocation);
        let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        match field(0) {
            kind @ ("charged" | "found") => Ok(ChargeOutcome::Recorded(Recorded {
                charge_id: field(1).to_string(),
                order_id: field(2).to_string(),
                amount: parse_amount(field(3))?,
                currency: field(4).to_string(),
                decline_code: Some(field(5)).filter(|c| !c.is_empty()).map(str::to_string),
                fresh: kind == "charged",
            })),
            "reused" => Ok(ChargeOutcome::KeyReused),
            other => Err(shared::CommonError::Internal(format!("charge script answered {other:?}")).into()),
        }
    }
}
