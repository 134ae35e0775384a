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

/// Variables every service reads (the service's own port default is given by the service).
pub const COMMON_ENV: &[EnvVar] = &[
    EnvVar {
        name: "HOST",
        default: "127.0.0.1",
        help: "Address the service listens on (0.0.0.0 in containers).",
    },
    EnvVar {
        name: "REDIS_URL",
        default: "redis://127.0.0.1:6379",
        help: "Redis holding the service's state and idempotency keys.",
    },
    EnvVar {
        name: "REDIS_POOL_SIZE",
        default: "32",
        help: "Redis connections per service process.",
    },
    EnvVar {
        name: "INTERNAL_TOKEN",
        default: "dev-internal-token",
        help: "Bearer token for internal and admin endpoints. Set a real secret outside development.",
    },
    EnvVar {
        name: "IDEMPOTENCY_TTL",
        default: "24h",
        help: "How long an Idempotency-Key and its stored response are kept.",
    },
    EnvVar {
        name: "IDEMPOTENCY_LEASE",
        default: "30s",
        help: "How long an in-progress key stays locked without renewal before another request may take it over.",
    },
    EnvVar {
        name: "PROBLEM_TYPE_BASE",
        default: "https://checkout.example/problems/",
        help: "Base URI of problem+json `type` members; the slug is appended.",
    },
    EnvVar {
        name: "WORKERS",
        default: "2",
        help: "actix worker threads per service.",
    },
    EnvVar {
        name: "SHUTDOWN_GRACE",
        default: "10s",
        help: "On SIGTERM, how long in-flight requests may take to finish.",
    },
    EnvVar {
        name: "RUST_LOG",
        default: "info",
        help: "Log filter (tracing EnvFilter syntax).",
    },
    EnvVar {
        name: "LOG_FORMAT",
        default: "json",
        help: "`json` (one object per line) or `text`.",
    },
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
        out.push_str(&format!("| `{}` | `{}` | {} | {} |\n", var.name, var.default, services.join(", "), var.help));
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

/// Reads a variable, falling back to `default` when unset or empty.
pub fn var(name: &'static str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => default.to_string(),
    }
}

pub fn parse<T: FromStr>(name: &'static str, default: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    let value = var(name, default);
    value.parse::<T>().map_err(|e| ConfigError {
        name,
        value: value.clone(),
        reason: e.to_string(),
    })
}

/// Durations accept `250ms`, `30s`, `10m`, `24h`, or a bare number of seconds.
pub fn duration(name: &'static str, default: &str) -> Result<Duration, ConfigError> {
    let value = var(name, default);
    parse_duration(&value).ok_or_else(|| ConfigError {
        name,
        value: value.clone(),
        reason: "expected a duration such as 250ms, 30s, 10m or 24h".into(),
    })
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

pub fn boolean(name: &'static str, default: &str) -> Result<bool, ConfigError> {
    let value = var(name, default);
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError {
            name,
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
    pub redis_pool_size: usize,
    pub internal_token: Secret,
    pub idempotency_ttl: Duration,
    pub idempotency_lease: Duration,
    pub problem_type_base: String,
    pub workers: usize,
    pub shutdown_grace: Duration,
    pub log_format: String,
}

impl CommonSettings {
    /// `port_var` is the service's own port variable (e.g. `STOCK_PORT`), with its default.
    pub fn from_env(service: &'static str, port_var: &EnvVar) -> Result<Self, ConfigError> {
        let workers: usize = parse("WORKERS", "2")?;
        let pool: usize = parse("REDIS_POOL_SIZE", "32")?;
        let lease = duration("IDEMPOTENCY_LEASE", "30s")?;
        if lease < Duration::from_secs(1) {
            return Err(ConfigError {
                name: "IDEMPOTENCY_LEASE",
                value: format!("{lease:?}"),
                reason: "must be at least 1s".into(),
            });
        }
        Ok(Self {
            service,
            host: var("HOST", "127.0.0.1"),
            port: parse(port_var.name, port_var.default)?,
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            redis_pool_size: pool.max(1),
            internal_token: Secret::new(var("INTERNAL_TOKEN", "dev-internal-token")),
            idempotency_ttl: duration("IDEMPOTENCY_TTL", "24h")?,
            idempotency_lease: lease,
            problem_type_base: var("PROBLEM_TYPE_BASE", "https://checkout.example/problems/"),
            workers: workers.max(1),
            shutdown_grace: duration("SHUTDOWN_GRACE", "10s")?,
            log_format: var("LOG_FORMAT", "json"),
        })
    }

    pub fn uses_default_token(&self) -> bool {
        self.internal_token.expose() == "dev-internal-token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5 days"), None);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
