//! The manual switch: `PUT /gateways/{name}` writes it to Redis, and every replica reads the
//! switches back every [`SWITCH_REFRESH`], so all obey a change within a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::CommonError;
use shared::redis_pool::Pool;

use super::Gateways;

pub const SWITCH_REFRESH: Duration = Duration::from_millis(250);

/// One hash for every provider's switch (a provider absent from it is on).
pub const SWITCH_KEY: &str = "payment:gateways:enabled";

async fn read(pool: &Pool) -> Result<HashMap<String, bool>, CommonError> {
    let mut conn = pool.get().await?;
    let raw: HashMap<String, String> = redis::cmd("HGETALL").arg(SWITCH_KEY).query_async(&mut conn).await?;
    Ok(raw.into_iter().map(|(name, v)| (name, v != "0")).collect())
}

impl Gateways {
    /// Persists the switch, then applies it here at once.
    pub async fn switch(&self, pool: &Pool, name: &str, enabled: bool) -> Result<(), CommonError> {
        let mut conn = pool.get().await?;
        let _: i64 = redis::cmd("HSET")
            .arg(SWITCH_KEY)
            .arg(name)
            .arg(if enabled { "1" } else { "0" })
            .query_async(&mut conn)
            .await?;
        if let Some(p) = self.get(name) {
            p.enabled.store(enabled, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads the switches once (start-up waits for it), then keeps reading them in the
    /// background. A failed read keeps the switches as they were.
    pub async fn follow_switches(self: &Arc<Self>, pool: Pool) {
        match read(&pool).await {
            Ok(switches) => self.apply_switches(&switches),
            Err(e) => tracing::warn!(error = %e, "could not read the gateway switches; all on until Redis answers"),
        }
        let gateways = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWITCH_REFRESH);
            loop {
                tick.tick().await;
                if let Ok(switches) = read(&pool).await {
                    gateways.apply_switches(&switches);
                }
            }
        });
    }
}
