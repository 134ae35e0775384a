//! Payment settings, read once at start-up.

use shared::config::{self, CommonSettings, ConfigError, EnvVar};

use crate::gateway::Gateway;

pub const PORT: EnvVar = EnvVar {
    name: "PAYMENT_PORT",
    default: "8082",
    help: "Port of the payment service.",
};

pub const GATEWAY: EnvVar = EnvVar {
    name: "GATEWAY",
    default: "simulator",
    help: "Payment gateway. `simulator` (Stripe's test payment methods) is the only one so far.",
};

pub const ENV: &[EnvVar] = &[PORT, GATEWAY];

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub gateway: Gateway,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonSettings::from_env("payment-service", &PORT)?,
            gateway: config::parse(&GATEWAY)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use shared::config::COMMON_ENV;
    use shared::testing::env::settings_from_defaults;

    use super::*;

    #[test]
    fn defaults_parse_and_every_listed_variable_is_read() {
        let settings = settings_from_defaults(Settings::from_env, &[COMMON_ENV, ENV]);
        assert_eq!(settings.common.port, 8082);
        assert_eq!(settings.gateway, Gateway::Simulator);
    }
}
