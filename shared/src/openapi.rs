//! A service's OpenAPI document as published: what each handler's annotation declares, plus the
//! conventions every service shares, added here once instead of on every handler, so that the
//! document says exactly what the server does:
//!
//! - every error answer is `application/problem+json` ([`PROBLEM_SCHEMA`]);
//! - an operation with a JSON body can answer 400 `invalid-request`, 413 and 415;
//! - an operation behind the internal token (`security: bearer`) can answer 401;
//! - an operation that takes an `Idempotency-Key` declares it exactly (required, 1–255 printable
//!   ASCII characters), can answer 409 `idempotency-key-in-use` (with `Retry-After`) and 422
//!   `idempotency-key-reused`, and marks a replay with `Idempotent-Replayed`;
//! - every operation but `/health` can answer 503 when Redis does not (with `Retry-After`);
//! - every operation but `/health`, `/ready` and `/metrics` can answer 429 `rate-limited`
//!   (with `Retry-After`, `RateLimit-Policy` and `RateLimit`: `crate::ratelimit`);
//! - a 202 carries `Location` and `Retry-After`;
//! - the operations endpoints (`/health`, `/ready`, `/metrics`) are listed too.
//!
//! [`AllowTable`] reads the methods of each path back from the published document, for the
//! `Allow` header of a 405.

use serde_json::{Map, Value, json};

use crate::idempotency::HEADER;

/// The problem+json body every error answer has (RFC 9457), with the contract's extensions.
pub const PROBLEM_SCHEMA: &str = "ProblemDetails";

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details. Answers after an order exists carry its orderId; declines their declineCode.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "description": "https://checkout.example/problems/<slug>: clients branch on the slug"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string", "description": "what was wrong, for a person"},
            "instance": {"type": "string", "description": "the request id (X-Request-ID)"}
        },
        "additionalProperties": true
    })
}

fn problem_content() -> Value {
    json!({"application/problem+json": {"schema": {"$ref": format!("#/components/schemas/{PROBLEM_SCHEMA}")}}})
}

fn problem(description: &str) -> Value {
    json!({"description": description, "content": problem_content()})
}

fn header(description: &str, schema: Value, required: bool) -> Value {
    json!({"description": description, "required": required, "schema": schema})
}

fn retry_after() -> Value {
    header(
        "seconds to wait before retrying",
        json!({"type": "integer", "minimum": 0}),
        false,
    )
}

/// The `Idempotency-Key` request header as the contract defines it.
fn idempotency_key_parameter() -> Value {
    json!({
        "name": "Idempotency-Key",
        "in": "header",
        "required": true,
        "description": "1–255 printable ASCII characters without spaces, unique per intended operation; a retry sends the same one",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}
    })
}

fn ops_paths() -> Value {
    json!({
        "/health": {"get": {
            "summary": "Liveness",
            "operationId": "health",
            "responses": {"200": {"description": "the process serves", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}
            }}}}}
        }},
        "/ready": {"get": {
            "summary": "Readiness: Redis answers",
            "operationId": "ready",
            "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
                "503": {"description": "Redis does not answer", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}
            }
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (OpenMetrics text)",
            "operationId": "metrics",
            "responses": {"200": {"description": "the process' metrics", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}
        }}
    })
}

fn readiness_schema() -> Value {
    json!({
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}}
        }
    })
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The published document: `doc` with the shared conventions applied.
pub fn render(doc: utoipa::openapi::OpenApi) -> String {
    let mut value = serde_json::to_value(doc).unwrap_or(Value::Null);
    apply_conventions(&mut value);
    serde_json::to_string(&value).unwrap_or_else(|_| "{}".into())
}

/// What every document says of its bodies beside the schemas.
const BODY_NOTE: &str = " Bodies are JSON objects; an integer is written as one (`100`, not `100.0`, which is refused with 400: for money, `100.0` suggests dollars where cents are meant).";

fn apply_conventions(doc: &mut Value) {
    let Some(root) = doc.as_object_mut() else {
        return;
    };
    if let Some(info) = root.get_mut("info").and_then(Value::as_object_mut) {
        let description = info.get("description").and_then(Value::as_str).unwrap_or_default();
        let described = format!("{description}{BODY_NOTE}");
        info.insert("description".into(), Value::String(described.trim_start().to_string()));
    }
    let paths = root.entry("paths").or_insert_with(|| json!({}));
    if let (Some(paths), Value::Object(ops)) = (paths.as_object_mut(), ops_paths()) {
        for (path, item) in ops {
            paths.entry(path).or_insert(item);
        }
        for (path, item) in paths.iter_mut() {
            for method in METHODS {
                if let Some(operation) = item.get_mut(method) {
                    apply_to_operation(path, operation);
                }
            }
        }
    }
    let components = root.entry("components").or_insert_with(|| json!({}));
    if let Some(components) = components.as_object_mut() {
        let schemas = components.entry("schemas").or_insert_with(|| json!({}));
        if let Some(schemas) = schemas.as_object_mut() {
            schemas.insert(PROBLEM_SCHEMA.into(), problem_schema());
            schemas.insert("Readiness".into(), readiness_schema());
        }
        let schemes = components.entry("securitySchemes").or_insert_with(|| json!({}));
        if let Some(schemes) = schemes.as_object_mut() {
            schemes.insert(
                "bearer".into(),
                json!({"type": "http", "scheme": "bearer", "description": "INTERNAL_TOKEN (the platform: internal and admin calls), or an account's API key (`sk_test_…`) where an operation says so"}),
            );
        }
    }
}

fn apply_to_operation(path: &str, operation: &mut Value) {
    let has_body = operation.get("requestBody").is_some();
    let secured = operation
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let takes_key = operation.get("parameters").and_then(Value::as_array).is_some_and(|ps| {
        ps.iter()
            .any(|p| p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(HEADER)))
    });
    if takes_key && let Some(params) = operation.get_mut("parameters").and_then(Value::as_array_mut) {
        params.retain(|p| !p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(HEADER)));
        params.insert(0, idempotency_key_parameter());
    }
    let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses.entry(status).or_insert_with(|| problem(description));
    };
    if has_body {
        add("400", "invalid-request: the body is not what the schema says");
        add("413", "payload-too-large: bodies are limited to 16 KiB");
        add("415", "unsupported-media-type: send JSON, uncompressed");
    }
    if takes_key {
        add("400", "idempotency-key-missing or idempotency-key-invalid");
        add(
            "409",
            "idempotency-key-in-use: the first request with this key is still running",
        );
        add("422", "idempotency-key-reused: this key came with another request");
    }
    if secured {
        add("401", "unauthorized: no or a wrong bearer token");
    }
    if !matches!(path, "/health" | "/ready" | "/metrics") {
        add("429", "rate-limited: this caller is over its limit; nothing was done");
    }
    if path != "/health" {
        add(
            "503",
            "dependency-unavailable: Redis (or a service this one calls) does not answer; retry",
        );
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        let error = status.starts_with('4') || status.starts_with('5');
        if error && !response.contains_key("content") {
            response.insert("content".into(), problem_content());
        }
        let mut headers: Map<String, Value> = response
            .get("headers")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match status.as_str() {
            "202" => {
                headers.insert(
                    "Location".into(),
                    header("where to follow the work up", json!({"type": "string"}), true),
                );
                headers.insert("Retry-After".into(), retry_after());
            }
            "409" | "503" => {
                headers.insert("Retry-After".into(), retry_after());
            }
            "429" => {
                headers.insert("Retry-After".into(), retry_after());
                for (name, what) in [
                    (
                        "RateLimit-Policy",
                        "the caller's quota and window: `\"checkout\";q=100;w=2`",
                    ),
                    ("RateLimit", "what remains and when it is whole: `\"checkout\";r=0;t=2`"),
                ] {
                    headers.insert(name.into(), header(what, json!({"type": "string"}), true));
                }
            }
            s if takes_key && (s.starts_with('2') || s.starts_with('4')) => {
                headers.insert(
                    "Idempotent-Replayed".into(),
                    header(
                        "`true` when this is the stored answer of an earlier request with the same key",
                        json!({"type": "string", "enum": ["true"]}),
                        false,
                    ),
                );
            }
            _ => {}
        }
        if !headers.is_empty() {
            response.insert("headers".into(), Value::Object(headers));
        }
    }
}

/// The methods each path of a document serves, for the `Allow` header of a 405 (RFC 9110
/// requires one): read from the published document, so it lists what the document lists.
#[derive(Debug, Default)]
pub struct AllowTable(Vec<(Vec<String>, String)>);

impl AllowTable {
    pub fn from_document(doc: &Value) -> Self {
        let mut table = Vec::new();
        if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in paths {
                let methods: Vec<String> = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_ascii_uppercase())
                    .collect();
                table.push((segments(path), methods.join(", ")));
            }
        }
        // Served beside the document, not described in it.
        table.push((segments("/openapi.json"), "GET".into()));
        table.push((segments("/docs"), "GET".into()));
        Self(table)
    }

    /// The `Allow` value for a request path, if the document has the path.
    pub fn allow(&self, path: &str) -> Option<&str> {
        let wanted = segments(path);
        self.0
            .iter()
            .find(|(template, _)| {
                template.len() == wanted.len()
                    && template
                        .iter()
                        .zip(&wanted)
                        .all(|(t, w)| (t.starts_with('{') && t.ends_with('}')) || t == w)
            })
            .map(|(_, methods)| methods.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/').split('/').map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        let mut doc = json!({
            "openapi": "3.1.0",
            "paths": {
                "/things/{id}": {
                    "get": {"responses": {"200": {"description": "ok"}, "404": {"description": "thing-not-found"}}},
                    "put": {
                        "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                        "security": [{"bearer": []}],
                        "responses": {"200": {"description": "ok"}}
                    }
                },
                "/things": {"post": {
                    "parameters": [{"name": "Idempotency-Key", "in": "header"}],
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": {"201": {"description": "made"}, "202": {"description": "later"}}
                }}
            }
        });
        apply_conventions(&mut doc);
        doc
    }

    #[test]
    fn errors_are_problem_json_and_each_operation_lists_what_it_can_answer() {
        let doc = document();
        let put = &doc["paths"]["/things/{id}"]["put"]["responses"];
        for status in ["400", "401", "413", "415", "503"] {
            assert!(put.get(status).is_some(), "PUT lacks {status}");
        }
        assert!(put.get("409").is_none(), "no key, no in-use");
        let not_found = &doc["paths"]["/things/{id}"]["get"]["responses"]["404"];
        assert!(not_found["content"]["application/problem+json"].is_object());
        assert!(doc["paths"]["/health"]["get"]["responses"].get("503").is_none());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn an_idempotency_key_is_declared_exactly_with_its_answers() {
        let doc = document();
        let post = &doc["paths"]["/things"]["post"];
        let key = &post["parameters"][0];
        assert_eq!(key["required"], true);
        assert_eq!(key["schema"]["maxLength"], 255);
        for status in ["400", "409", "422"] {
            assert!(post["responses"].get(status).is_some(), "POST lacks {status}");
        }
        assert_eq!(post["responses"]["202"]["headers"]["Location"]["required"], true);
        assert!(post["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object());
        assert!(post["responses"]["409"]["headers"]["Retry-After"].is_object());
    }

    #[test]
    fn allow_lists_the_documented_methods_of_the_matching_path() {
        let table = AllowTable::from_document(&document());
        assert_eq!(table.allow("/things/42"), Some("GET, PUT"));
        assert_eq!(table.allow("/things"), Some("POST"));
        assert_eq!(table.allow("/health"), Some("GET"));
        assert_eq!(table.allow("/openapi.json"), Some("GET"));
        assert_eq!(table.allow("/nothing/here"), None);
    }
}
