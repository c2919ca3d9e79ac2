//! The connection table: established flows, new flows recorded with the
//! scheduler's pick (`sched`), active flow counts, SNAT ports.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_ebpf::{
    abi::*,
    hash::{client_hash, flow_hash},
};

use crate::{
    headers::*,
    maps::*,
    rewrite::Packet,
    sched::{self, Hashes},
};

/// SNAT ports tried for a new nat flow before giving up.
const NAT_PORT_TRIES: u32 = 16;

/// A SNAT port whose connection has ended (FIN or RST seen) is free again
/// after this much silence, instead of the whole idle timeout: short
/// connections would otherwise hold every port for 900 s and exhaust the
/// range (`lb-bench-e2e`, nat with Connection: close). Late retransmits of a
/// closed connection do not outlive it.
const CLOSED_PORT_REUSE_NS: u64 = 2_000_000_000;

#[inline(always)]
pub fn timeout_ns(vip: &VipMeta, proto: u8, closing: bool) -> u64 {
    let s = if proto != IPPROTO_TCP {
        vip.udp_timeout_s
    } else if closing && vip.tcp_timeout_s > CLOSING_TIMEOUT_S {
        CLOSING_TIMEOUT_S
    } else {
        vip.tcp_timeout_s
    };
    s as u64 * 1_000_000_000
}

/// A FIN or RST marks the flow as ending. True when this packet ended it
/// (the flow was not closing before).
#[inline(always)]
pub fn observe_close(f: &mut Flow, tcp_flags: u8) -> bool {
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 && f.flags & FLOW_CLOSING == 0 {
        f.flags |= FLOW_CLOSING;
        return true;
    }
    false
}

/// A FIN or RST from the client ends the connection: it leaves its
/// backend's active flows.
#[inline(always)]
fn observe_forward_close(f: &mut Flow, tcp_flags: u8) {
    if observe_close(f, tcp_flags) {
        active_add(f.backend, -1);
    }
}

/// A FIN or RST from a nat backend (on its reply entry) ends the connection
/// too: the forward entry is marked closing, so it leaves the active flows
/// once, whichever side closed first.
#[inline(always)]
pub fn observe_reply_close(f: &mut Flow, tcp_flags: u8, proto: u8) {
    if !observe_close(f, tcp_flags) {
        return;
    }
    let fwd = FlowKey {
        src_addr: f.rw_dst_addr,
        dst_addr: f.rw_src_addr,
        src_port: f.rw_dst_port,
        dst_port: f.rw_src_port,
        proto,
        _pad: [0; 3],
    };
    if let Some(fw) = FLOWS.get_ptr_mut(fwd) {
        // SAFETY: a map value pointer stays valid for the program's run.
        let fw = unsafe { &mut *fw };
        if fw.kind == FLOW_FORWARD {
            // Closed as if by the client's own RST: once, and counted out.
            observe_forward_close(fw, TCP_RST);
        }
    }
}

/// The flow's entry if it is live, else a new one from the VIP's table.
/// Returns the forward entry and whether it is new.
#[inline(always)]
pub fn lookup_or_schedule(
    key: &FlowKey,
    vip: &VipMeta,
    pkt: &Packet,
    ifindex: u32,
    now: u64,
) -> Result<(Flow, bool), DropReason> {
    // The entry this flow replaces: its backend, and whether it still
    // counted as active (an expired one left the count at the last recount).
    let mut stale: Option<(u32, bool)> = None;
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program's run.
        let f = unsafe { &mut *f };
        let closing = f.flags & FLOW_CLOSING != 0;
        let live = now.wrapping_sub(f.last_seen_ns) <= timeout_ns(vip, key.proto, closing);
        // A fresh SYN on the 5-tuple of an ended connection, or of one whose
        // backend has left the table (refused, down, drained: its end was
        // not seen, e.g. a backend RST in dr mode), is a new connection.
        let reopened = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && (closing || !is_member(vip.id, f.backend));
        if f.kind == FLOW_FORWARD && f.vip == vip.id && !reopened && live {
            touch(f, now);
            observe_forward_close(f, pkt.tcp_flags);
            return Ok((*f, false));
        }
        stale = Some((f.backend, f.kind == FLOW_FORWARD && !closing && live));
        // The old connection's reply entry (nat) goes with it, or its SNAT
        // port would stay taken; but only if it is still this connection's:
        // an ended connection's port is handed on after
        // `CLOSED_PORT_REUSE_NS`, and removing the new owner's entry would
        // cut that live connection's replies off.
        if f.kind == FLOW_FORWARD && vip.mode == MODE_NAT {
            let reply = FlowKey {
                src_addr: f.rw_dst_addr,
                dst_addr: f.rw_src_addr,
                src_port: f.rw_dst_port,
                dst_port: f.rw_src_port,
                proto: key.proto,
                _pad: [0; 3],
            };
            if unsafe { FLOWS.get(reply) }.is_some_and(|r| replies_to(r, key)) {
                let _ = FLOWS.remove(reply);
            }
        }
    }
    let (flow, pinned) = schedule(key, vip, pkt, ifindex, now)?;
    if let Some((backend, counted)) = stale {
        if counted {
            active_add(backend, -1);
        }
        // An unpinned flow must not meet the old entry on its next packet.
        if !pinned {
            let _ = FLOWS.remove(key);
        }
    }
    Ok((flow, true))
}

/// A new flow: its backend from the scheduler, its entry recorded unless
/// the SYN-flood guard says no. Returns the entry and whether it was
/// recorded.
#[inline(always)]
fn schedule(
    key: &FlowKey,
    vip: &VipMeta,
    pkt: &Packet,
    ifindex: u32,
    now: u64,
) -> Result<(Flow, bool), DropReason> {
    // nat flows need their entries (the reply is matched by them), so the
    // guard only applies to modes that can forward without state.
    let unpinned = vip.mode != MODE_NAT && over_new_flow_cap(now);
    let h = Hashes {
        flow: flow_hash(
            key.src_addr,
            key.dst_addr,
            key.src_port,
            key.dst_port,
            key.proto,
        ),
        client: client_hash(key.src_addr),
    };
    let id = if vip.persist_timeout_s > 0 {
        persistent_pick(key, vip, &h, unpinned, now)?
    } else {
        sched::pick(vip.id, &h, unpinned)?
    };
    let be = BACKENDS.get(id).ok_or(DropReason::BadBackend)?;
    let mut flow = Flow {
        last_seen_ns: now,
        backend: id,
        vip: vip.id,
        peer_mac: be.mac,
        local_mac: be.src_mac,
        ifindex: be.ifindex,
        kind: FLOW_FORWARD,
        flags: be.flags,
        ..Default::default()
    };
    if vip.mode == MODE_TUN {
        flow.rw_dst_addr = be.addr;
        flow.rw_src_addr = crate::tun::source(vip, key);
    }
    if vip.mode == MODE_NAT {
        flow.rw_dst_addr = be.addr;
        flow.rw_dst_port = be.port;
        // SAFETY: `pkt.eth` was bounds-checked by the caller.
        let eth = unsafe { *pkt.eth };
        let reply = Flow {
            last_seen_ns: now,
            backend: id,
            vip: vip.id,
            rw_src_addr: key.dst_addr,
            rw_dst_addr: key.src_addr,
            rw_src_port: key.dst_port,
            rw_dst_port: key.src_port,
            peer_mac: eth.src,
            local_mac: eth.dst,
            ifindex,
            kind: FLOW_REPLY,
            flags: 0,
            _pad: [0; 2],
        };
        if be.flags & BACKEND_LOCAL != 0 {
            // The local stack answers the client directly; only the
            // destination changes, so the reply is keyed by the client.
            flow.rw_src_addr = key.src_addr;
            flow.rw_src_port = key.src_port;
            let rkey = FlowKey {
                src_addr: be.addr,
                dst_addr: key.src_addr,
                src_port: be.port,
                dst_port: key.src_port,
                proto: key.proto,
                _pad: [0; 3],
            };
            FLOWS
                .insert(rkey, reply, 0)
                .map_err(|_| DropReason::NatPortsExhausted)?;
        } else {
            flow.rw_src_addr = vip.snat_addr;
            flow.rw_src_port = alloc_port(key, vip, be, &reply, now)?;
        }
    }
    observe_close(&mut flow, pkt.tcp_flags);
    if unpinned {
        count_unpinned(vip.id);
        return Ok((flow, false));
    }
    // A full LRU evicts its oldest entry, so this only fails on a kernel
    // error; the packet is still forwarded, the flow just is not pinned.
    let pinned = FLOWS.insert(key, flow, 0).is_ok();
    if pinned && flow.flags & FLOW_CLOSING == 0 {
        active_add(id, 1);
    }
    Ok((flow, pinned))
}

/// Counts a new flow on this CPU; true when the CPU is over its cap.
#[inline(always)]
pub fn over_new_flow_cap(now: u64) -> bool {
    let cap = unsafe { core::ptr::read_volatile(&NEW_FLOW_CAP) } as u64;
    if cap == 0 {
        return false;
    }
    let Some(r) = NEW_FLOW_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, valid for this run.
    let r = unsafe { &mut *r };
    if now.wrapping_sub(r.window_start_ns) >= 1_000_000_000 {
        r.window_start_ns = now;
        r.count = 0;
    }
    r.count += 1;
    r.count > cap
}

/// Persistence: the client's template backend while the template is fresh
/// and the backend still in the table, else the scheduler's pick, which
/// becomes the template. Every new connection refreshes it.
#[inline(always)]
fn persistent_pick(
    key: &FlowKey,
    vip: &VipMeta,
    h: &Hashes,
    stateless: bool,
    now: u64,
) -> Result<u32, DropReason> {
    let pkey = PersistKey {
        vip: vip.id,
        client: key.src_addr & vip.persist_mask,
    };
    let timeout = vip.persist_timeout_s as u64 * 1_000_000_000;
    if let Some(t) = PERSIST.get_ptr_mut(pkey) {
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
    let _ = PERSIST.insert(pkey, t, 0);
    Ok(id)
}

#[inline(always)]
pub fn is_member(vip: u32, backend: u32) -> bool {
    let words = unsafe { core::ptr::read_volatile(&MEMBER_WORDS) };
    MEMBERS
        .get(vip * words + backend / 64)
        .is_some_and(|w| *w & (1u64 << (backend % 64)) != 0)
}

/// Finds a SNAT port (network order) whose reply 5-tuple is free or belongs to
/// a dead flow, and claims it with the reply entry. The start port comes from
/// the flow hash, so concurrent CPUs rarely contend; `BPF_NOEXIST` settles it
/// when they do.
#[inline(always)]
fn alloc_port(
    key: &FlowKey,
    vip: &VipMeta,
    be: &Backend,
    reply: &Flow,
    now: u64,
) -> Result<u16, DropReason> {
    let min = vip.snat_port_min as u32;
    let max = vip.snat_port_max as u32;
    if max < min {
        return Err(DropReason::NatPortsExhausted);
    }
    let range = max - min + 1;
    let h = flow_hash(
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    )
    .rotate_right(16);
    let timeout = timeout_ns(vip, key.proto, false);
    let mut i = 0;
    while i < NAT_PORT_TRIES {
        let port = ((min + h.wrapping_add(i.wrapping_mul(7919)) % range) as u16).to_be();
        let rkey = FlowKey {
            src_addr: be.addr,
            dst_addr: vip.snat_addr,
            src_port: be.port,
            dst_port: port,
            proto: key.proto,
            _pad: [0; 3],
        };
        match unsafe { FLOWS.get(rkey) } {
            None => {
                if FLOWS.insert(rkey, reply, BPF_NOEXIST as u64).is_ok() {
                    return Ok(port);
                }
            }
            Some(old) => {
                if is_dead(old, key.proto, now, timeout) && FLOWS.insert(rkey, reply, 0).is_ok() {
                    return Ok(port);
                }
            }
        }
        i += 1;
    }
    Err(DropReason::NatPortsExhausted)
}

/// Whether `reply` is the reply entry of the forward flow `key`.
#[inline(always)]
fn replies_to(reply: &Flow, key: &FlowKey) -> bool {
    reply.kind == FLOW_REPLY
        && reply.rw_dst_addr == key.src_addr
        && reply.rw_dst_port == key.src_port
        && reply.rw_src_addr == key.dst_addr
        && reply.rw_src_port == key.dst_port
}

/// A reply entry is dead when neither direction has been seen for the
/// timeout, or for `CLOSED_PORT_REUSE_NS` once its connection has ended;
/// its port can then be reused.
#[inline(always)]
fn is_dead(reply: &Flow, proto: u8, now: u64, timeout: u64) -> bool {
    let idle = now.wrapping_sub(reply.last_seen_ns);
    if idle <= CLOSED_PORT_REUSE_NS {
        return false;
    }
    let fwd = FlowKey {
        src_addr: reply.rw_dst_addr,
        dst_addr: reply.rw_src_addr,
        src_port: reply.rw_dst_port,
        dst_port: reply.rw_src_port,
        proto,
        _pad: [0; 3],
    };
    let fwd = unsafe { FLOWS.get(fwd) };
    let closed =
        reply.flags & FLOW_CLOSING != 0 || fwd.is_some_and(|f| f.flags & FLOW_CLOSING != 0);
    let limit = if closed {
        CLOSED_PORT_REUSE_NS
    } else {
        timeout
    };
    idle > limit && fwd.is_none_or(|f| now.wrapping_sub(f.last_seen_ns) > limit)
}

/// Passive health: a new TCP flow to `backend` began with a SYN.
#[inline(always)]
pub fn observe_syn(backend: u32) {
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU value, valid for this run.
        unsafe { (*c).syn += 1 };
    }
}

/// Passive health: the backend's first answer on a reply entry. A SYN-ACK
/// means it accepted the connection, a RST that it refused it; anything
/// else first (a flow picked up mid-stream) is not counted.
#[inline(always)]
pub fn observe_answer(f: &mut Flow, tcp_flags: u8) {
    if f.flags & FLOW_ANSWERED != 0 || tcp_flags == 0 {
        return;
    }
    f.flags |= FLOW_ANSWERED;
    count_answer(f.backend, tcp_flags);
}

/// Counts a backend's first answer to a SYN (see `observe_answer`).
#[inline(always)]
pub fn count_answer(backend: u32, tcp_flags: u8) {
    let Some(c) = BACKEND_STATS.get_ptr_mut(backend) else {
        return;
    };
    // SAFETY: per-CPU value, valid for this run.
    let c = unsafe { &mut *c };
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        c.syn_ack += 1;
    } else if tcp_flags & TCP_RST != 0 {
        c.syn_rst += 1;
    }
}
