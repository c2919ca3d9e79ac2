//! ICMPv6 to IPv6 VIP addresses: echo requests are answered by the LB, as
//! for IPv4. Everything else (neighbour discovery above all) passes.

use aya_ebpf::bindings::xdp_action;
use lb_ebpf::{abi::Addr6, csum};

use crate::{
    drop_unmatched,
    headers::*,
    icmp::IcmpHdr,
    ipv6::{Ipv6Hdr, L4_OFF6},
    maps::VIP_ADDRS6,
};

const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

#[inline(always)]
pub fn handle(start: usize, end: usize, dst: &Addr6) -> u32 {
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
