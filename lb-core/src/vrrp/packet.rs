//! VRRP advertisement codec over IPv4: version 2 (RFC 3768) and version 3
//! (RFC 5798), byte-compatible with keepalived 2.2.7.
//!
//! Decoding is split in two steps so that the caller can count every reason
//! for a drop: [`Advert::decode`] checks what any VRRP speaker would reject
//! (structure, checksum), and [`Expected::check`] checks what only this
//! instance rejects (VRID, version, authentication, interval, VIP list, TTL).

use std::net::Ipv4Addr;
use std::time::Duration;

pub const IPPROTO_VRRP: u8 = 112;
pub const VRRP_MULTICAST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
pub const VRRP_TTL: u8 = 255;

const ADVERTISEMENT: u8 = 1;
const HEADER_LEN: usize = 8;
const AUTH_LEN: usize = 8;
const AUTH_NONE: u8 = 0;
const AUTH_PASS: u8 = 1;
const V3_INTERVAL_MASK: u16 = 0x0fff;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    V2,
    V3,
}

/// Version 2 authentication. Version 3 has none; AH is not supported, as in
/// keepalived builds without `_WITH_VRRP_AUTH_`'s AH path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    /// The password as it travels: keepalived truncates it to 8 bytes and pads
    /// with zeros, so two configs that differ after byte 8 still interoperate.
    Pass([u8; AUTH_LEN]),
}

impl Auth {
    pub fn pass(password: &str) -> Self {
        let mut data = [0u8; AUTH_LEN];
        let bytes = password.as_bytes();
        let n = bytes.len().min(AUTH_LEN);
        data[..n].copy_from_slice(&bytes[..n]);
        Auth::Pass(data)
    }
}

/// One advertisement, as decoded from or encoded to the VRRP payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// v2 carries whole seconds, v3 centiseconds; see [`Advert::encode`].
    pub advert_int: Duration,
    pub auth: Auth,
    pub addresses: Vec<Ipv4Addr>,
}

/// Why a received packet was dropped. One variant per counter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet truncated: {len} bytes, need {need}")]
    Truncated { len: usize, need: usize },
    #[error("packet too long: {len} bytes, expected {expected}")]
    TooLong { len: usize, expected: usize },
    #[error("not IPv4 (version {0})")]
    NotIpv4(u8),
    #[error("bad IPv4 header length {0}")]
    BadIpHeaderLength(usize),
    #[error("IPv4 total length {header} differs from received {received}")]
    IpLengthMismatch { header: usize, received: usize },
    #[error("IP protocol {0}, not VRRP (112)")]
    WrongProtocol(u8),
    #[error("TTL {0}, expected 255")]
    WrongTtl(u8),
    #[error("destination {0} is neither 224.0.0.18 nor unicast")]
    WrongDestination(Ipv4Addr),
    #[error("expected a {expected} packet, got one to {dst}")]
    WrongCast {
        expected: &'static str,
        dst: Ipv4Addr,
    },
    #[error("unsupported VRRP version {0}")]
    UnsupportedVersion(u8),
    #[error("wrong VRRP version: got {got:?}, expected {expected:?}")]
    WrongVersion { got: Version, expected: Version },
    #[error("wrong VRRP type {0}, expected 1 (advertisement)")]
    WrongType(u8),
    #[error("count_ip {count} does not fit packet length {len}")]
    CountMismatch { count: u8, len: usize },
    #[error("bad checksum")]
    BadChecksum,
    #[error("wrong VRID {got}, expected {expected}")]
    WrongVrid { got: u8, expected: u8 },
    #[error("unsupported authentication type {0}")]
    UnsupportedAuthType(u8),
    #[error("authentication type mismatch")]
    AuthTypeMismatch,
    #[error("authentication data mismatch")]
    AuthMismatch,
    #[error("advertisement interval {got:?} differs from ours {expected:?}")]
    IntervalMismatch { got: Duration, expected: Duration },
    #[error("zero advertisement interval")]
    ZeroInterval,
    #[error("virtual address list differs from ours")]
    AddressMismatch,
}

impl PacketError {
    /// A stable label for the drop counter of this reason.
    pub fn counter(&self) -> &'static str {
        match self {
            PacketError::Truncated { .. } => "truncated",
            PacketError::TooLong { .. } => "too_long",
            PacketError::NotIpv4(_) => "not_ipv4",
            PacketError::BadIpHeaderLength(_) => "bad_ip_header_length",
            PacketError::IpLengthMismatch { .. } => "ip_length_mismatch",
            PacketError::WrongProtocol(_) => "wrong_protocol",
            PacketError::WrongTtl(_) => "wrong_ttl",
            PacketError::WrongDestination(_) => "wrong_destination",
            PacketError::WrongCast { .. } => "wrong_cast",
            PacketError::UnsupportedVersion(_) => "unsupported_version",
            PacketError::WrongVersion { .. } => "wrong_version",
            PacketError::WrongType(_) => "wrong_type",
            PacketError::CountMismatch { .. } => "count_mismatch",
            PacketError::BadChecksum => "bad_checksum",
            PacketError::WrongVrid { .. } => "wrong_vrid",
            PacketError::UnsupportedAuthType(_) => "unsupported_auth_type",
            PacketError::AuthTypeMismatch => "auth_type_mismatch",
            PacketError::AuthMismatch => "auth_mismatch",
            PacketError::IntervalMismatch { .. } => "interval_mismatch",
            PacketError::ZeroInterval => "zero_interval",
            PacketError::AddressMismatch => "address_mismatch",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("advertisement interval {0:?} is not representable in this VRRP version")]
    Interval(Duration),
    #[error("{0} virtual addresses, at most 255 fit in an advertisement")]
    TooManyAddresses(usize),
    #[error("VRRPv3 has no authentication")]
    AuthOnV3,
}

/// The IPv4 header facts VRRP cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
}

impl Ipv4Info {
    pub fn is_multicast(&self) -> bool {
        self.dst == VRRP_MULTICAST
    }
}

/// Splits a received IPv4 datagram (a raw socket hands us the header) into
/// its header facts and the VRRP payload.
pub fn parse_ipv4(datagram: &[u8]) -> Result<(Ipv4Info, &[u8]), PacketError> {
    const MIN: usize = 20;
    if datagram.len() < MIN {
        return Err(PacketError::Truncated {
            len: datagram.len(),
            need: MIN,
        });
    }
    let version = datagram[0] >> 4;
    if version != 4 {
        return Err(PacketError::NotIpv4(version));
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    if ihl < MIN {
        return Err(PacketError::BadIpHeaderLength(ihl));
    }
    if datagram.len() < ihl {
        return Err(PacketError::Truncated {
            len: datagram.len(),
            need: ihl,
        });
    }
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if total != datagram.len() {
        return Err(PacketError::IpLengthMismatch {
            header: total,
            received: datagram.len(),
        });
    }
    if datagram[9] != IPPROTO_VRRP {
        return Err(PacketError::WrongProtocol(datagram[9]));
    }
    let dst = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    if dst.is_multicast() && dst != VRRP_MULTICAST || dst.is_broadcast() || dst.is_unspecified() {
        return Err(PacketError::WrongDestination(dst));
    }
    let info = Ipv4Info {
        src: Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]),
        dst,
        ttl: datagram[8],
    };
    Ok((info, &datagram[ihl..]))
}

/// RFC 1071 one's complement sum, continued from `acc`, not yet folded.
fn sum16(bytes: &[u8], mut acc: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // Truncation is exact: the loop leaves at most 16 bits.
    acc as u16
}

/// The pseudo-header keepalived prepends for v3 over IPv4: the real source
/// and destination (224.0.0.18, or the peer for unicast), a zero byte,
/// protocol 112 and the VRRP length.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, vrrp_len: usize) -> u32 {
    let mut ph = [0u8; 12];
    ph[0..4].copy_from_slice(&src.octets());
    ph[4..8].copy_from_slice(&dst.octets());
    ph[9] = IPPROTO_VRRP;
    // A VRRP payload is at most 8 + 255 * 4 + 8 bytes, well within u16.
    ph[10..12].copy_from_slice(&(vrrp_len as u16).to_be_bytes());
    sum16(&ph, 0)
}

/// The checksum of a VRRP payload whose checksum field is zero (or, when
/// verifying, holds the received value: then a valid packet yields 0).
pub fn checksum(version: Version, payload: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
    let acc = match version {
        Version::V2 => 0,
        Version::V3 => pseudo_header_sum(src, dst, payload.len()),
    };
    !fold(sum16(payload, acc))
}

impl Advert {
    /// Decodes a VRRP payload. `src` and `dst` come from the IPv4 header: the
    /// v3 checksum covers them.
    pub fn decode(payload: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self, PacketError> {
        if payload.len() < HEADER_LEN {
            return Err(PacketError::Truncated {
                len: payload.len(),
                need: HEADER_LEN,
            });
        }
        let version = match payload[0] >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            v => return Err(PacketError::UnsupportedVersion(v)),
        };
        let kind = payload[0] & 0x0f;
        if kind != ADVERTISEMENT {
            return Err(PacketError::WrongType(kind));
        }
        let count = payload[3];
        let expected = HEADER_LEN
            + usize::from(count) * 4
            + match version {
                Version::V2 => AUTH_LEN,
                Version::V3 => 0,
            };
        if payload.len() < expected {
            return Err(PacketError::CountMismatch {
                count,
                len: payload.len(),
            });
        }
        if payload.len() > expected {
            return Err(PacketError::TooLong {
                len: payload.len(),
                expected,
            });
        }
        if checksum(version, payload, src, dst) != 0 {
            return Err(PacketError::BadChecksum);
        }
        let addresses = payload[HEADER_LEN..HEADER_LEN + usize::from(count) * 4]
            .chunks_exact(4)
            .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            .collect();
        let (advert_int, auth) = match version {
            Version::V2 => {
                let auth_data = &payload[expected - AUTH_LEN..];
                let auth = match payload[4] {
                    AUTH_NONE => Auth::None,
                    AUTH_PASS => {
                        let mut data = [0u8; AUTH_LEN];
                        data.copy_from_slice(auth_data);
                        Auth::Pass(data)
                    }
                    other => return Err(PacketError::UnsupportedAuthType(other)),
                };
                (Duration::from_secs(u64::from(payload[5])), auth)
            }
            Version::V3 => {
                let cs = u16::from_be_bytes([payload[4], payload[5]]) & V3_INTERVAL_MASK;
                (Duration::from_millis(u64::from(cs) * 10), Auth::None)
            }
        };
        if advert_int.is_zero() {
            return Err(PacketError::ZeroInterval);
        }
        Ok(Advert {
            version,
            vrid: payload[1],
            priority: payload[2],
            advert_int,
            auth,
            addresses,
        })
    }

    /// Encodes the VRRP payload (no IPv4 header: the kernel writes it). `src`
    /// and `dst` must be the addresses the packet will carry, because the v3
    /// checksum covers them.
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Vec<u8>, EncodeError> {
        let count = u8::try_from(self.addresses.len())
            .map_err(|_| EncodeError::TooManyAddresses(self.addresses.len()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.addresses.len() * 4 + AUTH_LEN);
        let (vers_type, word) = match self.version {
            Version::V2 => {
                let (auth_type, _) = self.auth_fields();
                (
                    0x20 | ADVERTISEMENT,
                    [auth_type, v2_interval(self.advert_int)?],
                )
            }
            Version::V3 => {
                if self.auth != Auth::None {
                    return Err(EncodeError::AuthOnV3);
                }
                (
                    0x30 | ADVERTISEMENT,
                    v3_interval(self.advert_int)?.to_be_bytes(),
                )
            }
        };
        out.extend_from_slice(&[vers_type, self.vrid, self.priority, count]);
        out.extend_from_slice(&word);
        out.extend_from_slice(&[0, 0]);
        for addr in &self.addresses {
            out.extend_from_slice(&addr.octets());
        }
        if self.version == Version::V2 {
            out.extend_from_slice(&self.auth_fields().1);
        }
        let sum = checksum(self.version, &out, src, dst);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    fn auth_fields(&self) -> (u8, [u8; AUTH_LEN]) {
        match self.auth {
            Auth::None => (AUTH_NONE, [0; AUTH_LEN]),
            Auth::Pass(data) => (AUTH_PASS, data),
        }
    }
}

fn v2_interval(d: Duration) -> Result<u8, EncodeError> {
    if d.subsec_nanos() != 0 {
        return Err(EncodeError::Interval(d));
    }
    match u8::try_from(d.as_secs()) {
        Ok(s) if s > 0 => Ok(s),
        _ => Err(EncodeError::Interval(d)),
    }
}

fn v3_interval(d: Duration) -> Result<u16, EncodeError> {
    if !d.subsec_nanos().is_multiple_of(10_000_000) {
        return Err(EncodeError::Interval(d));
    }
    match u16::try_from(d.as_millis() / 10) {
        Ok(cs) if cs > 0 && cs <= V3_INTERVAL_MASK => Ok(cs),
        _ => Err(EncodeError::Interval(d)),
    }
}

/// Checks that `advert_int` is representable in `version` (whole seconds up to
/// 255 for v2, centiseconds up to 40.95 s for v3).
pub fn validate_interval(version: Version, advert_int: Duration) -> Result<(), EncodeError> {
    match version {
        Version::V2 => v2_interval(advert_int).map(drop),
        Version::V3 => v3_interval(advert_int).map(drop),
    }
}

/// What this instance accepts, in keepalived's order of checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub version: Version,
    pub vrid: u8,
    pub auth: Auth,
    pub advert_int: Duration,
    pub addresses: Vec<Ipv4Addr>,
    /// Unicast instances accept any TTL and only unicast packets; multicast
    /// ones need TTL 255 and 224.0.0.18.
    pub unicast: bool,
}

impl Expected {
    pub fn check(&self, ip: &Ipv4Info, advert: &Advert) -> Result<(), PacketError> {
        if advert.vrid != self.vrid {
            return Err(PacketError::WrongVrid {
                got: advert.vrid,
                expected: self.vrid,
            });
        }
        if !self.unicast && ip.ttl != VRRP_TTL {
            return Err(PacketError::WrongTtl(ip.ttl));
        }
        if advert.version != self.version {
            return Err(PacketError::WrongVersion {
                got: advert.version,
                expected: self.version,
            });
        }
        if self.version == Version::V2 {
            match (&self.auth, &advert.auth) {
                (Auth::None, Auth::None) => {}
                (Auth::Pass(ours), Auth::Pass(theirs)) => {
                    if ours != theirs {
                        return Err(PacketError::AuthMismatch);
                    }
                }
                _ => return Err(PacketError::AuthTypeMismatch),
            }
            // RFC 3768 requires the same interval; keepalived drops the
            // packet so that two masters cannot run with different timers.
            if advert.advert_int != self.advert_int {
                return Err(PacketError::IntervalMismatch {
                    got: advert.advert_int,
                    expected: self.advert_int,
                });
            }
        }
        if ip.is_multicast() == self.unicast {
            return Err(PacketError::WrongCast {
                expected: if self.unicast { "unicast" } else { "multicast" },
                dst: ip.dst,
            });
        }
        // keepalived compares the lists as sets: order is free.
        if advert.addresses.len() != self.addresses.len()
            || self.addresses.iter().any(|a| !advert.addresses.contains(a))
        {
            return Err(PacketError::AddressMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH_AH: u8 = 2;
    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

    // vrid 51, priority 100, one VIP 198.18.0.100, advert_int 1 s, no auth.
    // Checksum by hand: 0x2133 + 0x6401 + 0x0001 + 0xc612 + 0x0064 = 0x14bab,
    // folded 0x4bac, complemented 0xb453.
    const V2_GOLDEN: [u8; 20] = [
        0x21, 0x33, 0x64, 0x01, 0x00, 0x01, 0xb4, 0x53, 198, 18, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    // Same instance in v3, 100 cs, from 198.18.0.1 to 224.0.0.18. The
    // pseudo-header adds 0xc612 + 0x0001 + 0xe000 + 0x0012 + 0x0070 + 0x000c;
    // with the payload words the sum is 0x302af, folded 0x02b2, complemented
    // 0xfd4d.
    const V3_GOLDEN: [u8; 12] = [
        0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0xfd, 0x4d, 198, 18, 0, 100,
    ];

    fn v2() -> Advert {
        Advert {
            version: Version::V2,
            vrid: 51,
            priority: 100,
            advert_int: Duration::from_secs(1),
            auth: Auth::None,
            addresses: vec![VIP],
        }
    }

    fn v3() -> Advert {
        Advert {
            version: Version::V3,
            ..v2()
        }
    }

    fn expected(a: &Advert) -> Expected {
        Expected {
            version: a.version,
            vrid: a.vrid,
            auth: a.auth,
            advert_int: a.advert_int,
            addresses: a.addresses.clone(),
            unicast: false,
        }
    }

    fn mcast(ttl: u8) -> Ipv4Info {
        Ipv4Info {
            src: SRC,
            dst: VRRP_MULTICAST,
            ttl,
        }
    }

    #[test]
    fn v2_golden_encode_and_decode() {
        assert_eq!(v2().encode(SRC, VRRP_MULTICAST).unwrap(), V2_GOLDEN);
        assert_eq!(
            Advert::decode(&V2_GOLDEN, SRC, VRRP_MULTICAST).unwrap(),
            v2()
        );
    }

    #[test]
    fn v2_checksum_ignores_addresses() {
        let other = Ipv4Addr::new(198, 19, 1, 1);
        assert_eq!(Advert::decode(&V2_GOLDEN, other, other).unwrap(), v2());
    }

    #[test]
    fn v3_golden_encode_and_decode() {
        assert_eq!(v3().encode(SRC, VRRP_MULTICAST).unwrap(), V3_GOLDEN);
        assert_eq!(
            Advert::decode(&V3_GOLDEN, SRC, VRRP_MULTICAST).unwrap(),
            v3()
        );
    }

    #[test]
    fn v3_checksum_covers_pseudo_header() {
        let other = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(
            Advert::decode(&V3_GOLDEN, other, VRRP_MULTICAST),
            Err(PacketError::BadChecksum)
        );
        assert_eq!(
            Advert::decode(&V3_GOLDEN, SRC, other),
            Err(PacketError::BadChecksum)
        );
    }

    #[test]
    fn v2_password_is_truncated_and_padded() {
        let a = Advert {
            auth: Auth::pass("secret-password"),
            ..v2()
        };
        let bytes = a.encode(SRC, VRRP_MULTICAST).unwrap();
        assert_eq!(bytes[4], AUTH_PASS);
        assert_eq!(&bytes[12..], b"secret-p");
        assert_eq!(Auth::pass("ab"), Auth::Pass(*b"ab\0\0\0\0\0\0"));
        assert_eq!(Advert::decode(&bytes, SRC, VRRP_MULTICAST).unwrap(), a);
    }

    #[test]
    fn v3_interval_is_12_bits_of_centiseconds() {
        let a = Advert {
            advert_int: Duration::from_millis(40_950),
            ..v3()
        };
        let bytes = a.encode(SRC, VRRP_MULTICAST).unwrap();
        assert_eq!(&bytes[4..6], &[0x0f, 0xff]);
        assert_eq!(Advert::decode(&bytes, SRC, VRRP_MULTICAST).unwrap(), a);
        for bad in [
            Duration::from_millis(40_960),
            Duration::from_millis(15),
            Duration::ZERO,
        ] {
            let a = Advert {
                advert_int: bad,
                ..v3()
            };
            assert_eq!(
                a.encode(SRC, VRRP_MULTICAST),
                Err(EncodeError::Interval(bad))
            );
        }
    }

    #[test]
    fn v3_reserved_bits_are_ignored() {
        let mut bytes = V3_GOLDEN;
        bytes[4] |= 0xf0;
        let sum = checksum(
            Version::V3,
            &{
                let mut z = bytes;
                z[6] = 0;
                z[7] = 0;
                z
            },
            SRC,
            VRRP_MULTICAST,
        );
        bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(Advert::decode(&bytes, SRC, VRRP_MULTICAST).unwrap(), v3());
    }

    #[test]
    fn v2_interval_is_whole_seconds() {
        for bad in [Duration::from_millis(1500), Duration::from_secs(256)] {
            let a = Advert {
                advert_int: bad,
                ..v2()
            };
            assert_eq!(
                a.encode(SRC, VRRP_MULTICAST),
                Err(EncodeError::Interval(bad))
            );
        }
        let a = Advert {
            auth: Auth::pass("x"),
            ..v3()
        };
        assert_eq!(a.encode(SRC, VRRP_MULTICAST), Err(EncodeError::AuthOnV3));
    }

    #[test]
    fn structural_rejections() {
        let d = |b: &[u8]| Advert::decode(b, SRC, VRRP_MULTICAST);
        assert_eq!(
            d(&V2_GOLDEN[..7]),
            Err(PacketError::Truncated { len: 7, need: 8 })
        );
        let mut b = V2_GOLDEN;
        b[0] = 0x41;
        assert_eq!(d(&b), Err(PacketError::UnsupportedVersion(4)));
        let mut b = V2_GOLDEN;
        b[0] = 0x22;
        assert_eq!(d(&b), Err(PacketError::WrongType(2)));
        let mut b = V2_GOLDEN;
        b[3] = 2;
        assert_eq!(d(&b), Err(PacketError::CountMismatch { count: 2, len: 20 }));
        assert_eq!(
            d(&V2_GOLDEN[..19]),
            Err(PacketError::CountMismatch { count: 1, len: 19 })
        );
        let mut long = V2_GOLDEN.to_vec();
        long.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            d(&long),
            Err(PacketError::TooLong {
                len: 24,
                expected: 20
            })
        );
        let mut b = V2_GOLDEN;
        b[2] = 101;
        assert_eq!(d(&b), Err(PacketError::BadChecksum));
    }

    fn with_checksum(mut b: Vec<u8>, version: Version) -> Vec<u8> {
        b[6] = 0;
        b[7] = 0;
        let sum = checksum(version, &b, SRC, VRRP_MULTICAST);
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        b
    }

    #[test]
    fn ah_and_unknown_auth_types_are_rejected() {
        for t in [AUTH_AH, 3] {
            let mut b = V2_GOLDEN.to_vec();
            b[4] = t;
            let b = with_checksum(b, Version::V2);
            assert_eq!(
                Advert::decode(&b, SRC, VRRP_MULTICAST),
                Err(PacketError::UnsupportedAuthType(t))
            );
        }
    }

    #[test]
    fn zero_interval_is_rejected() {
        let mut b = V2_GOLDEN.to_vec();
        b[5] = 0;
        let b = with_checksum(b, Version::V2);
        assert_eq!(
            Advert::decode(&b, SRC, VRRP_MULTICAST),
            Err(PacketError::ZeroInterval)
        );
    }

    #[test]
    fn instance_checks() {
        let ours = v2();
        let exp = expected(&ours);
        assert_eq!(exp.check(&mcast(255), &ours), Ok(()));
        assert_eq!(
            exp.check(&mcast(254), &ours),
            Err(PacketError::WrongTtl(254))
        );
        let other_vrid = Advert { vrid: 52, ..v2() };
        assert_eq!(
            exp.check(&mcast(255), &other_vrid),
            Err(PacketError::WrongVrid {
                got: 52,
                expected: 51
            })
        );
        assert_eq!(
            exp.check(&mcast(255), &v3()),
            Err(PacketError::WrongVersion {
                got: Version::V3,
                expected: Version::V2
            })
        );
        let pass = Advert {
            auth: Auth::pass("a"),
            ..v2()
        };
        assert_eq!(
            exp.check(&mcast(255), &pass),
            Err(PacketError::AuthTypeMismatch)
        );
        let exp_pass = expected(&pass);
        let wrong_pass = Advert {
            auth: Auth::pass("b"),
            ..v2()
        };
        assert_eq!(
            exp_pass.check(&mcast(255), &wrong_pass),
            Err(PacketError::AuthMismatch)
        );
        let slow = Advert {
            advert_int: Duration::from_secs(2),
            ..v2()
        };
        assert!(matches!(
            exp.check(&mcast(255), &slow),
            Err(PacketError::IntervalMismatch { .. })
        ));
        let vips = Advert {
            addresses: vec![Ipv4Addr::new(198, 18, 0, 101)],
            ..v2()
        };
        assert_eq!(
            exp.check(&mcast(255), &vips),
            Err(PacketError::AddressMismatch)
        );
        let unicast = Ipv4Info {
            dst: Ipv4Addr::new(198, 18, 0, 2),
            ..mcast(255)
        };
        assert!(matches!(
            exp.check(&unicast, &ours),
            Err(PacketError::WrongCast { .. })
        ));
    }

    #[test]
    fn v3_learns_any_interval_and_unicast_ignores_ttl() {
        let exp = Expected {
            unicast: true,
            ..expected(&v3())
        };
        let peer = Ipv4Info {
            src: SRC,
            dst: Ipv4Addr::new(198, 18, 0, 2),
            ttl: 64,
        };
        let slow = Advert {
            advert_int: Duration::from_secs(3),
            ..v3()
        };
        assert_eq!(exp.check(&peer, &slow), Ok(()));
    }

    fn ipv4(payload: &[u8], ttl: u8, proto: u8, dst: Ipv4Addr) -> Vec<u8> {
        let mut h = vec![0x45, 0xc0, 0, 0, 0, 0, 0, 0, ttl, proto, 0, 0];
        h.extend_from_slice(&SRC.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        let len = h.len() as u16;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn ipv4_header_facts() {
        let pkt = ipv4(&V3_GOLDEN, 255, IPPROTO_VRRP, VRRP_MULTICAST);
        let (info, payload) = parse_ipv4(&pkt).unwrap();
        assert_eq!(info, mcast(255));
        assert_eq!(payload, V3_GOLDEN);
        assert_eq!(
            parse_ipv4(&ipv4(&V3_GOLDEN, 255, 6, VRRP_MULTICAST)),
            Err(PacketError::WrongProtocol(6))
        );
        let other_group = Ipv4Addr::new(224, 0, 0, 1);
        assert_eq!(
            parse_ipv4(&ipv4(&V3_GOLDEN, 255, IPPROTO_VRRP, other_group)),
            Err(PacketError::WrongDestination(other_group))
        );
        assert!(parse_ipv4(&ipv4(&V3_GOLDEN, 1, IPPROTO_VRRP, SRC)).is_ok());
        assert!(matches!(
            parse_ipv4(&pkt[..pkt.len() - 1]),
            Err(PacketError::IpLengthMismatch { .. })
        ));
        assert!(matches!(
            parse_ipv4(&pkt[..10]),
            Err(PacketError::Truncated { .. })
        ));
        let mut v6 = pkt.clone();
        v6[0] = 0x65;
        assert_eq!(parse_ipv4(&v6), Err(PacketError::NotIpv4(6)));
    }
}
