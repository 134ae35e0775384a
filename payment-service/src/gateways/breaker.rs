//! A circuit breaker per provider: closed → open after `failures` failures within `window`;
//! open → half-open after `cooldown`; half-open lets one trial request through at a time, whose
//! success closes the breaker and whose failure opens it again.
//!
//! Written here rather than taken from a crate: `failsafe` (the maintained one) lets every call
//! through while half-open and has no "N failures in a window" policy, and does not expose its
//! state for `/payment/gateways`; tower's layers wrap a `Service`, not the single reqwest call
//! made here. The machine is pure (the caller passes the time), so every transition is a unit
//! test below.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
    /// A trial that has not reported for this long is taken as lost (its request was
    /// cancelled), so another may start.
    pub trial_timeout: Duration,
}

/// Whether a request may go to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// Allowed as the half-open breaker's one trial: report its result with `trial: true`.
    Trial,
    Refused,
}

#[derive(Debug)]
pub struct Breaker {
    policy: Policy,
    state: State,
    failures: VecDeque<Instant>,
    open_until: Instant,
    trial_since: Option<Instant>,
}

impl Breaker {
    pub fn new(policy: Policy, now: Instant) -> Self {
        Self {
            policy,
            state: State::Closed,
            failures: VecDeque::new(),
            open_until: now,
            trial_since: None,
        }
    }

    /// The state as a reader sees it at `now` (an open breaker past its cool-down reads
    /// half-open: the next request will be its trial).
    pub fn state(&self, now: Instant) -> State {
        match self.state {
            State::Open if now >= self.open_until => State::HalfOpen,
            s => s,
        }
    }

    /// Asks to send one request. Returns the permit and, when asking moved the breaker, the
    /// state it moved to.
    pub fn permit(&mut self, now: Instant) -> (Permit, Option<State>) {
        match self.state {
            State::Closed => (Permit::Allowed, None),
            State::Open if now < self.open_until => (Permit::Refused, None),
            State::Open => {
                self.state = State::HalfOpen;
                self.trial_since = Some(now);
                (Permit::Trial, Some(State::HalfOpen))
            }
            State::HalfOpen => match self.trial_since {
                Some(since) if now.duration_since(since) < self.policy.trial_timeout => (Permit::Refused, None),
                _ => {
                    self.trial_since = Some(now);
                    (Permit::Trial, None)
                }
            },
        }
    }

    /// Reports how a permitted request went; returns the state the breaker moved to, if it
    /// moved. Results of requests let through before the breaker opened are ignored once it
    /// is open or half-open: only the trial decides then.
    pub fn report(&mut self, permit: Permit, ok: bool, now: Instant) -> Option<State> {
        match (self.state, permit) {
            (State::HalfOpen, Permit::Trial) => {
                self.trial_since = None;
                if ok {
                    self.failures.clear();
                    self.state = State::Closed;
                    Some(State::Closed)
                } else {
                    self.open(now)
                }
            }
            (State::Closed, _) if !ok => {
                self.failures.push_back(now);
                while let Some(&first) = self.failures.front() {
                    if now.duration_since(first) > self.policy.window {
                        self.failures.pop_front();
                    } else {
                        break;
                    }
                }
                if self.failures.len() >= self.policy.failures as usize {
                    self.open(now)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn open(&mut self, now: Instant) -> Option<State> {
        self.state = State::Open;
        self.open_until = now + self.policy.cooldown;
        self.failures.clear();
        Some(State::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        failures: 3,
        window: Duration::from_secs(10),
        cooldown: Duration::from_secs(5),
        trial_timeout: Duration::from_secs(2),
    };

    fn failing(b: &mut Breaker, now: Instant) -> Option<State> {
        let (permit, _) = b.permit(now);
        b.report(permit, false, now)
    }

    #[test]
    fn it_opens_after_the_configured_failures_within_the_window_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY, t0);
        assert_eq!(failing(&mut b, t0), None);
        assert_eq!(failing(&mut b, t0 + Duration::from_secs(5)), None);
        // The first failure has left the window: two in it, still closed.
        assert_eq!(failing(&mut b, t0 + Duration::from_secs(12)), None);
        assert_eq!(b.state(t0 + Duration::from_secs(12)), State::Closed);
        assert_eq!(failing(&mut b, t0 + Duration::from_secs(13)), Some(State::Open));
        assert_eq!(b.permit(t0 + Duration::from_secs(14)).0, Permit::Refused);
    }

    #[test]
    fn after_the_cooldown_one_trial_at_a_time_and_its_success_closes_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY, t0);
        for _ in 0..3 {
            failing(&mut b, t0);
        }
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.state(later), State::HalfOpen);
        assert_eq!(b.permit(later), (Permit::Trial, Some(State::HalfOpen)));
        assert_eq!(b.permit(later).0, Permit::Refused, "one trial at a time");
        // A request let through before the breaker opened does not decide.
        assert_eq!(b.report(Permit::Allowed, true, later), None);
        assert_eq!(b.report(Permit::Trial, true, later), Some(State::Closed));
        assert_eq!(b.permit(later).0, Permit::Allowed);
    }

    #[test]
    fn a_failed_trial_opens_it_for_another_cooldown_and_a_lost_trial_is_replaced() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY, t0);
        for _ in 0..3 {
            failing(&mut b, t0);
        }
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(failing(&mut b, t1), Some(State::Open));
        assert_eq!(b.permit(t1 + Duration::from_secs(4)).0, Permit::Refused);
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.permit(t2).0, Permit::Trial);
        // The trial never reports (its request was cancelled): after trial_timeout another goes.
        assert_eq!(b.permit(t2 + Duration::from_secs(1)).0, Permit::Refused);
        assert_eq!(b.permit(t2 + Duration::from_secs(3)).0, Permit::Trial);
    }
}
