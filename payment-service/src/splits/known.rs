//! Which items have splits, known to every replica without a Redis read per charge.
//!
//! Most items have no split, and reading an item's history for every charge was one more Redis
//! round trip per checkout. Each replica instead re-reads the set of items with splits every
//! [`REFRESH`] and trusts it only while its last refresh *started* less than [`TRUSTED_FOR`]
//! ago; an item it trusts has no split is charged without a read. `POST /splits` answers only
//! [`CREATION_WAIT`] (> [`TRUSTED_FOR`]) after its split was written: by then every replica
//! that still trusts its set started its last refresh after the write, so it knows the item.
//! A charge that starts after the client learns of its split therefore always reads it; one
//! running concurrently with the creation may or may not, as with any two concurrent requests.
//! A replica whose refreshes fail (Redis slow or away) stops trusting its set and reads the
//! history for every charge, as before.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shared::ids::SHARDS;
use shared::redis_pool::Pool;

use super::store::split_items_key;

pub const REFRESH: Duration = Duration::from_millis(200);
pub const TRUSTED_FOR: Duration = Duration::from_millis(500);
pub const CREATION_WAIT: Duration = Duration::from_millis(600);

/// What a replica knows of the items with splits.
#[derive(Debug, Default)]
pub struct SplitItems {
    known: RwLock<Option<(HashSet<u64>, Instant)>>,
}

/// Whether a charge of an item needs its history read: pure, for the rule's tests.
pub fn must_read(known: Option<(&HashSet<u64>, Instant)>, item: u64, now: Instant) -> bool {
    match known {
        Some((items, refreshed)) if now.saturating_duration_since(refreshed) < TRUSTED_FOR => items.contains(&item),
        _ => true,
    }
}

impl SplitItems {
    pub fn must_read(&self, item: u64) -> bool {
        let guard = self.known.read().unwrap_or_else(|p| p.into_inner());
        must_read(guard.as_ref().map(|(s, t)| (s, *t)), item, Instant::now())
    }

    /// This replica's own creation is known at once.
    pub fn add(&self, item: u64) {
        let mut guard = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some((items, _)) = guard.as_mut() {
            items.insert(item);
        }
    }

    fn set(&self, items: HashSet<u64>, started: Instant) {
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = Some((items, started));
    }

    /// Re-reads the set every [`REFRESH`], for good.
    pub fn follow(self: &Arc<Self>, pool: Pool) {
        let known = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tick.tick().await;
                let started = Instant::now();
                match read(&pool).await {
                    Ok(items) => known.set(items, started),
                    Err(e) => tracing::debug!(error = %e, "could not refresh the items with splits"),
                }
            }
        });
    }
}

async fn read(pool: &Pool) -> Result<HashSet<u64>, shared::CommonError> {
    let mut conn = pool.get().await?;
    let cmds = (0..SHARDS)
        .map(|shard| redis::cmd("SMEMBERS").arg(split_items_key(shard)).to_owned())
        .collect();
    let shards: Vec<Vec<u64>> = conn.each(cmds).await?;
    Ok(shards.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_is_charged_without_a_read_only_when_a_recent_refresh_says_it_has_no_split() {
        let now = Instant::now();
        let items: HashSet<u64> = [7].into();
        let fresh = now - Duration::from_millis(100);
        assert!(!must_read(Some((&items, fresh)), 1, now), "known without a split");
        assert!(must_read(Some((&items, fresh)), 7, now), "known with one");
        let stale = now - TRUSTED_FOR;
        assert!(must_read(Some((&items, stale)), 1, now), "too old to trust");
        assert!(must_read(None, 1, now), "never refreshed");
        assert!(CREATION_WAIT > TRUSTED_FOR && TRUSTED_FOR > REFRESH);
    }
}
