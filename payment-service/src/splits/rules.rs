//! A split as requested, checked: percentages in exact basis points, the rules' sum, distinct
//! recipients, payout details per method, and when it takes effect. Pure: the handler does the
//! I/O (the item's owner, the store).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub const MAX_RULES: usize = 20;
/// 100 % in basis points.
pub const WHOLE: u64 = 10_000;
/// A split may start this long before "now" (clock skew between the caller and us); earlier
/// would pretend to rewrite charges already made.
pub const PAST_SKEW_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayoutMethod {
    Bank,
    Pix,
}

/// One recipient's rule as sent. Counts, sums and payout details are checked by [`check`], so
/// that every refusal is a `split-invalid` naming the rule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleRequest {
    /// Letters, digits, `_` and `-`, at most 128 (an account id, or the platform's own id for
    /// the recipient).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub recipient_id: String,
    /// Greater than 0, at most 100, at most two decimals: `33.33`. The rules of a split sum to
    /// exactly 100 and name distinct recipients: checked beside the schema (400 split-invalid).
    #[schema(value_type = f64, exclusive_minimum = 0, maximum = 100)]
    pub percentage: serde_json::Number,
    pub payout_method: PayoutMethod,
    /// `bank`: `{"bank": "001", "branch"?: "1234", "account": "12345-6"}`; `pix`: `{"pixKey": "…"}`.
    #[schema(value_type = Object)]
    pub account_info: Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitRequest {
    #[schema(minimum = 1, maximum = 9223372036854775807u64)]
    pub item_id: u64,
    /// RFC 3339 UTC (`2026-12-04T10:00:00Z`); now when left out. Not in the past.
    pub effective_from: Option<String>,
    #[schema(min_items = 1, max_items = 20)]
    pub rules: Vec<RuleRequest>,
}

/// A rule as kept: the percentage as basis points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub recipient_id: String,
    pub bps: u64,
    pub payout_method: PayoutMethod,
    pub account_info: Map<String, Value>,
}

/// A checked split, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub effective_from_ms: u64,
    pub rules: Vec<Rule>,
}

/// A JSON number with at most two decimals, in (0, 100], as basis points. The number is read
/// from its shortest decimal text (what `33.33` was written as), never computed with.
pub fn basis_points(n: &serde_json::Number) -> Result<u64, String> {
    let text = n.to_string();
    let refuse = || format!("percentage {text} must be greater than 0 and at most 100, with at most two decimals");
    if text.contains(['e', 'E', '-']) {
        return Err(refuse());
    }
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let frac = frac.trim_end_matches('0');
    if frac.len() > 2 || whole.is_empty() || whole.len() > 3 {
        return Err(refuse());
    }
    let whole: u64 = whole.parse().map_err(|_| refuse())?;
    let cents: u64 = format!("{frac:0<2}").parse().map_err(|_| refuse())?;
    let bps = whole * 100 + cents;
    if bps == 0 || bps > WHOLE {
        return Err(refuse());
    }
    Ok(bps)
}

fn text_field<'a>(info: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match info.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("accountInfo.{field} must be a string")),
    }
}

fn digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// The payout details a method needs, and nothing else.
pub fn check_account_info(method: PayoutMethod, info: &Map<String, Value>) -> Result<(), String> {
    let allowed: &[&str] = match method {
        PayoutMethod::Bank => &["bank", "branch", "account"],
        PayoutMethod::Pix => &["pixKey"],
    };
    if let Some(extra) = info.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("accountInfo.{extra} is not a field of a {method:?} payout").to_lowercase());
    }
    match method {
        PayoutMethod::Bank => {
            if !text_field(info, "bank")?.is_some_and(|b| digits(b, 3, 3)) {
                return Err("accountInfo.bank must be a 3-digit bank code".into());
            }
            if !text_field(info, "branch")?.is_none_or(|b| digits(b, 1, 6)) {
                return Err("accountInfo.branch must be 1 to 6 digits".into());
            }
            let account_ok = text_field(info, "account")?.is_some_and(|a| {
                let (number, check) = a.split_once('-').unwrap_or((a, ""));
                digits(number, 1, 20) && check.len() <= 2 && check.bytes().all(|b| b.is_ascii_digit() || b == b'X')
            });
            if !account_ok {
                return Err("accountInfo.account must be 1 to 20 digits, optionally `-` and a check digit".into());
            }
        }
        PayoutMethod::Pix => {
            let key_ok = text_field(info, "pixKey")?
                .is_some_and(|k| !k.trim().is_empty() && k.chars().count() <= 77 && !k.chars().any(char::is_control));
            if !key_ok {
                return Err("accountInfo.pixKey must be 1 to 77 characters".into());
            }
        }
    }
    Ok(())
}

/// Checks a split request at `now_ms`; the refusal names the rule and the reason.
pub fn check(req: &SplitRequest, now_ms: u64) -> Result<Checked, String> {
    if req.rules.is_empty() || req.rules.len() > MAX_RULES {
        return Err(format!("a split has 1 to {MAX_RULES} rules, not {}", req.rules.len()));
    }
    let mut rules = Vec::with_capacity(req.rules.len());
    for (i, r) in req.rules.iter().enumerate() {
        let at = |reason: String| format!("rules[{i}]: {reason}");
        if !shared::ids::is_safe_id(&r.recipient_id) {
            return Err(at("recipientId must be 1 to 128 letters, digits, '_' or '-'".into()));
        }
        if req.rules[..i]
            .iter()
            .any(|earlier| earlier.recipient_id == r.recipient_id)
        {
            return Err(at(format!("recipient {} appears twice", r.recipient_id)));
        }
        let bps = basis_points(&r.percentage).map_err(at)?;
        check_account_info(r.payout_method, &r.account_info).map_err(at)?;
        rules.push(Rule {
            recipient_id: r.recipient_id.clone(),
            bps,
            payout_method: r.payout_method,
            account_info: r.account_info.clone(),
        });
    }
    let sum: u64 = rules.iter().map(|r| r.bps).sum();
    if sum != WHOLE {
        return Err(format!(
            "the percentages sum to {}.{:02}, not exactly 100",
            sum / 100,
            sum % 100
        ));
    }
    let effective_from_ms = match &req.effective_from {
        None => now_ms,
        Some(text) => {
            let ms = shared::time::parse_rfc3339_ms(text).ok_or_else(|| {
                format!("effectiveFrom {text:?} is not an RFC 3339 UTC time like 2026-12-04T10:00:00Z")
            })?;
            if ms + PAST_SKEW_MS < now_ms {
                return Err(format!(
                    "effectiveFrom {text} is in the past: a split cannot change charges already made"
                ));
            }
            ms.max(now_ms)
        }
    };
    Ok(Checked {
        effective_from_ms,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn number(v: Value) -> serde_json::Number {
        match v {
            Value::Number(n) => n,
            _ => serde_json::Number::from(0),
        }
    }

    #[test]
    fn percentages_become_exact_basis_points() {
        for (v, bps) in [
            (json!(50), 5000),
            (json!(33.33), 3333),
            (json!(0.01), 1),
            (json!(100), 10000),
            (json!(100.0), 10000),
            (json!(12.5), 1250),
            (json!(33.10), 3310),
        ] {
            assert_eq!(basis_points(&number(v.clone())), Ok(bps), "{v}");
        }
        for v in [
            json!(0),
            json!(-1),
            json!(100.01),
            json!(33.333),
            json!(1e-3),
            json!(1e300),
            json!(0.001),
        ] {
            assert!(basis_points(&number(v.clone())).is_err(), "{v}");
        }
    }

    fn rule(recipient: &str, percentage: Value, info: Value) -> Value {
        json!({"recipientId": recipient, "percentage": percentage, "payoutMethod": "bank", "accountInfo": info})
    }

    fn request(rules: Vec<Value>) -> SplitRequest {
        let parsed = serde_json::from_value(json!({"itemId": 1, "rules": rules}));
        parsed.unwrap_or(SplitRequest {
            item_id: 0,
            effective_from: None,
            rules: Vec::new(),
        })
    }

    #[test]
    fn a_split_must_sum_to_exactly_100_with_distinct_recipients() {
        let bank = json!({"bank": "001", "account": "12345-6"});
        let ok = request(vec![
            rule("a", json!(33.33), bank.clone()),
            rule("b", json!(66.67), bank.clone()),
        ]);
        assert_eq!(
            check(&ok, 0).map(|c| c.rules.iter().map(|r| r.bps).collect::<Vec<_>>()),
            Ok(vec![3333, 6667])
        );

        let short = request(vec![
            rule("a", json!(33.33), bank.clone()),
            rule("b", json!(66.66), bank.clone()),
        ]);
        assert!(check(&short, 0).is_err_and(|e| e.contains("99.99")));
        let twice = request(vec![
            rule("a", json!(50), bank.clone()),
            rule("a", json!(50), bank.clone()),
        ]);
        assert!(check(&twice, 0).is_err_and(|e| e.starts_with("rules[1]") && e.contains("twice")));
        assert!(check(&request(vec![]), 0).is_err());
        let many: Vec<Value> = (0..21)
            .map(|i| rule(&format!("r{i}"), json!(1), bank.clone()))
            .collect();
        assert!(check(&request(many), 0).is_err_and(|e| e.contains("not 21")));
        let bad_name = request(vec![rule("a b", json!(100), bank)]);
        assert!(check(&bad_name, 0).is_err_and(|e| e.contains("recipientId")));
    }

    #[test]
    fn payout_details_are_checked_per_method() {
        let info = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(check_account_info(PayoutMethod::Bank, &info(json!({"bank": "001", "account": "12345-6"}))).is_ok());
        assert!(check_account_info(PayoutMethod::Pix, &info(json!({"pixKey": "partner@email.com"}))).is_ok());
        for (method, bad) in [
            (PayoutMethod::Bank, json!({"bank": "1", "account": "1"})),
            (PayoutMethod::Bank, json!({"bank": "001"})),
            (PayoutMethod::Bank, json!({"bank": "001", "account": "12a"})),
            (
                PayoutMethod::Bank,
                json!({"bank": "001", "account": "1", "pixKey": "x"}),
            ),
            (PayoutMethod::Bank, json!({"bank": 1, "account": "1"})),
            (PayoutMethod::Pix, json!({})),
            (PayoutMethod::Pix, json!({"pixKey": " "})),
            (PayoutMethod::Pix, json!({"pixKey": "x", "bank": "001"})),
        ] {
            assert!(check_account_info(method, &info(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_split_starts_now_or_later_never_in_the_past() {
        let bank = json!({"bank": "001", "account": "1"});
        let mut req = request(vec![rule("a", json!(100), bank)]);
        let now = 1_800_000_000_000;
        assert_eq!(check(&req, now).map(|c| c.effective_from_ms), Ok(now));
        req.effective_from = Some(shared::time::rfc3339_ms(now + 3_600_000));
        assert_eq!(check(&req, now).map(|c| c.effective_from_ms), Ok(now + 3_600_000));
        req.effective_from = Some(shared::time::rfc3339_ms(now - 3_600_000));
        assert!(check(&req, now).is_err_and(|e| e.contains("past")));
        req.effective_from = Some("tomorrow".into());
        assert!(check(&req, now).is_err_and(|e| e.contains("RFC 3339")));
    }
}
