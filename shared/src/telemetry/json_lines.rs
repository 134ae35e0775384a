//! JSON log lines: one object per line, with the trace and span ids of the event's span.

use super::*;

/// What the JSON log layer keeps of a span's fields: nothing. The fmt layer formats every new
/// span's fields into a string for the event formatter; [`JsonLines`] never prints them (the
/// ids and the request id come from elsewhere). At `RUST_LOG=info` under load, the log layer's
/// share of the order service's profile was 9.9 % with that formatting and 4.4 % without it.
pub(super) struct NoSpanFields;

impl<'writer> FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(&self, _: Writer<'writer>, _: R) -> fmt::Result {
        Ok(())
    }
}

/// One JSON object per event. The fixed members come first and win over an event field of the
/// same name (kept as `field.<name>` unless it says the same), so `jq .trace_id` is always the
/// trace.
pub(super) struct JsonLines {
    pub(super) service: String,
}

pub(super) const FIXED: [&str; 8] = [
    "time",
    "level",
    "service",
    "message",
    "target",
    "trace_id",
    "span_id",
    "request_id",
];

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("time".into(), Value::String(crate::time::now_rfc3339()));
        line.insert("level".into(), Value::String(meta.level().as_str().to_string()));
        line.insert("service".into(), Value::String(self.service.clone()));
        let message = fields.0.remove("message").unwrap_or(Value::String(String::new()));
        line.insert("message".into(), message);
        line.insert("target".into(), Value::String(meta.target().to_string()));
        let (span, ids) = event_span(event);
        let ids =
            ids.or_else(|| current_request_trace().map(|sc| (sc.trace_id().to_string(), sc.span_id().to_string())));
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".into(), Value::String(trace_id));
            line.insert("span_id".into(), Value::String(span_id));
        }
        let request_id = crate::request_id::current();
        if request_id != "-" {
            line.insert("request_id".into(), Value::String(request_id));
        }
        if let Some(span) = span {
            line.insert("span".into(), Value::String(span.to_string()));
        }
        for (name, value) in fields.0 {
            match line.get(&name) {
                // `service = "stock-service"` on an event says what the line already says.
                Some(fixed) if *fixed == value => {}
                Some(_) => {
                    line.insert(format!("field.{name}"), value);
                }
                None if FIXED.contains(&name.as_str()) => {
                    line.insert(format!("field.{name}"), value);
                }
                None => {
                    line.insert(name, value);
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The name of the span an event happened in, and the trace and span ids of the innermost span
/// OpenTelemetry knows around it (spans filtered out of traces have no ids). Looked up in the
/// registry itself, not through the log layer's context: that one holds only the spans RUST_LOG
/// lets through, so under `RUST_LOG=warn` a WARN line inside a request would see none of the
/// INFO spans it runs in and lose its trace id, the one thing that ties it to the checkout.
pub(super) fn event_span(event: &Event<'_>) -> (Option<&'static str>, Option<(String, String)>) {
    let Some(dispatch) = DISPATCH.get().and_then(WeakDispatch::upgrade) else {
        return (None, None);
    };
    let current = dispatch.current_span();
    let id = match event.parent() {
        Some(id) => Some(id),
        None if event.is_contextual() => current.id(),
        None => None,
    };
    let Some(span) = id.and_then(|id| dispatch.downcast_ref::<Registry>()?.span(id)) else {
        return (None, None);
    };
    let ids = span.scope().find_map(|s| otel_ids(&s.id(), &dispatch));
    (Some(span.name()), ids)
}

pub(super) fn otel_ids(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[derive(Default)]
pub(super) struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, as the boundary logs it once: "outer: cause: root cause".
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        self.0.insert(field.name().to_string(), Value::String(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
}
