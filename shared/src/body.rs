//! Strict JSON bodies: `application/json` only, at most [`BODY_LIMIT`] bytes, a JSON object
//! that satisfies the request type's own schema ([`crate::schema`]: types, bounds, lengths,
//! patterns, enums, no unknown fields), else a 400 that names the problem. Also the canonical
//! form used to fingerprint a request for idempotency.

use actix_web::HttpRequest;
use actix_web::http::header;
use actix_web::web;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::problem::CommonError;

/// The contract's body limit.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Why a body is refused before it is read: its type.
pub const NOT_JSON: &str = "send the body as JSON with Content-Type: application/json";
/// Why a body is refused before it is read: it is compressed (or otherwise encoded), which would
/// otherwise surface as a puzzling "malformed JSON" at column 1.
pub const ENCODED: &str = "send the body without a Content-Encoding: none is supported";

/// A parsed body, and its canonical JSON for the request's fingerprint.
pub struct JsonBody<T> {
    pub value: T,
    /// The body as parsed, written back canonically (see [`fingerprint`]): the parse the schema
    /// check needed already, so the fingerprint does not parse the body a second time.
    canonical: Vec<u8>,
}

impl<T> JsonBody<T> {
    /// The request's fingerprint, as [`fingerprint`] computes it from the raw body.
    pub fn fingerprint(&self, method: &str, path: &str) -> String {
        digest(method, path, &self.canonical)
    }
}

/// Reads and parses a JSON body, refusing anything the contract or `T`'s schema does not allow.
pub async fn read_json<T: DeserializeOwned + ToSchema + 'static>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<JsonBody<T>, CommonError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
    if !is_json {
        return Err(CommonError::UnsupportedMediaType(NOT_JSON));
    }
    let buf = read_bytes(req, payload).await?;
    let (value, canonical) = parse_canonical(&buf)?;
    Ok(JsonBody { value, canonical })
}

/// Reads a body of at most [`BODY_LIMIT`] bytes, unencoded, as it came (a signed webhook's
/// signature covers the exact bytes).
pub async fn read_bytes(req: &HttpRequest, mut payload: web::Payload) -> Result<web::BytesMut, CommonError> {
    let encoded = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(CommonError::UnsupportedMediaType(ENCODED));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        return Err(CommonError::PayloadTooLarge { limit: BODY_LIMIT });
    }
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| CommonError::InvalidRequest(format!("could not read the body: {e}")))?;
        if buf.len() + chunk.len() > BODY_LIMIT {
            return Err(CommonError::PayloadTooLarge { limit: BODY_LIMIT });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Parses with a message that tells a client what to fix: the JSON, then `T`'s schema, then
/// the type itself. serde alone would take a JSON array for a struct (`[1, 2]` as
/// `{"itemId": 1, "quantity": 2}`); the schema says a body is an object.
pub fn parse<T: DeserializeOwned + ToSchema + 'static>(raw: &[u8]) -> Result<T, CommonError> {
    parse_canonical(raw).map(|(value, _)| value)
}

/// [`parse`], and the body's canonical JSON.
fn parse_canonical<T: DeserializeOwned + ToSchema + 'static>(raw: &[u8]) -> Result<(T, Vec<u8>), CommonError> {
    let value: serde_json::Value = parse_as(raw)?;
    crate::schema::check::<T>(&value).map_err(|why| CommonError::InvalidRequest(format!("invalid body: {why}")))?;
    let canonical = serde_json::to_vec(&value).unwrap_or_else(|_| raw.to_vec());
    let value = serde_json::from_value(value).map_err(|e| CommonError::InvalidRequest(format!("invalid body: {e}")))?;
    Ok((value, canonical))
}

fn parse_as<T: DeserializeOwned>(raw: &[u8]) -> Result<T, CommonError> {
    serde_json::from_slice(raw).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Syntax | Category::Eof => "malformed JSON",
            Category::Data => "invalid body",
            Category::Io => "unreadable body",
        };
        CommonError::InvalidRequest(format!("{what}: {e}"))
    })
}

/// SHA-256 over method, path and the canonical JSON of the body (object keys sorted, no
/// insignificant whitespace), so that key order and spacing do not make two requests differ.
pub fn fingerprint(method: &str, path: &str, raw: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| serde_json::to_vec(&v).ok())
        .unwrap_or_else(|| raw.to_vec());
    digest(method, path, &canonical)
}

fn digest(method: &str, path: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical);
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a = fingerprint("POST", "/checkout", br#"{"itemId":1,"quantity":2}"#);
        let b = fingerprint("POST", "/checkout", br#"{ "quantity": 2, "itemId": 1 }"#);
        assert_eq!(a, b);
    }

    #[test]
    fn a_read_bodys_fingerprint_is_the_one_its_raw_bytes_give() {
        let raw = br#"{ "a" : 7 }"#;
        let (_, canonical) = parse_canonical::<T>(raw).unwrap_or_else(|e| panic!("{e}"));
        let body = JsonBody { value: (), canonical };
        assert_eq!(body.fingerprint("POST", "/x"), fingerprint("POST", "/x", raw));
    }

    #[test]
    fn fingerprint_differs_by_payload_method_and_path() {
        let base = fingerprint("POST", "/checkout", br#"{"itemId":1}"#);
        assert_ne!(base, fingerprint("POST", "/checkout", br#"{"itemId":2}"#));
        assert_ne!(base, fingerprint("PUT", "/checkout", br#"{"itemId":1}"#));
        assert_ne!(base, fingerprint("POST", "/reserve", br#"{"itemId":1}"#));
    }

    #[derive(serde::Deserialize, Debug, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        #[schema(maximum = 10)]
        a: u32,
    }

    fn refusal(raw: &[u8]) -> String {
        match parse::<T>(raw) {
            Ok(t) => format!("taken: {t:?}"),
            Err(e) => e.problem().detail,
        }
    }

    #[test]
    fn parse_errors_say_what_was_wrong() {
        assert!(refusal(b"{").contains("malformed JSON"));
        assert_eq!(refusal(br#"{"a":"x"}"#), "invalid body: a: must be an integer");
        assert_eq!(refusal(br#"{"a":1,"b":2}"#), "invalid body: b: is not a known field");
        assert_eq!(refusal(br#"{"a":11}"#), "invalid body: a: must be at most 10");
        assert!(parse::<T>(br#"{"a":10}"#).is_ok());
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_even_where_serde_would_take_it() {
        assert_eq!(refusal(b"[1]"), "invalid body: body: must be an object");
        assert_eq!(refusal(b"null"), "invalid body: body: must be an object");
        assert_eq!(refusal(b"7"), "invalid body: body: must be an object");
    }
}
