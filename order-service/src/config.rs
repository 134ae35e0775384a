//! Order settings, read once at start-up.

use std::time::Duration;

use actix_web::http::Method;
use shared::config::{self, CommonSettings, ConfigError, EnvVar};
use shared::http_client::RetrySettings;
use shared::ratelimit::{Policy, Route};

pub const PORT: EnvVar = EnvVar {
    name: "ORDER_PORT",
    default: "8081",
    help: "Port of the order service.",
};

pub const STOCK_URL: EnvVar = EnvVar {
    name: "STOCK_URL",
    default: "http://127.0.0.1:8083",
    help: "Base URL of the stock service, called directly (not through nginx).",
};

pub const PAYMENT_URL: EnvVar = EnvVar {
    name: "PAYMENT_URL",
    default: "http://127.0.0.1:8082",
    help: "Base URL of the payment service, called directly.",
};

pub const CHECKOUT_DEADLINE: EnvVar = EnvVar {
    name: "CHECKOUT_DEADLINE",
    default: "10s",
    help: "A checkout still running after this answers 202 processing; the saga goes on. At least 1ms.",
};

pub const RECOVERY_INTERVAL: EnvVar = EnvVar {
    name: "RECOVERY_INTERVAL",
    default: "1s",
    help: "How often the recovery worker looks for checkouts whose lease (IDEMPOTENCY_LEASE) ran out; at least 50ms.",
};

pub const RECOVERY_RETRY: EnvVar = EnvVar {
    name: "RECOVERY_RETRY",
    default: "2s",
    help: "How soon a checkout whose outcome is still unknown (a dependency unreachable) is tried again; at least 50ms.",
};

pub const RATE_LIMIT_CHECKOUT: EnvVar = EnvVar {
    name: "RATE_LIMIT_CHECKOUT",
    default: "50",
    help: "Checkouts per second each caller (API key, else client address) may start (POST /order/checkout); the internal token is exempt. At least 1.",
};

pub const RATE_LIMIT_CHECKOUT_BURST: EnvVar = EnvVar {
    name: "RATE_LIMIT_CHECKOUT_BURST",
    default: "100",
    help: "Checkouts a caller may start at once before RATE_LIMIT_CHECKOUT paces it; at least 1.",
};

pub const PIX_TTL: EnvVar = EnvVar {
    name: "PIX_TTL",
    default: "15m",
    help: "A Pix checkout not paid within this expires: order failed, units released, a later payment refunded. At least 1s.",
};

pub const ENV: &[EnvVar] = &[
    PIX_TTL,
    PORT,
    STOCK_URL,
    PAYMENT_URL,
    CHECKOUT_DEADLINE,
    RECOVERY_INTERVAL,
    RECOVERY_RETRY,
    RATE_LIMIT_CHECKOUT,
    RATE_LIMIT_CHECKOUT_BURST,
];

/// The shortest period of the recovery worker's chores: shorter ones would only keep Redis busy.
const MIN_PERIOD: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub stock_url: String,
    pub payment_url: String,
    pub checkout_deadline: Duration,
    pub recovery_interval: Duration,
    pub recovery_retry: Duration,
    pub retry: RetrySettings,
    pub pix_ttl: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut common = CommonSettings::from_env("order-service", &PORT)?;
        common.rate_limits.routes.push(Route {
            method: Method::POST,
            path: "/checkout",
            name: "checkout",
            policy: Policy::from_env(&RATE_LIMIT_CHECKOUT, &RATE_LIMIT_CHECKOUT_BURST)?,
            // begin.lua takes it, one round trip fewer; a cluster keeps the caller's bucket
            // in a slot of its own.
            deferred: !common.redis_cluster,
        });
        let checkout_deadline = config::duration_at_least(&CHECKOUT_DEADLINE, Duration::from_millis(1))?;
        Ok(Self {
            common,
            stock_url: config::var(&STOCK_URL),
            payment_url: config::var(&PAYMENT_URL),
            checkout_deadline,
            recovery_interval: config::duration_at_least(&RECOVERY_INTERVAL, MIN_PERIOD)?,
            recovery_retry: config::duration_at_least(&RECOVERY_RETRY, MIN_PERIOD)?,
            retry: RetrySettings::from_env()?,
            pix_ttl: config::duration_at_least(&PIX_TTL, Duration::from_secs(1))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use shared::config::COMMON_ENV;
    use shared::http_client::CLIENT_ENV;
    use shared::testing::env::{Refusal, assert_refused, assert_taken, settings_from_defaults};

    use super::*;

    #[test]
    fn defaults_parse_and_every_listed_variable_is_read() {
        let settings = settings_from_defaults(Settings::from_env, &[COMMON_ENV, ENV, CLIENT_ENV]);
        assert_eq!(settings.common.port, 8081);
        assert_eq!(settings.checkout_deadline, Duration::from_secs(10));
    }

    #[test]
    fn recovery_periods_shorter_than_50ms_are_refused() {
        let cases: &[Refusal] = &[
            (
                &[(RECOVERY_INTERVAL.name, "10ms")],
                RECOVERY_INTERVAL.name,
                "must be at least 50ms",
            ),
            (
                &[(RECOVERY_RETRY.name, "10ms")],
                RECOVERY_RETRY.name,
                "must be at least 50ms",
            ),
            (
                &[(CHECKOUT_DEADLINE.name, "0")],
                CHECKOUT_DEADLINE.name,
                "must be at least 1ms",
            ),
        ];
        assert_refused(cases, Settings::from_env);
        assert_taken(
            &[(RECOVERY_INTERVAL.name, "50ms"), (RECOVERY_RETRY.name, "50ms")],
            Settings::from_env,
        );
    }
}
