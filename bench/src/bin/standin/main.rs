//! The machine's ceiling, measured with the same load generator behind the same nginx:
//! - `POST /trivial` answers at once: what one proxied hop costs;
//! - `POST /checkout` does what a checkout costs without its logic: the order service's Redis
//!   round trips, then three sequential internal HTTP calls (reserve, charge, complete), each
//!   doing the downstream service's Redis round trips, then the answer — and, like the order
//!   service, the round trips it makes after answering (taking the order out of recovery's set). Every round trip is a script that
//!   writes (so AOF fsync is paid as a checkout pays it), called by SHA over the services' own connections.
//!
//! Usage: standin --port 9090 --redis-url redis://127.0.0.1:6380 [--workers 2]
//!        [--order-round-trips 2] [--order-round-trips-after 0] [--call-round-trips 1,2,1]
//!        [--provider-url http://127.0.0.1:9102] [--provider-call 1]
//!
//! With `--provider-url`, the internal call at index `--provider-call` (the charge) also sends
//! a card charge to that provider simulator between its round trips, as payment-service does:
//! the checkout's extra network hop, paid by the stand-in too.
//!
//! `--order-round-trips` is the order service's own: one script takes the key and creates the
//! order, one records its end with the steps taken on the way and settles the key (the
//! reservation and the charge are not written apart: a resumed run finds them again).
//!
//! `--call-round-trips` lists the internal calls, each with its round trips, as a checkout's
//! make them on one Redis node: reserve and complete 1 (one script takes the key, applies the
//! effect and settles the key), charge 2 (the key is taken before the gateway is asked; then
//! one script records the charge and its answer). On Redis Cluster each makes 2: `2,2,2`.

use std::sync::LazyLock;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use redis::Script;
use shared::redis_pool::Pool;

// A write like the services' scripts make (write.lua).
static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("write.lua")));

#[derive(Clone)]
struct State {
    pool: Pool,
    http: reqwest::Client,
    internal_url: String,
    order_round_trips: usize,
    order_round_trips_after: usize,
    /// One entry per internal call: its round trips.
    call_round_trips: Vec<usize>,
    provider_url: Option<String>,
    provider_call: usize,
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn number(name: &str, default: usize) -> usize {
    arg(name, &default.to_string()).parse().unwrap_or(default)
}

async fn round_trips(pool: &Pool, n: usize) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let key = format!("standin:{{{}}}", uuid::Uuid::new_v4().simple());
    for _ in 0..n {
        let _: i64 = WRITE
            .key(&key)
            .arg("x")
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn trivial(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"ok":true}"#)
}

async fn internal(state: web::Data<State>, path: web::Path<(usize, bool)>, _body: web::Bytes) -> HttpResponse {
    let (n, with_provider) = path.into_inner();
    // As payment-service: the first round trip takes the key, the provider is asked, the rest record.
    let first = if with_provider { n.min(1) } else { n };
    if let Err(e) = round_trips(&state.pool, first).await {
        return HttpResponse::ServiceUnavailable().body(e);
    }
    if let Some(url) = state.provider_url.as_ref().filter(|_| with_provider) {
        let sent = state
            .http
            .post(format!("{url}/v1/charges"))
            .header("idempotency-key", uuid::Uuid::new_v4().simple().to_string())
            .json(&serde_json::json!({
                "amount": 100, "currency": "USD", "orderId": "standin", "customerId": "bench",
                "paymentMethod": "pm_card_visa",
            }))
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let _ = resp.bytes().await;
            }
            Ok(resp) => return HttpResponse::BadGateway().body(format!("provider: {}", resp.status())),
            Err(e) => return HttpResponse::BadGateway().body(e.to_string()),
        }
    }
    match round_trips(&state.pool, n - first).await {
        Ok(()) => HttpResponse::Created()
            .content_type("application/json")
            .body(r#"{"ok":true}"#),
        Err(e) => HttpResponse::ServiceUnavailable().body(e),
    }
}

async fn checkout(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    if let Err(e) = round_trips(&state.pool, state.order_round_trips).await {
        return HttpResponse::ServiceUnavailable().body(e);
    }
    for (i, n) in state.call_round_trips.iter().enumerate() {
        let with_provider = state.provider_url.is_some() && i == state.provider_call;
        let sent = state
            .http
            .post(format!("{}/{n}/{with_provider}", state.internal_url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let _ = resp.bytes().await;
            }
            Ok(resp) => return HttpResponse::BadGateway().body(format!("internal call: {}", resp.status())),
            Err(e) => return HttpResponse::BadGateway().body(e.to_string()),
        }
    }
    if state.order_round_trips_after > 0 {
        let pool = state.pool.clone();
        let n = state.order_round_trips_after;
        tokio::spawn(async move { round_trips(&pool, n).await });
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"completed"}"#)
}

async fn ready() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port = number("--port", 9090) as u16;
    let redis_url = arg("--redis-url", "redis://127.0.0.1:6379");
    let workers = number("--workers", 2);
    // The services' own connections, so both pay the same for a round trip.
    let timeout = shared::config::duration(&shared::config::REDIS_RESPONSE_TIMEOUT).map_err(std::io::Error::other)?;
    let pool = shared::redis_pool::connect(&redis_url, false, timeout).map_err(std::io::Error::other)?;
    let http = shared::tls::client_builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let state = State {
        pool,
        http,
        internal_url: format!("http://127.0.0.1:{port}/internal"),
        order_round_trips: number("--order-round-trips", 2),
        order_round_trips_after: number("--order-round-trips-after", 0),
        call_round_trips: arg("--call-round-trips", "1,2,1")
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|e| std::io::Error::other(format!("--call-round-trips: {e}")))?,
        provider_url: Some(arg("--provider-url", "")).filter(|u| !u.is_empty()),
        provider_call: number("--provider-call", 1),
    };
    eprintln!(
        "standin on 127.0.0.1:{port}: checkout = {} round trips + calls of {:?} round trips (provider: {:?} in call {}), then {} after the answer",
        state.order_round_trips,
        state.call_round_trips,
        state.provider_url,
        state.provider_call,
        state.order_round_trips_after
    );
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/trivial", web::post().to(trivial))
            .route("/checkout", web::post().to(checkout))
            .route("/internal/{n}/{provider}", web::post().to(internal))
            .route("/ready", web::get().to(ready))
    })
    .workers(workers)
    .backlog(4096)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_counts_its_writes_and_expires_its_hash() {
        let redis = shared::testing::TestRedis::start().await;
        let mut conn = redis.conn().await;

        let first: Option<i64> = WRITE.key("h").arg("x").invoke_async(&mut conn).await.ok();
        let second: Option<i64> = WRITE.key("h").arg("y").invoke_async(&mut conn).await.ok();
        let ttl: Option<i64> = redis::cmd("PTTL").arg("h").query_async(&mut conn).await.ok();
        let value: Option<String> = redis::cmd("HGET").arg("h").arg("v").query_async(&mut conn).await.ok();

        assert_eq!((first, second), (Some(1), Some(2)));
        assert!(ttl.is_some_and(|t| t > 0 && t <= 60_000), "{ttl:?}");
        assert_eq!(value.as_deref(), Some("y"));
    }
}
