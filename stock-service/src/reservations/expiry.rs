//! The sweeper: returns lapsed reservations to `available` even when no request touches their
//! item, and finishes the demo seed if Redis was not up at start. Reserve and complete also
//! sweep their own item, so correctness never waits for this loop.

use std::sync::Arc;

use crate::config::Settings;
use crate::store::Store;

pub async fn sweep_forever(store: Store, settings: Arc<Settings>) {
    let mut seeded = !settings.seed_demo;
    let mut tick = tokio::time::interval(settings.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !seeded {
            seeded = store.seed_demo(settings.seed_units).await.is_ok();
        }
        match store.sweep_all().await {
            Ok(0) => {}
            Ok(n) => {
                shared::metrics::event("reservation", "expired");
                tracing::info!(swept = n, "expired reservations returned to available");
            }
            Err(e) => tracing::debug!(error = %e, "sweep skipped"),
        }
    }
}
