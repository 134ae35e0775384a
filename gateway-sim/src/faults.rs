//! Fault settings, changed at run time through `PUT /_sim/faults`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Faults {
    /// Share of new charges and refunds answered 503 "not processed", without processing.
    pub error_rate: f64,
    /// Added before every charge and refund.
    pub latency_ms: u64,
    /// Share of processed charges and refunds whose answer is dropped (connection closed).
    pub drop_response_rate: f64,
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("errorRate", self.error_rate),
            ("dropResponseRate", self.drop_response_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0.0 and 1.0"));
            }
        }
        if self.latency_ms > 600_000 {
            return Err("latencyMs must be at most 600000".into());
        }
        Ok(())
    }
}

/// True with probability `rate`.
pub fn roll(rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let draw = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
    draw < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_to_one_are_refused_and_the_extremes_always_or_never_fire() {
        let bad = Faults {
            error_rate: 1.5,
            ..Faults::default()
        };
        assert!(bad.validate().is_err());
        assert!(Faults::default().validate().is_ok());
        assert!((0..100).all(|_| roll(1.0)));
        assert!((0..100).all(|_| !roll(0.0)));
    }
}
