//! Wire headers and bounds-checked access to them.
//!
//! Fields are integers read in network order as they sit in memory. No field
//! is wider than 16 bits: after the 14-byte Ethernet header the IPv4 addresses
//! are only 2-byte aligned, so they are kept as two 16-bit words ([`addr`]
//! joins them) and every access is aligned.

use core::mem::size_of;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// Offset of the L4 header when the IPv4 header has no options, which is the
/// only shape the datapath rewrites.
pub const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;

/// EtherType IPv4 as it reads from memory on a little-endian CPU.
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// IPv4 `frag_off`: the MF bit and the offset field, in network order.
pub const IP_FRAG_MASK_BE: u16 = 0x3fffu16.to_be();

#[repr(C)]
#[derive(Copy, Clone)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: [u16; 2],
    pub dst: [u16; 2],
}

/// The address as a native `u32` holding the network-order bytes.
#[inline(always)]
pub fn addr(w: [u16; 2]) -> u32 {
    w[0] as u32 | ((w[1] as u32) << 16)
}

#[inline(always)]
pub fn words(a: u32) -> [u16; 2] {
    [a as u16, (a >> 16) as u16]
}

/// The first 8 bytes of TCP and UDP share the ports; the checksum sits at a
/// protocol-specific offset.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

pub const TCP_CSUM_OFF: usize = 16;
pub const TCP_FLAGS_OFF: usize = 13;
pub const TCP_DOFF_OFF: usize = 12;
pub const UDP_LEN_OFF: usize = 4;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const UDP_CSUM_OFF: usize = 6;

/// Pointer to a `T` at `off` bytes into `[start, end)`, or `None` when it
/// would reach past `end`. The explicit comparison is what the verifier needs.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, off: usize) -> Option<*mut T> {
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}
