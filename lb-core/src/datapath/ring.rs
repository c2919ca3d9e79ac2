//! The double-buffered scheduler tables, written through mmap.
//!
//! `RING` and `TABLE_STATE` are BPF_F_MMAPABLE arrays, so userspace writes a
//! new table with plain stores into the inactive half, sets that half's size
//! and kind (scheduler), and publishes it with a single atomic store of
//! `TableState::active` (Release). The program reads
//! `active` once per packet, so a packet sees the old table or the new one.
//!
//! The half that was live is rewritten only by the next swap. A packet that
//! read the old `active` finishes within microseconds (XDP runs under RCU,
//! without preemption), so swaps of one VIP are spaced by at least
//! [`MIN_SWAP_INTERVAL`]; the control plane coalesces changes anyway.

use std::{
    sync::atomic::{AtomicU32, Ordering, fence},
    time::{Duration, Instant},
};

use aya::Ebpf;
use lb_ebpf::abi::{self, TableState};

use super::{
    DatapathError, Limits,
    mmap::{Mmap, slot_size},
};

pub const MIN_SWAP_INTERVAL: Duration = Duration::from_millis(1);

pub struct Tables {
    ring: Mmap,
    state: Mmap,
    limits: Limits,
    last_swap: Vec<Option<Instant>>,
}

impl Tables {
    pub(super) fn map(ebpf: &Ebpf, limits: Limits) -> Result<Self, DatapathError> {
        let ring_entries = 2 * limits.max_vips as u64 * limits.ring_stride as u64;
        Ok(Tables {
            ring: Mmap::new(ebpf, abi::map::RING, ring_entries, 4)?,
            state: Mmap::new(
                ebpf,
                abi::map::TABLE_STATE,
                limits.max_vips as u64,
                size_of::<TableState>(),
            )?,
            limits,
            last_swap: vec![None; limits.max_vips as usize],
        })
    }

    fn state_ptr(&self, vip: u32) -> *mut TableState {
        // SAFETY (of the caller's deref): vip < max_vips was checked, so the
        // offset is inside the mapping; slots are 16 bytes, 8-aligned.
        unsafe {
            self.state
                .ptr()
                .add(vip as usize * slot_size(size_of::<TableState>()))
                .cast()
        }
    }

    fn check(&self, vip: u32) -> Result<(), DatapathError> {
        if vip >= self.limits.max_vips {
            return Err(DatapathError::VipIdRange {
                id: vip,
                max: self.limits.max_vips,
            });
        }
        Ok(())
    }

    pub fn state(&self, vip: u32) -> Option<TableState> {
        self.check(vip).ok()?;
        // SAFETY: in range (checked); a torn read only affects this snapshot.
        Some(unsafe { std::ptr::read_volatile(self.state_ptr(vip)) })
    }

    pub fn swap(&mut self, vip: u32, kind: u8, table: &[u32]) -> Result<u32, DatapathError> {
        self.check(vip)?;
        if table.len() > self.limits.ring_stride as usize {
            return Err(DatapathError::TableTooBig {
                len: table.len(),
                stride: self.limits.ring_stride,
            });
        }
        if let Some(t) = self.last_swap[vip as usize] {
            let since = t.elapsed();
            if since < MIN_SWAP_INTERVAL {
                std::thread::sleep(MIN_SWAP_INTERVAL - since);
            }
        }
        let st = self.state_ptr(vip);
        // SAFETY: `st` is inside the mapping (checked above) and 4-aligned;
        // the kernel side only reads it.
        unsafe {
            let active = AtomicU32::from_ptr(&raw mut (*st).active);
            let next = 1 - (active.load(Ordering::Acquire) & 1);
            let base = (vip as usize * 2 + next as usize) * self.limits.ring_stride as usize;
            let slot = slot_size(4);
            for (i, id) in table.iter().enumerate() {
                std::ptr::write_volatile(self.ring.ptr().add((base + i) * slot).cast::<u32>(), *id);
            }
            std::ptr::write_volatile(&raw mut (*st).size[next as usize], table.len() as u32);
            std::ptr::write_volatile(&raw mut (*st).kind[next as usize], kind);
            fence(Ordering::Release);
            active.store(next, Ordering::Release);
            let generation = (*st).generation.wrapping_add(1);
            std::ptr::write_volatile(&raw mut (*st).generation, generation);
            self.last_swap[vip as usize] = Some(Instant::now());
            Ok(generation)
        }
    }

    pub fn clear(&mut self, vip: u32) -> Result<(), DatapathError> {
        self.swap(vip, abi::TABLE_MAGLEV, &[]).map(|_| ())
    }
}
