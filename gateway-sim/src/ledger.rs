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
    /// A Pix waiting for the payer: not money yet.
    Pending,
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
    /// A Pix's payment code (what the payer scans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pix_code: Option<String>,
    /// A paid Pix whose webhook the merchant acknowledged (2xx): no more re-sends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notified: bool,
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
    /// A pending Pix was paid.
    Paid {
        reference: String,
    },
    /// The merchant acknowledged a paid Pix's webhook.
    Notified {
        reference: String,
    },
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
                    Ok(Line::Paid { reference }) => ledger.remember_paid(&reference),
                    Ok(Line::Notified { reference }) => ledger.remember_notified(&reference),
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
            ChargeStatus::Failed | ChargeStatus::Pending => 0,
        }
    }

    /// Pays a pending Pix; false when it is not one (unknown, or not pending).
    pub fn pay(&mut self, reference: &str) -> std::io::Result<bool> {
        if self.charge_by_ref(reference).map(|c| c.status) != Some(ChargeStatus::Pending) {
            return Ok(false);
        }
        self.append(&Line::Paid {
            reference: reference.to_string(),
        })?;
        self.remember_paid(reference);
        Ok(true)
    }

    /// Notes that the merchant acknowledged a paid Pix's webhook.
    pub fn notified(&mut self, reference: &str) -> std::io::Result<()> {
        self.append(&Line::Notified {
            reference: reference.to_string(),
        })?;
        self.remember_notified(reference);
        Ok(())
    }

    /// Paid Pix charges whose webhook was never acknowledged: re-sent after a restart.
    pub fn unnotified(&self) -> Vec<Charge> {
        self.charges
            .iter()
            .filter(|c| c.pix_code.is_some() && c.status == ChargeStatus::Succeeded && !c.notified)
            .cloned()
            .collect()
    }

    fn charge_mut(&mut self, reference: &str) -> Option<&mut Charge> {
        let i = *self.charge_by_ref.get(reference)?;
        self.charges.get_mut(i)
    }

    fn remember_paid(&mut self, reference: &str) {
        if let Some(c) = self.charge_mut(reference) {
            c.status = ChargeStatus::Succeeded;
        }
    }

    fn remember_notified(&mut self, reference: &str) {
        if let Some(c) = self.charge_mut(reference) {
            c.notified = true;
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
            pix_code: None,
            notified: false,
        }
    }

    #[test]
    fn a_pix_is_pending_until_paid_once_and_a_reopened_ledger_knows_which_webhooks_are_owed() {
        let dir = std::env::temp_dir().join(format!("sim-ledger-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ledger.jsonl");
        {
            let mut ledger = Ledger::open(Some(&path)).expect("open");
            for (key, reference) in [("k1", "ch_1"), ("k2", "ch_2")] {
                let pix = Charge {
                    status: ChargeStatus::Pending,
                    pix_code: Some(format!("code-{reference}")),
                    ..charge(key, reference)
                };
                ledger.add_charge(pix).expect("pix");
            }
            let pending = ledger.charge_by_ref("ch_1").cloned().expect("pix");
            assert_eq!(ledger.refundable(&pending), 0, "nothing to refund before it is paid");
            assert!(ledger.pay("ch_1").expect("pay"));
            assert!(!ledger.pay("ch_1").expect("pay again"), "paid once");
            assert!(!ledger.pay("ch_nope").expect("unknown"));
            assert!(ledger.pay("ch_2").expect("pay"));
            ledger.notified("ch_2").expect("notified");
        }
        let ledger = Ledger::open(Some(&path)).expect("reopen");
        let paid = ledger.charge_by_ref("ch_1").cloned().expect("pix");
        assert_eq!(paid.status, ChargeStatus::Succeeded);
        assert_eq!(ledger.refundable(&paid), 500);
        let owed: Vec<String> = ledger.unnotified().into_iter().map(|c| c.reference).collect();
        assert_eq!(owed, vec!["ch_1".to_string()]);
        let _ = std::fs::remove_dir_all(dir);
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
