//! ICMPv6 to IPv6 VIP addresses, as `icmp.rs` does for IPv4: echo requests
//! are answered by the LB, and "packet too big" about a dr or tun flow goes
//! to the flow's backend, whose socket needs it for path MTU discovery.
//! Everything else (neighbour discovery above all) passes.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_ebpf::{
    abi::{Addr6, FLOW_FORWARD, FlowKey6, IPPROTO_TCP, IPPROTO_UDP, MODE_DR, MODE_TUN, VipKey6},
    csum,
};

use crate::{
    drop_unmatched,
    headers::*,
    icmp::IcmpHdr,
    ipv6::{IPV6_HLEN, Ipv6Hdr, L4_OFF6, addr6},
    maps::{FLOWS6, VIP_ADDRS6, VIPS6},
    transmit, tun6,
};

const PACKET_TOO_BIG: u8 = 2;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
/// Bytes before the quoted packet in a "packet too big" message (type,
/// code, checksum, MTU).
const ICMP6_HLEN: usize = 8;

#[inline(always)]
pub fn handle(ctx: &XdpContext, start: usize, end: usize, dst: &Addr6) -> u32 {
    if unsafe { VIP_ADDRS6.get(dst) }.is_none() {
        return xdp_action::XDP_PASS;
    }
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(start, end, 0),
        ptr_at::<Ipv6Hdr>(start, end, ETH_HLEN),
        ptr_at::<IcmpHdr>(start, end, L4_OFF6),
    ) else {
        return drop_unmatched(lb_ebpf::abi::DropReason::Malformed);
    };
    // SAFETY: bounds-checked just above.
    let h = unsafe { *icmp };
    if (h.kind, h.code) == (PACKET_TOO_BIG, 0) {
        return too_big(ctx, start, end);
    }
    if (h.kind, h.code) != (ECHO_REQUEST, 0) {
        return xdp_action::XDP_PASS;
    }
    // The reply is the request with MACs and addresses swapped, hop limit
    // 64 and type 129. The checksum's pseudo-header sums both addresses, so
    // the swap leaves it alone; only the type word changes.
    unsafe {
        let e = *eth;
        (*eth).dst = e.src;
        (*eth).src = e.dst;
        let i = *ip;
        (*ip).src = i.dst;
        (*ip).dst = i.src;
        (*ip).hop_limit = 64;
        (*icmp).check = csum::replace2(
            h.check,
            u16::from_ne_bytes([ECHO_REQUEST, 0]),
            u16::from_ne_bytes([ECHO_REPLY, 0]),
        );
        (*icmp).kind = ECHO_REPLY;
    }
    xdp_action::XDP_TX
}

/// The quoted packet is VIP → client (the backend's reply); the flow is
/// client → VIP. dr: re-addressed to the backend's MAC; tun: wrapped like
/// the flow's packets. nat's flows end at the LB: left to the kernel.
#[inline(always)]
fn too_big(ctx: &XdpContext, start: usize, end: usize) -> u32 {
    const Q: usize = L4_OFF6 + ICMP6_HLEN;
    let (Some(outer), Some(q), Some(ports)) = (
        ptr_at::<Ipv6Hdr>(start, end, ETH_HLEN),
        ptr_at::<Ipv6Hdr>(start, end, Q),
        ptr_at::<Ports>(start, end, Q + IPV6_HLEN),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked just above.
    let (o, q, p) = unsafe { (&*outer, &*q, *ports) };
    if q.next_hdr != IPPROTO_TCP && q.next_hdr != IPPROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    let vip_key = VipKey6 {
        addr: addr6(q.src),
        port: p.src,
        proto: q.next_hdr,
        _pad: 0,
    };
    let Some(vip) = (unsafe { VIPS6.get(vip_key) }) else {
        return xdp_action::XDP_PASS;
    };
    let key = FlowKey6 {
        src_addr: addr6(q.dst),
        dst_addr: vip_key.addr,
        src_port: p.dst,
        dst_port: p.src,
        proto: q.next_hdr,
        _pad: [0; 3],
    };
    let Some(f) = (unsafe { FLOWS6.get(key) }) else {
        return xdp_action::XDP_PASS;
    };
    if f.kind != FLOW_FORWARD {
        return xdp_action::XDP_PASS;
    }
    match vip.meta.mode {
        MODE_DR => {
            let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
                return xdp_action::XDP_PASS;
            };
            crate::rewrite::set_eth_macs(eth, &f.peer_mac, &f.local_mac);
            transmit(ctx, f.ifindex)
        }
        MODE_TUN => {
            let inner = tun6::Inner {
                vtc_flow: o.vtc_flow,
                payload_len: o.payload_len,
            };
            tun6::encap(ctx, f, &vip.meta, inner)
        }
        _ => xdp_action::XDP_PASS,
    }
}
