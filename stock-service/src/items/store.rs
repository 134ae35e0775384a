//! The catalogue: items and their counts, and the demo seed.

use std::sync::LazyLock;

use redis::AsyncCommands;
use shared::lua::Script;

use crate::error::StockError;
use crate::model::Item;

/// What a PUT sets on an item.
pub struct ItemPut<'a> {
    pub name: &'a str,
    pub price: u64,
    pub currency: &'a str,
    pub available: u64,
    /// The owner to set (an account id); `None` keeps the current one.
    pub owner: Option<&'a str>,
}
use crate::store::{INDEX, Store, item_key};

// Create or restock, or create only (the seed). See upsert.lua.
static UPSERT: LazyLock<Script> = LazyLock::new(|| shared::lua::script(&[], include_str!("upsert.lua")));

const DEMO: [(&str, u64); 10] = [
    ("Espresso beans 1kg", 1000),
    ("French press", 2500),
    ("Burr grinder", 4999),
    ("Paper filters (100)", 500),
    ("Espresso machine", 9999),
    ("Milk jug", 1500),
    ("Pour-over kettle", 3000),
    ("Coffee scale", 7500),
    ("Cleaning tablets", 850),
    ("Travel mug", 1999),
];

impl Store {
    pub async fn get_item(&self, id: u64) -> Result<Option<Item>, StockError> {
        let mut conn = self.pool.get().await?;
        let fields: Vec<Option<String>> = item_fields(id).query_async(&mut conn).await?;
        Ok(item_from(id, &fields))
    }

    pub async fn list_items(&self) -> Result<Vec<Item>, StockError> {
        let mut conn = self.pool.get().await?;
        let mut ids: Vec<u64> = conn.smembers(INDEX).await?;
        ids.sort_unstable();
        if ids.is_empty() {
            // An empty pipeline is an error to the client, not an empty answer.
            return Ok(Vec::new());
        }
        // Items are separate slots: one pipeline on a single node, one read each on a cluster.
        let rows: Vec<Vec<Option<String>>> = conn.each(ids.iter().map(|id| item_fields(*id)).collect()).await?;
        Ok(ids.iter().zip(rows).filter_map(|(id, f)| item_from(*id, &f)).collect())
    }

    /// Creates or restocks item `id` as `put` says, acting for `acting` (`None`: the platform);
    /// 403 when an account acts on an item that is not its own.
    pub async fn put_item(&self, id: u64, put: &ItemPut<'_>, acting: Option<&str>) -> Result<Item, StockError> {
        let mut conn = self.pool.get().await?;
        let written: i64 = UPSERT
            .key(item_key(id))
            .arg(put.name)
            .arg(put.price)
            .arg(put.currency)
            .arg(put.available)
            .arg("upsert")
            .arg(put.owner.unwrap_or(""))
            .arg(acting.unwrap_or(""))
            .invoke_async(&mut conn)
            .await?;
        if written < 0 {
            return Err(shared::CommonError::Forbidden(format!(
                "item {id} belongs to another account or to the platform"
            ))
            .into());
        }
        let _: i64 = conn.sadd(INDEX, id).await?;
        drop(conn);
        self.get_item(id)
            .await?
            .ok_or_else(|| StockError::ItemNotFound(id.to_string()))
    }

    /// Creates the demo catalogue if there is no item at all. Never overwrites an item.
    pub async fn seed_demo(&self, units: u64) -> Result<bool, StockError> {
        let mut conn = self.pool.get().await?;
        let count: u64 = conn.scard(INDEX).await?;
        if count > 0 {
            return Ok(false);
        }
        for (i, (name, price)) in DEMO.iter().enumerate() {
            let id = i as u64 + 1;
            let _: i64 = UPSERT
                .key(item_key(id))
                .arg(*name)
                .arg(*price)
                .arg("USD")
                .arg(units)
                .arg("absent_only")
                .arg("")
                .arg("")
                .invoke_async(&mut conn)
                .await?;
            let _: i64 = conn.sadd(INDEX, id).await?;
        }
        tracing::info!(items = DEMO.len(), units, "seeded the demo catalogue");
        Ok(true)
    }
}

fn item_fields(id: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(item_key(id))
        .arg(&["name", "price", "currency", "available", "reserved", "sold", "ownerId"]);
    cmd
}

fn item_from(id: u64, f: &[Option<String>]) -> Option<Item> {
    let get = |i: usize| f.get(i).cloned().flatten();
    let num = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Some(Item {
        id,
        name: get(0)?,
        price: get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
        currency: get(2).unwrap_or_default(),
        available: num(3),
        reserved: num(4),
        sold: num(5),
        owner_id: get(6),
    })
}
