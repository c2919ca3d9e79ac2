//! Scheduling: which backend the VIP's live table gives a new flow.
//!
//! The one place that reads a table half, for every scheduler and address
//! family: the caller hashes its own addresses into [`Hashes`].

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use lb_ebpf::abi::*;

use crate::maps::*;

/// What the hash-based schedulers index with.
pub struct Hashes {
    /// Of the whole flow (`mh`, and every scheduler when `stateless`).
    pub flow: u32,
    /// Of the client address alone (`sh`).
    pub client: u32,
}

/// The backend for a new flow of VIP `vip_id`. `stateless`: the flow will
/// not be recorded (SYN-flood guard), so its later packets must get the
/// same answer: rr/wrr and lc/wlc then index their table by the flow hash
/// instead of a cursor or the active counts.
#[inline(always)]
pub fn pick(vip_id: u32, h: &Hashes, stateless: bool) -> Result<u32, DropReason> {
    let st = TABLE_STATE.get(vip_id).ok_or(DropReason::NoBackend)?;
    // One read of `active` decides the half, its size and its kind for this
    // packet: see TableState.
    let half = unsafe { core::ptr::read_volatile(&st.active) } & 1;
    let (size, kind) = if half == 0 {
        (st.size[0], st.kind[0])
    } else {
        (st.size[1], st.kind[1])
    };
    if size == 0 {
        return Err(DropReason::NoBackend);
    }
    let stride = unsafe { core::ptr::read_volatile(&RING_STRIDE) };
    let base = (vip_id * 2 + half) * stride;
    let id = match kind {
        TABLE_MAGLEV_SOURCE => slot(base, h.client % size)?,
        TABLE_SEQUENCE if !stateless => slot(base, next(vip_id) % size)?,
        TABLE_LEAST if !stateless => least(base, size / 2),
        TABLE_LEAST => slot(base, 2 * (h.flow % (size / 2).max(1)))?,
        _ => slot(base, h.flow % size)?,
    };
    if id == NO_BACKEND {
        return Err(DropReason::NoBackend);
    }
    Ok(id)
}

#[inline(always)]
fn slot(base: u32, i: u32) -> Result<u32, DropReason> {
    RING.get(base + i).copied().ok_or(DropReason::NoBackend)
}

/// This CPU's next position in the VIP's sequence. CPUs start `cpu` slots
/// apart, so the first flows of several CPUs do not all go to slot 0.
#[inline(always)]
fn next(vip_id: u32) -> u32 {
    let Some(c) = CURSORS.get_ptr_mut(vip_id) else {
        return 0;
    };
    // SAFETY: per-CPU value, valid for this run, touched by no other CPU.
    let c = unsafe { &mut *c };
    let n = *c;
    *c = n.wrapping_add(1);
    n.wrapping_add(unsafe { bpf_get_smp_processor_id() })
}

/// lc/wlc: the backend with the fewest active flows per weight among the
/// `n` (id, weight) pairs at `base`; the first on a tie, as LVS does.
#[inline(always)]
fn least(base: u32, n: u32) -> u32 {
    let mut best = NO_BACKEND;
    let mut best_active = 0u64;
    let mut best_weight = 1u64;
    let mut i = 0;
    while i < LEAST_MAX_BACKENDS && i < n {
        let (Some(id), Some(w)) = (RING.get(base + 2 * i), RING.get(base + 2 * i + 1)) else {
            break;
        };
        let id = *id;
        let w = *w as u64;
        let active = ACTIVE
            .get(id)
            .map_or(0, |a| unsafe { core::ptr::read_volatile(a) }.max(0) as u64);
        // a / w < best_a / best_w, without division.
        if best == NO_BACKEND || active * best_weight < best_active * w {
            best = id;
            best_active = active;
            best_weight = w;
        }
        i += 1;
    }
    best
}
