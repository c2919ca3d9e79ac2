//! tun mode over IPv6: IPv6-in-IPv6 (next header 41) towards the backend,
//! and the backend-side decapsulation helper for it.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_ebpf::abi::{Addr6, DropReason, Flow6, VipMeta, VipMeta6};

use crate::{
    headers::*,
    ipv6::{ETH_P_IPV6_BE, IPV6_HLEN, Ipv6Hdr, words6},
    maps::count_drop,
    transmit,
};

const IPPROTO_IPV6: u8 = 41;

/// The outer source for a flow of hash `h`: `tun_src` with its low
/// `tun_src_bits` bits (at most 16) taken from the hash, as for IPv4.
#[inline(always)]
pub fn source(vip6: &VipMeta6, h: u32) -> Addr6 {
    let bits = if vip6.meta.tun_src_bits > 16 {
        16
    } else {
        vip6.meta.tun_src_bits as u32
    };
    let mut a = vip6.tun_src;
    if bits > 0 {
        let mask = (1u32 << bits) - 1;
        a[3] = (u32::from_be(a[3]) & !mask | h & mask).to_be();
    }
    a
}

/// What the outer header copies from the inner one, read before the head
/// moves.
#[derive(Copy, Clone)]
pub struct Inner {
    pub vtc_flow: [u8; 4],
    /// Network order.
    pub payload_len: u16,
}

/// Wraps the packet in an outer IPv6 header from `f.rw_src_addr` to the
/// backend. Traffic class and flow label are copied from the inner header
/// (RFC 6438 lets a tunnel keep the client's per-flow label, which routers
/// and NICs hash on); the inner packet is untouched.
#[inline(always)]
pub fn encap(ctx: &XdpContext, f: &Flow6, vip: &VipMeta, inner: Inner) -> u32 {
    let inner_len = u16::from_be(inner.payload_len) as u32 + IPV6_HLEN as u32;
    if inner_len + IPV6_HLEN as u32 > vip.mtu as u32 {
        count_drop(vip.id, DropReason::TunTooBig);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: growing the head by 40 bytes; on failure nothing moved.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_HLEN as i32)) } != 0 {
        count_drop(vip.id, DropReason::TunTooBig);
        return xdp_action::XDP_DROP;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(start, end, 0),
        ptr_at::<Ipv6Hdr>(start, end, ETH_HLEN),
    ) else {
        return xdp_action::XDP_DROP;
    };
    crate::rewrite::set_eth_macs(eth, &f.peer_mac, &f.local_mac);
    // SAFETY: both pointers were bounds-checked just above.
    unsafe {
        (*eth).ether_type = ETH_P_IPV6_BE;
        *ip = Ipv6Hdr {
            vtc_flow: inner.vtc_flow,
            payload_len: (inner_len as u16).to_be(),
            next_hdr: IPPROTO_IPV6,
            hop_limit: 64,
            src: words6(&f.rw_src_addr),
            dst: words6(&f.rw_dst_addr),
        };
    }
    transmit(ctx, f.ifindex)
}

/// Backend side: an IPv6-in-IPv6 packet loses its outer header and goes up
/// the stack as the client sent it. Everything else passes untouched.
#[inline(always)]
pub fn decap(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let (Some(eth), Some(outer)) = (
        ptr_at::<EthHdr>(start, end, 0),
        ptr_at::<Ipv6Hdr>(start, end, ETH_HLEN),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: each pointer is bounds-checked by `ptr_at` before use.
    let (e, o) = unsafe { (*eth, *outer) };
    if e.ether_type != ETH_P_IPV6_BE
        || o.vtc_flow[0] >> 4 != 6
        || o.next_hdr != IPPROTO_IPV6
        || ptr_at::<Ipv6Hdr>(start, end, ETH_HLEN + IPV6_HLEN).is_none()
    {
        return xdp_action::XDP_PASS;
    }
    // The Ethernet header moves forward over the outer header; the regions
    // are 40 bytes apart, so they do not overlap.
    let Some(new_eth) = ptr_at::<EthHdr>(start, end, IPV6_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    unsafe { *new_eth = e };
    // SAFETY: shrinking the head by the 40 bytes just freed.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV6_HLEN as i32) } != 0 {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}
