//! Backend ids: the datapath's slots for backends (address, MACs, counters),
//! one per (interface, backend address) in some service's table.
//!
//! An id stays with its backend while the backend is out of every table
//! (down, or removed by a reload that may bring it back): a backend that
//! returns gets the same id, so its counters go on instead of restarting at
//! zero, and the flows still pinned to that id keep counting to it. Such a
//! parked id goes to another backend only when no fresh id is left, the
//! longest-parked first; the caller then zeroes its counters.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// A backend on an interface.
pub type Key = (String, SocketAddr);

/// An id handed out by [`BackendIds::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub id: u32,
    /// The id was not this backend's until now: its counters hold another
    /// backend's counts (or nothing) and must be zeroed.
    pub new_owner: bool,
}

#[derive(Debug)]
pub struct BackendIds {
    max: u32,
    next: u32,
    in_use: HashMap<Key, (u32, usize)>,
    parked: HashMap<Key, u32>,
    /// Parking order, oldest first. A key may appear more than once (parked,
    /// back in use, parked again); only an entry whose key is still parked
    /// counts, the others are skipped and compacted away.
    order: VecDeque<Key>,
}

impl BackendIds {
    /// Ids `0..max`.
    pub fn new(max: u32) -> Self {
        BackendIds {
            max,
            next: 0,
            in_use: HashMap::new(),
            parked: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The id of a backend in use.
    pub fn get(&self, key: &Key) -> Option<u32> {
        self.in_use.get(key).map(|(id, _)| *id)
    }

    /// Takes a reference on `key`'s id, giving it one if it has none: its
    /// parked id, else a fresh one, else the longest-parked id of another
    /// backend. `None` when every id is in use.
    pub fn reserve(&mut self, key: &Key) -> Option<Reserved> {
        if let Some((id, refs)) = self.in_use.get_mut(key) {
            *refs += 1;
            return Some(Reserved {
                id: *id,
                new_owner: false,
            });
        }
        let (id, new_owner) = if let Some(id) = self.parked.remove(key) {
            (id, false)
        } else if self.next < self.max {
            self.next += 1;
            (self.next - 1, true)
        } else {
            (self.evict_oldest()?, true)
        };
        self.in_use.insert(key.clone(), (id, 1));
        Some(Reserved { id, new_owner })
    }

    /// Drops a reference; the last one parks the id for the backend.
    pub fn release(&mut self, key: &Key) {
        let Some((id, refs)) = self.in_use.get_mut(key) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let id = *id;
        self.in_use.remove(key);
        self.parked.insert(key.clone(), id);
        self.order.push_back(key.clone());
        if self.order.len() > 2 * self.parked.len() + 16 {
            self.compact();
        }
    }

    fn evict_oldest(&mut self) -> Option<u32> {
        while let Some(key) = self.order.pop_front() {
            if let Some(id) = self.parked.remove(&key) {
                return Some(id);
            }
        }
        None
    }

    /// Drops the order entries of keys no longer parked, and all but the
    /// last entry of each parked key (its latest parking).
    fn compact(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let mut kept: VecDeque<Key> = self
            .order
            .iter()
            .rev()
            .filter(|k| self.parked.contains_key(*k) && seen.insert((*k).clone()))
            .cloned()
            .collect();
        kept.make_contiguous().reverse();
        self.order = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> Key {
        ("eth0".into(), SocketAddr::from(([198, 18, 1, last], 8080)))
    }

    #[test]
    fn a_backend_keeps_its_id_while_in_use_and_when_it_comes_back() {
        let mut ids = BackendIds::new(8);
        let a = ids.reserve(&key(1)).unwrap();
        assert_eq!(
            a,
            Reserved {
                id: 0,
                new_owner: true
            }
        );
        // A second service with the same backend shares the id.
        assert_eq!(ids.reserve(&key(1)).unwrap().id, 0);
        ids.release(&key(1));
        assert_eq!(ids.get(&key(1)), Some(0), "still referenced");
        ids.release(&key(1));
        assert_eq!(ids.get(&key(1)), None);
        // Another backend gets a fresh id, not the parked one.
        assert_eq!(ids.reserve(&key(2)).unwrap().id, 1);
        // Back up: the same id, counters not to be zeroed.
        assert_eq!(
            ids.reserve(&key(1)).unwrap(),
            Reserved {
                id: 0,
                new_owner: false
            }
        );
    }

    #[test]
    fn parked_ids_go_to_others_only_when_none_is_fresh_oldest_first() {
        let mut ids = BackendIds::new(3);
        for k in 1..=3 {
            ids.reserve(&key(k)).unwrap();
        }
        assert_eq!(ids.reserve(&key(4)), None, "every id in use");
        ids.release(&key(2));
        ids.release(&key(1));
        let r = ids.reserve(&key(4)).unwrap();
        assert_eq!(
            r,
            Reserved {
                id: 1,
                new_owner: true
            },
            "backend 2's id, parked first"
        );
        // Backend 2 lost its id; backend 1 still has its own.
        assert_eq!(ids.reserve(&key(1)).unwrap().id, 0);
        assert_eq!(ids.reserve(&key(2)), None);
    }

    #[test]
    fn a_flapping_backend_does_not_grow_the_parking_order() {
        let mut ids = BackendIds::new(4);
        ids.reserve(&key(9)).unwrap();
        ids.release(&key(9));
        for _ in 0..10_000 {
            assert_eq!(ids.reserve(&key(1)).unwrap().id, 1);
            ids.release(&key(1));
        }
        assert!(
            ids.order.len() <= 2 * ids.parked.len() + 16,
            "{}",
            ids.order.len()
        );
        // The oldest parking still goes first.
        for k in 2..=3 {
            ids.reserve(&key(k)).unwrap();
        }
        assert_eq!(ids.reserve(&key(4)).unwrap().id, 0, "backend 9's id");
    }
}
