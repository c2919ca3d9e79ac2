//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016): the
//! table of `mh` (indexed by flow hash) and `sh` (by client address hash).
//!
//! Each backend walks its own permutation of the `size` slots and claims the
//! next free one in turn; a backend of weight `w` takes `w / w_max` turns per
//! round (credit scheme), so slot shares follow weights. Members are sorted by
//! address first and hashed by address, so two LB nodes with the same backend
//! set build byte-identical tables whatever the config order — `dr` flows then
//! survive a VRRP failover without state sync.

use std::net::SocketAddr;

use lb_ebpf::abi::NO_BACKEND;

use super::{Member, TableError};

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes
        .iter()
        .fold(basis, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

pub(super) fn identity(addr: &SocketAddr) -> Vec<u8> {
    let mut v = match addr.ip() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.extend_from_slice(&addr.port().to_be_bytes());
    v
}

/// Builds the lookup table: `size` slots of backend ids. An empty vector means
/// no member has weight > 0 (the datapath then drops new flows as
/// `no_backend`).
pub fn build(members: &[Member], size: u32) -> Result<Vec<u32>, TableError> {
    if !is_prime(size) {
        return Err(TableError::NotPrime(size));
    }
    let mut live: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    if live.is_empty() {
        return Ok(Vec::new());
    }
    if (size as usize) < live.len() {
        return Err(TableError::TooSmall {
            size,
            members: live.len(),
        });
    }
    live.sort_by_key(|m| identity(&m.addr));
    let m = size as u64;
    let perm: Vec<(u64, u64)> = live
        .iter()
        .map(|b| {
            let id = identity(&b.addr);
            let offset = fnv1a(&id, 0xcbf2_9ce4_8422_2325) % m;
            let skip = fnv1a(&id, 0x8422_2325_cbf2_9ce4) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = live.iter().map(|b| b.weight).max().unwrap_or(1) as u64;
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut table = vec![NO_BACKEND; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, b) in live.iter().enumerate() {
            credit[i] += b.weight as u64;
            while credit[i] >= max_w {
                credit[i] -= max_w;
                let (offset, skip) = perm[i];
                let mut slot = (offset + next[i] * skip) % m;
                while table[slot as usize] != NO_BACKEND {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m;
                }
                table[slot as usize] = b.id;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: i,
                addr: SocketAddr::from(([198, 18, (i / 200) as u8, (i % 200) as u8 + 1], 8033)),
                weight: 100,
            })
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut h = HashMap::new();
        for id in table {
            *h.entry(*id).or_default() += 1;
        }
        h
    }

    #[test]
    fn equal_weights_balance_within_one_percent() {
        for (n, size) in [
            (3, 65_537),
            (10, 65_537),
            (100, 65_537),
            (655, 65_537),
            (7, 1_009),
        ] {
            let t = build(&members(n), size).unwrap();
            let s = shares(&t);
            assert_eq!(s.len(), n as usize);
            let max = *s.values().max().unwrap() as f64;
            let min = *s.values().min().unwrap() as f64;
            assert!(max / min <= 1.01, "n={n} size={size}: max {max} min {min}");
        }
    }

    #[test]
    fn weights_shape_shares() {
        let mut m = members(3);
        m[0].weight = 1;
        m[1].weight = 2;
        m[2].weight = 3;
        let s = shares(&build(&m, 65_537).unwrap());
        let total = 65_537.0;
        for (id, w) in [(0u32, 1.0), (1, 2.0), (2, 3.0)] {
            let share = s[&id] as f64 / total;
            assert!((share - w / 6.0).abs() < 0.005, "id {id}: share {share}");
        }
    }

    #[test]
    fn removing_one_backend_moves_its_keys_and_little_else() {
        let n = 10u32;
        let all = members(n);
        let before = build(&all, 65_537).unwrap();
        let after = build(&all[..9], 65_537).unwrap();
        let removed = 9u32;
        let mut moved_own = 0;
        let mut moved_other = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == removed {
                moved_own += 1;
            } else if b != a {
                moved_other += 1;
            }
        }
        let total = before.len() as f64;
        let own = moved_own as f64 / total;
        assert!(
            (own - 1.0 / n as f64).abs() < 0.002,
            "removed backend held {own}"
        );
        // Maglev is not perfectly minimal: a few slots of surviving backends
        // move too. Bound it well below the removed share.
        let other = moved_other as f64 / total;
        assert!(
            other < 0.02,
            "{other} of keys moved between surviving backends"
        );
    }

    #[test]
    fn same_set_in_any_order_gives_the_same_table() {
        let m = members(20);
        let mut r = m.clone();
        r.reverse();
        assert_eq!(build(&m, 4_099).unwrap(), build(&r, 4_099).unwrap());
    }

    /// Two LB nodes number their backends in the order they first saw them
    /// (config order, reloads), so the ids differ; every slot must still
    /// name the same backend address on both, which is what lets dr and tun
    /// flows survive a failover without state sync.
    #[test]
    fn nodes_with_different_ids_and_order_pick_the_same_backends() {
        let a = members(20);
        let mut b: Vec<Member> = a
            .iter()
            .map(|m| Member {
                id: 1000 - m.id * 3,
                ..m.clone()
            })
            .collect();
        b.rotate_left(7);
        let addr_of = |ms: &[Member], id: u32| ms.iter().find(|m| m.id == id).map(|m| m.addr);
        let ta = build(&a, 4_099).unwrap();
        let tb = build(&b, 4_099).unwrap();
        assert_ne!(ta, tb, "the ids do differ");
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!(addr_of(&a, *x), addr_of(&b, *y));
        }
    }

    #[test]
    fn drained_backends_get_no_slot_and_empty_set_gives_empty_table() {
        let mut m = members(3);
        m[1].weight = 0;
        let s = shares(&build(&m, 1_009).unwrap());
        assert!(!s.contains_key(&1));
        for b in &mut m {
            b.weight = 0;
        }
        assert!(build(&m, 1_009).unwrap().is_empty());
    }

    #[test]
    fn size_must_be_prime() {
        assert_eq!(
            build(&members(2), 65_536),
            Err(TableError::NotPrime(65_536))
        );
        assert!(is_prime(65_537) && is_prime(2) && !is_prime(1) && !is_prime(4_095));
    }
}
