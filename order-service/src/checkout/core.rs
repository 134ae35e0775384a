//! The checkout's decisions, as pure functions over plain types: given what is recorded and
//! what a step's call answered, the next thing to do. No Redis and no HTTP here; the saga
//! ([`super::saga`]) makes the calls, asks, and carries the decision out. Each row of the
//! failure table (docs/failures.md) is a case in the tests below.
//!
//! The rule for money: never report failure while money may have moved. A call that may have
//! reached its service but whose answer was lost, or one that proves nothing because an earlier
//! runner may have sent it, makes the order wait (202, key locked, recovery tries again) instead
//! of ending it. The same holds for stock: a 503 says everything was undone.

use super::store::Reservation;
use crate::ids::{ChargeId, OrderStatus, StepName, StepStatus};

/// How a call went, as far as the decision cares: answered, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Call<T> {
    Answered(T),
    /// Every attempt was refused a connection: the request never reached the service.
    NotSent,
    /// It may have reached the service, and no answer came back (a timeout, a reset, a 5xx).
    Lost,
    /// An answer no contract allows: a bug, not an outage.
    Unexpected,
}

impl<T> Call<T> {
    /// The answer, when there is one.
    pub fn answer(&self) -> Option<&T> {
        match self {
            Self::Answered(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveAnswer {
    Reserved(Reservation),
    ItemNotFound,
    OutOfStock,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeAnswer {
    Charged(ChargeId),
    Declined {
        decline_code: String,
    },
    /// Payment refused the request itself (an unknown payment method): a 400.
    Refused {
        detail: String,
    },
    /// A Pix: taken, waiting for its payer, who pays `code`.
    Pending {
        charge_id: ChargeId,
        code: String,
    },
}

/// Where a Pix charge stands at payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixStatus {
    /// Paid (and perhaps refunded since): the money came in.
    Paid,
    Pending,
    /// Canceled: its order expired before it was paid.
    Canceled,
    /// The provider failed it.
    Failed,
}

impl PixStatus {
    /// From the charge's `status` as payment shows it.
    pub fn of(status: &str) -> Option<Self> {
        match status {
            "succeeded" | "partially_refunded" | "refunded" => Some(Self::Paid),
            "pending" => Some(Self::Pending),
            "canceled" => Some(Self::Canceled),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Stock's answer to a release or a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionAnswer {
    Done,
    /// A definitive refusal: the reservation completed, released, expired or unknown.
    Refused,
}

/// Payment's answer to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAnswer {
    Refunded { refund_id: String },
}

/// What is recorded of an order, as far as choosing its next step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    pub reservation: bool,
    pub charge: bool,
    /// An earlier runner worked on this order and may have sent calls nobody recorded.
    pub resumed: bool,
    /// Its charge is a Pix waiting for its payer.
    pub awaiting: bool,
}

/// The step a run takes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// `maybe_sent`: an earlier runner may have sent this reserve already.
    Reserve {
        maybe_sent: bool,
    },
    /// `maybe_sent`: an earlier runner recorded the reservation and went on to charge, and may
    /// have been heard before it died. Payment is then asked for a standing charge first.
    Charge {
        maybe_sent: bool,
    },
    Complete,
    /// The charge is a pending Pix: ask payment how it stands (canceling it once expired).
    Payment,
}

/// A recorded step is never re-decided: the run goes on from the last one.
pub fn next_step(recorded: Recorded) -> Next {
    if recorded.awaiting && recorded.charge {
        return Next::Payment;
    }
    match (recorded.reservation, recorded.charge) {
        (false, _) => Next::Reserve {
            maybe_sent: recorded.resumed,
        },
        (true, false) => Next::Charge {
            maybe_sent: recorded.resumed,
        },
        (true, true) => Next::Complete,
    }
}

/// What a checkout's final answer says, before it is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Completed,
    ItemNotFound,
    OutOfStock,
    Declined {
        decline_code: String,
    },
    MethodRefused {
        detail: String,
    },
    StockUnavailable,
    PaymentUnavailable,
    /// The reservation lapsed before completion, and the charge was refunded.
    ReservationLapsed,
    /// The Pix was not paid before it expired; the units were released.
    PixExpired,
}

/// How an order ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub status: OrderStatus,
    pub step: (StepName, StepStatus),
    /// Release the reservation first (and record how that went).
    pub release: bool,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record the step as succeeded and go on.
    Proceed,
    /// The outcome is unknown: record the step so, answer 202, keep the key locked; the same
    /// idempotent call is sent again later (recovery) and resolves it.
    Wait(StepName),
    End(Ending),
    /// Stock refused to complete a charged order: the customer paid for units we no longer
    /// hold, so the money goes back.
    Refund,
    /// The charge is a Pix not paid yet: the order waits for its payer (202
    /// `awaiting_payment`, replayed under its key) until it is paid or expires.
    Await,
}

fn end(status: OrderStatus, step: (StepName, StepStatus), release: bool, answer: Answer) -> Decision {
    Decision::End(Ending {
        status,
        step,
        release,
        answer,
    })
}

/// After a reserve. `maybe_sent`: see [`Next::Reserve`]; failing to reach stock then proves
/// nothing about the units.
pub fn after_reserve(call: Call<ReserveAnswer>, maybe_sent: bool) -> Decision {
    use StepName::Reserve;
    match call {
        Call::Answered(ReserveAnswer::Reserved(_)) => Decision::Proceed,
        Call::Answered(ReserveAnswer::ItemNotFound) => end(
            OrderStatus::Failed,
            (Reserve, StepStatus::ItemNotFound),
            false,
            Answer::ItemNotFound,
        ),
        Call::Answered(ReserveAnswer::OutOfStock) => end(
            OrderStatus::Failed,
            (Reserve, StepStatus::OutOfStock),
            false,
            Answer::OutOfStock,
        ),
        // Stock may hold a reservation for this order: ending now would keep its units from
        // sale until RESERVATION_TTL while the client hears "everything undone".
        Call::Lost => Decision::Wait(Reserve),
        Call::NotSent if maybe_sent => Decision::Wait(Reserve),
        // Nothing reached stock, or it answered what no contract allows (a reservation it may
        // have made returns when RESERVATION_TTL runs out): no money moved, retry at will.
        Call::NotSent | Call::Unexpected => end(
            OrderStatus::Failed,
            (Reserve, StepStatus::Unavailable),
            false,
            Answer::StockUnavailable,
        ),
    }
}

/// After a charge. `maybe_sent`: see [`Next::Charge`]; a refused connection then proves
/// nothing about the money, and the order waits.
pub fn after_charge(call: Call<ChargeAnswer>, maybe_sent: bool) -> Decision {
    use StepName::Charge;
    match call {
        Call::Answered(ChargeAnswer::Charged(_)) => Decision::Proceed,
        Call::Answered(ChargeAnswer::Declined { decline_code }) => end(
            OrderStatus::Compensated,
            (Charge, StepStatus::Declined),
            true,
            Answer::Declined { decline_code },
        ),
        Call::Answered(ChargeAnswer::Pending { .. }) => Decision::Await,
        Call::Answered(ChargeAnswer::Refused { detail }) => end(
            OrderStatus::Compensated,
            (Charge, StepStatus::Refused),
            true,
            Answer::MethodRefused { detail },
        ),
        Call::NotSent if !maybe_sent => end(
            OrderStatus::Compensated,
            (Charge, StepStatus::Unavailable),
            true,
            Answer::PaymentUnavailable,
        ),
        Call::NotSent | Call::Lost | Call::Unexpected => Decision::Wait(Charge),
    }
}

/// Whether a Pix awaited until `expires_ms` has expired at `now_ms`: then payment is asked to
/// cancel it (which answers a charge paid first as paid) rather than how it stands.
pub fn pix_expired(now_ms: u64, expires_ms: u64) -> bool {
    now_ms >= expires_ms
}

/// After asking payment how an awaited Pix stands (`expired`: by canceling it). Paid goes on to
/// complete; canceled ends the order failed with its units released; an unreachable payment
/// leaves the order waiting, never ended: money may have come in.
pub fn after_pix(call: Call<PixStatus>, expired: bool) -> Decision {
    use StepName::Charge;
    match call {
        Call::Answered(PixStatus::Paid) => Decision::Proceed,
        Call::Answered(PixStatus::Pending) if !expired => Decision::Await,
        Call::Answered(PixStatus::Canceled) => end(
            OrderStatus::Failed,
            (Charge, StepStatus::Expired),
            true,
            Answer::PixExpired,
        ),
        Call::Answered(PixStatus::Failed) => end(
            OrderStatus::Compensated,
            (Charge, StepStatus::Declined),
            true,
            Answer::Declined {
                decline_code: "pix_failed".into(),
            },
        ),
        Call::Answered(PixStatus::Pending) | Call::NotSent | Call::Lost | Call::Unexpected => Decision::Wait(Charge),
    }
}

/// After asking payment for a charge an earlier runner made: `Ok(true)` found one (go on with
/// it), `Ok(false)` none (send the charge), `Err` payment could not say (wait).
pub fn after_charge_lookup(found: Result<bool, ()>) -> Option<Decision> {
    match found {
        Ok(true) => Some(Decision::Proceed),
        Ok(false) => None,
        Err(()) => Some(Decision::Wait(StepName::Charge)),
    }
}

/// After completing the reservation of a charged order: once charged, the order only goes
/// forward, refunding only on stock's definitive refusal.
pub fn after_complete(call: Call<TransitionAnswer>) -> Decision {
    match call {
        Call::Answered(TransitionAnswer::Done) => end(
            OrderStatus::Completed,
            (StepName::Complete, StepStatus::Succeeded),
            false,
            Answer::Completed,
        ),
        Call::Answered(TransitionAnswer::Refused) => Decision::Refund,
        Call::NotSent | Call::Lost | Call::Unexpected => Decision::Wait(StepName::Complete),
    }
}

/// After refunding a charge whose reservation lapsed.
pub fn after_refund(call: Call<RefundAnswer>) -> Decision {
    match call {
        Call::Answered(RefundAnswer::Refunded { .. }) => end(
            OrderStatus::Compensated,
            (StepName::Refund, StepStatus::Succeeded),
            true,
            Answer::ReservationLapsed,
        ),
        Call::NotSent | Call::Lost | Call::Unexpected => Decision::Wait(StepName::Refund),
    }
}

/// How a release went, as the step records it; `owed` when stock never heard it, so recovery
/// sends it again rather than leave the units held until the reservation expires. A refusal
/// (completed, expired, unknown) or an answer no contract allows is final: another try would
/// not change it.
pub fn after_release(call: Call<TransitionAnswer>) -> (StepStatus, bool) {
    match call {
        Call::Answered(TransitionAnswer::Done) => (StepStatus::Succeeded, false),
        Call::Answered(TransitionAnswer::Refused) | Call::Unexpected => (StepStatus::Refused, false),
        Call::NotSent | Call::Lost => (StepStatus::Unavailable, true),
    }
}

/// What becomes of the checkout's Idempotency-Key with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFate {
    /// Definitive: stored and replayed.
    Store,
    /// Failed with everything undone, or refused as invalid: the key is freed for a retry.
    Free,
    /// Unresolved: the key stays locked until its lease runs out.
    Hold,
}

/// What an answer leaves under the key, by the contract's one rule
/// ([`shared::idempotency::is_final`]): 202 holds it while the order goes on.
pub fn key_fate(status: u16) -> KeyFate {
    if shared::idempotency::is_final(status) {
        KeyFate::Store
    } else if status == 202 {
        KeyFate::Hold
    } else {
        KeyFate::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(d: Decision) -> Ending {
        match d {
            Decision::End(e) => e,
            other => panic!("expected an ending, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_order_reserves_first_and_a_resumed_one_goes_on_from_its_last_recorded_step() {
        let fresh = Recorded::default();
        let reserved = Recorded {
            reservation: true,
            resumed: true,
            ..fresh
        };
        let charged = Recorded {
            charge: true,
            ..reserved
        };
        assert_eq!(next_step(fresh), Next::Reserve { maybe_sent: false });
        assert_eq!(
            next_step(Recorded { resumed: true, ..fresh }),
            Next::Reserve { maybe_sent: true }
        );
        assert_eq!(next_step(reserved), Next::Charge { maybe_sent: true });
        assert_eq!(next_step(charged), Next::Complete);
    }

    #[test]
    fn stock_unreachable_before_reserving_fails_the_order_with_503_and_frees_the_key() {
        let e = ending(after_reserve(Call::NotSent, false));
        assert_eq!(e.status, OrderStatus::Failed);
        assert_eq!(e.step, (StepName::Reserve, StepStatus::Unavailable));
        assert_eq!(e.answer, Answer::StockUnavailable);
        assert!(!e.release);
    }

    #[test]
    fn a_reserve_whose_answer_was_lost_waits_instead_of_failing() {
        assert_eq!(after_reserve(Call::Lost, false), Decision::Wait(StepName::Reserve));
    }

    #[test]
    fn stock_unreachable_when_a_resumed_order_reserves_waits_for_the_dead_runners_reserve() {
        assert_eq!(after_reserve(Call::NotSent, true), Decision::Wait(StepName::Reserve));
    }

    #[test]
    fn unknown_items_and_missing_stock_fail_the_order_without_a_release() {
        let missing = ending(after_reserve(Call::Answered(ReserveAnswer::ItemNotFound), false));
        let short = ending(after_reserve(Call::Answered(ReserveAnswer::OutOfStock), true));
        assert_eq!((missing.answer, missing.release), (Answer::ItemNotFound, false));
        assert_eq!((short.answer, short.release), (Answer::OutOfStock, false));
        assert_eq!(short.step, (StepName::Reserve, StepStatus::OutOfStock));
    }

    #[test]
    fn a_reserve_answered_against_the_contract_ends_as_stock_unavailable() {
        let e = ending(after_reserve(Call::Unexpected, true));
        assert_eq!(e.answer, Answer::StockUnavailable);
    }

    #[test]
    fn a_declined_payment_releases_the_reservation_and_answers_402() {
        let e = ending(after_charge(
            Call::Answered(ChargeAnswer::Declined {
                decline_code: "card_declined".into(),
            }),
            false,
        ));
        assert_eq!(e.status, OrderStatus::Compensated);
        assert!(e.release);
        assert_eq!(
            e.answer,
            Answer::Declined {
                decline_code: "card_declined".into()
            }
        );
        assert_eq!(key_fate(402), KeyFate::Store);
    }

    #[test]
    fn a_refused_payment_method_releases_and_frees_the_key_as_a_validation_error() {
        let e = ending(after_charge(
            Call::Answered(ChargeAnswer::Refused { detail: "no".into() }),
            false,
        ));
        assert!(e.release);
        assert_eq!(e.step, (StepName::Charge, StepStatus::Refused));
        assert_eq!(key_fate(400), KeyFate::Free);
    }

    #[test]
    fn a_charge_that_never_reached_payment_releases_and_answers_503() {
        let e = ending(after_charge(Call::NotSent, false));
        assert_eq!(e.answer, Answer::PaymentUnavailable);
        assert!(e.release);
        assert_eq!(key_fate(503), KeyFate::Free);
    }

    #[test]
    fn a_charge_that_may_have_been_sent_by_a_dead_runner_waits_when_payment_is_unreachable() {
        assert_eq!(after_charge(Call::NotSent, true), Decision::Wait(StepName::Charge));
    }

    #[test]
    fn a_charge_whose_answer_was_lost_or_garbled_waits_and_never_fails_the_order() {
        for maybe_sent in [false, true] {
            assert_eq!(after_charge(Call::Lost, maybe_sent), Decision::Wait(StepName::Charge));
            assert_eq!(
                after_charge(Call::Unexpected, maybe_sent),
                Decision::Wait(StepName::Charge)
            );
        }
        assert_eq!(key_fate(202), KeyFate::Hold);
    }

    #[test]
    fn a_resumed_order_takes_the_charge_payment_already_holds_and_waits_when_payment_cannot_say() {
        assert_eq!(after_charge_lookup(Ok(true)), Some(Decision::Proceed));
        assert_eq!(after_charge_lookup(Ok(false)), None);
        assert_eq!(after_charge_lookup(Err(())), Some(Decision::Wait(StepName::Charge)));
    }

    #[test]
    fn a_pending_pix_makes_the_order_await_and_a_recorded_one_asks_payment_next() {
        let pending = ChargeAnswer::Pending {
            charge_id: ChargeId::from_stored("ch_1"),
            code: "000201".into(),
        };
        assert_eq!(after_charge(Call::Answered(pending), false), Decision::Await);
        let awaiting = Recorded {
            reservation: true,
            charge: true,
            resumed: true,
            awaiting: true,
        };
        assert_eq!(next_step(awaiting), Next::Payment);
        assert_eq!(
            next_step(Recorded {
                awaiting: false,
                ..awaiting
            }),
            Next::Complete
        );
    }

    #[test]
    fn a_paid_pix_completes_an_unpaid_one_waits_until_expiry_then_is_canceled_and_released() {
        assert!(!pix_expired(999, 1000) && pix_expired(1000, 1000));
        assert_eq!(after_pix(Call::Answered(PixStatus::Paid), false), Decision::Proceed);
        assert_eq!(
            after_pix(Call::Answered(PixStatus::Paid), true),
            Decision::Proceed,
            "paid at the last instant: the cancel answered paid, the order completes"
        );
        assert_eq!(after_pix(Call::Answered(PixStatus::Pending), false), Decision::Await);
        let expired = ending(after_pix(Call::Answered(PixStatus::Canceled), true));
        assert_eq!(expired.status, OrderStatus::Failed);
        assert_eq!(expired.step, (StepName::Charge, StepStatus::Expired));
        assert!(expired.release);
        assert_eq!(expired.answer, Answer::PixExpired);
        assert_eq!(key_fate(402), KeyFate::Store);
        let failed = ending(after_pix(Call::Answered(PixStatus::Failed), false));
        assert_eq!(failed.status, OrderStatus::Compensated);
        assert!(failed.release);
    }

    #[test]
    fn an_awaited_pix_payment_cannot_see_keeps_the_order_waiting_never_ending_it() {
        for expired in [false, true] {
            for call in [Call::NotSent, Call::Lost, Call::Unexpected] {
                assert_eq!(after_pix(call, expired), Decision::Wait(StepName::Charge));
            }
        }
        assert_eq!(
            after_pix(Call::Answered(PixStatus::Pending), true),
            Decision::Wait(StepName::Charge),
            "a cancel that left it pending is asked again"
        );
        assert_eq!(PixStatus::of("partially_refunded"), Some(PixStatus::Paid));
        assert_eq!(PixStatus::of("what"), None);
    }

    #[test]
    fn a_charged_order_completes_and_its_answer_is_stored() {
        let e = ending(after_complete(Call::Answered(TransitionAnswer::Done)));
        assert_eq!(e.status, OrderStatus::Completed);
        assert_eq!(e.answer, Answer::Completed);
        assert_eq!(key_fate(200), KeyFate::Store);
    }

    #[test]
    fn a_charged_order_only_goes_forward_while_stock_cannot_be_heard() {
        for call in [Call::NotSent, Call::Lost, Call::Unexpected] {
            assert_eq!(after_complete(call), Decision::Wait(StepName::Complete));
        }
    }

    #[test]
    fn a_lapsed_reservation_after_a_charge_is_refunded_released_and_answers_503() {
        assert_eq!(
            after_complete(Call::Answered(TransitionAnswer::Refused)),
            Decision::Refund
        );
        let e = ending(after_refund(Call::Answered(RefundAnswer::Refunded {
            refund_id: "re_1".into(),
        })));
        assert_eq!(e.status, OrderStatus::Compensated);
        assert!(e.release);
        assert_eq!(e.answer, Answer::ReservationLapsed);
        assert_eq!(e.step, (StepName::Refund, StepStatus::Succeeded));
    }

    #[test]
    fn a_refund_whose_outcome_is_unknown_waits_for_recovery_to_send_it_again() {
        for call in [Call::NotSent, Call::Lost, Call::Unexpected] {
            assert_eq!(after_refund(call), Decision::Wait(StepName::Refund));
        }
    }

    #[test]
    fn a_release_stock_cannot_hear_is_owed_and_a_refused_one_is_final() {
        assert_eq!(
            after_release(Call::Answered(TransitionAnswer::Done)),
            (StepStatus::Succeeded, false)
        );
        assert_eq!(
            after_release(Call::Answered(TransitionAnswer::Refused)),
            (StepStatus::Refused, false)
        );
        assert_eq!(after_release(Call::Unexpected), (StepStatus::Refused, false));
        assert_eq!(after_release(Call::NotSent), (StepStatus::Unavailable, true));
        assert_eq!(after_release(Call::Lost), (StepStatus::Unavailable, true));
    }

    #[test]
    fn business_refusals_are_stored_and_validation_errors_and_outages_free_the_key() {
        for stored in [200, 402, 404, 409] {
            assert_eq!(key_fate(stored), KeyFate::Store, "{stored}");
        }
        for freed in [400, 422, 500, 503, 504] {
            assert_eq!(key_fate(freed), KeyFate::Free, "{freed}");
        }
    }
}
