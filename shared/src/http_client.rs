//! The client services use to call each other: pooled keep-alive connections, a per-attempt
//! timeout, and retries of transient failures with exponential backoff and full jitter
//! (reqwest-retry). Business answers (4xx) are returned at once, never retried.
//!
//! Every call also reports whether the request may have reached the other side
//! ([`CallError::Unavailable::maybe_sent`]): a caller undoing a payment needs to know the
//! difference between "never arrived" and "arrived, answer lost".
//!
//! Traces: a call is one client span (`stock POST /reserve`, with the number of attempts and
//! the final status), and each attempt one child span (`POST /reserve`, with `attempt`, its
//! status or error) whose context goes out as `traceparent`, so the callee's server span hangs
//! under the attempt that reached it. The attempt span is made inside the retry loop (the
//! middleware after [`RetryTransientMiddleware`]), the call span around it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use actix_web::web::Bytes;
use reqwest::StatusCode;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{Jitter, RetryTransientMiddleware, Retryable, RetryableStrategy};
use serde::Serialize;
use tracing::Instrument;
use tracing::field::Empty;

use crate::config::{self, ConfigError, EnvVar, Secret};

pub const HTTP_ATTEMPT_TIMEOUT: EnvVar = EnvVar {
    name: "HTTP_ATTEMPT_TIMEOUT",
    default: "2s",
    help: "Timeout of one attempt of a call to another service; at least 1ms.",
};

pub const HTTP_CONNECT_TIMEOUT: EnvVar = EnvVar {
    name: "HTTP_CONNECT_TIMEOUT",
    default: "500ms",
    help: "Timeout to open a connection to another service; at least 1ms.",
};

pub const HTTP_MAX_RETRIES: EnvVar = EnvVar {
    name: "HTTP_MAX_RETRIES",
    default: "6",
    help: "Retries after the first attempt of a transient failure.",
};

pub const HTTP_RETRY_BASE: EnvVar = EnvVar {
    name: "HTTP_RETRY_BASE",
    default: "50ms",
    help: "Smallest backoff between attempts (doubles each retry, full jitter); at least 1ms.",
};

pub const HTTP_RETRY_MAX: EnvVar = EnvVar {
    name: "HTTP_RETRY_MAX",
    default: "2s",
    help: "Largest backoff between attempts; at least HTTP_RETRY_BASE.",
};

/// Variables the retrying client reads.
pub const CLIENT_ENV: &[EnvVar] = &[
    HTTP_ATTEMPT_TIMEOUT,
    HTTP_CONNECT_TIMEOUT,
    HTTP_MAX_RETRIES,
    HTTP_RETRY_BASE,
    HTTP_RETRY_MAX,
];

#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetrySettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let ms = Duration::from_millis(1);
        let base = config::duration_at_least(&HTTP_RETRY_BASE, ms)?;
        let max = config::duration(&HTTP_RETRY_MAX)?;
        if max < base {
            return Err(config::refused(
                &HTTP_RETRY_MAX,
                format!(
                    "must be at least {} ({})",
                    HTTP_RETRY_BASE.name,
                    config::show_duration(base)
                ),
            ));
        }
        Ok(Self {
            attempt_timeout: config::duration_at_least(&HTTP_ATTEMPT_TIMEOUT, ms)?,
            connect_timeout: config::duration_at_least(&HTTP_CONNECT_TIMEOUT, ms)?,
            max_retries: config::parse(&HTTP_MAX_RETRIES)?,
            base,
            max,
        })
    }
}

/// Which answers are worth another attempt.
struct TransientStrategy;

impl RetryableStrategy for TransientStrategy {
    fn handle(&self, res: &Result<reqwest::Response, reqwest_middleware::Error>) -> Option<Retryable> {
        match res {
            Ok(resp) if is_transient_status(resp.status(), resp.headers().contains_key("retry-after")) => {
                Some(Retryable::Transient)
            }
            Ok(_) => None,
            Err(reqwest_middleware::Error::Reqwest(e)) if e.is_connect() || e.is_timeout() || e.is_request() => {
                Some(Retryable::Transient)
            }
            Err(_) => Some(Retryable::Fatal),
        }
    }
}

/// 502/503/504, and a 409 that carries `Retry-After` (the idempotency key is busy: the first
/// attempt is still running, so waiting and asking again gets its answer).
pub fn is_transient_status(status: StatusCode, has_retry_after: bool) -> bool {
    matches!(status.as_u16(), 502..=504) || (status == StatusCode::CONFLICT && has_retry_after)
}

/// Set on a request to learn whether any attempt may have reached the server, and how many
/// attempts were made.
#[derive(Clone, Default)]
struct CallTracker(Arc<CallState>);

#[derive(Default)]
struct CallState {
    sent: AtomicBool,
    attempts: AtomicU32,
}

/// Runs inside the retry loop, once per attempt.
struct AttemptObserver {
    dependency: &'static str,
}

#[async_trait::async_trait]
impl Middleware for AttemptObserver {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let tracker = extensions.get::<CallTracker>().cloned().unwrap_or_default();
        let attempt = tracker.0.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt > 1 {
            crate::metrics::retry(self.dependency);
        }
        let span = tracing::info_span!(
            "downstream attempt",
            otel.name = %format_args!("{} {}", req.method(), req.url().path()),
            otel.kind = "client",
            otel.status_code = Empty,
            attempt,
            http.request.resend_count = attempt - 1,
            http.request.method = %req.method(),
            url.full = %req.url(),
            server.address = req.url().host_str().unwrap_or(""),
            server.port = req.url().port_or_known_default().unwrap_or(0),
            http.response.status_code = Empty,
            error.type = Empty,
        );
        // This attempt, not the call, is the callee's parent: retries show as siblings.
        crate::telemetry::inject(&span, req.headers_mut());
        let res = next.run(req, extensions).instrument(span.clone()).await;
        // Only a refused connection proves the request never left; anything else may have
        // been received and acted on.
        let (sent, result) = match &res {
            Ok(resp) => (true, resp.status().as_u16().to_string()),
            Err(reqwest_middleware::Error::Reqwest(e)) if e.is_connect() => (false, "connect_error".to_string()),
            Err(reqwest_middleware::Error::Reqwest(e)) if e.is_timeout() => (true, "timeout".to_string()),
            Err(_) => (true, "error".to_string()),
        };
        match &res {
            Ok(resp) => {
                span.record("http.response.status_code", resp.status().as_u16());
                // A gateway error or a busy key is why a retry follows; a 4xx is a business
                // answer (out of stock, declined), delivered as designed, so not an error here.
                if is_transient_status(resp.status(), resp.headers().contains_key("retry-after")) {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", result.as_str());
                }
            }
            Err(e) => crate::telemetry::mark_error(&span, &result, e),
        }
        if sent {
            tracker.0.sent.store(true, Ordering::SeqCst);
        }
        crate::metrics::attempt(self.dependency, &result);
        res
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No definitive answer after every attempt.
    #[error("{dependency} unavailable: {reason}")]
    Unavailable {
        dependency: &'static str,
        maybe_sent: bool,
        reason: String,
    },
}

impl CallError {
    pub fn maybe_sent(&self) -> bool {
        match self {
            Self::Unavailable { maybe_sent, .. } => *maybe_sent,
        }
    }
}

/// A definitive answer from another service.
#[derive(Debug)]
pub struct CallResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl CallResponse {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The slug at the end of a problem's `type`, if the body is a problem.
    pub fn problem_slug(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.get("type")?.as_str()?.rsplit('/').next().map(str::to_string)
    }
}

/// One dependency: its base URL and a client shared by every request to it.
#[derive(Clone)]
pub struct Downstream {
    name: &'static str,
    base: String,
    token: Secret,
    client: ClientWithMiddleware,
}

impl Downstream {
    pub fn new(name: &'static str, base: &str, token: Secret, retry: &RetrySettings) -> Result<Self, String> {
        let http = crate::tls::client_builder()
            .timeout(retry.attempt_timeout)
            .connect_timeout(retry.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("http client for {name}: {e}"))?;
        let policy = ExponentialBackoff::builder()
            .retry_bounds(retry.base, retry.max)
            .jitter(Jitter::Full)
            .base(2)
            .build_with_max_retries(retry.max_retries);
        let client = ClientBuilder::new(http)
            .with(RetryTransientMiddleware::new_with_policy_and_strategy(
                policy,
                TransientStrategy,
            ))
            .with(AttemptObserver { dependency: name })
            .build();
        Ok(Self {
            name,
            base: base.trim_end_matches('/').to_string(),
            token,
            client,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// POSTs JSON with an Idempotency-Key, retrying transient failures.
    pub async fn post<T: Serialize>(
        &self,
        path: &str,
        idempotency_key: &str,
        body: &T,
    ) -> Result<CallResponse, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Unavailable {
            dependency: self.name,
            maybe_sent: false,
            reason: format!("could not encode the request: {e}"),
        })?;
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header(crate::idempotency::HEADER, idempotency_key)
            .body(body);
        self.send("POST", path, request).await
    }

    pub async fn get(&self, path: &str) -> Result<CallResponse, CallError> {
        self.send("GET", path, self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn send(
        &self,
        method: &'static str,
        path: &str,
        request: reqwest_middleware::RequestBuilder,
    ) -> Result<CallResponse, CallError> {
        let span = tracing::info_span!(
            "downstream call",
            otel.name = %format_args!("{} {method} {path}", self.name),
            otel.kind = "client",
            otel.status_code = Empty,
            peer.service = self.name,
            http.request.method = method,
            url.path = %path,
            attempts = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
        );
        let tracker = CallTracker::default();
        let result = self.exchange(request, &tracker).instrument(span.clone()).await;
        span.record("attempts", tracker.0.attempts.load(Ordering::SeqCst));
        let outcome = match &result {
            Ok(resp) => {
                span.record("http.response.status_code", resp.status.as_u16());
                resp.status.as_u16().to_string()
            }
            Err(e) => {
                crate::telemetry::mark_error(&span, "unavailable", e);
                "unavailable".to_string()
            }
        };
        crate::metrics::call(self.name, &outcome);
        result
    }

    async fn exchange(
        &self,
        request: reqwest_middleware::RequestBuilder,
        tracker: &CallTracker,
    ) -> Result<CallResponse, CallError> {
        let result = request
            .bearer_auth(self.token.expose())
            .header(crate::request_id::HEADER, crate::request_id::current())
            .with_extension(tracker.clone())
            .send()
            .await;
        let unavailable = |reason: String| CallError::Unavailable {
            dependency: self.name,
            maybe_sent: tracker.0.sent.load(Ordering::SeqCst),
            reason,
        };
        let resp = result.map_err(|e| unavailable(format!("{e:#}")))?;
        let status = resp.status();
        let has_retry_after = resp.headers().contains_key("retry-after");
        let body = resp
            .bytes()
            .await
            .map_err(|e| unavailable(format!("reading the answer: {e}")))?;
        if is_transient_status(status, has_retry_after) {
            return Err(unavailable(format!("answered {status} after every retry")));
        }
        Ok(CallResponse { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env::{Refusal, assert_refused, settings_from_defaults, with_env};

    #[test]
    fn client_defaults_parse_and_every_client_variable_is_read() {
        let retry = settings_from_defaults(RetrySettings::from_env, &[CLIENT_ENV]);
        assert_eq!(retry.connect_timeout, Duration::from_millis(500));
        assert_eq!(retry.max_retries, 6);
    }

    #[test]
    fn retry_settings_outside_their_bounds_are_refused_naming_the_bound() {
        let cases: &[Refusal] = &[
            (&[("HTTP_RETRY_BASE", "0")], "HTTP_RETRY_BASE", "must be at least 1ms"),
            (
                &[("HTTP_RETRY_BASE", "1s"), ("HTTP_RETRY_MAX", "500ms")],
                "HTTP_RETRY_MAX",
                "must be at least HTTP_RETRY_BASE (1s)",
            ),
            (
                &[("HTTP_ATTEMPT_TIMEOUT", "0ms")],
                "HTTP_ATTEMPT_TIMEOUT",
                "must be at least 1ms",
            ),
            (
                &[("HTTP_CONNECT_TIMEOUT", "0")],
                "HTTP_CONNECT_TIMEOUT",
                "must be at least 1ms",
            ),
        ];
        assert_refused(cases, RetrySettings::from_env);
        let (result, _) = with_env(
            &[("HTTP_RETRY_BASE", "1s"), ("HTTP_RETRY_MAX", "1s")],
            RetrySettings::from_env,
        );
        let retry = result.expect("a largest backoff equal to the smallest is taken");
        assert_eq!(
            (retry.base, retry.max),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
    }

    #[test]
    fn only_gateway_errors_and_busy_keys_are_transient() {
        assert!(is_transient_status(StatusCode::BAD_GATEWAY, false));
        assert!(is_transient_status(StatusCode::SERVICE_UNAVAILABLE, false));
        assert!(is_transient_status(StatusCode::GATEWAY_TIMEOUT, false));
        assert!(is_transient_status(StatusCode::CONFLICT, true));
        // A 409 without Retry-After is a business answer (out of stock), never retried.
        assert!(!is_transient_status(StatusCode::CONFLICT, false));
        assert!(!is_transient_status(StatusCode::INTERNAL_SERVER_ERROR, false));
        assert!(!is_transient_status(StatusCode::PAYMENT_REQUIRED, false));
        assert!(!is_transient_status(StatusCode::NOT_FOUND, false));
    }
}
