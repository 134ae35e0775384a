//! `POST /orders/{orderId}/refunds`: refunds a completed order (whole, or `amount` of it)
//! through payment and, with `restock`, returns its units from sold to available. Internal
//! token and Idempotency-Key.
//!
//! In this order, each step idempotent by its own key, so a retry with the same key picks up
//! where a failure left off: payment refunds (under a key derived from the request's, so the
//! retry is the same refund), the order records the refund (once per payment refund: the order's
//! set of refund ids), stock restocks (once per reservation), the order records the restock. A
//! 503 says how far it got; retrying the key finishes it. What is not covered: a crash between
//! payment's refund and the order's record leaves the books a refund apart until the request is
//! retried with its key; no recovery worker retries it on its own (the note in the README).

use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use shared::idempotency::{self, IdempotentPost, KeyRef, Outcome, StoredResponse};
use shared::lua::Script;
use utoipa::ToSchema;

use super::store::{OrderStore, STEPS, order_key, outbox_key_of, step_text, steps_key, totals_key_of};
use crate::AppState;
use crate::checkout::clients::PartRefund;
use crate::checkout::core::{Call, TransitionAnswer};
use crate::error::OrderError;
use crate::ids::{OrderId, OrderStatus, ReservationId, StepName, StepStatus};

static REFUND: LazyLock<Script> =
    LazyLock::new(|| shared::lua::script(&[&STEPS, &shared::lua::COUNTS], include_str!("refund.lua")));

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderRefundRequest {
    /// Minor units; what remains of the order's charge when left out.
    #[schema(minimum = 1, maximum = 9000000000000u64)]
    pub amount: Option<u64>,
    /// Return the order's units from sold to available.
    pub restock: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRefundResponse {
    pub order_id: String,
    #[schema(pattern = "^(refunded|partially_refunded)$")]
    pub status: String,
    pub refund_id: String,
    /// This refund's amount.
    pub amount: u64,
    /// Refunded of the order so far.
    pub amount_refunded: u64,
    pub restocked: bool,
}

fn order_refunds_key(id: &OrderId) -> String {
    format!("order:{{ord:{}}}:refunds:{id}", id.shard())
}

/// What the order's record says after a refund or a restock was recorded.
struct Recorded {
    status: String,
    amount_refunded: u64,
    restocked: bool,
}

impl OrderStore {
    async fn record_refund(
        &self,
        id: &OrderId,
        refund: Option<(&str, u64)>,
        restocked: bool,
    ) -> Result<Result<Recorded, String>, OrderError> {
        let (refund_id, amount) = refund.unwrap_or(("", 0));
        let step = if refund.is_some() {
            StepName::Refund
        } else {
            StepName::Restock
        };
        let at = shared::time::now_rfc3339();
        let step = step_text(step, StepStatus::Succeeded, &at);
        let mut conn = self.pool.get().await?;
        let reply: Vec<String> = REFUND
            .key(order_key(id))
            .key(steps_key(id))
            .key(totals_key_of(id))
            .key(order_refunds_key(id))
            .key(outbox_key_of(id))
            .arg(refund_id)
            .arg(amount)
            .arg(&at)
            .arg(step)
            .arg(if restocked { "1" } else { "" })
            .invoke_async(&mut conn)
            .await?;
        let field = |i: usize| reply.get(i).cloned().unwrap_or_default();
        Ok(match field(0).as_str() {
            "ok" => Ok(Recorded {
                status: field(1),
                amount_refunded: field(2).parse().unwrap_or(0),
                restocked: field(3) == "1",
            }),
            "not_refundable" => Err(field(1)),
            _ => Err("missing".into()),
        })
    }
}

#[utoipa::path(
    post, path = "/orders/{orderId}/refunds", request_body = OrderRefundRequest,
    params(
        ("orderId" = String, Path, description = "a completed order"),
        ("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")
    ),
    responses(
        (status = 200, body = OrderRefundResponse),
        (status = 404, description = "order-not-found"),
        (status = 409, description = "order-not-refundable (not completed), refund-exceeds-charge, or idempotency-key-in-use"),
        (status = 503, description = "payment or stock did not answer; retry with the same key, which goes on from where this stopped")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn refund_order(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, OrderError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let id = id.into_inner();
    if !shared::ids::is_safe_id(&id) {
        return Err(OrderError::OrderNotFound(id.chars().take(64).collect()));
    }
    let IdempotentPost { body, key_ref, .. } = idempotency::read_post::<OrderRefundRequest>(
        &req,
        payload,
        &state.settings.common.internal_token,
        &format!("order:refund:{id}"),
    )
    .await?;
    let order_id = OrderId::from_stored(id);
    let payment_key = payment_key(&order_id, &key_ref);
    let app = state.clone();
    let response = state
        .runner
        .idempotency
        .run(&key_ref, |_, _| async move {
            Ok(Outcome::of(refund(&app, &order_id, &body, &payment_key).await))
        })
        .await?;
    Ok(response)
}

/// Payment's Idempotency-Key for this refund request: the same for every retry of it.
fn payment_key(order_id: &OrderId, key_ref: &KeyRef) -> String {
    format!(
        "{order_id}:refund:{}",
        idempotency::short_digest(key_ref.redis_key(), 12)
    )
}

fn unavailable(order_id: &OrderId, detail: &str) -> OrderError {
    OrderError::DependencyUnavailable {
        order_id: order_id.to_string(),
        detail: detail.into(),
    }
}

async fn refund(
    state: &AppState,
    order_id: &OrderId,
    body: &OrderRefundRequest,
    payment_key: &str,
) -> Result<StoredResponse, OrderError> {
    let order = state
        .store
        .get(order_id)
        .await?
        .ok_or_else(|| OrderError::OrderNotFound(order_id.to_string()))?;
    let refundable = OrderStatus::was_completed(&order.status);
    let (Some(charge_id), Some(reservation_id), true) = (&order.charge_id, &order.reservation_id, refundable) else {
        return Err(OrderError::OrderNotRefundable {
            order_id: order_id.to_string(),
            status: order.status,
        });
    };
    let (refund_id, amount) = match state.payment.refund_part(payment_key, charge_id, body.amount).await {
        Call::Answered(PartRefund::Refunded { refund_id, amount }) => (refund_id, amount),
        Call::Answered(PartRefund::Exceeds { remaining }) => {
            return Err(OrderError::RefundExceedsCharge {
                order_id: order_id.to_string(),
                remaining,
            });
        }
        Call::NotSent | Call::Lost | Call::Unexpected => {
            return Err(unavailable(
                order_id,
                "payment did not refund now; retry with the same key",
            ));
        }
    };
    let mut recorded = match state
        .store
        .record_refund(order_id, Some((&refund_id, amount)), false)
        .await?
    {
        Ok(r) => r,
        Err(status) => {
            return Err(OrderError::OrderNotRefundable {
                order_id: order_id.to_string(),
                status,
            });
        }
    };
    if body.restock && !recorded.restocked {
        let rid = ReservationId::from_stored(reservation_id.clone());
        match state.stock.restock(order_id, &rid).await {
            Call::Answered(TransitionAnswer::Done) => {
                if let Ok(r) = state.store.record_refund(order_id, None, true).await? {
                    recorded = r;
                }
            }
            Call::Answered(TransitionAnswer::Refused) | Call::Unexpected => {
                return Err(OrderError::DependencyUnavailable {
                    order_id: order_id.to_string(),
                    detail: "refunded, but stock refused to restock the order's units".into(),
                });
            }
            Call::NotSent | Call::Lost => {
                return Err(unavailable(
                    order_id,
                    "refunded; stock did not restock now: retry with the same key to restock",
                ));
            }
        }
    }
    shared::metrics::event("order_refund", &recorded.status);
    Ok(StoredResponse::json(
        StatusCode::OK,
        &OrderRefundResponse {
            order_id: order_id.to_string(),
            status: recorded.status,
            refund_id,
            amount,
            amount_refunded: recorded.amount_refunded,
            restocked: recorded.restocked,
        },
    ))
}

#[cfg(test)]
mod tests {
    //! refund.lua against a real Redis.
    use shared::testing::TestRedis;

    use super::*;

    async fn completed_order(redis: &TestRedis, id: &OrderId, status: &str) {
        let mut conn = redis.conn().await;
        let _: i64 = redis::cmd("HSET")
            .arg(order_key(id))
            .arg(&["status", status, "currency", "USD", "amount", "1000"])
            .query_async(&mut conn)
            .await
            .expect("HSET order");
    }

    async fn refunds_tally(redis: &TestRedis) -> (i64, i64) {
        let totals = OrderStore::new(redis.pool()).totals().await.expect("totals");
        let usd = totals.get("USD").cloned().unwrap_or_default();
        (usd.refunds.count, usd.refunds.amount)
    }

    #[tokio::test]
    async fn refund_lua_records_each_payment_refund_once_and_a_restock_once() {
        let redis = TestRedis::start().await;
        let store = OrderStore::new(redis.pool());
        let id = OrderId::from_stored("ord_t1".to_string());
        completed_order(&redis, &id, "completed").await;

        let part = store
            .record_refund(&id, Some(("re_1", 400)), false)
            .await
            .expect("redis");
        let again = store
            .record_refund(&id, Some(("re_1", 400)), false)
            .await
            .expect("redis");
        let part = part.expect("recorded");
        assert_eq!(
            (part.status.as_str(), part.amount_refunded, part.restocked),
            ("partially_refunded", 400, false)
        );
        let again = again.expect("recorded");
        assert_eq!(again.amount_refunded, 400, "the same payment refund counts once");
        assert_eq!(refunds_tally(&redis).await, (1, 400));

        let rest = store
            .record_refund(&id, Some(("re_2", 600)), false)
            .await
            .expect("redis")
            .expect("recorded");
        assert_eq!((rest.status.as_str(), rest.amount_refunded), ("refunded", 1000));
        let restocked = store
            .record_refund(&id, None, true)
            .await
            .expect("redis")
            .expect("recorded");
        assert!(restocked.restocked);
        assert_eq!(refunds_tally(&redis).await, (2, 1000));
        let steps = store.get(&id).await.expect("redis").expect("order").steps;
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["refund", "refund", "restock"], "two refunds and one restock");
        // Each payment refund, once, is in the outbox for merchant webhooks; the restock is not.
        let refunds: Vec<(String, String)> = redis
            .stream(&shared::outbox::order_outbox(id.shard()))
            .await
            .iter()
            .map(|e| (e["r"].clone(), e["s"].clone()))
            .collect();
        assert_eq!(
            refunds,
            [
                ("re_1".into(), "partially_refunded".into()),
                ("re_2".into(), "refunded".into())
            ]
        );

        let failed = OrderId::from_stored("ord_t2".to_string());
        completed_order(&redis, &failed, "compensated").await;
        let refused = store
            .record_refund(&failed, Some(("re_3", 1)), false)
            .await
            .expect("redis");
        assert_eq!(refused.err().as_deref(), Some("compensated"));
        let missing = store
            .record_refund(&OrderId::from_stored("ord_none".to_string()), Some(("re_4", 1)), false)
            .await
            .expect("redis");
        assert_eq!(missing.err().as_deref(), Some("missing"));
    }
}
