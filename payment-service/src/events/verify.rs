//! `POST /admin/verify`: every charge, refund, wallet balance and the books per provider,
//! rebuilt from the event log alone ([`fold_charge`], [`fold_wallet`]: pure) and compared with
//! the stored state. After any test or fault run, nothing may differ.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use shared::ids::SHARDS;
use utoipa::ToSchema;

use super::Event;
use crate::AppState;
use crate::error::PaymentError;
use crate::model::{CurrencyTotals, Totals};
use crate::splits::store::Earned;
use crate::store::{EVENTS_KEYS, Store, aggregates_key, events_key_parts};

/// A charge as its events tell it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChargeFold {
    pub status: String,
    pub amount: u64,
    pub currency: String,
    pub gateway: String,
    pub refunded: u64,
    pub refunds: u64,
    /// Per recipient of the charge's split: earned, reversed.
    pub parts: BTreeMap<String, (u64, u64)>,
}

/// The recipients' parts in a split event, summed: `data.parts[].{recipientId, amount}`.
fn parts_of(e: &Event) -> Result<Vec<(String, u64)>, String> {
    e.data["parts"]
        .as_array()
        .ok_or_else(|| format!("{}: no parts", e.event_id))?
        .iter()
        .map(|p| match (p["recipientId"].as_str(), p["amount"].as_u64()) {
            (Some(r), Some(a)) => Ok((r.to_string(), a)),
            _ => Err(format!("{}: a part without recipientId and amount", e.event_id)),
        })
        .collect()
}

fn amount_of(e: &Event) -> Result<u64, String> {
    e.data["amount"]
        .as_u64()
        .ok_or_else(|| format!("{}: no integer amount", e.event_id))
}

/// Rebuilds a charge: its first event made it (succeeded, declined, or a pending Pix that a
/// later charge.succeeded pays or charge.canceled cancels, and that a payment after its
/// cancellation still pays), each refund.succeeded after it gave part of it back.
pub fn fold_charge(events: &[Event]) -> Result<ChargeFold, String> {
    let Some(first) = events.first() else {
        return Err("no events".into());
    };
    let mut fold = ChargeFold {
        amount: amount_of(first)?,
        currency: first.data["currency"].as_str().unwrap_or_default().to_string(),
        gateway: first.data["gateway"].as_str().unwrap_or_default().to_string(),
        status: match first.kind.as_str() {
            "charge.succeeded" => "succeeded".into(),
            "charge.declined" => "failed".into(),
            "charge.pending" => "pending".into(),
            other => return Err(format!("{}: begins with {other}", first.event_id)),
        },
        ..ChargeFold::default()
    };
    for e in &events[1..] {
        match e.kind.as_str() {
            "charge.succeeded" if fold.status == "pending" || fold.status == "canceled" => {
                if amount_of(e)? != fold.amount {
                    return Err(format!("{}: paid another amount than the charge's", e.event_id));
                }
                fold.status = "succeeded".into();
            }
            "charge.canceled" if fold.status == "pending" => fold.status = "canceled".into(),
            "split.executed" if fold.status == "succeeded" && fold.parts.is_empty() => {
                let parts = parts_of(e)?;
                let sum: u64 = parts.iter().map(|(_, a)| a).sum();
                if sum != fold.amount {
                    crate::splits::SPLIT_ANOMALIES.inc(&[("check", "verify")]);
                    return Err(format!(
                        "{}: parts sum to {sum}, not the charge's {}",
                        e.event_id, fold.amount
                    ));
                }
                for (recipient, amount) in parts {
                    fold.parts.entry(recipient).or_default().0 += amount;
                }
            }
            "split.reversed" if !fold.parts.is_empty() => {
                let parts = parts_of(e)?;
                let sum: u64 = parts.iter().map(|(_, a)| a).sum();
                if Some(sum) != e.data["amount"].as_u64() {
                    crate::splits::SPLIT_ANOMALIES.inc(&[("check", "verify")]);
                    return Err(format!(
                        "{}: reversals sum to {sum}, not the refund's {}",
                        e.event_id, e.data["amount"]
                    ));
                }
                for (recipient, amount) in parts {
                    let part = fold.parts.entry(recipient.clone()).or_default();
                    part.1 += amount;
                    if part.1 > part.0 {
                        return Err(format!("{}: {recipient} reversed past its part", e.event_id));
                    }
                }
            }
            "refund.succeeded" if fold.status != "failed" => {
                fold.refunded += amount_of(e)?;
                fold.refunds += 1;
                if fold.refunded > fold.amount {
                    return Err(format!("{}: refunded {} of {}", e.event_id, fold.refunded, fold.amount));
                }
                fold.status = if fold.refunded == fold.amount {
                    "refunded".into()
                } else {
                    "partially_refunded".into()
                };
            }
            other => return Err(format!("{}: {other} after the charge was {}", e.event_id, fold.status)),
        }
    }
    Ok(fold)
}

/// Rebuilds a wallet's balances: credits and refunds add, debits take away, never below zero.
pub fn fold_wallet(events: &[Event]) -> Result<BTreeMap<String, u64>, String> {
    let mut balances: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let amount = amount_of(e)?;
        let currency = e.data["currency"].as_str().unwrap_or_default().to_string();
        let balance = balances.entry(currency).or_default();
        match e.kind.as_str() {
            "wallet.credited" | "wallet.refunded" => *balance += amount,
            "wallet.debited" => {
                *balance = balance
                    .checked_sub(amount)
                    .ok_or_else(|| format!("{}: a debit of {amount} below zero", e.event_id))?;
            }
            other => return Err(format!("{}: {other} in a wallet", e.event_id)),
        }
        if e.data["balanceAfter"].as_u64() != Some(*balance) {
            return Err(format!(
                "{}: balanceAfter {} but the events sum to {balance}",
                e.event_id, e.data["balanceAfter"]
            ));
        }
    }
    Ok(balances)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    /// Aggregates (charges and wallets) rebuilt.
    pub checked: u64,
    /// Where the stored state differs from what the events say; empty when all agree.
    pub mismatches: Vec<String>,
}

/// Every aggregate with events, by shard: its shard's set names it (events.lua's
/// append_event: always on a cluster, on one node before #29's twelfth pass), and on one node a
/// SCAN of the event lists' names finds it too.
pub(crate) async fn aggregates(store: &Store) -> Result<Vec<BTreeSet<String>>, PaymentError> {
    let mut found = vec![BTreeSet::new(); usize::from(SHARDS)];
    let mut conn = store.pool.get().await?;
    for (shard, set) in (0..SHARDS).zip(found.iter_mut()) {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(aggregates_key(shard))
            .query_async(&mut conn)
            .await?;
        set.extend(members);
    }
    if store.one_node {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(EVENTS_KEYS)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for key in keys {
                if let Some((shard, aggregate)) = events_key_parts(&key)
                    && let Some(set) = found.get_mut(usize::from(shard))
                {
                    set.insert(aggregate.to_string());
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(found)
}

async fn run(state: &AppState) -> Result<VerifyReport, PaymentError> {
    let store = &state.store;
    let mut mismatches = Vec::new();
    let mut checked = 0;
    let mut rebuilt = Totals::default();
    let mut recipients: BTreeMap<String, BTreeMap<String, Earned>> = BTreeMap::new();
    for aggregates in aggregates(store).await? {
        for aggregate in aggregates {
            checked += 1;
            // Sequences are list positions (events.lua): gapless by construction.
            let events = store.events(&aggregate, 0, None).await?;
            if let Some(customer) = aggregate.strip_prefix("wal_") {
                verify_wallet(state, customer, &events, &mut mismatches).await?;
            } else if aggregate.starts_with("spl_") {
                verify_split(state, &aggregate, &events, &mut mismatches).await?;
            } else if let Some(fold) = verify_charge(state, &aggregate, &events, &mut rebuilt, &mut mismatches).await? {
                for (recipient, (earned, reversed)) in fold.parts {
                    let entry = recipients
                        .entry(recipient)
                        .or_default()
                        .entry(fold.currency.clone())
                        .or_default();
                    entry.earned += earned;
                    entry.reversed += reversed;
                }
            }
        }
    }
    let stored = store.totals().await?;
    let gateways: std::collections::BTreeSet<&String> =
        stored.by_gateway.keys().chain(rebuilt.by_gateway.keys()).collect();
    for gateway in gateways {
        let empty = BTreeMap::new();
        let ours = stored.by_gateway.get(gateway).unwrap_or(&empty);
        let theirs = rebuilt.by_gateway.get(gateway).unwrap_or(&empty);
        let currencies: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
        for currency in currencies {
            let (a, b) = (
                ours.get(currency).copied().unwrap_or_default(),
                theirs.get(currency).copied().unwrap_or_default(),
            );
            if a != b {
                mismatches.push(format!("totals {gateway} {currency}: stored {a:?}, events say {b:?}"));
            }
        }
    }
    let mut named: std::collections::BTreeSet<String> = store.all_recipients().await?.into_iter().collect();
    named.extend(recipients.keys().cloned());
    for recipient in named {
        let stored = store.recipient_balances(&recipient).await?;
        let told = recipients.remove(&recipient).unwrap_or_default();
        if stored != told {
            mismatches.push(format!("recipient {recipient}: stored {stored:?}, events say {told:?}"));
        }
    }
    Ok(VerifyReport { checked, mismatches })
}

/// A split's one event made it, and its item's history still holds it as the event says.
async fn verify_split(
    state: &AppState,
    split_id: &str,
    events: &[Event],
    mismatches: &mut Vec<String>,
) -> Result<(), PaymentError> {
    let [created] = events else {
        mismatches.push(format!("{split_id}: {} events, not one split.created", events.len()));
        return Ok(());
    };
    let item_id = created.data["itemId"].as_u64().unwrap_or(0);
    let history = state.store.splits_of(item_id).await?;
    match history.iter().find(|s| s.split_id == split_id) {
        None => mismatches.push(format!("{split_id}: an event but no split in item {item_id}'s history")),
        Some(stored) => {
            let told: Vec<(String, Option<u64>)> = created.data["rules"]
                .as_array()
                .map(|rules| {
                    rules
                        .iter()
                        .map(|r| {
                            let bps = r["percentage"].as_f64().map(|p| (p * 100.0).round() as u64);
                            (r["recipientId"].as_str().unwrap_or_default().to_string(), bps)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let kept: Vec<(String, Option<u64>)> = stored
                .rules
                .iter()
                .map(|r| (r.recipient_id.clone(), Some(r.bps)))
                .collect();
            if created.kind != "split.created" || told != kept {
                mismatches.push(format!("{split_id}: stored rules {kept:?}, events say {told:?}"));
            }
        }
    }
    Ok(())
}

async fn verify_charge(
    state: &AppState,
    charge_id: &str,
    events: &[Event],
    rebuilt: &mut Totals,
    mismatches: &mut Vec<String>,
) -> Result<Option<ChargeFold>, PaymentError> {
    let fold = match fold_charge(events) {
        Ok(f) => f,
        Err(e) => {
            mismatches.push(format!("{charge_id}: {e}"));
            return Ok(None);
        }
    };
    // Declined charges and unpaid Pix are not money.
    if !matches!(fold.status.as_str(), "failed" | "pending" | "canceled") {
        let entry: &mut CurrencyTotals = rebuilt
            .by_gateway
            .entry(fold.gateway.clone())
            .or_default()
            .entry(fold.currency.clone())
            .or_default();
        entry.charged.count += 1;
        entry.charged.amount += fold.amount;
        entry.refunded.count += fold.refunds;
        entry.refunded.amount += fold.refunded;
    }
    match state.store.get_charge(charge_id).await? {
        None => mismatches.push(format!("{charge_id}: events but no charge")),
        Some(c) => {
            let stored = (
                c.status.as_str(),
                c.amount,
                c.currency.as_str(),
                c.gateway.as_str(),
                c.amount_refunded,
            );
            let told = (
                fold.status.as_str(),
                fold.amount,
                fold.currency.as_str(),
                fold.gateway.as_str(),
                fold.refunded,
            );
            if stored != told {
                mismatches.push(format!("{charge_id}: stored {stored:?}, events say {told:?}"));
            }
            let stored_parts: BTreeMap<String, (u64, u64)> = c
                .splits
                .iter()
                .map(|p| (p.recipient_id.clone(), (p.amount, p.reversed)))
                .collect();
            if stored_parts != fold.parts {
                mismatches.push(format!(
                    "{charge_id}: stored parts {stored_parts:?}, events say {:?}",
                    fold.parts
                ));
            }
        }
    }
    Ok(Some(fold))
}

async fn verify_wallet(
    state: &AppState,
    customer: &str,
    events: &[Event],
    mismatches: &mut Vec<String>,
) -> Result<(), PaymentError> {
    let told = match fold_wallet(events) {
        Ok(b) => b,
        Err(e) => {
            mismatches.push(format!("wallet {customer}: {e}"));
            return Ok(());
        }
    };
    let stored = state.store.wallet_balances(customer).await?.unwrap_or_default();
    if stored != told {
        mismatches.push(format!("wallet {customer}: stored {stored:?}, events say {told:?}"));
    }
    let mut summed: BTreeMap<String, i128> = BTreeMap::new();
    for tx in state.store.all_wallet_transactions(customer).await? {
        let sign = if tx.kind == "debit" { -1 } else { 1 };
        *summed.entry(tx.currency).or_default() += sign * i128::from(tx.amount);
    }
    let stored_signed: BTreeMap<String, i128> = stored.iter().map(|(c, b)| (c.clone(), i128::from(*b))).collect();
    if summed != stored_signed {
        mismatches.push(format!(
            "wallet {customer}: balances {stored:?} but its transactions sum to {summed:?}"
        ));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/admin/verify",
    responses((status = 200, body = VerifyReport)),
    security(("bearer" = []))
)]
pub(crate) async fn verify(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PaymentError> {
    shared::auth::require(&req, &state.settings.common.internal_token)?;
    let report = run(&state).await?;
    if !report.mismatches.is_empty() {
        tracing::error!(mismatches = ?report.mismatches, "the event log and the stored state disagree");
    }
    Ok(HttpResponse::Ok().json(report))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(seq: u64, kind: &str, data: serde_json::Value) -> Event {
        Event {
            event_id: format!("ch_x-{seq}"),
            sequence: seq,
            kind: kind.into(),
            aggregate_id: "ch_x".into(),
            at: "t".into(),
            correlation_id: "ord_1".into(),
            data,
        }
    }

    #[test]
    fn a_charge_folds_from_its_events_through_partial_refunds() {
        let charged = event(
            1,
            "charge.succeeded",
            json!({"amount": 1000, "currency": "USD", "gateway": "card-a"}),
        );
        let part = event(2, "refund.succeeded", json!({"amount": 300}));
        let rest = event(3, "refund.succeeded", json!({"amount": 700}));
        let fold = fold_charge(&[charged.clone(), part.clone()]).expect("fold");
        assert_eq!((fold.status.as_str(), fold.refunded), ("partially_refunded", 300));
        let fold = fold_charge(&[charged.clone(), part.clone(), rest]).expect("fold");
        assert_eq!(
            (fold.status.as_str(), fold.refunded, fold.refunds),
            ("refunded", 1000, 2)
        );
        let over = event(3, "refund.succeeded", json!({"amount": 701}));
        assert!(
            fold_charge(&[charged, part, over]).is_err(),
            "more refunded than charged"
        );
        let declined = event(
            1,
            "charge.declined",
            json!({"amount": 5, "currency": "USD", "gateway": "card-a"}),
        );
        assert_eq!(
            fold_charge(std::slice::from_ref(&declined)).map(|f| f.status),
            Ok("failed".into())
        );
        assert!(fold_charge(&[declined, event(2, "refund.succeeded", json!({"amount": 1}))]).is_err());
    }

    #[test]
    fn a_pix_folds_pending_then_paid_or_canceled_and_a_payment_after_cancel_still_counts() {
        let data = serde_json::json!({"amount": 700, "currency": "BRL", "gateway": "pix"});
        let pending = event(1, "charge.pending", data.clone());
        let fold = fold_charge(std::slice::from_ref(&pending)).expect("pending");
        assert_eq!(fold.status, "pending");
        let paid = [pending.clone(), event(2, "charge.succeeded", data.clone())];
        assert_eq!(fold_charge(&paid).map(|f| f.status).as_deref(), Ok("succeeded"));
        let late = [
            pending.clone(),
            event(2, "charge.canceled", data.clone()),
            event(3, "charge.succeeded", data.clone()),
            event(4, "refund.succeeded", data.clone()),
        ];
        assert_eq!(fold_charge(&late).map(|f| f.status).as_deref(), Ok("refunded"));
        let twice = [
            pending.clone(),
            event(2, "charge.succeeded", data.clone()),
            event(3, "charge.succeeded", data.clone()),
        ];
        assert!(fold_charge(&twice).is_err(), "paid twice is caught");
        let other = serde_json::json!({"amount": 1, "currency": "BRL", "gateway": "pix"});
        assert!(fold_charge(&[pending, event(2, "charge.succeeded", other)]).is_err());
    }

    #[test]
    fn a_wallet_folds_to_its_balances_and_a_debit_below_zero_or_a_wrong_balance_is_caught() {
        let credit = event(
            1,
            "wallet.credited",
            json!({"amount": 500, "currency": "USD", "balanceAfter": 500}),
        );
        let debit = event(
            2,
            "wallet.debited",
            json!({"amount": 200, "currency": "USD", "balanceAfter": 300}),
        );
        let back = event(
            3,
            "wallet.refunded",
            json!({"amount": 50, "currency": "USD", "balanceAfter": 350}),
        );
        let balances = fold_wallet(&[credit.clone(), debit, back]).expect("fold");
        assert_eq!(balances.get("USD"), Some(&350));
        let overdrawn = event(
            2,
            "wallet.debited",
            json!({"amount": 501, "currency": "USD", "balanceAfter": 0}),
        );
        assert!(fold_wallet(&[credit.clone(), overdrawn]).is_err());
        let wrong = event(
            2,
            "wallet.credited",
            json!({"amount": 1, "currency": "USD", "balanceAfter": 7}),
        );
        assert!(fold_wallet(&[credit, wrong]).is_err());
    }
}
