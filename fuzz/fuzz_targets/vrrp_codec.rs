//! The VRRP codec on arbitrary bytes: decoding never panics, and whatever
//! decodes encodes back to a payload that decodes to the same advert.
#![no_main]

use std::net::Ipv4Addr;

use lb_core::vrrp::packet::{Advert, Version, checksum, parse_ipv4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input as a whole datagram, as the raw socket hands it over.
    if let Ok((ip, payload)) = parse_ipv4(data) {
        round_trip(payload, ip.src, ip.dst);
    }
    // The input as addresses (8 bytes) and a bare payload, so the fuzzer
    // needs no valid IPv4 header to reach the decoder.
    if data.len() < 8 {
        return;
    }
    let src = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
    let dst = Ipv4Addr::new(data[4], data[5], data[6], data[7]);
    let payload = &data[8..];
    round_trip(payload, src, dst);
    // Once more with a correct checksum: random bytes almost never carry
    // one, and everything the decoder checks after it would go unexercised.
    if payload.len() >= 8 {
        let mut p = payload.to_vec();
        p[6..8].fill(0);
        let version = if p[0] >> 4 == 3 {
            Version::V3
        } else {
            Version::V2
        };
        let sum = checksum(version, &p, src, dst);
        p[6..8].copy_from_slice(&sum.to_be_bytes());
        round_trip(&p, src, dst);
    }
});

fn round_trip(payload: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
    let Ok(advert) = Advert::decode(payload, src, dst) else {
        return;
    };
    let bytes = advert
        .encode(src, dst)
        .unwrap_or_else(|e| panic!("{advert:?} decoded but does not encode: {e}"));
    assert_eq!(bytes.len(), payload.len(), "{advert:?}");
    assert_eq!(Advert::decode(&bytes, src, dst), Ok(advert));
}
