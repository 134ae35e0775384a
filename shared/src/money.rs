//! Limits on amounts of money that more than one service must agree on.

/// Largest amount of one charge, in minor units. Amounts stay far below 2^53, so they remain
/// exact wherever Redis' Lua sees them as numbers, and per-shard totals have room in HINCRBY's
/// 64-bit integers. The stock service caps prices by it, so that whatever it reserves can be
/// charged.
pub const MAX_CHARGE: u64 = 9_000_000_000_000;
