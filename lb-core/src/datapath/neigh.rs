//! Interface facts and neighbour resolution for the datapath.
//!
//! The XDP program rewrites MACs from what userspace wrote into `BACKENDS`,
//! so userspace resolves each backend's next hop here: from the kernel's
//! neighbour table (SIOCGARP for IPv4, rtnetlink for IPv6: `neigh6`), after
//! nudging the kernel to resolve it (ARP or NDP) with a datagram to the
//! discard port when the entry is missing.
//!
//! Everything goes through sockets and ioctls rather than /sys or /proc,
//! because those follow the mount and process, while sockets follow the
//! calling thread's network namespace (the netns tests rely on it).

use std::{
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("interface {0}: no such interface")]
    NoInterface(String),
    #[error("interface {iface}: {error}")]
    Mac { iface: String, error: io::Error },
    #[error("interface {0} has no {1} address")]
    NoAddress(String, &'static str),
    #[error("no {} answer from {ip} on {iface} within {timeout:?}", if .ip.is_ipv4() { "ARP" } else { "NDP" })]
    Unresolved {
        ip: IpAddr,
        iface: String,
        timeout: Duration,
    },
    #[error("listing interface addresses: {0}")]
    Ifaddrs(io::Error),
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// A throwaway datagram socket in the calling thread's namespace, for ioctls.
fn ioctl_socket() -> io::Result<UdpSocket> {
    UdpSocket::bind("0.0.0.0:0")
}

fn ifname(iface: &str) -> Option<[libc::c_char; libc::IFNAMSIZ]> {
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    if iface.len() >= libc::IFNAMSIZ || iface.contains('\0') {
        return None;
    }
    for (d, s) in name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    Some(name)
}

pub fn mac(iface: &str) -> Result<[u8; 6], NeighError> {
    let err = |error| NeighError::Mac {
        iface: iface.to_string(),
        error,
    };
    let name = ifname(iface).ok_or_else(|| NeighError::NoInterface(iface.to_string()))?;
    let sock = ioctl_socket().map_err(err)?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = name;
    // SAFETY: SIOCGIFHWADDR reads ifr_name and fills ifru_hwaddr.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: the ioctl succeeded, so the union holds the hardware address.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut out = [0u8; 6];
    for (o, d) in out.iter_mut().zip(data.iter()) {
        *o = *d as u8;
    }
    Ok(out)
}

/// The interface's MTU (tun mode drops what would not fit once wrapped).
pub fn mtu(iface: &str) -> Result<u16, NeighError> {
    let name = ifname(iface).ok_or_else(|| NeighError::NoInterface(iface.to_string()))?;
    let err = |error| NeighError::Mac {
        iface: iface.to_string(),
        error,
    };
    let sock = ioctl_socket().map_err(err)?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = name;
    // SAFETY: SIOCGIFMTU reads ifr_name and fills ifru_mtu.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: the ioctl succeeded, so the union holds the MTU.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.clamp(0, u16::MAX as i32) as u16)
}

/// IPv4 addresses per interface name, in the kernel's order.
pub fn ipv4_addrs() -> Result<Vec<(String, Ipv4Addr)>, NeighError> {
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
        if !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            // SAFETY: AF_INET entries hold a sockaddr_in; ifa_name is a C string.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            out.push((
                name.to_string_lossy().into_owned(),
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
            ));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The interface's first IPv4 address: the default nat SNAT source.
pub fn primary_ipv4(iface: &str) -> Result<Ipv4Addr, NeighError> {
    ipv4_addrs()?
        .into_iter()
        .find(|(n, _)| n == iface)
        .map(|(_, a)| a)
        .ok_or_else(|| NeighError::NoAddress(iface.to_string(), "IPv4"))
}

/// A complete neighbour entry for `ip` on `iface`, if the kernel has one.
fn arp_lookup(ip: Ipv4Addr, iface: &str) -> Option<[u8; 6]> {
    const ATF_COM: libc::c_int = 0x02;
    let sock = ioctl_socket().ok()?;
    // SAFETY: arpreq is plain data; zeroed is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes).
    req.arp_pa = unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) };
    req.arp_dev = ifname(iface)?;
    // SAFETY: SIOCGARP reads arp_pa/arp_dev and fills arp_ha/arp_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGARP, &mut req) } != 0 {
        return None;
    }
    if req.arp_flags & ATF_COM == 0 {
        return None;
    }
    let mut out = [0u8; 6];
    for (o, d) in out.iter_mut().zip(req.arp_ha.sa_data.iter()) {
        *o = *d as u8;
    }
    Some(out)
}

/// The MACs of `ips` on `iface`, asking the kernel to resolve the missing
/// ones (ARP, NDP), all at once: a few silent hosts cost one `timeout`, not
/// one each.
pub fn resolve_all(
    ips: &[IpAddr],
    iface: &str,
    timeout: Duration,
) -> Vec<Result<[u8; 6], NeighError>> {
    let index = ifindex(iface).unwrap_or(0);
    let mut out: Vec<Option<[u8; 6]>> = vec![None; ips.len()];
    lookup(ips, iface, index, &mut out);
    let deadline = Instant::now() + timeout;
    let mut nudged = Instant::now() - Duration::from_secs(1);
    while out.iter().any(Option::is_none) && Instant::now() < deadline {
        if nudged.elapsed() >= Duration::from_millis(200) {
            for (ip, m) in ips.iter().zip(&out) {
                if m.is_none() {
                    nudge(*ip, iface);
                }
            }
            nudged = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
        lookup(ips, iface, index, &mut out);
    }
    ips.iter()
        .zip(out)
        .map(|(ip, m)| {
            m.ok_or_else(|| NeighError::Unresolved {
                ip: *ip,
                iface: iface.to_string(),
                timeout,
            })
        })
        .collect()
}

/// Fills the missing entries of `out` from the kernel's tables: an ioctl
/// per IPv4 address, one netlink dump for all IPv6 ones.
fn lookup(ips: &[IpAddr], iface: &str, index: u32, out: &mut [Option<[u8; 6]>]) {
    let mut table6 = None;
    for (ip, m) in ips.iter().zip(out.iter_mut()) {
        if m.is_some() {
            continue;
        }
        *m = match ip {
            IpAddr::V4(v4) => arp_lookup(*v4, iface),
            IpAddr::V6(v6) => table6
                .get_or_insert_with(|| super::neigh6::neighbours(index).unwrap_or_default())
                .get(v6)
                .copied(),
        };
    }
}

/// A datagram to the discard port makes the kernel resolve the neighbour.
fn nudge(ip: IpAddr, iface: &str) {
    let any = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let Ok(sock) = UdpSocket::bind(any) else {
        return;
    };
    let name = iface.as_bytes();
    // SAFETY: valid fd and buffer; failure only means the routing table picks
    // the interface, which is fine for a nudge.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        );
    }
    let _ = sock.send_to(b"", (ip, 9));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local() {
        assert!(
            ipv4_addrs()
                .unwrap()
                .contains(&("lo".to_string(), Ipv4Addr::LOCALHOST))
        );
        assert_eq!(ifindex("lo"), Some(1));
        assert!(ifindex("no-such-if0").is_none());
        assert_eq!(mac("lo").unwrap(), [0; 6]);
        assert!(mtu("lo").unwrap() >= 1500);
        assert!(matches!(mac("no-such-if0"), Err(NeighError::Mac { .. })));
    }
}
