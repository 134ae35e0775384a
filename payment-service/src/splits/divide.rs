//! Dividing an amount in exact minor units: the largest-remainder method. Each part is its exact
//! share rounded down; the units left over go, one each, to the parts whose exact share lost
//! the most in rounding, ties to the earlier part (rule order). The parts sum to the amount
//! exactly and each is within one unit of its exact share. Integer arithmetic only (u128: an
//! amount times a weight cannot overflow), never floats.

/// Divides `amount` in proportion to `weights` (basis points of a rule, or the parts of a charge
/// still standing). Every part is 0 when all weights are 0.
pub fn divide(amount: u64, weights: &[u64]) -> Vec<u64> {
    let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let amount = u128::from(amount);
    let mut parts: Vec<u64> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = amount * u128::from(*w);
        parts.push((exact / total) as u64);
        remainders.push((exact % total, i));
    }
    let given: u128 = parts.iter().map(|p| u128::from(*p)).sum();
    let left = (amount - given) as usize;
    // Largest remainder first; equal remainders keep their order (a stable sort).
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, i) in remainders.into_iter().take(left) {
        parts[i] += 1;
    }
    parts
}

/// What a refund of `amount` takes back from each part still standing: the same division over
/// the standing parts, so the reversals sum to the refund and none exceeds its part (for an
/// amount no larger than what stands).
pub fn reverse(amount: u64, standing: &[u64]) -> Vec<u64> {
    divide(amount, standing)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn worked_examples() {
        assert_eq!(divide(100, &[5000, 5000]), [50, 50]);
        // 33.33 % + 33.33 % + 33.34 % of 1 cent: the largest share (the third) gets it.
        assert_eq!(divide(1, &[3333, 3333, 3334]), [0, 0, 1]);
        // Equal remainders: rule order decides.
        assert_eq!(divide(2, &[3333, 3333, 3334]), [1, 0, 1]);
        assert_eq!(divide(10, &[3333, 3333, 3334]), [3, 3, 4]);
        assert_eq!(divide(0, &[10000]), [0]);
        assert_eq!(reverse(7, &[0, 0]), [0, 0]);
        assert_eq!(reverse(3, &[2, 0, 1]), [2, 0, 1]);
    }

    /// Rule sets as the API accepts them: 1–20 positive basis-point weights summing to 10 000.
    fn rule_weights() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(1u64..=10_000, 1..=20).prop_filter_map("weights that fit in 100 %", |raw| {
            let sum: u64 = raw.iter().sum();
            // Scale to 10 000 and give the rounding to the first; drop sets with a zero weight.
            let mut scaled: Vec<u64> = raw.iter().map(|w| w * 10_000 / sum).collect();
            let short = 10_000 - scaled.iter().sum::<u64>();
            scaled[0] += short;
            scaled.iter().all(|w| *w > 0).then_some(scaled)
        })
    }

    proptest! {
        #[test]
        fn parts_sum_exactly_and_each_is_within_a_unit_of_its_share(
            amount in 0u64..=9_000_000_000_000, weights in rule_weights()
        ) {
            let parts = divide(amount, &weights);
            prop_assert_eq!(parts.iter().sum::<u64>(), amount);
            for (part, w) in parts.iter().zip(&weights) {
                // |part - amount*w/10000| < 1, in integers: |part*10000 - amount*w| < 10000.
                let diff = (i128::from(*part) * 10_000 - i128::from(amount) * i128::from(*w)).abs();
                prop_assert!(diff < 10_000, "part {part} of {amount} at {w} bps");
            }
        }

        #[test]
        fn reversals_sum_to_the_refund_and_never_exceed_a_part(
            amount in 1u64..=9_000_000_000_000, weights in rule_weights(), refunds in prop::collection::vec(1u64..=10_000, 1..6)
        ) {
            let parts = divide(amount, &weights);
            let mut standing = parts.clone();
            for r in refunds {
                let left: u64 = standing.iter().sum();
                if left == 0 { break; }
                let refund = (left * r / 10_000).max(1);
                let back = reverse(refund, &standing);
                prop_assert_eq!(back.iter().sum::<u64>(), refund);
                for (b, s) in back.iter().zip(&standing) {
                    prop_assert!(b <= s, "reversed {b} of {s}");
                }
                for (s, b) in standing.iter_mut().zip(&back) { *s -= b; }
            }
            // Whatever was refunded, the last refund of what remains empties every part.
            let left: u64 = standing.iter().sum();
            prop_assert_eq!(reverse(left, &standing), standing);
        }
    }
}
