//! Stock service: items and reservations in Redis. Never oversells: every change of an item's
//! counts is one Lua script on that item's hash slot, and `available + reserved + sold` is the
//! same before and after each.
//!
//! Layout: one folder per capability, each with its handlers, its Redis reads and writes, and
//! its scripts (one `.lua` file each, tested on a real Redis): [`items`] the catalogue,
//! [`reservations`] reserve, release, complete and the sweeper that returns lapsed reservations
//! to `available`. Beside them: [`store`] the keys and the Redis handle, [`routes`] the routing
//! table and OpenAPI document, [`model`] request and response bodies, [`config`] settings,
//! [`error`] the one error enum.

pub mod config;
pub mod error;
pub mod items;
pub mod model;
pub mod reservations;
pub mod routes;
pub mod store;

use std::process::ExitCode;
use std::sync::Arc;

use shared::idempotency::IdempotencyStore;

use crate::config::Settings;
use crate::store::Store;

/// What handlers share.
pub type AppState = shared::server::AppState<Settings, Store>;

pub async fn main_entry() -> ExitCode {
    shared::server::main_entry("stock-service", Settings::from_env(), |s| &s.common, run).await
}

pub async fn run(settings: Settings) -> Result<(), String> {
    let pool = shared::redis_pool::create(&settings.common)?;
    let store = Store::new(pool.clone(), settings.reservation_ttl, settings.common.idempotency_ttl);
    if settings.seed_demo {
        // Redis may still be starting: seeding is retried by the sweeper loop until it succeeds.
        if let Err(e) = store.seed_demo(settings.seed_units).await {
            tracing::warn!(error = %e, "demo seed deferred: redis not reachable yet");
        }
    }
    let settings = Arc::new(settings);
    tokio::spawn(reservations::expiry::sweep_forever(store.clone(), settings.clone()));
    let state = AppState {
        settings: settings.clone(),
        store,
        idempotency: IdempotencyStore::for_service(pool.clone(), &settings.common)
            // Nothing outside Redis happens before a reserve, release or complete: on one node each
            // is one write, key and effect together.
            .effects_take_keys(!settings.common.redis_cluster),
        accounts: shared::accounts::Accounts::new(pool.clone(), settings.common.internal_token.clone()),
    };
    shared::server::serve(&settings.common, pool, routes::openapi_json(), routes::configure(state)).await
}
