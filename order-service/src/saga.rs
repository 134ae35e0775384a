//! The checkout saga: reserve → charge → complete, undoing what was done when it cannot finish.
//!
//! Every step is an idempotent call keyed by the order (`<orderId>:<step>`), so running the
//! saga again for the same order — after a crash, or when a client retries once the key's lease
//! ran out — replays the steps that happened and continues from there. Each outcome is recorded
//! on the order before the next step starts.
//!
//! The rule for money: never report failure while money may have moved. When the charge's
//! outcome is unknown (payment reached and the answer lost; or payment unreachable now, after an
//! earlier runner may have charged before it died), or the completion/refund after a charge is
//! unknown, the order stays `processing`, the client gets 202 and the Idempotency-Key stays
//! locked; re-running the saga resolves it by re-sending the same idempotent calls.
//!
//! The same holds for stock: a 503 says everything was undone, so a reserve whose outcome is
//! unknown (stock may have reserved) waits the same way instead of leaving units held until
//! the reservation expires.

use actix_web::http::StatusCode;
use shared::idempotency::{IdempotencyStore, KeyRef, StoredResponse};
use shared::telemetry::{compensation_span, step_span};
use tracing::Instrument;

use crate::clients::{
    ChargeAnswer, PaymentClient, RefundAnswer, Reservation, ReserveAnswer, StockClient, TransitionAnswer,
};
use crate::error::OrderError;
use crate::model::{CheckoutCompleted, CheckoutProcessing, NewOrder};
use crate::store::{Applied, Change, OrderStore, Progress, Settle};

/// How a run of the saga ended, and so what becomes of the Idempotency-Key.
#[derive(Debug)]
pub enum SagaEnd {
    /// Definitive: stored and replayed.
    Final(StoredResponse),
    /// Failed with everything undone: the key is freed so the client may retry.
    Retryable(StoredResponse),
    /// Unresolved: 202, the key stays locked until its lease runs out.
    Pending(StoredResponse),
    /// Ended, with the key settled (stored or freed, as for `Final` and `Retryable`) and the
    /// order retired in the same step as its end was recorded: nothing is left to do.
    Settled(StoredResponse),
}

impl SagaEnd {
    pub fn response(&self) -> &StoredResponse {
        match self {
            Self::Final(r) | Self::Retryable(r) | Self::Pending(r) | Self::Settled(r) => r,
        }
    }
}

#[derive(Clone)]
pub struct Saga {
    store: OrderStore,
    stock: StockClient,
    payment: PaymentClient,
    idempotency: IdempotencyStore,
}

pub fn processing_response(order_id: &str) -> StoredResponse {
    StoredResponse::json(
        StatusCode::ACCEPTED,
        &CheckoutProcessing {
            order_id: order_id.to_string(),
            status: "processing".into(),
        },
    )
    .with_location(format!("/order/orders/{order_id}"))
}

impl Saga {
    /// Sends an ended order's owed release again; true once nothing is owed any more (stock
    /// answered it: see [`send_release`]) and that is recorded.
    pub async fn release_owed(&self, order_id: &str, reservation_id: &str) -> bool {
        let Some(status) = send_release(&self.stock, order_id, reservation_id).await else {
            return false;
        };
        match self.store.release_done(order_id, status).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(order_id, error = %e, "could not record the owed release");
                false
            }
        }
    }

    pub fn new(store: OrderStore, stock: StockClient, payment: PaymentClient, idempotency: IdempotencyStore) -> Self {
        Self {
            store,
            stock,
            payment,
            idempotency,
        }
    }

    /// Runs the saga for an order `owner` holds the lease of, from its recorded `progress`;
    /// its end settles `key` in the same step when it can.
    pub async fn run(&self, order: &NewOrder, progress: Progress, owner: &str, key: &KeyRef) -> SagaEnd {
        let attempt = Attempt {
            store: &self.store,
            stock: &self.stock,
            payment: &self.payment,
            owner,
            key,
            idempotency: &self.idempotency,
        };
        let end = attempt.proceed(order, progress).await;
        let outcome = match (&end, end.response().status) {
            (SagaEnd::Pending(_), _) => "processing",
            (_, 200) => "completed",
            (_, s) if s >= 500 => "unavailable",
            _ => "refused",
        };
        shared::metrics::event("checkout", outcome);
        end
    }
}

/// Asks stock to release a reservation, under the order's release key: the step status to
/// record, or None while stock cannot be reached (the release is then owed). A refusal (the
/// reservation completed, expired or is unknown) or an answer no contract allows is final:
/// another try would not change it.
async fn send_release(stock: &StockClient, order_id: &str, reservation_id: &str) -> Option<&'static str> {
    match stock
        .release(order_id, reservation_id)
        .instrument(compensation_span("release", order_id))
        .await
    {
        Ok(TransitionAnswer::Done) => Some("succeeded"),
        Ok(TransitionAnswer::Refused(_) | TransitionAnswer::Unexpected(_)) => Some("refused"),
        Err(e) => {
            tracing::warn!(order_id, error = %e, "stock cannot be reached to release; the release is owed");
            None
        }
    }
}

/// One runner's pass over an order. Its changes carry `owner`, so a runner that lost its lease
/// to recovery cannot overwrite what the new owner records.
struct Attempt<'a> {
    store: &'a OrderStore,
    stock: &'a StockClient,
    payment: &'a PaymentClient,
    owner: &'a str,
    key: &'a KeyRef,
    idempotency: &'a IdempotencyStore,
}

impl Attempt<'_> {
    /// Goes on from the last recorded step. A recorded step is never re-decided: once the
    /// charge is recorded the order only goes forward (complete, refunding only on stock's
    /// definitive refusal), so a transient failure can never end a charged order as failed.
    async fn proceed(&self, o: &NewOrder, progress: Progress) -> SagaEnd {
        // A reservation recorded by an earlier runner means that runner went on to charge and
        // may have been heard before it died: a charge may exist that this run has not seen.
        let charged_earlier = progress.reservation.is_some();
        let reservation = match progress.reservation {
            Some((reservation_id, total_fee, currency)) => Reservation {
                reservation_id,
                total_fee,
                currency,
            },
            None => match self
                .reserve(o, progress.resumed)
                .instrument(step_span("reserve", &o.order_id))
                .await
            {
                Ok(r) => r,
                Err(end) => return end,
            },
        };
        let charge_id = match progress.charge_id {
            Some(charge_id) => charge_id,
            None => match self
                .charge(o, &reservation, charged_earlier)
                .instrument(step_span("charge", &o.order_id))
                .await
            {
                Ok(c) => c,
                Err(end) => return end,
            },
        };
        let charge_id = charge_id.as_str();
        self.complete(o, &reservation, charge_id)
            .instrument(step_span("complete", &o.order_id))
            .await
    }

    /// Reserves and records the reservation; `Err` is how the saga ended instead. `resumed`:
    /// an earlier runner may have sent this reserve, so this run's failing to reach stock
    /// proves nothing about the units.
    async fn reserve(&self, o: &NewOrder, resumed: bool) -> Result<Reservation, SagaEnd> {
        let id = o.order_id.as_str();
        let reservation = match self.stock.reserve(id, o.item_id, o.quantity).await {
            Ok(ReserveAnswer::Reserved(r)) => r,
            Ok(ReserveAnswer::ItemNotFound) => {
                let err = OrderError::ItemNotFound {
                    order_id: id.into(),
                    item_id: o.item_id,
                };
                return Err(self.end(id, "failed", ("reserve", "item_not_found"), vec![], err).await);
            }
            Ok(ReserveAnswer::OutOfStock) => {
                let err = OrderError::OutOfStock {
                    order_id: id.into(),
                    item_id: o.item_id,
                    quantity: o.quantity,
                };
                return Err(self.end(id, "failed", ("reserve", "out_of_stock"), vec![], err).await);
            }
            Ok(ReserveAnswer::Unexpected(why)) => return Err(self.reserve_failed(id, &why).await),
            Err(e) if e.maybe_sent() || resumed => {
                // Stock may hold a reservation for this order: ending now would keep its units
                // from sale until RESERVATION_TTL while the client hears "everything undone".
                // The same key, resent once stock answers, replays it, and the order goes on.
                return Err(self.pending(id, ("reserve", "unknown"), &e.to_string()).await);
            }
            Err(e) => return Err(self.reserve_failed(id, &e.to_string()).await),
        };
        let rid = reservation.reservation_id.as_str();
        let noted = self
            .note(
                id,
                Change {
                    step: Some(("reserve", "succeeded")),
                    currency: Some(&reservation.currency),
                    amount: Some(reservation.total_fee),
                    fields: vec![("reservationId", rid.to_string())],
                    ..Change::default()
                },
            )
            .await;
        if noted != Applied::Yes {
            return Err(self.settled_elsewhere(id).await);
        }
        Ok(reservation)
    }

    /// Charges and records the charge; `Err` is how the saga ended instead. `charged_earlier`:
    /// an earlier runner may have sent this charge, so this run's failing to reach payment
    /// proves nothing about the money; and it first asks payment for a charge that runner made
    /// ([`Attempt::earlier_charge`]).
    async fn charge(&self, o: &NewOrder, reservation: &Reservation, charged_earlier: bool) -> Result<String, SagaEnd> {
        let id = o.order_id.as_str();
        let earlier = if charged_earlier {
            self.earlier_charge(o, reservation).await?
        } else {
            None
        };
        let charge_id = match earlier {
            Some(charge_id) => charge_id,
            None => self.send_charge(o, reservation, charged_earlier).await?,
        };
        let noted = self
            .note(
                id,
                Change {
                    step: Some(("charge", "succeeded")),
                    fields: vec![("chargeId", charge_id.clone())],
                    ..Change::default()
                },
            )
            .await;
        if noted != Applied::Yes {
            return Err(self.settled_elsewhere(id).await);
        }
        Ok(charge_id)
    }

    /// The charge an earlier runner of this order made, if payment holds one. Resending the
    /// charge would find it only while payment still knows its Idempotency-Key; a run that
    /// resumes later than that (IDEMPOTENCY_TTL, 24 h, after an outage that long) would charge
    /// the card a second time. Payment keeps its charges for good and lists them by order, so
    /// the saga asks first. If payment cannot say, the order waits, as for an unknown charge.
    async fn earlier_charge(&self, o: &NewOrder, reservation: &Reservation) -> Result<Option<String>, SagaEnd> {
        let id = o.order_id.as_str();
        match self
            .payment
            .standing_charge(id, reservation.total_fee, &reservation.currency)
            .await
        {
            Ok(Some(charge_id)) => {
                tracing::info!(order_id = id, %charge_id, "an earlier run charged this order; not charging again");
                Ok(Some(charge_id))
            }
            Ok(None) => Ok(None),
            Err(why) => Err(self.pending(id, ("charge", "unknown"), &why).await),
        }
    }

    /// Sends the charge: its charge id, or how the saga ended instead.
    async fn send_charge(
        &self,
        o: &NewOrder,
        reservation: &Reservation,
        charged_earlier: bool,
    ) -> Result<String, SagaEnd> {
        let id = o.order_id.as_str();
        let rid = reservation.reservation_id.as_str();

        let charge = match self
            .payment
            .charge(
                id,
                reservation.total_fee,
                &reservation.currency,
                &o.customer_id,
                &o.payment_method,
            )
            .await
        {
            Ok(ChargeAnswer::Charged(c)) => c,
            Ok(ChargeAnswer::Declined { decline_code }) => {
                let release = self.release(id, rid).await;
                let err = OrderError::PaymentDeclined {
                    order_id: id.into(),
                    decline_code,
                };
                return Err(self.end(id, "compensated", ("charge", "declined"), release, err).await);
            }
            Ok(ChargeAnswer::Refused { detail }) => {
                let release = self.release(id, rid).await;
                let err = OrderError::PaymentMethodRefused {
                    order_id: id.into(),
                    detail,
                };
                return Err(self.end(id, "compensated", ("charge", "refused"), release, err).await);
            }
            Err(e) if !e.maybe_sent() && !charged_earlier => {
                // Payment never received the request, nor any before it: no money moved, undo
                // the reservation. After an earlier runner's charge the order waits instead (the
                // catch-all below): once payment is back, the same key replays that charge.
                tracing::warn!(order_id = id, error = %e, "payment unreachable; releasing");
                let release = self.release(id, rid).await;
                let err = OrderError::DependencyUnavailable {
                    order_id: id.into(),
                    detail: "the payment service is unavailable; nothing was charged and the reservation was released"
                        .into(),
                };
                return Err(self
                    .end(id, "compensated", ("charge", "unavailable"), release, err)
                    .await);
            }
            Ok(ChargeAnswer::Unexpected(why)) => {
                return Err(self.pending(id, ("charge", "unknown"), &why).await);
            }
            Err(e) => {
                return Err(self.pending(id, ("charge", "unknown"), &e.to_string()).await);
            }
        };
        Ok(charge.charge_id)
    }

    /// Completes the reservation of a charged order; refunds only on a definitive refusal.
    async fn complete(&self, o: &NewOrder, reservation: &Reservation, charge_id: &str) -> SagaEnd {
        let id = o.order_id.as_str();
        let rid = reservation.reservation_id.as_str();

        match self.stock.complete(id, rid).await {
            Ok(TransitionAnswer::Done) => {
                let body = CheckoutCompleted {
                    order_id: id.into(),
                    status: "completed".into(),
                    item_id: o.item_id,
                    quantity: o.quantity,
                    amount: reservation.total_fee,
                    currency: reservation.currency.clone(),
                    reservation_id: rid.into(),
                    charge_id: charge_id.into(),
                };
                let resp = StoredResponse::json(StatusCode::OK, &body);
                let change = Change {
                    step: Some(("complete", "succeeded")),
                    status: Some("completed"),
                    response: Some(&resp),
                    settle: Some(self.settle(true)),
                    ..Change::default()
                };
                match self.note(id, change).await {
                    Applied::Yes => SagaEnd::Settled(resp),
                    _ => self.settled_elsewhere(id).await,
                }
            }
            Ok(TransitionAnswer::Refused(slug)) => {
                // Stock definitively refused (the reservation expired or was released): the
                // customer paid for units we no longer hold, so the money goes back.
                tracing::warn!(order_id = id, slug, "completion refused; refunding");
                self.note(
                    id,
                    Change {
                        step: Some(("complete", "refused")),
                        ..Change::default()
                    },
                )
                .await;
                match self
                    .payment
                    .refund(id, charge_id)
                    .instrument(compensation_span("refund", id))
                    .await
                {
                    Ok(RefundAnswer::Refunded { refund_id }) => {
                        shared::metrics::event("compensation", "refund");
                        let mut fields = self.release(id, rid).await;
                        fields.push(("refundId", refund_id));
                        let err = OrderError::DependencyUnavailable {
                            order_id: id.into(),
                            detail: "the reservation lapsed before it could be completed; the charge was refunded"
                                .into(),
                        };
                        self.end(id, "compensated", ("refund", "succeeded"), fields, err).await
                    }
                    Ok(RefundAnswer::Unexpected(why)) => self.pending(id, ("refund", "unknown"), &why).await,
                    Err(e) => self.pending(id, ("refund", "unknown"), &e.to_string()).await,
                }
            }
            Ok(TransitionAnswer::Unexpected(why)) => self.pending(id, ("complete", "unknown"), &why).await,
            Err(e) => self.pending(id, ("complete", "unknown"), &e.to_string()).await,
        }
    }

    /// Stock never received this order's reserve (every attempt was refused a connection, and
    /// no runner sent one before), or answered it with something no contract allows (a bug,
    /// not an outage: a reservation it may have made returns when RESERVATION_TTL runs out).
    /// No money has moved, so the client may retry at once.
    async fn reserve_failed(&self, id: &str, why: &str) -> SagaEnd {
        tracing::warn!(order_id = id, error = why, "stock unavailable");
        let err = OrderError::DependencyUnavailable {
            order_id: id.into(),
            detail: "the stock service is unavailable; nothing was charged".into(),
        };
        self.end(id, "failed", ("reserve", "unavailable"), vec![], err).await
    }

    /// Releases the reservation, returning the fields to record with the order's end. A
    /// release that cannot get through is owed (`releaseOwed`): the order's answer stands, and
    /// recovery sends the same release again until stock hears it ([`Saga::release_owed`]),
    /// rather than leaving the units held until the reservation expires.
    async fn release(&self, id: &str, rid: &str) -> Vec<(&'static str, String)> {
        let (status, fields) = match send_release(self.stock, id, rid).await {
            Some(status) => (status, vec![]),
            None => ("unavailable", vec![("releaseOwed", rid.to_string())]),
        };
        shared::metrics::event("compensation", "release");
        self.note(
            id,
            Change {
                step: Some(("release", status)),
                ..Change::default()
            },
        )
        .await;
        fields
    }

    /// Ends the order with a problem response.
    async fn end(
        &self,
        id: &str,
        status: &str,
        step: (&str, &str),
        fields: Vec<(&'static str, String)>,
        err: OrderError,
    ) -> SagaEnd {
        let resp = StoredResponse::problem(&err.problem());
        // Definitive business answers are stored; a refused payment method is a 400 that,
        // like any validation error, leaves the key free, as does a failure with all undone.
        let definitive = matches!(resp.status, 402 | 404 | 409);
        let change = Change {
            step: Some(step),
            status: Some(status),
            fields,
            response: Some(&resp),
            settle: Some(self.settle(definitive)),
            ..Change::default()
        };
        if self.note(id, change).await != Applied::Yes {
            return self.settled_elsewhere(id).await;
        }
        SagaEnd::Settled(resp)
    }

    /// Settling the key with the order's end: its answer stored, or the key freed.
    fn settle(&self, store: bool) -> Settle<'_> {
        Settle {
            key: self.key,
            store,
            idempotency: self.idempotency,
        }
    }

    async fn pending(&self, id: &str, step: (&str, &str), why: &str) -> SagaEnd {
        tracing::warn!(
            order_id = id,
            step = step.0,
            error = why,
            "outcome unknown; order stays processing"
        );
        self.note(
            id,
            Change {
                step: Some(step),
                ..Change::default()
            },
        )
        .await;
        SagaEnd::Pending(processing_response(id))
    }

    /// The order's end was recorded by another runner (this one lost its lease): answer what
    /// that runner recorded, or 202 while it is still at work. Never a different outcome.
    async fn settled_elsewhere(&self, id: &str) -> SagaEnd {
        tracing::warn!(
            order_id = id,
            "another runner owns this order now; deferring to its outcome"
        );
        match self.store.final_response(id).await {
            Ok(Some(resp)) if resp.status < 500 => SagaEnd::Final(resp),
            Ok(Some(resp)) => SagaEnd::Retryable(resp),
            _ => SagaEnd::Pending(processing_response(id)),
        }
    }

    /// Records a step. When Redis cannot be reached the change's fate is unknown: the caller
    /// must not give a definitive answer on it, and stops with 202 (recovery finishes later).
    async fn note(&self, id: &str, change: Change<'_>) -> Applied {
        match self.store.update(id, self.owner, change).await {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(order_id = id, error = %e, "could not record a saga step");
                Applied::Unknown
            }
        }
    }
}
