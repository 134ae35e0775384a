//! The recovery worker: every replica runs one. It finds checkouts whose runner's lease ran out
//! (the process died, or the outcome was unknown and is due for another try), claims each —
//! one claimant wins, atomically — and drives it to its end with the same saga, which replays
//! the idempotent steps already taken and goes forward (charge succeeded: complete, refunding
//! only on a definitive refusal) or backward (release). Then it settles the order's
//! Idempotency-Key, so no key stays "in progress" without someone working on it.

use std::sync::Arc;
use std::time::Duration;

use shared::ids::{self, SHARDS};
use tokio::sync::Semaphore;

use super::runner::{Resumer, Runner};
use super::store::Claim;
use crate::ids::OrderId;

/// Orders taken per shard and pass; the rest wait for the next pass.
const BATCH: usize = 32;
/// Orders driven at once by one replica's worker.
const CONCURRENCY: usize = 64;

pub async fn run(runner: Runner, interval: Duration) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        tokio::time::sleep(interval).await;
        for shard in 0..SHARDS {
            let due = match runner.store.due(shard, BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "recovery: cannot list due orders; retrying next pass");
                    break;
                }
            };
            for order_id in due {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let runner = runner.clone();
                tokio::spawn(async move {
                    recover(&runner, &order_id).await;
                    drop(permit);
                });
            }
        }
    }
}

pub async fn recover(runner: &Runner, order_id: &OrderId) {
    let owner = ids::new_id("rec");
    match runner.store.claim(order_id, &owner, runner.idempotency.lease()).await {
        Ok(Claim::Claimed) => {}
        // Another replica's worker, or a client's retry, got there first.
        Ok(Claim::Held) | Ok(Claim::Gone) => return,
        Err(e) => {
            tracing::warn!(%order_id, error = %e, "recovery: claim failed");
            return;
        }
    }
    // No request carries this work: it is a trace of its own, and its calls to stock and
    // payment continue it, so the resumed checkout can be followed across the services.
    let span = tracing::info_span!(
        parent: None,
        "recovery",
        otel.name = "recover checkout",
        order.id = %order_id,
    );
    shared::telemetry::own_trace(span, finish(runner, order_id, &owner)).await;
}

/// Drives a claimed checkout to its end.
async fn finish(runner: &Runner, order_id: &OrderId, owner: &str) {
    tracing::info!(%order_id, "recovery: resuming a checkout whose runner stopped");
    shared::metrics::event("recovery", "claimed");
    let Some(resp) = runner.resume(order_id, owner, Resumer::Recovery).await else {
        return;
    };
    let outcome = match resp.status {
        200 => "completed",
        202 => "unresolved",
        s if s >= 500 => "undone",
        _ => "refused",
    };
    tracing::info!(%order_id, status = resp.status, "recovery: checkout {outcome}");
    shared::metrics::event("recovery", outcome);
}
