//! `POST /checkout`: parse, take the key and create the order in one step, run the saga in a
//! task of its own, answer by the deadline.

use actix_web::{HttpRequest, HttpResponse, web};
use shared::ServiceError;
use shared::body::{self, JsonBody};
use shared::idempotency::{self, Begin, IdempotencyStore, KeyRef, StoredResponse};
use shared::{CommonError, ids};

use super::runner::{Resumer, Runner};
use super::saga::processing_response;
use super::store::{self, Claim, Progress};
use crate::AppState;
use crate::error::OrderError;
use crate::ids::OrderId;
use crate::model::{CheckoutCompleted, CheckoutProcessing, CheckoutRequest, MAX_QUANTITY, NewOrder};

const DEFAULT_CUSTOMER: &str = "guest";
const DEFAULT_PAYMENT_METHOD: &str = "pm_card_visa";

fn invalid(detail: &str) -> OrderError {
    shared::CommonError::InvalidRequest(detail.into()).into()
}

fn validate(req: CheckoutRequest, order_id: OrderId) -> Result<NewOrder, OrderError> {
    if req.item_id == 0 {
        return Err(invalid("itemId must be an integer of at least 1"));
    }
    if req.quantity == 0 || req.quantity > MAX_QUANTITY {
        return Err(invalid("quantity must be an integer between 1 and 1000"));
    }
    let customer_id = req.customer_id.unwrap_or_else(|| DEFAULT_CUSTOMER.into());
    if customer_id.is_empty() || customer_id.len() > 128 || !customer_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("customerId must be 1 to 128 printable ASCII characters"));
    }
    let payment_method = req.payment_method.unwrap_or_else(|| DEFAULT_PAYMENT_METHOD.into());
    if !ids::is_safe_id(&payment_method) {
        return Err(invalid(
            "paymentMethod must be a payment method id such as pm_card_visa",
        ));
    }
    Ok(NewOrder {
        order_id,
        item_id: req.item_id,
        quantity: req.quantity,
        customer_id,
        payment_method,
    })
}

#[utoipa::path(
    post, path = "/checkout", request_body = CheckoutRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 200, body = CheckoutCompleted),
        (status = 202, body = CheckoutProcessing, description = "still running past the deadline, or the payment's outcome is being resolved"),
        (status = 400, description = "invalid-request, idempotency-key-missing, idempotency-key-invalid"),
        (status = 402, description = "payment-declined"),
        (status = 404, description = "item-not-found"),
        (status = 409, description = "out-of-stock, idempotency-key-in-use"),
        (status = 422, description = "idempotency-key-reused"),
        (status = 503, description = "dependency-unavailable; everything was undone")
    )
)]
pub(crate) async fn create_checkout(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, OrderError> {
    let key = idempotency::key_from(&req)?;
    let JsonBody { value, raw } = body::read_json::<CheckoutRequest>(&req, payload).await?;
    let fresh = OrderId::new_for_key(&key);
    let candidate = validate(value, fresh)?;
    let key_ref = store::checkout_key(&key, body::fingerprint("POST", req.path(), &raw));
    let runner = state.runner.clone();
    let owner = ids::new_id("run");
    // The key and a new key's order are written in one step: no crash can leave one without
    // the other, and a refused or resumed request writes nothing.
    let begin = match runner
        .store
        .begin_checkout(&candidate, &key_ref, &owner, &runner.idempotency)
        .await
    {
        Ok(begin) => begin,
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
    use super::*;

    fn request(item_id: u64, quantity: u32) -> CheckoutRequest {
        CheckoutRequest {
            item_id,
            quantity,
            customer_id: None,
            payment_method: None,
        }
    }

    #[test]
    fn defaults_fill_customer_and_payment_method() {
        let order = validate(request(1, 2), OrderId::from_stored("ord_1")).ok();
        let order = order.as_ref();
        assert_eq!(order.map(|o| o.customer_id.as_str()), Some("guest"));
        assert_eq!(order.map(|o| o.payment_method.as_str()), Some("pm_card_visa"));
    }

    #[test]
    fn quantity_must_be_between_one_and_a_thousand() {
        assert!(validate(request(1, 0), OrderId::from_stored("o")).is_err());
        assert!(validate(request(1, 1001), OrderId::from_stored("o")).is_err());
        assert!(validate(request(1, 1), OrderId::from_stored("o")).is_ok());
        assert!(validate(request(1, 1000), OrderId::from_stored("o")).is_ok());
    }

    #[test]
    fn item_zero_and_odd_payment_methods_are_refused() {
        assert!(validate(request(0, 1), OrderId::from_stored("o")).is_err());
        let mut odd = request(1, 1);
        odd.payment_method = Some("pm card}".into());
        assert!(validate(odd, OrderId::from_stored("o")).is_err());
        let mut empty_customer = request(1, 1);
        empty_customer.customer_id = Some(String::new());
        assert!(validate(empty_customer, OrderId::from_stored("o")).is_err());
    }
}
