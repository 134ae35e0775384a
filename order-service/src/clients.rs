//! Typed calls to stock and payment. Each call carries an Idempotency-Key derived from the
//! order (`<orderId>:reserve`, …), so a retried or resumed step can never act twice.

use serde::Deserialize;
use serde_json::json;
use shared::http_client::{CallError, CallResponse, Downstream};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub reservation_id: String,
    pub total_fee: u64,
    pub currency: String,
}

#[derive(Debug)]
pub enum ReserveAnswer {
    Reserved(Reservation),
    ItemNotFound,
    OutOfStock,
    Unexpected(String),
}

#[derive(Debug)]
pub enum TransitionAnswer {
    Done,
    /// A definitive refusal (slug): released/expired, completed, or unknown.
    Refused(String),
    Unexpected(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub charge_id: String,
}

/// A charge as payment lists it under its order.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedCharge {
    charge_id: String,
    status: String,
    amount: u64,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct OrderCharges {
    charges: Vec<ListedCharge>,
}

#[derive(Debug)]
pub enum ChargeAnswer {
    Charged(Charge),
    Declined { decline_code: String },
    Refused { detail: String },
    Unexpected(String),
}

#[derive(Debug)]
pub enum RefundAnswer {
    Refunded { refund_id: String },
    Unexpected(String),
}

fn unexpected(resp: &CallResponse) -> String {
    format!(
        "answered {} {}",
        resp.status.as_u16(),
        String::from_utf8_lossy(&resp.body)
            .chars()
            .take(300)
            .collect::<String>()
    )
}

#[derive(Clone)]
pub struct StockClient(Downstream);

impl StockClient {
    pub fn new(d: Downstream) -> Self {
        Self(d)
    }

    pub async fn reserve(&self, order_id: &str, item_id: u64, quantity: u32) -> Result<ReserveAnswer, CallError> {
        let resp = self
            .0
            .post(
                "/reserve",
                &format!("{order_id}:reserve"),
                &json!({"itemId": item_id, "quantity": quantity}),
            )
            .await?;
        Ok(match (resp.status.as_u16(), resp.problem_slug().as_deref()) {
            (201, _) => match resp.json::<Reservation>() {
                Some(r) => ReserveAnswer::Reserved(r),
                None => ReserveAnswer::Unexpected(unexpected(&resp)),
            },
            (404, Some("item-not-found")) => ReserveAnswer::ItemNotFound,
            (409, Some("out-of-stock")) => ReserveAnswer::OutOfStock,
            _ => ReserveAnswer::Unexpected(unexpected(&resp)),
        })
    }

    pub async fn complete(&self, order_id: &str, reservation_id: &str) -> Result<TransitionAnswer, CallError> {
        self.transition("/complete", &format!("{order_id}:complete"), reservation_id)
            .await
    }

    pub async fn release(&self, order_id: &str, reservation_id: &str) -> Result<TransitionAnswer, CallError> {
        self.transition("/release", &format!("{order_id}:release"), reservation_id)
            .await
    }

    async fn transition(&self, path: &str, key: &str, reservation_id: &str) -> Result<TransitionAnswer, CallError> {
        let resp = self
            .0
            .post(path, key, &json!({"reservationId": reservation_id}))
            .await?;
        Ok(match (resp.status.as_u16(), resp.problem_slug()) {
            (200, _) => TransitionAnswer::Done,
            (404 | 409, Some(slug)) if slug.starts_with("reservation-") => TransitionAnswer::Refused(slug),
            _ => TransitionAnswer::Unexpected(unexpected(&resp)),
        })
    }
}

#[derive(Clone)]
pub struct PaymentClient(Downstream);

impl PaymentClient {
    pub fn new(d: Downstream) -> Self {
        Self(d)
    }

    pub async fn charge(
        &self,
        order_id: &str,
        amount: u64,
        currency: &str,
        customer_id: &str,
        payment_method: &str,
    ) -> Result<ChargeAnswer, CallError> {
        let body = json!({
            "orderId": order_id,
            "amount": amount,
            "currency": currency,
            "customerId": customer_id,
            "paymentMethod": payment_method,
        });
        let resp = self.0.post("/charge", &format!("{order_id}:charge"), &body).await?;
        Ok(match (resp.status.as_u16(), resp.problem_slug().as_deref()) {
            (201, _) => match resp.json::<Charge>() {
                Some(c) => ChargeAnswer::Charged(c),
                None => ChargeAnswer::Unexpected(unexpected(&resp)),
            },
            (402, _) => {
                let code = resp
                    .json::<serde_json::Value>()
                    .and_then(|v| v.get("declineCode").and_then(|c| c.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "card_declined".into());
                ChargeAnswer::Declined { decline_code: code }
            }
            (400, Some("invalid-request")) => {
                let detail = resp
                    .json::<serde_json::Value>()
                    .and_then(|v| v.get("detail").and_then(|c| c.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "the payment service refused the request".into());
                ChargeAnswer::Refused { detail }
            }
            _ => ChargeAnswer::Unexpected(unexpected(&resp)),
        })
    }

    /// The order's succeeded charge of `amount` in `currency`, if payment holds one: the record
    /// of a charge outlives its Idempotency-Key (IDEMPOTENCY_TTL), so this finds a charge even
    /// when a resent charge would no longer be recognised. `Err` says why payment could not tell.
    pub async fn standing_charge(&self, order_id: &str, amount: u64, currency: &str) -> Result<Option<String>, String> {
        let resp = self
            .0
            .get(&format!("/charges?orderId={order_id}"))
            .await
            .map_err(|e| e.to_string())?;
        if resp.status.as_u16() != 200 {
            return Err(unexpected(&resp));
        }
        let listed = resp.json::<OrderCharges>().ok_or_else(|| unexpected(&resp))?;
        Ok(listed
            .charges
            .into_iter()
            .find(|c| c.status == "succeeded" && c.amount == amount && c.currency == currency)
            .map(|c| c.charge_id))
    }

    pub async fn refund(&self, order_id: &str, charge_id: &str) -> Result<RefundAnswer, CallError> {
        let resp = self
            .0
            .post(
                "/refund",
                &format!("{order_id}:refund"),
                &json!({"chargeId": charge_id}),
            )
            .await?;
        Ok(match resp.status.as_u16() {
            200 => match resp
                .json::<serde_json::Value>()
                .and_then(|v| v.get("refundId").and_then(|r| r.as_str()).map(str::to_string))
            {
                Some(refund_id) => RefundAnswer::Refunded { refund_id },
                None => RefundAnswer::Unexpected(unexpected(&resp)),
            },
            _ => RefundAnswer::Unexpected(unexpected(&resp)),
        })
    }
}
