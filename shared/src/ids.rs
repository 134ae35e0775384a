//! Shard selection for hash-tagged Redis keys. Records that must change together with a
//! per-shard counter (orders and their totals, charges and theirs) live in one of [`SHARDS`]
//! hash slots, chosen from a stable hash of an id, so every script touches exactly one slot.

pub const SHARDS: u16 = 16;

/// FNV-1a: stable across processes and releases, unlike `std`'s hasher.
pub fn shard_of(id: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(SHARDS)) as u16
}

/// A fresh random id with a readable prefix and a UUID's bits as 22 base-62 digits
/// ([`base62`]): `re_4ZRc…`. Ids made before #29's seventh pass had 32 hex digits; none is
/// parsed beyond its prefix.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", base62(uuid::Uuid::new_v4().as_u128(), 22))
}

/// `n` as `width` base-62 digits (0-9, A-Z, a-z), zero-padded; a larger `n` loses its highest
/// digits. 22 digits hold any u128: a UUID in 10 characters fewer than its 32 hex digits, and a
/// checkout writes its ids into the fsynced AOF some thirty times.
pub fn base62(mut n: u128, width: usize) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut digits = vec![0u8; width];
    for d in digits.iter_mut().rev() {
        *d = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    digits.into_iter().map(char::from).collect()
}

/// A fresh id in the given shard, `<prefix>_` and a UUID's bits as 22 base-62 digits
/// ([`base62`]): for a record that must share a slot with another one (an order and its
/// Idempotency-Key). Sixteen draws on average, no I/O.
pub fn new_id_in_shard(prefix: &str, shard: u16) -> String {
    let base = uuid::Uuid::new_v4().as_u128();
    (0u128..)
        .map(|n| format!("{prefix}_{}", base62(base ^ n, 22)))
        .find(|id| shard_of(id) == shard % SHARDS)
        .unwrap_or_else(|| new_id(prefix))
}

/// Ids that reach us from clients are used inside Redis keys: keep them to a safe alphabet.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("ord_abc"), shard_of("ord_abc"));
        let spread: std::collections::HashSet<u16> = (0..200).map(|i| shard_of(&format!("ord_{i}"))).collect();
        assert!(spread.iter().all(|s| *s < SHARDS));
        assert!(spread.len() > SHARDS as usize / 2, "ids should spread over the shards");
    }

    #[test]
    fn ids_can_be_made_in_a_chosen_shard() {
        for shard in 0..SHARDS {
            let id = new_id_in_shard("ord", shard);
            assert_eq!(shard_of(&id), shard);
            assert!(id.starts_with("ord_") && id.len() == 26, "{id}");
            assert!(
                id[4..].bytes().all(|b| b.is_ascii_alphanumeric()) && is_safe_id(&id),
                "{id}"
            );
        }
        assert_ne!(new_id_in_shard("ord", 3), new_id_in_shard("ord", 3));
    }

    #[test]
    fn base62_keeps_every_u128_in_22_digits_and_tells_them_apart() {
        assert_eq!(base62(0, 22), "0".repeat(22));
        assert_eq!(base62(61, 3), "00z");
        assert_eq!(base62(62, 3), "010");
        assert_eq!(base62(u128::MAX, 22), "7n42DGM5Tflk9n8mt7Fhc7");
        assert_ne!(base62(u128::MAX, 22), base62(u128::MAX - 1, 22));
    }

    #[test]
    fn unsafe_ids_are_refused() {
        assert!(is_safe_id("rsv_1_abc"));
        assert!(!is_safe_id("a}b"));
        assert!(!is_safe_id(""));
        assert!(!is_safe_id("a b"));
    }
}
