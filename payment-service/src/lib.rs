//! Payment service: charges and refunds over a simulated gateway, and the books that count
//! them. Every charge and refund is one Lua script on its order's shard that writes the effect,
//! its idempotency marker and the totals together, so charged − refunded balances at every
//! instant, and a retry after a crash never charges twice.
//!
//! Layout: one folder per capability, each with its handlers, its Redis writes and its scripts
//! (one `.lua` file each, tested on a real Redis): [`charges`], [`refunds`]; the next
//! capability is a new folder. Beside them: [`gateway`] the (simulated) payment gateway,
//! [`store`] the keys, ids and reads, [`routes`] the routing table, the OpenAPI document and
//! the books, [`model`] request and response bodies, [`config`] settings, [`error`] the one
//! error enum.

pub mod charges;
pub mod config;
pub mod error;
pub mod gateway;
pub mod model;
pub mod refunds;
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
    shared::server::main_entry("payment-service", Settings::from_env(), |s| &s.common, run).await
}

pub async fn run(settings: Settings) -> Result<(), String> {
    tracing::info!(gateway = %settings.gateway, "payment gateway");
    let pool = shared::redis_pool::create(&settings.common)?;
    std::sync::LazyLock::force(&gateway::GATEWAY_REQUESTS);
    let settings = Arc::new(settings);
    let state = AppState {
        settings: settings.clone(),
        // Markers live as long as the idempotency records they back up.
        store: Store::new(pool.clone(), settings.common.idempotency_ttl),
        idempotency: IdempotencyStore::for_service(pool.clone(), &settings.common),
    };
    shared::server::serve(&settings.common, pool, routes::openapi_json(), routes::configure(state)).await
}
