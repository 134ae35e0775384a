//! `POST /checkout`: parse, take the key and create the order in one step, run the saga in a
//! task of its own, answer by the deadline.

use actix_web::{HttpRequest, HttpResponse, web};
use shared::ServiceError;
use shared::body;
use shared::idempotency::{self, Begin, IdempotencyStore, KeyRef, StoredResponse};
use shared::{CommonError, ids};

use super::runner::{Resumer, Runner};
use super::saga::processing_response;
use super::store::{self, Claim, Progress, Started};
use crate::AppState;
use crate::error::OrderError;
use crate::ids::OrderId;
use crate::model::{CheckoutCompleted, CheckoutProcessing, CheckoutRequest, NewOrder};
use shared::money::PaymentMethod;
use shared::ratelimit::Deferred;

const DEFAULT_CUSTOMER: &str = "guest";

/// The order a checkout makes, its defaults filled in. The request was checked against its
/// schema when it was read (`shared::body`): bounds, lengths, patterns and payment methods.
fn new_order(req: CheckoutRequest, order_id: OrderId) -> NewOrder {
    let payment_method = req.payment_method.unwrap_or(PaymentMethod::CardVisa);
    NewOrder {
        order_id,
        item_id: req.item_id,
        quantity: req.quantity,
        customer_id: req.customer_id.unwrap_or_else(|| DEFAULT_CUSTOMER.into()),
        payment_method: payment_method.as_str().into(),
    }
}

#[utoipa::path(
    post, path = "/checkout", request_body = CheckoutRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = CheckoutCompleted),
        (status = 202, body = CheckoutProcessing, description = "still running past the deadline, or the payment's outcome is being resolved; or, for a Pix, `awaiting_payment` with its code until it is paid or expires (the key replays this until the order ends, then the final answer)"),
        (status = 400, description = "invalid-request, idempotency-key-missing, idempotency-key-invalid"),
        (status = 402, description = "payment-declined"),
        (status = 404, description = "item-not-found"),
        (status = 409, description = "out-of-stock, idempotency-key-in-use"),
        (status = 503, description = "dependency-unavailable; everything was undone")
    )
)]
pub(crate) async fn create_checkout(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, OrderError> {
    let key = idempotency::key_from(&req)?;
    let body = body::read_json::<CheckoutRequest>(&req, payload).await?;
    let key_ref = store::checkout_key(&key, body.fingerprint("POST", req.path()));
    let candidate = new_order(body.value, OrderId::new_for_key(&key));
    let runner = state.runner.clone();
    let owner = ids::new_id("run");
    // The key and a new key's order are written in one step: no crash can leave one without
    // the other, and a refused or resumed request writes nothing.
    let limit = Deferred::of(&req);
    let begin = match runner
        .store
        .begin_checkout(&candidate, &key_ref, &owner, &runner.idempotency, limit.as_ref())
        .await
    {
        Ok(Started::Began(begin, taken)) => {
            if let Some(taken) = taken {
                Deferred::taken(&req, taken);
            }
            begin
        }
        // The middleware answers the 429 in place of this.
        Ok(Started::Limited(refused)) => {
            Deferred::taken(&req, refused);
            return Ok(HttpResponse::TooManyRequests().finish());
        }
        Err(e) => return Err(unanswered_begin(&runner, &candidate.order_id, &key_ref, e).await),
    };
    let (order_id, resumed) = match begin {
        Begin::Execute { token, resumed } => (OrderId::from_stored(token), resumed),
        other => return Ok(IdempotencyStore::refusal(other)?),
    };

    // The saga runs in its own task so that neither the deadline nor a client hanging up can
    // cancel it halfway: it always reaches an end and settles its key.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request_id = shared::request_id::current();
    let id = order_id.clone();
    tokio::spawn(shared::request_id::scope(request_id, async move {
        let resp = if resumed {
            take_over(&runner, candidate, &key_ref, &owner, &id).await
        } else {
            runner.drive(&candidate, &key_ref, &owner, Progress::default()).await
        };
        let _ = tx.send(resp);
    }));

    match tokio::time::timeout(state.settings.checkout_deadline, rx).await {
        Ok(Ok(resp)) => Ok(resp.to_response(false)),
        // Past the deadline (or the task died): the order exists and goes on.
        _ => Ok(processing_response(&order_id).to_response(false)),
    }
}

/// Taking the key (and creating the order) failed, but Redis may have applied it with its
/// answer lost, and recovery would then carry the order out. A 503 tells the client that
/// nothing happened, so it is given only once that is known: the step is taken back first.
/// If it cannot be, or the key is another request's, the client is told to come back with the
/// same key (409 in-use), which then gets the checkout's one outcome.
async fn unanswered_begin(runner: &Runner, order_id: &OrderId, key: &KeyRef, err: OrderError) -> OrderError {
    if matches!(err, OrderError::Common(CommonError::Pool(_))) {
        // No connection: nothing was sent.
        return err;
    }
    match runner.store.undo_begin(order_id, key).await {
        Ok(true) => err,
        Ok(false) => CommonError::IdempotencyKeyInUse { retry_after: 1 }.into(),
        Err(undo) => {
            tracing::warn!(%order_id, error = %undo, "could not take back an unanswered checkout step; the client is told to retry its key");
            CommonError::IdempotencyKeyInUse { retry_after: 1 }.into()
        }
    }
}

/// A retry took over a key whose lease ran out (its runner died, or is still resolving an
/// unknown outcome). Only the key's order's lease says whether someone is at work on it now.
async fn take_over(
    runner: &Runner,
    request: NewOrder,
    key: &KeyRef,
    owner: &str,
    order_id: &OrderId,
) -> StoredResponse {
    match runner.store.claim(order_id, owner, runner.lease()).await {
        Ok(Claim::Held) => processing_response(order_id),
        Ok(Claim::Claimed) => {
            tracing::info!(%order_id, "taking over a checkout whose lease ran out");
            runner
                .resume(order_id, owner, Resumer::KeyHolder)
                .await
                .unwrap_or_else(|| processing_response(order_id))
        }
        // Its order is gone (it can only have been dropped as never begun): start it afresh
        // under the key's order id, as the first request would have.
        Ok(Claim::Gone) => {
            let order = NewOrder {
                order_id: order_id.clone(),
                ..request
            };
            match runner.store.create(&order, key, owner, runner.lease()).await {
                Ok(true) => runner.drive(&order, key, owner, Progress::default()).await,
                // Recovery or another retry got there first and owns it now.
                Ok(false) => processing_response(order_id),
                Err(e) => StoredResponse::problem(&e.problem()),
            }
        }
        Err(e) => StoredResponse::problem(&e.problem()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::MAX_QUANTITY;

    fn refusal(body: Value) -> Option<String> {
        shared::body::parse::<CheckoutRequest>(body.to_string().as_bytes())
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_customer_and_payment_method() {
        let req = shared::body::parse::<CheckoutRequest>(br#"{"itemId": 1, "quantity": 2}"#).ok();
        let order = req.map(|r| new_order(r, OrderId::from_stored("ord_1")));
        assert_eq!(order.as_ref().map(|o| o.customer_id.as_str()), Some("guest"));
        assert_eq!(order.as_ref().map(|o| o.payment_method.as_str()), Some("pm_card_visa"));
    }

    #[test]
    fn quantity_must_be_between_one_and_the_maximum() {
        assert!(refusal(json!({"itemId": 1, "quantity": 0})).is_some());
        assert!(refusal(json!({"itemId": 1, "quantity": MAX_QUANTITY + 1})).is_some());
        assert_eq!(refusal(json!({"itemId": 1, "quantity": 1})), None);
        assert_eq!(refusal(json!({"itemId": 1, "quantity": MAX_QUANTITY})), None);
    }

    #[test]
    fn item_zero_odd_customers_and_unknown_payment_methods_are_refused() {
        for bad in [
            json!({"itemId": 0, "quantity": 1}),
            json!({"itemId": 1, "quantity": 1, "paymentMethod": "pm card}"}),
            json!({"itemId": 1, "quantity": 1, "paymentMethod": "pm_card_bitcoin"}),
            json!({"itemId": 1, "quantity": 1, "customerId": ""}),
            json!({"itemId": 1, "quantity": 1, "customerId": "a b"}),
            json!({"itemId": 1, "quantity": 1, "customerId": "c".repeat(129)}),
            json!([1, 2]),
        ] {
            assert!(refusal(bad.clone()).is_some(), "{bad}");
        }
    }
}
