//! Running a checkout to its end and settling its Idempotency-Key, for the request that
//! started it and for the recovery worker alike.
//!
//! While a runner works it holds two leases and renews both: the key's (so a retry gets 409
//! in-use, not a second execution) and the order's (so recovery leaves it alone). If the process
//! dies, both run out; a retry or the recovery worker claims the order and runs it again —
//! every step is an idempotent downstream call, so re-running replays what happened and goes on.

use std::time::Duration;

use shared::idempotency::{IdempotencyStore, KeyRef, Outcome, StoredResponse};

use crate::saga::{Saga, SagaEnd};
use crate::store::OrderStore;

#[derive(Clone)]
pub struct Runner {
    pub saga: Saga,
    pub store: OrderStore,
    pub idempotency: IdempotencyStore,
    /// How soon recovery retries an order whose outcome is still unknown.
    pub retry_unknown: Duration,
}

impl Runner {
    fn lease(&self) -> Duration {
        self.idempotency.lease()
    }

    /// Runs the order's saga as `owner`, then settles the key: a definitive answer is stored,
    /// a fully undone failure frees the key, an unknown outcome keeps both locked and asks
    /// recovery to try again soon. Returns the response for the client.
    pub async fn drive(&self, order: &crate::model::NewOrder, key: &KeyRef, owner: &str) -> StoredResponse {
        let id = order.order_id.as_str();
        let renewer = tokio::spawn(renew(self.clone(), key.clone(), id.to_string(), owner.to_string()));
        let end = self.saga.run(order, key, owner, self.lease()).await;
        renewer.abort();
        let (outcome, settled) = match end {
            SagaEnd::Final(r) => (Outcome::Store(r), true),
            SagaEnd::Retryable(r) => (Outcome::Free(r), true),
            SagaEnd::Pending(r) => (Outcome::Hold(r), false),
        };
        // The key's token is the order id: whichever runner ends the order may settle it.
        self.idempotency.record(key, id, &outcome).await;
        let after = if settled {
            self.store.retire(id).await
        } else {
            self.store.lease(id, owner, self.retry_unknown).await.map(|_| ())
        };
        if let Err(e) = after {
            // Harmless: recovery will find the order again and settle it once more.
            tracing::warn!(order_id = id, error = %e, "could not update the order's lease");
        }
        match outcome {
            Outcome::Store(r) | Outcome::Free(r) | Outcome::Hold(r) => r,
        }
    }
}

/// Keeps both leases alive while the saga works. Stops when the order is no longer ours.
async fn renew(runner: Runner, key: KeyRef, order_id: String, owner: String) {
    let lease = runner.lease();
    let every = (lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = runner.idempotency.renew(&key, &order_id).await {
            tracing::warn!(order_id, error = %e, "could not renew the checkout's key lease");
        }
        match runner.store.lease(&order_id, &owner, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(order_id, "lost the order's lease; its new owner will finish it");
                return;
            }
            Err(e) => tracing::warn!(order_id, error = %e, "could not renew the order's lease"),
        }
    }
}
