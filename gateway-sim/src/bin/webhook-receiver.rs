//! A merchant's webhook receiver: a real process on a real port, so that refused connections,
//! slow answers, errors and crashes happen between payment-service's dispatcher and the
//! endpoint as they do in production. It keeps its own records (every request it received,
//! with the Standard Webhooks headers and the raw body, appended to a file and read back at
//! start), so tests check deliveries and signatures against what the receiver saw.
//!
//! - `POST <any path>`: a delivery; recorded, then answered as that path's plan says (200 by
//!   default).
//! - `PUT /_recv/plan` `{"path", "fail", "status", "delayMs"}`: the next `fail` requests to
//!   `path` are answered `status` (default 503); every request to it waits `delayMs` first.
//! - `GET /_recv/requests?path=` every request received (to one path), oldest first.
//! - `GET /_recv/health`.
//!
//! Settings: `HOST` (`127.0.0.1`), `RECEIVER_PORT` (`9200`), `RECEIVER_LOG` (`receiver.jsonl`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Plan {
    path: String,
    #[serde(default)]
    fail: u32,
    status: Option<u16>,
    #[serde(default)]
    delay_ms: u64,
}

struct Receiver {
    log: PathBuf,
    records: Mutex<Vec<Value>>,
    plans: Mutex<HashMap<String, Plan>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves the data usable: the records are append-only.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

impl Receiver {
    fn record(&self, record: Value) {
        // The file first: a record is kept only if it survives a crash of the receiver.
        let line = format!("{record}\n");
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("receiver log {}: {e}", self.log.display());
        }
        lock(&self.records).push(record);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/_recv/health") => answer(StatusCode::OK, json!({"status": "ok"})),
            (Method::GET, "/_recv/requests") => {
                let wanted = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("path="))
                    .map(|p| p.replace("%2F", "/"));
                let records: Vec<Value> = lock(&self.records)
                    .iter()
                    .filter(|r| wanted.as_deref().is_none_or(|w| r["path"] == w))
                    .cloned()
                    .collect();
                answer(StatusCode::OK, json!({"requests": records}))
            }
            (Method::PUT, "/_recv/plan") => match read(req).await {
                Ok(bytes) => match serde_json::from_slice::<Plan>(&bytes) {
                    Ok(plan) => {
                        lock(&self.plans).insert(plan.path.clone(), plan.clone());
                        answer(StatusCode::OK, json!({"path": plan.path, "fail": plan.fail}))
                    }
                    Err(e) => answer(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
                },
                Err(status) => answer(status, json!({"error": "unreadable body"})),
            },
            (Method::POST, _) => {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let (id, timestamp, signature) = (
                    header("webhook-id"),
                    header("webhook-timestamp"),
                    header("webhook-signature"),
                );
                let body = match read(req).await {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(status) => return answer(status, json!({"error": "unreadable body"})),
                };
                let (delay, status) = {
                    let mut plans = lock(&self.plans);
                    match plans.get_mut(&path) {
                        Some(plan) if plan.fail > 0 => {
                            plan.fail -= 1;
                            (plan.delay_ms, plan.status.unwrap_or(503))
                        }
                        Some(plan) => (plan.delay_ms, 200),
                        None => (0, 200),
                    }
                };
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                self.record(json!({
                    "path": path,
                    "webhookId": id,
                    "timestamp": timestamp,
                    "signature": signature,
                    "body": body,
                    "answered": status,
                    "atMs": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                }));
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                answer(code, json!({"received": code.is_success()}))
            }
            _ => answer(StatusCode::NOT_FOUND, json!({"error": "no such route"})),
        }
    }
}

async fn read(req: Request<Incoming>) -> Result<Bytes, StatusCode> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = setting("HOST", "127.0.0.1");
    let port: u16 = setting("RECEIVER_PORT", "9200")
        .parse()
        .map_err(|e| format!("RECEIVER_PORT: {e}"))?;
    let log = PathBuf::from(setting("RECEIVER_LOG", "receiver.jsonl"));
    let records: Vec<Value> = match std::fs::File::open(&log) {
        Ok(f) => std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    let receiver = Arc::new(Receiver {
        log: log.clone(),
        records: Mutex::new(records),
        plans: Mutex::new(HashMap::new()),
    });
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    let listener = TcpListener::bind(addr).await?;
    println!("webhook-receiver listening on http://{addr} (log {})", log.display());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let receiver = receiver.clone();
                async move { Ok::<_, std::convert::Infallible>(receiver.handle(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
