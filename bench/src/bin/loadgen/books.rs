//! The books after a run: stock conserved, nothing left reserved, charged − refunded =
//! completed; and the stock a run starts from.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Shared;

pub(super) async fn get_json(shared: &Shared, path: &str) -> Result<Value, String> {
    let resp = shared
        .client
        .get(format!("{}{path}", shared.args.url))
        .bearer_auth(&shared.args.token)
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {path}: {}", resp.status()));
    }
    resp.json().await.map_err(|e| format!("GET {path}: {e}"))
}

/// available + reserved + sold per item.
pub(super) async fn stock_sums(shared: &Shared) -> Result<BTreeMap<u64, (i64, i64)>, String> {
    let items = get_json(shared, "/stock/items").await?;
    let list = items
        .as_array()
        .or_else(|| items["items"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut sums = BTreeMap::new();
    for item in list {
        let id = item["id"].as_u64().unwrap_or(0);
        let n = |f: &str| item[f].as_i64().unwrap_or(0);
        sums.insert(id, (n("available") + n("reserved") + n("sold"), n("reserved")));
    }
    Ok(sums)
}

pub(super) async fn check_books(shared: &Shared, before: &BTreeMap<u64, (i64, i64)>) -> Result<Vec<String>, String> {
    // Checkouts still running (202s, recovery) must end before the books can balance.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let totals = get_json(shared, "/order/totals").await?;
        let processing: i64 = totals
            .as_object()
            .map(|m| m.values().map(|c| c["processing"]["count"].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if processing == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Ok(vec![format!("{processing} orders still processing after 90 s")]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut violations = Vec::new();
    for (id, (sum, reserved)) in stock_sums(shared).await? {
        if let Some((was, _)) = before.get(&id)
            && *was != sum
        {
            violations.push(format!("item {id}: available+reserved+sold went from {was} to {sum}"));
        }
        if reserved != 0 {
            violations.push(format!("item {id}: {reserved} units still reserved"));
        }
    }
    let orders = get_json(shared, "/order/totals").await?;
    let payments = get_json(shared, "/payment/totals").await?;
    for (currency, o) in orders.as_object().cloned().unwrap_or_default() {
        if currency == "XXX" {
            continue;
        }
        let completed = o["completed"]["amount"].as_i64().unwrap_or(0);
        let p = &payments[&currency];
        let net = p["charged"]["amount"].as_i64().unwrap_or(0) - p["refunded"]["amount"].as_i64().unwrap_or(0);
        if net != completed {
            violations.push(format!(
                "{currency}: charged − refunded = {net}, completed orders = {completed}"
            ));
        }
    }
    Ok(violations)
}

pub(super) async fn setup_stock(shared: &Shared, units: i64) -> Result<(), String> {
    for id in shared.args.items.0..=shared.args.items.1 {
        let resp = shared
            .client
            .put(format!("{}/stock/items/{id}", shared.args.url))
            .bearer_auth(&shared.args.token)
            .json(&json!({"name": format!("Bench item {id}"), "price": 100 + id as i64, "currency": "USD", "available": units}))
            .send()
            .await
            .map_err(|e| format!("PUT item {id}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("PUT item {id}: {}", resp.status()));
        }
    }
    Ok(())
}

/// Credits wallets `bench_w0`… with the most one credit may be, for `--wallets`.
pub(super) async fn setup_wallets(shared: &Shared, wallets: u64) -> Result<(), String> {
    for i in 0..wallets {
        let resp = shared
            .client
            .post(format!("{}/payment/wallets/bench_w{i}/credits", shared.args.url))
            .bearer_auth(&shared.args.token)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"amount": 9_000_000_000_000_u64, "currency": "USD"}))
            .send()
            .await
            .map_err(|e| format!("credit wallet {i}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("credit wallet {i}: {}", resp.status()));
        }
    }
    Ok(())
}

/// Registers a platform webhook endpoint at `url` for every event type, so the run measures
/// the checkout with fan-out and delivery beside it.
pub(super) async fn subscribe(shared: &Shared, url: &str) -> Result<(), String> {
    let events = [
        "order.completed",
        "order.failed",
        "order.refunded",
        "charge.succeeded",
        "charge.refunded",
        "wallet.credited",
    ];
    let resp = shared
        .client
        .post(format!("{}/payment/webhook-endpoints", shared.args.url))
        .bearer_auth(&shared.args.token)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"url": url, "events": events}))
        .send()
        .await
        .map_err(|e| format!("webhook endpoint: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("webhook endpoint: {}", resp.status()));
    }
    Ok(())
}
