//! Running a checkout to its end and settling its Idempotency-Key, for the request that
//! started it, for a client retry that takes it over, and for the recovery worker alike.
//!
//! While a runner works it holds the order's lease and renews it: the key's record points at
//! the order, so that one lease makes a retry wait (409 in-use, not a second execution) and
//! recovery leave the order alone. If the process dies, it runs out; a retry or the recovery
//! worker claims the order and resumes it from its last recorded step — every step is an
//! idempotent downstream call, so nothing acts twice. (A key taken before #29's seventh pass is
//! a hash with a lease of its own, no longer renewed: a retry once it lapsed claims the order,
//! which answers 202 processing while the order's lease lasts.)

use std::time::Duration;

use shared::idempotency::{IdempotencyStore, KeyRef, StoredResponse};

use super::core::KeyFate;
use super::saga::{Saga, SagaEnd, processing_response};
use super::store::Progress;
use crate::ids::OrderId;
use crate::model::NewOrder;
use crate::orders::store::OrderStore;

#[derive(Clone)]
pub struct Runner {
    pub saga: Saga,
    pub store: OrderStore,
    pub idempotency: IdempotencyStore,
    /// How soon recovery retries an order whose outcome is still unknown.
    pub retry_unknown: Duration,
}

/// Who is resuming an order, which decides what is checked first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumer {
    /// A client retry that just took the key over (its token is the order id).
    KeyHolder,
    /// The recovery worker: the key may never have been taken for this order.
    Recovery,
}

impl Runner {
    pub fn lease(&self) -> Duration {
        self.idempotency.lease()
    }

    /// Runs the order's saga as `owner` from `progress`, then settles the key: a definitive
    /// answer is stored, a fully undone failure frees the key, an unknown outcome keeps both
    /// locked and asks recovery to try again soon. Returns the response for the client.
    pub async fn drive(&self, order: &NewOrder, key: &KeyRef, owner: &str, progress: Progress) -> StoredResponse {
        let id = &order.order_id;
        let renewer = tokio::spawn(renew(self.clone(), id.clone(), owner.to_string()));
        let end = self.saga.run(order, progress, owner, key).await;
        renewer.abort();
        self.settle(id, key, owner, end).await
    }

    /// Resumes an order `owner` has claimed: settles it if it already ended, abandons it if
    /// its key was never taken for it, else drives it on from its last recorded step.
    pub async fn resume(&self, order_id: &OrderId, owner: &str, by: Resumer) -> Option<StoredResponse> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(%order_id, error = %e, "resume: cannot {what}; the lease will run out and it is tried again");
        };
        let (stored, progress) = match self.store.load(order_id).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) => {
                tracing::error!(%order_id, "resume: the order lacks what is needed to resume it");
                return None;
            }
            Err(e) => {
                fail("load the order", &e);
                return None;
            }
        };
        let key = KeyRef::from_stored(stored.idempotency_key.clone(), stored.fingerprint.clone());
        match self.store.final_response(order_id).await {
            Ok(Some(resp)) => {
                // It ended with its release owed: stock first, and until stock hears it the
                // order stays in recovery's set.
                if let (true, Some(r)) = (progress.release_owed, &progress.reservation)
                    && !self.saga.release_owed(order_id, &r.reservation_id).await
                {
                    if let Err(e) = self.store.lease(order_id, owner, self.retry_unknown).await {
                        fail("look again later", &e);
                    }
                    return None;
                }
                // It ended, but the process died before settling its key (or it owed a release).
                return Some(self.settle(order_id, &key, owner, SagaEnd::recorded(resp)).await);
            }
            Ok(None) => {}
            Err(e) => {
                fail("read the order", &e);
                return None;
            }
        }
        if by == Resumer::Recovery {
            // The order is created before its key is taken; if the process died in between,
            // or another request holds the key, this order never began and nothing happened.
            match self.idempotency.token_of(&key).await {
                Ok(Some(token)) if token == order_id.as_str() => {}
                Ok(_) => {
                    match self.store.abandon(order_id).await {
                        Ok(true) => tracing::info!(%order_id, "recovery: dropped an order whose checkout never began"),
                        Ok(false) => {}
                        Err(e) => fail("drop the order", &e),
                    }
                    return None;
                }
                Err(e) => {
                    fail("read the key", &e);
                    return None;
                }
            }
        }
        Some(self.drive(&stored.order, &key, owner, progress).await)
    }

    async fn settle(&self, id: &OrderId, key: &KeyRef, owner: &str, end: SagaEnd) -> StoredResponse {
        let (resp, fate) = match end {
            // Settled with its end, in the same step.
            SagaEnd::Settled(resp) => return resp,
            SagaEnd::Awaiting(resp, until) => {
                // Its key already answers the 202; recovery looks again at the expiry.
                if let Err(e) = self.store.lease(id, owner, until).await {
                    tracing::warn!(order_id = %id, error = %e, "could not set when to look at the Pix again");
                }
                return resp;
            }
            SagaEnd::Unsettled(resp, fate) => (resp, fate),
        };
        // The key's token is the order id: whichever runner ends the order may settle it.
        // Settling also retires the order from recovery's set, in the same step.
        let recorded = match fate {
            KeyFate::Store => self.store.settle_key(id, key, Some(&resp), &self.idempotency).await,
            KeyFate::Free => self.store.settle_key(id, key, None, &self.idempotency).await,
            KeyFate::Hold => {
                if let Err(e) = self.store.lease(id, owner, self.retry_unknown).await {
                    // Harmless: recovery will find the order again once its lease runs out.
                    tracing::warn!(order_id = %id, error = %e, "could not update the order's lease");
                }
                Ok(())
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(order_id = %id, error = %e, "could not settle the key; recovery will");
            // The client must not act on an answer whose key may still be unsettled.
            return processing_response(id);
        }
        resp
    }
}

/// Keeps the order's lease alive while the saga works. Stops when the order is no longer ours.
async fn renew(runner: Runner, order_id: OrderId, owner: String) {
    let lease = runner.lease();
    let every = (lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match runner.store.lease(&order_id, &owner, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%order_id, "lost the order's lease; its new owner will finish it");
                return;
            }
            Err(e) => tracing::warn!(%order_id, error = %e, "could not renew the order's lease"),
        }
    }
}
