//! ICMP to VIP addresses: echo requests are answered by the LB itself, and
//! "fragmentation needed" about a flow goes to the flow's backend (dr, tun),
//! whose socket needs it for path MTU discovery: the backend sent the packet
//! that was too big, from the VIP, so the router's answer came to us.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_ebpf::{
    abi::{DropReason, FLOW_FORWARD, FlowKey, MODE_DR, MODE_TUN, VipKey},
    csum,
};

use crate::{headers::*, maps::*, transmit, tun};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const ECHO_REQUEST: u8 = 8;
/// Bytes before the quoted packet in a destination-unreachable message.
const ICMP_HLEN: usize = 8;

/// The first word of ICMP and ICMPv6 headers.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
}

/// An ICMP packet (no options, not fragmented) to a VIP address, or any
/// ICMP packet: the rest is the kernel's.
#[inline(always)]
pub fn handle(ctx: &XdpContext, start: usize, end: usize, iph: &Ipv4Hdr) -> u32 {
    if unsafe { VIP_ADDRS.get(addr(iph.dst)) }.is_none() {
        return xdp_action::XDP_PASS;
    }
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(start, end, 0),
        ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN),
        ptr_at::<IcmpHdr>(start, end, L4_OFF),
    ) else {
        return super::drop_unmatched(DropReason::Malformed);
    };
    // SAFETY: bounds-checked just above.
    let h = unsafe { *icmp };
    match (h.kind, h.code) {
        (ECHO_REQUEST, 0) => {
            // SAFETY: bounds-checked above.
            unsafe { echo_reply(eth, ip, icmp, iph) };
            xdp_action::XDP_TX
        }
        (DEST_UNREACH, FRAG_NEEDED) => frag_needed(ctx, start, end, iph),
        _ => xdp_action::XDP_PASS,
    }
}

/// Turns the request into its reply in place: addresses and MACs swapped
/// (the IP checksum does not change), TTL 64, type 0.
#[inline(always)]
unsafe fn echo_reply(eth: *mut EthHdr, ip: *mut Ipv4Hdr, icmp: *mut IcmpHdr, iph: &Ipv4Hdr) {
    unsafe {
        let e = *eth;
        (*eth).dst = e.src;
        (*eth).src = e.dst;
        let old = u16::from_ne_bytes([iph.ttl, iph.proto]);
        let new = u16::from_ne_bytes([64, iph.proto]);
        (*ip).check = csum::replace2(iph.check, old, new);
        (*ip).ttl = 64;
        (*ip).src = iph.dst;
        (*ip).dst = iph.src;
        let h = *icmp;
        (*icmp).check = csum::replace2(
            h.check,
            u16::from_ne_bytes([ECHO_REQUEST, 0]),
            u16::from_ne_bytes([ECHO_REPLY, 0]),
        );
        (*icmp).kind = ECHO_REPLY;
    }
}

/// The quoted packet is VIP → client (the backend's reply); the flow is
/// client → VIP. dr: re-addressed to the backend's MAC; tun: wrapped like
/// the flow's packets. nat's flows end at the LB: left to the kernel.
#[inline(always)]
fn frag_needed(ctx: &XdpContext, start: usize, end: usize, iph: &Ipv4Hdr) -> u32 {
    let (Some(q), Some(ports)) = (
        ptr_at::<Ipv4Hdr>(start, end, L4_OFF + ICMP_HLEN),
        ptr_at::<Ports>(start, end, L4_OFF + ICMP_HLEN + IPV4_HLEN),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked just above.
    let (q, p) = unsafe { (*q, *ports) };
    if q.version_ihl != 0x45 {
        return xdp_action::XDP_PASS;
    }
    let vip_key = VipKey {
        addr: addr(q.src),
        port: p.src,
        proto: q.proto,
        _pad: 0,
    };
    let Some(vip) = (unsafe { VIPS.get(vip_key) }) else {
        return xdp_action::XDP_PASS;
    };
    let key = FlowKey {
        src_addr: addr(q.dst),
        dst_addr: addr(q.src),
        src_port: p.dst,
        dst_port: p.src,
        proto: q.proto,
        _pad: [0; 3],
    };
    let Some(f) = (unsafe { FLOWS.get(key) }) else {
        return xdp_action::XDP_PASS;
    };
    if f.kind != FLOW_FORWARD {
        return xdp_action::XDP_PASS;
    }
    let f = *f;
    match vip.mode {
        MODE_DR => {
            let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
                return xdp_action::XDP_PASS;
            };
            // SAFETY: bounds-checked just above.
            unsafe {
                (*eth).dst = f.peer_mac;
                (*eth).src = f.local_mac;
            }
            transmit(ctx, f.ifindex)
        }
        MODE_TUN => tun::encap(ctx, &f, vip, iph, f.ifindex),
        _ => xdp_action::XDP_PASS,
    }
}
