//! Operations endpoints every service serves: `/health`, `/ready`, `/metrics`, `/openapi.json`.

use crate::redis_pool::Pool;
use actix_web::{HttpResponse, web};
use serde_json::json;

#[derive(Clone)]
pub struct Ops {
    pub pool: Pool,
    /// The service's OpenAPI document, rendered once at start-up.
    pub openapi: std::sync::Arc<String>,
}

pub fn configure(ops: Ops) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        // Resources, not `route(path, web::get())`: the latter guards the whole path by method,
        // so another method got 404 instead of 405.
        cfg.app_data(web::Data::new(ops))
            .service(web::resource("/health").get(health))
            .service(web::resource("/ready").get(ready))
            .service(web::resource("/metrics").get(metrics))
            .service(web::resource("/openapi.json").get(openapi));
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn ready(ops: web::Data<Ops>) -> HttpResponse {
    if crate::redis_pool::is_ready(&ops.pool).await {
        HttpResponse::Ok().json(json!({"status": "ok", "checks": {"redis": "ok"}}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable", "checks": {"redis": "unavailable"}}))
    }
}

async fn metrics(ops: web::Data<Ops>) -> HttpResponse {
    HttpResponse::Ok()
        // prometheus-client writes the OpenMetrics text format (`# EOF`, `_total`); say so.
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(crate::metrics::render(Some(&ops.pool)))
}

async fn openapi(ops: web::Data<Ops>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(ops.openapi.as_str().to_owned())
}
