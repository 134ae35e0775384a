//! Traces, metrics and logs of a checkout, seen from outside: the services export to an OTLP/HTTP
//! receiver in the test ([`tests_e2e::otlp`]), `/metrics` is read through nginx, and the services'
//! JSON log lines are read from their log files.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tests_e2e::metrics::{moved, scrape, value};
use tests_e2e::otlp::{CollectedSpan, Collector, Kind, Trace};
use tests_e2e::{Fault, FaultPlan, Service, Stack, StackOptions, new_key as key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ORDER: &str = "order-service";
const STOCK: &str = "stock-service";
const PAYMENT: &str = "payment-service";
const WAIT: Duration = Duration::from_secs(10);

/// A stack whose three services export to `collector`, with `more` applied to the options.
async fn traced_stack(collector: &Collector, more: impl FnOnce(&mut StackOptions)) -> Stack {
    let mut options = StackOptions::default();
    for env in [&mut options.order_env, &mut options.stock_env, &mut options.payment_env] {
        env.extend(collector.service_env());
    }
    more(&mut options);
    let stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    stack
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("response has no {name} header: {headers:?}"))
        .to_string()
}

/// The client span of one attempt, its call span above it, and the callee's server span below.
struct Hop<'a> {
    call: &'a CollectedSpan,
    attempts: Vec<&'a CollectedSpan>,
    server: &'a CollectedSpan,
}

/// Finds the order's call to `callee`'s `path` and checks the links between its spans: one call
/// span (client) with attempt spans (client) as children, and the callee's server span as the
/// child of the last attempt.
fn hop<'a>(trace: &'a Trace, callee: &str, dependency: &str, path: &str) -> Hop<'a> {
    let call = trace.one(ORDER, &format!("{dependency} POST {path}"));
    assert_eq!(call.kind, Kind::Client, "{}", trace.outline());
    let mut attempts = trace.children_of(call);
    attempts.sort_by_key(|a| a.attr("attempt").and_then(|n| n.parse::<u32>().ok()));
    assert!(
        !attempts.is_empty(),
        "no attempt under {}:\n{}",
        call.name,
        trace.outline()
    );
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.name, format!("POST {path}"), "{}", trace.outline());
        assert_eq!(attempt.kind, Kind::Client);
        assert_eq!(attempt.attr("attempt"), Some((i + 1).to_string().as_str()));
    }
    let server = trace.one(callee, &format!("POST {path}"));
    assert_eq!(server.kind, Kind::Server);
    let last = attempts.last().map(|a| a.span_id.as_str());
    assert_eq!(
        Some(server.parent_span_id.as_str()),
        last,
        "{callee}'s server span should hang under the order's last attempt:\n{}",
        trace.outline()
    );
    Hop { call, attempts, server }
}

#[tokio::test]
async fn one_checkout_through_nginx_is_one_trace_across_the_three_services() {
    let collector = Collector::start().await;
    let stack = traced_stack(&collector, |_| {}).await;

    let (status, headers, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 2})).await;

    assert_eq!(status, 200, "{body}");
    let trace_id = header(&headers, "x-trace-id");
    let traceresponse = header(&headers, "traceresponse");
    let parts: Vec<&str> = traceresponse.split('-').collect();
    assert_eq!(parts.len(), 4, "traceresponse {traceresponse}");
    assert_eq!((parts[0], parts[1]), ("00", trace_id.as_str()));
    let trace = collector
        .wait_for_trace(&trace_id, WAIT, |t| {
            !t.named(ORDER, "POST /checkout").is_empty()
                && !t.named(STOCK, "POST /complete").is_empty()
                && !t.named(PAYMENT, "POST /charge").is_empty()
        })
        .await;

    let services: BTreeSet<String> = [ORDER, STOCK, PAYMENT].map(String::from).into();
    assert_eq!(trace.services(), services);
    let root = trace.one(ORDER, "POST /checkout");
    assert_eq!(root.kind, Kind::Server);
    assert_eq!(
        root.parent_span_id, "",
        "no traceparent was sent: the checkout starts the trace"
    );
    assert_eq!(parts[2], root.span_id, "traceresponse names the order's server span");
    assert_eq!(root.attr("http.response.status_code"), Some("200"));
    assert_eq!(root.attr("http.route"), Some("/checkout"));
    assert_eq!(root.attr("request_id"), Some(header(&headers, "x-request-id").as_str()));
    for (callee, dependency, path) in [
        (STOCK, "stock", "/reserve"),
        (PAYMENT, "payment", "/charge"),
        (STOCK, "stock", "/complete"),
    ] {
        let hop = hop(&trace, callee, dependency, path);
        assert_eq!(hop.attempts.len(), 1, "{}", trace.outline());
        assert_eq!(hop.call.attr("attempts"), Some("1"));
        assert_eq!(
            hop.attempts[0].attr("http.response.status_code"),
            hop.server.attr("http.response.status_code")
        );
        assert!(trace.descends_from(hop.call, root), "{}", trace.outline());
    }
    // On one Redis node stock takes the request's key in the reserve's own script.
    for (service, operation) in [
        (ORDER, "redis idempotency.begin"),
        (STOCK, "redis stock.reserve"),
        (PAYMENT, "redis idempotency.begin"),
    ] {
        let begin = trace.named(service, operation);
        assert!(
            !begin.is_empty(),
            "{service} has no {operation} span:\n{}",
            trace.outline()
        );
        assert!(
            begin
                .iter()
                .all(|s| s.kind == Kind::Client && s.attr("db.system.name") == Some("redis"))
        );
    }
    // Every request the services served, bar the test's set-up, belongs to this one trace.
    let stray: Vec<String> = collector
        .spans()
        .into_iter()
        .filter(|s| s.kind == Kind::Server && s.trace_id != trace_id && s.name != "PUT /items/{id}")
        .map(|s| format!("{} [{}] in {}", s.name, s.service, s.trace_id))
        .collect();
    assert!(stray.is_empty(), "server spans outside the checkout's trace: {stray:?}");
}

/// A checkout of item 1 sent with a caller's `traceparent`: the response, and the caller's
/// trace id and span id.
async fn checkout_in_a_callers_trace(stack: &Stack) -> (reqwest::Response, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let parent_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let resp = stack
        .client()
        .post(stack.url("/order/checkout"))
        .header("idempotency-key", key())
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .json(&json!({"itemId": 1, "quantity": 1}))
        .send()
        .await
        .expect("checkout");
    (resp, trace_id, parent_id)
}

/// The lines of `log` that are JSON objects.
fn json_lines(log: &str) -> impl Iterator<Item = Value> + '_ {
    log.lines().filter_map(|l| serde_json::from_str(l).ok())
}

/// Asserts that each of `services` logged at least one line naming trace `trace_id`.
fn assert_each_logged_in_trace(stack: &Stack, services: &[Service], trace_id: &str) {
    for &service in services {
        let log = stack.logs(service);
        assert!(
            json_lines(&log).any(|l| l["trace_id"] == trace_id),
            "{service:?} logged nothing with trace id {trace_id}:\n{log}"
        );
    }
}

/// Options for a stack whose three services log JSON lines.
fn json_logs() -> StackOptions {
    let json = || vec![("LOG_FORMAT".to_string(), "json".to_string())];
    StackOptions {
        order_env: json(),
        stock_env: json(),
        payment_env: json(),
        ..StackOptions::default()
    }
}

#[tokio::test]
async fn a_callers_traceparent_is_continued_through_nginx() {
    let collector = Collector::start().await;
    let stack = traced_stack(&collector, |_| {}).await;
    let (resp, trace_id, parent_id) = checkout_in_a_callers_trace(&stack).await;

    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "x-trace-id"), trace_id);
    let trace = collector
        .wait_for_trace(&trace_id, WAIT, |t| !t.named(STOCK, "POST /complete").is_empty())
        .await;
    assert_eq!(trace.one(ORDER, "POST /checkout").parent_span_id, parent_id);
    assert_eq!(trace.services().len(), 3, "{}", trace.outline());
}

#[tokio::test]
async fn without_a_collector_a_callers_trace_still_names_the_checkout_in_every_services_logs() {
    // No exporter: no spans are built, but the ids must still be answered, logged and passed on.
    let stack = Stack::launch(json_logs()).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let (resp, trace_id, parent_id) = checkout_in_a_callers_trace(&stack).await;

    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "x-trace-id"), trace_id);
    let traceresponse = header(resp.headers(), "traceresponse");
    let parts: Vec<&str> = traceresponse.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceresponse}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id.as_str(), "01"));
    assert_eq!(parts[2].len(), 16, "{traceresponse}");
    assert_ne!(
        parts[2],
        parent_id.as_str(),
        "the order service's part has an id of its own"
    );
    assert_each_logged_in_trace(&stack, &[Service::Order, Service::Stock, Service::Payment], &trace_id);
}

/// Options for a stack where the order service dies mid-checkout and its recovery worker
/// finishes the checkout within seconds: fault proxies (to hold the reserve), short leases.
fn recovery_options(options: &mut StackOptions) {
    options.fault_proxies = true;
    options.order_env.extend(
        [
            ("IDEMPOTENCY_LEASE", "2s"),
            ("RECOVERY_INTERVAL", "200ms"),
            ("HTTP_ATTEMPT_TIMEOUT", "10s"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
}

/// Kills the order service while a checkout's reserve is held at the stock proxy and starts it
/// again; its recovery worker then finishes the checkout, outside any request. Returns once
/// the restarted order service has logged the checkout's end, with that log line.
async fn checkout_finished_by_recovery(stack: &mut Stack) -> String {
    let stock = stack.proxy(Service::Stock);
    stock.set(
        FaultPlan::always(Fault::Delay(Duration::from_millis(1500)))
            .on_path("/reserve")
            .times(1),
    );
    let checkout = stack
        .client()
        .post(stack.url("/order/checkout"))
        .header("idempotency-key", key())
        .json(&json!({"itemId": 1, "quantity": 1}))
        .send();
    let sent = tokio::spawn(checkout);
    stock.wait_until_holding().await;
    stack.kill(Service::Order).await;
    let _ = sent.await;
    let before = stack.logs(Service::Order).len();
    stack.start(Service::Order).await;
    let waited = std::time::Instant::now();
    loop {
        let log = stack.logs(Service::Order);
        if let Some(line) = log[before..]
            .lines()
            .find(|l| l.contains("recovery: checkout completed"))
        {
            return line.to_string();
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "recovery never completed the checkout:\n{}",
            &log[before..]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_a_collector_a_checkout_finished_by_recovery_is_one_trace_in_every_services_logs() {
    let mut options = json_logs();
    recovery_options(&mut options);
    let mut stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let ended: Value = serde_json::from_str(&checkout_finished_by_recovery(&mut stack).await).expect("a JSON line");
    let trace_id = ended["trace_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(trace_id.len(), 32, "the recovery's lines name a trace: {ended}");
    let order_id = ended["order_id"].as_str().expect("order_id");
    let order_log = stack.logs(Service::Order);
    assert!(
        json_lines(&order_log).any(|l| l["trace_id"] == trace_id.as_str()
            && l["order_id"] == order_id
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("recovery: resuming"))),
        "the resumption and the end are one trace:\n{order_log}"
    );
    assert_each_logged_in_trace(&stack, &[Service::Stock, Service::Payment], &trace_id);
}

#[tokio::test]
async fn a_checkout_finished_by_recovery_is_one_trace_rooted_in_its_recovery() {
    let collector = Collector::start().await;
    let mut stack = traced_stack(&collector, recovery_options).await;
    checkout_finished_by_recovery(&mut stack).await;
    let waited = std::time::Instant::now();
    let recovered = loop {
        let found = collector
            .spans()
            .into_iter()
            .find(|s| s.service == ORDER && s.name == "recover checkout");
        if let Some(span) = found {
            break span;
        }
        assert!(waited.elapsed() < WAIT, "no span for the recovery was exported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(recovered.parent_span_id.is_empty(), "a root: {recovered:?}");
    let trace = collector
        .wait_for_trace(&recovered.trace_id, WAIT, |t| {
            !t.named(STOCK, "POST /complete").is_empty() && !t.named(PAYMENT, "POST /charge").is_empty()
        })
        .await;
    for (service, name) in [(STOCK, "POST /complete"), (PAYMENT, "POST /charge")] {
        let served = trace.one(service, name);
        assert!(trace.descends_from(served, &recovered), "{}", trace.outline());
    }
    let step = trace.one(ORDER, "saga complete");
    assert!(trace.descends_from(step, &recovered), "{}", trace.outline());
}

/// A loopback proxy in front of stock that answers the first request 503 itself (as a gateway
/// in trouble would) and forwards every later connection, so a checkout's first stock attempt
/// fails and its retry gets through: exactly two attempts, whatever the backoff draws.
async fn stock_proxy_failing_once() -> (String, Arc<OnceLock<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the stock proxy");
    let url = format!("http://{}", listener.local_addr().expect("proxy address"));
    let target: Arc<OnceLock<u16>> = Arc::default();
    let upstream = target.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            if std::mem::take(&mut first) {
                // The whole request is read first: closing a socket with unread input resets the
                // connection, and the client would see a reset instead of the 503.
                read_request(&mut client).await;
                let _ = client
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = client.shutdown().await;
                continue;
            }
            let Some(port) = upstream.get().copied() else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (url, target)
}

/// Reads one request (head, then a `Content-Length` body, which is what the services send).
async fn read_request(client: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn a_failed_first_stock_attempt_shows_as_a_second_attempt_span_under_one_call() {
    let collector = Collector::start().await;
    let (proxy_url, proxy_target) = stock_proxy_failing_once().await;
    let stack = traced_stack(&collector, |o| o.order_env.push(("STOCK_URL".into(), proxy_url))).await;
    let _ = proxy_target.set(stack.port(Service::Stock));

    let (status, headers, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 1})).await;

    assert_eq!(status, 200, "{body}");
    let trace_id = header(&headers, "x-trace-id");
    let trace = collector
        .wait_for_trace(&trace_id, WAIT, |t| !t.named(STOCK, "POST /complete").is_empty())
        .await;
    let reserve = hop(&trace, STOCK, "stock", "/reserve");
    assert_eq!(reserve.attempts.len(), 2, "{}", trace.outline());
    assert_eq!(reserve.call.attr("attempts"), Some("2"));
    let (failed, retried) = (reserve.attempts[0], reserve.attempts[1]);
    assert_eq!(failed.attr("http.response.status_code"), Some("503"));
    assert!(failed.error, "the failed attempt is marked as an error");
    assert_eq!(failed.attr("http.request.resend_count"), Some("0"));
    assert_eq!(retried.attr("http.response.status_code"), Some("201"));
    assert!(!retried.error);
    assert_eq!(retried.attr("http.request.resend_count"), Some("1"));
    assert!(!reserve.call.error, "the call as a whole succeeded");
    assert!(
        trace.children_of(failed).is_empty(),
        "nothing reached stock on the first attempt"
    );
    let metrics = scrape(&stack, "/order/metrics").await;
    assert!(value(&metrics, "downstream_retries_total", &[("dependency", "stock")]) >= 1.0);
}

#[tokio::test]
async fn a_declined_payments_trace_shows_the_reservation_released() {
    let collector = Collector::start().await;
    let stack = traced_stack(&collector, |_| {}).await;

    let (status, headers, body) = stack
        .checkout(
            &key(),
            json!({"itemId": 1, "quantity": 1, "paymentMethod": "pm_card_chargeDeclined"}),
        )
        .await;

    assert_eq!(status, 402, "{body}");
    let trace_id = header(&headers, "x-trace-id");
    let trace = collector
        .wait_for_trace(&trace_id, WAIT, |t| {
            !t.named(STOCK, "POST /release").is_empty() && !t.named(ORDER, "POST /checkout").is_empty()
        })
        .await;
    let root = trace.one(ORDER, "POST /checkout");
    assert_eq!(root.attr("http.response.status_code"), Some("402"));
    let charge = hop(&trace, PAYMENT, "payment", "/charge");
    assert_eq!(charge.server.attr("http.response.status_code"), Some("402"));
    let release = hop(&trace, STOCK, "stock", "/release");
    assert_eq!(release.server.attr("http.response.status_code"), Some("200"));
    assert!(trace.descends_from(release.call, root), "{}", trace.outline());
    let marked: Vec<&CollectedSpan> = trace
        .0
        .iter()
        .filter(|s| s.service == ORDER && s.events.iter().any(|e| e == "compensation release"))
        .collect();
    assert!(
        !marked.is_empty(),
        "no order span carries the compensation event:\n{}",
        trace.outline()
    );
    assert!(trace.named(STOCK, "POST /complete").is_empty(), "{}", trace.outline());
}

#[tokio::test]
async fn spans_still_queued_are_sent_when_a_service_stops() {
    let collector = Collector::start().await;
    // Stock exports once a minute: only the flush at shutdown can deliver its spans in time.
    let mut stack = traced_stack(&collector, |o| {
        o.stock_env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "60000".into()))
    })
    .await;
    let (status, headers, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(status, 200, "{body}");
    let trace_id = header(&headers, "x-trace-id");
    collector
        .wait_for_trace(&trace_id, WAIT, |t| !t.named(PAYMENT, "POST /charge").is_empty())
        .await;
    assert!(
        collector.trace(&trace_id).named(STOCK, "POST /reserve").is_empty(),
        "stock exported before its batch was due"
    );

    stack.stop(Service::Stock, Duration::from_secs(10)).await;

    let trace = collector
        .wait_for_trace(&trace_id, WAIT, |t| !t.named(STOCK, "POST /complete").is_empty())
        .await;
    hop(&trace, STOCK, "stock", "/reserve");
}

#[tokio::test]
async fn a_checkout_and_its_replay_move_the_request_checkout_downstream_and_idempotency_counters() {
    let stack = Stack::launch(StackOptions::default()).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let (order_before, stock_before) = (
        scrape(&stack, "/order/metrics").await,
        scrape(&stack, "/stock/metrics").await,
    );
    let k = key();

    let (status, _, body) = stack.checkout(&k, json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(status, 200, "{body}");
    let (replayed, headers, _) = stack.checkout(&k, json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(replayed, 200);
    assert_eq!(header(&headers, "idempotent-replayed"), "true");

    let (order, stock) = (
        scrape(&stack, "/order/metrics").await,
        scrape(&stack, "/stock/metrics").await,
    );
    let checkout_200 = [("route", "/checkout"), ("method", "POST"), ("status", "200")];
    for (name, labels, by) in [
        ("http_requests_total", &checkout_200[..], 2.0),
        ("http_request_duration_seconds_count", &checkout_200[..], 2.0),
        (
            "business_events_total",
            &[("kind", "checkout"), ("outcome", "completed")][..],
            1.0,
        ),
        ("idempotency_events_total", &[("event", "replay")][..], 1.0),
        (
            "downstream_calls_total",
            &[("dependency", "stock"), ("result", "201")][..],
            1.0,
        ),
        (
            "downstream_calls_total",
            &[("dependency", "stock"), ("result", "200")][..],
            1.0,
        ),
        (
            "downstream_calls_total",
            &[("dependency", "payment"), ("result", "201")][..],
            1.0,
        ),
        (
            "downstream_attempts_total",
            &[("dependency", "stock"), ("result", "201")][..],
            1.0,
        ),
        (
            "downstream_attempts_total",
            &[("dependency", "payment"), ("result", "201")][..],
            1.0,
        ),
    ] {
        assert_eq!(moved(&order, &order_before, name, labels), by, "order {name}{labels:?}");
    }
    let reserve_201 = [("route", "/reserve"), ("method", "POST"), ("status", "201")];
    assert_eq!(moved(&stock, &stock_before, "http_requests_total", &reserve_201), 1.0);
    assert_eq!(
        moved(
            &stock,
            &stock_before,
            "business_events_total",
            &[("kind", "reservation"), ("outcome", "reserved")]
        ),
        1.0
    );
    // The checkout's scripts went over the order service's worker's one connection: it is
    // open, and at most the recovery worker's thread holds another.
    assert!(
        (1.0..=2.0).contains(&value(&order, "redis_connections", &[])),
        "order's redis_connections: {}",
        value(&order, "redis_connections", &[])
    );
}

#[tokio::test]
async fn warnings_logged_under_rust_log_warn_still_carry_the_trace_id_of_their_checkout() {
    // RUST_LOG=warn turns the INFO spans off for the logs (not for the traces); a WARN line
    // inside a request must still name the trace it belongs to.
    let mut options = StackOptions::default();
    options.order_env.extend([
        ("LOG_FORMAT".to_string(), "json".to_string()),
        ("RUST_LOG".to_string(), "warn".to_string()),
        ("HTTP_MAX_RETRIES".to_string(), "1".to_string()),
    ]);
    let mut stack = Stack::launch(options).await;
    stack.put_item(1, "Mug", 1250, 10).await;
    stack.kill(Service::Stock).await;

    let (status, headers, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(status, 503, "stock is down: {body}");
    let trace_id = header(&headers, "x-trace-id");
    let request_id = header(&headers, "x-request-id");

    let log = stack.logs(Service::Order);
    let warnings: Vec<Value> = json_lines(&log)
        .filter(|l| l["level"] == "WARN" && l["request_id"] == request_id.as_str())
        .collect();
    assert!(
        !warnings.is_empty(),
        "the order service warned about nothing in {request_id}:\n{log}"
    );
    for line in &warnings {
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
        assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    }
}

#[tokio::test]
async fn json_log_lines_of_a_checkout_carry_its_trace_id_and_never_the_token() {
    let stack = Stack::launch(json_logs()).await;
    stack.put_item(1, "Mug", 1250, 10).await;

    let (status, headers, body) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(status, 200, "{body}");
    let trace_id = header(&headers, "x-trace-id");
    let request_id = header(&headers, "x-request-id");

    for (service, name) in [
        (Service::Order, ORDER),
        (Service::Stock, STOCK),
        (Service::Payment, PAYMENT),
    ] {
        let log = stack.logs(service);
        let lines: Vec<Value> = log
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} logged a line that is not JSON ({e}): {l}"))
            })
            .collect();
        for line in &lines {
            for member in ["time", "level", "service", "message"] {
                assert!(line.get(member).is_some(), "{name}: no `{member}` in {line}");
            }
            assert_eq!(line["service"], name);
        }
        let of_checkout: Vec<&Value> = lines.iter().filter(|l| l["trace_id"] == trace_id.as_str()).collect();
        assert!(
            !of_checkout.is_empty(),
            "{name} logged nothing with trace id {trace_id}:\n{log}"
        );
        for line in of_checkout {
            assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
            assert_eq!(
                line["request_id"],
                request_id.as_str(),
                "nginx's request id reaches every service: {line}"
            );
        }
        assert!(!log.contains(stack.token()), "{name} logged the internal token");
        assert!(
            !log.to_ascii_lowercase().contains("bearer"),
            "{name} logged an Authorization header"
        );
    }
}

#[tokio::test]
async fn each_webhook_attempt_is_a_client_span_of_payment_naming_its_delivery() {
    let collector = Collector::start().await;
    let stack = traced_stack(&collector, |_| {}).await;
    let body = json!({"url": stack.receiver_url("/traced"), "events": ["order.completed"]});
    let r = stack
        .post_internal("/payment/webhook-endpoints", Some(&key()), &body)
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let (status, _, order) = stack.checkout(&key(), json!({"itemId": 1, "quantity": 1})).await;
    assert_eq!(status, 200, "{order}");
    let webhook_id = format!("{}-completed", order["orderId"].as_str().unwrap_or_default());
    let started = std::time::Instant::now();
    let span = loop {
        let found = collector
            .spans()
            .into_iter()
            .find(|s| s.name == "webhook attempt" && s.attr("webhook_id") == Some(webhook_id.as_str()));
        if let Some(span) = found {
            break span;
        }
        assert!(started.elapsed() < WAIT, "no webhook attempt span for {webhook_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((span.service.as_str(), span.kind), (PAYMENT, Kind::Client));
    assert_eq!(span.attr("endpoint"), r.json["id"].as_str());
    assert_eq!(span.attr("attempt"), Some("1"));
    assert!(span.attr("delivery").is_some_and(|d| d.starts_with("dlv_")), "{span:?}");
}
