//! Header rewrites: MACs, NAT, and the checksums that go with them.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_ebpf::{
    abi::{FLOW_REPLY, Flow, FlowKey, IPPROTO_TCP, IPPROTO_UDP},
    csum,
};

use crate::{
    headers::*,
    maps::{FLOWS, now, touch},
};

/// Bounds-checked pointers into one parsed IPv4 TCP/UDP frame.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub ports: *mut Ports,
    /// The L4 checksum field.
    pub csum: *mut u16,
    pub udp: bool,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

/// Rewrites addresses and ports to the flow's `rw_*` values, updating the IP
/// and L4 checksums incrementally (a UDP checksum of 0 means "none" and stays).
#[inline(always)]
pub fn translate(pkt: &Packet, f: &Flow) {
    // SAFETY: the pointers were bounds-checked when `pkt` was built.
    unsafe {
        let ip = &mut *pkt.ip;
        let ports = &mut *pkt.ports;
        let old_src = addr(ip.src);
        let old_dst = addr(ip.dst);
        let c = csum::replace4(ip.check, old_src, f.rw_src_addr);
        ip.check = csum::replace4(c, old_dst, f.rw_dst_addr);
        let l4 = *pkt.csum;
        if !(pkt.udp && l4 == 0) {
            let c = csum::replace4(l4, old_src, f.rw_src_addr);
            let c = csum::replace4(c, old_dst, f.rw_dst_addr);
            let c = csum::replace2(c, ports.src, f.rw_src_port);
            let c = csum::replace2(c, ports.dst, f.rw_dst_port);
            *pkt.csum = if pkt.udp { csum::udp_fixup(c) } else { c };
        }
        ip.src = words(f.rw_src_addr);
        ip.dst = words(f.rw_dst_addr);
        ports.src = f.rw_src_port;
        ports.dst = f.rw_dst_port;
    }
}

/// `copy_nonoverlapping` inlines to word moves; a struct assignment of the
/// arrays compiled to an out-of-line byte loop (EBPF_TOOLCHAIN.md).
#[inline(always)]
pub fn set_macs(pkt: &Packet, dst: &[u8; 6], src: &[u8; 6]) {
    set_eth_macs(pkt.eth, dst, src);
}

/// `set_macs` on a bounds-checked Ethernet header of either family.
#[inline(always)]
pub fn set_eth_macs(eth: *mut EthHdr, dst: &[u8; 6], src: &[u8; 6]) {
    // SAFETY: the caller bounds-checked `eth`; the sources are 6-byte arrays.
    unsafe {
        let eth = &mut *eth;
        core::ptr::copy_nonoverlapping(dst.as_ptr(), eth.dst.as_mut_ptr(), 6);
        core::ptr::copy_nonoverlapping(src.as_ptr(), eth.src.as_mut_ptr(), 6);
    }
}

const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

/// tc egress: a packet sent by a local nat backend that matches a reply entry
/// is rewritten to VIP → client.
#[inline(always)]
pub fn tc_unnat(ctx: &TcContext) -> Result<(), i64> {
    if ctx.load::<u16>(12)? != ETH_P_IP_BE || ctx.load::<u8>(ETH_HLEN)? != 0x45 {
        return Ok(());
    }
    if ctx.load::<u16>(ETH_HLEN + 6)? & IP_FRAG_MASK_BE != 0 {
        return Ok(());
    }
    let proto = ctx.load::<u8>(ETH_HLEN + 9)?;
    let (csum_off, mangled0) = match proto {
        IPPROTO_TCP => (L4_OFF + TCP_CSUM_OFF, 0),
        IPPROTO_UDP => (L4_OFF + UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0 as u64),
        _ => return Ok(()),
    };
    let key = FlowKey {
        src_addr: ctx.load(IP_SRC)?,
        dst_addr: ctx.load(IP_DST)?,
        src_port: ctx.load(L4_OFF)?,
        dst_port: ctx.load(L4_OFF + 2)?,
        proto,
        _pad: [0; 3],
    };
    let Some(f) = FLOWS.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: a map value pointer stays valid for the program's run.
    let f = unsafe { &mut *f };
    if f.kind != FLOW_REPLY {
        return Ok(());
    }
    touch(f, now());
    if proto == IPPROTO_TCP {
        let flags = ctx.load::<u8>(L4_OFF + TCP_FLAGS_OFF)?;
        crate::flow::observe_answer(f, flags);
        crate::flow::observe_reply_close(f, flags, proto);
    }
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled0;
    for (off, old, new) in [
        (IP_SRC, key.src_addr, f.rw_src_addr),
        (IP_DST, key.dst_addr, f.rw_dst_addr),
    ] {
        if old != new {
            ctx.l4_csum_replace(csum_off, old as u64, new as u64, pseudo | 4)?;
            ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 4)?;
            ctx.store(off, &new, 0)?;
        }
    }
    for (off, old, new) in [
        (L4_OFF, key.src_port, f.rw_src_port),
        (L4_OFF + 2, key.dst_port, f.rw_dst_port),
    ] {
        if old != new {
            ctx.l4_csum_replace(csum_off, old as u64, new as u64, mangled0 | 2)?;
            ctx.store(off, &new, 0)?;
        }
    }
    Ok(())
}
