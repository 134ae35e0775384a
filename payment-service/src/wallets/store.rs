//! Wallets in Redis, in their customer's shard (`shared::ids::shard_of(customerId)`):
//! - `payment:{pay:S}:wallet:<customerId>` hash: currency → balance
//! - `payment:{pay:S}:wallet:<customerId>:tx` list: its transactions, oldest first (JSON)
//! - `payment:{pay:S}:op:wallet:<key>`: the transaction a request made, for its retry
//! - `payment:{pay:S}:ev:wal_<customerId>`: its events
//!
//! Every movement is one script (move.lua).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use shared::lua::Script;
use utoipa::ToSchema;

use crate::error::PaymentError;
use crate::model::Charge;
use crate::store::{Store, events_key, outbox_key, tag};

/// `move_wallet`: for move.lua, and for wallet_charge.lua with the charge's record.
pub(crate) static WALLET_LIB: shared::lua::Lib = shared::lua::Lib {
    name: "wallet",
    source: include_str!("wallet.lua"),
    needs: &[&crate::events::EVENTS],
};

static MOVE: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[&WALLET_LIB], include_str!("move.lua")));

/// A new wallet transaction's id.
pub fn new_transaction_id() -> String {
    shared::ids::new_id("wtx")
}

pub(crate) fn wallet_key(shard: u16, customer_id: &str) -> String {
    format!("{}:wallet:{customer_id}", tag(shard))
}
fn transactions_key(shard: u16, customer_id: &str) -> String {
    format!("{}:wallet:{customer_id}:tx", tag(shard))
}
fn marker_key(shard: u16, key: &str) -> String {
    format!("{}:op:wallet:{key}", tag(shard))
}
/// A wallet's aggregate id in the event log.
pub fn aggregate_id(customer_id: &str) -> String {
    format!("wal_{customer_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Credit,
    Refund,
    Debit,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Credit => "credit",
            Self::Refund => "refund",
            Self::Debit => "debit",
        }
    }
}

/// One transaction, as stored and as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    pub transaction_id: String,
    #[serde(rename = "type")]
    #[schema(pattern = "^(credit|debit|refund)$")]
    pub kind: String,
    pub amount: u64,
    pub currency: String,
    pub balance_after: u64,
    pub charge_id: Option<String>,
    pub at: String,
}

/// A movement asked of a wallet.
#[derive(Debug)]
pub struct Movement<'a> {
    pub customer_id: &'a str,
    pub kind: Kind,
    pub amount: u64,
    pub currency: &'a str,
    /// The request's key: the same key finds the same movement.
    pub key: &'a str,
    /// From [`new_transaction_id`]; a movement found by its key keeps its first id.
    pub transaction_id: &'a str,
    pub charge_id: Option<&'a str>,
    pub correlation: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Moved {
    /// `fresh` is false when the key had moved the money before.
    Done {
        tx: Transaction,
        fresh: bool,
    },
    Insufficient {
        balance: u64,
    },
    Limit {
        balance: u64,
    },
}

fn parse_tx(raw: &str) -> Result<Transaction, PaymentError> {
    serde_json::from_str(raw)
        .map_err(|e| shared::CommonError::Internal(format!("stored wallet transaction {raw:?}: {e}")).into())
}

impl Store {
    /// wallet.lua's keys and arguments for `m`, in order.
    pub(crate) fn add_move(&self, inv: &mut shared::lua::Invocation<'_>, m: &Movement<'_>) {
        let shard = shared::ids::shard_of(m.customer_id);
        inv.key(wallet_key(shard, m.customer_id))
            .key(transactions_key(shard, m.customer_id))
            .key(marker_key(shard, m.key))
            .key(events_key(shard, &aggregate_id(m.customer_id)))
            .key(self.aggregates_key(shard))
            .key(outbox_key(shard))
            .arg(m.kind.as_str())
            .arg(m.amount.to_string())
            .arg(m.currency)
            .arg(m.transaction_id)
            .arg(shared::time::now_rfc3339())
            .arg(self.marker_ttl.as_millis() as u64)
            .arg(m.customer_id)
            .arg(m.charge_id.unwrap_or(""))
            .arg(m.correlation)
            .arg(shared::telemetry::current_trace_id().unwrap_or_default());
    }

    pub async fn move_wallet(&self, m: &Movement<'_>) -> Result<Moved, PaymentError> {
        let mut conn = self.pool.get().await?;
        let mut inv = MOVE.prepare_invoke();
        self.add_move(&mut inv, m);
        let reply: Vec<String> = inv.invoke_async(&mut conn).await?;
        Self::moved_from(&reply)
    }
    /// What wallet.lua's `move_wallet` answered.
    pub(crate) fn moved_from(reply: &[String]) -> Result<Moved, PaymentError> {
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
        let balance = || crate::store::parse_amount(field(1));
        match field(0) {
            kind @ ("moved" | "found") => Ok(Moved::Done {
                tx: parse_tx(field(1))?,
                fresh: kind == "moved",
            }),
            "insufficient" => Ok(Moved::Insufficient { balance: balance()? }),
            "limit" => Ok(Moved::Limit { balance: balance()? }),
            other => Err(shared::CommonError::Internal(format!("wallet script answered {other:?}")).into()),
        }
    }

    /// Credits a wallet charge's refund back to its customer, as a provider would refund it:
    /// the transaction id is the refund's reference.
    pub async fn wallet_refund(&self, charge: &Charge, key: &str, amount: u64) -> Result<String, PaymentError> {
        let moved = self
            .move_wallet(&Movement {
                customer_id: &charge.customer_id,
                kind: Kind::Refund,
                amount,
                currency: &charge.currency,
                key,
                transaction_id: &new_transaction_id(),
                charge_id: Some(&charge.charge_id),
                correlation: &charge.order_id,
            })
            .await?;
        match moved {
            Moved::Done { tx, .. } => Ok(tx.transaction_id),
            Moved::Limit { .. } | Moved::Insufficient { .. } => Err(PaymentError::WalletLimit),
        }
    }

    /// Balances per currency; `None` when the customer has no wallet.
    pub async fn wallet_balances(&self, customer_id: &str) -> Result<Option<BTreeMap<String, u64>>, PaymentError> {
        let shard = shared::ids::shard_of(customer_id);
        let mut conn = self.pool.get().await?;
        let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(wallet_key(shard, customer_id))
            .query_async(&mut conn)
            .await?;
        if raw.is_empty() {
            return Ok(None);
        }
        let mut balances = BTreeMap::new();
        for (currency, value) in raw {
            balances.insert(currency, crate::store::parse_amount(&value)?);
        }
        Ok(Some(balances))
    }

    /// Up to `limit` transactions, newest first, starting before position `before` (from the
    /// newest when `None`); and the position to go on from, if any is left.
    pub async fn wallet_transactions(
        &self,
        customer_id: &str,
        before: Option<u64>,
        limit: u64,
    ) -> Result<(Vec<Transaction>, Option<u64>), PaymentError> {
        let shard = shared::ids::shard_of(customer_id);
        let mut conn = self.pool.get().await?;
        let key = transactions_key(shard, customer_id);
        let len: u64 = redis::cmd("LLEN").arg(&key).query_async(&mut conn).await?;
        let end = before.unwrap_or(len).min(len);
        if end == 0 {
            return Ok((Vec::new(), None));
        }
        let start = end.saturating_sub(limit);
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(start)
            .arg(end - 1)
            .query_async(&mut conn)
            .await?;
        let mut txs = raw.iter().map(|r| parse_tx(r)).collect::<Result<Vec<_>, _>>()?;
        txs.reverse();
        Ok((txs, (start > 0).then_some(start)))
    }

    /// Every transaction of a wallet, oldest first (for `verify`).
    pub async fn all_wallet_transactions(&self, customer_id: &str) -> Result<Vec<Transaction>, PaymentError> {
        let shard = shared::ids::shard_of(customer_id);
        let mut conn = self.pool.get().await?;
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(transactions_key(shard, customer_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        raw.iter().map(|r| parse_tx(r)).collect()
    }
}
