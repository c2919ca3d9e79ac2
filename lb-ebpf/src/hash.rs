//! The hashes that pick a Maglev slot: of the flow (`mh`) or of the client
//! address alone (`sh`), for IPv4 and IPv6.
//!
//! Both LB nodes must pick the same backend for a flow (so `dr` flows survive a
//! VRRP failover with identical tables), hence a fixed, seedless function of
//! the 5-tuple. It is murmur3's 32-bit mixing over three words: cheap in BPF
//! (no loops, no tables) and well spread for sequential client ports.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow; all arguments exactly as they sit in the packet (network
/// order read as native integers), so the datapath does no byte swapping.
#[inline(always)]
pub fn flow_hash(src_addr: u32, dst_addr: u32, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let ports = ((src_port as u32) << 16) | dst_port as u32;
    let h = mix(proto as u32, src_addr);
    let h = mix(h, dst_addr);
    let h = mix(h, ports);
    fmix(h ^ 12)
}

/// Hash of the client address alone (the `sh` scheduler): every connection
/// of a client, whatever its ports, lands on the same slot.
#[inline(always)]
pub fn client_hash(src_addr: u32) -> u32 {
    fmix(mix(0, src_addr) ^ 4)
}

/// [`flow_hash`] of an IPv6 flow: the same mixing over all eight address
/// words, so every address bit counts.
#[inline(always)]
pub fn flow_hash6(src: &[u32; 4], dst: &[u32; 4], src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let ports = ((src_port as u32) << 16) | dst_port as u32;
    let mut h = proto as u32;
    let mut i = 0;
    while i < 4 {
        h = mix(h, src[i]);
        h = mix(h, dst[i]);
        i += 1;
    }
    fmix(mix(h, ports) ^ 36)
}

/// [`client_hash`] of an IPv6 client: all four address words, so clients
/// that differ only in their interface identifier still spread.
#[inline(always)]
pub fn client_hash6(src: &[u32; 4]) -> u32 {
    let mut h = 0;
    let mut i = 0;
    while i < 4 {
        h = mix(h, src[i]);
        i += 1;
    }
    fmix(h ^ 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ports_spread_over_buckets() {
        let mut buckets = [0u32; 16];
        for p in 0..16_000u16 {
            buckets[(flow_hash(0x0100_12c6, 0x1400_12c6, p, 80, 6) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "uneven bucket: {buckets:?}");
        }
    }

    #[test]
    fn v6_hash_spreads_ports_and_sees_every_address_word() {
        let (src, dst) = ([0x0120, 0, 0, 0x0100_0000], [0x0120, 0, 0, 0x6400_0000]);
        let mut buckets = [0u32; 16];
        for p in 0..16_000u16 {
            buckets[(flow_hash6(&src, &dst, p, 80, 6) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "uneven bucket: {buckets:?}");
        }
        let base = flow_hash6(&src, &dst, 1, 80, 6);
        for w in 0..4 {
            let mut s = src;
            s[w] ^= 1;
            assert_ne!(flow_hash6(&s, &dst, 1, 80, 6), base, "word {w}");
        }
    }

    /// `sh` over IPv6: clients that differ in any address word, including
    /// only in the interface identifier, spread.
    #[test]
    fn v6_client_hash_sees_every_address_word_and_spreads() {
        let base = [0x0120, 0, 0, 0];
        let mut buckets = [0u32; 16];
        for i in 0..16_000u32 {
            let c = [base[0], base[1], base[2], i.to_be()];
            buckets[(client_hash6(&c) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "uneven bucket: {buckets:?}");
        }
        let h = client_hash6(&base);
        for w in 0..4 {
            let mut c = base;
            c[w] ^= 1;
            assert_ne!(client_hash6(&c), h, "word {w}");
        }
    }
}
