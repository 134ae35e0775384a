//! Order service: orchestrates a checkout as a saga — reserve stock, charge the payment,
//! complete the reservation — and undoes what was done (release, refund) when it cannot finish.
//!
//! Layout: [`checkout`] the checkout (its decisions, saga, runner, recovery, store and scripts),
//! [`orders`] reading orders and the totals, [`ids`] ids and statuses as types, [`config`]
//! settings, [`error`] the one error enum, [`model`] bodies, [`routes`] the routing table and
//! the OpenAPI document.

pub mod checkout;
pub mod config;
pub mod error;
pub mod ids;
pub mod model;
pub mod orders;
pub mod routes;

use std::process::ExitCode;
use std::sync::Arc;

use shared::http_client::Downstream;
use shared::idempotency::IdempotencyStore;

use crate::checkout::clients::{PaymentClient, StockClient};
use crate::checkout::runner::Runner;
use crate::checkout::saga::Saga;
use crate::checkout::{self as co};
use crate::config::Settings;
use crate::orders::store::OrderStore;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: OrderStore,
    pub runner: Runner,
    /// For the refunds of completed orders (the saga has its own).
    pub payment: PaymentClient,
    pub stock: StockClient,
}

pub async fn main_entry() -> ExitCode {
    shared::server::main_entry("order-service", Settings::from_env(), |s| &s.common, run).await
}

pub async fn run(settings: Settings) -> Result<(), String> {
    let pool = shared::redis_pool::create(&settings.common)?;
    let token = settings.common.internal_token.clone();
    let stock = Downstream::new("stock", &settings.stock_url, token.clone(), &settings.retry)?;
    let payment = Downstream::new("payment", &settings.payment_url, token, &settings.retry)?;
    let store = OrderStore::new(pool.clone());
    let idempotency = IdempotencyStore::for_service(pool.clone(), &settings.common);
    let (stock, payment) = (StockClient::new(stock), PaymentClient::new(payment));
    let saga = Saga::new(
        store.clone(),
        stock.clone(),
        payment.clone(),
        idempotency.clone(),
        settings.pix_ttl,
    );
    let settings = Arc::new(settings);
    let runner = Runner {
        saga,
        store: store.clone(),
        idempotency,
        retry_unknown: settings.recovery_retry,
    };
    tokio::spawn(co::recovery::run(runner.clone(), settings.recovery_interval));
    let state = AppState {
        settings: settings.clone(),
        store,
        runner,
        payment,
        stock,
    };
    shared::server::serve(&settings.common, pool, routes::openapi_json(), routes::configure(state)).await
}
