//! IPv6 facts for the datapath: the node's IPv6 addresses, and the kernel's
//! IPv6 neighbour table, read over rtnetlink (IPv6 has no SIOCGARP). Like
//! the ioctls in `neigh`, a netlink socket follows the calling thread's
//! network namespace.

use std::{collections::HashMap, io, net::Ipv6Addr};

use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

use super::neigh::NeighError;

/// IPv6 addresses per interface name, in the kernel's order.
pub fn ipv6_addrs() -> Result<Vec<(String, Ipv6Addr)>, NeighError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(NeighError::Ifaddrs(io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET6
        {
            // SAFETY: AF_INET6 entries hold a sockaddr_in6; ifa_name is a C string.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            out.push((
                name.to_string_lossy().into_owned(),
                Ipv6Addr::from(sin.sin6_addr.s6_addr),
            ));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The interface's first IPv6 address that is not link-local: the default
/// nat source and tun outer source of IPv6 services.
pub fn primary_ipv6(iface: &str) -> Result<Ipv6Addr, NeighError> {
    ipv6_addrs()?
        .into_iter()
        .find(|(n, a)| n == iface && !a.is_unicast_link_local())
        .map(|(_, a)| a)
        .ok_or_else(|| NeighError::NoAddress(iface.to_string(), "IPv6"))
}

/// Complete IPv6 neighbour entries on `ifindex` (address → MAC). Entries
/// being resolved or that failed are left out; stale ones count, as the
/// kernel itself still sends to them while it re-checks.
pub fn neighbours(ifindex: u32) -> io::Result<HashMap<Ipv6Addr, [u8; 6]>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_DUMP | NLM_F_REQUEST;
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.ifindex = ifindex;
    let mut req = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(RouteNetlinkMessage::GetNeighbour(msg)),
    );
    req.finalize();
    let mut buf = vec![0; req.header.length as usize];
    req.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    let bad = |e: rtnetlink::packet_core::DecodeError| io::Error::other(e.to_string());
    let mut out = HashMap::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut off = 0;
        while off < data.len() {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&data[off..]).map_err(bad)?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(io::Error::other(format!("{e:?}"))),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))
                    if n.header.ifindex == ifindex && usable(n.header.state) =>
                {
                    if let Some((ip, mac)) = entry(&n) {
                        out.insert(ip, mac);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn usable(s: NeighbourState) -> bool {
    matches!(
        s,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
    )
}

fn entry(n: &NeighbourMessage) -> Option<(Ipv6Addr, [u8; 6])> {
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(*ip),
        _ => None,
    })?;
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(&l[..]).ok(),
        _ => None,
    })?;
    Some((ip, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address_and_a_readable_table() {
        assert!(
            ipv6_addrs()
                .unwrap()
                .contains(&("lo".to_string(), Ipv6Addr::LOCALHOST))
        );
        // Loopback has no neighbours; the dump itself must work.
        assert!(neighbours(1).unwrap().is_empty());
    }
}
