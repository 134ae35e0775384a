//! The checkout saga's I/O: reserve → charge → complete, undoing what was done when it cannot
//! finish. It makes each call, asks [`super::core`] what the answer means, and carries the
//! decision out: records the step, ends the order, or waits.
//!
//! Every step is an idempotent call keyed by the order (`<orderId>:<step>`), so running the
//! saga again for the same order (after a crash, or when a client retries once the key's lease
//! ran out) replays the steps that happened and continues from there. So a step that goes on
//! (reserved, charged) is not written on its own: it is recorded with the order's next write —
//! its end, or a wait — and a run that dies before that loses nothing a replay does not find
//! again (stock replays the reservation under its key; payment lists the order's charges, and
//! a resumed run asks it for them before charging). Two fsynced round trips fewer per checkout.

use actix_web::http::StatusCode;
use shared::ServiceError;
use shared::idempotency::{IdempotencyStore, KeyRef, StoredResponse};
use tracing::Instrument;

use super::clients::{PaymentClient, StockClient};
use std::time::Duration;

use super::core::{self, Answer, ChargeAnswer, Decision, Ending, KeyFate, Next, Recorded, ReserveAnswer};
use super::spans::step_span;
use super::store::{Applied, Change, Progress, Reservation, Settle};
use crate::error::OrderError;
use crate::ids::{ChargeId, OrderId, OrderStatus, ReservationId, StepName, StepStatus};
use crate::model::{CheckoutCompleted, CheckoutProcessing, NewOrder, PixView};
use crate::orders::store::{OrderStore, step_text};
use std::sync::{Mutex, PoisonError};

/// How a run of the saga ended, and so what becomes of the Idempotency-Key.
#[derive(Debug)]
pub enum SagaEnd {
    /// Ended, with the key settled (stored or freed, as [`core::key_fate`] says) and the order
    /// retired in the same step as its end was recorded: nothing is left to do.
    Settled(StoredResponse),
    /// The answer, with what is still to become of the key: another runner recorded the
    /// order's end (Store or Free), or the outcome is unknown (Hold: 202, the key stays locked
    /// until its lease runs out and recovery tries again).
    Unsettled(StoredResponse, KeyFate),
    /// A Pix still waiting for its payer: its 202 is stored under the key; recovery looks again
    /// after this long (its expiry), or sooner when payment wakes it.
    Awaiting(StoredResponse, Duration),
}

impl SagaEnd {
    pub fn response(&self) -> &StoredResponse {
        match self {
            Self::Settled(r) | Self::Unsettled(r, _) | Self::Awaiting(r, _) => r,
        }
    }

    /// An ended order's recorded answer, its key still to be settled.
    pub fn recorded(resp: StoredResponse) -> Self {
        let fate = core::key_fate(resp.status);
        Self::Unsettled(resp, fate)
    }

    fn pending(order_id: &OrderId) -> Self {
        Self::Unsettled(processing_response(order_id), KeyFate::Hold)
    }
}

pub fn processing_response(order_id: &OrderId) -> StoredResponse {
    StoredResponse::json(
        StatusCode::ACCEPTED,
        &CheckoutProcessing {
            order_id: order_id.to_string(),
            status: OrderStatus::Processing.as_str().into(),
            pix: None,
        },
    )
    .with_location(format!("/order/orders/{order_id}"))
}

#[derive(Clone)]
pub struct Saga {
    store: OrderStore,
    stock: StockClient,
    payment: PaymentClient,
    idempotency: IdempotencyStore,
    /// How long a Pix checkout waits for its payer (PIX_TTL).
    pix_ttl: Duration,
}

/// What a Pix's reservation is held for beyond PIX_TTL: the order's own expiry releases it
/// first; stock's expiry only covers an order service that stayed down.
const PIX_HOLD_MARGIN: Duration = Duration::from_secs(300);

impl Saga {
    pub fn new(
        store: OrderStore,
        stock: StockClient,
        payment: PaymentClient,
        idempotency: IdempotencyStore,
        pix_ttl: Duration,
    ) -> Self {
        Self {
            store,
            stock,
            payment,
            idempotency,
            pix_ttl,
        }
    }

    /// Sends an ended order's owed release again; true once nothing is owed any more (stock
    /// answered it) and that is recorded.
    pub async fn release_owed(&self, order_id: &OrderId, reservation_id: &ReservationId) -> bool {
        let (status, owed) = send_release(&self.stock, order_id, reservation_id).await;
        if owed {
            return false;
        }
        match self.store.release_done(order_id, status).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "could not record the owed release");
                false
            }
        }
    }

    /// Runs the saga for an order `owner` holds the lease of, from its recorded `progress`;
    /// its end settles `key` in the same step when it can.
    pub async fn run(&self, order: &NewOrder, progress: Progress, owner: &str, key: &KeyRef) -> SagaEnd {
        let attempt = Attempt {
            saga: self,
            order,
            owner,
            key,
            unwritten: Mutex::default(),
        };
        let end = attempt.proceed(progress).await;
        let outcome = match (&end, end.response().status) {
            (SagaEnd::Unsettled(_, KeyFate::Hold), _) => "processing",
            (SagaEnd::Awaiting(..), _) | (_, 202) => "awaiting_payment",
            (_, 200) => "completed",
            (_, s) if s >= 500 => "unavailable",
            _ => "refused",
        };
        shared::metrics::event("checkout", outcome);
        end
    }
}

/// Asks stock to release a reservation, under the order's release key: the step status to
/// record, and whether the release is still owed (stock never heard it).
async fn send_release(stock: &StockClient, order_id: &OrderId, reservation_id: &ReservationId) -> (StepStatus, bool) {
    let call = stock
        .release(order_id, reservation_id)
        .instrument(step_span(StepName::Release, order_id, true))
        .await;
    core::after_release(call)
}

/// One runner's pass over an order. Its changes carry `owner`, so a runner that lost its lease
/// to recovery cannot overwrite what the new owner records.
struct Attempt<'a> {
    saga: &'a Saga,
    order: &'a NewOrder,
    owner: &'a str,
    key: &'a KeyRef,
    /// Steps taken and not yet written: the next write records them ([`Self::note`]).
    unwritten: Mutex<Unwritten>,
}

/// What the saga learnt since its last write to the order.
#[derive(Default)]
struct Unwritten {
    steps: Vec<String>,
    reservation: Option<Reservation>,
    fields: Vec<(&'static str, String)>,
}

impl Unwritten {
    /// `change`, with what is unwritten recorded ahead of it in the same write.
    fn onto<'a>(&'a self, mut change: Change<'a>) -> Change<'a> {
        change.earlier = self.steps.clone();
        change.reservation = change.reservation.or(self.reservation.as_ref());
        change.fields.extend(self.fields.iter().cloned());
        change
    }
}

impl Attempt<'_> {
    fn id(&self) -> &OrderId {
        &self.order.order_id
    }

    /// Goes on from the last recorded step ([`core::next_step`]); `Err` is how the saga ended
    /// instead of going on.
    async fn proceed(&self, progress: Progress) -> SagaEnd {
        let mut recorded = Recorded {
            reservation: progress.reservation.is_some(),
            charge: progress.charge_id.is_some(),
            resumed: progress.resumed,
            awaiting: progress.awaiting_until_ms.is_some(),
        };
        let mut reservation = progress.reservation;
        let mut charge_id = progress.charge_id;
        loop {
            let step = core::next_step(recorded);
            let taken = match (step, &reservation, &charge_id) {
                (Next::Reserve { maybe_sent }, _, _) => self.reserve(maybe_sent).await.map(|r| reservation = Some(r)),
                (Next::Charge { maybe_sent }, Some(r), _) => {
                    self.charge(r, maybe_sent).await.map(|c| charge_id = Some(c))
                }
                (Next::Complete, Some(r), Some(c)) => return self.complete(r, c).await,
                (Next::Payment, Some(r), Some(c)) => {
                    let until = progress.awaiting_until_ms.unwrap_or(0);
                    self.payment(r, c, until).await
                }
                // What next_step was told is recorded is exactly what is here.
                _ => return SagaEnd::pending(self.id()),
            };
            if let Err(end) = taken {
                return end;
            }
            // A resumed run's next step may have been sent by an earlier run that did not live
            // to record it: the steps that go on are recorded with the order's next write.
            recorded = Recorded {
                reservation: reservation.is_some(),
                charge: charge_id.is_some(),
                resumed: progress.resumed,
                awaiting: false,
            };
        }
    }

    async fn reserve(&self, maybe_sent: bool) -> Result<Reservation, SagaEnd> {
        let o = self.order;
        let call = self
            .saga
            .stock
            .reserve(self.id(), o.item_id, o.quantity, self.hold_seconds())
            .instrument(step_span(StepName::Reserve, self.id(), false))
            .await;
        let reservation = match call.answer() {
            Some(ReserveAnswer::Reserved(r)) => Some(r.clone()),
            _ => None,
        };
        match (core::after_reserve(call, maybe_sent), reservation) {
            (Decision::Proceed, Some(r)) => {
                self.went_on(StepName::Reserve, |u| u.reservation = Some(r.clone()));
                Ok(r)
            }
            (decision, _) => Err(self.carry_out(decision, None, None, vec![]).await),
        }
    }

    /// `maybe_sent`: an earlier runner may have charged; payment is asked for that charge
    /// first. Resending the charge would find it only while payment still knows its
    /// Idempotency-Key; a run that resumes later than that (IDEMPOTENCY_TTL, 24 h) would charge
    /// the card a second time. Payment keeps its charges for good and lists them by order.
    async fn charge(&self, reservation: &Reservation, maybe_sent: bool) -> Result<ChargeId, SagaEnd> {
        let payment = &self.saga.payment;
        let mut charged = None;
        let mut pending = None;
        let mut decision = None;
        if maybe_sent {
            let found = payment.standing_charge(self.id(), reservation).await;
            if let Ok(Some(c)) = &found {
                tracing::info!(order_id = %self.id(), charge_id = %c, "an earlier run charged this order; not charging again");
                charged = Some(c.clone());
            }
            decision = core::after_charge_lookup(found.map(|c| c.is_some()));
        }
        let decision = match decision {
            Some(d) => d,
            None => {
                let o = self.order;
                let call = payment
                    .charge(self.id(), o.item_id, reservation, &o.customer_id, &o.payment_method)
                    .instrument(step_span(StepName::Charge, self.id(), false))
                    .await;
                match call.answer() {
                    Some(ChargeAnswer::Charged(c)) => charged = Some(c.clone()),
                    Some(ChargeAnswer::Pending { charge_id, code }) => {
                        pending = Some((charge_id.clone(), code.clone()))
                    }
                    _ => {}
                }
                core::after_charge(call, maybe_sent)
            }
        };
        match (decision, charged, pending) {
            (Decision::Await, _, Some((charge_id, code))) => Err(self.await_payment(&charge_id, &code).await),
            (Decision::Proceed, Some(charge_id), _) => {
                self.went_on(StepName::Charge, |u| u.fields.push(("chargeId", charge_id.to_string())));
                Ok(charge_id)
            }
            (decision, ..) => Err(self.carry_out(decision, Some(reservation), None, vec![]).await),
        }
    }

    /// A Pix checkout's reservation is held past PIX_TTL; any other's for stock's own TTL.
    fn hold_seconds(&self) -> Option<u64> {
        (self.order.payment_method == shared::money::PaymentMethod::Pix.as_str())
            .then(|| (self.saga.pix_ttl + PIX_HOLD_MARGIN).as_secs())
    }

    /// The charge is a pending Pix: the order awaits its payer until PIX_TTL from now, and the
    /// client (and every retry with its key) hears 202 `awaiting_payment` with the code.
    async fn await_payment(&self, charge_id: &ChargeId, code: &str) -> SagaEnd {
        let expires_ms = shared::time::now_ms() + self.saga.pix_ttl.as_millis() as u64;
        let resp = StoredResponse::json(
            StatusCode::ACCEPTED,
            &CheckoutProcessing {
                order_id: self.id().to_string(),
                status: OrderStatus::AwaitingPayment.as_str().into(),
                pix: Some(PixView::new(code.to_string(), expires_ms)),
            },
        )
        .with_location(format!("/order/orders/{}", self.id()));
        let unwritten = self.take_unwritten();
        let change = unwritten.onto(Change {
            step: Some((StepName::Charge, StepStatus::Pending)),
            status: Some(OrderStatus::AwaitingPayment),
            fields: vec![
                ("chargeId", charge_id.to_string()),
                ("pixCode", code.to_string()),
                ("pixExpiresAtMs", expires_ms.to_string()),
            ],
            ..Change::default()
        });
        let applied = self
            .saga
            .store
            .await_payment(
                self.id(),
                self.owner,
                change,
                self.key,
                &resp,
                &self.saga.idempotency,
                expires_ms,
            )
            .await;
        if !matches!(applied, Ok(Applied::Yes)) {
            self.keep_unwritten(unwritten);
        }
        match applied {
            Ok(Applied::Yes) => SagaEnd::Settled(resp),
            Ok(_) => self.settled_elsewhere().await,
            Err(e) => {
                // Unknown whether it was recorded: the lease runs out and recovery resumes,
                // asking payment, which holds the pending charge under the same key.
                tracing::warn!(order_id = %self.id(), error = %e, "could not record the awaited Pix");
                SagaEnd::pending(self.id())
            }
        }
    }

    /// An awaited Pix: asks payment how it stands — canceling it once expired (a Pix paid
    /// first is then answered as paid) — and goes on to complete, ends the order, or waits on.
    async fn payment(&self, reservation: &Reservation, charge_id: &ChargeId, until_ms: u64) -> Result<(), SagaEnd> {
        let now = shared::time::now_ms();
        let expired = core::pix_expired(now, until_ms);
        let call = self
            .saga
            .payment
            .pix_status(charge_id, expired)
            .instrument(step_span(StepName::Charge, self.id(), true))
            .await;
        match core::after_pix(call, expired) {
            Decision::Proceed => {
                tracing::info!(order_id = %self.id(), "the Pix was paid; completing the order");
                self.record(Change {
                    step: Some((StepName::Charge, StepStatus::Succeeded)),
                    status: Some(OrderStatus::Processing),
                    ..Change::default()
                })
                .await
            }
            Decision::Await => Err(SagaEnd::Awaiting(
                processing_response(self.id()),
                Duration::from_millis(until_ms.saturating_sub(now)),
            )),
            decision => Err(self
                .carry_out(decision, Some(reservation), Some(charge_id), vec![])
                .await),
        }
    }

    async fn complete(&self, reservation: &Reservation, charge_id: &ChargeId) -> SagaEnd {
        let call = self
            .saga
            .stock
            .complete(self.id(), &reservation.reservation_id)
            .instrument(step_span(StepName::Complete, self.id(), false))
            .await;
        match core::after_complete(call) {
            Decision::Refund => self.refund(reservation, charge_id).await,
            decision => {
                self.carry_out(decision, Some(reservation), Some(charge_id), vec![])
                    .await
            }
        }
    }

    /// Stock definitively refused to complete (the reservation expired or was released).
    async fn refund(&self, reservation: &Reservation, charge_id: &ChargeId) -> SagaEnd {
        tracing::warn!(order_id = %self.id(), "completion refused; refunding");
        self.note(Change {
            step: Some((StepName::Complete, StepStatus::Refused)),
            ..Change::default()
        })
        .await;
        let call = self
            .saga
            .payment
            .refund(self.id(), charge_id)
            .instrument(step_span(StepName::Refund, self.id(), true))
            .await;
        let refund_id = call
            .answer()
            .map(|core::RefundAnswer::Refunded { refund_id }| refund_id.clone());
        let decision = core::after_refund(call);
        if matches!(decision, Decision::End(_)) {
            shared::metrics::event("compensation", "refund");
        }
        let fields = refund_id.map(|id| vec![("refundId", id)]).unwrap_or_default();
        self.carry_out(decision, Some(reservation), Some(charge_id), fields)
            .await
    }

    /// Carries out a decision that does not go on: an ending (with `fields` recorded beside
    /// it), or a wait.
    async fn carry_out(
        &self,
        decision: Decision,
        reservation: Option<&Reservation>,
        charge_id: Option<&ChargeId>,
        fields: Vec<(&'static str, String)>,
    ) -> SagaEnd {
        match decision {
            Decision::End(ending) => self.end(ending, reservation, charge_id, fields).await,
            Decision::Wait(step) => self.wait(step).await,
            // Proceed, Refund and Await are carried out where they are decided.
            Decision::Proceed | Decision::Refund | Decision::Await => SagaEnd::pending(self.id()),
        }
    }

    /// Ends the order: releases first when the ending says so, then records the end, its
    /// answer and its key's settling in one step.
    async fn end(
        &self,
        ending: Ending,
        reservation: Option<&Reservation>,
        charge_id: Option<&ChargeId>,
        mut fields: Vec<(&'static str, String)>,
    ) -> SagaEnd {
        if let (true, Some(r)) = (ending.release, reservation) {
            fields.extend(self.release(&r.reservation_id).await);
        }
        let resp = self.answer(ending.answer, reservation, charge_id);
        let store = core::key_fate(resp.status) == KeyFate::Store;
        let change = Change {
            step: Some(ending.step),
            status: Some(ending.status),
            fields,
            response: Some(&resp),
            settle: Some(Settle {
                key: self.key,
                store,
                idempotency: &self.saga.idempotency,
            }),
            ..Change::default()
        };
        match self.note(change).await {
            Applied::Yes => SagaEnd::Settled(resp),
            _ => self.settled_elsewhere().await,
        }
    }

    /// The response an ending answers.
    fn answer(
        &self,
        answer: Answer,
        reservation: Option<&Reservation>,
        charge_id: Option<&ChargeId>,
    ) -> StoredResponse {
        let o = self.order;
        let order_id = o.order_id.to_string();
        let err = match answer {
            Answer::Completed => {
                let (Some(r), Some(c)) = (reservation, charge_id) else {
                    return processing_response(self.id());
                };
                let body = CheckoutCompleted {
                    order_id,
                    status: OrderStatus::Completed.as_str().into(),
                    item_id: o.item_id,
                    quantity: o.quantity,
                    amount: r.total_fee,
                    currency: r.currency.clone(),
                    reservation_id: r.reservation_id.to_string(),
                    charge_id: c.to_string(),
                };
                return StoredResponse::json(StatusCode::OK, &body);
            }
            Answer::ItemNotFound => OrderError::ItemNotFound {
                order_id,
                item_id: o.item_id,
            },
            Answer::OutOfStock => OrderError::OutOfStock {
                order_id,
                item_id: o.item_id,
                quantity: o.quantity,
            },
            Answer::Declined { decline_code } => OrderError::PaymentDeclined { order_id, decline_code },
            Answer::MethodRefused { detail } => OrderError::PaymentMethodRefused { order_id, detail },
            Answer::StockUnavailable => OrderError::DependencyUnavailable {
                order_id,
                detail: "the stock service is unavailable; nothing was charged".into(),
            },
            Answer::PaymentUnavailable => OrderError::DependencyUnavailable {
                order_id,
                detail: "the payment service is unavailable; nothing was charged and the reservation was released"
                    .into(),
            },
            Answer::PixExpired => OrderError::PaymentDeclined {
                order_id,
                decline_code: "pix_expired".into(),
            },
            Answer::ReservationLapsed => OrderError::DependencyUnavailable {
                order_id,
                detail: "the reservation lapsed before it could be completed; the charge was refunded".into(),
            },
        };
        StoredResponse::problem(&err.problem())
    }

    /// Releases the reservation, returning the fields to record with the order's end. A
    /// release that cannot get through is owed (`releaseOwed`): the order's answer stands, and
    /// recovery sends the same release again until stock hears it ([`Saga::release_owed`]).
    async fn release(&self, rid: &ReservationId) -> Vec<(&'static str, String)> {
        let (status, owed) = send_release(&self.saga.stock, self.id(), rid).await;
        shared::metrics::event("compensation", "release");
        self.note(Change {
            step: Some((StepName::Release, status)),
            ..Change::default()
        })
        .await;
        if owed {
            vec![("releaseOwed", rid.to_string())]
        } else {
            vec![]
        }
    }

    async fn wait(&self, step: StepName) -> SagaEnd {
        tracing::warn!(order_id = %self.id(), step = step.as_str(), "outcome unknown; order stays processing");
        self.note(Change {
            step: Some((step, StepStatus::Unknown)),
            ..Change::default()
        })
        .await;
        SagaEnd::pending(self.id())
    }

    /// The order's end was recorded by another runner (this one lost its lease): answer what
    /// that runner recorded, or 202 while it is still at work. Never a different outcome.
    async fn settled_elsewhere(&self) -> SagaEnd {
        tracing::warn!(order_id = %self.id(), "another runner owns this order now; deferring to its outcome");
        match self.saga.store.final_response(self.id()).await {
            Ok(Some(resp)) => SagaEnd::recorded(resp),
            _ => SagaEnd::pending(self.id()),
        }
    }

    /// Records a step that goes on; `Err` when it was not recorded (the saga then stops).
    async fn record(&self, change: Change<'_>) -> Result<(), SagaEnd> {
        match self.note(change).await {
            Applied::Yes => Ok(()),
            _ => Err(self.settled_elsewhere().await),
        }
    }

    /// Records a change, with the steps taken since the last write ahead of it. When Redis
    /// cannot be reached its fate is unknown: the caller must not give a definitive answer on
    /// it, and stops with 202 (recovery finishes later).
    async fn note(&self, change: Change<'_>) -> Applied {
        let unwritten = self.take_unwritten();
        let applied = match self
            .saga
            .store
            .update(self.id(), self.owner, unwritten.onto(change))
            .await
        {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(order_id = %self.id(), error = %e, "could not record a saga step");
                Applied::Unknown
            }
        };
        // Not written: the next write carries it (an end after a failed release's note).
        if applied != Applied::Yes {
            self.keep_unwritten(unwritten);
        }
        applied
    }

    /// A step succeeded and the saga goes on: it is recorded with the next write, `learnt`
    /// (what the step made) with it.
    fn went_on(&self, step: StepName, learnt: impl FnOnce(&mut Unwritten)) {
        let at = shared::time::now_rfc3339();
        let mut unwritten = self.unwritten.lock().unwrap_or_else(PoisonError::into_inner);
        unwritten.steps.push(step_text(step, StepStatus::Succeeded, &at));
        learnt(&mut unwritten);
    }

    fn take_unwritten(&self) -> Unwritten {
        std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn keep_unwritten(&self, unwritten: Unwritten) {
        *self.unwritten.lock().unwrap_or_else(PoisonError::into_inner) = unwritten;
    }
}
