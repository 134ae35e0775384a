//! The provider's HTTP API, a small Stripe-like one:
//! - `POST /v1/charges` (Idempotency-Key) `{"amount", "currency", "orderId", "customerId",
//!   "paymentMethod"}` → 200 the charge; 402 `card_error` with its `code` and `charge`; 503
//!   `api_error` with `"processed": false` when a fault kept it from being processed;
//! - `GET /v1/charges?idempotencyKey=` and `GET /v1/charges/{reference}` → 200 or 404;
//! - `POST /v1/refunds` (Idempotency-Key) `{"charge", "amount"}` → 200 the refund;
//! - `POST /_sim/pix/{reference}/pay` pays a pending Pix (then its webhook goes out, see
//!   [`crate::pix`]); `POST /_sim/pix/{reference}/resend` sends its webhook once more (a
//!   duplicate, as providers send); `GET /_sim/webhooks` counts webhook attempts;
//! - `GET /_sim/ledger`, `PUT|GET /_sim/faults`, `GET /health`.
//!
//! An Idempotency-Key is answered from the ledger before any fault is drawn: a provider that
//! holds a charge under a key says so, and "not processed" then means it holds none.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::{Faults, roll};
use crate::ledger::{Charge, ChargeStatus, Ledger, Refund};

/// Bodies larger than this are refused: a provider has limits too.
const MAX_BODY: usize = 64 * 1024;

pub struct Sim {
    pub ledger: Mutex<Ledger>,
    pub faults: Mutex<Faults>,
    pub notifier: crate::pix::Notifier,
}

/// The handler chose to drop its answer: the connection is closed without one.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped (fault)")
    }
}

impl std::error::Error for Dropped {}

type Answer = (StatusCode, Value);

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Answer {
    (status, json!({"error": {"type": kind, "message": message.into()}}))
}

/// The decline code each of Stripe's test payment methods earns; `Err` for any other method.
pub fn card_outcome(payment_method: &str) -> Result<Option<&'static str>, ()> {
    match payment_method {
        "pm_card_visa" => Ok(None),
        "pm_card_chargeDeclined" => Ok(Some("card_declined")),
        "pm_card_chargeDeclinedInsufficientFunds" => Ok(Some("insufficient_funds")),
        _ => Err(()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChargeRequest {
    amount: u64,
    currency: String,
    order_id: String,
    customer_id: String,
    payment_method: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    charge: String,
    amount: u64,
}

fn charge_json(c: &Charge) -> Value {
    let mut v = json!({
        "id": c.reference, "object": "charge", "status": c.status, "amount": c.amount,
        "currency": c.currency, "orderId": c.order_id, "idempotencyKey": c.idempotency_key,
        "declineCode": c.decline_code,
    });
    if let Some(code) = &c.pix_code {
        v["pix"] = json!({"code": code});
    }
    v
}

/// A charge's answer, the first time and on every replay.
fn charge_answer(c: &Charge) -> Answer {
    match (&c.status, &c.decline_code) {
        (ChargeStatus::Succeeded | ChargeStatus::Pending, _) => (StatusCode::OK, charge_json(c)),
        (ChargeStatus::Failed, code) => (
            StatusCode::PAYMENT_REQUIRED,
            json!({"error": {"type": "card_error", "code": code, "charge": c.reference}}),
        ),
    }
}

fn refund_json(r: &Refund) -> Value {
    json!({
        "id": r.reference, "object": "refund", "status": "succeeded", "charge": r.charge_reference,
        "amount": r.amount, "currency": r.currency,
    })
}

fn new_reference(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn not_processed() -> Answer {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": {"type": "api_error", "message": "temporarily unavailable, nothing was processed", "processed": false}}),
    )
}

/// Charges under `key`, or answers what the key already holds. `fail`: a fault keeps a new
/// charge from being processed.
pub fn charge(ledger: &mut Ledger, key: &str, req: ChargeRequestView<'_>, fail: bool) -> Answer {
    if let Some(c) = ledger.charge_by_key(key) {
        let same = c.order_id == req.order_id
            && c.amount == req.amount
            && c.currency == req.currency
            && c.customer_id == req.customer_id
            && c.payment_method == req.payment_method;
        return if same {
            charge_answer(c)
        } else {
            error(
                StatusCode::CONFLICT,
                "idempotency_error",
                "this Idempotency-Key was used with other parameters",
            )
        };
    }
    if fail {
        return not_processed();
    }
    let pix = req.payment_method == "pix";
    let decline = if pix {
        Ok(None)
    } else {
        card_outcome(req.payment_method)
    };
    let Ok(decline) = decline else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unknown payment method",
        );
    };
    let c = Charge {
        reference: new_reference("ch"),
        idempotency_key: key.to_string(),
        order_id: req.order_id.to_string(),
        amount: req.amount,
        currency: req.currency.to_string(),
        customer_id: req.customer_id.to_string(),
        payment_method: req.payment_method.to_string(),
        status: match (pix, decline.is_some()) {
            (true, _) => ChargeStatus::Pending,
            (false, true) => ChargeStatus::Failed,
            (false, false) => ChargeStatus::Succeeded,
        },
        decline_code: decline.map(str::to_string),
        // What a payer's bank app reads: the provider's own text, opaque to the merchant.
        pix_code: pix.then(|| format!("00020126pix{}", uuid::Uuid::new_v4().simple())),
        notified: false,
    };
    let answer = charge_answer(&c);
    match ledger.add_charge(c) {
        Ok(()) => answer,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", format!("ledger: {e}")),
    }
}

/// The fields of a charge request, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct ChargeRequestView<'a> {
    pub amount: u64,
    pub currency: &'a str,
    pub order_id: &'a str,
    pub customer_id: &'a str,
    pub payment_method: &'a str,
}

/// Refunds `amount` of a charge under `key`, or answers what the key already holds.
pub fn refund(ledger: &mut Ledger, key: &str, charge_ref: &str, amount: u64, fail: bool) -> Answer {
    if let Some(r) = ledger.refund_by_key(key) {
        return if r.charge_reference == charge_ref && r.amount == amount {
            (StatusCode::OK, refund_json(r))
        } else {
            error(
                StatusCode::CONFLICT,
                "idempotency_error",
                "this Idempotency-Key was used with other parameters",
            )
        };
    }
    let Some(c) = ledger.charge_by_ref(charge_ref) else {
        return error(StatusCode::NOT_FOUND, "invalid_request_error", "no such charge");
    };
    if amount == 0 || amount > ledger.refundable(c) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the amount exceeds what is left to refund",
        );
    }
    if fail {
        return not_processed();
    }
    let r = Refund {
        reference: new_reference("re"),
        idempotency_key: key.to_string(),
        charge_reference: c.reference.clone(),
        amount,
        currency: c.currency.clone(),
    };
    let answer = (StatusCode::OK, refund_json(&r));
    match ledger.add_refund(r) {
        Ok(()) => answer,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", format!("ledger: {e}")),
    }
}

fn ledger_json(ledger: &Ledger) -> Value {
    let charges: Vec<Value> = ledger
        .charges
        .iter()
        .map(|c| {
            json!({
                "reference": c.reference, "idempotencyKey": c.idempotency_key, "orderId": c.order_id,
                "amount": c.amount, "currency": c.currency, "status": c.status,
            })
        })
        .collect();
    let refunds: Vec<Value> = ledger
        .refunds
        .iter()
        .map(|r| {
            json!({
                "reference": r.reference, "chargeReference": r.charge_reference,
                "amount": r.amount, "currency": r.currency,
            })
        })
        .collect();
    json!({"charges": charges, "refunds": refunds})
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn idempotency_key(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_string)
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Answer> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "body too large"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_request_error", e.to_string()))
}

/// Routes one request. `Err(Dropped)`: close the connection without answering.
pub async fn handle(sim: &Arc<Sim>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let faults = lock(&sim.faults).clone();
    let (status, body) = match (&method, path.as_str()) {
        (&Method::GET, "/health") => (StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/_sim/ledger") => (StatusCode::OK, ledger_json(&lock(&sim.ledger))),
        (&Method::GET, "/_sim/faults") => (StatusCode::OK, json!(faults)),
        (&Method::GET, "/_sim/webhooks") => (
            StatusCode::OK,
            json!({
                "attempts": sim.notifier.attempts.load(Ordering::Relaxed),
                "acknowledged": sim.notifier.acknowledged.load(Ordering::Relaxed),
            }),
        ),
        (&Method::POST, p) if p.starts_with("/_sim/pix/") => pix_action(sim, &p["/_sim/pix/".len()..]),
        (&Method::PUT, "/_sim/faults") => match read_json::<Faults>(req).await {
            Ok(new) => match new.validate() {
                Ok(()) => {
                    *lock(&sim.faults) = new.clone();
                    (StatusCode::OK, json!(new))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
            },
            Err(answer) => answer,
        },
        (&Method::GET, "/v1/charges") => match query_param(&req, "idempotencyKey") {
            Some(key) => match lock(&sim.ledger).charge_by_key(&key) {
                Some(c) => (StatusCode::OK, charge_json(c)),
                None => error(StatusCode::NOT_FOUND, "invalid_request_error", "no such charge"),
            },
            None => error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "idempotencyKey is required",
            ),
        },
        (&Method::GET, p) if p.starts_with("/v1/charges/") => {
            match lock(&sim.ledger).charge_by_ref(&p["/v1/charges/".len()..]) {
                Some(c) => (StatusCode::OK, charge_json(c)),
                None => error(StatusCode::NOT_FOUND, "invalid_request_error", "no such charge"),
            }
        }
        (&Method::POST, "/v1/charges" | "/v1/refunds") => {
            return write(sim, &faults, req, path == "/v1/charges").await;
        }
        _ => error(StatusCode::NOT_FOUND, "invalid_request_error", "no such route"),
    };
    Ok(respond(status, &body))
}

/// A charge or a refund, with the faults applied: latency first, then "not processed" drawn
/// for a new key, then the answer dropped after processing.
async fn write(
    sim: &Sim,
    faults: &Faults,
    req: Request<Incoming>,
    is_charge: bool,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let Some(key) = idempotency_key(&req) else {
        let (s, b) = error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Idempotency-Key is required",
        );
        return Ok(respond(s, &b));
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let fail = roll(faults.error_rate);
    let (status, body) = if is_charge {
        match read_json::<ChargeRequest>(req).await {
            Ok(r) => {
                let view = ChargeRequestView {
                    amount: r.amount,
                    currency: &r.currency,
                    order_id: &r.order_id,
                    customer_id: &r.customer_id,
                    payment_method: &r.payment_method,
                };
                charge(&mut lock(&sim.ledger), &key, view, fail)
            }
            Err(answer) => answer,
        }
    } else {
        match read_json::<RefundRequest>(req).await {
            Ok(r) => refund(&mut lock(&sim.ledger), &key, &r.charge, r.amount, fail),
            Err(answer) => answer,
        }
    };
    if status != StatusCode::SERVICE_UNAVAILABLE && roll(faults.drop_response_rate) {
        return Err(Dropped);
    }
    Ok(respond(status, &body))
}

/// `{reference}/pay` or `{reference}/resend`.
fn pix_action(sim: &Arc<Sim>, rest: &str) -> Answer {
    let Some((reference, action)) = rest.split_once('/') else {
        return error(StatusCode::NOT_FOUND, "invalid_request_error", "no such route");
    };
    let mut ledger = lock(&sim.ledger);
    let Some(mut c) = ledger
        .charge_by_ref(reference)
        .filter(|c| c.pix_code.is_some())
        .cloned()
    else {
        return error(StatusCode::NOT_FOUND, "invalid_request_error", "no such Pix charge");
    };
    match action {
        "pay" => match ledger.pay(reference) {
            Ok(paid) => {
                drop(ledger);
                // Paid now: its webhook goes out; paid before: answered as it stands.
                if paid {
                    c.status = ChargeStatus::Succeeded;
                    crate::pix::deliver(sim.clone(), c.clone());
                }
                (StatusCode::OK, charge_json(&c))
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", format!("ledger: {e}")),
        },
        "resend" if c.status == ChargeStatus::Succeeded => {
            drop(ledger);
            let answer = charge_json(&c);
            crate::pix::deliver(sim.clone(), c);
            (StatusCode::ACCEPTED, answer)
        }
        "resend" => error(StatusCode::CONFLICT, "invalid_request_error", "the Pix is not paid"),
        _ => error(StatusCode::NOT_FOUND, "invalid_request_error", "no such route"),
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visa(order: &str) -> ChargeRequestView<'_> {
        ChargeRequestView {
            amount: 700,
            currency: "USD",
            order_id: order,
            customer_id: "c",
            payment_method: "pm_card_visa",
        }
    }

    #[test]
    fn a_key_is_answered_from_the_ledger_before_any_fault_and_charges_once() {
        let mut ledger = Ledger::open(None).expect("ledger");
        assert_eq!(
            charge(&mut ledger, "k", visa("o1"), true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(ledger.charges.is_empty(), "not processed means nothing was charged");
        let first = charge(&mut ledger, "k", visa("o1"), false);
        assert_eq!(first.0, StatusCode::OK);
        let again = charge(&mut ledger, "k", visa("o1"), true);
        assert_eq!(again, first, "a held key replays its charge, faults or not");
        assert_eq!(ledger.charges.len(), 1);
        assert_eq!(charge(&mut ledger, "k", visa("o2"), false).0, StatusCode::CONFLICT);
    }

    #[test]
    fn stripes_test_cards_decline_with_their_codes_and_the_decline_is_kept() {
        let mut ledger = Ledger::open(None).expect("ledger");
        let req = ChargeRequestView {
            payment_method: "pm_card_chargeDeclinedInsufficientFunds",
            ..visa("o1")
        };
        let (status, body) = charge(&mut ledger, "k", req, false);
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(body["error"]["code"], "insufficient_funds");
        assert_eq!(ledger.charges[0].status, ChargeStatus::Failed);
        assert_eq!(card_outcome("pm_card_chargeDeclined"), Ok(Some("card_declined")));
        assert_eq!(card_outcome("pm_card_unknown"), Err(()));
    }

    #[test]
    fn refunds_never_exceed_the_charge_and_replay_by_key() {
        let mut ledger = Ledger::open(None).expect("ledger");
        let (_, body) = charge(&mut ledger, "k", visa("o1"), false);
        let reference = body["id"].as_str().expect("reference").to_string();
        assert_eq!(refund(&mut ledger, "r1", &reference, 500, false).0, StatusCode::OK);
        assert_eq!(
            refund(&mut ledger, "r2", &reference, 201, false).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(refund(&mut ledger, "r1", &reference, 500, false).0, StatusCode::OK);
        assert_eq!(refund(&mut ledger, "r3", &reference, 200, false).0, StatusCode::OK);
        assert_eq!(ledger.refunds.len(), 2);
        assert_eq!(refund(&mut ledger, "r4", "ch_nope", 1, false).0, StatusCode::NOT_FOUND);
    }
}
