//! The catalogue: items and their counts. Reads are public; creating or restocking an item
//! needs the internal token (the platform, which may change any item and name its owner) or an
//! account's API key (which may create items, then its own, and change only those).

mod store;

pub use store::ItemPut;

use actix_web::{HttpRequest, HttpResponse, web};
use shared::accounts::{AccountId, Caller};
use shared::body::{self, JsonBody};

use crate::AppState;
use crate::error::StockError;
use crate::model::{Item, PutItemRequest};

/// An item id in a path: a positive integer, at most i64::MAX as the document's `int64` says.
fn item_id(raw: &str) -> Option<u64> {
    raw.parse::<u64>().ok().filter(|id| (1..=i64::MAX as u64).contains(id))
}

/// An id that is not one names no item.
fn parse_item_id(raw: &str) -> Result<u64, StockError> {
    item_id(raw).ok_or_else(|| StockError::ItemNotFound(raw.chars().take(64).collect()))
}

#[utoipa::path(get, path = "/items", responses((status = 200, body = [Item])))]
pub(crate) async fn list_items(state: web::Data<AppState>) -> Result<HttpResponse, StockError> {
    Ok(HttpResponse::Ok().json(state.store.list_items().await?))
}

#[utoipa::path(
    get, path = "/items/{id}",
    params(("id" = u64, Path, minimum = 1, description = "the item's id; anything else names no item (404)")),
    responses((status = 200, body = Item), (status = 404, description = "item-not-found"))
)]
pub(crate) async fn get_item(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, StockError> {
    let id = parse_item_id(&id)?;
    let item = state
        .store
        .get_item(id)
        .await?
        .ok_or_else(|| StockError::ItemNotFound(id.to_string()))?;
    Ok(HttpResponse::Ok().json(item))
}

#[utoipa::path(
    put, path = "/items/{id}", request_body = PutItemRequest,
    params(("id" = u64, Path, minimum = 1, description = "the item's id, a positive integer")),
    responses(
        (status = 200, body = Item),
        (status = 400, description = "invalid-request: the body, or an id that is not a positive integer"),
        (status = 404, description = "account-not-found: the ownerId names no account"),
        (status = 401, description = "unauthorized: neither the internal token nor a live API key"),
        (status = 403, description = "forbidden: an account changing an item it does not own, or naming another owner")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn put_item(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, StockError> {
    let caller = state.accounts.caller(&req).await?;
    let id = item_id(&id).ok_or_else(|| {
        shared::CommonError::InvalidRequest("the item id in the path must be a positive integer".into())
    })?;
    // Name, price, currency and available are checked against PutItemRequest's schema.
    let JsonBody { value: body, .. } = body::read_json::<PutItemRequest>(&req, payload).await?;
    let acting = match &caller {
        Caller::Platform => None,
        Caller::Account(me) => Some(me.as_str()),
    };
    let owner = match (&body.owner_id, acting) {
        (Some(owner), Some(me)) if owner != me => {
            return Err(
                shared::CommonError::Forbidden("an account may only name itself as an item's owner".into()).into(),
            );
        }
        (Some(owner), None) => {
            let known = match AccountId::parse(owner) {
                Some(id) => state.accounts.exists(&id).await?,
                None => false,
            };
            if !known {
                return Err(StockError::AccountNotFound(owner.clone()));
            }
            Some(owner.as_str())
        }
        (owner, _) => owner.as_deref(),
    };
    let put = ItemPut {
        name: body.name.trim(),
        price: body.price,
        currency: &body.currency,
        available: body.available,
        owner,
    };
    let item = state.store.put_item(id, &put, acting).await?;
    Ok(HttpResponse::Ok().json(item))
}
