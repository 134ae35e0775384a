//! Mechanisms every checkout service shares; the business rules live in the services.
//!
//! Layout:
//! - [`config`]: environment-driven settings with documented defaults, read once at start-up.
//! - [`problem`]: RFC 9457 problem+json, the only error shape a client ever sees.
//! - [`request_id`]: `X-Request-ID` propagation, used as each problem's `instance`.
//! - [`body`]: bounded, strict JSON body reading and the request fingerprint.
//! - [`schema`]: request bodies checked against the schema their OpenAPI document publishes.
//! - [`idempotency`]: the Redis-backed `Idempotency-Key` store and its HTTP flow.
//! - [`redis_pool`]: connection pool setup and readiness checks.
//! - [`http_client`]: the retrying client services use to call each other.
//! - [`auth`]: the internal bearer token check; [`accounts`]: accounts, API keys and the caller.
//! - [`metrics`], [`ops`]: `/metrics`, `/health`, `/ready`, `/openapi.json`, `/docs`.
//! - [`ratelimit`]: per-caller rate limits kept in Redis, as a middleware.
//! - [`openapi`]: the conventions every service's OpenAPI document states, and `Allow` from it.
//! - [`telemetry`]: JSON logs and OpenTelemetry traces (W3C `traceparent` in and out, OTLP export).
//! - [`ids`]: shard selection for hash-tagged keys.
//! - [`lua`]: Redis scripts composed from `.lua` files.
//! - `testing` (feature): a real `redis-server` for the services' script and store tests.
//! - [`webhooks`]: Standard Webhooks signatures (sign and verify, constant-time).
//! - [`server`]: builds and runs an actix server the same way for `main` and for tests.

pub mod accounts;
pub mod auth;
pub mod body;
pub mod config;
pub mod http_client;
pub mod idempotency;
pub mod ids;
pub mod lua;
pub mod metrics;
pub mod money;
pub mod openapi;
pub mod ops;
pub mod outbox;
pub mod problem;
pub mod ratelimit;
pub mod redis_pool;
pub mod request_id;
pub mod schema;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod tls;
pub mod webhooks;

pub use problem::{CommonError, Problem, ServiceError};

/// Every binary linking this crate (the services, the bench's stand-in and load generator, the
/// tests) allocates with mimalloc: a request allocates and frees many small buffers across the
/// runtime's threads, and glibc's malloc took a visible share of the services' CPU in `perf`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
