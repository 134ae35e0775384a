//! A request's trace: W3C propagation in and out, the server span around each request, and
//! the trace a request keeps when no span is recorded.

use super::*;

/// Set by [`init`] when tracing is on but nothing is exported. Spans would then be built, ended
/// and dropped unread; building them was about a fifth of the services' CPU per checkout
/// (docs/benchmark.md).
/// So no OpenTelemetry span is made at all; the request's trace context lives in
/// [`REQUEST_TRACE`] instead, and trace ids are still made, answered, logged and passed on.
pub(super) static CONTEXT_ONLY: AtomicBool = AtomicBool::new(false);

tokio::task_local! {
    /// The trace context of the request being served when no span holds it ([`CONTEXT_ONLY`]):
    /// the one its response headers, its log lines and its downstream calls name.
    pub(super) static REQUEST_TRACE: Option<SpanContext>;
}

/// The context of a request served without spans: the caller's trace (and its sampling
/// decision) when it sent one, else a new sampled trace, as the default sampler
/// (`parentbased_always_on`) decides; and an id of its own for this service's part.
pub(super) fn request_trace(parent: &SpanContext) -> SpanContext {
    let ids = RandomIdGenerator::default();
    if parent.is_valid() {
        SpanContext::new(
            parent.trace_id(),
            ids.new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        )
    } else {
        SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }
}

/// [`request_trace`] when no spans are built ([`CONTEXT_ONLY`]); `None` when spans carry the
/// trace themselves.
pub(super) fn request_trace_without_spans(parent: &SpanContext) -> Option<SpanContext> {
    CONTEXT_ONLY.load(Ordering::Relaxed).then(|| request_trace(parent))
}

pub(super) fn current_request_trace() -> Option<SpanContext> {
    REQUEST_TRACE.try_with(Clone::clone).ok().flatten()
}

/// The trace id of the request being served here, as `X-Trace-Id` shows it: for records that
/// tie what they record to its trace (payment's events).
pub fn current_trace_id() -> Option<String> {
    current_request_trace().map(|sc| sc.trace_id().to_string())
}

/// Runs `fut` in the request trace current here: for work spawned off the request task
/// ([`crate::request_id::scope`]).
pub fn carry<F: std::future::Future>(fut: F) -> impl std::future::Future<Output = F::Output> {
    REQUEST_TRACE.scope(current_request_trace(), fut)
}

/// Runs `fut`, work no request started (the order service's recovery worker resuming a
/// checkout), as a trace of its own under `span`, which must be a root (`parent: None`):
/// exported as such when spans are, else under a new request trace ([`CONTEXT_ONLY`]), so that
/// its downstream calls and log lines, in every service, still name one trace.
pub fn own_trace<F: std::future::Future>(span: Span, fut: F) -> impl std::future::Future<Output = F::Output> {
    let trace = request_trace_without_spans(&SpanContext::empty_context());
    REQUEST_TRACE.scope(trace, fut.instrument(span))
}

// ----- propagation -----

pub(super) struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

pub(super) struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) into outgoing headers; without
/// spans, the request's ([`CONTEXT_ONLY`]).
pub fn inject(span: &Span, headers: &mut http::HeaderMap) {
    let mut cx = span.context();
    if !cx.span().span_context().is_valid()
        && let Some(sc) = current_request_trace()
    {
        cx = Context::new().with_remote_span_context(sc);
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The trace context a request arrived with (an empty context when it has none or a bad one).
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The valid OpenTelemetry span context behind a `tracing` span, if tracing is on.
pub fn span_context(span: &Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// W3C Trace Context Level 2 `traceresponse`: `00-<trace id>-<span id>-<flags>`.
pub(super) fn traceresponse(sc: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

// ----- spans -----

/// Operations endpoints are polled by health checks and scrapers every few seconds; tracing
/// each poll would bury the checkouts in Jaeger. They are traced only when the caller sends a
/// `traceparent`, i.e. when someone is following that very request.
pub(super) const QUIET_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// One server span per request, continuing the caller's trace; answers `traceresponse` and
/// `X-Trace-Id` so the client can find the trace. Sits inside the request-id middleware, so
/// the span carries the request id.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let parent = extract(req.headers());
    if QUIET_PATHS.contains(&req.path()) && !parent.span().span_context().is_valid() {
        return next.call(req).await;
    }
    let method = req.method().as_str().to_string();
    // The route pattern (`/orders/{orderId}`), not the path: span names must stay few.
    let route = req.match_pattern();
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.clone(),
    };
    let span = tracing::info_span!(
        "http request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = %method,
        http.route = Empty,
        url.path = %req.path(),
        request_id = %crate::request_id::current(),
        http.response.status_code = Empty,
        error.type = Empty,
    );
    if let Some(route) = &route {
        span.record("http.route", route.as_str());
    }
    let trace = request_trace_without_spans(parent.span().span_context());
    // Before anything enters the span: the parent cannot change once the span has started.
    let _ = span.set_parent(parent);
    let sc = trace.clone().or_else(|| span_context(&span));
    let started = std::time::Instant::now();
    let path = req.path().to_string();
    let result = REQUEST_TRACE
        .scope(trace.clone(), next.call(req).instrument(span.clone()))
        .await;
    let (status, error) = match &result {
        Ok(res) => (res.status(), res.response().error().map(ToString::to_string)),
        Err(e) => (e.as_response_error().status_code(), Some(e.to_string())),
    };
    span.record("http.response.status_code", status.as_u16());
    // Server convention: only 5xx is an error; a 4xx is the client's problem (or a business
    // answer such as out-of-stock) and the server did its job.
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
        if let Some(error) = &error {
            span.record("otel.status_description", error.as_str());
        }
    }
    // The access line: without it a checkout that went well would leave nothing to find by its
    // trace id in the logs. Target `access`, so `RUST_LOG=info,access=warn` silences it.
    REQUEST_TRACE.sync_scope(trace, || {
        span.in_scope(|| {
            tracing::info!(
                target: "access",
                method = %method,
                path = %path,
                status = status.as_u16(),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request served"
            )
        })
    });
    let mut res = result?;
    if let Some(sc) = sc {
        let headers = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&traceresponse(&sc)) {
            headers.insert(HeaderName::from_static("traceresponse"), v);
        }
        if let Ok(v) = HeaderValue::from_str(&sc.trace_id().to_string()) {
            headers.insert(HeaderName::from_static("x-trace-id"), v);
        }
    }
    Ok(res)
}

/// Marks `span` as failed: error status with `reason`, and `error.type` (a short, stable kind
/// such as `unavailable` or `declined`). Works on any span, whatever fields it declared.
pub fn mark_error(span: &Span, error_type: &str, reason: impl fmt::Display) {
    span.set_attribute("error.type", error_type.to_string());
    span.set_status(Status::error(reason.to_string()));
}

/// Records a business event (`checkout completed`, `compensation release`, …) on the current
/// span, so the trace shows where it happened; compensations also mark the span with
/// `saga.compensated = <step>`. Called by [`crate::metrics::event`].
pub fn note_event(kind: &str, outcome: &str) {
    let span = Span::current();
    if span.is_none() {
        return;
    }
    span.add_event(
        format!("{kind} {outcome}"),
        vec![
            KeyValue::new("event.kind", kind.to_string()),
            KeyValue::new("event.outcome", outcome.to_string()),
        ],
    );
    if kind == "compensation" {
        span.set_attribute("saga.compensated", outcome.to_string());
    }
}
