//! The datapath's state. Layouts are in `lb_ebpf::abi`; sizes here are the
//! defaults, which the loader overrides at load time.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use lb_ebpf::abi::*;

/// Slots per table half in `RING`; set by the loader (`abi::global`).
#[unsafe(no_mangle)]
pub static RING_STRIDE: u32 = DEFAULT_RING_SIZE;

/// Number of VIP slots; `VIP_STATS[MAX_VIPS]` counts drops matching no VIP.
#[unsafe(no_mangle)]
pub static MAX_VIPS: u32 = DEFAULT_MAX_VIPS;

#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Addresses that carry at least one VIP (value: number of VIPs). Only read
/// for packets the policy refuses (fragments, options, malformed), to tell
/// "ours, drop" from "not ours, pass".
#[map(name = "VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Userspace maps `TABLE_STATE` and `RING` into its memory (mmap) so a swap
/// is a memcpy plus one atomic store instead of 65537 syscalls.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map(name = "TABLE_STATE")]
pub static TABLE_STATE: Array<TableState> =
    Array::with_max_entries(DEFAULT_MAX_VIPS, BPF_F_MMAPABLE);

/// Scheduler tables (see `TableState::kind`): VIP `id`, half `h` occupies
/// `[(2·id + h)·RING_STRIDE, (2·id + h)·RING_STRIDE + size[h])`.
#[map(name = "RING")]
pub static RING: Array<u32> =
    Array::with_max_entries(2 * DEFAULT_MAX_VIPS * DEFAULT_RING_SIZE, BPF_F_MMAPABLE);

/// rr/wrr: each CPU's position in its VIP's sequence. Per CPU so a new
/// flow costs no shared cache line; each CPU walks the whole sequence in
/// order, so shares are exact per CPU and across CPUs over many flows, but
/// two consecutive connections handled by different CPUs may go to the same
/// backend.
#[map(name = "CURSORS")]
pub static CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Active (pinned, not closing) forward flows per backend id, for lc/wlc.
/// Shared and updated with atomic adds: +1 when a flow is pinned, -1 when
/// its connection closes (first FIN or RST either way) or a live entry is
/// replaced. Timeouts and LRU evictions have no hook, so userspace recounts
/// `FLOWS` periodically and adds the difference (mmap, atomically too).
#[map(name = "ACTIVE")]
pub static ACTIVE: Array<i64> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// The connection table, shared by all CPUs because a nat reply may arrive on
/// another CPU than its request. LRU: when full, the least recently used flow
/// is evicted (and rescheduled if it comes back: mh and sh give it the same
/// backend, the stateful schedulers may not). The common LRU
/// list is kept: per-CPU lists (BPF_F_NO_COMMON_LRU) split the capacity by
/// CPU and made new flows slower in `lb-bench datapath` (416 vs 293 ns).
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Persistence templates (`persistence_timeout`): client → backend per VIP.
#[map(name = "PERSIST")]
pub static PERSIST: LruHashMap<PersistKey, Persist> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Which backends are in each VIP's live table, a bit per backend id
/// (`MEMBER_WORDS` words per VIP): a persistence template is only followed
/// to a backend that is still in the table (not drained, not down).
#[map(name = "MEMBERS")]
pub static MEMBERS: Array<u64> =
    Array::with_max_entries(DEFAULT_MAX_VIPS * DEFAULT_MAX_BACKENDS.div_ceil(64), 0);

#[unsafe(no_mangle)]
pub static MEMBER_WORDS: u32 = DEFAULT_MAX_BACKENDS.div_ceil(64);

/// SYN-flood guard (Katran's MAX_CONN_RATE): per-CPU new-flow count in the
/// current second. Over `NEW_FLOW_CAP`, dr and tun flows are still forwarded
/// (every scheduler then indexes its table by the flow hash, so each packet
/// gets the same backend) but not recorded, so a flood of new
/// flows cannot evict established ones from the LRU.
#[map(name = "NEW_FLOW_RATE")]
pub static NEW_FLOW_RATE: PerCpuArray<FlowRate> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
pub static NEW_FLOW_CAP: u32 = 0;

/// Our SNAT source addresses: replies to them may be nat flows.
#[map(name = "SNAT_ADDRS")]
pub static SNAT_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS + 1, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[inline(always)]
pub fn count(map: &PerCpuArray<Counters>, idx: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = map.get_ptr_mut(idx) {
        // SAFETY: per-CPU value, valid for this run, touched by no other CPU.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        c.new_flows += new_flow as u64;
    }
}

/// Adds `delta` to a backend's active flows.
#[inline(always)]
pub fn active_add(backend: u32, delta: i64) {
    if let Some(a) = ACTIVE.get_ptr_mut(backend) {
        // SAFETY: a map value pointer stays valid for the program's run and
        // is 8-aligned; other CPUs update it with atomics too. The BPF target
        // offers no `AtomicI64::fetch_add`; with its result unused this
        // intrinsic is the plain atomic add every BPF CPU version has.
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(a, delta) };
    }
}

#[inline(always)]
pub fn count_unpinned(vip: u32) {
    if let Some(c) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: per-CPU value, valid for this run.
        unsafe { (*c).unpinned += 1 };
    }
}

#[inline(always)]
pub fn count_drop(vip: u32, reason: DropReason) {
    if let Some(c) = VIP_STATS.get_ptr_mut(vip) {
        let c = unsafe { &mut *c };
        let i = reason as usize;
        if i < DROP_REASONS {
            c.drops[i] += 1;
        }
    }
}

/// Flow timestamps use the coarse monotonic clock: it is a memory read,
/// while `bpf_ktime_get_ns` cost ~17 ns a packet in this VM's benchmarks,
/// and a tick (≤ 10 ms) of resolution is plenty for idle timeouts counted in
/// seconds. Same base as userspace's CLOCK_MONOTONIC.
#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Stamps a flow as seen. The write is skipped within a tick so that busy
/// flows on several CPUs do not keep bouncing the entry's cache line.
#[inline(always)]
pub fn touch(f: &mut Flow, now: u64) {
    if f.last_seen_ns != now {
        f.last_seen_ns = now;
    }
}

/// IPv6 services; value layout in `VipMeta6`. Sized like `VIPS`.
#[map(name = "VIPS6")]
pub static VIPS6: HashMap<VipKey6, VipMeta6> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// IPv6 addresses carrying at least one VIP (see `VIP_ADDRS`).
#[map(name = "VIP_ADDRS6")]
pub static VIP_ADDRS6: HashMap<Addr6, u32> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// IPv6 address of backend `id`; the rest of the backend is `BACKENDS[id]`.
#[map(name = "BACKENDS6")]
pub static BACKENDS6: Array<Backend6> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// The IPv6 connection table: as `FLOWS`, with its own capacity
/// (`flow_capacity` too), so neither family can evict the other's flows.
#[map(name = "FLOWS6")]
pub static FLOWS6: LruHashMap<FlowKey6, Flow6> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

#[map(name = "PERSIST6")]
pub static PERSIST6: LruHashMap<PersistKey6, Persist> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Our IPv6 SNAT source addresses.
#[map(name = "SNAT_ADDRS6")]
pub static SNAT_ADDRS6: HashMap<Addr6, u32> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// `touch` for any entry: the stamp is only written when it changes.
#[inline(always)]
pub fn stamp(last_seen_ns: &mut u64, now: u64) {
    if *last_seen_ns != now {
        *last_seen_ns = now;
    }
}

/// Per-CPU scratch space where a new IPv6 flow's forward (0) and reply (1)
/// entries are built: on the stack, with the 40-byte keys, they would push
/// the IPv6 path past the 512-byte BPF stack. Internal to the program;
/// userspace never reads it.
#[map(name = "SCRATCH6")]
pub static SCRATCH6: PerCpuArray<Flow6> = PerCpuArray::with_max_entries(2, 0);
