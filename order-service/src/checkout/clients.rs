//! Typed calls to stock and payment. Each call carries an Idempotency-Key derived from the
//! order (`<orderId>:reserve`, …), so a retried or resumed step can never act twice. Every call
//! answers a [`Call`]: what the checkout's decisions ([`super::core`]) need to know of it.

use serde::Deserialize;
use serde_json::json;
use shared::http_client::{CallError, CallResponse, Downstream};

use super::core::{Call, ChargeAnswer, PixStatus, RefundAnswer, ReserveAnswer, TransitionAnswer};
use super::store::Reservation;
use crate::ids::{ChargeId, OrderId, ReservationId};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReservationBody {
    reservation_id: String,
    total_fee: u64,
    currency: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeBody {
    charge_id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    pix: Option<PixBody>,
}

#[derive(Debug, Clone, Deserialize)]
struct PixBody {
    code: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ChargeStatusBody {
    status: String,
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

fn log_unexpected(service: &str, resp: &CallResponse) {
    tracing::warn!(
        service,
        status = resp.status.as_u16(),
        body = %String::from_utf8_lossy(&resp.body).chars().take(300).collect::<String>(),
        "an answer no contract allows"
    );
}

/// A call that got no answer: never sent, or sent and lost.
fn unanswered<T>(service: &str, e: &CallError) -> Call<T> {
    tracing::warn!(service, error = %e, "no answer");
    if e.maybe_sent() { Call::Lost } else { Call::NotSent }
}

/// `answer`, or the call as unexpected.
fn or_unexpected<T>(service: &str, resp: &CallResponse, answer: Option<T>) -> Call<T> {
    match answer {
        Some(a) => Call::Answered(a),
        None => {
            log_unexpected(service, resp);
            Call::Unexpected
        }
    }
}

/// Payment's answer to a refund of a completed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartRefund {
    Refunded { refund_id: String, amount: u64 },
    Exceeds { remaining: u64 },
}

#[derive(Clone)]
pub struct StockClient(Downstream);

impl StockClient {
    pub fn new(d: Downstream) -> Self {
        Self(d)
    }

    /// `hold_seconds`: how long the units are held when not stock's RESERVATION_TTL (a Pix's).
    pub async fn reserve(
        &self,
        order_id: &OrderId,
        item_id: u64,
        quantity: u32,
        hold_seconds: Option<u64>,
    ) -> Call<ReserveAnswer> {
        let mut body = json!({"itemId": item_id, "quantity": quantity});
        if let Some(hold) = hold_seconds {
            body["holdSeconds"] = json!(hold);
        }
        let resp = match self.0.post("/reserve", &format!("{order_id}:reserve"), &body).await {
            Ok(resp) => resp,
            Err(e) => return unanswered("stock", &e),
        };
        let answer = match (resp.status.as_u16(), resp.problem_slug().as_deref()) {
            (201, _) => resp.json::<ReservationBody>().map(|r| {
                ReserveAnswer::Reserved(Reservation {
                    reservation_id: ReservationId::from_stored(r.reservation_id),
                    total_fee: r.total_fee,
                    currency: r.currency,
                })
            }),
            (404, Some("item-not-found")) => Some(ReserveAnswer::ItemNotFound),
            (409, Some("out-of-stock")) => Some(ReserveAnswer::OutOfStock),
            _ => None,
        };
        or_unexpected("stock", &resp, answer)
    }

    pub async fn complete(&self, order_id: &OrderId, reservation_id: &ReservationId) -> Call<TransitionAnswer> {
        self.transition("/complete", &format!("{order_id}:complete"), reservation_id)
            .await
    }

    pub async fn release(&self, order_id: &OrderId, reservation_id: &ReservationId) -> Call<TransitionAnswer> {
        self.transition("/release", &format!("{order_id}:release"), reservation_id)
            .await
    }

    /// Returns a completed order's units to available (a refund with the goods back).
    pub async fn restock(&self, order_id: &OrderId, reservation_id: &ReservationId) -> Call<TransitionAnswer> {
        self.transition("/restock", &format!("{order_id}:restock"), reservation_id)
            .await
    }

    async fn transition(&self, path: &str, key: &str, reservation_id: &ReservationId) -> Call<TransitionAnswer> {
        let body = json!({"reservationId": reservation_id});
        let resp = match self.0.post(path, key, &body).await {
            Ok(resp) => resp,
            Err(e) => return unanswered("stock", &e),
        };
        let answer = match (resp.status.as_u16(), resp.problem_slug()) {
            (200, _) => Some(TransitionAnswer::Done),
            (404 | 409, Some(slug)) if slug.starts_with("reservation-") => {
                tracing::info!(slug, "stock refused {path}");
                Some(TransitionAnswer::Refused)
            }
            _ => None,
        };
        or_unexpected("stock", &resp, answer)
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
        order_id: &OrderId,
        item_id: u64,
        reservation: &Reservation,
        customer_id: &str,
        payment_method: &str,
    ) -> Call<ChargeAnswer> {
        // The item lets payment divide the charge by the item's split, if it has one.
        let body = json!({
            "orderId": order_id,
            "itemId": item_id,
            "amount": reservation.total_fee,
            "currency": reservation.currency,
            "customerId": customer_id,
            "paymentMethod": payment_method,
        });
        let resp = match self.0.post("/charge", &format!("{order_id}:charge"), &body).await {
            Ok(resp) => resp,
            Err(e) => return unanswered("payment", &e),
        };
        let text = |field: &str| {
            resp.json::<serde_json::Value>()
                .and_then(|v| v.get(field).and_then(|c| c.as_str()).map(str::to_string))
        };
        let answer = match (resp.status.as_u16(), resp.problem_slug().as_deref()) {
            (201, _) => resp.json::<ChargeBody>().map(|c| {
                let charge_id = ChargeId::from_stored(c.charge_id);
                match (c.status.as_deref(), c.pix) {
                    (Some("pending"), Some(pix)) => ChargeAnswer::Pending {
                        charge_id,
                        code: pix.code,
                    },
                    _ => ChargeAnswer::Charged(charge_id),
                }
            }),
            (402, _) => Some(ChargeAnswer::Declined {
                decline_code: text("declineCode").unwrap_or_else(|| "card_declined".into()),
            }),
            (400, Some("invalid-request")) => Some(ChargeAnswer::Refused {
                detail: text("detail").unwrap_or_else(|| "the payment service refused the request".into()),
            }),
            _ => None,
        };
        or_unexpected("payment", &resp, answer)
    }

    /// The order's succeeded charge for its reservation, if payment holds one: the record of a
    /// charge outlives its Idempotency-Key (IDEMPOTENCY_TTL), so this finds a charge even when
    /// a resent charge would no longer be recognised. `Err` when payment could not tell.
    pub async fn standing_charge(&self, order_id: &OrderId, reservation: &Reservation) -> Result<Option<ChargeId>, ()> {
        let resp = match self.0.get(&format!("/charges?orderId={order_id}")).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(service = "payment", error = %e, "no answer");
                return Err(());
            }
        };
        let listed = match (resp.status.as_u16(), resp.json::<OrderCharges>()) {
            (200, Some(listed)) => listed,
            _ => {
                log_unexpected("payment", &resp);
                return Err(());
            }
        };
        Ok(listed
            .charges
            .into_iter()
            .find(|c| {
                c.status == "succeeded" && c.amount == reservation.total_fee && c.currency == reservation.currency
            })
            .map(|c| ChargeId::from_stored(c.charge_id)))
    }

    /// Refunds `amount` (what remains when `None`) of a completed order's charge under `key`.
    pub async fn refund_part(&self, key: &str, charge_id: &str, amount: Option<u64>) -> Call<PartRefund> {
        let mut body = json!({"chargeId": charge_id});
        if let Some(amount) = amount {
            body["amount"] = json!(amount);
        }
        let resp = match self.0.post("/refund", key, &body).await {
            Ok(resp) => resp,
            Err(e) => return unanswered("payment", &e),
        };
        let answer = match (resp.status.as_u16(), resp.problem_slug().as_deref()) {
            (200, _) => resp.json::<serde_json::Value>().and_then(|v| {
                Some(PartRefund::Refunded {
                    refund_id: v.get("refundId")?.as_str()?.to_string(),
                    amount: v.get("amount")?.as_u64()?,
                })
            }),
            (409, Some("refund-exceeds-charge")) => resp.json::<serde_json::Value>().map(|v| PartRefund::Exceeds {
                remaining: v.get("remaining").and_then(|r| r.as_u64()).unwrap_or(0),
            }),
            _ => None,
        };
        or_unexpected("payment", &resp, answer)
    }

    /// How a Pix charge stands; with `cancel`, canceled first if still pending (its order
    /// expired), which payment answers with how it stands after.
    pub async fn pix_status(&self, charge_id: &ChargeId, cancel: bool) -> Call<PixStatus> {
        let sent = if cancel {
            let path = format!("/charges/{charge_id}/cancel");
            self.0.post(&path, &format!("{charge_id}:cancel"), &json!({})).await
        } else {
            self.0.get(&format!("/charges/{charge_id}")).await
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => return unanswered("payment", &e),
        };
        let answer = match resp.status.as_u16() {
            200 => resp.json::<ChargeStatusBody>().and_then(|c| PixStatus::of(&c.status)),
            _ => None,
        };
        or_unexpected("payment", &resp, answer)
    }

    pub async fn refund(&self, order_id: &OrderId, charge_id: &ChargeId) -> Call<RefundAnswer> {
        let body = json!({"chargeId": charge_id});
        let resp = match self.0.post("/refund", &format!("{order_id}:refund"), &body).await {
            Ok(resp) => resp,
            Err(e) => return unanswered("payment", &e),
        };
        let answer = match resp.status.as_u16() {
            200 => resp
                .json::<serde_json::Value>()
                .and_then(|v| v.get("refundId").and_then(|r| r.as_str()).map(str::to_string))
                .map(|refund_id| RefundAnswer::Refunded { refund_id }),
            _ => None,
        };
        or_unexpected("payment", &resp, answer)
    }
}
