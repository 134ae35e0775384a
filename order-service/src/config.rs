//! Order settings, read once at start-up.

use std::time::Duration;

use shared::config::{self, CommonSettings, ConfigError, EnvVar};
use shared::http_client::RetrySettings;

pub const PORT: EnvVar = EnvVar {
    name: "ORDER_PORT",
    default: "8081",
    help: "Port of the order service.",
};

pub const ENV: &[EnvVar] = &[
    PORT,
    EnvVar {
        name: "STOCK_URL",
        default: "http://127.0.0.1:8083",
        help: "Base URL of the stock service, called directly (not through nginx).",
    },
    EnvVar {
        name: "PAYMENT_URL",
        default: "http://127.0.0.1:8082",
        help: "Base URL of the payment service, called directly.",
    },
    EnvVar {
        name: "CHECKOUT_DEADLINE",
        default: "10s",
        help: "A checkout still running after this answers 202 processing; the saga goes on.",
    },
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub stock_url: String,
    pub payment_url: String,
    pub checkout_deadline: Duration,
    pub retry: RetrySettings,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = CommonSettings::from_env("order-service", &PORT)?;
        let checkout_deadline = config::duration("CHECKOUT_DEADLINE", "10s")?;
        Ok(Self {
            common,
            stock_url: config::var("STOCK_URL", "http://127.0.0.1:8083"),
            payment_url: config::var("PAYMENT_URL", "http://127.0.0.1:8082"),
            checkout_deadline,
            retry: RetrySettings::from_env()?,
        })
    }
}
