//! An OTLP/HTTP trace receiver for the e2e tests: it stands where Jaeger's port 4318 would, takes
//! `POST /v1/traces` (protobuf, decoded with opentelemetry-proto) from the services and keeps every
//! span, so a test can ask what one checkout's trace looks like. Plain HTTP/1.1 over tokio, with
//! keep-alive and chunked bodies, which is all the exporter's client uses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Requests larger than this are refused: the services' batches are far smaller.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// `service.name` of the resource that exported it.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: Kind,
    /// Every attribute as text (numbers and booleans as written).
    pub attributes: BTreeMap<String, String>,
    /// Names of the span's events (`compensation release`, …).
    pub events: Vec<String>,
    /// Status ERROR.
    pub error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
    Other,
}

impl CollectedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The spans of one trace, with the lookups the tests need.
#[derive(Debug, Clone)]
pub struct Trace(pub Vec<CollectedSpan>);

impl Trace {
    pub fn services(&self) -> BTreeSet<String> {
        self.0.iter().map(|s| s.service.clone()).collect()
    }

    /// Every span of `service` named `name`.
    pub fn named(&self, service: &str, name: &str) -> Vec<&CollectedSpan> {
        self.0
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect()
    }

    /// The one span of `service` named `name`; panics, showing the trace, if there is not exactly one.
    pub fn one(&self, service: &str, name: &str) -> &CollectedSpan {
        let found = self.named(service, name);
        assert_eq!(
            found.len(),
            1,
            "expected one `{name}` span from {service}, found {}:\n{}",
            found.len(),
            self.outline()
        );
        found[0]
    }

    pub fn parent_of(&self, span: &CollectedSpan) -> Option<&CollectedSpan> {
        self.0.iter().find(|s| s.span_id == span.parent_span_id)
    }

    pub fn children_of(&self, span: &CollectedSpan) -> Vec<&CollectedSpan> {
        self.0.iter().filter(|s| s.parent_span_id == span.span_id).collect()
    }

    /// True when `ancestor` is on the path from `span` to the root.
    pub fn descends_from(&self, span: &CollectedSpan, ancestor: &CollectedSpan) -> bool {
        let mut current = span;
        // Bounded: a malformed trace with a cycle must not hang the test.
        for _ in 0..self.0.len() {
            match self.parent_of(current) {
                Some(parent) if parent.span_id == ancestor.span_id => return true,
                Some(parent) => current = parent,
                None => return false,
            }
        }
        false
    }

    /// The trace as an indented tree, for failure messages.
    pub fn outline(&self) -> String {
        let mut out = String::new();
        let ids: BTreeSet<&str> = self.0.iter().map(|s| s.span_id.as_str()).collect();
        let mut roots: Vec<&CollectedSpan> = self
            .0
            .iter()
            .filter(|s| !ids.contains(s.parent_span_id.as_str()))
            .collect();
        roots.sort_by(|a, b| a.name.cmp(&b.name));
        for root in roots {
            self.outline_into(root, 0, &mut out);
        }
        out
    }

    fn outline_into(&self, span: &CollectedSpan, depth: usize, out: &mut String) {
        if depth > self.0.len() {
            return;
        }
        out.push_str(&format!(
            "{}{} [{}] {:?}{}{}\n",
            "  ".repeat(depth),
            span.name,
            span.service,
            span.kind,
            if span.error { " ERROR" } else { "" },
            if span.events.is_empty() {
                String::new()
            } else {
                format!(" events={:?}", span.events)
            }
        ));
        for child in self.children_of(span) {
            self.outline_into(child, depth + 1, out);
        }
    }
}

pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    accept: JoinHandle<()>,
}

impl Collector {
    /// Listens on a free loopback port until dropped.
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("the OTLP receiver's address");
        let spans: Arc<Mutex<Vec<CollectedSpan>>> = Arc::default();
        let sink = spans.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, sink.clone()));
            }
        });
        Collector { addr, spans, accept }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Environment that makes a service export here, every 100 ms instead of every 5 s.
    pub fn service_env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ]
    }

    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn trace(&self, trace_id: &str) -> Trace {
        Trace(self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect())
    }

    /// Waits until `done` holds for the trace's spans (exports arrive in batches, per service),
    /// then waits a little longer so that late spans of the same trace are in too. Panics with
    /// what arrived after `timeout`.
    pub async fn wait_for_trace(&self, trace_id: &str, timeout: Duration, done: impl Fn(&Trace) -> bool) -> Trace {
        let started = Instant::now();
        loop {
            let trace = self.trace(trace_id);
            if done(&trace) {
                // Two export periods: anything still queued in a service has been sent by then.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.trace(trace_id);
            }
            if started.elapsed() > timeout {
                panic!(
                    "trace {trace_id} incomplete after {timeout:?}; it has:\n{}\nall trace ids seen: {:?}",
                    trace.outline(),
                    self.spans().iter().map(|s| s.trace_id.clone()).collect::<BTreeSet<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One connection: requests one after another (keep-alive) until the client closes it.
async fn serve(mut stream: TcpStream, sink: Arc<Mutex<Vec<CollectedSpan>>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some((path, body)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let status = if path != "/v1/traces" {
            "404 Not Found"
        } else {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    if let Ok(mut spans) = sink.lock() {
                        spans.extend(flatten(request));
                    }
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        };
        // An empty ExportTraceServiceResponse encodes to zero bytes.
        let response =
            format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request's path and body; `None` when the connection closes or is malformed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(stream, buf).await?
    } else {
        let len = content_length.unwrap_or(0);
        if len > MAX_BODY {
            return None;
        }
        while buf.len() < len {
            if !fill(stream, buf).await {
                return None;
            }
        }
        buf.drain(..len).collect()
    };
    Some((path, body))
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if !fill(stream, buf).await {
                return None;
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if body.len() + size > MAX_BODY {
            return None;
        }
        // The chunk and its CRLF; the last (empty) chunk is followed by the final CRLF.
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                return None;
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
        if size == 0 {
            return Some(body);
        }
    }
}

/// Reads more bytes; false at end of stream or on error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<CollectedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(CollectedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: match SpanKind::try_from(span.kind) {
                        Ok(SpanKind::Internal) => Kind::Internal,
                        Ok(SpanKind::Server) => Kind::Server,
                        Ok(SpanKind::Client) => Kind::Client,
                        _ => Kind::Other,
                    },
                    attributes: attributes(&span.attributes),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    error: status.code == StatusCode::Error as i32,
                    name: span.name,
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default()))
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
