//! Gratuitous ARP, sent as keepalived does: an ARP *request* from the VIP to
//! the VIP, broadcast, with the interface's real MAC (no VMAC).

use std::io;
use std::mem;
use std::net::Ipv4Addr;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const BROADCAST: [u8; 6] = [0xff; 6];
pub const FRAME_LEN: usize = 42;

pub fn frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    f[32..38].copy_from_slice(&BROADCAST);
    f[38..42].copy_from_slice(&vip.octets());
    f
}

/// An AF_PACKET socket that sends ready-made Ethernet frames on one interface.
pub struct GarpSender {
    socket: Socket,
    dest: SockAddr,
}

impl GarpSender {
    pub fn new(ifindex: u32) -> io::Result<Self> {
        // Protocol 0: this socket only sends, so it should receive nothing.
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))?;
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: sockaddr_ll is one of this platform's sockaddr types, the
        // storage is zeroed, and the length given to SockAddr::new is that of
        // the sockaddr_ll written into it.
        let dest = unsafe {
            let ll = storage.view_as::<libc::sockaddr_ll>();
            ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
            ll.sll_protocol = ETH_P_ARP.to_be();
            ll.sll_ifindex = ifindex;
            ll.sll_hatype = ARPHRD_ETHER;
            ll.sll_halen = 6;
            ll.sll_addr[..6].copy_from_slice(&BROADCAST);
            SockAddr::new(
                storage,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        Ok(GarpSender { socket, dest })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.socket.send_to(frame, &self.dest).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_matches_keepalived_layout() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let f = frame(mac, vip);
        let expected: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x01, 0x08,
            0x06, // ethernet
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // ARP request
            0x02, 0, 0, 0, 0, 0x01, 198, 18, 0, 100, // sender
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 198, 18, 0, 100, // target
        ];
        assert_eq!(f, expected);
    }
}
