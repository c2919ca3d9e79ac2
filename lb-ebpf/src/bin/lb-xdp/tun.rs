//! tun mode: IPIP encapsulation towards the backend, and the backend-side
//! decapsulation helper for hosts without an IPIP device.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_ebpf::{
    abi::{DropReason, Flow, FlowKey, VipMeta},
    hash::flow_hash,
};

use crate::{headers::*, maps::count_drop};

const IPPROTO_IPIP: u8 = 4;
/// `frag_off` DF bit in network order: copied from the inner packet so path
/// MTU discovery keeps working through the tunnel.
const IP_DF_BE: u16 = 0x4000u16.to_be();

/// The outer source for a flow: `tun_src` with its low `tun_src_bits` bits
/// taken from the flow hash. Fixed per flow, spread across flows.
#[inline(always)]
pub fn source(vip: &VipMeta, key: &FlowKey) -> u32 {
    let bits = if vip.tun_src_bits > 16 {
        16
    } else {
        vip.tun_src_bits as u32
    };
    if bits == 0 {
        return vip.tun_src;
    }
    let mask = (1u32 << bits) - 1;
    let h = flow_hash(
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    ) & mask;
    (u32::from_be(vip.tun_src) & !mask | h).to_be()
}

/// Internet checksum of a 20-byte IPv4 header at `ip` (its `check` zero).
#[inline(always)]
fn header_checksum(ip: *const [u16; 10]) -> u16 {
    // SAFETY: the caller bounds-checked 20 bytes at `ip`.
    let w = unsafe { *ip };
    let mut s: u32 = 0;
    let mut i = 0;
    while i < 10 {
        s += w[i] as u32;
        i += 1;
    }
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Wraps the packet in an outer IPv4 header from `f.rw_src_addr` to the
/// backend (`f.rw_dst_addr`) and sends it to the backend's next hop. The
/// inner packet is untouched. `inner` is the inner IPv4 header.
#[inline(always)]
pub fn encap(ctx: &XdpContext, f: &Flow, vip: &VipMeta, inner: &Ipv4Hdr, ifindex: u32) -> u32 {
    let outer_len = u16::from_be(inner.tot_len) as u32 + IPV4_HLEN as u32;
    if outer_len > vip.mtu as u32 {
        count_drop(vip.id, DropReason::TunTooBig);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: growing the head by 20 bytes; on failure nothing moved.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HLEN as i32)) } != 0 {
        count_drop(vip.id, DropReason::TunTooBig);
        return xdp_action::XDP_DROP;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(start, end, 0),
        ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN),
    ) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: both pointers were bounds-checked just above.
    unsafe {
        core::ptr::copy_nonoverlapping(f.peer_mac.as_ptr(), (*eth).dst.as_mut_ptr(), 6);
        core::ptr::copy_nonoverlapping(f.local_mac.as_ptr(), (*eth).src.as_mut_ptr(), 6);
        (*eth).ether_type = ETH_P_IP_BE;
        *ip = Ipv4Hdr {
            version_ihl: 0x45,
            tos: inner.tos,
            tot_len: (outer_len as u16).to_be(),
            id: 0,
            frag_off: inner.frag_off & IP_DF_BE,
            ttl: 64,
            proto: IPPROTO_IPIP,
            check: 0,
            src: words(f.rw_src_addr),
            dst: words(f.rw_dst_addr),
        };
        (*ip).check = header_checksum(ip as *const [u16; 10]);
    }
    if ifindex == 0 || ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) as u32 }
    }
}

/// Backend side: an IPIP packet loses its outer header and goes up the stack
/// as the client sent it (to the VIP, which the backend holds on a loopback,
/// as in dr). Everything else passes untouched. Fragmented outer packets are
/// left to the kernel.
#[inline(always)]
pub fn decap(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: each pointer is bounds-checked by `ptr_at` before use.
    let e = unsafe { *eth };
    if e.ether_type != ETH_P_IP_BE {
        return xdp_action::XDP_PASS;
    }
    let Some(outer) = ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    let o = unsafe { *outer };
    if o.version_ihl != 0x45 || o.proto != IPPROTO_IPIP || o.frag_off & IP_FRAG_MASK_BE != 0 {
        return xdp_action::XDP_PASS;
    }
    if ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN + IPV4_HLEN).is_none() {
        return xdp_action::XDP_PASS;
    }
    // The Ethernet header moves forward over the outer IP header; the two
    // 14-byte regions are 20 bytes apart, so they do not overlap.
    let Some(new_eth) = ptr_at::<EthHdr>(start, end, IPV4_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    unsafe { *new_eth = e };
    // SAFETY: shrinking the head by the 20 bytes just freed.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV4_HLEN as i32) } != 0 {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}
