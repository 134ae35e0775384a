//! The failover rule, as pure functions: which provider a charge goes to next, given how its
//! last attempt went. The rule for money: a charge moves on only when the provider it was at
//! certainly did not take it; otherwise it stays there until that provider answers.

use super::client::Sent;

/// What a charge does after one attempt at a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The provider answered (charged or declined): record it.
    Record,
    /// The provider certainly did not take it: try the next provider of the route.
    TryNext,
    /// It may have been taken: stay with this provider (the charge is pinned to it), answer
    /// that the outcome is unknown, and resolve it there on the next try with the same key.
    Wait,
}

/// `sticky`: the charge was pinned to this provider by an earlier request with the same key
/// (whose lease ran out), which may have reached it. Then only the provider's own answer can
/// say it holds nothing; a refused connection or an open breaker now says nothing about what
/// the earlier request did.
pub fn after_attempt<T>(sent: &Sent<T>, sticky: bool) -> Move {
    match sent {
        Sent::Answered(_) => Move::Record,
        Sent::NotProcessed { by_answer: true } => Move::TryNext,
        Sent::NotProcessed { by_answer: false } if !sticky => Move::TryNext,
        Sent::NotProcessed { by_answer: false } | Sent::Unknown(_) => Move::Wait,
    }
}

/// The first provider of `route` after `after` (from the start when `None`) that `usable`
/// accepts: switched on and its breaker not open.
pub fn next_usable<'a>(route: &'a [String], after: Option<&str>, usable: impl Fn(&str) -> bool) -> Option<&'a str> {
    let start = match after {
        Some(name) => route.iter().position(|n| n == name).map_or(route.len(), |i| i + 1),
        None => 0,
    };
    route[start..].iter().map(String::as_str).find(|n| usable(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown() -> Sent<()> {
        Sent::Unknown("timeout".into())
    }

    #[test]
    fn an_answer_is_recorded_wherever_it_comes_from() {
        assert_eq!(after_attempt(&Sent::Answered(()), false), Move::Record);
        assert_eq!(after_attempt(&Sent::Answered(()), true), Move::Record);
    }

    #[test]
    fn a_refused_connection_or_open_breaker_moves_a_fresh_charge_on() {
        assert_eq!(
            after_attempt(&Sent::<()>::NotProcessed { by_answer: false }, false),
            Move::TryNext
        );
    }

    #[test]
    fn a_charge_an_earlier_request_may_have_sent_waits_for_its_providers_own_answer() {
        assert_eq!(
            after_attempt(&Sent::<()>::NotProcessed { by_answer: false }, true),
            Move::Wait
        );
        assert_eq!(
            after_attempt(&Sent::<()>::NotProcessed { by_answer: true }, true),
            Move::TryNext
        );
    }

    #[test]
    fn a_timeout_or_lost_answer_never_moves_the_charge_elsewhere() {
        assert_eq!(after_attempt(&unknown(), false), Move::Wait);
        assert_eq!(after_attempt(&unknown(), true), Move::Wait);
    }

    #[test]
    fn the_next_provider_is_the_first_usable_one_after_the_last_tried() {
        let route: Vec<String> = ["card-a", "card-b", "card-c"].map(String::from).to_vec();
        assert_eq!(next_usable(&route, None, |_| true), Some("card-a"));
        assert_eq!(next_usable(&route, None, |n| n != "card-a"), Some("card-b"));
        assert_eq!(next_usable(&route, Some("card-a"), |n| n != "card-b"), Some("card-c"));
        assert_eq!(next_usable(&route, Some("card-c"), |_| true), None);
        assert_eq!(next_usable(&route, Some("unknown"), |_| true), None);
    }
}
