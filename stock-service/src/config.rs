//! Stock settings, read once at start-up.

use std::time::Duration;

use shared::config::{self, CommonSettings, ConfigError, EnvVar};

pub const PORT: EnvVar = EnvVar {
    name: "STOCK_PORT",
    default: "8083",
    help: "Port of the stock service.",
};

pub const RESERVATION_TTL: EnvVar = EnvVar {
    name: "RESERVATION_TTL",
    default: "10m",
    help: "A reservation neither completed nor released expires after this; its units return to available. Must outlive the longest checkout; at least 1s.",
};

pub const RESERVATION_SWEEP_INTERVAL: EnvVar = EnvVar {
    name: "RESERVATION_SWEEP_INTERVAL",
    default: "1s",
    help: "How often expired reservations are swept back to available; at least 50ms.",
};

pub const SEED_DEMO: EnvVar = EnvVar {
    name: "SEED_DEMO",
    default: "true",
    help: "Seed the demo catalogue (items 1–10) when no item exists.",
};

pub const SEED_UNITS: EnvVar = EnvVar {
    name: "SEED_UNITS",
    default: "1000",
    help: "Units of each demo item.",
};

pub const ENV: &[EnvVar] = &[PORT, RESERVATION_TTL, RESERVATION_SWEEP_INTERVAL, SEED_DEMO, SEED_UNITS];

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub reservation_ttl: Duration,
    pub sweep_interval: Duration,
    pub seed_demo: bool,
    pub seed_units: u64,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonSettings::from_env("stock-service", &PORT)?,
            reservation_ttl: config::duration_at_least(&RESERVATION_TTL, Duration::from_secs(1))?,
            // Shorter sweeps would only keep Redis busy.
            sweep_interval: config::duration_at_least(&RESERVATION_SWEEP_INTERVAL, Duration::from_millis(50))?,
            seed_demo: config::boolean(&SEED_DEMO)?,
            seed_units: config::parse(&SEED_UNITS)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use shared::config::COMMON_ENV;
    use shared::testing::env::{Refusal, assert_refused, assert_taken, settings_from_defaults};

    use super::*;

    #[test]
    fn defaults_parse_and_every_listed_variable_is_read() {
        let settings = settings_from_defaults(Settings::from_env, &[COMMON_ENV, ENV]);
        assert_eq!(settings.common.port, 8083);
        assert_eq!(settings.reservation_ttl, Duration::from_secs(600));
        assert!(settings.seed_demo);
    }

    #[test]
    fn reservation_timings_below_their_bounds_are_refused() {
        let cases: &[Refusal] = &[
            (
                &[(RESERVATION_TTL.name, "0")],
                RESERVATION_TTL.name,
                "must be at least 1s",
            ),
            (
                &[(RESERVATION_SWEEP_INTERVAL.name, "10ms")],
                RESERVATION_SWEEP_INTERVAL.name,
                "must be at least 50ms",
            ),
        ];
        assert_refused(cases, Settings::from_env);
        assert_taken(
            &[(RESERVATION_TTL.name, "1s"), (RESERVATION_SWEEP_INTERVAL.name, "50ms")],
            Settings::from_env,
        );
    }
}
