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
    use std::collections::BTreeSet;

    use shared::config::COMMON_ENV;

    use super::*;

    #[test]
    fn defaults_parse_and_every_listed_variable_is_read() {
        let (settings, read) = config::with_defaults_only(Settings::from_env);
        let settings = settings.expect("every default parses");
        assert_eq!(settings.common.port, 8082);
        assert_eq!(settings.gateway, Gateway::Simulator);
        let read: BTreeSet<_> = read.into_iter().collect();
        let listed: BTreeSet<_> = COMMON_ENV.iter().chain(ENV).map(|v| v.name).collect();
        assert_eq!(read, listed);
    }
}
