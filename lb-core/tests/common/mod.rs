//! Helpers shared by the datapath tests.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};
pub use lb_testlab::require_root;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// An Ethernet + IPv4 + TCP/UDP frame, checksums computed by etherparse.
#[allow(clippy::too_many_arguments)]
pub fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64);
    l4(ip, sport, dport, proto, payload)
}

/// [`frame`] over IPv6 (hop limit 64).
#[allow(clippy::too_many_arguments)]
pub fn frame6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(src_mac, dst_mac).ipv6(src, dst, 64);
    l4(ip, sport, dport, proto, payload)
}

/// A TCP SYN (seq 1000, window 64000) or a UDP datagram on `ip`.
fn l4(
    ip: PacketBuilderStep<IpHeaders>,
    sport: u16,
    dport: u16,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    match proto {
        TCP => ip
            .tcp(sport, dport, 1000, 64_000)
            .syn()
            .write(&mut out, payload),
        _ => ip.udp(sport, dport).write(&mut out, payload),
    }
    .expect("building frame");
    out
}

/// Keeps this thread, and so its test runs, on CPU 0: per-CPU state (the
/// new-flow cap, rr cursors) then behaves as on one busy CPU.
pub fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}
