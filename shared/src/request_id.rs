//! `X-Request-ID`: taken from the caller when sane, else generated; echoed on every response and
//! used as the `instance` of every problem. Kept in a task-local so errors can reach it, and
//! logged with every event of the request.

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, or `-` outside a request.
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".to_string())
}

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn acceptable(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = REQUEST_ID.scope(id.clone(), next.call(req)).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HeaderName::from_static(HEADER), value);
    }
    Ok(res)
}

/// Runs `fut` with `id` as the current request id, for work spawned off the request task. It
/// also runs inside the span and the request trace that are current *here*, where the request
/// is being served (not where the future is first polled), so spawned work stays in the
/// request's trace.
pub fn scope<F: std::future::Future>(id: String, fut: F) -> impl std::future::Future<Output = F::Output> {
    tracing::Instrument::instrument(
        REQUEST_ID.scope(id, crate::telemetry::carry(fut)),
        tracing::Span::current(),
    )
}
