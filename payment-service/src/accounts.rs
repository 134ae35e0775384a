//! Accounts and their API keys over HTTP (the mechanism is `shared::accounts`, which every
//! service uses to identify callers). The platform creates accounts; an account may issue and
//! revoke its own keys.
//!
//! A key is shown once: the answer that carries it is replayed for its Idempotency-Key with
//! `apiKey: null` (the secret is kept only as a hash, so it cannot be shown again).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use shared::accounts::{AccountId, KeyId};
use shared::idempotency::{self, Begin, IdempotencyStore, IdempotentPost, KeyRef, Outcome, StoredResponse};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::PaymentError;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// The merchant's or seller's name, not blank.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountCreated {
    pub account_id: String,
    pub name: String,
    /// The first key's id.
    pub key_id: String,
    /// `sk_test_…`, shown once: null when the answer is replayed.
    pub api_key: Option<String>,
}

/// Issuing a key takes nothing but an empty object.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueKeyRequest {}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyIssued {
    pub key_id: String,
    /// `sk_test_…`, shown once: null when the answer is replayed.
    pub api_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRevoked {
    pub key_id: String,
    #[schema(pattern = "^revoked$")]
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    pub account_id: String,
    pub name: String,
    pub created_at: String,
    /// Ids of its live keys (the keys themselves are never shown again).
    pub key_ids: Vec<String>,
}

/// An account id from a path; anything but one of ours names no account.
fn account_in_path(raw: &str) -> Result<AccountId, PaymentError> {
    AccountId::parse(raw).ok_or_else(|| PaymentError::AccountNotFound(raw.chars().take(64).collect()))
}

/// Runs a key-issuing request under its Idempotency-Key: the first caller gets the secret, the
/// record keeps the same answer without it.
async fn issue_once<F, Fut>(state: &AppState, key_ref: &KeyRef, issue: F) -> Result<HttpResponse, PaymentError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(StoredResponse, StoredResponse), PaymentError>>,
{
    let token = match state.idempotency.begin(key_ref, &shared::ids::new_id("op")).await? {
        Begin::Execute { token, .. } => token,
        other => return Ok(IdempotencyStore::refusal(other)?),
    };
    match issue().await {
        Ok((shown, kept)) => {
            state.idempotency.record(key_ref, &token, &Outcome::Store(kept)).await;
            Ok(shown.to_response(false))
        }
        Err(e) => Ok(state.idempotency.settle(key_ref, &token, Outcome::of(Err(e))).await),
    }
}

#[utoipa::path(
    post, path = "/accounts", request_body = CreateAccountRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")),
    responses(
        (status = 201, body = AccountCreated, description = "the account and its first key, shown once"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: only the platform (internal token) creates accounts")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_account(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PaymentError> {
    state.accounts.caller(&req).await?.platform_only()?;
    let IdempotentPost { body, key_ref, .. } =
        idempotency::read_post_as::<CreateAccountRequest>(&req, payload, "payment:accounts").await?;
    let seed = format!("{}\n{}", key_ref.redis_key(), key_ref.fingerprint());
    let (account_id, key_id) = (AccountId::derived(&seed), KeyId::derived(&seed));
    let name = body.name.trim().to_string();
    issue_once(&state, &key_ref, || async {
        let key = state.accounts.create(&account_id, &name, &key_id).await?;
        tracing::info!(account_id = %account_id, key_id = key_id.as_str(), "account created");
        let answer = |api_key: Option<String>| {
            StoredResponse::json(
                StatusCode::CREATED,
                &AccountCreated {
                    account_id: account_id.to_string(),
                    name: name.clone(),
                    key_id: key_id.as_str().to_string(),
                    api_key,
                },
            )
        };
        Ok((answer(Some(key.expose().to_string())), answer(None)))
    })
    .await
}

#[utoipa::path(
    get, path = "/accounts/{accountId}",
    params(("accountId" = String, Path, description = "`acct_` and 32 hex digits")),
    responses(
        (status = 200, body = AccountView),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: another account's"),
        (status = 404, description = "account-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_account(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let id = account_in_path(&path)?;
    caller.may_act_for(Some(id.as_str()))?;
    let account = state
        .accounts
        .get(&id)
        .await?
        .ok_or_else(|| PaymentError::AccountNotFound(id.to_string()))?;
    Ok(HttpResponse::Ok().json(AccountView {
        account_id: account.id.to_string(),
        name: account.name,
        created_at: account.created_at,
        key_ids: account.key_ids,
    }))
}

#[utoipa::path(
    post, path = "/accounts/{accountId}/api-keys", request_body = IssueKeyRequest,
    params(
        ("accountId" = String, Path, description = "`acct_` and 32 hex digits"),
        ("Idempotency-Key" = String, Header, description = "1–255 printable ASCII characters")
    ),
    responses(
        (status = 201, body = KeyIssued, description = "another key, shown once"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: another account's"),
        (status = 404, description = "account-not-found")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn issue_key(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let id = account_in_path(&path)?;
    caller.may_act_for(Some(id.as_str()))?;
    let IdempotentPost { key_ref, .. } =
        idempotency::read_post_as::<IssueKeyRequest>(&req, payload, &caller.scope("payment:api-keys")).await?;
    let key_id = KeyId::derived(&format!("{}\n{}", key_ref.redis_key(), key_ref.fingerprint()));
    issue_once(&state, &key_ref, || async {
        let key = state
            .accounts
            .issue(&id, &key_id)
            .await?
            .ok_or_else(|| PaymentError::AccountNotFound(id.to_string()))?;
        tracing::info!(account_id = %id, key_id = key_id.as_str(), "API key issued");
        let answer = |api_key: Option<String>| {
            StoredResponse::json(
                StatusCode::CREATED,
                &KeyIssued {
                    key_id: key_id.as_str().to_string(),
                    api_key,
                },
            )
        };
        Ok((answer(Some(key.expose().to_string())), answer(None)))
    })
    .await
}

#[utoipa::path(
    delete, path = "/accounts/{accountId}/api-keys/{keyId}",
    params(
        ("accountId" = String, Path, description = "`acct_` and 32 hex digits"),
        ("keyId" = String, Path, description = "`key_` and 32 hex digits")
    ),
    responses(
        (status = 200, body = KeyRevoked, description = "revoked: refused by every replica from the next request"),
        (status = 401, description = "unauthorized"),
        (status = 403, description = "forbidden: another account's"),
        (status = 404, description = "account-not-found, or api-key-not-found (unknown or already revoked)")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke_key(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PaymentError> {
    let caller = state.accounts.caller(&req).await?;
    let (account, key) = path.into_inner();
    let id = account_in_path(&account)?;
    caller.may_act_for(Some(id.as_str()))?;
    let not_found = || PaymentError::ApiKeyNotFound(key.chars().take(64).collect());
    let key_id = KeyId::parse(&key).ok_or_else(not_found)?;
    if !state.accounts.revoke(&id, &key_id).await? {
        return Err(not_found());
    }
    tracing::info!(account_id = %id, key_id = key_id.as_str(), "API key revoked");
    Ok(HttpResponse::Ok().json(KeyRevoked {
        key_id: key_id.as_str().to_string(),
        status: "revoked".into(),
    }))
}
