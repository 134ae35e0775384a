//! Recording a charge: the charge, its order's index, the totals and the key's marker in one
//! script (charge.lua).

use std::sync::LazyLock;

use shared::idempotency::Answer;
use shared::lua::Lib;
use shared::lua::Script;

use crate::error::PaymentError;
use crate::splits::store::{recipient_prefix, recipients_key};
use crate::splits::{SplitPlan, encode_parts};
use crate::store::{
    Store, charge_key, charge_prefix, events_key, op_key, order_key, outbox_key, parse_amount, totals_key,
};
use crate::wallets::{Moved, Movement};

/// `record_charge`: for charge.lua, and for wallet_charge.lua after the debit.
static RECORD: Lib = Lib {
    name: "record",
    source: include_str!("record.lua"),
    needs: &[
        &shared::idempotency::scripts::ANSWER,
        &crate::events::EVENTS,
        &shared::lua::COUNTS,
    ],
};

static CHARGE: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[&RECORD], include_str!("charge.lua")));

static WALLET_CHARGE: LazyLock<Script> = LazyLock::new(|| {
    shared::lua::script(
        &[
            &crate::wallets::WALLET_LIB,
            &RECORD,
            &shared::idempotency::scripts::ANSWER,
        ],
        include_str!("wallet_charge.lua"),
    )
});

/// How a wallet checkout's payment went in one step (wallet_charge.lua).
pub enum WalletCharge {
    /// Debited and recorded.
    Charged(ChargeOutcome),
    /// Not a fresh debit (found again by its key, or too little): nothing recorded yet.
    NotDebited(Moved),
}

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
    /// How the charge is divided among the item's recipients, if its item has a split.
    pub split: Option<&'a SplitPlan>,
    /// A Pix waiting for its payer: pending, with the code the payer pays.
    pub pix_code: Option<&'a str>,
    /// The item sold: its owner receives the charge's webhooks.
    pub item_id: Option<u64>,
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
    /// A pending Pix's code: the charge waits for its payer.
    pub pix_code: Option<String>,
}

pub enum ChargeOutcome {
    Recorded(Recorded),
    /// The key's marker names a charge for a different request.
    KeyReused,
}

/// The charge's first event, as the log keeps it (events.lua): built here, so the script only
/// appends it. Only a declined charge's data has a declineCode: a `null` in every other
/// charge's event was 19 bytes fsynced per checkout that said nothing. Its envelope and data
/// are named by letters (events::CHARGE_LETTERS; `events::parse_event` serves them in full):
/// one such event is fsynced per checkout, and the names were a fifth of its bytes.
fn event_of(new: &NewCharge<'_>, status: &str, at: &str) -> String {
    let kind = match status {
        "succeeded" => "charge.succeeded",
        "pending" => "charge.pending",
        _ => "charge.declined",
    };
    // Stored without chargeId and orderId: the event's aggregate and correlation are they, and
    // events::parse_event gives them back (each byte is fsynced).
    let letter = |name: &'static str| crate::events::charge_letter(name).unwrap_or(name);
    let mut data = serde_json::Map::new();
    data.insert(letter("amount").into(), new.amount.into());
    data.insert(letter("currency").into(), new.currency.into());
    data.insert(letter("paymentMethod").into(), new.payment_method.into());
    data.insert(letter("gateway").into(), new.gateway.into());
    data.insert(letter("gatewayReference").into(), new.gateway_reference.into());
    data.insert(letter("traceId").into(), shared::telemetry::current_trace_id().into());
    if let Some(code) = new.decline_code {
        data.insert(letter("declineCode").into(), code.into());
    }
    serde_json::json!({"t": kind, "at": at, "c": new.order_id, "d": data}).to_string()
}

impl Store {
    /// Records `new` under `idempotency_key`, with `answer` stored beside it, unless the key
    /// already made a charge: that one is returned (not fresh) and `answer` is not stored.
    /// record.lua's keys and arguments for `new`, in order.
    fn add_charge(&self, inv: &mut shared::lua::Invocation<'_>, new: &NewCharge<'_>, idempotency_key: &str) {
        let shard = shared::ids::shard_of(new.order_id);
        let charge_id = new.charge_id;
        let status = match (new.decline_code, new.pix_code) {
            (Some(_), _) => "failed",
            (None, Some(_)) => "pending",
            (None, None) => "succeeded",
        };
        let created_at = shared::time::rfc3339_ms(shared::time::now_ms());
        inv.key(charge_key(shard, charge_id))
            .key(order_key(shard, new.order_id))
            .key(totals_key(shard))
            .key(op_key(shard, idempotency_key))
            .key(events_key(shard, charge_id))
            .key(self.aggregates_key(shard))
            .key(outbox_key(shard))
            .arg(charge_id)
            .arg(new.order_id)
            .arg(new.amount.to_string())
            .arg(new.currency)
            .arg(new.customer_id)
            .arg(new.payment_method)
            .arg(status)
            .arg(new.decline_code.unwrap_or(""))
            .arg(self.marker_ttl.as_millis() as u64)
            .arg(charge_prefix(shard))
            .arg(new.gateway)
            // The charge's facts, its creation time and provider reference among them, are
            // this event's alone (events.lua: charge_fields; store::charge_from).
            .arg(event_of(new, status, &created_at));
        match new.split {
            Some(plan) => {
                let split_event = serde_json::json!({
                    "type": "split.executed",
                    "at": created_at,
                    "correlationId": new.order_id,
                    "data": plan.event_data(charge_id, new.currency),
                })
                .to_string();
                inv.arg(&plan.split_id).arg(encode_parts(&plan.parts)).arg(split_event)
            }
            None => inv.arg("").arg("").arg(""),
        }
        .arg(recipient_prefix(shard))
        .arg(recipients_key(shard))
        .arg(new.pix_code.unwrap_or(""))
        .arg(new.item_id.map(|i| i.to_string()).unwrap_or_default());
    }

    /// Records `new` under `idempotency_key`, with `answer` stored beside it, unless the key
    /// already made a charge: that one is returned (not fresh) and `answer` is not stored.
    pub async fn charge(
        &self,
        new: &NewCharge<'_>,
        idempotency_key: &str,
        answer: &Answer<'_>,
    ) -> Result<ChargeOutcome, PaymentError> {
        let mut conn = self.pool.get().await?;
        let mut invocation = CHARGE.prepare_invoke();
        self.add_charge(&mut invocation, new, idempotency_key);
        answer.add_to(&mut invocation);
        let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
        charge_outcome(&reply)
    }

    /// Debits `debit` and records `new` in one step, on one Redis node (wallet_charge.lua).
    pub async fn wallet_charge(
        &self,
        debit: &Movement<'_>,
        new: &NewCharge<'_>,
        idempotency_key: &str,
        answer: &Answer<'_>,
    ) -> Result<WalletCharge, PaymentError> {
        let mut conn = self.pool.get().await?;
        let mut invocation = WALLET_CHARGE.prepare_invoke();
        self.add_move(&mut invocation, debit);
        self.add_charge(&mut invocation, new, idempotency_key);
        answer.add_to(&mut invocation);
        let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
        match reply.split_first() {
            Some((first, moved)) if first == "debit" => Ok(WalletCharge::NotDebited(Self::moved_from(moved)?)),
            _ => Ok(WalletCharge::Charged(charge_outcome(&reply)?)),
        }
    }
}

/// What record.lua's `record_charge` answered.
fn charge_outcome(reply: &[String]) -> Result<ChargeOutcome, PaymentError> {
    let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
    match field(0) {
        kind @ ("charged" | "found") => Ok(ChargeOutcome::Recorded(Recorded {
            charge_id: field(1).to_string(),
            order_id: field(2).to_string(),
            amount: parse_amount(field(3))?,
            currency: field(4).to_string(),
            decline_code: Some(field(5)).filter(|c| !c.is_empty()).map(str::to_string),
            fresh: kind == "charged",
            pix_code: Some(field(6)).filter(|c| !c.is_empty()).map(str::to_string),
        })),
        "reused" => Ok(ChargeOutcome::KeyReused),
        other => Err(shared::CommonError::Internal(format!("charge script answered {other:?}")).into()),
    }
}
