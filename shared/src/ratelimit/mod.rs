//! Per-caller rate limits, shared by every replica (the state is in Redis): GCRA (gcra.lua).
//!
//! A caller is its API key (by the key's hash; an unknown key is counted as itself and then
//! refused 401 by the handler), else the client address nginx saw (`X-Real-IP`, which nginx
//! sets; the services listen where only nginx reaches them), else the peer address. The
//! internal token is exempt, and so are `/health`, `/ready` and `/metrics`.
//!
//! A request over its limit gets 429 `rate-limited` with `Retry-After` and never reaches the
//! handler: nothing is executed and nothing is stored under its Idempotency-Key. Every limited
//! answer carries the IETF `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers). If Redis cannot be asked, the request goes through:
//! a limiter must not turn a Redis hiccup into an outage of its own.
//!
//! A route may take its limit in its handler's first script instead ([`Route::deferred`],
//! [`Deferred`]): the same GCRA, one round trip fewer. The handler then refuses before it does
//! anything, and the middleware answers the 429 and the headers as for any other route.

use std::sync::LazyLock;
use std::time::Duration;

use crate::lua::Script;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web;
use sha2::{Digest, Sha256};

use crate::config::{self, ConfigError, EnvVar, Secret};
use crate::problem::Problem;
use crate::redis_pool::Pool;

/// `take_rate(key, interval, burst)`: one request against a caller's limit, for a script of a
/// route whose handler takes it ([`Deferred`]).
pub static GCRA: crate::lua::Lib = crate::lua::Lib {
    name: "gcra",
    source: include_str!("gcra.lua"),
    needs: &[&crate::lua::CLOCK],
};

static LIMIT: LazyLock<Script> = LazyLock::new(|| crate::lua::script(&[&GCRA], include_str!("limit.lua")));

pub const RATE_LIMIT_DEFAULT: EnvVar = EnvVar {
    name: "RATE_LIMIT_DEFAULT",
    default: "200",
    help: "Requests per second each caller (API key, else client address) may make to a service, outside the routes with a limit of their own; the internal token is exempt. At least 1.",
};

pub const RATE_LIMIT_DEFAULT_BURST: EnvVar = EnvVar {
    name: "RATE_LIMIT_DEFAULT_BURST",
    default: "400",
    help: "Requests a caller may make at once before RATE_LIMIT_DEFAULT paces it; at least 1.",
};

/// A rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub per_second: u64,
    pub burst: u64,
}

impl Policy {
    pub fn from_env(rate: &EnvVar, burst: &EnvVar) -> Result<Self, ConfigError> {
        Ok(Self {
            per_second: config::at_least(rate, 1)?,
            burst: config::at_least(burst, 1)?,
        })
    }

    fn interval_us(&self) -> u64 {
        (1_000_000 / self.per_second).max(1)
    }

    /// `RateLimit-Policy`: the quota (the burst) and the window in which it refills, seconds.
    pub fn header(&self, name: &str) -> String {
        let window = (self.burst * self.interval_us()).div_ceil(1_000_000).max(1);
        format!("\"{name}\";q={};w={window}", self.burst)
    }
}

/// A route with a limit of its own (`POST /checkout`).
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub name: &'static str,
    pub policy: Policy,
    /// Its handler takes the limit in its own first script ([`Deferred`]). Only where that
    /// script's keys and the caller's may share a script: on one Redis node, not a cluster.
    pub deferred: bool,
}

/// The limits a service applies: its routes' own, and the default for the rest.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub default: Policy,
    pub routes: Vec<Route>,
}

impl RateLimits {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            default: Policy::from_env(&RATE_LIMIT_DEFAULT, &RATE_LIMIT_DEFAULT_BURST)?,
            routes: Vec::new(),
        })
    }

    /// The limit's name, its policy, and whether the route's handler takes it.
    fn for_request(&self, method: &Method, path: &str) -> (&'static str, Policy, bool) {
        self.routes
            .iter()
            .find(|r| r.method == method && r.path == path)
            .map(|r| (r.name, r.policy, r.deferred))
            .unwrap_or(("default", self.default, false))
    }
}

/// What gcra.lua decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after: Duration,
    pub reset: Duration,
}

impl Decision {
    /// take_rate's answer (gcra.lua): allowed, remaining, µs to wait, µs until full.
    pub fn from_reply(reply: &[i64]) -> Self {
        let at = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        Self {
            allowed: at(0) == 1,
            remaining: at(1),
            retry_after: Duration::from_micros(at(2)),
            reset: Duration::from_micros(at(3)),
        }
    }

    /// `RateLimit`: what remains and the seconds until the quota is whole again.
    pub fn header(&self, name: &str) -> String {
        format!(
            "\"{name}\";r={};t={}",
            self.remaining,
            self.reset.as_micros().div_ceil(1_000_000)
        )
    }

    /// Whole seconds to wait, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_micros().div_ceil(1_000_000) as u64).max(1)
    }
}

/// The limiter a service's middleware asks.
#[derive(Clone)]
pub struct Limiter {
    pool: Pool,
    service: &'static str,
    token: Secret,
    limits: RateLimits,
}

impl Limiter {
    pub fn new(pool: Pool, service: &'static str, token: Secret, limits: RateLimits) -> Self {
        Self {
            pool,
            service,
            token,
            limits,
        }
    }

    /// The key of `caller`'s TAT under the limit named `name`.
    fn key(&self, name: &str, caller: &str) -> String {
        format!("rl:{{{}:{name}:{caller}}}", self.service)
    }

    /// Counts one request of `caller` against `policy` (named `name`).
    pub async fn take(&self, name: &str, policy: Policy, caller: &str) -> Result<Decision, crate::CommonError> {
        let mut conn = self.pool.get().await?;
        let reply: Vec<i64> = LIMIT
            .key(self.key(name, caller))
            .arg(policy.interval_us())
            .arg(policy.burst)
            .invoke_async(&mut conn)
            .await?;
        Ok(Decision::from_reply(&reply))
    }
}

/// A limit the middleware leaves to the route's handler ([`Route::deferred`]), in the request's
/// extensions: the handler's first script runs `take_rate` (gcra.lua) on `key` before anything
/// else, refuses when it says so, and hands its [`Decision`] back with [`Deferred::taken`].
/// A handler that answers without reaching that script (a malformed request, a missing
/// header) hands none back, and the middleware then takes the limit itself: every request
/// still counts, and one over the limit is still answered 429.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// The caller's TAT.
    pub key: String,
    /// µs per request.
    pub interval_us: u64,
    pub burst: u64,
}

impl Deferred {
    /// The limit the middleware left to this request's handler, if it left one.
    pub fn of(req: &actix_web::HttpRequest) -> Option<Self> {
        use actix_web::HttpMessage;
        req.extensions().get::<Self>().cloned()
    }

    /// Hands the handler's decision back to the middleware, which answers a refusal with the
    /// 429 (whatever the handler answered) and adds the headers.
    pub fn taken(req: &actix_web::HttpRequest, decision: Decision) {
        use actix_web::HttpMessage;
        req.extensions_mut().insert(decision);
    }
}

/// Who the request counts against; `None` for the exempt.
fn caller_of(req: &ServiceRequest, token: &Secret) -> Option<String> {
    if matches!(req.path(), "/health" | "/ready" | "/metrics") {
        return None;
    }
    let bearer = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(presented) = bearer {
        if crate::auth::constant_time_eq(presented.as_bytes(), token.expose().as_bytes()) {
            return None;
        }
        if presented.starts_with("sk_test_") {
            let digest = Sha256::digest(presented.as_bytes());
            return Some(format!(
                "key:{}",
                digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>()
            ));
        }
    }
    let forwarded = req
        .headers()
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
        });
    let address = forwarded
        .map(str::to_string)
        .or_else(|| req.peer_addr().map(|a| a.ip().to_string()))
        .unwrap_or_else(|| "unknown".into());
    Some(format!("ip:{address}"))
}

fn set(headers: &mut actix_web::http::header::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// How long a request waits for its limit before it is let through unchecked. The limiter
/// fails open, so waiting on a stalled Redis for the full response timeout would only delay the
/// request's own first command (which then has its own timeout, and its own answer for the
/// client) and lengthen every stall by that much; the GCRA script answers in well under a
/// millisecond when Redis is healthy.
const TAKE_TIMEOUT: Duration = Duration::from_millis(100);

/// The 429 for a request over its limit, with the headers.
fn refusal(name: &str, policy: Policy, decision: &Decision) -> actix_web::HttpResponse {
    crate::metrics::event("rate_limit", "limited");
    let wait = decision.retry_after_secs();
    let problem = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!(
            "over the limit of {} requests per second (bursts of {}) for this caller; retry in {wait} s. Nothing was done, and nothing is stored under an Idempotency-Key",
            policy.per_second, policy.burst
        ),
    )
    .retry_after(wait);
    let mut resp = problem.response();
    set(resp.headers_mut(), "ratelimit-policy", &policy.header(name));
    set(resp.headers_mut(), "ratelimit", &decision.header(name));
    resp
}

/// Asks for `caller`'s limit, or None (logged) when Redis does not answer in time: the
/// request then goes through unchecked.
async fn take_in_time(limiter: &Limiter, name: &str, policy: Policy, caller: &str) -> Option<Decision> {
    match tokio::time::timeout(TAKE_TIMEOUT, limiter.take(name, policy, caller)).await {
        Ok(Ok(d)) => Some(d),
        unchecked => {
            let error = match unchecked {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {} ms", TAKE_TIMEOUT.as_millis()),
            };
            tracing::warn!(%error, "rate limit not checked: Redis did not answer; letting the request through");
            None
        }
    }
}

/// The middleware: 429 before the handler when over the limit (or, for a deferred route, in
/// place of the handler's answer: the handler did nothing), the headers on every limited
/// answer.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(limiter) = req.app_data::<web::Data<Limiter>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let Some(caller) = caller_of(&req, &limiter.token) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let (name, policy, deferred) = limiter.limits.for_request(req.method(), req.path());
    if deferred {
        {
            use actix_web::HttpMessage;
            req.extensions_mut().insert(Deferred {
                key: limiter.key(name, &caller),
                interval_us: policy.interval_us(),
                burst: policy.burst,
            });
        }
        let mut res = next.call(req).await?;
        let taken = {
            use actix_web::HttpMessage;
            res.request().extensions().get::<Decision>().copied()
        };
        let decision = match taken {
            Some(d) => d,
            None => match take_in_time(&limiter, name, policy, &caller).await {
                Some(d) => d,
                None => return Ok(res.map_into_left_body()),
            },
        };
        if !decision.allowed {
            return Ok(res
                .into_response(refusal(name, policy, &decision))
                .map_into_right_body());
        }
        set(res.headers_mut(), "ratelimit-policy", &policy.header(name));
        set(res.headers_mut(), "ratelimit", &decision.header(name));
        return Ok(res.map_into_left_body());
    }
    let Some(decision) = take_in_time(&limiter, name, policy, &caller).await else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    if !decision.allowed {
        return Ok(req
            .into_response(refusal(name, policy, &decision))
            .map_into_right_body());
    }
    let mut res = next.call(req).await?;
    set(res.headers_mut(), "ratelimit-policy", &policy.header(name));
    set(res.headers_mut(), "ratelimit", &decision.header(name));
    Ok(res.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_ietf_draft() {
        let p = Policy {
            per_second: 50,
            burst: 100,
        };
        assert_eq!(p.header("checkout"), "\"checkout\";q=100;w=2");
        let d = Decision {
            allowed: true,
            remaining: 7,
            retry_after: Duration::ZERO,
            reset: Duration::from_millis(1500),
        };
        assert_eq!(d.header("checkout"), "\"checkout\";r=7;t=2");
        assert_eq!(
            Decision {
                retry_after: Duration::from_millis(1),
                ..d
            }
            .retry_after_secs(),
            1
        );
    }

    #[test]
    fn a_route_of_its_own_wins_over_the_default() {
        let own = Policy {
            per_second: 5,
            burst: 5,
        };
        let limits = RateLimits {
            default: Policy {
                per_second: 200,
                burst: 400,
            },
            routes: vec![Route {
                method: Method::POST,
                path: "/checkout",
                name: "checkout",
                policy: own,
                deferred: false,
            }],
        };
        assert_eq!(limits.for_request(&Method::POST, "/checkout"), ("checkout", own, false));
        assert_eq!(limits.for_request(&Method::GET, "/checkout").0, "default");
        assert_eq!(limits.for_request(&Method::POST, "/orders/x").0, "default");
    }
}

#[cfg(test)]
mod script_tests {
    //! gcra.lua against a real Redis: the burst, the pace after it, refusals that cost nothing,
    //! and two limiters (two replicas) sharing one bucket.

    use super::*;
    use crate::testing::TestRedis;

    fn limits() -> RateLimits {
        RateLimits {
            default: Policy {
                per_second: 10,
                burst: 3,
            },
            routes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_burst_passes_then_the_rate_paces_and_replicas_share_the_bucket() {
        let redis = TestRedis::start().await;
        let a = Limiter::new(redis.pool(), "svc", Secret::new("t"), limits());
        let b = Limiter::new(redis.pool(), "svc", Secret::new("t"), limits());
        let policy = limits().default;
        let mut allowed = Vec::new();
        for i in 0..5 {
            let limiter = if i % 2 == 0 { &a } else { &b };
            let d = limiter.take("default", policy, "ip:1").await.expect("take");
            allowed.push(d.allowed);
            if !d.allowed {
                assert!(
                    d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(100),
                    "{d:?}"
                );
            }
        }
        assert_eq!(
            allowed,
            [true, true, true, false, false],
            "a burst of 3 across both replicas"
        );
        let other = a.take("default", policy, "ip:2").await.expect("take");
        assert!(
            other.allowed && other.remaining == 2,
            "another caller has its own bucket: {other:?}"
        );

        // One interval later (100 ms at 10/s), exactly one more passes: refusals did not push
        // the caller's recovery out.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(a.take("default", policy, "ip:1").await.expect("take").allowed);
        assert!(!b.take("default", policy, "ip:1").await.expect("take").allowed);
    }

    /// The TAT is kept out of the AOF, but its expiry is not: a lapsed key is a replicated DEL,
    /// an fsynced write. A caller who paused for longer than its bucket takes to refill still
    /// finds its key, so a steady caller costs the AOF nothing.
    #[tokio::test]
    async fn a_caller_back_after_its_bucket_refilled_costs_no_expiry() {
        let redis = TestRedis::start().await;
        let policy = Policy {
            per_second: 1000,
            burst: 2,
        };
        let limits = RateLimits {
            default: policy,
            routes: Vec::new(),
        };
        let limiter = Limiter::new(redis.pool(), "svc", Secret::new("t"), limits);
        assert!(limiter.take("default", policy, "ip:1").await.expect("take").allowed);
        // The bucket is full again after 1 ms; a key that lived only as long would lapse here.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let back = limiter.take("default", policy, "ip:1").await.expect("take");
        assert!(back.allowed && back.remaining == 1, "a full bucket again: {back:?}");
        let mut conn = redis.conn().await;
        let stats: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .expect("info");
        assert!(
            stats.lines().any(|l| l.trim() == "expired_keys:0"),
            "no key lapsed:\n{stats}"
        );
    }

    /// A deferred route counts each request once: when its handler takes the limit, the
    /// middleware only answers for it (a refusal becomes the 429 whatever the handler said);
    /// when the handler answers without taking it (a malformed request), the middleware takes it.
    #[actix_web::test]
    async fn a_deferred_route_counts_each_request_once_whoever_takes_it() {
        use actix_web::{App, HttpRequest, HttpResponse, test};

        async fn handler(req: HttpRequest, limiter: web::Data<Limiter>) -> HttpResponse {
            if req.query_string() != "take" {
                return HttpResponse::BadRequest().finish();
            }
            let Some(limit) = Deferred::of(&req) else {
                return HttpResponse::InternalServerError().body("no deferred limit");
            };
            let mut conn = limiter.pool.get().await.expect("conn");
            let reply: Vec<i64> = LIMIT
                .key(&limit.key)
                .arg(limit.interval_us)
                .arg(limit.burst)
                .invoke_async(&mut conn)
                .await
                .expect("take_rate");
            Deferred::taken(&req, Decision::from_reply(&reply));
            HttpResponse::Ok().body("ran")
        }

        let redis = TestRedis::start().await;
        let limits = RateLimits {
            default: Policy {
                per_second: 1000,
                burst: 1000,
            },
            routes: vec![Route {
                method: Method::POST,
                path: "/deferred",
                name: "d",
                policy: Policy {
                    per_second: 1,
                    burst: 2,
                },
                deferred: true,
            }],
        };
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(Limiter::new(
                    redis.pool(),
                    "svc",
                    Secret::new("t"),
                    limits,
                )))
                .wrap(actix_web::middleware::from_fn(middleware))
                .route("/deferred", web::post().to(handler)),
        )
        .await;
        let call = |ip: &'static str, query: &'static str| {
            test::TestRequest::post()
                .uri(&format!("/deferred{query}"))
                .insert_header(("x-real-ip", ip))
                .to_request()
        };
        let mut taken_by_handler = Vec::new();
        for _ in 0..3 {
            let res = test::call_service(&app, call("10.0.0.1", "?take")).await;
            let state = res
                .headers()
                .get("ratelimit")
                .map(|v| v.to_str().unwrap_or("").to_string());
            taken_by_handler.push((res.status().as_u16(), state));
        }
        assert_eq!(
            taken_by_handler,
            [
                (200, Some("\"d\";r=1;t=1".to_string())),
                (200, Some("\"d\";r=0;t=2".to_string())),
                (429, Some("\"d\";r=0;t=2".to_string())),
            ],
            "a burst of two, each counted once"
        );
        let mut taken_by_middleware = Vec::new();
        for _ in 0..3 {
            taken_by_middleware.push(test::call_service(&app, call("10.0.0.2", "")).await.status().as_u16());
        }
        assert_eq!(taken_by_middleware, [400, 400, 429], "malformed requests count too");
    }
}
