//! Splits in Redis: each item's history of splits in one list, in the item's shard
//! (`payment:{pay:S}:splits:<itemId>`, S = the shard of the item id), with each split's
//! `split.created` event beside it. What a split did to charges is kept with the charges
//! (record.lua, refund.lua): the parts on the charge, the recipients' balances in the charge's
//! shard (`payment:{pay:S}:recipient:<recipientId>` hash `<CUR>:earned`, `<CUR>:reversed`, and
//! the shard's set of recipients), so a charge and its split are one atomic step even on a
//! cluster. A balance is the sum over the shards, read at GET time, as the totals are.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use shared::ids::SHARDS;
use shared::lua::Script;

use super::rules::Rule;
use crate::error::PaymentError;
use crate::store::{Store, aggregates_key, events_key, tag};

static CREATE: LazyLock<Script> =
    LazyLock::new(|| shared::lua::script(&[&crate::events::EVENTS], include_str!("create.lua")));

/// The most splits an item keeps in its history (each charge of the item reads it whole).
pub const MOST_SPLITS: u32 = 100;

/// A split as its item's history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSplit {
    pub split_id: String,
    pub item_id: u64,
    pub effective_from_ms: u64,
    pub created_at: String,
    pub rules: Vec<Rule>,
}

pub fn item_shard(item_id: u64) -> u16 {
    shared::ids::shard_of(&item_id.to_string())
}

fn splits_key(item_id: u64) -> String {
    format!("{}:splits:{item_id}", tag(item_shard(item_id)))
}

pub(crate) fn recipient_prefix(shard: u16) -> String {
    format!("{}:recipient:", tag(shard))
}

/// The shard's items that have (had) a split: what replicas cache (`known.rs`).
pub(crate) fn split_items_key(shard: u16) -> String {
    format!("{}:split-items", tag(shard))
}

pub(crate) fn recipients_key(shard: u16) -> String {
    format!("{}:recipients", tag(shard))
}

/// `spl_` + the item's shard as 2 hex digits + 30 random hex: its events live in that shard.
pub fn new_split_id(shard: u16) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("spl_{:02x}{}", shard % SHARDS, &random[2..])
}

/// The index, in `history`, of the split in effect at `at_ms`: the latest `effectiveFrom` not
/// after it; of two with the same, the one created later.
pub fn in_effect(history: &[StoredSplit], at_ms: u64) -> Option<usize> {
    history
        .iter()
        .enumerate()
        .filter(|(_, s)| s.effective_from_ms <= at_ms)
        .max_by_key(|(i, s)| (s.effective_from_ms, *i))
        .map(|(i, _)| i)
}

/// A recipient's earnings per currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Earned {
    pub earned: u64,
    pub reversed: u64,
}

impl Store {
    /// Appends `split` to its item's history with its event; false when the history is full.
    pub async fn create_split(&self, split: &StoredSplit, event: &str) -> Result<bool, PaymentError> {
        let shard = item_shard(split.item_id);
        let json = serde_json::to_string(split).map_err(|e| shared::CommonError::Internal(e.to_string()))?;
        let mut conn = self.pool.get().await?;
        let n: i64 = CREATE
            .key(splits_key(split.item_id))
            .key(events_key(shard, &split.split_id))
            .key(aggregates_key(shard))
            .key(split_items_key(shard))
            .arg(json)
            .arg(&split.split_id)
            .arg(event)
            .arg(MOST_SPLITS)
            .arg(split.item_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    /// An item's splits, oldest first.
    pub async fn splits_of(&self, item_id: u64) -> Result<Vec<StoredSplit>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let raw: Vec<String> = conn.lrange(splits_key(item_id), 0, -1).await?;
        raw.iter()
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| shared::CommonError::Internal(format!("a stored split does not parse: {e}")).into())
            })
            .collect()
    }

    /// A recipient's earnings, summed over the shards (one pipeline on a single node).
    pub async fn recipient_balances(&self, recipient_id: &str) -> Result<BTreeMap<String, Earned>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let cmds = (0..SHARDS)
            .map(|shard| {
                redis::cmd("HGETALL")
                    .arg(format!("{}{recipient_id}", recipient_prefix(shard)))
                    .to_owned()
            })
            .collect();
        let shards: Vec<BTreeMap<String, String>> = conn.each(cmds).await?;
        let mut balances: BTreeMap<String, Earned> = BTreeMap::new();
        for fields in shards {
            for (field, value) in fields {
                let Some((currency, kind)) = field.split_once(':') else {
                    continue;
                };
                let amount = crate::store::parse_amount(&value)?;
                let entry = balances.entry(currency.to_string()).or_default();
                match kind {
                    "earned" => entry.earned += amount,
                    "reversed" => entry.reversed += amount,
                    _ => {}
                }
            }
        }
        Ok(balances)
    }

    /// Every recipient that was ever paid a part (for `verify`).
    pub async fn all_recipients(&self) -> Result<Vec<String>, PaymentError> {
        let mut conn = self.pool.get().await?;
        let cmds = (0..SHARDS)
            .map(|shard| redis::cmd("SMEMBERS").arg(recipients_key(shard)).to_owned())
            .collect();
        let shards: Vec<Vec<String>> = conn.each(cmds).await?;
        let mut all: Vec<String> = shards.into_iter().flatten().collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(effective_from_ms: u64) -> StoredSplit {
        StoredSplit {
            split_id: new_split_id(0),
            item_id: 1,
            effective_from_ms,
            created_at: String::new(),
            rules: Vec::new(),
        }
    }

    #[test]
    fn the_split_in_effect_is_the_latest_started_and_of_equals_the_later_created() {
        let history = [split(100), split(300), split(200), split(200)];
        assert_eq!(in_effect(&history, 50), None);
        assert_eq!(in_effect(&history, 100), Some(0));
        assert_eq!(in_effect(&history, 250), Some(3), "same start: the later created");
        assert_eq!(in_effect(&history, 300), Some(1), "created first, starts last");
        assert_eq!(in_effect(&[], 300), None);
    }

    #[test]
    fn split_ids_carry_the_items_shard() {
        let shard = item_shard(42);
        let id = new_split_id(shard);
        assert!(
            id.starts_with(&format!("spl_{shard:02x}")) && id.len() == 4 + 32,
            "{id}"
        );
        assert!(shared::ids::is_safe_id(&id));
    }
}
