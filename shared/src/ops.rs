//! Operations endpoints every service serves: `/health`, `/ready`, `/metrics`, `/openapi.json`,
//! and `/docs`, an API reference a person can read, rendered from the same document.

use crate::redis_pool::Pool;
use actix_web::{HttpResponse, web};
use serde_json::json;

#[derive(Clone)]
pub struct Ops {
    pub pool: Pool,
    /// The service's OpenAPI document, rendered once at start-up.
    pub openapi: std::sync::Arc<String>,
    /// `/docs`: Scalar's API reference page with the document in it (its script loads from a
    /// CDN in the reader's browser; nothing is fetched at build or start-up).
    pub docs: std::sync::Arc<String>,
    /// The `Allow` header of a 405, from the document.
    pub allow: std::sync::Arc<crate::openapi::AllowTable>,
}

impl Ops {
    pub fn new(pool: Pool, openapi: String) -> Self {
        let value: serde_json::Value = serde_json::from_str(&openapi).unwrap_or_default();
        let allow = crate::openapi::AllowTable::from_document(&value);
        let docs = utoipa_scalar::Scalar::new(value).to_html();
        Self {
            pool,
            openapi: std::sync::Arc::new(openapi),
            docs: std::sync::Arc::new(docs),
            allow: std::sync::Arc::new(allow),
        }
    }
}

pub fn configure(ops: Ops) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        // Resources, not `route(path, web::get())`: the latter guards the whole path by method,
        // so another method got 404 instead of 405.
        cfg.app_data(web::Data::new(ops))
            .service(web::resource("/health").get(health))
            .service(web::resource("/ready").get(ready))
            .service(web::resource("/metrics").get(metrics))
            .service(web::resource("/openapi.json").get(openapi))
            .service(web::resource("/docs").get(docs));
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

async fn docs(ops: web::Data<Ops>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(ops.docs.as_str().to_owned())
}

async fn openapi(ops: web::Data<Ops>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(ops.openapi.as_str().to_owned())
}
