//! Typed settings read once from the environment. Every variable has a documented default; the
//! tables here are the single source for the README's configuration table (a test checks both agree).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One documented environment variable.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid value {value:?} for {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

pub const HOST: EnvVar = EnvVar {
    name: "HOST",
    default: "127.0.0.1",
    help: "Address the service listens on (0.0.0.0 in containers).",
};

pub const REDIS_URL: EnvVar = EnvVar {
    name: "REDIS_URL",
    default: "redis://127.0.0.1:6379",
    help: "Redis (7 or later: its scripts are Redis Functions; spoken to in RESP3) holding the service's state and idempotency keys.",
};

pub const REDIS_RESPONSE_TIMEOUT: EnvVar = EnvVar {
    name: "REDIS_RESPONSE_TIMEOUT",
    default: "2s",
    help: "How long a Redis command may go unanswered before its request fails (503); at least 1ms. A stall shorter than this (an fsync, a fork, a busy host) costs latency, not errors.",
};

pub const REDIS_CLUSTER: EnvVar = EnvVar {
    name: "REDIS_CLUSTER",
    default: "false",
    help: "`true`: REDIS_URL is a comma-separated list of Redis Cluster nodes, reached with the cluster-aware client.",
};

pub const INTERNAL_TOKEN: EnvVar = EnvVar {
    name: "INTERNAL_TOKEN",
    default: "dev-internal-token",
    help: "Bearer token for internal and admin endpoints. Set a real secret outside development.",
};

pub const IDEMPOTENCY_TTL: EnvVar = EnvVar {
    name: "IDEMPOTENCY_TTL",
    default: "24h",
    help: "How long an Idempotency-Key and its stored response are kept: the same key after that starts a new request. At least 1m, and longer than IDEMPOTENCY_LEASE.",
};

pub const IDEMPOTENCY_LEASE: EnvVar = EnvVar {
    name: "IDEMPOTENCY_LEASE",
    default: "30s",
    help: "How long an in-progress key stays locked without renewal before another request may take it over; at least 1s.",
};

pub const PROBLEM_TYPE_BASE: EnvVar = EnvVar {
    name: "PROBLEM_TYPE_BASE",
    default: "https://checkout.example/problems/",
    help: "Base URI of problem+json `type` members; the slug is appended.",
};

pub const WORKERS: EnvVar = EnvVar {
    name: "WORKERS",
    default: "1",
    help: "actix worker threads per service. One suits a 2-core machine running the whole stack (measured: about +15 % checkouts/s over 2); raise it on a dedicated host. At least 1.",
};

pub const SHUTDOWN_GRACE: EnvVar = EnvVar {
    name: "SHUTDOWN_GRACE",
    default: "10s",
    help: "On SIGTERM, how long in-flight requests may take to finish; at least 1s.",
};

pub const RUST_LOG: EnvVar = EnvVar {
    name: "RUST_LOG",
    default: "info",
    help: "Log filter (tracing EnvFilter syntax, e.g. `warn,order_service=debug`); one that does not parse stops the start.",
};

pub const LOG_FORMAT: EnvVar = EnvVar {
    name: "LOG_FORMAT",
    default: "json",
    help: "`json` (one object per line) or `text`.",
};

/// Variables every service reads (the service's own port is in the service's table).
pub const COMMON_ENV: &[EnvVar] = &[
    HOST,
    REDIS_URL,
    REDIS_CLUSTER,
    REDIS_RESPONSE_TIMEOUT,
    INTERNAL_TOKEN,
    IDEMPOTENCY_TTL,
    IDEMPOTENCY_LEASE,
    PROBLEM_TYPE_BASE,
    WORKERS,
    SHUTDOWN_GRACE,
    RUST_LOG,
    LOG_FORMAT,
    crate::ratelimit::RATE_LIMIT_DEFAULT,
    crate::ratelimit::RATE_LIMIT_DEFAULT_BURST,
];

/// The README's configuration table, generated from the services' tables so the two cannot
/// drift apart: one row per variable, the services that read it in the last column.
pub fn markdown_table(tables: &[(&str, &[EnvVar])]) -> String {
    let mut rows: Vec<(EnvVar, Vec<&str>)> = Vec::new();
    for (service, vars) in tables {
        for var in *vars {
            match rows.iter_mut().find(|(v, _)| v.name == var.name) {
                Some((_, services)) => services.push(service),
                None => rows.push((*var, vec![service])),
            }
        }
    }
    let mut out = String::from("| variable | default | read by | meaning |\n| --- | --- | --- | --- |\n");
    for (var, services) in rows {
        // An empty default means "unset": the feature it configures is off until it is given.
        let default = if var.default.is_empty() {
            "(unset)".to_string()
        } else {
            format!("`{}`", var.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            var.name,
            default,
            services.join(", "),
            var.help
        ));
    }
    out
}

/// A string that never prints: keeps tokens out of logs and Debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads a variable, falling back to its default when unset or empty.
pub fn var(v: &EnvVar) -> String {
    #[cfg(any(test, feature = "testing"))]
    let set = crate::testing::env::lookup(v.name).unwrap_or_else(|| std::env::var(v.name).ok());
    #[cfg(not(any(test, feature = "testing")))]
    let set = std::env::var(v.name).ok();
    match set {
        Some(value) if !value.trim().is_empty() => value.trim().to_string(),
        _ => v.default.to_string(),
    }
}

pub fn parse<T: FromStr>(v: &EnvVar) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    let value = var(v);
    value.parse::<T>().map_err(|e| ConfigError {
        name: v.name,
        reason: e.to_string(),
        value,
    })
}

/// Durations accept `250ms`, `30s`, `10m`, `24h`, or a bare number of seconds.
pub fn duration(v: &EnvVar) -> Result<Duration, ConfigError> {
    let value = var(v);
    parse_duration(&value).ok_or_else(|| ConfigError {
        name: v.name,
        value,
        reason: "expected a duration such as 250ms, 30s, 10m or 24h".into(),
    })
}

/// A duration no shorter than `min`. A shorter one is refused, not raised to `min`: a service
/// that quietly runs with another value than the one its operator wrote hides the mistake.
pub fn duration_at_least(v: &EnvVar, min: Duration) -> Result<Duration, ConfigError> {
    let value = duration(v)?;
    if value < min {
        return Err(refused(v, format!("must be at least {}", show_duration(min))));
    }
    Ok(value)
}

/// A number no smaller than `min`, refused otherwise (see [`duration_at_least`]).
pub fn at_least<T>(v: &EnvVar, min: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display,
    T::Err: fmt::Display,
{
    let value: T = parse(v)?;
    if value < min {
        return Err(refused(v, format!("must be at least {min}")));
    }
    Ok(value)
}

/// The error for a value of `v` that parses but is not allowed, for `reason`.
pub fn refused(v: &EnvVar, reason: String) -> ConfigError {
    ConfigError {
        name: v.name,
        value: var(v),
        reason,
    }
}

/// A duration as [`parse_duration`] reads it back: `50ms`, `1s`, `1m`, `24h`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

pub fn boolean(v: &EnvVar) -> Result<bool, ConfigError> {
    let value = var(v);
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError {
            name: v.name,
            value,
            reason: "expected true or false".into(),
        }),
    }
}

/// Settings every service has.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub service: &'static str,
    pub host: String,
    pub port: u16,
    pub redis_url: String,
    pub redis_cluster: bool,
    pub redis_response_timeout: Duration,
    pub internal_token: Secret,
    pub idempotency_ttl: Duration,
    pub idempotency_lease: Duration,
    pub problem_type_base: String,
    pub workers: usize,
    pub shutdown_grace: Duration,
    /// RUST_LOG, checked to parse.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// Per-caller limits; a service adds its routes' own (the order service: POST /checkout).
    pub rate_limits: crate::ratelimit::RateLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl CommonSettings {
    /// `port_var` is the service's own port variable (e.g. `STOCK_PORT`), with its default.
    pub fn from_env(service: &'static str, port_var: &EnvVar) -> Result<Self, ConfigError> {
        let lease = duration_at_least(&IDEMPOTENCY_LEASE, Duration::from_secs(1))?;
        // A key must outlive its lease, or a running checkout's record vanishes while it is held;
        // and a minute at least, so that a bare `24` (seconds, not hours) is caught.
        let ttl = duration_at_least(&IDEMPOTENCY_TTL, Duration::from_secs(60))?;
        if ttl <= lease {
            return Err(refused(
                &IDEMPOTENCY_TTL,
                format!(
                    "must be longer than {} ({})",
                    IDEMPOTENCY_LEASE.name,
                    show_duration(lease)
                ),
            ));
        }
        let log_filter = var(&RUST_LOG);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(refused(&RUST_LOG, e.to_string()));
        }
        let log_format = match var(&LOG_FORMAT).as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            _ => return Err(refused(&LOG_FORMAT, "expected json or text".into())),
        };
        Ok(Self {
            service,
            host: var(&HOST),
            port: parse(port_var)?,
            redis_url: var(&REDIS_URL),
            redis_cluster: boolean(&REDIS_CLUSTER)?,
            redis_response_timeout: duration_at_least(&REDIS_RESPONSE_TIMEOUT, Duration::from_millis(1))?,
            internal_token: Secret::new(var(&INTERNAL_TOKEN)),
            idempotency_ttl: ttl,
            idempotency_lease: lease,
            problem_type_base: var(&PROBLEM_TYPE_BASE),
            workers: at_least(&WORKERS, 1)?,
            shutdown_grace: duration_at_least(&SHUTDOWN_GRACE, Duration::from_secs(1))?,
            log_filter,
            log_format,
            rate_limits: crate::ratelimit::RateLimits::from_env()?,
        })
    }

    pub fn uses_default_token(&self) -> bool {
        self.internal_token.expose() == INTERNAL_TOKEN.default
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::testing::env::{Refusal, assert_refused, with_defaults_only, with_env};

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5 days"), None);
    }

    const TEST_PORT: EnvVar = EnvVar {
        name: "TEST_PORT",
        default: "8080",
        help: "",
    };

    #[test]
    fn common_defaults_parse_and_every_common_variable_is_read() {
        let (settings, read) = with_defaults_only(|| CommonSettings::from_env("test", &TEST_PORT));
        let settings = settings.expect("every default parses");
        assert_eq!(settings.port, 8080);
        assert!(settings.uses_default_token());
        let read: BTreeSet<_> = read.into_iter().collect();
        let listed: BTreeSet<_> = COMMON_ENV.iter().chain([&TEST_PORT]).map(|v| v.name).collect();
        assert_eq!(read, listed);
    }

    #[test]
    fn common_settings_outside_their_bounds_are_refused_naming_the_bound() {
        let cases: &[Refusal] = &[
            (&[("WORKERS", "0")], "WORKERS", "must be at least 1"),
            (
                &[("REDIS_RESPONSE_TIMEOUT", "0")],
                "REDIS_RESPONSE_TIMEOUT",
                "must be at least 1ms",
            ),
            (
                &[("IDEMPOTENCY_LEASE", "500ms")],
                "IDEMPOTENCY_LEASE",
                "must be at least 1s",
            ),
            (&[("IDEMPOTENCY_TTL", "0")], "IDEMPOTENCY_TTL", "must be at least 1m"),
            // Bare numbers are seconds: `24` meant as hours is caught.
            (&[("IDEMPOTENCY_TTL", "24")], "IDEMPOTENCY_TTL", "must be at least 1m"),
            (
                &[("IDEMPOTENCY_TTL", "2m"), ("IDEMPOTENCY_LEASE", "2m")],
                "IDEMPOTENCY_TTL",
                "must be longer than IDEMPOTENCY_LEASE (2m)",
            ),
            (&[("SHUTDOWN_GRACE", "0")], "SHUTDOWN_GRACE", "must be at least 1s"),
            (&[("RUST_LOG", "order_service=loud")], "RUST_LOG", "order_service=loud"),
            (&[("LOG_FORMAT", "yaml")], "LOG_FORMAT", "expected json or text"),
        ];
        assert_refused(cases, || CommonSettings::from_env("test", &TEST_PORT));
        let at_the_bounds = [
            ("WORKERS", "1"),
            ("REDIS_RESPONSE_TIMEOUT", "1ms"),
            ("IDEMPOTENCY_LEASE", "1s"),
            ("IDEMPOTENCY_TTL", "1m"),
            ("SHUTDOWN_GRACE", "1s"),
            ("RUST_LOG", "warn,order_service=debug"),
            ("LOG_FORMAT", "text"),
        ];
        let (result, _) = with_env(&at_the_bounds, || CommonSettings::from_env("test", &TEST_PORT));
        let settings = result.expect("values at the bounds are taken");
        assert_eq!(settings.idempotency_ttl, Duration::from_secs(60));
        assert_eq!(settings.redis_response_timeout, Duration::from_millis(1));
        assert_eq!(settings.log_filter, "warn,order_service=debug");
        assert_eq!(settings.log_format, LogFormat::Text);
    }

    #[test]
    fn durations_are_shown_as_they_are_written() {
        for (ms, shown) in [
            (50, "50ms"),
            (1_000, "1s"),
            (1_500, "1500ms"),
            (60_000, "1m"),
            (86_400_000, "24h"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(show_duration(d), shown);
            assert_eq!(parse_duration(shown), Some(d));
        }
    }

    #[test]
    fn defaults_only_hides_the_process_environment() {
        // PATH is set in any test run; reading it through a table entry must give the default.
        let path = EnvVar {
            name: "PATH",
            default: "default-path",
            help: "",
        };
        let (value, read) = with_defaults_only(|| var(&path));
        assert_eq!(value, "default-path");
        assert_eq!(read, ["PATH"]);
        if std::env::var("PATH").is_ok_and(|p| !p.trim().is_empty()) {
            assert_ne!(var(&path), "default-path");
        }
    }

    #[test]
    fn errors_name_the_variable() {
        let bad = EnvVar {
            name: "BAD",
            default: "soon",
            help: "",
        };
        let (result, _) = with_defaults_only(|| duration(&bad));
        let err = result.expect_err("not a duration");
        assert_eq!(err.name, "BAD");
        assert!(err.to_string().contains("BAD"));
        let (result, _) = with_defaults_only(|| boolean(&bad));
        assert_eq!(result.expect_err("not a boolean").name, "BAD");
        let (result, _) = with_defaults_only(|| parse::<u16>(&bad));
        assert_eq!(result.expect_err("not a number").name, "BAD");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
