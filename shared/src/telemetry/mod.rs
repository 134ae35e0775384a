//! Logs and traces, set up once per process by [`init`]; the only module that touches tracing
//! subscribers and OpenTelemetry exporters.
//!
//! - **Logs**: one JSON object per line on stdout (`LOG_FORMAT=json`, the default) with `time`,
//!   `level`, `service`, `message`, `trace_id`, `span_id`, `request_id` and the event's fields;
//!   `text` for humans. `RUST_LOG` filters the logs only, never the traces.
//! - **Traces**: every `tracing` span is an OpenTelemetry span. [`middleware`] continues the
//!   caller's W3C `traceparent` in a server span per request and answers `traceresponse` and
//!   `X-Trace-Id`; the retrying client ([`crate::http_client`]) passes the context on. Spans are
//!   exported over OTLP/HTTP (protobuf) only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, by the SDK's batch processor: a bounded queue
//!   drained on its own thread, so a request never waits for an export, and a full queue drops
//!   spans instead. Without an endpoint no exporter is built, but trace ids are still made and
//!   passed on, so logs of one checkout can be joined across services by `trace_id`.
//!
//! Span names follow the OpenTelemetry conventions: server spans `POST /checkout` (method and
//! route), downstream calls `stock POST /reserve` with one `POST /reserve` child per attempt,
//! Redis operations `redis <operation>` (the order service names its saga steps `saga <step>`).
//!
//! Layout: this file sets up the subscriber and the exporter; `context.rs` carries a request's
//! trace (propagation, the server span middleware); `json_lines.rs` writes the log lines.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TraceFlags, TraceState, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Empty, Field, Visit};
use tracing::{Event, Instrument, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{self, ConfigError, EnvVar, LogFormat};

mod context;
mod json_lines;

use context::*;
pub use context::{
    carry, current_trace_id, extract, inject, mark_error, middleware, note_event, own_trace, span_context,
};
use json_lines::*;

pub const OTEL_SDK_DISABLED: EnvVar = EnvVar {
    name: "OTEL_SDK_DISABLED",
    default: "false",
    help: "`true`: no tracing at all (no trace ids in logs or responses, `traceparent` not passed on).",
};

pub const OTEL_EXPORTER_OTLP_ENDPOINT: EnvVar = EnvVar {
    name: "OTEL_EXPORTER_OTLP_ENDPOINT",
    default: "",
    help: "OTLP/HTTP collector, e.g. `http://jaeger:4318`; spans go to `<url>/v1/traces`. Unset: no spans are built, but trace ids are still made, logged and passed on.",
};

pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: EnvVar = EnvVar {
    name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    default: "",
    help: "Full URL spans are sent to, used as is; wins over OTEL_EXPORTER_OTLP_ENDPOINT.",
};

pub const OTEL_EXPORTER_OTLP_PROTOCOL: EnvVar = EnvVar {
    name: "OTEL_EXPORTER_OTLP_PROTOCOL",
    default: "http/protobuf",
    help: "Only `http/protobuf` is built in; another value turns export off (logged at start-up).",
};

pub const OTEL_SERVICE_NAME: EnvVar = EnvVar {
    name: "OTEL_SERVICE_NAME",
    default: "",
    help: "`service.name` of the spans and `service` of the log lines; unset: the binary's name (`order-service`, …).",
};

pub const OTEL_RESOURCE_ATTRIBUTES: EnvVar = EnvVar {
    name: "OTEL_RESOURCE_ATTRIBUTES",
    default: "",
    help: "More resource attributes, `key=value,…` (e.g. `deployment.environment.name=staging`).",
};

pub const OTEL_TRACES_SAMPLER: EnvVar = EnvVar {
    name: "OTEL_TRACES_SAMPLER",
    default: "parentbased_always_on",
    help: "`always_on`, `always_off`, `traceidratio`, or `parentbased_` one of those: follows the caller's decision.",
};

pub const OTEL_TRACES_SAMPLER_ARG: EnvVar = EnvVar {
    name: "OTEL_TRACES_SAMPLER_ARG",
    default: "1.0",
    help: "Fraction of traces kept by the `traceidratio` samplers, 0.0 to 1.0.",
};

pub const OTEL_BSP_SCHEDULE_DELAY: EnvVar = EnvVar {
    name: "OTEL_BSP_SCHEDULE_DELAY",
    default: "5000",
    help: "Milliseconds between exports of finished spans.",
};

pub const OTEL_BSP_MAX_QUEUE_SIZE: EnvVar = EnvVar {
    name: "OTEL_BSP_MAX_QUEUE_SIZE",
    default: "2048",
    help: "Finished spans waiting for export; past this they are dropped rather than slow a request.",
};

/// The OpenTelemetry variables every service honours. The first four are read here; the others
/// by the OpenTelemetry SDK itself ([`SDK_ENV`]), with the SDK's defaults and parsing.
pub const TELEMETRY_ENV: &[EnvVar] = &[
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_SDK_DISABLED,
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
    OTEL_BSP_SCHEDULE_DELAY,
    OTEL_BSP_MAX_QUEUE_SIZE,
];

/// The variables of [`TELEMETRY_ENV`] that the SDK reads, not [`TraceSettings::from_env`].
pub const SDK_ENV: &[&str] = &[
    OTEL_SERVICE_NAME.name,
    OTEL_RESOURCE_ATTRIBUTES.name,
    OTEL_TRACES_SAMPLER.name,
    OTEL_TRACES_SAMPLER_ARG.name,
    OTEL_BSP_SCHEDULE_DELAY.name,
    OTEL_BSP_MAX_QUEUE_SIZE.name,
];

/// What [`init`] decides from the environment before building anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    pub disabled: bool,
    /// Whether an endpoint is set at all: the exporter resolves which one (signal-specific
    /// first, then the base URL plus `/v1/traces`) exactly as the specification says.
    pub export: bool,
    pub protocol: String,
}

impl TraceSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let endpoint = config::var(&OTEL_EXPORTER_OTLP_ENDPOINT);
        let traces_endpoint = config::var(&OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
        Ok(Self {
            disabled: config::boolean(&OTEL_SDK_DISABLED)?,
            export: !endpoint.is_empty() || !traces_endpoint.is_empty(),
            protocol: config::var(&OTEL_EXPORTER_OTLP_PROTOCOL),
        })
    }
}

/// Flushes the spans still queued when dropped; hold it for the life of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Blocks for at most the SDK's shutdown timeout (5 s) while the batch thread sends
            // what it holds; it exports on its own thread, so this cannot deadlock the runtime.
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing spans at shutdown failed; they are lost");
            }
        }
    }
}

/// The dispatcher the JSON formatter asks for each event's trace and span ids.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

pub fn init(service: &'static str, log_filter: &str, format: LogFormat) -> TelemetryGuard {
    // The OTLP exporter builds its own HTTP client.
    crate::tls::install_crypto();
    // Problems found before the subscriber exists are logged once it does.
    let mut problems: Vec<String> = Vec::new();
    let settings = TraceSettings::from_env().unwrap_or_else(|e| {
        problems.push(format!("{e}; tracing is off"));
        TraceSettings {
            disabled: true,
            export: false,
            protocol: String::new(),
        }
    });
    let resource = resource(service);
    let service_name = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|v| v.to_string())
        .unwrap_or_else(|| service.to_string());
    let provider = (!settings.disabled)
        .then(|| build_provider(&settings, resource, &mut problems))
        .flatten();
    let exporting = provider.is_some();
    CONTEXT_ONLY.store(!settings.disabled && !exporting, Ordering::Relaxed);

    // Checked when the settings were read; the default is only a guard for callers that did not.
    let log_filter = EnvFilter::try_new(log_filter).unwrap_or_else(|_| EnvFilter::new(config::RUST_LOG.default));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if format == LogFormat::Text {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .fmt_fields(NoSpanFields)
            .event_format(JsonLines {
                service: service_name.clone(),
            })
            .with_filter(log_filter)
            .boxed()
    };
    let mut layers = vec![logs];
    if let Some(provider) = &provider {
        let traces = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("checkout"))
            .with_threads(false)
            // Both cost a registry lookup on every poll of every instrumented future, and nothing
            // here reads them: busy/idle times are not looked at in Jaeger, and propagation takes
            // the context from the span explicitly, so no OpenTelemetry context is made current.
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(trace_filter())
            .boxed();
        layers.push(traces);
    }
    if tracing_subscriber::registry().with(layers).try_init().is_ok() {
        tracing::dispatcher::get_default(|d| {
            let _ = DISPATCH.set(d.downgrade());
        });
        for problem in &problems {
            tracing::error!(%problem, "telemetry is not set up as configured");
        }
        tracing::info!(tracing = !settings.disabled, exporting, "telemetry initialised");
    }
    TelemetryGuard { provider }
}

/// What becomes part of a trace: INFO and above, as in the logs, but never the exporter's own
/// HTTP client (each export would make spans to export) nor the access lines (they repeat the
/// server span). A `Targets` filter, unlike a closure, is decided once per callsite, so the many
/// `trace!` events inside hyper cost nothing.
fn trace_filter() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_targets(["hyper", "h2", "reqwest", "opentelemetry", "access"].map(|target| (target, LevelFilter::OFF)))
}

/// The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, SDK attributes), named after
/// the binary unless the environment names it: the SDK's fallback, `unknown_service`, is useless.
fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name(service).build()
    }
}

/// The provider, when spans have somewhere to go: without an exporter none is built (see
/// [`CONTEXT_ONLY`]). The sampler and the batch settings come from the environment through the
/// SDK's own defaults.
fn build_provider(
    settings: &TraceSettings,
    resource: Resource,
    problems: &mut Vec<String>,
) -> Option<SdkTracerProvider> {
    if !settings.export {
        return None;
    }
    if settings.protocol != "http/protobuf" {
        problems.push(format!(
            "{} {:?} is not built in (only http/protobuf); spans are not exported",
            OTEL_EXPORTER_OTLP_PROTOCOL.name, settings.protocol
        ));
        return None;
    }
    use opentelemetry_otlp::WithExportConfig as _;
    match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
    {
        Ok(exporter) => Some(
            SdkTracerProvider::builder()
                .with_resource(resource)
                .with_batch_exporter(exporter)
                .build(),
        ),
        Err(e) => {
            problems.push(format!(
                "the OTLP exporter could not be built ({e}); spans are not exported"
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn without_an_endpoint_nothing_is_exported_and_every_listed_variable_is_read() {
        let (settings, read) = crate::testing::env::with_defaults_only(TraceSettings::from_env);
        let settings = settings.expect("every default parses");
        assert!(!settings.disabled);
        assert!(!settings.export);
        assert_eq!(settings.protocol, "http/protobuf");
        let read: BTreeSet<_> = read.into_iter().chain(SDK_ENV.iter().copied()).collect();
        let listed: BTreeSet<_> = TELEMETRY_ENV.iter().map(|v| v.name).collect();
        assert_eq!(read, listed);
    }

    #[test]
    fn traceresponse_is_version_trace_span_and_flags() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        assert_eq!(
            traceresponse(&sc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    /// The span context `extract` reads from a request carrying `traceparent`.
    fn remote(traceparent: &str) -> SpanContext {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("traceparent", traceparent))
            .to_http_request();
        extract(req.headers()).span().span_context().clone()
    }

    #[test]
    fn a_request_served_without_spans_continues_its_callers_trace_under_an_id_of_its_own() {
        let caller = remote("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let own = request_trace(&caller);
        assert_eq!(own.trace_id(), caller.trace_id());
        assert_eq!(
            own.trace_flags(),
            caller.trace_flags(),
            "the caller's sampling decision stands"
        );
        assert_ne!(own.span_id(), caller.span_id());
        assert!(own.is_valid() && !own.is_remote());

        let fresh = request_trace(&SpanContext::empty_context());
        assert!(
            fresh.is_valid() && fresh.is_sampled(),
            "a new trace, sampled as by default"
        );
        assert_ne!(
            fresh.trace_id(),
            request_trace(&SpanContext::empty_context()).trace_id()
        );
    }

    #[tokio::test]
    async fn without_spans_downstream_calls_carry_the_requests_trace_and_spawned_work_keeps_it() {
        let own = request_trace(&SpanContext::empty_context());
        let sent = |own: &SpanContext| {
            let mut headers = http::HeaderMap::new();
            inject(&Span::none(), &mut headers);
            let traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            assert_eq!(traceparent, Some(format!("00-{}-{}-01", own.trace_id(), own.span_id())));
        };
        REQUEST_TRACE.scope(Some(own.clone()), async { sent(&own) }).await;
        // Spawned where the request is served, polled where its trace is not current.
        let spawned = REQUEST_TRACE.sync_scope(Some(own.clone()), || {
            tokio::spawn(carry(async { current_request_trace() }))
        });
        assert_eq!(spawned.await.ok().flatten(), Some(own));

        let mut outside = http::HeaderMap::new();
        inject(&Span::none(), &mut outside);
        assert!(outside.is_empty(), "no trace, no traceparent: {outside:?}");
    }

    /// Collects what a subscriber writes, line by line.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().map(|b| b.clone()).unwrap_or_default()).unwrap_or_default()
        }
    }

    /// A subscriber writing [`JsonLines`] of service `test-service` into what it returns.
    fn json_lines_subscriber() -> (Captured, impl Subscriber + Send + Sync) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines {
                service: "test-service".into(),
            })
            .with_writer(move || writer.clone())
            .finish();
        (captured, subscriber)
    }

    #[test]
    fn json_lines_carry_the_fixed_members_and_the_event_fields() {
        let (captured, subscriber) = json_lines_subscriber();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                order_id = "ord_1",
                attempts = 3,
                service = "test-service",
                level = "x",
                "it happened"
            );
        });
        let text = captured.text();
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(line["message"], "it happened");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["service"], "test-service");
        assert_eq!(line["order_id"], "ord_1");
        assert_eq!(line["attempts"], 3);
        assert!(line.get("time").is_some_and(Value::is_string));
        // A field that repeats a fixed member is dropped; one that contradicts it is renamed.
        assert!(line.get("field.service").is_none());
        assert_eq!(line["field.level"], "x");
        assert_eq!(text.lines().count(), 1);
    }

    #[tokio::test]
    async fn without_spans_json_lines_name_the_trace_of_the_request_they_were_logged_in() {
        let (captured, subscriber) = json_lines_subscriber();
        let own = request_trace(&SpanContext::empty_context());
        let _default = tracing::subscriber::set_default(subscriber);
        REQUEST_TRACE
            .scope(Some(own.clone()), async { tracing::warn!("inside") })
            .await;
        tracing::warn!("outside");
        let text = captured.text();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["trace_id"], own.trace_id().to_string());
        assert_eq!(lines[0]["span_id"], own.span_id().to_string());
        assert!(lines[1].get("trace_id").is_none(), "{}", lines[1]);
    }

    #[test]
    fn a_traceparent_header_is_extracted() {
        let sc = remote("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }
}
