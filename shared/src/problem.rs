//! RFC 9457 problem+json: the one error shape clients see. Services map their own error enum to a
//! [`Problem`] in a single `match`; the conditions every service shares are [`CommonError`].

use std::sync::OnceLock;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder};
use serde_json::{Map, Value};

pub const PROBLEM_JSON: &str = "application/problem+json";

static TYPE_BASE: OnceLock<String> = OnceLock::new();

/// Sets the base of every problem `type`; called once at start-up (later calls are ignored).
pub fn set_type_base(base: &str) {
    let _ = TYPE_BASE.set(base.to_string());
}

fn type_base() -> &'static str {
    TYPE_BASE
        .get()
        .map(String::as_str)
        .unwrap_or("https://checkout.example/problems/")
}

/// A problem about to be rendered: slug, status, human text and extension members.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            extensions: Map::new(),
            retry_after: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// The JSON body, with `instance` set to the current request id.
    pub fn body(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("type".into(), Value::String(format!("{}{}", type_base(), self.slug)));
        obj.insert("title".into(), Value::String(self.title.into()));
        obj.insert("status".into(), Value::from(self.status.as_u16()));
        obj.insert("detail".into(), Value::String(self.detail.clone()));
        obj.insert("instance".into(), Value::String(crate::request_id::current()));
        for (k, v) in &self.extensions {
            obj.insert(k.clone(), v.clone());
        }
        serde_json::to_vec(&Value::Object(obj)).unwrap_or_default()
    }

    pub fn response(&self) -> HttpResponse {
        let mut builder = HttpResponseBuilder::new(self.status);
        builder.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let Some(secs) = self.retry_after {
            builder.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        builder.body(self.body())
    }
}

/// Conditions every service shares. Each service's error enum wraps this in one variant.
#[derive(Debug, thiserror::Error)]
pub enum CommonError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// With what to fix: [`crate::body::NOT_JSON`] or [`crate::body::ENCODED`].
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(&'static str),
    #[error("Idempotency-Key header missing")]
    IdempotencyKeyMissing,
    /// With what to fix: [`crate::idempotency::KEY_MALFORMED`] or [`crate::idempotency::KEY_REPEATED`].
    #[error("Idempotency-Key header invalid: {0}")]
    IdempotencyKeyInvalid(&'static str),
    #[error("Idempotency-Key in use")]
    IdempotencyKeyInUse { retry_after: u64 },
    #[error("Idempotency-Key reused with a different request")]
    IdempotencyKeyReused,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// An authenticated caller acting on what is not theirs.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("dependency unavailable: {0}")]
    DependencyUnavailable(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] crate::redis_pool::PoolError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CommonError {
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::InvalidRequest(detail) => {
                Problem::new(S::BAD_REQUEST, "invalid-request", "Invalid request", detail.clone())
            }
            Self::PayloadTooLarge { limit } => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                format!("the request body exceeds the limit of {limit} bytes"),
            ),
            Self::UnsupportedMediaType(detail) => Problem::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                *detail,
            ),
            Self::IdempotencyKeyMissing => Problem::new(
                S::BAD_REQUEST,
                "idempotency-key-missing",
                "Idempotency-Key missing",
                "this request changes state and needs an Idempotency-Key header",
            ),
            Self::IdempotencyKeyInvalid(detail) => Problem::new(
                S::BAD_REQUEST,
                "idempotency-key-invalid",
                "Idempotency-Key invalid",
                *detail,
            ),
            Self::IdempotencyKeyInUse { retry_after } => Problem::new(
                S::CONFLICT,
                "idempotency-key-in-use",
                "Idempotency-Key in use",
                "a request with this Idempotency-Key is still being processed; retry later",
            )
            .retry_after(*retry_after),
            Self::IdempotencyKeyReused => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was used with a different request; use a new key for a new request",
            ),
            Self::Unauthorized => Problem::new(
                S::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "this endpoint needs Authorization: Bearer <internal token>",
            ),
            Self::Forbidden(detail) => Problem::new(S::FORBIDDEN, "forbidden", "Forbidden", detail.clone()),
            Self::NotFound(detail) => Problem::new(S::NOT_FOUND, "not-found", "Not found", detail.clone()),
            Self::MethodNotAllowed => Problem::new(
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this method is not supported on this path",
            ),
            Self::DependencyUnavailable(detail) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "Dependency unavailable",
                detail.clone(),
            )
            .retry_after(1),
            // Redis trouble is transient for the client: nothing was committed that the
            // idempotency record does not also know about, so a retry is safe.
            Self::Redis(_) | Self::Pool(_) => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "Dependency unavailable",
                "the data store is unavailable; retry later",
            )
            .retry_after(1),
            Self::Internal(_) => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "internal-error",
                "Internal error",
                "an unexpected error occurred; it has been logged",
            ),
        }
    }

    /// Logs the whole cause once, at the boundary, for the failures a client cannot explain.
    pub fn log(&self) {
        match self {
            Self::Redis(_) | Self::Pool(_) | Self::Internal(_) | Self::DependencyUnavailable(_) => {
                tracing::error!(error = %self, "request failed");
            }
            _ => {}
        }
    }
}

impl actix_web::ResponseError for CommonError {
    fn status_code(&self) -> StatusCode {
        self.problem().status
    }
    fn error_response(&self) -> HttpResponse {
        self.log();
        self.problem().response()
    }
}

/// Turns every error response that is not already problem+json (actix's own 404/405, extractor
/// failures) into one, so a client never sees a plain-text error. A JSON body a handler chose on
/// purpose (the contract's `/ready` answers 503 `{"status": "unavailable", "checks": …}`) is kept.
pub fn problemize<B>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    use actix_web::middleware::ErrorHandlerResponse;
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON) || v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    // RFC 9110: a 405 names the methods the resource has, which the published document lists.
    let allow = (status == StatusCode::METHOD_NOT_ALLOWED)
        .then(|| {
            let ops = res.request().app_data::<actix_web::web::Data<crate::ops::Ops>>()?;
            ops.allow.allow(res.request().path()).map(str::to_string)
        })
        .flatten();
    let problem = match status {
        StatusCode::NOT_FOUND => CommonError::NotFound("no resource at this path".into()).problem(),
        StatusCode::METHOD_NOT_ALLOWED => CommonError::MethodNotAllowed.problem(),
        StatusCode::PAYLOAD_TOO_LARGE => CommonError::PayloadTooLarge {
            limit: crate::body::BODY_LIMIT,
        }
        .problem(),
        s if s.is_client_error() => {
            CommonError::InvalidRequest(s.canonical_reason().unwrap_or("bad request").to_ascii_lowercase()).problem()
        }
        _ => CommonError::Internal(String::new()).problem(),
    };
    let (req, _) = res.into_parts();
    let mut response = problem.response();
    if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    let res = actix_web::dev::ServiceResponse::new(req, response).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

/// Lets a service's error enum, whose `Common` variant wraps [`CommonError`], take Redis and
/// pool errors with `?` (both become 503 `dependency-unavailable` through `CommonError`).
/// A service's one error enum: its problem+json, mapped in one `match`, and the common error it
/// may wrap. [`crate::service_error!`] makes it an actix error; [`crate::idempotency::Outcome::of`]
/// decides what a failed request leaves under its key.
pub trait ServiceError: std::fmt::Debug + std::fmt::Display {
    fn problem(&self) -> Problem;
    /// The [`CommonError`] it wraps, if any.
    fn common(&self) -> Option<&CommonError>;

    /// The error as answered: an unexpected failure's cause chain is logged, once, here.
    fn respond(&self) -> HttpResponse {
        if let Some(e) = self.common() {
            e.log();
        }
        self.problem().response()
    }
}

/// Makes a service's error enum a [`ServiceError`] and an actix error answered as
/// problem+json, convertible from Redis' and the pool's errors. The enum has a
/// `Common(CommonError)` variant and maps itself to problem+json in one inherent
/// `fn to_problem(&self) -> Problem`.
#[macro_export]
macro_rules! service_error {
    ($error:ty) => {
        $crate::redis_errors_into!($error);
        impl $crate::problem::ServiceError for $error {
            fn problem(&self) -> $crate::problem::Problem {
                self.to_problem()
            }
            fn common(&self) -> Option<&$crate::problem::CommonError> {
                match self {
                    Self::Common(e) => Some(e),
                    _ => None,
                }
            }
        }
        impl ::actix_web::ResponseError for $error {
            fn status_code(&self) -> ::actix_web::http::StatusCode {
                $crate::problem::ServiceError::problem(self).status
            }
            fn error_response(&self) -> ::actix_web::HttpResponse {
                $crate::problem::ServiceError::respond(self)
            }
        }
    };
}

#[macro_export]
macro_rules! redis_errors_into {
    ($error:ty) => {
        impl From<::redis::RedisError> for $error {
            fn from(e: ::redis::RedisError) -> Self {
                Self::Common(e.into())
            }
        }
        impl From<$crate::redis_pool::PoolError> for $error {
            fn from(e: $crate::redis_pool::PoolError) -> Self {
                Self::Common(e.into())
            }
        }
    };
}
