//! The IPv6 maps: VIPs, their addresses, SNAT addresses, backend addresses
//! and the IPv6 connection table. Table state, rings, members, backend
//! slots and counters are shared with IPv4 and written by `mod.rs`.

use std::{collections::HashMap, net::Ipv6Addr};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_ebpf::abi::{self, Addr6, Backend, Backend6, Flow6, FlowKey6, VipKey6, VipMeta6};

use super::{Datapath, DatapathError, Result, write_err};

/// An address in the datapath's `Addr6` convention.
pub fn addr6(a: Ipv6Addr) -> Addr6 {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The inverse of [`addr6`].
pub fn from_addr6(a: &Addr6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

pub fn fmt_vip6(k: &VipKey6) -> String {
    let proto = match k.proto {
        abi::IPPROTO_TCP => "tcp",
        abi::IPPROTO_UDP => "udp",
        _ => "?",
    };
    format!("[{}]:{}/{proto}", from_addr6(&k.addr), u16::from_be(k.port))
}

impl Datapath {
    /// Adds or updates an IPv6 VIP. Its id shares the IPv4 VIP id space
    /// (table state, ring, counters). On error nothing about it changed.
    pub fn set_vip6(&mut self, key: VipKey6, meta: VipMeta6) -> Result<()> {
        if meta.meta.id >= self.limits.max_vips {
            return Err(DatapathError::VipIdRange {
                id: meta.meta.id,
                max: self.limits.max_vips,
            });
        }
        let what = format!("VIP {}", fmt_vip6(&key));
        let mut vips: BpfHashMap<_, VipKey6, VipMeta6> = self.typed(abi::map::VIPS6)?;
        let old = vips.get(&key, 0).ok();
        vips.insert(key, meta, 0).map_err(write_err(&what))?;
        if old.is_none() {
            self.bump6(abi::map::VIP_ADDRS6, key.addr, 1)?;
        }
        let nat = |m: &VipMeta6| m.meta.mode == abi::MODE_NAT;
        let old_snat = old.filter(nat).map(|o| o.snat_addr);
        let new_snat = Some(meta).filter(nat).map(|m| m.snat_addr);
        if old_snat != new_snat {
            if let Some(a) = old_snat {
                self.bump6(abi::map::SNAT_ADDRS6, a, -1)?;
            }
            if let Some(a) = new_snat {
                self.bump6(abi::map::SNAT_ADDRS6, a, 1)?;
            }
        }
        Ok(())
    }

    /// Removes an IPv6 VIP (see [`Datapath::remove_vip`]).
    pub fn remove_vip6(&mut self, key: &VipKey6) -> Result<()> {
        let mut vips: BpfHashMap<_, VipKey6, VipMeta6> = self.typed(abi::map::VIPS6)?;
        let Ok(old) = vips.get(key, 0) else {
            return Ok(());
        };
        vips.remove(key)
            .map_err(write_err(format!("removing VIP {}", fmt_vip6(key))))?;
        self.bump6(abi::map::VIP_ADDRS6, key.addr, -1)?;
        if old.meta.mode == abi::MODE_NAT {
            self.bump6(abi::map::SNAT_ADDRS6, old.snat_addr, -1)?;
        }
        self.tables.clear(old.meta.id)
    }

    fn bump6(&mut self, name: &'static str, addr: Addr6, delta: i32) -> Result<()> {
        let refs: &mut HashMap<Addr6, u32> = match name {
            abi::map::VIP_ADDRS6 => &mut self.vip_addr6_refs,
            _ => &mut self.snat6_refs,
        };
        let n = refs.entry(addr).or_insert(0);
        *n = n.saturating_add_signed(delta);
        let n = *n;
        if n == 0 {
            refs.remove(&addr);
        }
        let mut m: BpfHashMap<_, Addr6, u32> = self.typed(name)?;
        let what = format!("{name} {}", from_addr6(&addr));
        if n == 0 {
            m.remove(&addr).map_err(write_err(what))
        } else {
            m.insert(addr, n, 0).map_err(write_err(what))
        }
    }

    /// Writes an IPv6 backend: the address into `BACKENDS6[id]`, the rest
    /// into `BACKENDS[id]` (its IPv4 `addr` stored as 0).
    pub fn set_backend6(&mut self, id: u32, addr: Ipv6Addr, backend: Backend) -> Result<()> {
        if id >= self.limits.max_backends {
            return Err(DatapathError::BackendIdRange {
                id,
                max: self.limits.max_backends,
            });
        }
        let mut m: Array<_, Backend6> = self.typed(abi::map::BACKENDS6)?;
        m.set(id, Backend6 { addr: addr6(addr) }, 0)
            .map_err(write_err(format!("backend id {id} ({addr})")))?;
        self.set_backend(id, Backend { addr: 0, ..backend })
    }

    /// A snapshot of the IPv6 connection table (batched reads where the
    /// kernel has them, as [`Datapath::flows`]).
    pub fn flows6(&self) -> Result<Vec<(FlowKey6, Flow6)>> {
        self.lru_entries(abi::map::FLOWS6)
    }

    /// Every IPv6 VIP's meta (the lc/wlc recount needs their timeouts).
    pub(super) fn vips6(&self) -> Result<Vec<VipMeta6>> {
        let name = abi::map::VIPS6;
        let m = self.ebpf.map(name).ok_or(DatapathError::Map(name))?;
        let m: BpfHashMap<&MapData, VipKey6, VipMeta6> =
            BpfHashMap::try_from(m).map_err(|_| DatapathError::Map(name))?;
        Ok(m.iter().filter_map(|r| r.ok()).map(|(_, v)| v).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_keep_wire_order() {
        let a: Ipv6Addr = "2001:2::1:ff".parse().unwrap();
        let w = addr6(a);
        assert_eq!(w[0].to_ne_bytes(), [0x20, 0x01, 0, 0x02]);
        assert_eq!(from_addr6(&w), a);
    }
}
