//! IPv6 NAT rewrites. IPv6 has no header checksum; the TCP/UDP checksum
//! covers a pseudo-header with both 128-bit addresses, so it follows every
//! address and port change.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_ebpf::{
    abi::{Addr6, FLOW_REPLY, Flow6, FlowKey6, IPPROTO_TCP, IPPROTO_UDP},
    csum,
};

use crate::{
    flow6,
    headers::*,
    ipv6::{ETH_P_IPV6_BE, L4_OFF6, Packet6, addr6, words6},
    maps::{FLOWS6, now, stamp},
};

/// Rewrites addresses and ports to the flow's `rw_*` values and updates the
/// L4 checksum incrementally. A UDP checksum of 0 (not valid over IPv6,
/// RFC 8200, but RFC 6935 lets tunnels send it) is left as it came.
#[inline(always)]
pub fn translate(pkt: &Packet6, f: &Flow6) {
    // SAFETY: the pointers were bounds-checked when `pkt` was built.
    unsafe {
        let ip = &mut *pkt.ip;
        let ports = &mut *pkt.ports;
        let l4 = *pkt.csum;
        if !(pkt.udp && l4 == 0) {
            let c = csum::replace16(l4, &addr6(ip.src), &f.rw_src_addr);
            let c = csum::replace16(c, &addr6(ip.dst), &f.rw_dst_addr);
            let c = csum::replace2(c, ports.src, f.rw_src_port);
            let c = csum::replace2(c, ports.dst, f.rw_dst_port);
            *pkt.csum = if pkt.udp { csum::udp_fixup(c) } else { c };
        }
        ip.src = words6(&f.rw_src_addr);
        ip.dst = words6(&f.rw_dst_addr);
        ports.src = f.rw_src_port;
        ports.dst = f.rw_dst_port;
    }
}

const IP6_NEXT: usize = ETH_HLEN + 6;
const IP6_SRC: usize = ETH_HLEN + 8;
const IP6_DST: usize = ETH_HLEN + 24;

#[inline(always)]
fn load6(ctx: &TcContext, off: usize) -> Result<Addr6, i64> {
    Ok([
        ctx.load(off)?,
        ctx.load(off + 4)?,
        ctx.load(off + 8)?,
        ctx.load(off + 12)?,
    ])
}

/// tc egress, IPv6: a packet sent by a local nat backend that matches a
/// reply entry is rewritten to VIP → client (see `rewrite::tc_unnat`).
#[inline(always)]
pub fn tc_unnat(ctx: &TcContext) -> Result<(), i64> {
    if ctx.load::<u16>(12)? != ETH_P_IPV6_BE {
        return Ok(());
    }
    let proto = ctx.load::<u8>(IP6_NEXT)?;
    let (csum_off, mangled0) = match proto {
        IPPROTO_TCP => (L4_OFF6 + TCP_CSUM_OFF, 0),
        IPPROTO_UDP => (L4_OFF6 + UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0 as u64),
        _ => return Ok(()),
    };
    let key = FlowKey6 {
        src_addr: load6(ctx, IP6_SRC)?,
        dst_addr: load6(ctx, IP6_DST)?,
        src_port: ctx.load(L4_OFF6)?,
        dst_port: ctx.load(L4_OFF6 + 2)?,
        proto,
        _pad: [0; 3],
    };
    let Some(f) = FLOWS6.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: a map value pointer stays valid for the program's run.
    let f = unsafe { &mut *f };
    if f.kind != FLOW_REPLY {
        return Ok(());
    }
    stamp(&mut f.last_seen_ns, now());
    if proto == IPPROTO_TCP {
        let flags = ctx.load::<u8>(L4_OFF6 + TCP_FLAGS_OFF)?;
        flow6::observe_answer(f, flags);
        flow6::observe_reply_close(f, flags, proto);
    }
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled0 | 4;
    let (rw_src, rw_dst) = (f.rw_src_addr, f.rw_dst_addr);
    let mut i = 0;
    while i < 4 {
        let (old, new) = (key.src_addr[i], rw_src[i]);
        if old != new {
            ctx.l4_csum_replace(csum_off, old as u64, new as u64, pseudo)?;
            ctx.store(IP6_SRC + 4 * i, &new, 0)?;
        }
        let (old, new) = (key.dst_addr[i], rw_dst[i]);
        if old != new {
            ctx.l4_csum_replace(csum_off, old as u64, new as u64, pseudo)?;
            ctx.store(IP6_DST + 4 * i, &new, 0)?;
        }
        i += 1;
    }
    for (off, old, new) in [
        (L4_OFF6, key.src_port, f.rw_src_port),
        (L4_OFF6 + 2, key.dst_port, f.rw_dst_port),
    ] {
        if old != new {
            ctx.l4_csum_replace(csum_off, old as u64, new as u64, mangled0 | 2)?;
            ctx.store(off, &new, 0)?;
        }
    }
    Ok(())
}
