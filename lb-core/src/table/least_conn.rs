//! `lc` and `wlc`: the live backends and their weights, as (id, weight)
//! pairs; the datapath gives a new flow to the one with the fewest active
//! flows per weight (`lc`: weight 1 for all), the first in address order on
//! a tie, as LVS does.
//!
//! Active flows are the datapath's `ACTIVE` counts: flows recorded in the
//! connection table with no FIN or RST seen and not idle past their
//! timeout (see `datapath::active`). LVS also weighs inactive connections
//! (1/256 each); lb has no such count.
//!
//! The datapath scans every pair for each new flow, so a table holds at most
//! `abi::LEAST_MAX_BACKENDS` live backends.

use lb_ebpf::abi::LEAST_MAX_BACKENDS;

use super::{Member, TableError, live_sorted};

pub fn build(members: &[Member], weighted: bool) -> Result<Vec<u32>, TableError> {
    let live = live_sorted(members);
    if live.len() > LEAST_MAX_BACKENDS as usize {
        return Err(TableError::TooManyForLeast(live.len()));
    }
    Ok(live
        .iter()
        .flat_map(|m| [m.id, if weighted { m.weight } else { 1 }])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn m(id: u32, weight: u32) -> Member {
        Member {
            id,
            addr: SocketAddr::from(([198, 18, 0, 10 - id as u8], 80)),
            weight,
        }
    }

    #[test]
    fn pairs_in_address_order_without_drained() {
        let t = build(&[m(0, 3), m(1, 0), m(2, 5)], true).unwrap();
        assert_eq!(t, [2, 5, 0, 3]);
        assert_eq!(build(&[m(0, 3), m(2, 5)], false).unwrap(), [2, 1, 0, 1]);
    }

    #[test]
    fn too_many_backends_are_refused() {
        let many: Vec<Member> = (0..=LEAST_MAX_BACKENDS)
            .map(|i| Member {
                id: i,
                addr: SocketAddr::from(([198, 18, 1, i as u8], 80)),
                weight: 1,
            })
            .collect();
        assert_eq!(
            build(&many, true),
            Err(TableError::TooManyForLeast(many.len()))
        );
    }
}
