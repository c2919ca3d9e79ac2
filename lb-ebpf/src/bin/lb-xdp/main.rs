//! lb's datapath: an XDP load balancer with a tc egress helper.
//!
//! Per packet (IPv4 or IPv6 TCP/UDP): find the VIP, keep an established flow
//! on its backend (connection table), else pick one with the VIP's scheduler
//! from its live table and remember it; then forward in `dr` (MAC rewrite),
//! `nat` (address and port translation, replies translated back) or `tun`
//! (encapsulation) mode. Everything that is not addressed to a VIP, or a
//! reply of a nat flow, goes to the kernel untouched.
//!
//! Module per concern: `headers` (wire formats, bounds), `maps` (state),
//! `flow` (connection table), `sched` (the scheduler's pick for a new flow,
//! both families), `rewrite` (NAT and checksums), `tun`, `icmp`; IPv6 has the
//! same concerns in the `*6` modules, with its own VIP, backend-address and
//! flow maps beside the IPv4 ones.
#![no_std]
#![no_main]
// `atomic_xadd`: the only atomic add the BPF target exposes (maps::active_add).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod flow;
mod flow6;
mod headers;
mod icmp;
mod icmp6;
mod ipv6;
mod maps;
mod rewrite;
mod rewrite6;
mod sched;
mod tun;
mod tun6;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use headers::*;
use lb_ebpf::abi::{
    BACKEND_LOCAL, DropReason, FLOW_REPLY, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    MODE_NAT, MODE_TUN, VipKey,
};
use maps::*;

/// Each family's path is its own BPF function: inlined together they
/// need more than the 512-byte stack of one frame, and as siblings only
/// the larger one counts against the limit.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    match unsafe { (*eth).ether_type } {
        ETH_P_IP_BE => ipv4(ctx),
        ipv6::ETH_P_IPV6_BE => ipv6::handle(ctx),
        _ => xdp_action::XDP_PASS,
    }
}

/// `lb_xdp` for a frame whose EtherType is IPv4.
#[inline(never)]
fn ipv4(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN) else {
        return drop_unmatched(DropReason::Malformed);
    };
    let iph = unsafe { *ip };
    let dst = addr(iph.dst);
    if iph.version_ihl != 0x45 {
        let reason = if iph.version_ihl >> 4 == 4 && iph.version_ihl & 0xf > 5 {
            DropReason::IpOptions
        } else {
            DropReason::Malformed
        };
        return policy_drop(dst, reason);
    }
    if iph.frag_off & IP_FRAG_MASK_BE != 0 {
        return policy_drop(dst, DropReason::Fragment);
    }
    if iph.proto == IPPROTO_ICMP {
        return icmp::handle(&ctx, start, end, &iph);
    }
    let l4_min = match iph.proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        _ => return xdp_action::XDP_PASS,
    };
    let tot_len = u16::from_be(iph.tot_len) as usize;
    if tot_len < IPV4_HLEN + l4_min || ETH_HLEN + tot_len > end - start {
        return policy_drop(dst, DropReason::Malformed);
    }
    let Some(ports) = ptr_at::<Ports>(start, end, L4_OFF) else {
        return policy_drop(dst, DropReason::Malformed);
    };
    // The L4 header's own length must fit the IP payload: a TCP data offset
    // below 5 words or past the segment, or a UDP length below 8 or past the
    // datagram, is a broken packet the backend would drop anyway.
    let payload = tot_len - IPV4_HLEN;
    let l4_ok = match iph.proto {
        IPPROTO_TCP => ptr_at::<u8>(start, end, L4_OFF + TCP_DOFF_OFF).is_some_and(|d| {
            let doff = (unsafe { *d } >> 4) as usize * 4;
            doff >= TCP_HLEN && doff <= payload
        }),
        _ => ptr_at::<u16>(start, end, L4_OFF + UDP_LEN_OFF).is_some_and(|l| {
            let len = u16::from_be(unsafe { *l }) as usize;
            len >= UDP_HLEN && len <= payload
        }),
    };
    if !l4_ok {
        return policy_drop(dst, DropReason::Malformed);
    }
    let csum = match iph.proto {
        IPPROTO_TCP => ptr_at::<u16>(start, end, L4_OFF + TCP_CSUM_OFF),
        _ => ptr_at::<u16>(start, end, L4_OFF + UDP_CSUM_OFF),
    };
    let Some(csum) = csum else {
        return policy_drop(dst, DropReason::Malformed);
    };
    let tcp_flags = match ptr_at::<u8>(start, end, L4_OFF + TCP_FLAGS_OFF) {
        Some(f) if iph.proto == IPPROTO_TCP => unsafe { *f },
        _ => 0,
    };
    let p = unsafe { *ports };
    let key = FlowKey {
        src_addr: addr(iph.src),
        dst_addr: dst,
        src_port: p.src,
        dst_port: p.dst,
        proto: iph.proto,
        _pad: [0; 3],
    };
    let pkt = rewrite::Packet {
        eth,
        ip,
        ports,
        csum,
        udp: iph.proto == IPPROTO_UDP,
        tcp_flags,
    };
    let vip_key = VipKey {
        addr: dst,
        port: p.dst,
        proto: iph.proto,
        _pad: 0,
    };
    match unsafe { VIPS.get(vip_key) } {
        Some(vip) => to_vip(&ctx, &pkt, &key, vip, &iph, (end - start) as u64),
        None => from_backend(&ctx, &pkt, &key),
    }
}

/// A packet for a VIP: schedule (or find) its flow and forward it.
#[inline(always)]
fn to_vip(
    ctx: &XdpContext,
    pkt: &rewrite::Packet,
    key: &FlowKey,
    vip: &lb_ebpf::abi::VipMeta,
    iph: &Ipv4Hdr,
    bytes: u64,
) -> u32 {
    let now = now();
    let (flow, new) =
        match flow::lookup_or_schedule(key, vip, pkt, ctx.ingress_ifindex() as u32, now) {
            Ok(f) => f,
            Err(reason) => {
                count_drop(vip.id, reason);
                return xdp_action::XDP_DROP;
            }
        };
    count(&VIP_STATS, vip.id, bytes, new);
    count(&BACKEND_STATS, flow.backend, bytes, new);
    if new && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        flow::observe_syn(flow.backend);
    }
    if vip.mode == MODE_TUN {
        return tun::encap(ctx, &flow, vip, iph, flow.ifindex);
    }
    if vip.mode == MODE_NAT {
        rewrite::translate(pkt, &flow);
        if flow.flags & BACKEND_LOCAL != 0 {
            // The backend is this node: deliver to the local stack; the reply
            // is translated back by `lb_tc_egress`.
            return xdp_action::XDP_PASS;
        }
    }
    rewrite::set_macs(pkt, &flow.peer_mac, &flow.local_mac);
    transmit(ctx, flow.ifindex)
}

/// Not for a VIP: a reply from a nat backend to one of our SNAT addresses is
/// translated back to VIP → client; anything else goes to the kernel.
#[inline(always)]
fn from_backend(ctx: &XdpContext, pkt: &rewrite::Packet, key: &FlowKey) -> u32 {
    if unsafe { SNAT_ADDRS.get(key.dst_addr) }.is_none() {
        return xdp_action::XDP_PASS;
    }
    let Some(f) = FLOWS.get_ptr_mut(key) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a map value pointer stays valid for the program's run.
    let f = unsafe { &mut *f };
    if f.kind != FLOW_REPLY {
        return xdp_action::XDP_PASS;
    }
    touch(f, now());
    flow::observe_answer(f, pkt.tcp_flags);
    flow::observe_reply_close(f, pkt.tcp_flags, key.proto);
    rewrite::translate(pkt, f);
    rewrite::set_macs(pkt, &f.peer_mac, &f.local_mac);
    transmit(ctx, f.ifindex)
}

#[inline(always)]
pub(crate) fn transmit(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == 0 || ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}

/// Fragments, IP options and broken headers are dropped when addressed to a
/// VIP's address (they must not be forwarded half-understood) and passed to
/// the kernel otherwise (it is not our traffic).
#[inline(always)]
fn policy_drop(dst: u32, reason: DropReason) -> u32 {
    if unsafe { VIP_ADDRS.get(dst) }.is_some() {
        drop_unmatched(reason)
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
pub(crate) fn drop_unmatched(reason: DropReason) -> u32 {
    count_drop(unsafe { core::ptr::read_volatile(&MAX_VIPS) }, reason);
    xdp_action::XDP_DROP
}

/// Translates replies of flows whose backend is this node (nat mode).
///
/// XDP runs on ingress only, and a reply generated by a local socket never
/// passes an ingress hook on its way out, so XDP cannot rewrite it: this tc
/// egress program does, on the same interface. It uses the skb helpers for
/// checksums because locally built packets usually carry CHECKSUM_PARTIAL
/// (only the pseudo-header sum is in the packet), which the helpers handle.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let _ = match ctx.load::<u16>(12) {
        Ok(ipv6::ETH_P_IPV6_BE) => rewrite6::tc_unnat(&ctx),
        _ => rewrite::tc_unnat(&ctx),
    };
    TC_ACT_OK
}

/// Backend-side helper for tun mode (see `tun::decap`, `tun6::decap`).
#[xdp]
pub fn lb_xdp_decap(ctx: XdpContext) -> u32 {
    let v6 = ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0)
        .is_some_and(|e| unsafe { (*e).ether_type } == ipv6::ETH_P_IPV6_BE);
    if v6 {
        tun6::decap(&ctx)
    } else {
        tun::decap(&ctx)
    }
}

/// The baseline for benchmarks, and the peer program native-mode veth needs.
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
