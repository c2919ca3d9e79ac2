//! Services on top of the raw maps: VIP and backend id allocation, neighbour
//! resolution, scheduler table builds and swaps.
//!
//! Every change is prepared completely (ids, MACs, table) before the first
//! map write, so a change that fails leaves what was programmed serving.
//! Backends are reached through the service's interface (one-armed LB, the
//! LVS-DR/NAT layout); a next hop behind a router is not resolved yet.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use lb_ebpf::abi::{self, VipKey, VipKey6, VipMeta, VipMeta6};

use super::{
    AttachMode, Datapath, DatapathError, XdpRunMode, addr6, ids::BackendIds, neigh, neigh6,
};
use crate::{
    config::{Forwarding, Protocol, Scheduler},
    sync::flows::LocalService,
    table::{self, Member, TableError},
};

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => abi::IPPROTO_TCP,
        Protocol::Udp => abi::IPPROTO_UDP,
    }
}

/// What a service needs from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// IPv4 or IPv6; every address below and every backend must be of the
    /// same family.
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub interface: String,
    pub forwarding: Forwarding,
    /// How new flows pick a backend (the table built on each swap).
    pub scheduler: Scheduler,
    /// Maglev table size, a prime ≤ the loader's ring stride. Default 65537.
    pub table_size: u32,
    /// nat source address; `None` = the interface's first address of the
    /// VIP's family (IPv6: the first that is not link-local).
    pub snat_address: Option<IpAddr>,
    /// nat source ports, inclusive.
    pub snat_ports: (u16, u16),
    /// tun outer source and prefix length (host bits vary per flow);
    /// `None` = the interface's first address of the VIP's family.
    pub tun_source: Option<(IpAddr, u8)>,
    /// keepalived's `persistence_timeout` and `persistence_granularity`
    /// (netmask, of the VIP's family); `None` = no persistence.
    pub persistence: Option<(Duration, IpAddr)>,
    pub tcp_timeout: Duration,
    pub udp_timeout: Duration,
}

/// One backend of the live set (weight 0 = drained: keeps its flows, gets
/// no new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("VIP {0}: {1}")]
    Neigh(SocketAddr, neigh::NeighError),
    #[error("VIP {0}: {1}")]
    Table(SocketAddr, TableError),
    #[error("VIP {0}/{1:?} is not programmed")]
    UnknownVip(SocketAddr, Protocol),
    #[error("VIP {0}: all {1} VIP slots are in use (raise max_vips)")]
    VipsFull(SocketAddr, u32),
    #[error("VIP {0}: all {1} backend slots are in use (raise max_backends)")]
    BackendsFull(SocketAddr, u32),
    #[error("VIP {vip}: dr and tun modes cannot translate ports, backend {backend} must use port {}", vip.port())]
    DrPort {
        vip: SocketAddr,
        backend: SocketAddr,
    },
    #[error("VIP {0}: table size {1} exceeds the loaded ring stride {2}")]
    TableSize(SocketAddr, u32, u32),
    #[error("VIP {vip}: {what} {addr} is not of the VIP's address family")]
    Family {
        vip: SocketAddr,
        what: &'static str,
        addr: IpAddr,
    },
}

type Result<T> = std::result::Result<T, BalancerError>;

struct Service {
    id: u32,
    spec: ServiceSpec,
    backends: Vec<BackendSpec>,
}

/// What a table swap did.
#[derive(Debug)]
pub struct Swap {
    /// Generation of the live table after the swap.
    pub generation: u32,
    /// Backends left out because their MAC could not be resolved.
    pub unresolved: Vec<(SocketAddr, neigh::NeighError)>,
}

/// Programs services into a [`Datapath`].
pub struct Balancer {
    dp: Datapath,
    mode: AttachMode,
    services: HashMap<(SocketAddr, Protocol), Service>,
    backend_ids: BackendIds,
    /// Last MAC learnt per (interface, backend address).
    macs: HashMap<(String, IpAddr), [u8; 6]>,
    /// What each backend slot holds, so a swap rewrites only what changed.
    written: HashMap<u32, (abi::Backend, IpAddr)>,
    pub resolve_timeout: Duration,
}

fn vip_key(vip: SocketAddrV4, p: Protocol) -> VipKey {
    VipKey {
        addr: u32::from_ne_bytes(vip.ip().octets()),
        port: vip.port().to_be(),
        proto: proto_number(p),
        _pad: 0,
    }
}

fn vip_key6(vip: SocketAddrV6, p: Protocol) -> VipKey6 {
    VipKey6 {
        addr: addr6(*vip.ip()),
        port: vip.port().to_be(),
        proto: proto_number(p),
        _pad: 0,
    }
}

/// An IPv4 address as the datapath stores it (native u32, network bytes).
fn addr4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The interface's first address of `vip`'s family.
fn primary(iface: &str, vip: SocketAddr) -> Result<IpAddr> {
    match vip {
        SocketAddr::V4(_) => neigh::primary_ipv4(iface).map(IpAddr::V4),
        SocketAddr::V6(_) => neigh6::primary_ipv6(iface).map(IpAddr::V6),
    }
    .map_err(|e| BalancerError::Neigh(vip, e))
}

impl Balancer {
    pub fn new(dp: Datapath, mode: AttachMode) -> Self {
        Balancer {
            backend_ids: BackendIds::new(dp.limits().max_backends),
            dp,
            mode,
            services: HashMap::new(),
            macs: HashMap::new(),
            written: HashMap::new(),
            resolve_timeout: Duration::from_secs(1),
        }
    }

    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// VIP id of a programmed service.
    pub fn vip_id(&self, vip: SocketAddr, p: Protocol) -> Option<u32> {
        self.services.get(&(vip, p)).map(|s| s.id)
    }

    /// Backend id of a backend in use on `iface`.
    pub fn backend_id(&self, iface: &str, addr: SocketAddr) -> Option<u32> {
        self.backend_ids.get(&(iface.to_string(), addr))
    }

    /// Programs a service with an empty table (new flows dropped as
    /// `no_backend` until [`Balancer::set_backends`]), attaching XDP to its
    /// interface if needed. Re-adding an existing service updates its
    /// settings and keeps its table.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<u32> {
        let stride = self.dp.limits().ring_stride;
        if spec.table_size > stride {
            return Err(BalancerError::TableSize(spec.vip, spec.table_size, stride));
        }
        if !table::is_prime(spec.table_size) {
            return Err(BalancerError::Table(
                spec.vip,
                TableError::NotPrime(spec.table_size),
            ));
        }
        let family = |what: &'static str, addr: IpAddr| {
            if addr.is_ipv4() == spec.vip.is_ipv4() {
                Ok(addr)
            } else {
                Err(BalancerError::Family {
                    vip: spec.vip,
                    what,
                    addr,
                })
            }
        };
        let unspecified = match spec.vip {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let host_bits = if spec.vip.is_ipv4() { 32u8 } else { 128 };
        let (tun_src, tun_prefix) = match (spec.forwarding, spec.tun_source) {
            (Forwarding::Tun, Some((a, len))) => (family("tun_source", a)?, len),
            (Forwarding::Tun, None) => (primary(&spec.interface, spec.vip)?, host_bits),
            _ => (unspecified, host_bits),
        };
        let mtu = neigh::mtu(&spec.interface).map_err(|e| BalancerError::Neigh(spec.vip, e))?;
        let snat = match (spec.forwarding, spec.snat_address) {
            (Forwarding::Nat, None) => primary(&spec.interface, spec.vip)?,
            (_, Some(a)) => family("snat_address", a)?,
            (_, None) => unspecified,
        };
        let mask = match spec.persistence {
            Some((_, m)) => family("persistence_granularity", m)?,
            None => match unspecified {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::BROADCAST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(u128::MAX)),
            },
        };
        let existing = self.services.get(&(spec.vip, spec.protocol)).map(|s| s.id);
        let id = match existing {
            Some(id) => id,
            None => (0..self.dp.limits().max_vips)
                .find(|i| self.services.values().all(|s| s.id != *i))
                .ok_or(BalancerError::VipsFull(spec.vip, self.dp.limits().max_vips))?,
        };
        if !self.dp.attached().contains_key(&spec.interface) {
            self.dp.attach(&spec.interface, self.mode)?;
        }
        if existing.is_none() {
            // The id may have been a removed service's: its counts are not
            // this one's.
            self.dp.zero_vip_counters(id)?;
        }
        let mut meta = VipMeta {
            id,
            mode: match spec.forwarding {
                Forwarding::Dr => abi::MODE_DR,
                Forwarding::Nat => abi::MODE_NAT,
                Forwarding::Tun => abi::MODE_TUN,
            },
            tun_src_bits: host_bits.saturating_sub(tun_prefix).min(16),
            mtu,
            snat_port_min: spec.snat_ports.0,
            snat_port_max: spec.snat_ports.1,
            tcp_timeout_s: spec.tcp_timeout.as_secs().min(u32::MAX as u64) as u32,
            udp_timeout_s: spec.udp_timeout.as_secs().min(u32::MAX as u64) as u32,
            persist_timeout_s: spec
                .persistence
                .map_or(0, |(t, _)| t.as_secs().clamp(1, u32::MAX as u64) as u32),
            ..Default::default()
        };
        if existing.is_none() {
            self.dp.swap_table(id, abi::TABLE_MAGLEV, &[])?;
        }
        match (spec.vip, snat, tun_src, mask) {
            (SocketAddr::V4(v), IpAddr::V4(snat), IpAddr::V4(tun), IpAddr::V4(mask)) => {
                meta.snat_addr = addr4(snat);
                meta.tun_src = addr4(tun);
                meta.persist_mask = addr4(mask);
                self.dp.set_vip(vip_key(v, spec.protocol), meta)?;
            }
            (SocketAddr::V6(v), IpAddr::V6(snat), IpAddr::V6(tun), IpAddr::V6(mask)) => {
                let meta = VipMeta6 {
                    meta,
                    snat_addr: addr6(snat),
                    tun_src: addr6(tun),
                    persist_mask: addr6(mask),
                };
                self.dp.set_vip6(vip_key6(v, spec.protocol), meta)?;
            }
            _ => unreachable!("addresses were checked against the VIP's family"),
        }
        tracing::info!(vip = %spec.vip, proto = ?spec.protocol, id, mode = ?spec.forwarding, "VIP programmed");
        let backends = self
            .services
            .remove(&(spec.vip, spec.protocol))
            .map(|s| s.backends)
            .unwrap_or_default();
        self.services
            .insert((spec.vip, spec.protocol), Service { id, spec, backends });
        Ok(id)
    }

    /// Removes a service. Its established flows are no longer forwarded.
    pub fn remove_service(&mut self, vip: SocketAddr, p: Protocol) -> Result<()> {
        let svc = self
            .services
            .get(&(vip, p))
            .ok_or(BalancerError::UnknownVip(vip, p))?;
        let iface = svc.spec.interface.clone();
        let old: Vec<SocketAddr> = svc.backends.iter().map(|b| b.addr).collect();
        match vip {
            SocketAddr::V4(v) => self.dp.remove_vip(&vip_key(v, p))?,
            SocketAddr::V6(v) => self.dp.remove_vip6(&vip_key6(v, p))?,
        }
        self.services.remove(&(vip, p));
        for a in old {
            self.release_backend(&iface, a);
        }
        tracing::info!(vip = %vip, proto = ?p, "VIP removed");
        Ok(())
    }

    /// Replaces the service's live backend set: resolves new backends,
    /// builds the scheduler's table and swaps it in. Returns the table
    /// generation. Flows already pinned keep their backend, including one
    /// that left the set.
    ///
    /// A backend whose MAC cannot be resolved (no ARP answer) is left out of
    /// the table and reported in [`Swap::unresolved`]: one silent host must
    /// not keep the others out. A MAC learnt before is used again if the
    /// neighbour entry has gone meanwhile.
    pub fn set_backends(
        &mut self,
        vip: SocketAddr,
        p: Protocol,
        backends: &[BackendSpec],
    ) -> Result<Swap> {
        let svc = self
            .services
            .get(&(vip, p))
            .ok_or(BalancerError::UnknownVip(vip, p))?;
        let spec = svc.spec.clone();
        let vip_id = svc.id;
        let old: Vec<SocketAddr> = svc.backends.iter().map(|b| b.addr).collect();
        if spec.forwarding != Forwarding::Nat
            && let Some(b) = backends.iter().find(|b| b.addr.port() != vip.port())
        {
            return Err(BalancerError::DrPort {
                vip,
                backend: b.addr,
            });
        }
        if let Some(b) = backends.iter().find(|b| b.addr.is_ipv4() != vip.is_ipv4()) {
            return Err(BalancerError::Family {
                vip,
                what: "backend",
                addr: b.addr.ip(),
            });
        }
        let ifindex = neigh::ifindex(&spec.interface)
            .ok_or_else(|| DatapathError::NoInterface(spec.interface.clone()))?;
        let src_mac = neigh::mac(&spec.interface).map_err(|e| BalancerError::Neigh(vip, e))?;
        // One address listing per swap, not one per backend: it is a netlink
        // dump, and a 1000-backend swap spent most of its time here.
        let ours: std::collections::HashSet<IpAddr> = match vip {
            SocketAddr::V4(_) => {
                neigh::ipv4_addrs().map(|v| v.into_iter().map(|(_, a)| a.into()).collect())
            }
            SocketAddr::V6(_) => {
                neigh6::ipv6_addrs().map(|v| v.into_iter().map(|(_, a)| a.into()).collect())
            }
        }
        .map_err(|e| BalancerError::Neigh(vip, e))?;
        let local: Vec<bool> = backends
            .iter()
            .map(|b| ours.contains(&b.addr.ip()))
            .collect();
        let remote: Vec<IpAddr> = backends
            .iter()
            .zip(&local)
            .filter(|(_, l)| !**l)
            .map(|(b, _)| b.addr.ip())
            .collect();
        let mut resolved =
            neigh::resolve_all(&remote, &spec.interface, self.resolve_timeout).into_iter();
        let mut prepared = Vec::new();
        let mut unresolved = Vec::new();
        for (b, local) in backends.iter().zip(local) {
            let ip = b.addr.ip();
            let cache_key = (spec.interface.clone(), ip);
            let mac = if local {
                [0; 6]
            } else {
                match resolved.next() {
                    Some(Ok(mac)) => {
                        self.macs.insert(cache_key, mac);
                        mac
                    }
                    Some(Err(error)) => match self.macs.get(&cache_key) {
                        Some(mac) => *mac,
                        None => {
                            tracing::error!(vip = %vip, backend = %b.addr, %error, "backend left out of the table");
                            unresolved.push((b.addr, error));
                            continue;
                        }
                    },
                    None => continue,
                }
            };
            prepared.push((
                *b,
                abi::Backend {
                    addr: match ip {
                        IpAddr::V4(a) => addr4(a),
                        IpAddr::V6(_) => 0,
                    },
                    port: b.addr.port().to_be(),
                    flags: if local { abi::BACKEND_LOCAL } else { 0 },
                    _pad: 0,
                    mac,
                    src_mac,
                    ifindex,
                },
            ));
        }
        let ids = self.reserve_ids(&spec.interface, vip, &prepared)?;
        let members: Vec<Member> = prepared
            .iter()
            .zip(&ids)
            .map(|((b, _), id)| Member {
                id: *id,
                addr: b.addr,
                weight: b.weight,
            })
            .collect();
        let table = match table::build(spec.scheduler, &members, spec.table_size) {
            Ok(t) => t,
            Err(e) => {
                self.unreserve(&spec.interface, &prepared);
                return Err(BalancerError::Table(vip, e));
            }
        };
        for ((b, be), id) in prepared.iter().zip(&ids) {
            let ip = b.addr.ip();
            if self.written.get(id) == Some(&(*be, ip)) {
                continue;
            }
            let written = match ip {
                IpAddr::V4(_) => self.dp.set_backend(*id, *be),
                IpAddr::V6(a) => self.dp.set_backend6(*id, a, *be),
            };
            if let Err(e) = written {
                self.unreserve(&spec.interface, &prepared);
                return Err(e.into());
            }
            self.written.insert(*id, (*be, ip));
        }
        let members: Vec<u32> = prepared
            .iter()
            .zip(&ids)
            .filter(|((b, _), _)| b.weight > 0)
            .map(|(_, id)| *id)
            .collect();
        if let Err(e) = self.dp.set_members(vip_id, &members) {
            self.unreserve(&spec.interface, &prepared);
            return Err(e.into());
        }
        let generation = match self.dp.swap_table(vip_id, table.kind, &table.slots) {
            Ok(g) => g,
            Err(e) => {
                self.unreserve(&spec.interface, &prepared);
                return Err(e.into());
            }
        };
        for a in old {
            self.release_backend(&spec.interface, a);
        }
        if let Some(s) = self.services.get_mut(&(vip, p)) {
            s.backends = prepared.iter().map(|(b, _)| *b).collect();
        }
        tracing::info!(vip = %vip, generation, backends = prepared.len(), scheduler = %spec.scheduler, "table swapped");
        Ok(Swap {
            generation,
            unresolved,
        })
    }

    /// Takes a reference on each backend's id (allocating new ones). The old
    /// set's references are dropped only after the swap succeeds.
    fn reserve_ids(
        &mut self,
        iface: &str,
        vip: SocketAddr,
        prepared: &[(BackendSpec, abi::Backend)],
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(prepared.len());
        for (i, (b, _)) in prepared.iter().enumerate() {
            let Some(r) = self.backend_ids.reserve(&(iface.to_string(), b.addr)) else {
                self.unreserve(iface, &prepared[..i]);
                return Err(BalancerError::BackendsFull(
                    vip,
                    self.dp.limits().max_backends,
                ));
            };
            // An id new to this backend may hold another's counts.
            if r.new_owner
                && let Err(e) = self.dp.zero_backend_counters(r.id)
            {
                self.unreserve(iface, &prepared[..=i]);
                return Err(e.into());
            }
            ids.push(r.id);
        }
        Ok(ids)
    }

    fn unreserve(&mut self, iface: &str, prepared: &[(BackendSpec, abi::Backend)]) {
        for (b, _) in prepared {
            self.release_backend(iface, b.addr);
        }
    }

    fn release_backend(&mut self, iface: &str, addr: SocketAddr) {
        self.backend_ids.release(&(iface.to_string(), addr));
    }

    /// This node's side of every IPv4 nat service, as connection-state sync
    /// needs it: ids, SNAT address, interface, and the programmed backends.
    /// A service whose interface cannot be read is left out; IPv6 services
    /// are not synced.
    pub fn sync_services(&self) -> Vec<LocalService> {
        let mut out = Vec::new();
        for ((vip, p), svc) in &self.services {
            let SocketAddr::V4(vip) = vip else {
                continue;
            };
            if svc.spec.forwarding != Forwarding::Nat {
                continue;
            }
            let Some(meta) = self.dp.vip_meta(&vip_key(*vip, *p)) else {
                continue;
            };
            let (Some(ifindex), Ok(mac)) = (
                neigh::ifindex(&svc.spec.interface),
                neigh::mac(&svc.spec.interface),
            ) else {
                continue;
            };
            let backends = svc
                .backends
                .iter()
                .filter_map(|b| {
                    let SocketAddr::V4(addr) = b.addr else {
                        return None;
                    };
                    let id = self.backend_id(&svc.spec.interface, b.addr)?;
                    Some((addr, (id, self.written.get(&id)?.0)))
                })
                .collect();
            let timeout = match p {
                Protocol::Tcp => svc.spec.tcp_timeout,
                Protocol::Udp => svc.spec.udp_timeout,
            };
            out.push(LocalService {
                vip_id: svc.id,
                vip: *vip,
                proto: proto_number(*p),
                snat: Ipv4Addr::from(meta.snat_addr.to_ne_bytes()),
                timeout_ns: timeout.as_nanos().min(u64::MAX as u128) as u64,
                ifindex,
                mac,
                backends,
            });
        }
        out
    }

    /// The XDP mode per attached interface.
    pub fn attached(&self) -> Vec<(String, XdpRunMode)> {
        self.dp
            .attached()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}
