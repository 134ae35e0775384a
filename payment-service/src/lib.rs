//! Payment service: charges and refunds through payment providers reached over HTTP (with a
//! circuit breaker, a manual switch and safe failover per provider), and the books that count
//! them. Every charge and refund is one Lua script on its order's shard that writes the effect,
//! its idempotency marker and the totals together, so charged − refunded balances at every
//! instant, and a retry after a crash never charges twice.
//!
//! Layout: one folder per capability, each with its handlers, its Redis writes and its scripts
//! (one `.lua` file each, tested on a real Redis): [`charges`], [`refunds`]; the next
//! capability is a new folder. Beside them: [`gateways`] the providers, their breakers and the
//! failover rule,
//! [`store`] the keys, ids and reads, [`routes`] the routing table, the OpenAPI document and
//! the books, [`model`] request and response bodies, [`config`] settings, [`error`] the one
//! error enum.

pub mod accounts;
pub mod charges;
pub mod config;
pub mod error;
pub mod events;
pub mod gateways;
pub mod merchant_webhooks;
pub mod model;
pub mod pix;
pub mod refunds;
pub mod routes;
pub mod splits;
pub mod store;
pub mod wallets;

use std::process::ExitCode;
use std::sync::Arc;

use shared::idempotency::IdempotencyStore;

use crate::config::Settings;
use crate::gateways::Gateways;
use crate::store::Store;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub idempotency: IdempotencyStore,
    pub gateways: Arc<Gateways>,
    pub pool: shared::redis_pool::Pool,
    pub accounts: shared::accounts::Accounts,
    /// Calls to the other services: stock (who owns an item, for splits) and order (a paid Pix
    /// wakes its order).
    pub services: reqwest::Client,
    /// The items with splits, as this replica last read them.
    pub split_items: Arc<splits::known::SplitItems>,
}

pub async fn main_entry() -> ExitCode {
    shared::server::main_entry("payment-service", Settings::from_env(), |s| &s.common, run).await
}

pub async fn run(settings: Settings) -> Result<(), String> {
    let pool = shared::redis_pool::create(&settings.common)?;
    for family in [
        &gateways::REQUESTS,
        &gateways::BREAKER_TRANSITIONS,
        &gateways::FAILOVERS,
    ] {
        std::sync::LazyLock::force(family);
    }
    std::sync::LazyLock::force(&gateways::LATENCY);
    std::sync::LazyLock::force(&wallets::WALLET_EVENTS);
    std::sync::LazyLock::force(&events::EVENTS_APPENDED);
    for family in [&splits::SPLIT_EVENTS, &splits::SPLIT_FAILURES, &splits::SPLIT_ANOMALIES] {
        std::sync::LazyLock::force(family);
    }
    std::sync::LazyLock::force(&splits::SPLIT_LOOKUP);
    std::sync::LazyLock::force(&pix::RECEIVED);
    std::sync::LazyLock::force(&pix::PROCESSED);
    std::sync::LazyLock::force(&pix::LAG);
    for family in [
        &merchant_webhooks::DELIVERIES,
        &merchant_webhooks::ATTEMPTS,
        &merchant_webhooks::FANOUT,
    ] {
        std::sync::LazyLock::force(family);
    }
    std::sync::LazyLock::force(&merchant_webhooks::QUEUE);
    std::sync::LazyLock::force(&gateways::BREAKER_STATE);
    let gateways = Arc::new(Gateways::new(
        &settings.gateways,
        &settings.routes,
        &settings.providers,
    )?);
    for g in gateways.views() {
        tracing::info!(gateway = %g.name, url = %g.url, "payment provider");
    }
    gateways.follow_switches(pool.clone()).await;
    let split_items = Arc::new(splits::known::SplitItems::default());
    split_items.follow(pool.clone());
    let settings = Arc::new(settings);
    let state = AppState {
        settings: settings.clone(),
        // Markers live as long as the idempotency records they back up.
        store: Store::new(pool.clone(), settings.common.idempotency_ttl).on_one_node(!settings.common.redis_cluster),
        idempotency: IdempotencyStore::for_service(pool.clone(), &settings.common)
            .effects_settle_held_keys(!settings.common.redis_cluster),
        gateways,
        pool: pool.clone(),
        accounts: shared::accounts::Accounts::new(pool.clone(), settings.common.internal_token.clone()),
        services: shared::tls::client_builder()
            .connect_timeout(std::time::Duration::from_millis(500))
            .build()
            .map_err(|e| format!("the services' client: {e}"))?,
        split_items,
    };
    tokio::spawn(pix::worker::run(state.clone()));
    tokio::spawn(merchant_webhooks::relay::run(state.clone()));
    tokio::spawn(merchant_webhooks::dispatcher::run(
        state.clone(),
        merchant_webhooks::dispatcher::client(&settings.outbound)?,
    ));
    shared::server::serve(&settings.common, pool, routes::openapi_json(), routes::configure(state)).await
}
