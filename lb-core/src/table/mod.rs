//! The per-VIP tables the datapath schedules new flows from, one module per
//! selection algorithm, chosen by the service's [`Scheduler`]:
//!
//! | scheduler | module | table | datapath pick |
//! |---|---|---|---|
//! | `mh` | [`maglev`] | weighted Maglev, `table_size` slots | flow hash % size |
//! | `sh` | [`maglev`] | the same | client address hash % size |
//! | `rr`, `wrr` | [`round_robin`] | a sequence of backend ids | per-CPU cursor % size |
//! | `lc`, `wlc` | [`least_conn`] | (id, weight) pairs | fewest active flows per weight |
//!
//! Every table is written into the inactive half of the VIP's slot and
//! swapped in with its kind at once, so a scheduler change is atomic too.
//! Tables hold backend ids only, so the same ones serve IPv4 and IPv6 VIPs
//! (the datapath hashes each family's addresses itself).
use std::net::SocketAddr;

use lb_ebpf::abi;

use crate::config::Scheduler;

pub mod least_conn;
pub mod maglev;
pub mod round_robin;

pub use maglev::{build as build_maglev, is_prime};

/// A backend as the table sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Datapath backend id written into the slots.
    pub id: u32,
    /// Identity: hashed into Maglev permutations, and the order of the
    /// sequence and pair tables (so two LB nodes build the same table).
    pub addr: SocketAddr,
    /// 0 means drained: not in the table.
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("maglev table size {0} is not a prime")]
    NotPrime(u32),
    #[error(
        "maglev table size {size} is too small for {members} backends (needs ≥ 100 × backends for even shares)"
    )]
    TooSmall { size: u32, members: usize },
    #[error(
        "lc and wlc scan every backend for each new flow: at most {max} live backends, not {0}",
        max = abi::LEAST_MAX_BACKENDS
    )]
    TooManyForLeast(usize),
}

/// A built table: how the datapath reads it (`abi::TABLE_*`) and its slots.
/// No slot (no live member) makes the datapath drop new flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub kind: u8,
    pub slots: Vec<u32>,
}

/// Builds the table of `scheduler` over the members with weight > 0. `size`
/// is the Maglev table size, and the longest wrr sequence.
pub fn build(scheduler: Scheduler, members: &[Member], size: u32) -> Result<Table, TableError> {
    let (kind, slots) = match scheduler {
        Scheduler::Mh => (abi::TABLE_MAGLEV, maglev::build(members, size)?),
        Scheduler::Sh => (abi::TABLE_MAGLEV_SOURCE, maglev::build(members, size)?),
        Scheduler::Rr => (
            abi::TABLE_SEQUENCE,
            round_robin::build(members, false, size)?,
        ),
        Scheduler::Wrr => (
            abi::TABLE_SEQUENCE,
            round_robin::build(members, true, size)?,
        ),
        Scheduler::Lc => (abi::TABLE_LEAST, least_conn::build(members, false)?),
        Scheduler::Wlc => (abi::TABLE_LEAST, least_conn::build(members, true)?),
    };
    Ok(Table { kind, slots })
}

/// The live members in a fixed order (by address), whatever the config's.
fn live_sorted(members: &[Member]) -> Vec<&Member> {
    let mut live: Vec<&Member> = members.iter().filter(|m| m.weight > 0).collect();
    live.sort_by_key(|m| maglev::identity(&m.addr));
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_ebpf::hash::client_hash;

    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: i,
                addr: SocketAddr::from(([198, 18, 0, i as u8 + 1], 80)),
                weight: 1,
            })
            .collect()
    }

    fn sh_backend(t: &Table, client: [u8; 4]) -> u32 {
        let h = client_hash(u32::from_ne_bytes(client));
        t.slots[(h % t.slots.len() as u32) as usize]
    }

    /// sh: a client's backend depends on its address only, and removing one
    /// backend moves (almost) only that backend's clients.
    #[test]
    fn sh_keeps_clients_on_their_backend_when_another_leaves() {
        let all = build(Scheduler::Sh, &members(8), 65_537).unwrap();
        assert_eq!(all.kind, abi::TABLE_MAGLEV_SOURCE);
        let fewer = build(Scheduler::Sh, &members(7), 65_537).unwrap();
        let (mut stayed, mut moved) = (0, 0);
        for i in 0..10_000u32 {
            let c = [198, 19, (i >> 8) as u8, i as u8];
            let before = sh_backend(&all, c);
            if before == 7 {
                continue;
            }
            if sh_backend(&fewer, c) == before {
                stayed += 1;
            } else {
                moved += 1;
            }
        }
        assert!(
            moved * 50 < stayed,
            "{moved} clients of surviving backends moved, {stayed} stayed"
        );
    }

    #[test]
    fn every_scheduler_builds_and_an_empty_set_is_empty() {
        for s in [
            Scheduler::Mh,
            Scheduler::Sh,
            Scheduler::Rr,
            Scheduler::Wrr,
            Scheduler::Lc,
            Scheduler::Wlc,
        ] {
            assert!(!build(s, &members(3), 1_009).unwrap().slots.is_empty());
            let mut drained = members(3);
            for m in &mut drained {
                m.weight = 0;
            }
            assert!(build(s, &drained, 1_009).unwrap().slots.is_empty());
        }
    }
}
