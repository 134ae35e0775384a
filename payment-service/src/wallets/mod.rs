//! Wallets: a balance per currency for each customer, credited by the platform, debited by
//! checkouts paying with `"paymentMethod": "wallet"` and credited back by their refunds. The
//! wallet is the charge's provider (`gateway: "wallet"`): it is debited first, under a key
//! derived from the charge request's, then the charge is recorded, as with a card provider; a
//! retry after a crash between the two finds the debit by that key. Balances never go below
//! zero and always equal the sum of their transactions (one script per movement, move.lua).

#[cfg(test)]
mod script_tests;
mod store;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use shared::idempotency::{self, IdempotentPost, Outcome, StoredResponse};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::PaymentError;
pub(crate) use store::WALLET_LIB;
pub use store::{Kind, Moved, Movement, Transaction, aggregate_id, new_transaction_id};

/// The wallet's name where a provider's would be: on charges, in `byGateway`.
pub const WALLET: &str = "wallet";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditRequest {
    /// Minor units.
    #[schema(minimum = 1, maximum = 9000000000000u64)]
    pub amount: u64,
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditResponse {
    pub transaction_id: String,
    pub customer_id: String,
    /// The balance in this currency after the credit.
    pub balance: u64,
    pub currency: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletView {
    pub customer_id: String,
    pub balances: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionPage {
    pub customer_id: String,
    /// Newest first.
    pub transactions: Vec<Transaction>,
    /// Pass as `cursor` for the next (older) page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// A wallet to read: one named otherwise than a wallet can be does not exist (404).
fn existing(raw: &str) -> Result<&str, PaymentError> {
    if shared::ids::is_safe_id(raw) {
        Ok(raw)
    } else {
        Err(PaymentError::WalletNotFound(raw.chars().take(64).collect()))
    }
}

/// A wallet is named by its customer: letters, digits, `_` and `-` (it becomes part of keys).
fn customer(raw: &str) -> Result<&str, PaymentError> {
    if shared::ids::is_safe_id(raw) {
        Ok(raw)
    } else {
        Err(PaymentError::invalid(
            "customerId: 1 to 128 letters, digits, '_' and '-' name a wallet",
        ))
    }
}

#[utoipa::path(
    post, path = "/wallets/{customerId}/credits", request_body = CreditRequest,
    params(
        ("customerId" = String, Path, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_-]+$"),
        ("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")
    ),
    responses(
        (status = 201, body = CreditResponse),
        (status = 400, description = "invalid-request: the customerId cannot name a wallet, or the body is wrong"),
        (status = 409, description = "wallet-limit-exceeded: the balance would pass 9 000 000 000 000 000")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn credit_wallet(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    customer_id: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let customer_id = customer(&customer_id)?.to_string();
    let IdempotentPost { body, key_ref, .. } = idempotency::read_post::<CreditRequest>(
        &req,
        payload,
        &state.settings.common.internal_token,
        &format!("payment:wallet-credit:{customer_id}"),
    )
    .await?;
    let store = state.store.clone();
    let movement_key = format!("credit:{}", crate::charges::provider_key(&key_ref));
    let response = state
        .idempotency
        .run(&key_ref, |_, _| async move {
            let moved = store
                .move_wallet(&Movement {
                    customer_id: &customer_id,
                    kind: Kind::Credit,
                    amount: body.amount,
                    currency: &body.currency,
                    key: &movement_key,
                    transaction_id: &new_transaction_id(),
                    charge_id: None,
                    correlation: &customer_id,
                })
                .await;
            Ok(Outcome::of(match moved {
                Ok(Moved::Done { tx, fresh }) => {
                    if fresh {
                        WALLET_EVENTS.inc(&[("event", "credited")]);
                        crate::events::EVENTS_APPENDED.inc(&[("type", "wallet.credited")]);
                    }
                    Ok(StoredResponse::json(
                        StatusCode::CREATED,
                        &CreditResponse {
                            transaction_id: tx.transaction_id,
                            customer_id: customer_id.clone(),
                            balance: tx.balance_after,
                            currency: tx.currency,
                        },
                    ))
                }
                Ok(Moved::Limit { .. } | Moved::Insufficient { .. }) => Err(PaymentError::WalletLimit),
                Err(e) => Err(e),
            }))
        })
        .await?;
    Ok(response)
}

#[utoipa::path(
    get, path = "/wallets/{customerId}",
    params(("customerId" = String, Path, description = "1 to 128 letters, digits, '_' and '-'")),
    responses((status = 200, body = WalletView), (status = 404, description = "wallet-not-found: never credited (or a name no wallet can have)")),
    security(("bearer" = []))
)]
pub(crate) async fn get_wallet(
    req: HttpRequest,
    state: web::Data<AppState>,
    customer_id: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let customer_id = existing(&customer_id)?;
    let balances = state
        .store
        .wallet_balances(customer_id)
        .await?
        .ok_or_else(|| PaymentError::WalletNotFound(customer_id.to_string()))?;
    Ok(HttpResponse::Ok().json(WalletView {
        customer_id: customer_id.to_string(),
        balances,
    }))
}

#[utoipa::path(
    get, path = "/wallets/{customerId}/transactions",
    params(
        ("customerId" = String, Path, description = "1 to 128 letters, digits, '_' and '-'"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "default 20"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9]{1,19}$", description = "nextCursor of the previous page")
    ),
    responses(
        (status = 200, body = TransactionPage),
        (status = 400, description = "invalid-request: limit or cursor malformed"),
        (status = 404, description = "wallet-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_transactions(
    req: HttpRequest,
    state: web::Data<AppState>,
    customer_id: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let customer_id = existing(&customer_id)?;
    let query = web::Query::<PageQuery>::from_query(req.query_string())
        .map_err(|e| PaymentError::invalid(format!("invalid query: {e}")))?
        .into_inner();
    let limit = page_limit(query.limit.as_deref())?;
    let before = match query.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse::<u64>()
                .ok()
                .filter(|_| c.len() <= 19)
                .ok_or_else(|| PaymentError::invalid("cursor: the nextCursor of a previous page"))?,
        ),
    };
    if state.store.wallet_balances(customer_id).await?.is_none() {
        return Err(PaymentError::WalletNotFound(customer_id.to_string()));
    }
    let (transactions, next) = state.store.wallet_transactions(customer_id, before, limit).await?;
    Ok(HttpResponse::Ok().json(TransactionPage {
        customer_id: customer_id.to_string(),
        transactions,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// `limit` as a page size: 1 to 100, 20 when left out.
pub(crate) fn page_limit(raw: Option<&str>) -> Result<u64, PaymentError> {
    match raw {
        None => Ok(20),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| PaymentError::invalid("limit: a whole number from 1 to 100")),
    }
}

/// `wallet_events_total{event}`: debited, credited, refunded, declined.
pub static WALLET_EVENTS: std::sync::LazyLock<shared::metrics::CounterFamily> = std::sync::LazyLock::new(|| {
    shared::metrics::CounterFamily::register(
        "wallet_events",
        "Wallet movements by kind: debited, credited, refunded, declined",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_holds_one_to_a_hundred_and_twenty_when_unsaid() {
        assert_eq!(page_limit(None).ok(), Some(20));
        assert_eq!(page_limit(Some("100")).ok(), Some(100));
        for bad in ["0", "101", "-1", "x", "1.5", ""] {
            assert!(page_limit(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
