//! Typed settings read once from the environment. Every variable has a documented default; the
//! tables here are the single source for the README's configuration table (a test checks both agree).

use std::cell::RefCell;
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
    help: "Redis (6 or later: spoken to in RESP3) holding the service's state and idempotency keys.",
};

pub const REDIS_POOL_SIZE: EnvVar = EnvVar {
    name: "REDIS_POOL_SIZE",
    default: "32",
    help: "Redis connections per service process.",
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
    help: "How long an Idempotency-Key and its stored response are kept.",
};

pub const IDEMPOTENCY_LEASE: EnvVar = EnvVar {
    name: "IDEMPOTENCY_LEASE",
    default: "30s",
    help: "How long an in-progress key stays locked without renewal before another request may take it over.",
};

pub const PROBLEM_TYPE_BASE: EnvVar = EnvVar {
    name: "PROBLEM_TYPE_BASE",
    default: "https://checkout.example/problems/",
    help: "Base URI of problem+json `type` members; the slug is appended.",
};

pub const WORKERS: EnvVar = EnvVar {
    name: "WORKERS",
    default: "1",
    help: "actix worker threads per service. One suits a 2-core machine running the whole stack (measured: about +15 % checkouts/s over 2); raise it on a dedicated host.",
};

pub const SHUTDOWN_GRACE: EnvVar = EnvVar {
    name: "SHUTDOWN_GRACE",
    default: "10s",
    help: "On SIGTERM, how long in-flight requests may take to finish.",
};

pub const RUST_LOG: EnvVar = EnvVar {
    name: "RUST_LOG",
    default: "info",
    help: "Log filter (tracing EnvFilter syntax).",
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
    REDIS_POOL_SIZE,
    INTERNAL_TOKEN,
    IDEMPOTENCY_TTL,
    IDEMPOTENCY_LEASE,
    PROBLEM_TYPE_BASE,
    WORKERS,
    SHUTDOWN_GRACE,
    RUST_LOG,
    LOG_FORMAT,
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

thread_local! {
    /// `Some` while [`with_defaults_only`] runs on this thread: the names read so far.
    static DEFAULTS_ONLY: RefCell<Option<Vec<&'static str>>> = const { RefCell::new(None) };
}

/// Runs `f` as if no variable were set (on this thread only) and returns its result with the
/// names of the variables it read. For tests: settings built this way prove that a table's
/// defaults parse, without touching the process environment.
pub fn with_defaults_only<R>(f: impl FnOnce() -> R) -> (R, Vec<&'static str>) {
    /// Puts back the outer state, even if `f` panics.
    struct Restore(Option<Vec<&'static str>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEFAULTS_ONLY.set(self.0.take());
        }
    }
    let _restore = Restore(DEFAULTS_ONLY.replace(Some(Vec::new())));
    let result = f();
    let read = DEFAULTS_ONLY.take().unwrap_or_default();
    (result, read)
}

/// Reads a variable, falling back to its default when unset or empty.
pub fn var(v: &EnvVar) -> String {
    let defaults_only = DEFAULTS_ONLY.with_borrow_mut(|read| read.as_mut().map(|names| names.push(v.name)).is_some());
    let set = if defaults_only {
        None
    } else {
        std::env::var(v.name).ok()
    };
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
        let workers: usize = parse(&WORKERS)?;
        let pool: usize = parse(&REDIS_POOL_SIZE)?;
        let lease = duration(&IDEMPOTENCY_LEASE)?;
        if lease < Duration::from_secs(1) {
            return Err(ConfigError {
                name: IDEMPOTENCY_LEASE.name,
                value: format!("{lease:?}"),
                reason: "must be at least 1s".into(),
            });
        }
        Ok(Self {
            service,
            host: var(&HOST),
            port: parse(port_var)?,
            redis_url: var(&REDIS_URL),
            redis_cluster: boolean(&REDIS_CLUSTER)?,
            redis_pool_size: pool.max(1),
            internal_token: Secret::new(var(&INTERNAL_TOKEN)),
            idempotency_ttl: duration(&IDEMPOTENCY_TTL)?,
            idempotency_lease: lease,
            problem_type_base: var(&PROBLEM_TYPE_BASE),
            workers: workers.max(1),
            shutdown_grace: duration(&SHUTDOWN_GRACE)?,
            log_format: var(&LOG_FORMAT),
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
        // RUST_LOG is read by tracing's EnvFilter, not by these readers.
        assert!(tracing_subscriber::EnvFilter::try_new(RUST_LOG.default).is_ok());
        let read: BTreeSet<_> = read.into_iter().collect();
        let listed: BTreeSet<_> = COMMON_ENV
            .iter()
            .chain([&TEST_PORT])
            .map(|v| v.name)
            .filter(|name| *name != RUST_LOG.name)
            .collect();
        assert_eq!(read, listed);
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
