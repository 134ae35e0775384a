//! Payment settings, read once at start-up.

use std::time::Duration;

use shared::config::{self, CommonSettings, ConfigError, EnvVar};

use crate::gateways::breaker::Policy;
use crate::gateways::{GatewayList, ProviderSettings, RouteTable};

pub const PORT: EnvVar = EnvVar {
    name: "PAYMENT_PORT",
    default: "8082",
    help: "Port of the payment service.",
};

pub const PAYMENT_GATEWAYS: EnvVar = EnvVar {
    name: "PAYMENT_GATEWAYS",
    default: "card-a=http://127.0.0.1:9101,card-b=http://127.0.0.1:9102,pix=http://127.0.0.1:9103",
    help: "Payment providers, `name=base URL` separated by commas (the simulators `make run` starts).",
};

pub const PAYMENT_ROUTES: EnvVar = EnvVar {
    name: "PAYMENT_ROUTES",
    default: "card:card-a,card-b;pix:pix",
    help: "Per payment-method type, the providers to try in order: `card:card-a,card-b;pix:pix`.",
};

pub const GATEWAY_TIMEOUT: EnvVar = EnvVar {
    name: "GATEWAY_TIMEOUT",
    default: "1s",
    help: "Timeout of one request to a provider; past it the charge's outcome there is unknown. Keep it under the order service's HTTP_ATTEMPT_TIMEOUT.",
};

pub const GATEWAY_CONNECT_TIMEOUT: EnvVar = EnvVar {
    name: "GATEWAY_CONNECT_TIMEOUT",
    default: "250ms",
    help: "Timeout to open a connection to a provider; a connection not opened proves nothing was sent.",
};

pub const BREAKER_FAILURES: EnvVar = EnvVar {
    name: "BREAKER_FAILURES",
    default: "5",
    help: "Failures within BREAKER_WINDOW that open a provider's circuit breaker; at least 1.",
};

pub const BREAKER_WINDOW: EnvVar = EnvVar {
    name: "BREAKER_WINDOW",
    default: "10s",
    help: "The window in which BREAKER_FAILURES are counted.",
};

pub const BREAKER_COOLDOWN: EnvVar = EnvVar {
    name: "BREAKER_COOLDOWN",
    default: "5s",
    help: "How long an open breaker skips its provider before letting one trial request through.",
};

pub const STOCK_URL: EnvVar = EnvVar {
    name: "STOCK_URL",
    default: "http://127.0.0.1:8083",
    help: "Base URL of the stock service: splits ask it who owns an item.",
};

pub const ORDER_URL: EnvVar = EnvVar {
    name: "ORDER_URL",
    default: "http://127.0.0.1:8081",
    help: "Base URL of the order service: a paid Pix wakes its order there.",
};

pub const PROVIDER_WEBHOOK_SECRETS: EnvVar = EnvVar {
    name: "PROVIDER_WEBHOOK_SECRETS",
    default: "",
    help: "Per provider, the `whsec_` secret its webhooks are signed with: `pix=whsec_…`, comma-separated. A provider without one has its webhooks refused (404).",
};

pub const WEBHOOK_CLAIM_IDLE: EnvVar = EnvVar {
    name: "WEBHOOK_CLAIM_IDLE",
    default: "10s",
    help: "A received webhook taken by a worker that died (or could not finish it) is taken over by another after this long; at least 100ms.",
};

pub const WEBHOOK_POLL: EnvVar = EnvVar {
    name: "WEBHOOK_POLL",
    default: "100ms",
    help: "How often each replica's webhook workers look for work: received provider webhooks, the outboxes, due deliveries; at least 10ms.",
};

pub const WEBHOOK_ALLOW_PRIVATE: EnvVar = EnvVar {
    name: "WEBHOOK_ALLOW_PRIVATE",
    default: "false",
    help: "Allow merchant webhook endpoints on private, loopback and link-local addresses (`make run` sets true, for local receivers). Checked at registration and again at every delivery.",
};

pub const WEBHOOK_TIMEOUT: EnvVar = EnvVar {
    name: "WEBHOOK_TIMEOUT",
    default: "5s",
    help: "Timeout of one delivery attempt to a merchant's webhook endpoint.",
};

pub const WEBHOOK_RETRY_SCHEDULE: EnvVar = EnvVar {
    name: "WEBHOOK_RETRY_SCHEDULE",
    default: "5s,5m,30m,2h,5h,10h",
    help: "Delays before each retry of a failed delivery (each with ±20 % jitter); after the last, the delivery is dead-lettered.",
};

pub const WEBHOOK_ENDPOINT_CONCURRENCY: EnvVar = EnvVar {
    name: "WEBHOOK_ENDPOINT_CONCURRENCY",
    default: "4",
    help: "Deliveries each replica sends to one endpoint at once: a slow endpoint holds only its own.",
};

pub const ENV: &[EnvVar] = &[
    WEBHOOK_ALLOW_PRIVATE,
    WEBHOOK_TIMEOUT,
    WEBHOOK_RETRY_SCHEDULE,
    WEBHOOK_ENDPOINT_CONCURRENCY,
    ORDER_URL,
    PROVIDER_WEBHOOK_SECRETS,
    WEBHOOK_CLAIM_IDLE,
    WEBHOOK_POLL,
    PORT,
    STOCK_URL,
    PAYMENT_GATEWAYS,
    PAYMENT_ROUTES,
    GATEWAY_TIMEOUT,
    GATEWAY_CONNECT_TIMEOUT,
    BREAKER_FAILURES,
    BREAKER_WINDOW,
    BREAKER_COOLDOWN,
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub gateways: GatewayList,
    pub routes: RouteTable,
    pub providers: ProviderSettings,
    pub stock_url: String,
    pub order_url: String,
    pub webhook_secrets: crate::pix::ProviderSecrets,
    pub webhook_claim_idle: Duration,
    pub webhook_poll: Duration,
    pub outbound: crate::merchant_webhooks::Outbound,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let ms = Duration::from_millis(1);
        let gateways: GatewayList = config::parse(&PAYMENT_GATEWAYS)?;
        let routes: RouteTable = config::parse(&PAYMENT_ROUTES)?;
        routes
            .check(&gateways)
            .map_err(|e| config::refused(&PAYMENT_ROUTES, e))?;
        let timeout = config::duration_at_least(&GATEWAY_TIMEOUT, ms)?;
        Ok(Self {
            common: CommonSettings::from_env("payment-service", &PORT)?,
            stock_url: config::parse(&STOCK_URL)?,
            order_url: config::parse(&ORDER_URL)?,
            webhook_secrets: config::parse(&PROVIDER_WEBHOOK_SECRETS)?,
            webhook_claim_idle: config::duration_at_least(&WEBHOOK_CLAIM_IDLE, Duration::from_millis(100))?,
            webhook_poll: config::duration_at_least(&WEBHOOK_POLL, Duration::from_millis(10))?,
            outbound: crate::merchant_webhooks::Outbound {
                allow_private: config::boolean(&WEBHOOK_ALLOW_PRIVATE)?,
                timeout: config::duration_at_least(&WEBHOOK_TIMEOUT, ms)?,
                schedule: config::parse(&WEBHOOK_RETRY_SCHEDULE)?,
                endpoint_concurrency: config::at_least(&WEBHOOK_ENDPOINT_CONCURRENCY, 1)?,
            },
            gateways,
            routes,
            providers: ProviderSettings {
                timeout,
                connect_timeout: config::duration_at_least(&GATEWAY_CONNECT_TIMEOUT, ms)?,
                breaker: Policy {
                    failures: config::at_least(&BREAKER_FAILURES, 1)?,
                    window: config::duration_at_least(&BREAKER_WINDOW, ms)?,
                    cooldown: config::duration_at_least(&BREAKER_COOLDOWN, ms)?,
                    trial_timeout: timeout * 2,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use shared::config::COMMON_ENV;
    use shared::testing::env::{Refusal, assert_refused, settings_from_defaults};

    use super::*;
    use crate::gateways::MethodKind;

    #[test]
    fn defaults_parse_and_every_listed_variable_is_read() {
        let settings = settings_from_defaults(Settings::from_env, &[COMMON_ENV, ENV]);
        assert_eq!(settings.common.port, 8082);
        assert_eq!(settings.routes.route(MethodKind::Card), ["card-a", "card-b"]);
        assert_eq!(settings.providers.breaker.failures, 5);
    }

    #[test]
    fn a_route_to_an_unnamed_provider_is_refused_naming_the_variable() {
        let cases: &[Refusal] = &[
            (&[("PAYMENT_ROUTES", "card:card-a,card-x")], "PAYMENT_ROUTES", "card-x"),
            (&[("PAYMENT_GATEWAYS", "card-a")], "PAYMENT_GATEWAYS", "name=url"),
            (&[("BREAKER_FAILURES", "0")], "BREAKER_FAILURES", "at least 1"),
            (
                &[("PROVIDER_WEBHOOK_SECRETS", "pix=not-a-secret")],
                "PROVIDER_WEBHOOK_SECRETS",
                "whsec_",
            ),
            (
                &[("WEBHOOK_RETRY_SCHEDULE", "5s,soon")],
                "WEBHOOK_RETRY_SCHEDULE",
                "soon",
            ),
            (&[("WEBHOOK_ALLOW_PRIVATE", "maybe")], "WEBHOOK_ALLOW_PRIVATE", "true"),
        ];
        assert_refused(cases, Settings::from_env);
    }
}
