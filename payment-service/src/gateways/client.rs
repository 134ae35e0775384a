//! One provider's HTTP API, as the simulator (and Stripe) speak it, and what each answer proves.
//! The provider's Idempotency-Key is always sent: a retry at the same provider can then never
//! charge twice.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

/// How a request to a provider went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent<T> {
    Answered(T),
    /// The provider certainly did not process it. `by_answer`: the provider said so (it holds
    /// nothing under the key); otherwise no connection was made (refused, or not opened in
    /// time), so nothing of this request reached it.
    NotProcessed {
        by_answer: bool,
    },
    /// It may have been processed: a timeout, a connection closed without an answer, an error
    /// status that does not say "not processed", or an answer we cannot read.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeReply {
    Succeeded {
        reference: String,
    },
    Declined {
        reference: String,
        code: String,
    },
    /// A Pix: taken, waiting for its payer; the provider's webhook tells how it ends.
    Pending {
        reference: String,
        code: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundReply {
    Refunded {
        reference: String,
    },
    /// The provider answered that it will not refund this (more than remains of the charge):
    /// an answer, not a failure of the provider.
    Refused {
        message: String,
    },
}

#[derive(Debug, Deserialize)]
struct ProviderCharge {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    pix: Option<ProviderPix>,
}

#[derive(Debug, Deserialize)]
struct ProviderPix {
    code: String,
}

#[derive(Debug, Deserialize, Default)]
struct ProviderError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    charge: Option<String>,
    #[serde(default)]
    processed: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ProviderError,
}

/// A charge as sent to a provider.
#[derive(Debug)]
pub struct ChargeRequest<'a> {
    pub key: &'a str,
    pub order_id: &'a str,
    pub amount: u64,
    pub currency: &'a str,
    pub customer_id: &'a str,
    pub payment_method: &'a str,
}

#[derive(Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    base: String,
}

/// The answer's status and body, or what kept it from being read.
type Exchange = Result<(u16, Vec<u8>), reqwest::Error>;

impl ProviderClient {
    pub fn new(base: &str, timeout: Duration, connect_timeout: Duration) -> Result<Self, String> {
        let http = shared::tls::client_builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| format!("provider client: {e}"))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn post(&self, path: &str, key: &str, body: serde_json::Value) -> (Exchange, Duration) {
        let started = Instant::now();
        let result = async {
            let resp = self
                .http
                .post(format!("{}{path}", self.base))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await?;
            let status = resp.status().as_u16();
            Ok((status, resp.bytes().await?.to_vec()))
        }
        .await;
        (result, started.elapsed())
    }

    pub async fn charge(&self, req: &ChargeRequest<'_>) -> (Sent<ChargeReply>, Duration) {
        let body = json!({
            "amount": req.amount, "currency": req.currency, "orderId": req.order_id,
            "customerId": req.customer_id, "paymentMethod": req.payment_method,
        });
        let (result, took) = self.post("/v1/charges", req.key, body).await;
        (read_charge(result), took)
    }

    pub async fn refund(&self, key: &str, reference: &str, amount: u64) -> (Sent<RefundReply>, Duration) {
        let (result, took) = self
            .post("/v1/refunds", key, json!({"charge": reference, "amount": amount}))
            .await;
        (read_refund(result), took)
    }
}

fn not_answered<T>(e: &reqwest::Error) -> Sent<T> {
    if e.is_connect() {
        Sent::NotProcessed { by_answer: false }
    } else {
        Sent::Unknown(format!("{e:#}"))
    }
}

/// An error answer: "not processed" only when the provider says so in so many words.
fn error_answer<T>(status: u16, body: &[u8]) -> Sent<T> {
    let error = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    if error.processed == Some(false) {
        Sent::NotProcessed { by_answer: true }
    } else {
        Sent::Unknown(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(body).chars().take(200).collect::<String>()
        ))
    }
}

pub fn read_charge(result: Exchange) -> Sent<ChargeReply> {
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(e) => return not_answered(&e),
    };
    match status {
        200 | 201 => match serde_json::from_slice::<ProviderCharge>(&body) {
            Ok(ProviderCharge {
                id,
                status: Some(status),
                pix: Some(pix),
            }) if status == "pending" => Sent::Answered(ChargeReply::Pending {
                reference: id,
                code: pix.code,
            }),
            Ok(c) if c.status.as_deref().is_none_or(|s| s == "succeeded") => {
                Sent::Answered(ChargeReply::Succeeded { reference: c.id })
            }
            Ok(c) => Sent::Unknown(format!("a charge answered as {:?}", c.status)),
            Err(e) => Sent::Unknown(format!("unreadable charge: {e}")),
        },
        402 => match serde_json::from_slice::<ErrorBody>(&body).map(|b| b.error) {
            Ok(ProviderError {
                code: Some(code),
                charge: Some(reference),
                ..
            }) => Sent::Answered(ChargeReply::Declined { reference, code }),
            _ => Sent::Unknown("unreadable decline".into()),
        },
        _ => error_answer(status, &body),
    }
}

pub fn read_refund(result: Exchange) -> Sent<RefundReply> {
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(e) => return not_answered(&e),
    };
    match status {
        200 | 201 => match serde_json::from_slice::<ProviderCharge>(&body) {
            Ok(r) => Sent::Answered(RefundReply::Refunded { reference: r.id }),
            Err(e) => Sent::Unknown(format!("unreadable refund: {e}")),
        },
        400 => match serde_json::from_slice::<ErrorBody>(&body).map(|b| b.error) {
            Ok(ProviderError {
                kind: Some(kind),
                message,
                ..
            }) if kind == "invalid_request_error" => Sent::Answered(RefundReply::Refused {
                message: message.unwrap_or_default(),
            }),
            _ => error_answer(status, &body),
        },
        _ => error_answer(status, &body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Exchange {
        Ok((status, body.as_bytes().to_vec()))
    }

    #[test]
    fn only_an_explicit_not_processed_answer_proves_the_charge_was_not_taken() {
        assert_eq!(
            read_charge(answer(503, r#"{"error":{"type":"api_error","processed":false}}"#)),
            Sent::NotProcessed { by_answer: true }
        );
        assert!(matches!(read_charge(answer(503, "upstream down")), Sent::Unknown(_)));
        assert!(matches!(
            read_charge(answer(500, r#"{"error":{"type":"api_error"}}"#)),
            Sent::Unknown(_)
        ));
        assert!(matches!(read_charge(answer(200, "not json")), Sent::Unknown(_)));
    }

    #[test]
    fn successes_and_declines_carry_the_providers_reference() {
        assert_eq!(
            read_charge(answer(200, r#"{"id":"ch_1","status":"succeeded"}"#)),
            Sent::Answered(ChargeReply::Succeeded {
                reference: "ch_1".into()
            })
        );
        assert_eq!(
            read_charge(answer(
                402,
                r#"{"error":{"type":"card_error","code":"card_declined","charge":"ch_2"}}"#
            )),
            Sent::Answered(ChargeReply::Declined {
                reference: "ch_2".into(),
                code: "card_declined".into()
            })
        );
        assert_eq!(
            read_charge(answer(
                200,
                r#"{"id":"ch_3","status":"pending","pix":{"code":"000201"}}"#
            )),
            Sent::Answered(ChargeReply::Pending {
                reference: "ch_3".into(),
                code: "000201".into()
            })
        );
        assert!(matches!(
            read_charge(answer(200, r#"{"id":"ch_4","status":"pending"}"#)),
            Sent::Unknown(_)
        ));
        assert_eq!(
            read_refund(answer(200, r#"{"id":"re_1"}"#)),
            Sent::Answered(RefundReply::Refunded {
                reference: "re_1".into()
            })
        );
        assert_eq!(
            read_refund(answer(
                400,
                r#"{"error":{"type":"invalid_request_error","message":"too much"}}"#
            )),
            Sent::Answered(RefundReply::Refused {
                message: "too much".into()
            })
        );
    }
}
