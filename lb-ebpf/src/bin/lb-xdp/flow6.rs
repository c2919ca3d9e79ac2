//! The IPv6 connection table (`FLOWS6`) and new IPv6 flows: `flow.rs` with
//! 128-bit addresses. The scheduler (`sched::pick`), its tables, cursors and
//! active counts, membership, rate guard and counters are shared with IPv4.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_ebpf::{
    abi::*,
    hash::{client_hash6, flow_hash6},
};

use crate::{
    flow::{count_answer, is_member, over_new_flow_cap, timeout_ns},
    headers::*,
    ipv6::Packet6,
    maps::*,
    sched::{self, Hashes},
};

/// As in `flow.rs`.
const NAT_PORT_TRIES: u32 = 16;
const CLOSED_PORT_REUSE_NS: u64 = 2_000_000_000;

#[inline(always)]
fn hash(key: &FlowKey6) -> u32 {
    flow_hash6(
        &key.src_addr,
        &key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    )
}

/// A FIN or RST marks the flow as ending. True when this packet ended it
/// (the flow was not closing before).
#[inline(always)]
fn observe_close(flags: &mut u8, tcp_flags: u8) -> bool {
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 && *flags & FLOW_CLOSING == 0 {
        *flags |= FLOW_CLOSING;
        return true;
    }
    false
}

/// A FIN or RST from the client: the flow leaves its backend's active
/// flows (lc/wlc), as in `flow.rs`.
#[inline(always)]
fn observe_forward_close(f: &mut Flow6, tcp_flags: u8) {
    if observe_close(&mut f.flags, tcp_flags) {
        active_add(f.backend, -1);
    }
}

/// A FIN or RST from a nat backend (on its reply entry) closes the forward
/// entry too, so the connection leaves the active flows once, whichever
/// side closed first.
#[inline(always)]
pub fn observe_reply_close(f: &mut Flow6, tcp_flags: u8, proto: u8) {
    if !observe_close(&mut f.flags, tcp_flags) {
        return;
    }
    if let Some(fw) = FLOWS6.get_ptr_mut(other_key(f, proto)) {
        // SAFETY: a map value pointer stays valid for the program's run.
        let fw = unsafe { &mut *fw };
        if fw.kind == FLOW_FORWARD {
            observe_forward_close(fw, TCP_RST);
        }
    }
}

/// Passive health: the backend's first answer on a reply entry.
#[inline(always)]
pub fn observe_answer(f: &mut Flow6, tcp_flags: u8) {
    if f.flags & FLOW_ANSWERED != 0 || tcp_flags == 0 {
        return;
    }
    f.flags |= FLOW_ANSWERED;
    count_answer(f.backend, tcp_flags);
}

/// The key of the other direction's entry: a forward entry's reply key, or
/// a reply entry's forward key (the rewrite swaps source and destination).
#[inline(always)]
fn other_key(f: &Flow6, proto: u8) -> FlowKey6 {
    FlowKey6 {
        src_addr: f.rw_dst_addr,
        dst_addr: f.rw_src_addr,
        src_port: f.rw_dst_port,
        dst_port: f.rw_src_port,
        proto,
        _pad: [0; 3],
    }
}

/// Whether `reply` is the reply entry of the forward flow `key`. Word by
/// word: an array comparison may become a memcmp call, which BPF has not.
#[inline(always)]
fn replies_to(reply: &Flow6, key: &FlowKey6) -> bool {
    let same = |a: &Addr6, b: &Addr6| a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
    reply.kind == FLOW_REPLY
        && same(&reply.rw_dst_addr, &key.src_addr)
        && same(&reply.rw_src_addr, &key.dst_addr)
        && reply.rw_dst_port == key.src_port
        && reply.rw_src_port == key.dst_port
}

/// The flow's entry if it is live, else a new one from the VIP's table.
/// Returns a pointer to the forward entry (in `FLOWS6`, or in `SCRATCH6`
/// when the new flow was not recorded) and whether it is new; either stays
/// valid for the program's run.
#[inline(always)]
pub fn lookup_or_schedule(
    key: &FlowKey6,
    vip6: &VipMeta6,
    pkt: &Packet6,
    ifindex: u32,
    now: u64,
) -> Result<(*const Flow6, bool), DropReason> {
    let vip = &vip6.meta;
    // The entry this flow replaces: its backend, and whether it still
    // counted as active (see `flow::lookup_or_schedule`).
    let mut stale: Option<(u32, bool)> = None;
    if let Some(p) = FLOWS6.get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program's run.
        let f = unsafe { &mut *p };
        let closing = f.flags & FLOW_CLOSING != 0;
        let live = now.wrapping_sub(f.last_seen_ns) <= timeout_ns(vip, key.proto, closing);
        let reopened = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && (closing || !is_member(vip.id, f.backend));
        if f.kind == FLOW_FORWARD && f.vip == vip.id && !reopened && live {
            stamp(&mut f.last_seen_ns, now);
            observe_forward_close(f, pkt.tcp_flags);
            return Ok((p, false));
        }
        stale = Some((f.backend, f.kind == FLOW_FORWARD && !closing && live));
        // Only its own reply entry: see `flow::lookup_or_schedule`.
        if f.kind == FLOW_FORWARD && vip.mode == MODE_NAT {
            let reply = other_key(f, key.proto);
            if unsafe { FLOWS6.get(reply) }.is_some_and(|r| replies_to(r, key)) {
                let _ = FLOWS6.remove(reply);
            }
        }
    }
    let (flow, pinned) = schedule(key, vip6, pkt, ifindex, now)?;
    if let Some((backend, counted)) = stale {
        if counted {
            active_add(backend, -1);
        }
        // An unpinned flow must not meet the old entry on its next packet.
        if !pinned {
            let _ = FLOWS6.remove(key);
        }
    }
    Ok((flow, true))
}

/// Builds the new flow in `SCRATCH6[0]` (and nat's reply entry in
/// `SCRATCH6[1]`) with the scheduler's backend and records it unless the
/// SYN-flood guard says no. Returns the entry and whether it was recorded.
#[inline(always)]
fn schedule(
    key: &FlowKey6,
    vip6: &VipMeta6,
    pkt: &Packet6,
    ifindex: u32,
    now: u64,
) -> Result<(*const Flow6, bool), DropReason> {
    let vip = &vip6.meta;
    // As for IPv4: nat flows need their entries, and the scheduler must
    // know before it picks whether the flow will be recorded.
    let unpinned = vip.mode != MODE_NAT && over_new_flow_cap(now);
    let h = Hashes {
        flow: hash(key),
        client: client_hash6(&key.src_addr),
    };
    let id = if vip.persist_timeout_s > 0 {
        persistent_pick(key, vip6, &h, unpinned, now)?
    } else {
        sched::pick(vip.id, &h, unpinned)?
    };
    let be = BACKENDS.get(id).ok_or(DropReason::BadBackend)?;
    let be_addr = &BACKENDS6.get(id).ok_or(DropReason::BadBackend)?.addr;
    let (Some(fp), Some(rp)) = (SCRATCH6.get_ptr_mut(0), SCRATCH6.get_ptr_mut(1)) else {
        return Err(DropReason::BadBackend);
    };
    // SAFETY: per-CPU scratch values, valid for this run, used by no one
    // else meanwhile.
    let (flow, reply) = unsafe { (&mut *fp, &mut *rp) };
    flow.last_seen_ns = now;
    flow.backend = id;
    flow.vip = vip.id;
    flow.rw_src_addr = [0; 4];
    flow.rw_dst_addr = [0; 4];
    flow.rw_src_port = 0;
    flow.rw_dst_port = 0;
    flow.peer_mac = be.mac;
    flow.local_mac = be.src_mac;
    flow.ifindex = be.ifindex;
    flow.kind = FLOW_FORWARD;
    flow.flags = be.flags;
    flow._pad = [0; 2];
    if vip.mode == MODE_TUN {
        flow.rw_dst_addr = *be_addr;
        flow.rw_src_addr = crate::tun6::source(vip6, h.flow);
    }
    if vip.mode == MODE_NAT {
        flow.rw_dst_addr = *be_addr;
        flow.rw_dst_port = be.port;
        // SAFETY: `pkt.eth` was bounds-checked by the caller.
        let eth = unsafe { &*pkt.eth };
        reply.last_seen_ns = now;
        reply.backend = id;
        reply.vip = vip.id;
        reply.rw_src_addr = key.dst_addr;
        reply.rw_dst_addr = key.src_addr;
        reply.rw_src_port = key.dst_port;
        reply.rw_dst_port = key.src_port;
        reply.peer_mac = eth.src;
        reply.local_mac = eth.dst;
        reply.ifindex = ifindex;
        reply.kind = FLOW_REPLY;
        reply.flags = 0;
        reply._pad = [0; 2];
        if be.flags & BACKEND_LOCAL != 0 {
            flow.rw_src_addr = key.src_addr;
            flow.rw_src_port = key.src_port;
            let rkey = FlowKey6 {
                src_addr: *be_addr,
                dst_addr: key.src_addr,
                src_port: be.port,
                dst_port: key.src_port,
                proto: key.proto,
                _pad: [0; 3],
            };
            // By reference: a by-value entry would be copied to the stack.
            let reply: &Flow6 = reply;
            FLOWS6
                .insert(rkey, reply, 0)
                .map_err(|_| DropReason::NatPortsExhausted)?;
        } else {
            flow.rw_src_addr = vip6.snat_addr;
            flow.rw_src_port = alloc_port(key, vip6, be_addr, be.port, reply, now)?;
        }
    }
    observe_close(&mut flow.flags, pkt.tcp_flags);
    if unpinned {
        count_unpinned(vip.id);
        return Ok((fp, false));
    }
    let flow: &Flow6 = flow;
    // As for IPv4, only a kernel error makes this fail.
    let pinned = FLOWS6.insert(key, flow, 0).is_ok();
    if pinned && flow.flags & FLOW_CLOSING == 0 {
        active_add(id, 1);
    }
    Ok((fp, pinned))
}

/// `flow::persistent_pick` for IPv6.
#[inline(always)]
fn persistent_pick(
    key: &FlowKey6,
    vip6: &VipMeta6,
    h: &Hashes,
    stateless: bool,
    now: u64,
) -> Result<u32, DropReason> {
    let vip = &vip6.meta;
    let m = &vip6.persist_mask;
    let c = &key.src_addr;
    let pkey = PersistKey6 {
        vip: vip.id,
        client: [c[0] & m[0], c[1] & m[1], c[2] & m[2], c[3] & m[3]],
    };
    let timeout = vip.persist_timeout_s as u64 * 1_000_000_000;
    if let Some(t) = PERSIST6.get_ptr_mut(pkey) {
        // SAFETY: a map value pointer stays valid for the program's run.
        let t = unsafe { &mut *t };
        if now.wrapping_sub(t.last_seen_ns) <= timeout && is_member(vip.id, t.backend) {
            t.last_seen_ns = now;
            return Ok(t.backend);
        }
    }
    let id = sched::pick(vip.id, h, stateless)?;
    let t = Persist {
        last_seen_ns: now,
        backend: id,
        _pad: 0,
    };
    let _ = PERSIST6.insert(pkey, t, 0);
    Ok(id)
}

/// `flow::alloc_port` for IPv6.
#[inline(always)]
fn alloc_port(
    key: &FlowKey6,
    vip6: &VipMeta6,
    be_addr: &Addr6,
    be_port: u16,
    reply: &Flow6,
    now: u64,
) -> Result<u16, DropReason> {
    let vip = &vip6.meta;
    let min = vip.snat_port_min as u32;
    let max = vip.snat_port_max as u32;
    if max < min {
        return Err(DropReason::NatPortsExhausted);
    }
    let range = max - min + 1;
    let h = hash(key).rotate_right(16);
    let timeout = timeout_ns(vip, key.proto, false);
    let mut i = 0;
    while i < NAT_PORT_TRIES {
        let port = ((min + h.wrapping_add(i.wrapping_mul(7919)) % range) as u16).to_be();
        let rkey = FlowKey6 {
            src_addr: *be_addr,
            dst_addr: vip6.snat_addr,
            src_port: be_port,
            dst_port: port,
            proto: key.proto,
            _pad: [0; 3],
        };
        match unsafe { FLOWS6.get(rkey) } {
            None => {
                if FLOWS6.insert(rkey, reply, BPF_NOEXIST as u64).is_ok() {
                    return Ok(port);
                }
            }
            Some(old) => {
                if is_dead(old, key.proto, now, timeout) && FLOWS6.insert(rkey, reply, 0).is_ok() {
                    return Ok(port);
                }
            }
        }
        i += 1;
    }
    Err(DropReason::NatPortsExhausted)
}

/// `flow::is_dead` for IPv6.
#[inline(always)]
fn is_dead(reply: &Flow6, proto: u8, now: u64, timeout: u64) -> bool {
    let idle = now.wrapping_sub(reply.last_seen_ns);
    if idle <= CLOSED_PORT_REUSE_NS {
        return false;
    }
    let fwd = unsafe { FLOWS6.get(other_key(reply, proto)) };
    let closed =
        reply.flags & FLOW_CLOSING != 0 || fwd.is_some_and(|f| f.flags & FLOW_CLOSING != 0);
    let limit = if closed {
        CLOSED_PORT_REUSE_NS
    } else {
        timeout
    };
    idle > limit && fwd.is_none_or(|f| now.wrapping_sub(f.last_seen_ns) > limit)
}
