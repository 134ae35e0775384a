//! Operations through nginx, for every service under its prefix: health, readiness (also with
//! Redis gone and back), metrics, the OpenAPI document, request ids, and the problem+json answers
//! for unknown routes, wrong methods and services that are down.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tests_e2e::{Service, Stack, StackOptions, binary_path, slug};

async fn stack() -> Stack {
    Stack::launch(StackOptions::default()).await
}

/// Each service's prefix and the paths its OpenAPI document must describe.
const SERVICES: [(&str, Service, &[&str]); 3] = [
    ("/order", Service::Order, &["/checkout", "/orders/{orderId}", "/totals"]),
    (
        "/payment",
        Service::Payment,
        &["/charge", "/refund", "/charges", "/charges/{chargeId}", "/totals"],
    ),
    (
        "/stock",
        Service::Stock,
        &["/items", "/items/{id}", "/reserve", "/release", "/complete"],
    ),
];

/// One answer, kept whole.
struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    async fn from(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("read the body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn content_type(&self) -> &str {
        self.header("content-type")
    }
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    Reply::from(req.send().await.expect("send the request")).await
}

async fn get(stack: &Stack, path: &str) -> Reply {
    send(stack.client().get(stack.url(path))).await
}

/// Asserts a problem+json answer with this status and slug, its `instance` the request id.
fn assert_problem(r: &Reply, status: u16, want_slug: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert_eq!(r.content_type(), "application/problem+json", "{what}: {}", r.text);
    assert_eq!(slug(&r.json), want_slug, "{what}: {}", r.text);
    assert_eq!(r.json["status"], status, "{what}: {}", r.text);
    assert!(
        r.json["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {}",
        r.text
    );
    assert!(
        r.json["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {}",
        r.text
    );
    let id = r.header("x-request-id");
    assert!(!id.is_empty(), "{what}: no X-Request-ID");
    assert_eq!(r.json["instance"], id, "{what}: the instance is the request id");
}

#[tokio::test]
async fn every_service_serves_health_ready_metrics_and_its_openapi_document_under_its_prefix() {
    let stack = stack().await;

    for (prefix, _, paths) in SERVICES {
        let health = get(&stack, &format!("{prefix}/health")).await;
        assert_eq!(health.status, 200, "{prefix}/health: {}", health.text);
        assert!(health.content_type().starts_with("application/json"), "{prefix}/health");
        assert_eq!(health.json, json!({"status": "ok"}), "{prefix}/health");

        let ready = get(&stack, &format!("{prefix}/ready")).await;
        assert_eq!(ready.status, 200, "{prefix}/ready: {}", ready.text);
        assert!(ready.content_type().starts_with("application/json"), "{prefix}/ready");
        assert_eq!(ready.json["status"], "ok", "{prefix}/ready: {}", ready.text);

        let metrics = get(&stack, &format!("{prefix}/metrics")).await;
        assert_eq!(metrics.status, 200, "{prefix}/metrics");
        assert!(
            // prometheus-client writes OpenMetrics text, which Prometheus scrapes natively.
            metrics.content_type().starts_with("application/openmetrics-text"),
            "{prefix}/metrics: {}",
            metrics.content_type()
        );
        assert!(
            metrics.text.trim_end().ends_with("# EOF"),
            "{prefix}/metrics must end with # EOF"
        );
        assert!(
            metrics.text.contains("# TYPE "),
            "{prefix}/metrics is not Prometheus text:\n{}",
            metrics.text
        );
        assert!(metrics.text.contains("# HELP "), "{prefix}/metrics:\n{}", metrics.text);

        let openapi = get(&stack, &format!("{prefix}/openapi.json")).await;
        assert_eq!(openapi.status, 200, "{prefix}/openapi.json");
        assert!(
            openapi.content_type().starts_with("application/json"),
            "{prefix}/openapi.json"
        );
        let version = openapi.json["openapi"].as_str().unwrap_or("");
        assert!(
            version.starts_with("3.1"),
            "{prefix}/openapi.json: openapi is {version:?}"
        );
        for path in paths {
            assert!(
                openapi.json["paths"].get(path).is_some(),
                "{prefix}/openapi.json lacks {path}: {}",
                openapi.text
            );
        }
    }
}

#[tokio::test]
async fn every_response_carries_an_x_request_id_and_a_callers_id_is_echoed() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let paths = [
        "/order/health",
        "/payment/ready",
        "/stock/items/1",
        "/stock/items/999",
        "/payment/totals",
        "/order/orders/ord_unknown",
        "/stock/no-such-route",
        "/no-such-service",
        "/",
    ];

    let mut minted = std::collections::HashSet::new();
    for path in paths {
        let r = get(&stack, path).await;
        let id = r.header("x-request-id").to_string();
        assert!(!id.is_empty(), "{path} ({}) has no X-Request-ID", r.status);
        assert!(minted.insert(id.clone()), "{path}: the id {id} was handed out before");
        if r.content_type() == "application/problem+json" {
            assert_eq!(
                r.json["instance"],
                id.as_str(),
                "{path}: the problem's instance is the request id"
            );
        }

        let mine = format!("req-{}", uuid::Uuid::new_v4().simple());
        let r = send(stack.client().get(stack.url(path)).header("x-request-id", &mine)).await;
        assert_eq!(
            r.header("x-request-id"),
            mine,
            "{path} ({}) must echo the caller's X-Request-ID",
            r.status
        );
        if r.content_type() == "application/problem+json" {
            assert_eq!(
                r.json["instance"],
                mine.as_str(),
                "{path}: the problem's instance is the caller's id"
            );
        }
    }

    // Writes and refusals too.
    let mine = "req-write-1";
    let r = send(
        stack
            .client()
            .post(stack.url("/stock/reserve"))
            .bearer_auth(stack.token())
            .header("idempotency-key", "k1")
            .header("x-request-id", mine)
            .json(&json!({"itemId": 1, "quantity": 1})),
    )
    .await;
    assert_eq!((r.status, r.header("x-request-id")), (201, mine), "{}", r.text);
    let r = send(
        stack
            .client()
            .post(stack.url("/payment/charge"))
            .header("x-request-id", mine)
            .json(&json!({})),
    )
    .await;
    assert_problem(&r, 401, "unauthorized", "charge without a token");
    assert_eq!(r.header("x-request-id"), mine);
}

#[tokio::test]
async fn ready_is_503_while_redis_is_down_and_200_again_after_with_the_data_kept() {
    let mut stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;

    stack.kill(Service::Redis).await;

    for (prefix, _, _) in SERVICES {
        let ready = get(&stack, &format!("{prefix}/ready")).await;
        assert_eq!(ready.status, 503, "{prefix}/ready with Redis down: {}", ready.text);
        assert_eq!(ready.json["status"], "unavailable", "{prefix}/ready: {}", ready.text);
        let checks = ready.json["checks"]
            .as_object()
            .unwrap_or_else(|| panic!("{prefix}/ready: {}", ready.text));
        assert!(!checks.is_empty(), "{prefix}/ready names its checks: {}", ready.text);
        assert!(!ready.header("x-request-id").is_empty(), "{prefix}/ready");
        // Liveness does not depend on Redis: the process still serves.
        let health = get(&stack, &format!("{prefix}/health")).await;
        assert_eq!(
            (health.status, &health.json),
            (200, &json!({"status": "ok"})),
            "{prefix}/health"
        );
    }
    // A request that needs the data store is a 503 problem, not a hang or a 500.
    let r = get(&stack, "/stock/items/1").await;
    assert_problem(&r, 503, "dependency-unavailable", "an item read with Redis down");

    stack.start(Service::Redis).await;

    for (prefix, _, _) in SERVICES {
        let started = Instant::now();
        loop {
            let ready = get(&stack, &format!("{prefix}/ready")).await;
            if ready.status == 200 {
                assert_eq!(ready.json["status"], "ok", "{prefix}/ready: {}", ready.text);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{prefix}/ready stayed {}: {}",
                ready.status,
                ready.text
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Redis' append-only file brought every acknowledged write back.
    assert_eq!(
        stack.item(1).await,
        json!({"id": 1, "name": "Mug", "price": 1250, "currency": "USD", "available": 10, "reserved": 0, "sold": 0})
    );
}

#[tokio::test]
async fn unknown_routes_are_problem_json_404s_from_the_service_or_from_nginx() {
    let stack = stack().await;

    for (prefix, _, _) in SERVICES {
        for path in [
            format!("{prefix}/no-such-route"),
            format!("{prefix}/"),
            format!("{prefix}/health/extra"),
        ] {
            let r = get(&stack, &path).await;
            assert_problem(&r, 404, "not-found", &path);
        }
    }
    for path in [
        "/no-such-service",
        "/no-such-service/health",
        "/orders/1",
        "/stockpile/items",
    ] {
        let r = get(&stack, path).await;
        assert_problem(&r, 404, "not-found", path);
        let r = send(stack.client().post(stack.url(path)).json(&json!({}))).await;
        assert_problem(&r, 404, "not-found", &format!("POST {path}"));
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_problem_json_405() {
    let stack = stack().await;
    stack.put_item(1, "Mug", 1250, 10).await;
    let client = stack.client();
    let token = stack.token().to_string();
    let cases = [
        ("GET /stock/reserve", client.get(stack.url("/stock/reserve"))),
        ("DELETE /stock/items/1", client.delete(stack.url("/stock/items/1"))),
        (
            "POST /stock/items",
            client.post(stack.url("/stock/items")).json(&json!({})),
        ),
        ("GET /payment/charge", client.get(stack.url("/payment/charge"))),
        (
            "PUT /payment/refund",
            client.put(stack.url("/payment/refund")).json(&json!({})),
        ),
        ("GET /order/checkout", client.get(stack.url("/order/checkout"))),
        (
            "DELETE /order/orders/ord_1",
            client.delete(stack.url("/order/orders/ord_1")),
        ),
        ("POST /order/health", client.post(stack.url("/order/health"))),
        ("POST /payment/ready", client.post(stack.url("/payment/ready"))),
        ("DELETE /stock/metrics", client.delete(stack.url("/stock/metrics"))),
    ];
    for (what, req) in cases {
        let r = send(req.bearer_auth(&token)).await;
        assert_problem(&r, 405, "method-not-allowed", what);
    }
    assert_eq!(stack.item(1).await["available"], 10, "nothing changed");
}

#[tokio::test]
async fn a_request_to_a_service_that_is_down_is_a_503_dependency_unavailable_problem_from_nginx() {
    let mut stack = stack().await;

    for (prefix, service, _) in SERVICES {
        stack.kill(service).await;

        for path in [format!("{prefix}/health"), format!("{prefix}/no-such-route")] {
            let r = get(&stack, &path).await;
            assert_problem(
                &r,
                503,
                "dependency-unavailable",
                &format!("{path} with the service down"),
            );
            assert!(!r.header("retry-after").is_empty(), "{path}: a 503 says when to retry");
        }
        let mine = format!("req-{}", uuid::Uuid::new_v4().simple());
        let r = send(
            stack
                .client()
                .post(stack.url(&format!("{prefix}/anything")))
                .header("x-request-id", &mine)
                .header("idempotency-key", "k")
                .json(&json!({})),
        )
        .await;
        assert_problem(
            &r,
            503,
            "dependency-unavailable",
            &format!("POST {prefix} with the service down"),
        );
        assert_eq!(r.header("x-request-id"), mine, "nginx echoes the caller's id too");

        stack.start(service).await;
        let r = get(&stack, &format!("{prefix}/health")).await;
        assert_eq!(r.status, 200, "{prefix}/health after the restart: {}", r.text);
    }
}

/// A setting outside its bounds stops the start, with the variable and the bound named, before
/// the service listens or reaches Redis. Raising it silently would run the service with another
/// value than the one written; taking it would be worse: with `IDEMPOTENCY_TTL=0` the order
/// service used to start, answer every checkout 503 and make a new order for each retry of a key.
#[test]
fn a_service_with_a_setting_out_of_bounds_refuses_to_start_and_names_it() {
    for (binary, name, value, reason) in [
        ("order-service", "IDEMPOTENCY_TTL", "0", "must be at least 1m"),
        (
            "order-service",
            "HTTP_RETRY_MAX",
            "10ms",
            "must be at least HTTP_RETRY_BASE (50ms)",
        ),
        (
            "stock-service",
            "RESERVATION_SWEEP_INTERVAL",
            "1ms",
            "must be at least 50ms",
        ),
        (
            "payment-service",
            "RUST_LOG",
            "payment_service=loud",
            "payment_service=loud",
        ),
    ] {
        let mut child = std::process::Command::new(binary_path(binary))
            .env(name, value)
            // Were the setting taken, the service would start: on a port of its own, without Redis.
            .envs(["ORDER_PORT", "STOCK_PORT", "PAYMENT_PORT"].map(|port| (port, "0")))
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the service");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the service") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{binary} with {name}={value} started instead of refusing to");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr is piped"), &mut stderr)
            .expect("read stderr");
        assert_eq!(status.code(), Some(2), "{binary} with {name}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("{binary}: invalid value {value:?} for {name}")) && stderr.contains(reason),
            "{binary} with {name}={value} said: {stderr}"
        );
    }
}

/// Sends `request` as written over a new connection to nginx and reads the answer; nginx closes
/// the connection after each of these refusals.
async fn raw(stack: &Stack, request: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = ("127.0.0.1", stack.port(Service::Nginx));
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect to nginx");
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("nginx answers and closes")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    let (head, text) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let mut headers = HeaderMap::new();
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
            reqwest::header::HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    Reply {
        status,
        headers,
        json: serde_json::from_str(text).unwrap_or(Value::Null),
        text: text.to_string(),
    }
}

/// Requests nginx refuses before any service sees them get problem+json like the rest, so a
/// client needs one error parser (nginx's own pages are HTML).
#[tokio::test]
async fn requests_nginx_itself_refuses_are_problem_json_too() {
    let stack = stack().await;
    let client = stack.client();
    let long = "x".repeat(9_000);
    let cases = [
        (
            "a NUL in the path",
            client.get(stack.url("/order/orders/%00")),
            400,
            "invalid-request",
        ),
        (
            "a 9 000-byte path",
            client.get(stack.url(&format!("/order/orders/{long}"))),
            414,
            "invalid-request",
        ),
        (
            "a 9 000-byte header",
            client.get(stack.url("/order/health")).header("x-padding", &long),
            400,
            "invalid-request",
        ),
        (
            "TRACE",
            client.request(reqwest::Method::TRACE, stack.url("/order/health")),
            405,
            "method-not-allowed",
        ),
    ];
    for (what, req, status, want_slug) in cases {
        let r = send(req).await;
        assert_problem(&r, status, want_slug, what);
    }
    let r = raw(
        &stack,
        "POST /order/checkout HTTP/1.1\r\nHost: checkout\r\nIdempotency-Key: te-1\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert_problem(&r, 501, "invalid-request", "an unknown Transfer-Encoding");
}
