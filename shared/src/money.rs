//! What more than one service must agree on about money: the largest charge, and what a
//! currency code looks like.

/// Largest amount of one charge, in minor units. Amounts stay far below 2^53, so they remain
/// exact wherever Redis' Lua sees them as numbers, and per-shard totals have room in HINCRBY's
/// 64-bit integers. The stock service caps prices by it, so that whatever it reserves can be
/// charged.
pub const MAX_CHARGE: u64 = 9_000_000_000_000;

/// An ISO 4217 alphabetic code in the form the contract asks for: three upper-case letters.
pub fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_three_upper_case_letters() {
        assert!(valid_currency("USD"));
        for bad in ["usd", "US", "USDX", "U5D", "", "ÜSD"] {
            assert!(!valid_currency(bad), "{bad:?}");
        }
    }
}
