//! Connection-table entries ↔ flow records. Pure: the caller reads the
//! table and the node's own service state, and writes the entries back.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_ebpf::abi::{
    BACKEND_LOCAL, Backend, FLOW_ANSWERED, FLOW_CLOSING, FLOW_FORWARD, FLOW_REPLY, Flow, FlowKey,
};

use super::wire::FlowRecord;

/// A synced flow is sent again, if it saw traffic, once this long has passed
/// since it was last sent, so the peer's copy (stamped with the peer's own
/// clock on receipt) never idles out before the original. Capped by half the
/// service's idle timeout.
pub const REFRESH_NS: u64 = 60_000_000_000;

/// What a node knows of one of its own nat services: enough to tell which
/// entries to send and to rebuild received ones with its own node-local
/// parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalService {
    /// `VipMeta::id` on this node.
    pub vip_id: u32,
    pub vip: SocketAddrV4,
    pub proto: u8,
    pub snat: Ipv4Addr,
    /// Idle timeout of the service's protocol.
    pub timeout_ns: u64,
    /// The service interface: replies to clients leave through it.
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Backends programmed on this node: address → (id, what `BACKENDS`
    /// holds: next-hop MAC, egress interface, flags).
    pub backends: HashMap<SocketAddrV4, (u32, Backend)>,
}

/// Why a received record was not applied; each is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// No nat service on this node for the record's VIP.
    UnknownService,
    /// This node's service translates to another SNAT address.
    SnatMismatch,
    /// The backend is not programmed here (or its MAC is unresolved).
    UnknownBackend,
    /// The backend is this node itself: its socket is bound to a connection
    /// from the SNAT address, which now is one of ours, so the flow cannot
    /// be carried over.
    LocalBackend,
}

impl Skip {
    pub const ALL: [Skip; 4] = [
        Skip::UnknownService,
        Skip::SnatMismatch,
        Skip::UnknownBackend,
        Skip::LocalBackend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Skip::UnknownService => "unknown_service",
            Skip::SnatMismatch => "snat_mismatch",
            Skip::UnknownBackend => "unknown_backend",
            Skip::LocalBackend => "local_backend",
        }
    }
}

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

fn raw(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn sock(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip(addr), u16::from_be(port))
}

fn key(proto: u8, src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: raw(*src.ip()),
        dst_addr: raw(*dst.ip()),
        src_port: src.port().to_be(),
        dst_port: dst.port().to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// The reply entry's key of a nat forward entry.
pub fn reply_key(k: &FlowKey, f: &Flow) -> FlowKey {
    FlowKey {
        src_addr: f.rw_dst_addr,
        dst_addr: f.rw_src_addr,
        src_port: f.rw_dst_port,
        dst_port: f.rw_src_port,
        proto: k.proto,
        _pad: [0; 3],
    }
}

/// When each flow was last sent, and whether it was closing then.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    at: HashMap<FlowKey, (u64, bool)>,
}

impl Sent {
    /// Forget everything: the next scans send the whole table (a peer
    /// restarted, or this node just became master).
    pub fn clear(&mut self) {
        self.at.clear();
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

/// The records to send from a snapshot of the connection table: live nat
/// flows of `services` that are new, changed to closing, or due a refresh;
/// at most `limit` of them (the rest go out at the next scan). `sent` is
/// updated and pruned of flows no longer in the table.
pub fn select(
    table: &[(FlowKey, Flow)],
    services: &[LocalService],
    sent: &mut Sent,
    now: u64,
    limit: usize,
) -> Vec<FlowRecord> {
    let by_id: HashMap<u32, &LocalService> = services.iter().map(|s| (s.vip_id, s)).collect();
    let replies: HashMap<FlowKey, &Flow> = table
        .iter()
        .filter(|(_, f)| f.kind == FLOW_REPLY && by_id.contains_key(&f.vip))
        .map(|(k, f)| (*k, f))
        .collect();
    let mut next = HashMap::with_capacity(sent.at.len());
    let mut out = Vec::new();
    for (k, f) in table {
        let Some(svc) = by_id.get(&f.vip) else {
            continue;
        };
        if f.kind != FLOW_FORWARD
            || f.flags & BACKEND_LOCAL != 0
            || now.saturating_sub(f.last_seen_ns) > svc.timeout_ns
            || sock(k.dst_addr, k.dst_port) != svc.vip
        {
            continue;
        }
        let Some(reply) = replies.get(&reply_key(k, f)) else {
            continue;
        };
        let closing = (f.flags | reply.flags) & FLOW_CLOSING != 0;
        let last_seen = f.last_seen_ns.max(reply.last_seen_ns);
        let refresh = REFRESH_NS.min(svc.timeout_ns / 2);
        let due = match sent.at.get(k) {
            None => true,
            Some((at, was_closing)) => {
                *was_closing != closing || (last_seen > *at && now.saturating_sub(*at) >= refresh)
            }
        };
        if due && out.len() < limit {
            out.push(FlowRecord {
                proto: k.proto,
                closing,
                client_mac: reply.peer_mac,
                client: sock(k.src_addr, k.src_port),
                vip: svc.vip,
                backend: sock(f.rw_dst_addr, f.rw_dst_port),
                snat: sock(f.rw_src_addr, f.rw_src_port),
            });
            next.insert(*k, (now, closing));
        } else if let Some(old) = sent.at.get(k) {
            next.insert(*k, *old);
        }
    }
    sent.at = next;
    out
}

/// Both entries of a received flow, built with this node's own parts: its
/// ids, its backends' next hops and its service interface, and `now` as
/// last seen. Returns (forward, reply).
pub fn rebuild(
    r: &FlowRecord,
    services: &[LocalService],
    now: u64,
) -> Result<[(FlowKey, Flow); 2], Skip> {
    let svc = services
        .iter()
        .find(|s| s.vip == r.vip && s.proto == r.proto)
        .ok_or(Skip::UnknownService)?;
    if *r.snat.ip() != svc.snat {
        return Err(Skip::SnatMismatch);
    }
    let (id, be) = svc.backends.get(&r.backend).ok_or(Skip::UnknownBackend)?;
    if be.flags & BACKEND_LOCAL != 0 {
        return Err(Skip::LocalBackend);
    }
    let closing = if r.closing { FLOW_CLOSING } else { 0 };
    let forward = Flow {
        last_seen_ns: now,
        backend: *id,
        vip: svc.vip_id,
        rw_src_addr: raw(*r.snat.ip()),
        rw_dst_addr: raw(*r.backend.ip()),
        rw_src_port: r.snat.port().to_be(),
        rw_dst_port: r.backend.port().to_be(),
        peer_mac: be.mac,
        local_mac: be.src_mac,
        ifindex: be.ifindex,
        kind: FLOW_FORWARD,
        flags: closing,
        _pad: [0; 2],
    };
    let reply = Flow {
        last_seen_ns: now,
        backend: *id,
        vip: svc.vip_id,
        rw_src_addr: raw(*r.vip.ip()),
        rw_dst_addr: raw(*r.client.ip()),
        rw_src_port: r.vip.port().to_be(),
        rw_dst_port: r.client.port().to_be(),
        peer_mac: r.client_mac,
        local_mac: svc.mac,
        ifindex: svc.ifindex,
        kind: FLOW_REPLY,
        // The backend answered long ago: passive health must not count the
        // next packet as its first answer.
        flags: FLOW_ANSWERED | closing,
        _pad: [0; 2],
    };
    Ok([
        (key(r.proto, r.client, r.vip), forward),
        (key(r.proto, r.backend, r.snat), reply),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_ebpf::abi::IPPROTO_TCP;

    const SEC: u64 = 1_000_000_000;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().expect("addr")
    }

    /// One node's view of the nat service 198.18.0.100:80 → 198.18.1.1:8033,
    /// with node-specific ids, MACs and interfaces.
    fn service(node: u8) -> LocalService {
        let backend = Backend {
            addr: raw(Ipv4Addr::new(198, 18, 1, 1)),
            port: 8033u16.to_be(),
            flags: 0,
            _pad: 0,
            mac: [2, 0, 0, 0, 1, 1],
            src_mac: [2, 0, 0, 0, 0, node],
            ifindex: 10 + node as u32,
        };
        LocalService {
            vip_id: node as u32,
            vip: a("198.18.0.100:80"),
            proto: IPPROTO_TCP,
            snat: Ipv4Addr::new(198, 18, 0, 100),
            timeout_ns: 900 * SEC,
            ifindex: 10 + node as u32,
            mac: [2, 0, 0, 0, 0, node],
            backends: [(a("198.18.1.1:8033"), (20 + node as u32, backend))].into(),
        }
    }

    fn record(client_port: u16, snat_port: u16) -> FlowRecord {
        FlowRecord {
            proto: IPPROTO_TCP,
            closing: false,
            client_mac: [2, 0, 0, 0, 9, 9],
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), client_port),
            vip: a("198.18.0.100:80"),
            backend: a("198.18.1.1:8033"),
            snat: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), snat_port),
        }
    }

    /// The master's table as its datapath would have written it.
    fn master_table(n: u16, now: u64) -> Vec<(FlowKey, Flow)> {
        let svc = [service(1)];
        (0..n)
            .flat_map(|i| {
                let mut e = rebuild(&record(40_000 + i, 2_000 + i), &svc, now).expect("rebuild");
                e[1].1.flags = 0;
                e
            })
            .collect()
    }

    #[test]
    fn the_backup_rebuilds_what_the_master_sends_with_its_own_parts() {
        let now = 100 * SEC;
        let table = master_table(3, now);
        let mut sent = Sent::default();
        let records = select(&table, &[service(1)], &mut sent, now, 100);
        assert_eq!(records.len(), 3);
        let r = records
            .iter()
            .find(|r| r.client.port() == 40_001)
            .expect("flow");
        assert_eq!(*r, record(40_001, 2_001));
        let [(fk, f), (rk, rf)] = rebuild(r, &[service(2)], 7 * SEC).expect("rebuild");
        assert_eq!(fk, table[2].0, "same 5-tuple keys on both nodes");
        assert_eq!(rk, table[3].0);
        assert_eq!((f.vip, f.backend, f.ifindex), (2, 22, 12), "node-local ids");
        assert_eq!(f.local_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(rf.local_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(rf.peer_mac, [2, 0, 0, 0, 9, 9], "the client's next hop");
        assert_eq!((f.last_seen_ns, rf.last_seen_ns), (7 * SEC, 7 * SEC));
        assert_eq!(
            (f.rw_src_addr, f.rw_src_port, f.rw_dst_port),
            (
                table[2].1.rw_src_addr,
                table[2].1.rw_src_port,
                table[2].1.rw_dst_port
            )
        );
    }

    #[test]
    fn flows_are_sent_when_new_closing_or_due_a_refresh() {
        let now = 100 * SEC;
        let mut table = master_table(2, now);
        let svc = [service(1)];
        let mut sent = Sent::default();
        assert_eq!(select(&table, &svc, &mut sent, now, 100).len(), 2);
        assert!(select(&table, &svc, &mut sent, now + SEC, 100).is_empty());
        // Closing goes out at once.
        table[1].1.flags |= FLOW_CLOSING;
        let r = select(&table, &svc, &mut sent, now + 2 * SEC, 100);
        assert_eq!(r.len(), 1);
        assert!(r[0].closing);
        // Traffic alone waits for the refresh interval.
        table[2].1.last_seen_ns = now + 3 * SEC;
        assert!(select(&table, &svc, &mut sent, now + 4 * SEC, 100).is_empty());
        let r = select(&table, &svc, &mut sent, now + REFRESH_NS + 1, 100);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].client.port(), 40_001);
        // An idle flow is not refreshed; a cleared state sends everything.
        assert!(select(&table, &svc, &mut sent, now + 3 * REFRESH_NS, 100).is_empty());
        sent.clear();
        assert_eq!(select(&table, &svc, &mut sent, now + 2 * SEC, 100).len(), 2);
    }

    #[test]
    fn a_scan_is_bounded_and_the_rest_follows() {
        let now = 100 * SEC;
        let table = master_table(10, now);
        let svc = [service(1)];
        let mut sent = Sent::default();
        assert_eq!(select(&table, &svc, &mut sent, now, 4).len(), 4);
        assert_eq!(select(&table, &svc, &mut sent, now, 4).len(), 4);
        assert_eq!(select(&table, &svc, &mut sent, now, 4).len(), 2);
        assert_eq!(sent.len(), 10);
    }

    #[test]
    fn expired_local_and_foreign_flows_are_not_sent() {
        let now = 1000 * SEC;
        let svc = [service(1)];
        let mut table = master_table(3, now);
        table[0].1.last_seen_ns = now - 901 * SEC;
        table[2].1.flags |= BACKEND_LOCAL;
        table[4].1.vip = 99;
        let mut sent = Sent::default();
        assert!(select(&table, &svc, &mut sent, now, 100).is_empty());
    }

    #[test]
    fn records_the_node_cannot_honour_are_skipped() {
        let svc = service(2);
        let r = record(40_000, 2_000);
        let mut other_vip = r;
        other_vip.vip = a("198.18.0.101:80");
        assert_eq!(
            rebuild(&other_vip, std::slice::from_ref(&svc), 0),
            Err(Skip::UnknownService)
        );
        let mut other_snat = r;
        other_snat.snat = a("198.18.0.2:2000");
        assert_eq!(
            rebuild(&other_snat, std::slice::from_ref(&svc), 0),
            Err(Skip::SnatMismatch)
        );
        let mut other_be = r;
        other_be.backend = a("198.18.1.2:8033");
        assert_eq!(
            rebuild(&other_be, std::slice::from_ref(&svc), 0),
            Err(Skip::UnknownBackend)
        );
        let mut local = svc.clone();
        for (_, be) in local.backends.values_mut() {
            be.flags = BACKEND_LOCAL;
        }
        assert_eq!(rebuild(&r, &[local], 0), Err(Skip::LocalBackend));
    }
}
