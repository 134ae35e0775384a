//! The manual switch: `PUT /gateways/{name}` writes it to Redis, and every replica reads the
//! switches back every [`SWITCH_REFRESH`], so all obey a change within a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::CommonError;
use shared::redis_pool::Pool;

use super::Gateways;

pub const SWITCH_REFRESH: Duration = Duration::from_millis(250);

/// One hash for every provider's switch (a provider absent from it is on), in the slot of the
/// switches' events.
pub const SWITCH_KEY: &str = "payment:{gateways}:enabled";

/// A provider's switch events (aggregate `gw_<name>`).
pub fn switch_events_key(aggregate_id: &str) -> String {
    format!("payment:{{gateways}}:ev:{aggregate_id}")
}

static SWITCH: std::sync::LazyLock<shared::lua::Script> =
    std::sync::LazyLock::new(|| shared::lua::script(&[&crate::events::EVENTS], include_str!("switch.lua")));

async fn read(pool: &Pool) -> Result<HashMap<String, bool>, CommonError> {
    let mut conn = pool.get().await?;
    let raw: HashMap<String, String> = redis::cmd("HGETALL").arg(SWITCH_KEY).query_async(&mut conn).await?;
    Ok(raw.into_iter().map(|(name, v)| (name, v != "0")).collect())
}

impl Gateways {
    /// Persists the switch with its gateway.switched event, then applies it here at once.
    pub async fn switch(&self, pool: &Pool, name: &str, enabled: bool) -> Result<(), CommonError> {
        let aggregate = format!("gw_{name}");
        let event = serde_json::json!({
            "type": "gateway.switched",
            "at": shared::time::now_rfc3339(),
            "correlationId": aggregate,
            "data": {"gateway": name, "enabled": enabled, "traceId": shared::telemetry::current_trace_id()},
        });
        let mut conn = pool.get().await?;
        let _: i64 = SWITCH
            .key(SWITCH_KEY)
            .key(switch_events_key(&aggregate))
            .key("payment:{gateways}:aggregates")
            .arg(name)
            .arg(if enabled { "1" } else { "0" })
            .arg(event.to_string())
            .invoke_async(&mut conn)
            .await?;
        crate::events::EVENTS_APPENDED.inc(&[("type", "gateway.switched")]);
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

#[cfg(test)]
mod tests {
    //! switch.lua against a real Redis.
    use std::time::Duration;

    use shared::testing::TestRedis;

    use super::*;
    use crate::gateways::breaker::Policy;
    use crate::gateways::{GatewayList, ProviderSettings, RouteTable};

    #[tokio::test]
    async fn a_switch_is_persisted_with_its_event_and_read_back_by_every_replica() {
        let redis = TestRedis::start().await;
        let list: GatewayList = "card-a=http://127.0.0.1:9".parse().expect("list");
        let routes: RouteTable = "card:card-a".parse().expect("routes");
        let settings = ProviderSettings {
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            breaker: Policy {
                failures: 1,
                window: Duration::from_secs(1),
                cooldown: Duration::from_secs(1),
                trial_timeout: Duration::from_secs(1),
            },
        };
        let one = Gateways::new(&list, &routes, &settings).expect("gateways");
        let other = Gateways::new(&list, &routes, &settings).expect("gateways");
        one.switch(&redis.pool(), "card-a", false).await.expect("switch");
        assert!(!one.get("card-a").is_some_and(|p| p.enabled()));
        other.apply_switches(&read(&redis.pool()).await.expect("read"));
        assert!(
            !other.get("card-a").is_some_and(|p| p.enabled()),
            "the other replica reads it"
        );

        one.switch(&redis.pool(), "card-a", true).await.expect("switch");
        let mut conn = redis.conn().await;
        let events: Vec<String> = redis::cmd("LRANGE")
            .arg(switch_events_key("gw_card-a"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("LRANGE");
        assert_eq!(events.len(), 2);
        assert!(
            events[0].contains("\"gateway.switched\"") && events[0].contains("\"enabled\":false"),
            "{}",
            events[0]
        );
        assert!(events[1].contains("\"enabled\":true"), "{}", events[1]);
    }
}
