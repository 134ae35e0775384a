//! Marketplace splits: an item's owner sets how its sales are divided among recipients; every
//! succeeded charge of the item is divided by the split in effect at the charge, in exact minor
//! units ([`divide`]), recorded with the charge in one step; refunds reverse the parts by the
//! same rule over what still stands.

pub mod divide;
pub mod known;
pub mod rules;
#[cfg(test)]
mod script_tests;
pub mod store;

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use shared::accounts::Caller;
use shared::idempotency::{self, IdempotentPost, Outcome, StoredResponse};
use shared::metrics::{CounterFamily, HistogramFamily};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::PaymentError;
use rules::{PayoutMethod, SplitRequest};
use store::{StoredSplit, in_effect, item_shard, new_split_id};

/// `split_events_total{event}`: created, executed (a charge divided), reversed (a refund).
pub static SPLIT_EVENTS: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "split_events",
        "Splits created, executed on charges, reversed by refunds",
    )
});
/// `split_failures_total{reason}`: split requests refused (invalid, forbidden, item_not_found).
pub static SPLIT_FAILURES: LazyLock<CounterFamily> =
    LazyLock::new(|| CounterFamily::register("split_failures", "Split requests refused, by reason"));
/// `split_anomalies_total{check}`: parts that do not sum to their charge (or reversals to
/// their refund). Never expected: alert on any.
pub static SPLIT_ANOMALIES: LazyLock<CounterFamily> = LazyLock::new(|| {
    CounterFamily::register(
        "split_anomalies",
        "Split parts that did not sum to their amount: alert on any",
    )
});
/// `split_lookup_seconds`: finding the split in effect for a charge (one read of the item's history).
pub static SPLIT_LOOKUP: LazyLock<HistogramFamily> = LazyLock::new(|| {
    HistogramFamily::register("split_lookup_seconds", "Time to find the split in effect for a charge")
});

/// One rule as shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    pub recipient_id: String,
    #[schema(value_type = f64)]
    pub percentage: serde_json::Number,
    pub payout_method: PayoutMethod,
    #[schema(value_type = Object)]
    pub account_info: serde_json::Map<String, serde_json::Value>,
}

/// A split as shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    pub split_id: String,
    pub item_id: u64,
    pub effective_from: String,
    pub created_at: String,
    pub rules: Vec<RuleView>,
    /// In effect now: charges of the item are divided by it.
    pub active: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SplitHistory {
    pub item_id: u64,
    /// The split in effect now, if any.
    pub active: Option<Split>,
    /// Every split of the item, newest first, the active one included.
    pub history: Vec<Split>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RecipientTotals {
    pub earned: u64,
    pub reversed: u64,
    pub net: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecipientBalance {
    pub recipient_id: String,
    /// Per currency; empty for a recipient never paid.
    pub balances: BTreeMap<String, RecipientTotals>,
}

/// One recipient's part of a charge, as the charge shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SplitPart {
    pub recipient_id: String,
    pub amount: u64,
    /// Taken back by refunds so far.
    pub reversed: u64,
}

/// The charge's parts as its hash keeps them: `recipient:amount:reversed;…` (recipient ids
/// have no `:` or `;`).
pub fn encode_parts(parts: &[SplitPart]) -> String {
    parts
        .iter()
        .map(|p| format!("{}:{}:{}", p.recipient_id, p.amount, p.reversed))
        .collect::<Vec<_>>()
        .join(";")
}

pub fn decode_parts(stored: &str) -> Vec<SplitPart> {
    stored
        .split(';')
        .filter_map(|p| {
            let mut f = p.split(':');
            Some(SplitPart {
                recipient_id: f.next()?.to_string(),
                amount: f.next()?.parse().ok()?,
                reversed: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// How a charge about to be recorded is divided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPlan {
    pub split_id: String,
    pub parts: Vec<SplitPart>,
}

impl SplitPlan {
    /// `amount` divided by `split`'s rules.
    pub fn of(split: &StoredSplit, amount: u64) -> Self {
        let weights: Vec<u64> = split.rules.iter().map(|r| r.bps).collect();
        let amounts = divide::divide(amount, &weights);
        if amounts.iter().sum::<u64>() != amount {
            SPLIT_ANOMALIES.inc(&[("check", "parts_sum")]);
            tracing::error!(split_id = %split.split_id, amount, ?amounts, "split parts do not sum to the charge");
        }
        Self {
            split_id: split.split_id.clone(),
            parts: split
                .rules
                .iter()
                .zip(amounts)
                .map(|(r, amount)| SplitPart {
                    recipient_id: r.recipient_id.clone(),
                    amount,
                    reversed: 0,
                })
                .collect(),
        }
    }

    /// The `split.executed` event's data.
    pub fn event_data(&self, charge_id: &str, currency: &str) -> serde_json::Value {
        serde_json::json!({
            "chargeId": charge_id,
            "splitId": self.split_id,
            "currency": currency,
            "parts": self.parts.iter().map(|p| serde_json::json!({"recipientId": p.recipient_id, "amount": p.amount})).collect::<Vec<_>>(),
        })
    }
}

/// Per recipient, what a refund takes back.
pub type Reversals = Vec<(String, u64)>;

/// What a refund of `amount` takes back from a charge's `parts`: the new parts and, per
/// recipient, the reversal. `None` when more than stands is asked.
pub fn reversal(parts: &[SplitPart], amount: u64) -> Option<(Vec<SplitPart>, Reversals)> {
    let standing: Vec<u64> = parts.iter().map(|p| p.amount.saturating_sub(p.reversed)).collect();
    if amount > standing.iter().sum::<u64>() {
        return None;
    }
    let back = divide::reverse(amount, &standing);
    if back.iter().sum::<u64>() != amount {
        SPLIT_ANOMALIES.inc(&[("check", "reversals_sum")]);
    }
    let after = parts
        .iter()
        .zip(&back)
        .map(|(p, b)| SplitPart {
            reversed: p.reversed + b,
            ..p.clone()
        })
        .collect();
    Some((
        after,
        parts
            .iter()
            .zip(back)
            .map(|(p, b)| (p.recipient_id.clone(), b))
            .collect(),
    ))
}

/// The split in effect now for `item_id`, applied to `amount`; without a Redis read for an item
/// this replica knows has no split (`known.rs`).
pub async fn plan_for(state: &AppState, item_id: u64, amount: u64) -> Result<Option<SplitPlan>, PaymentError> {
    if !state.split_items.must_read(item_id) {
        return Ok(None);
    }
    let started = Instant::now();
    let history = state.store.splits_of(item_id).await?;
    let plan = in_effect(&history, shared::time::now_ms()).map(|i| SplitPlan::of(&history[i], amount));
    SPLIT_LOOKUP.observe(&[], started.elapsed().as_secs_f64());
    Ok(plan)
}

fn percentage_of(bps: u64) -> serde_json::Number {
    if bps.is_multiple_of(100) {
        serde_json::Number::from(bps / 100)
    } else {
        serde_json::Number::from_f64(bps as f64 / 100.0).unwrap_or_else(|| serde_json::Number::from(0))
    }
}

fn view(split: &StoredSplit, active: bool) -> Split {
    Split {
        split_id: split.split_id.clone(),
        item_id: split.item_id,
        effective_from: shared::time::rfc3339_ms(split.effective_from_ms),
        created_at: split.created_at.clone(),
        rules: split
            .rules
            .iter()
            .map(|r| RuleView {
                recipient_id: r.recipient_id.clone(),
                percentage: percentage_of(r.bps),
                payout_method: r.payout_method,
                account_info: r.account_info.clone(),
            })
            .collect(),
        active,
    }
}

/// The item's owner, as the stock service says (404 when it has no such item).
pub(crate) async fn owner_of(state: &AppState, item_id: u64) -> Result<Option<String>, PaymentError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ItemOwner {
        owner_id: Option<String>,
    }
    let url = format!("{}/items/{item_id}", state.settings.stock_url.trim_end_matches('/'));
    let unavailable =
        |why: String| PaymentError::from(shared::CommonError::DependencyUnavailable(format!("stock: {why}")));
    let resp = state
        .services
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    match resp.status().as_u16() {
        200 => Ok(resp
            .json::<ItemOwner>()
            .await
            .map_err(|e| unavailable(format!("an item that does not parse: {e}")))?
            .owner_id),
        404 => Err(PaymentError::ItemNotFound(item_id.to_string())),
        other => Err(unavailable(format!("answered {other}"))),
    }
}

/// Counts a refusal by its reason.
fn refused(e: PaymentError) -> PaymentError {
    let reason = match &e {
        PaymentError::SplitInvalid(_) => "invalid",
        PaymentError::ItemNotFound(_) => "item_not_found",
        PaymentError::Common(shared::CommonError::Forbidden(_)) => "forbidden",
        _ => "unavailable",
    };
    SPLIT_FAILURES.inc(&[("reason", reason)]);
    e
}

async fn create(state: &AppState, caller: &Caller, body: &SplitRequest) -> Result<StoredResponse, PaymentError> {
    let now = shared::time::now_ms();
    let checked = rules::check(body, now).map_err(PaymentError::SplitInvalid)?;
    let owner = owner_of(state, body.item_id).await?;
    caller.may_act_for(owner.as_deref())?;
    let shard = item_shard(body.item_id);
    let split = StoredSplit {
        split_id: new_split_id(shard),
        item_id: body.item_id,
        effective_from_ms: checked.effective_from_ms,
        created_at: shared::time::rfc3339_ms(now),
        rules: checked.rules,
    };
    let shown = view(&split, split.effective_from_ms <= now);
    let event = serde_json::json!({
        "type": "split.created",
        "at": split.created_at,
        "correlationId": split.item_id.to_string(),
        "data": shown,
    })
    .to_string();
    if !state.store.create_split(&split, &event).await? {
        return Err(PaymentError::SplitInvalid(format!(
            "item {} has {} splits, the most it keeps",
            split.item_id,
            store::MOST_SPLITS
        )));
    }
    SPLIT_EVENTS.inc(&[("event", "created")]);
    crate::events::EVENTS_APPENDED.inc(&[("type", "split.created")]);
    tracing::info!(split_id = %split.split_id, item_id = split.item_id, "split created");
    // Answered once every replica that charges without reading knows the item (known.rs).
    state.split_items.add(split.item_id);
    tokio::time::sleep(known::CREATION_WAIT).await;
    Ok(StoredResponse::json(StatusCode::CREATED, &shown))
}

#[utoipa::path(
    post, path = "/splits", request_body = SplitRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = Split, description = "created; it supersedes the active split from its effectiveFrom"),
        (status = 400, description = "split-invalid, naming the rule and the reason; invalid-request"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: not the item's owner"),
        (status = 404, description = "item-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_split(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    // What the schema refuses in the rules (their count, a recipient id) is a split-invalid
    // naming the rule, as the rest of the rules' checks.
    let IdempotentPost { body, key_ref, .. } =
        idempotency::read_post_as::<SplitRequest>(&req, payload, &caller.scope("payment:splits"))
            .await
            .map_err(|e| match e {
                shared::CommonError::InvalidRequest(detail)
                    if detail.trim_start_matches("invalid body: ").starts_with("rules") =>
                {
                    refused(PaymentError::SplitInvalid(detail))
                }
                other => PaymentError::from(other),
            })?;
    let shared_state = state.clone().into_inner();
    Ok(state
        .idempotency
        .run(&key_ref, |_, _| async move {
            Ok(Outcome::of(
                create(&shared_state, &caller, &body).await.map_err(refused),
            ))
        })
        .await?)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SplitsQuery {
    item_id: Option<String>,
}

#[utoipa::path(
    get, path = "/splits",
    params(("itemId" = u64, Query, minimum = 1, description = "the item whose splits to show")),
    responses(
        (status = 200, body = SplitHistory),
        (status = 400, description = "invalid-request: itemId missing or not a positive integer"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: not the item's owner"),
        (status = 404, description = "item-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_splits(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let query = web::Query::<SplitsQuery>::from_query(req.query_string())
        .map_err(|e| PaymentError::invalid(format!("invalid query: {e}")))?;
    let item_id = query
        .into_inner()
        .item_id
        .and_then(|raw| raw.parse::<u64>().ok())
        .filter(|id| (1..=i64::MAX as u64).contains(id))
        .ok_or_else(|| PaymentError::invalid("the itemId query parameter is required: a positive integer"))?;
    let owner = owner_of(&state, item_id).await?;
    caller.may_act_for(owner.as_deref())?;
    let history = state.store.splits_of(item_id).await?;
    let active = in_effect(&history, shared::time::now_ms());
    let shown: Vec<Split> = history
        .iter()
        .enumerate()
        .rev()
        .map(|(i, s)| view(s, Some(i) == active))
        .collect();
    Ok(HttpResponse::Ok().json(SplitHistory {
        item_id,
        active: shown.iter().find(|s| s.active).cloned(),
        history: shown,
    }))
}

#[utoipa::path(
    get, path = "/recipients/{recipientId}/balance",
    params(("recipientId" = String, Path, pattern = "^[A-Za-z0-9_-]{1,128}$", description = "letters, digits, `_` and `-`")),
    responses(
        (status = 200, body = RecipientBalance, description = "earned, reversed and net per currency; empty for a recipient never paid"),
        (status = 400, description = "invalid-request: not a recipient id"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: an account reading another recipient's balance")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn recipient_balance(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let recipient_id = path.into_inner();
    if !shared::ids::is_safe_id(&recipient_id) {
        return Err(PaymentError::invalid(
            "a recipient id is 1 to 128 letters, digits, '_' or '-'",
        ));
    }
    caller.may_act_for(Some(&recipient_id))?;
    let balances = state
        .store
        .recipient_balances(&recipient_id)
        .await?
        .into_iter()
        .map(|(currency, e)| {
            (
                currency,
                RecipientTotals {
                    earned: e.earned,
                    reversed: e.reversed,
                    net: e.earned.saturating_sub(e.reversed),
                },
            )
        })
        .collect();
    Ok(HttpResponse::Ok().json(RecipientBalance { recipient_id, balances }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(r: &str, amount: u64, reversed: u64) -> SplitPart {
        SplitPart {
            recipient_id: r.into(),
            amount,
            reversed,
        }
    }

    #[test]
    fn parts_round_trip_through_their_stored_form() {
        let parts = vec![part("seller", 667, 0), part("platform_fee", 333, 12)];
        assert_eq!(decode_parts(&encode_parts(&parts)), parts);
        assert!(decode_parts("").is_empty());
    }

    #[test]
    fn a_refund_reverses_the_standing_parts_and_never_more_than_stands() {
        let parts = vec![part("a", 667, 0), part("b", 333, 0)];
        let (after, back) = reversal(&parts, 100).unwrap_or_default();
        assert_eq!(back, vec![("a".to_string(), 67), ("b".to_string(), 33)]);
        let (after, back) = reversal(&after, 900).unwrap_or_default();
        assert_eq!(back.iter().map(|(_, b)| b).sum::<u64>(), 900);
        assert!(after.iter().all(|p| p.reversed == p.amount), "{after:?}");
        assert!(reversal(&after, 1).is_none(), "nothing stands");
    }

    #[test]
    fn percentages_show_as_they_were_written() {
        assert_eq!(percentage_of(3333).to_string(), "33.33");
        assert_eq!(percentage_of(5000).to_string(), "50");
        assert_eq!(percentage_of(1).to_string(), "0.01");
        assert_eq!(percentage_of(1250).to_string(), "12.5");
    }
}
