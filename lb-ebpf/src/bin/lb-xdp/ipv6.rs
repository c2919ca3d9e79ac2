//! IPv6: the wire header, the policy for packets to IPv6 VIP addresses, and
//! the per-packet path of `lb_xdp` for IPv6 TCP/UDP (the IPv4 one in
//! `main.rs`, with the `*6` maps).
//!
//! Extension headers are not walked: the next header must be TCP, UDP or
//! ICMPv6. A Fragment header to a VIP address is dropped as `fragment`,
//! hop-by-hop, routing and destination options as `ip_options` (the IPv4
//! options policy; no real client sends TCP/UDP with them); any other next
//! header passes. Nothing addressed elsewhere is touched, so neighbour
//! discovery and the node's own IPv6 traffic reach the kernel as they came.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_ebpf::abi::{
    Addr6, BACKEND_LOCAL, DropReason, FLOW_REPLY, FlowKey6, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, MODE_NAT, MODE_TUN, VipKey6, VipMeta6,
};

use crate::{drop_unmatched, flow6, headers::*, icmp6, maps::*, rewrite6, transmit, tun6};

pub const IPV6_HLEN: usize = 40;
/// Offset of the L4 header: no extension header is accepted before it.
pub const L4_OFF6: usize = ETH_HLEN + IPV6_HLEN;
/// EtherType IPv6 as it reads from memory on a little-endian CPU.
pub const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;

/// Addresses are 8 16-bit words for the same reason as IPv4's two: after
/// the Ethernet header they are only 2-byte aligned.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u16; 8],
    pub dst: [u16; 8],
}

/// The address in the `Addr6` convention (native words, network bytes).
#[inline(always)]
pub fn addr6(w: [u16; 8]) -> Addr6 {
    [
        w[0] as u32 | ((w[1] as u32) << 16),
        w[2] as u32 | ((w[3] as u32) << 16),
        w[4] as u32 | ((w[5] as u32) << 16),
        w[6] as u32 | ((w[7] as u32) << 16),
    ]
}

#[inline(always)]
pub fn words6(a: &Addr6) -> [u16; 8] {
    [
        a[0] as u16,
        (a[0] >> 16) as u16,
        a[1] as u16,
        (a[1] >> 16) as u16,
        a[2] as u16,
        (a[2] >> 16) as u16,
        a[3] as u16,
        (a[3] >> 16) as u16,
    ]
}

/// Bounds-checked pointers into one parsed IPv6 TCP/UDP frame.
pub struct Packet6 {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv6Hdr,
    pub ports: *mut Ports,
    /// The L4 checksum field.
    pub csum: *mut u16,
    pub udp: bool,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

/// `lb_xdp` for a frame whose EtherType is IPv6.
#[inline(never)]
pub fn handle(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ctx = &ctx;
    // Too short to say whether it is addressed to a VIP: not ours to judge
    // (the kernel drops it), so every IPv6 packet not for a VIP passes.
    let Some(ip) = ptr_at::<Ipv6Hdr>(start, end, ETH_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: every pointer below comes from `ptr_at`, which checked it
    // against `data_end`. Fields are read through `ip` rather than from a
    // copy of the header: stack is scarce on this path.
    let h = unsafe { &*ip };
    let dst = addr6(h.dst);
    let next = h.next_hdr;
    let plen = u16::from_be(h.payload_len) as usize;
    if h.vtc_flow[0] >> 4 != 6 || ETH_HLEN + IPV6_HLEN + plen > end - start {
        return policy_drop(&dst, DropReason::Malformed);
    }
    let l4_min = match next {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_ICMPV6 => return icmp6::handle(ctx, start, end, &dst),
        NEXTHDR_FRAGMENT => return policy_drop(&dst, DropReason::Fragment),
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
            return policy_drop(&dst, DropReason::IpOptions);
        }
        _ => return xdp_action::XDP_PASS,
    };
    if plen < l4_min {
        return policy_drop(&dst, DropReason::Malformed);
    }
    let Some(ports) = ptr_at::<Ports>(start, end, L4_OFF6) else {
        return policy_drop(&dst, DropReason::Malformed);
    };
    // As for IPv4: the L4 header's own length must fit the payload.
    let l4_ok = match next {
        IPPROTO_TCP => ptr_at::<u8>(start, end, L4_OFF6 + TCP_DOFF_OFF).is_some_and(|d| {
            let doff = (unsafe { *d } >> 4) as usize * 4;
            doff >= TCP_HLEN && doff <= plen
        }),
        _ => ptr_at::<u16>(start, end, L4_OFF6 + UDP_LEN_OFF).is_some_and(|l| {
            let len = u16::from_be(unsafe { *l }) as usize;
            len >= UDP_HLEN && len <= plen
        }),
    };
    if !l4_ok {
        return policy_drop(&dst, DropReason::Malformed);
    }
    let udp = next == IPPROTO_UDP;
    let csum = if udp {
        ptr_at::<u16>(start, end, L4_OFF6 + UDP_CSUM_OFF)
    } else {
        ptr_at::<u16>(start, end, L4_OFF6 + TCP_CSUM_OFF)
    };
    let (Some(csum), Some(eth)) = (csum, ptr_at::<EthHdr>(start, end, 0)) else {
        return policy_drop(&dst, DropReason::Malformed);
    };
    let tcp_flags = match ptr_at::<u8>(start, end, L4_OFF6 + TCP_FLAGS_OFF) {
        Some(f) if !udp => unsafe { *f },
        _ => 0,
    };
    let p = unsafe { *ports };
    let key = FlowKey6 {
        src_addr: addr6(h.src),
        dst_addr: dst,
        src_port: p.src,
        dst_port: p.dst,
        proto: next,
        _pad: [0; 3],
    };
    let pkt = Packet6 {
        eth,
        ip,
        ports,
        csum,
        udp,
        tcp_flags,
    };
    let vip_key = VipKey6 {
        addr: dst,
        port: p.dst,
        proto: next,
        _pad: 0,
    };
    let tun = tun6::Inner {
        vtc_flow: h.vtc_flow,
        payload_len: h.payload_len,
    };
    match unsafe { VIPS6.get(vip_key) } {
        Some(vip) => to_vip(ctx, &pkt, &key, vip, tun, (end - start) as u64),
        None => from_backend(ctx, &pkt, &key),
    }
}

/// `to_vip` of the IPv4 path.
#[inline(always)]
fn to_vip(
    ctx: &XdpContext,
    pkt: &Packet6,
    key: &FlowKey6,
    vip6: &VipMeta6,
    inner: tun6::Inner,
    bytes: u64,
) -> u32 {
    let vip = &vip6.meta;
    let now = now();
    let (flow, new) =
        match flow6::lookup_or_schedule(key, vip6, pkt, ctx.ingress_ifindex() as u32, now) {
            Ok(f) => f,
            Err(reason) => {
                count_drop(vip.id, reason);
                return xdp_action::XDP_DROP;
            }
        };
    // SAFETY: a map value pointer, valid for the program's run.
    let flow = unsafe { &*flow };
    count(&VIP_STATS, vip.id, bytes, new);
    count(&BACKEND_STATS, flow.backend, bytes, new);
    if new && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        crate::flow::observe_syn(flow.backend);
    }
    if vip.mode == MODE_TUN {
        return tun6::encap(ctx, flow, vip, inner);
    }
    if vip.mode == MODE_NAT {
        rewrite6::translate(pkt, flow);
        if flow.flags & BACKEND_LOCAL != 0 {
            return xdp_action::XDP_PASS;
        }
    }
    crate::rewrite::set_eth_macs(pkt.eth, &flow.peer_mac, &flow.local_mac);
    transmit(ctx, flow.ifindex)
}

/// `from_backend` of the IPv4 path: nat replies to an IPv6 SNAT address.
#[inline(always)]
fn from_backend(ctx: &XdpContext, pkt: &Packet6, key: &FlowKey6) -> u32 {
    if unsafe { SNAT_ADDRS6.get(key.dst_addr) }.is_none() {
        return xdp_action::XDP_PASS;
    }
    let Some(f) = FLOWS6.get_ptr_mut(key) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a map value pointer stays valid for the program's run.
    let f = unsafe { &mut *f };
    if f.kind != FLOW_REPLY {
        return xdp_action::XDP_PASS;
    }
    stamp(&mut f.last_seen_ns, now());
    flow6::observe_answer(f, pkt.tcp_flags);
    flow6::observe_reply_close(f, pkt.tcp_flags, key.proto);
    rewrite6::translate(pkt, f);
    crate::rewrite::set_eth_macs(pkt.eth, &f.peer_mac, &f.local_mac);
    transmit(ctx, f.ifindex)
}

/// The IPv4 `policy_drop`: dropped when addressed to a VIP address, passed
/// otherwise.
#[inline(always)]
fn policy_drop(dst: &Addr6, reason: DropReason) -> u32 {
    if unsafe { VIP_ADDRS6.get(dst) }.is_some() {
        drop_unmatched(reason)
    } else {
        xdp_action::XDP_PASS
    }
}
