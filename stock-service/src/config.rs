//! Stock settings, read once at start-up.

use std::time::Duration;

use shared::config::{self, CommonSettings, ConfigError, EnvVar};

pub const PORT: EnvVar = EnvVar {
    name: "STOCK_PORT",
    default: "8083",
    help: "Port of the stock service.",
};

pub const ENV: &[EnvVar] = &[
    PORT,
    EnvVar {
        name: "RESERVATION_TTL",
        default: "10m",
        help: "A reservation neither completed nor released expires after this; its units return to available. Must outlive the longest checkout.",
    },
    EnvVar {
        name: "RESERVATION_SWEEP_INTERVAL",
        default: "1s",
        help: "How often expired reservations are swept back to available.",
    },
    EnvVar {
        name: "SEED_DEMO",
        default: "true",
        help: "Seed the demo catalogue (items 1–10) when no item exists.",
    },
    EnvVar {
        name: "SEED_UNITS",
        default: "1000",
        help: "Units of each demo item.",
    },
];

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
            reservation_ttl: config::duration("RESERVATION_TTL", "10m")?,
            sweep_interval: config::duration("RESERVATION_SWEEP_INTERVAL", "1s")?.max(Duration::from_millis(50)),
            seed_demo: config::boolean("SEED_DEMO", "true")?,
            seed_units: config::parse("SEED_UNITS", "1000")?,
        })
    }
}
