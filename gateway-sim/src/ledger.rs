//! What the provider believes it charged and refunded: kept in memory, and appended line by line
//! to its own file before any answer leaves, so a restarted simulator (even after kill -9)
//! remembers every charge it ever answered, and answers a retried Idempotency-Key the same way.
//! A write reaches the kernel before the answer is sent: it survives the process, not the
//! machine (a real provider would also fsync; the simulator's disk is not what is under test).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub reference: String,
    pub idempotency_key: String,
    pub order_id: String,
    pub amount: u64,
    pub currency: String,
    pub customer_id: String,
    pub payment_method: String,
    pub status: ChargeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refund {
    pub reference: String,
    pub idempotency_key: String,
    pub charge_reference: String,
    pub amount: u64,
    pub currency: String,
}

/// One line of the ledger file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Charge(Charge),
    Refund(Refund),
}

pub struct Ledger {
    file: Option<File>,
    pub charges: Vec<Charge>,
    pub refunds: Vec<Refund>,
    charge_by_key: HashMap<String, usize>,
    charge_by_ref: HashMap<String, usize>,
    refund_by_key: HashMap<String, usize>,
    refunded: HashMap<String, u64>,
}

impl Ledger {
    /// The ledger kept in `path`, replayed from it when it exists. `None`: memory only (tests).
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let mut ledger = Self {
            file: None,
            charges: Vec::new(),
            refunds: Vec::new(),
            charge_by_key: HashMap::new(),
            charge_by_ref: HashMap::new(),
            refund_by_key: HashMap::new(),
            refunded: HashMap::new(),
        };
        let Some(path) = path else { return Ok(ledger) };
        if path.exists() {
            for line in BufReader::new(File::open(path)?).lines() {
                let line = line?;
                // A line cut short by a crash mid-write was never answered: skip it.
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Charge(c)) => ledger.remember_charge(c),
                    Ok(Line::Refund(r)) => ledger.remember_refund(r),
                    Err(_) => continue,
                }
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        // A torn last line is ended, so the next line does not join it and get skipped too.
        let text = std::fs::read(path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        ledger.file = Some(file);
        Ok(ledger)
    }

    pub fn charge_by_key(&self, key: &str) -> Option<&Charge> {
        self.charge_by_key.get(key).map(|&i| &self.charges[i])
    }

    pub fn charge_by_ref(&self, reference: &str) -> Option<&Charge> {
        self.charge_by_ref.get(reference).map(|&i| &self.charges[i])
    }

    pub fn refund_by_key(&self, key: &str) -> Option<&Refund> {
        self.refund_by_key.get(key).map(|&i| &self.refunds[i])
    }

    /// What is left to refund of a charge.
    pub fn refundable(&self, charge: &Charge) -> u64 {
        match charge.status {
            ChargeStatus::Succeeded => charge.amount - self.refunded.get(&charge.reference).copied().unwrap_or(0),
            ChargeStatus::Failed => 0,
        }
    }

    pub fn add_charge(&mut self, charge: Charge) -> std::io::Result<()> {
        self.append(&Line::Charge(charge.clone()))?;
        self.remember_charge(charge);
        Ok(())
    }

    pub fn add_refund(&mut self, refund: Refund) -> std::io::Result<()> {
        self.append(&Line::Refund(refund.clone()))?;
        self.remember_refund(refund);
        Ok(())
    }

    fn append(&mut self, line: &Line) -> std::io::Result<()> {
        if let Some(file) = &mut self.file {
            let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
            text.push(b'\n');
            // One write per line: a line is in the file whole or (cut by a crash) skipped.
            file.write_all(&text)?;
        }
        Ok(())
    }

    fn remember_charge(&mut self, charge: Charge) {
        let i = self.charges.len();
        self.charge_by_key.insert(charge.idempotency_key.clone(), i);
        self.charge_by_ref.insert(charge.reference.clone(), i);
        self.charges.push(charge);
    }

    fn remember_refund(&mut self, refund: Refund) {
        let i = self.refunds.len();
        self.refund_by_key.insert(refund.idempotency_key.clone(), i);
        *self.refunded.entry(refund.charge_reference.clone()).or_default() += refund.amount;
        self.refunds.push(refund);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, reference: &str) -> Charge {
        Charge {
            reference: reference.into(),
            idempotency_key: key.into(),
            order_id: "ord_1".into(),
            amount: 500,
            currency: "USD".into(),
            customer_id: "c".into(),
            payment_method: "pm_card_visa".into(),
            status: ChargeStatus::Succeeded,
            decline_code: None,
        }
    }

    #[test]
    fn a_reopened_ledger_remembers_every_charge_and_refund_and_skips_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("sim-ledger-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ledger.jsonl");
        {
            let mut ledger = Ledger::open(Some(&path)).expect("open");
            ledger.add_charge(charge("k1", "ch_1")).expect("charge");
            ledger
                .add_refund(Refund {
                    reference: "re_1".into(),
                    idempotency_key: "r1".into(),
                    charge_reference: "ch_1".into(),
                    amount: 200,
                    currency: "USD".into(),
                })
                .expect("refund");
        }
        let mut file = OpenOptions::new().append(true).open(&path).expect("append");
        file.write_all(b"{\"charge\":{\"refer").expect("torn line");
        let mut ledger = Ledger::open(Some(&path)).expect("reopen");
        ledger
            .add_charge(charge("k2", "ch_2"))
            .expect("a charge after the torn line");
        let ledger = Ledger::open(Some(&path)).expect("reopen again");
        assert!(
            ledger.charge_by_key("k2").is_some(),
            "the line after a torn one is kept"
        );
        let found = ledger.charge_by_key("k1").expect("charge remembered");
        assert_eq!(found.reference, "ch_1");
        assert_eq!(ledger.refundable(found), 300);
        assert_eq!(ledger.refund_by_key("r1").map(|r| r.amount), Some(200));
        assert_eq!(ledger.charges.len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
