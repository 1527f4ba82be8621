//! Integer shares that add up exactly: the largest-remainder method.
//!
//! Hand-written because it is ten lines and every level of the planner (tiers, regions,
//! destinations) needs the same guarantee: the parts always sum to the total, and ties
//! go to the earlier item so that the same input gives the same output.

/// Split `total` over items in proportion to `weights`. The result sums to `total`
/// unless every weight is zero (then every part is zero). Ties in the remainders go to
/// the item that comes first.
pub fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let total = u128::from(total);
    let mut parts: Vec<u64> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    let mut given: u128 = 0;
    for (i, w) in weights.iter().enumerate() {
        let exact = total * u128::from(*w);
        let floor = exact / sum;
        given += floor;
        parts.push(u64::try_from(floor).unwrap_or(u64::MAX));
        remainders.push((exact % sum, i));
    }
    // Largest remainder first; equal remainders keep their original order.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let left = total.saturating_sub(given);
    for (_, i) in remainders
        .iter()
        .take(usize::try_from(left).unwrap_or(usize::MAX))
    {
        parts[*i] += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn thirds_round_toward_the_first() {
        assert_eq!(apportion(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(apportion(100, &[2, 1]), vec![67, 33]);
        assert_eq!(apportion(100, &[0, 0]), vec![0, 0]);
        assert_eq!(apportion(0, &[3, 1]), vec![0, 0]);
    }

    proptest! {
        #[test]
        fn parts_sum_to_total(total in 0u64..100_000, weights in proptest::collection::vec(0u64..1000, 1..20)) {
            let parts = apportion(total, &weights);
            let sum: u64 = parts.iter().sum();
            if weights.iter().any(|w| *w > 0) {
                prop_assert_eq!(sum, total);
            } else {
                prop_assert_eq!(sum, 0);
            }
            for (p, w) in parts.iter().zip(&weights) {
                if *w == 0 { prop_assert_eq!(*p, 0); }
            }
        }
    }
}
