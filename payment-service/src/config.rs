//! Payment settings, read once at start-up.

use shared::config::{self, CommonSettings, ConfigError, EnvVar};

use crate::gateway::Gateway;

pub const PORT: EnvVar = EnvVar {
    name: "PAYMENT_PORT",
    default: "8082",
    help: "Port of the payment service.",
};

pub const ENV: &[EnvVar] = &[
    PORT,
    EnvVar {
        name: "GATEWAY",
        default: "simulator",
        help: "Payment gateway. `simulator` (Stripe's test payment methods) is the only one so far.",
    },
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub gateway: Gateway,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonSettings::from_env("payment-service", &PORT)?,
            gateway: config::parse("GATEWAY", "simulator")?,
        })
    }
}
