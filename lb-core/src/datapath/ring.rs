//! The double-buffered Maglev tables, written through mmap.
//!
//! `RING` and `TABLE_STATE` are BPF_F_MMAPABLE arrays, so userspace writes a
//! new table with plain stores into the inactive half and publishes it with a
//! single atomic store of `TableState::active` (Release). The program reads
//! `active` once per packet, so a packet sees the old table or the new one.
//!
//! The half that was live is rewritten only by the next swap. A packet that
//! read the old `active` finishes within microseconds (XDP runs under RCU,
//! without preemption), so swaps of one VIP are spaced by at least
//! [`MIN_SWAP_INTERVAL`]; the control plane coalesces changes anyway.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU32, Ordering, fence},
    time::{Duration, Instant},
};

use aya::Ebpf;
use lb_ebpf::abi::{self, TableState};

use super::{DatapathError, Limits};

pub const MIN_SWAP_INTERVAL: Duration = Duration::from_millis(1);

/// Array maps store each value in a slot rounded up to 8 bytes.
const fn slot_size(value_size: usize) -> usize {
    value_size.div_ceil(8) * 8
}

struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    fn new(
        ebpf: &Ebpf,
        name: &'static str,
        entries: u64,
        value_size: usize,
    ) -> Result<Self, DatapathError> {
        let map = ebpf.map(name).ok_or(DatapathError::Map(name))?;
        let data = match map {
            aya::maps::Map::Array(d) => d,
            _ => return Err(DatapathError::Map(name)),
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (entries as usize * slot_size(value_size)).div_ceil(page) * page;
        // SAFETY: mapping a BPF_F_MMAPABLE array fd, shared, at offset 0, for
        // exactly its data size; the kernel keeps the map alive while mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Mmap(name, std::io::Error::last_os_error()));
        }
        Ok(Mmap {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: the mapping is plain shared memory; `Tables` hands out no
// references into it and all writes go through `&mut self`.
unsafe impl Send for Mmap {}
unsafe impl Sync for Mmap {}

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
                .ptr
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

    pub fn swap(&mut self, vip: u32, table: &[u32]) -> Result<u32, DatapathError> {
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
                std::ptr::write_volatile(self.ring.ptr.add((base + i) * slot).cast::<u32>(), *id);
            }
            std::ptr::write_volatile(&raw mut (*st).size[next as usize], table.len() as u32);
            fence(Ordering::Release);
            active.store(next, Ordering::Release);
            let generation = (*st).generation.wrapping_add(1);
            std::ptr::write_volatile(&raw mut (*st).generation, generation);
            self.last_swap[vip as usize] = Some(Instant::now());
            Ok(generation)
        }
    }

    pub fn clear(&mut self, vip: u32) -> Result<(), DatapathError> {
        self.swap(vip, &[]).map(|_| ())
    }
}
