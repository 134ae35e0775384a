//! What the e2e tests share for talking to the stack: fresh keys, problem slugs, whole answers.

use reqwest::header::HeaderMap;
use serde_json::Value;

/// A fresh Idempotency-Key.
pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The slug at the end of a problem's `type` ("" when the body is not a problem).
pub fn slug(body: &Value) -> &str {
    body["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("")
}

/// One answer, kept whole: status, headers, the exact bytes and their JSON.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
    pub json: Value,
}

impl Reply {
    pub async fn from(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("read the body").to_vec();
        let json =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply {
            status,
            headers,
            bytes,
            json,
        }
    }

    /// Whether it carries `Idempotent-Replayed: true`.
    pub fn replayed(&self) -> bool {
        self.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()) == Some("true")
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}
