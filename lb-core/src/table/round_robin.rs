//! `rr` and `wrr`: the sequence of backends new flows take in turn.
//!
//! `wrr` is LVS's interleaved weighted round robin: the current weight `cw`
//! steps down from the largest weight by the weights' gcd, and each round
//! takes, in order, every backend whose weight is at least `cw`. Weights
//! 3, 2, 1 give `a a b a b c`: each backend's share is its weight, spread
//! through the sequence rather than in bursts. `rr` is the same with every
//! live backend at weight 1 (drained ones, weight 0, are left out, like
//! LVS's quiesced servers).
//!
//! The sequence is `sum(weight) / gcd` long. When that exceeds `max_len`
//! (the table size), weights are scaled down to fit, keeping every live
//! backend at least once: shares are then proportional within one slot.

use super::{Member, TableError, live_sorted};

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

pub fn build(members: &[Member], weighted: bool, max_len: u32) -> Result<Vec<u32>, TableError> {
    let live = live_sorted(members);
    if live.len() > max_len as usize {
        return Err(TableError::TooSmall {
            size: max_len,
            members: live.len(),
        });
    }
    let mut weights: Vec<u64> = live
        .iter()
        .map(|m| if weighted { m.weight as u64 } else { 1 })
        .collect();
    let total: u64 = weights.iter().sum();
    let g = weights.iter().fold(0, |g, w| gcd(g, *w)).max(1);
    if total / g > max_len as u64 {
        // 1 + floor(w · (max - n) / total) sums to at most max.
        let room = max_len as u64 - live.len() as u64;
        for w in &mut weights {
            *w = 1 + *w * room / total;
        }
    }
    let g = weights.iter().fold(0, |g, w| gcd(g, *w)).max(1);
    let top = weights.iter().copied().max().unwrap_or(0);
    let mut seq = Vec::new();
    let mut cw = top;
    while cw > 0 {
        for (m, w) in live.iter().zip(&weights) {
            if *w >= cw {
                seq.push(m.id);
            }
        }
        cw = cw.saturating_sub(g);
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, net::SocketAddr};

    fn m(id: u32, weight: u32) -> Member {
        Member {
            id,
            addr: SocketAddr::from(([198, 18, 0, id as u8 + 1], 80)),
            weight,
        }
    }

    fn counts(seq: &[u32]) -> HashMap<u32, usize> {
        let mut h = HashMap::new();
        for id in seq {
            *h.entry(*id).or_default() += 1;
        }
        h
    }

    #[test]
    fn wrr_interleaves_by_weight_like_lvs() {
        let seq = build(&[m(0, 3), m(1, 2), m(2, 1)], true, 65_537).unwrap();
        assert_eq!(seq, [0, 0, 1, 0, 1, 2]);
    }

    #[test]
    fn wrr_sequence_is_reduced_by_the_gcd() {
        let seq = build(&[m(0, 300), m(1, 200), m(2, 100)], true, 65_537).unwrap();
        assert_eq!(seq, [0, 0, 1, 0, 1, 2]);
    }

    #[test]
    fn wrr_proportions_follow_weights() {
        let members: Vec<Member> = (0..10).map(|i| m(i, 10 + 7 * i)).collect();
        let seq = build(&members, true, 65_537).unwrap();
        let c = counts(&seq);
        for mb in &members {
            assert_eq!(c[&mb.id], mb.weight as usize, "backend {}", mb.id);
        }
    }

    #[test]
    fn wrr_too_long_is_scaled_to_fit_keeping_proportions() {
        let members = [m(0, 60_000), m(1, 30_001), m(2, 1)];
        let seq = build(&members, true, 1_009).unwrap();
        assert!(seq.len() <= 1_009);
        let c = counts(&seq);
        assert!(c[&2] >= 1, "every live backend keeps a slot");
        let ratio = c[&0] as f64 / c[&1] as f64;
        assert!((ratio - 2.0).abs() < 0.01, "ratio {ratio}");
    }

    #[test]
    fn rr_ignores_weights_but_not_drain() {
        let seq = build(&[m(2, 5), m(0, 1), m(1, 0)], false, 65_537).unwrap();
        assert_eq!(seq, [0, 2]);
        assert!(build(&[m(0, 0)], false, 7).unwrap().is_empty());
    }
}
