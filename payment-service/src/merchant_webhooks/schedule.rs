//! When a failed delivery is tried again, and when it is given up: a pure decision.

use std::str::FromStr;
use std::time::Duration;

/// The delays before each retry (`WEBHOOK_RETRY_SCHEDULE`): one first attempt, then one retry
/// per entry, then dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Vec<Duration>);

impl FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(|part| {
                shared::config::parse_duration(part)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("{part:?} is not a duration such as 500ms, 5s, 5m or 2h"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > 20 {
            return Err("at most 20 retries".into());
        }
        Ok(Self(delays))
    }
}

impl Schedule {
    /// Attempts a delivery gets before it is dead-lettered.
    pub fn attempts(&self) -> usize {
        self.0.len() + 1
    }
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    /// Try again after this long.
    RetryAfter(Duration),
    Dead,
}

/// After an attempt that `succeeded` or not, with `made_before` attempts before it: a 2xx ends
/// the delivery; a failure waits the schedule's next delay, stretched or shrunk by up to 20 %
/// (`jitter` in [0, 1): spreads the retries of many deliveries that failed together, as when
/// an endpoint comes back); past the schedule, or after a manual retry (one attempt), dead.
pub fn after_attempt(succeeded: bool, made_before: u32, manual: bool, schedule: &Schedule, jitter: f64) -> Next {
    if succeeded {
        return Next::Succeeded;
    }
    if manual {
        return Next::Dead;
    }
    match schedule.0.get(made_before as usize) {
        Some(delay) => Next::RetryAfter(delay.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))),
        None => Next::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(text: &str) -> Schedule {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_default_schedule_gives_seven_attempts_then_dead() {
        let s = schedule("5s,5m,30m,2h,5h,10h");
        assert_eq!(s.attempts(), 7);
        assert_eq!(
            after_attempt(false, 0, false, &s, 0.5),
            Next::RetryAfter(Duration::from_secs(5))
        );
        assert_eq!(
            after_attempt(false, 5, false, &s, 0.5),
            Next::RetryAfter(Duration::from_secs(36_000))
        );
        assert_eq!(after_attempt(false, 6, false, &s, 0.5), Next::Dead);
        assert_eq!(after_attempt(true, 6, false, &s, 0.5), Next::Succeeded);
    }

    #[test]
    fn jitter_stays_within_a_fifth_of_the_delay() {
        let s = schedule("10s");
        assert_eq!(
            after_attempt(false, 0, false, &s, 0.0),
            Next::RetryAfter(Duration::from_secs(8))
        );
        assert_eq!(
            after_attempt(false, 0, false, &s, 1.0),
            Next::RetryAfter(Duration::from_secs(12))
        );
        assert_eq!(
            after_attempt(false, 0, false, &s, 7.0),
            Next::RetryAfter(Duration::from_secs(12))
        );
    }

    #[test]
    fn a_failed_manual_retry_is_dead_again_and_a_successful_one_succeeds() {
        let s = schedule("1s,1s");
        assert_eq!(after_attempt(false, 0, true, &s, 0.5), Next::Dead);
        assert_eq!(after_attempt(true, 9, true, &s, 0.5), Next::Succeeded);
    }

    #[test]
    fn a_schedule_refuses_what_is_not_a_list_of_durations() {
        assert!("5s,soon".parse::<Schedule>().is_err());
        assert!("".parse::<Schedule>().is_err());
        assert!("0s".parse::<Schedule>().is_err());
        assert_eq!(schedule("200ms, 1s").attempts(), 3);
    }
}
