//! Map keys and values shared by the XDP/tc programs and userspace.
//!
//! Every type here is `#[repr(C)]`, has explicit padding and is plain data, so
//! the kernel side and `lb-core` read the same bytes. Addresses and ports are
//! kept in **network byte order** exactly as they sit in the packet, so the
//! datapath never swaps bytes on the hot path; userspace converts.

/// Map names, as the loader looks them up in the object.
pub mod map {
    pub const VIPS: &str = "VIPS";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const TABLE_STATE: &str = "TABLE_STATE";
    pub const RING: &str = "RING";
    pub const BACKENDS: &str = "BACKENDS";
    pub const FLOWS: &str = "FLOWS";
    pub const PERSIST: &str = "PERSIST";
    pub const MEMBERS: &str = "MEMBERS";
    pub const NEW_FLOW_RATE: &str = "NEW_FLOW_RATE";
    pub const SNAT_ADDRS: &str = "SNAT_ADDRS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const CURSORS: &str = "CURSORS";
    pub const ACTIVE: &str = "ACTIVE";
    pub const VIPS6: &str = "VIPS6";
    pub const VIP_ADDRS6: &str = "VIP_ADDRS6";
    pub const BACKENDS6: &str = "BACKENDS6";
    pub const FLOWS6: &str = "FLOWS6";
    pub const PERSIST6: &str = "PERSIST6";
    pub const SNAT_ADDRS6: &str = "SNAT_ADDRS6";
}

/// Program names in the object.
pub mod prog {
    /// The load balancer, attached at XDP on the VIP-facing interface.
    pub const XDP_LB: &str = "lb_xdp";
    /// Un-NAT of replies sent by a backend that runs on the LB node itself
    /// (tc egress). See the program's doc comment for why XDP cannot do it.
    pub const TC_EGRESS: &str = "lb_tc_egress";
    /// A trivial XDP_PASS: the benchmark baseline, and the program native-mode
    /// veth peers need so XDP_TX frames are not dropped.
    pub const XDP_PASS: &str = "lb_xdp_pass";
    /// Backend-side helper for tun mode: strips the outer IPv4 header of IPIP
    /// packets, for hosts without an IPIP device.
    pub const XDP_DECAP: &str = "lb_xdp_decap";
}

/// Names of the read-only globals (`.rodata`) the loader sets before load.
pub mod global {
    /// Slots reserved per table half in `RING` (the largest ring size allowed).
    pub const RING_STRIDE: &str = "RING_STRIDE";
    /// Number of VIP slots; also the index of the "matched no VIP" counters.
    pub const MAX_VIPS: &str = "MAX_VIPS";
    /// 64-bit words per VIP in `MEMBERS` (max_backends / 64, rounded up).
    pub const MEMBER_WORDS: &str = "MEMBER_WORDS";
    /// SYN-flood guard: new flows per CPU per second that may enter the
    /// connection table (dr, tun); 0 = no limit.
    pub const NEW_FLOW_CAP: &str = "NEW_FLOW_CAP";
}

/// Default capacities. Each can be changed at load time (`set_max_entries`).
pub const DEFAULT_MAX_VIPS: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Default Maglev table size: the prime recommended by the Maglev paper.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
pub const DEFAULT_FLOW_CAPACITY: u32 = 262_144;

/// Forwarding modes (`VipMeta::mode`).
pub const MODE_DR: u8 = 0;
pub const MODE_NAT: u8 = 1;
/// IPIP: the packet is wrapped in an outer IPv4 header to the backend, which
/// strips it (`lb_xdp_decap` or an IPIP device) and answers the client
/// directly, as in dr.
pub const MODE_TUN: u8 = 2;

/// `Backend::flags`: the backend address is one of the LB node's own, so the
/// packet is handed to the local stack instead of transmitted (nat mode).
pub const BACKEND_LOCAL: u8 = 1;

/// `Flow::kind`.
pub const FLOW_FORWARD: u8 = 0;
pub const FLOW_REPLY: u8 = 1;

/// `Flow::flags` of a reply entry: the backend's first answer to the
/// client's SYN (SYN-ACK or RST) has been seen and counted.
pub const FLOW_ANSWERED: u8 = 1 << 1;

/// `Flow::flags`: a FIN or RST went this way. The connection is ending: it
/// no longer counts as active, it expires after `CLOSING_TIMEOUT_S` idle,
/// and a new SYN on its 5-tuple is scheduled afresh.
pub const FLOW_CLOSING: u8 = 1 << 2;

/// Idle timeout of a closing TCP flow (LVS's `tcp fin` timeout is 120 s;
/// lower here because a reused 5-tuple is rescheduled on SYN anyway).
pub const CLOSING_TIMEOUT_S: u32 = 10;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Why a packet addressed to a VIP was dropped (index into `Counters::drops`).
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Truncated or inconsistent IP/L4 header (bad IHL, total or payload
    /// length, ...).
    Malformed = 0,
    /// An IPv4 fragment or an IPv6 Fragment header. Fragments cannot be
    /// steered consistently without reassembly (non-first fragments carry no
    /// ports), so all are dropped.
    Fragment = 1,
    /// IPv4 options present (IHL > 5), or an IPv6 hop-by-hop, routing or
    /// destination-options header: dropped, as Katran does; no real client
    /// sends TCP/UDP with them.
    IpOptions = 2,
    /// The VIP's table is empty: no live backend.
    NoBackend = 3,
    /// nat mode could not find a free SNAT port for the backend.
    NatPortsExhausted = 4,
    /// The chosen backend id has no entry (should not happen; a control bug).
    BadBackend = 5,
    /// tun: the packet plus the outer header (20 bytes, 40 for IPv6) exceeds
    /// the MTU. Dropped
    /// and counted rather than answered with ICMP frag-needed (not yet).
    TunTooBig = 6,
}

pub const DROP_REASONS: usize = 7;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::IpOptions,
        DropReason::NoBackend,
        DropReason::NatPortsExhausted,
        DropReason::BadBackend,
        DropReason::TunTooBig,
    ];

    /// Label used in metrics and `lb status`.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::IpOptions => "ip_options",
            DropReason::NoBackend => "no_backend",
            DropReason::NatPortsExhausted => "nat_ports_exhausted",
            DropReason::BadBackend => "bad_backend",
            DropReason::TunTooBig => "tun_too_big",
        }
    }
}

/// Key of `VIPS`: a service is (address, port, protocol).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    /// IPv4 address, network order.
    pub addr: u32,
    /// Port, network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `VIPS`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into `TABLE_STATE`, `VIP_STATS` and the VIP's part of `RING`.
    pub id: u32,
    /// `MODE_DR`, `MODE_NAT` or `MODE_TUN`.
    pub mode: u8,
    /// tun: low bits of `tun_src` taken from the flow hash, so backends'
    /// NICs (which hash IPIP on the outer addresses) spread flows across
    /// their receive queues. 0 = always `tun_src`.
    pub tun_src_bits: u8,
    /// tun: largest outer packet (IP total length) the egress link carries.
    pub mtu: u16,
    /// nat: source address of packets sent to a remote backend (network order).
    pub snat_addr: u32,
    /// nat: SNAT port range, inclusive, host order. Keep it outside the node's
    /// `ip_local_port_range` so replies to local sockets are never taken.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Idle time after which a TCP flow is forgotten and rescheduled.
    pub tcp_timeout_s: u32,
    /// Idle time after which a UDP flow is forgotten and rescheduled.
    pub udp_timeout_s: u32,
    /// tun: outer source address (network order), see `tun_src_bits`.
    pub tun_src: u32,
    /// keepalived's `persistence_timeout`: a client (its address masked by
    /// `persist_mask`) keeps its backend across connections until it has
    /// opened none for this long. 0 = off.
    pub persist_timeout_s: u32,
    /// keepalived's `persistence_granularity`, network order.
    pub persist_mask: u32,
    pub _pad: u32,
}

/// Value of the per-CPU `NEW_FLOW_RATE[0]`: new flows in the current
/// one-second window.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct FlowRate {
    pub window_start_ns: u64,
    pub count: u64,
}

/// Key of `PERSIST`: a VIP and a client address masked by `persist_mask`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKey {
    pub vip: u32,
    pub client: u32,
}

/// Value of `PERSIST` (LVS's persistence template).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Persist {
    /// Refreshed by every new connection of the client.
    pub last_seen_ns: u64,
    pub backend: u32,
    pub _pad: u32,
}

/// Value of `TABLE_STATE[vip.id]`: which half of the VIP's double-buffered
/// table is live, and the size and kind of each half.
///
/// Userspace fills the inactive half of `RING`, writes its size and kind, and
/// only then flips `active`; the program reads `active` once per packet, so a
/// packet uses the old table (and scheduler) or the new one, never a mix.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct TableState {
    /// 0 or 1.
    pub active: u32,
    /// Number of valid slots in each half (0 = empty table, drop new flows).
    pub size: [u32; 2],
    /// Bumped on every swap; for observability only.
    pub generation: u32,
    /// `TABLE_*` of each half.
    pub kind: [u8; 2],
    pub _pad: [u8; 6],
}

/// `TableState::kind`: how the datapath reads a table half, i.e. the VIP's
/// scheduler. Stored per half, so a scheduler change swaps atomically with
/// its table.
///
/// mh: a weighted Maglev table, slot = flow hash (5-tuple) % size.
pub const TABLE_MAGLEV: u8 = 0;
/// sh: the same Maglev table, slot = hash of the client address % size.
pub const TABLE_MAGLEV_SOURCE: u8 = 1;
/// rr, wrr: a sequence of backend ids, slot = this CPU's cursor
/// (`CURSORS[vip]`, incremented per new flow) % size.
pub const TABLE_SEQUENCE: u8 = 2;
/// lc, wlc: `size / 2` pairs (backend id, weight); the backend with the
/// fewest `ACTIVE` flows per weight wins, the first one on a tie.
pub const TABLE_LEAST: u8 = 3;

/// Most backends an lc/wlc table may hold: the datapath scans them all for
/// each new flow, and the verifier needs a bound.
pub const LEAST_MAX_BACKENDS: u32 = 64;

/// Slot value in `RING` meaning "no backend".
pub const NO_BACKEND: u32 = u32::MAX;

/// Value of `BACKENDS[id]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// IPv4 address, network order.
    pub addr: u32,
    /// nat: destination port after translation, network order. dr ignores it.
    pub port: u16,
    /// `BACKEND_LOCAL` or 0.
    pub flags: u8,
    pub _pad: u8,
    /// Next-hop MAC towards the backend.
    pub mac: [u8; 6],
    /// Our MAC on `ifindex`, used as the frame's source.
    pub src_mac: [u8; 6],
    /// Interface to transmit on. The ingress interface means XDP_TX, another
    /// means bpf_redirect.
    pub ifindex: u32,
}

/// Key of `FLOWS`: the 5-tuple as seen on the wire, network order.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `FLOWS`.
///
/// A `FLOW_FORWARD` entry pins a client flow to its backend and carries
/// everything needed to forward it, so a hit needs no other lookup and a flow
/// keeps working after its backend left the table (or its id was reused). In
/// nat mode a second, `FLOW_REPLY` entry is keyed by the backend's reply
/// 5-tuple and says how to rewrite the reply back to VIP → client.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC, tick resolution) of the
    /// last packet; idle flows past the VIP's timeout are rescheduled.
    pub last_seen_ns: u64,
    /// Backend id when the flow was scheduled (counters, active flows).
    pub backend: u32,
    pub vip: u32,
    /// nat rewrite: forward entries rewrite to (rw_src → SNAT, rw_dst →
    /// backend); reply entries rewrite to (rw_src → VIP, rw_dst → client).
    pub rw_src_addr: u32,
    pub rw_dst_addr: u32,
    pub rw_src_port: u16,
    pub rw_dst_port: u16,
    /// Destination MAC: the backend's next hop (forward) or the client's
    /// next hop, i.e. the client packet's L2 source (reply).
    pub peer_mac: [u8; 6],
    /// Source MAC: ours on the egress interface.
    pub local_mac: [u8; 6],
    /// Egress interface (the ingress one means XDP_TX).
    pub ifindex: u32,
    /// `FLOW_FORWARD` or `FLOW_REPLY`.
    pub kind: u8,
    /// Forward entries: `BACKEND_LOCAL` when the backend is this node (nat:
    /// pass to the stack). Reply entries: `FLOW_ANSWERED`. Both:
    /// `FLOW_CLOSING`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Value of `VIP_STATS[vip.id]` and `BACKEND_STATS[backend]` (per-CPU).
/// `VIP_STATS[max_vips]` collects drops that match no VIP (malformed IPv4).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: [u64; DROP_REASONS],
    /// Passive health (nat, backends only): new TCP flows that began with a
    /// SYN, and the backend's first answer to it, SYN-ACK or RST. SYNs that
    /// stay unanswered are `syn - syn_ack - syn_rst` once old enough.
    pub syn: u64,
    pub syn_ack: u64,
    pub syn_rst: u64,
    /// New flows forwarded but not recorded in the connection table because
    /// the CPU was over its new-flow rate (SYN-flood guard, dr and tun).
    pub unpinned: u64,
}

impl Counters {
    /// Sum of per-CPU values, as userspace reads them.
    pub fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += *b;
        }
        self.syn += other.syn;
        self.syn_ack += other.syn_ack;
        self.syn_rst += other.syn_rst;
        self.unpinned += other.unpinned;
    }
}

/// An IPv6 address as four native `u32`s holding the network-order bytes
/// (`u32::from_ne_bytes` of each 4-byte chunk), the IPv4 convention widened.
pub type Addr6 = [u32; 4];

/// Key of `VIPS6`: an IPv6 service.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey6 {
    pub addr: Addr6,
    /// Port, network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `VIPS6`. `meta` is read exactly as for IPv4 (id, mode, ports,
/// timeouts, tun bits, MTU); its IPv4 address fields are unused (0) and the
/// IPv6 ones follow.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct VipMeta6 {
    pub meta: VipMeta,
    /// nat: source address towards remote backends.
    pub snat_addr: Addr6,
    /// tun: outer source; its low `meta.tun_src_bits` bits come from the
    /// flow hash.
    pub tun_src: Addr6,
    /// Persistence granularity as a mask (a /64 by default in userspace).
    pub persist_mask: Addr6,
}

/// Key of `PERSIST6`: a VIP and a client address masked by `persist_mask`.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKey6 {
    pub vip: u32,
    pub client: Addr6,
}

/// Key of `FLOWS6`: the IPv6 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey6 {
    pub src_addr: Addr6,
    pub dst_addr: Addr6,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `FLOWS6`: [`Flow`] with 128-bit rewrite addresses; every field
/// means what it means there.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Flow6 {
    pub last_seen_ns: u64,
    pub backend: u32,
    pub vip: u32,
    pub rw_src_addr: Addr6,
    pub rw_dst_addr: Addr6,
    pub rw_src_port: u16,
    pub rw_dst_port: u16,
    pub peer_mac: [u8; 6],
    pub local_mac: [u8; 6],
    pub ifindex: u32,
    pub kind: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Value of `BACKENDS6[id]`: the IPv6 address of backend `id`. Everything
/// else about it (port, flags, MACs, interface) is in `BACKENDS[id]`, whose
/// `addr` is then 0: ids, counters and Maglev tables stay shared by both
/// families, and `Backend` keeps its layout.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Backend6 {
    pub addr: Addr6,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, with explicit padding and no
    // pointers, so any byte pattern is a valid value.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for TableState {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for PersistKey {}
    unsafe impl aya::Pod for Persist {}
    unsafe impl aya::Pod for FlowRate {}
    unsafe impl aya::Pod for VipKey6 {}
    unsafe impl aya::Pod for VipMeta6 {}
    unsafe impl aya::Pod for PersistKey6 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for Flow6 {}
    unsafe impl aya::Pod for Backend6 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The kernel and userspace must agree on sizes; padding is explicit so
    /// no byte is uninitialised.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VipKey>(), 8);
        assert_eq!(size_of::<VipMeta>(), 40);
        assert_eq!(size_of::<PersistKey>(), 8);
        assert_eq!(size_of::<Persist>(), 16);
        assert_eq!(size_of::<TableState>(), 24);
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<Flow>(), 48);
        assert_eq!(size_of::<Counters>(), 8 * (7 + DROP_REASONS));
        assert_eq!(size_of::<VipKey6>(), 20);
        assert_eq!(size_of::<VipMeta6>(), 40 + 48);
        assert_eq!(size_of::<PersistKey6>(), 20);
        assert_eq!(size_of::<FlowKey6>(), 40);
        assert_eq!(size_of::<Flow6>(), 72);
        assert_eq!(size_of::<Backend6>(), 16);
    }
}
