//! The connection table and scheduling of new flows.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_ebpf::{abi::*, hash::flow_hash};

use crate::{headers::*, maps::*, rewrite::Packet};

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

/// A FIN or RST marks the flow as ending.
#[inline(always)]
pub fn observe_close(f: &mut Flow, tcp_flags: u8) {
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        f.flags |= FLOW_CLOSING;
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
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program's run.
        let f = unsafe { &mut *f };
        let closing = f.flags & FLOW_CLOSING != 0;
        // A fresh SYN on the 5-tuple of an ended connection, or of one whose
        // backend has left the table (refused, down, drained: its end was
        // not seen, e.g. a backend RST in dr mode), is a new connection.
        let reopened = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && (closing || !is_member(vip.id, f.backend));
        if f.kind == FLOW_FORWARD
            && f.vip == vip.id
            && !reopened
            && now.wrapping_sub(f.last_seen_ns) <= timeout_ns(vip, key.proto, closing)
        {
            touch(f, now);
            observe_close(f, pkt.tcp_flags);
            return Ok((*f, false));
        }
        // The old connection's reply entry (nat) goes with it, or its SNAT
        // port would stay taken.
        if f.kind == FLOW_FORWARD && vip.mode == MODE_NAT {
            let reply = FlowKey {
                src_addr: f.rw_dst_addr,
                dst_addr: f.rw_src_addr,
                src_port: f.rw_dst_port,
                dst_port: f.rw_src_port,
                proto: key.proto,
                _pad: [0; 3],
            };
            let _ = FLOWS.remove(reply);
        }
    }
    schedule(key, vip, pkt, ifindex, now).map(|f| (f, true))
}

#[inline(always)]
fn pick(key: &FlowKey, vip_id: u32) -> Result<u32, DropReason> {
    let h = flow_hash(
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    );
    pick_hashed(h, vip_id)
}

/// Maglev pick from the live half of the VIP's double-buffered table, for
/// a flow of hash `h` (either family).
#[inline(always)]
pub fn pick_hashed(h: u32, vip_id: u32) -> Result<u32, DropReason> {
    let st = TABLE_STATE.get(vip_id).ok_or(DropReason::NoBackend)?;
    // One read of `active` decides the half for this packet: see TableState.
    let half = unsafe { core::ptr::read_volatile(&st.active) } & 1;
    let size = if half == 0 { st.size[0] } else { st.size[1] };
    if size == 0 {
        return Err(DropReason::NoBackend);
    }
    let slot = h % size;
    let stride = unsafe { core::ptr::read_volatile(&RING_STRIDE) };
    let id = *RING
        .get((vip_id * 2 + half) * stride + slot)
        .ok_or(DropReason::NoBackend)?;
    if id == NO_BACKEND {
        return Err(DropReason::NoBackend);
    }
    Ok(id)
}

#[inline(always)]
fn schedule(
    key: &FlowKey,
    vip: &VipMeta,
    pkt: &Packet,
    ifindex: u32,
    now: u64,
) -> Result<Flow, DropReason> {
    let id = if vip.persist_timeout_s > 0 {
        persistent_pick(key, vip, now)?
    } else {
        pick(key, vip.id)?
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
    // nat flows need their entries (the reply is matched by them), so the
    // guard only applies to modes that can forward without state.
    if vip.mode != MODE_NAT && over_new_flow_cap(now) {
        count_unpinned(vip.id);
        return Ok(flow);
    }
    // A full LRU evicts its oldest entry, so this only fails on a kernel
    // error; the packet is still forwarded, the flow just is not pinned.
    let _ = FLOWS.insert(key, flow, 0);
    Ok(flow)
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
/// and the backend still in the table, else a Maglev pick that becomes the
/// template. Every new connection refreshes it.
#[inline(always)]
fn persistent_pick(key: &FlowKey, vip: &VipMeta, now: u64) -> Result<u32, DropReason> {
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
    let id = pick(key, vip.id)?;
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
