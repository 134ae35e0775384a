//! `POST /webhooks/{provider}`: a provider's signed webhook, verified, stored durably, answered.
//! Answering fast and processing later is what providers expect: they re-send anything not
//! answered 2xx in time, and a re-send is recognised by its `webhook-id`.

use actix_web::{HttpRequest, HttpResponse, web};
use shared::webhooks::{Rejection, Signed, verify};

use super::RECEIVED;
use crate::AppState;
use crate::error::PaymentError;

/// The answer to a stored (or re-sent) webhook.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WebhookReceived {
    /// Always true: it is stored and will be applied.
    pub received: bool,
    /// True for a re-send of a webhook already stored (the same `webhook-id`): nothing new stored.
    pub duplicate: bool,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn refused(provider: &str, outcome: &str) {
    RECEIVED.inc(&[("provider", provider), ("outcome", outcome)]);
}

#[utoipa::path(
    post, path = "/webhooks/{provider}",
    params(
        ("provider" = String, Path, description = "the provider's name, as PAYMENT_GATEWAYS lists it"),
        ("webhook-id" = String, Header, description = "Standard Webhooks: the message id, the same on every re-send"),
        ("webhook-timestamp" = String, Header, description = "Unix seconds; at most 5 minutes from ours"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, with the provider's secret")
    ),
    request_body(content = Object, description = "the provider's event, as it signed it: `{\"type\": \"charge.succeeded\", \"data\": {\"reference\", \"orderId\", \"amount\", \"currency\"}}`"),
    responses(
        (status = 200, body = WebhookReceived, description = "stored (or a re-send of one stored): it will be applied"),
        (status = 401, description = "invalid-signature: missing or bad signature, or a timestamp outside ±5 min; nothing recorded"),
        (status = 404, description = "gateway-not-found: no such provider, or none whose webhooks we can verify"),
        (status = 413, description = "payload-too-large: more than 16 KiB")
    )
)]
pub(crate) async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    provider: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    let provider = provider.into_inner();
    let Some(secret) = state
        .settings
        .webhook_secrets
        .get(&provider)
        .filter(|_| state.gateways.get(&provider).is_some())
    else {
        refused("unknown", "unknown_provider");
        return Err(PaymentError::GatewayNotFound(provider.chars().take(64).collect()));
    };
    let body = match shared::body::read_bytes(&req, payload).await {
        Ok(body) => body,
        Err(e) => {
            refused(&provider, "too_large");
            return Err(e.into());
        }
    };
    let signed = Signed {
        id: header(&req, "webhook-id"),
        timestamp: header(&req, "webhook-timestamp"),
        signature: header(&req, "webhook-signature"),
    };
    let now = (shared::time::now_ms() / 1000) as i64;
    let id = match verify(secret, signed, &body, now) {
        Ok(id) => id,
        Err(rejection) => {
            let outcome = match rejection {
                Rejection::Malformed(_) => "malformed",
                Rejection::Stale => "stale",
                Rejection::BadSignature => "invalid_signature",
            };
            refused(&provider, outcome);
            tracing::warn!(%provider, reason = %rejection, "webhook refused");
            return Err(PaymentError::InvalidSignature(rejection.to_string()));
        }
    };
    let fresh = state.store.receive_webhook(&provider, id, &body).await?;
    let outcome = if fresh { "stored" } else { "duplicate" };
    RECEIVED.inc(&[("provider", &provider), ("outcome", outcome)]);
    tracing::info!(%provider, webhook_id = id, outcome, "webhook received");
    Ok(HttpResponse::Ok().json(WebhookReceived {
        received: true,
        duplicate: !fresh,
    }))
}
