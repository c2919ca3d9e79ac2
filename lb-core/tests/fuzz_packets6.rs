//! Packet fuzzing of the IPv6 path of `lb_xdp` through BPF_PROG_TEST_RUN.
//!
//! Valid IPv6 TCP/UDP frames to dr and nat VIPs (and to other addresses)
//! are mutated (bytes, lengths, next headers, truncation) and run through
//! the datapath, against an oracle that does not trust it: etherparse plus
//! explicit checks decide what is well formed, and the policy of
//! `lb-ebpf/README.md` what may happen to it. A forwarded frame must be well
//! formed on both sides, keep its payload and have a right checksum when the
//! input had one; a passed frame must be untouched; only traffic to a VIP
//! address may be dropped. The IPv4
//! fuzzer, with a full flow model, is `fuzz_packets.rs`.
mod common;

use std::collections::BTreeMap;

use common::*;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_core::{
    datapath::{Datapath, Limits, addr6},
    table::{Member, build_maglev},
};
use lb_ebpf::abi::{self, Backend, VipKey6, VipMeta, VipMeta6};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SEED: u64 = 0x6_f022_2026;
const CASES: u64 = 1_000_000;
const TABLE: u32 = 1_009;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn a6(last: u16) -> [u8; 16] {
    std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last).octets()
}

/// (VIP address, port, protocol, mode).
const SERVICES: [(u16, u16, u8, u8); 3] = [
    (0x100, 80, TCP, abi::MODE_DR),
    (0x100, 53, UDP, abi::MODE_DR),
    (0x101, 80, TCP, abi::MODE_NAT),
];
const OTHER: u16 = 0x200;

fn load() -> Datapath {
    require_root();
    let mut dp = Datapath::load(Limits {
        max_vips: SERVICES.len() as u32,
        max_backends: 4,
        ring_stride: TABLE,
        flow_capacity: 1 << 16,
        new_flow_cap: 0,
    })
    .expect("loading the datapath");
    let members: Vec<Member> = (0..4u32)
        .map(|id| {
            let addr = a6(0x1000 + id as u16);
            let be = Backend {
                port: 8033u16.to_be(),
                mac: [2, 0, 0, 0, 1, id as u8],
                src_mac: LB_MAC,
                ..Default::default()
            };
            dp.set_backend6(id, addr.into(), be).expect("backend");
            Member {
                id,
                addr: (addr, 8033).into(),
                weight: 1,
            }
        })
        .collect();
    let table = build_maglev(&members, TABLE).expect("maglev");
    for (id, (addr, port, proto, mode)) in SERVICES.iter().enumerate() {
        let key = VipKey6 {
            addr: addr6(a6(*addr).into()),
            port: port.to_be(),
            proto: *proto,
            _pad: 0,
        };
        let meta = VipMeta6 {
            meta: VipMeta {
                id: id as u32,
                mode: *mode,
                snat_port_min: 20_000,
                snat_port_max: 29_999,
                tcp_timeout_s: 900,
                udp_timeout_s: 900,
                ..Default::default()
            },
            snat_addr: addr6(a6(2).into()),
            persist_mask: [u32::MAX; 4],
            ..Default::default()
        };
        dp.set_vip6(key, meta).expect("vip");
        dp.set_members(id as u32, &[0, 1, 2, 3]).expect("members");
        dp.swap_table(id as u32, abi::TABLE_MAGLEV, &table)
            .expect("table");
    }
    dp
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// An untagged IPv6 TCP/UDP frame without extension headers whose lengths
/// agree: what the datapath may forward.
fn well_formed(f: &[u8]) -> bool {
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        return false;
    };
    if p.vlan.is_some() || !matches!(p.net, Some(NetSlice::Ipv6(_))) || f[14] >> 4 != 6 {
        return false;
    }
    let plen = be16(f, 18) as usize;
    if 54 + plen > f.len() {
        return false;
    }
    match (f[20], p.transport) {
        (TCP, Some(TransportSlice::Tcp(_))) => {
            let doff = (f[54 + 12] >> 4) as usize * 4;
            plen >= 20 && doff >= 20 && doff <= plen
        }
        (UDP, Some(TransportSlice::Udp(_))) => {
            let ulen = be16(f, 54 + 4) as usize;
            plen >= 8 && ulen >= 8 && ulen <= plen
        }
        _ => false,
    }
}

/// Whether the L4 checksum of a well-formed frame is right (a UDP 0, "no
/// checksum", counts as right: the datapath keeps it).
fn sum_ok(f: &[u8]) -> bool {
    let p = SlicedPacket::from_ethernet(f).expect("well formed");
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        unreachable!("well-formed frames are IPv6")
    };
    let h = ip.header().to_header();
    let same = |a: u16, b: u16| a == b || (a | b == 0xffff && (a == 0 || b == 0));
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => same(
            t.checksum(),
            t.calc_checksum_ipv6(h.source, h.destination).unwrap(),
        ),
        Some(TransportSlice::Udp(u)) => {
            u.checksum() == 0
                || same(
                    u.checksum(),
                    u.to_header()
                        .calc_checksum_ipv6_raw(h.source, h.destination, u.payload())
                        .unwrap(),
                )
        }
        _ => unreachable!("well-formed frames are TCP or UDP"),
    }
}

fn service_of(f: &[u8]) -> Option<usize> {
    SERVICES.iter().position(|(addr, port, proto, _)| {
        f[38..54] == a6(*addr) && f[20] == *proto && be16(f, 56) == *port
    })
}

/// dr leaves the IPv6 packet alone; nat changes only the addresses (to
/// SNAT → a backend), the ports (the destination to 8033) and the L4
/// checksum.
fn rewritten_as_its_mode(f: &[u8], out: &[u8]) -> bool {
    let Some(s) = service_of(f) else {
        return false;
    };
    if out.len() != f.len() {
        return false;
    }
    if SERVICES[s].3 == abi::MODE_DR {
        return out[14..] == f[14..];
    }
    let csum = if f[20] == TCP { 54 + 16 } else { 54 + 6 };
    let backends: Vec<[u8; 16]> = (0..4).map(|i| a6(0x1000 + i)).collect();
    out[14..22] == f[14..22]
        && out[22..38] == a6(2)
        && backends.iter().any(|b| out[38..54] == b[..])
        && be16(out, 56) == 8033
        && out[58..csum] == f[58..csum]
        && out[csum + 2..] == f[csum + 2..]
}

fn to_vip_address(f: &[u8]) -> bool {
    f.len() >= 54 && (f[38..54] == a6(0x100) || f[38..54] == a6(0x101))
}

/// A valid frame, then zero or more mutations.
fn generate(rng: &mut SmallRng) -> Vec<u8> {
    let (dst, port, proto) = match rng.random_range(0..5) {
        0 => (OTHER, 80, TCP),
        n => {
            let (a, p, pr, _) = SERVICES[n % SERVICES.len()];
            (a, p, pr)
        }
    };
    let client = 0x10 + rng.random_range(0..16u16);
    let sport = 30_000 + rng.random_range(0..256u16);
    let len = rng.random_range(0..64usize);
    let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    let mut f = frame6(
        CLIENT_MAC,
        LB_MAC,
        a6(client),
        a6(dst),
        sport,
        port,
        proto,
        &payload,
    );
    for _ in 0..rng.random_range(0..4) {
        match rng.random_range(0..7) {
            0 if f.len() > 12 => {
                let i = rng.random_range(12..f.len());
                f[i] = rng.random();
            }
            1 if !f.is_empty() => {
                let l = rng.random_range(0..f.len());
                f.truncate(l);
            }
            2 if f.len() > 20 => {
                f[20] = [0, 6, 17, 43, 44, 50, 58, 59, 60][rng.random_range(0..9)];
            }
            3 if f.len() > 19 => {
                let plen = be16(&f, 18) as i32 + rng.random_range(-24..24);
                f[18..20].copy_from_slice(&(plen.clamp(0, 0xffff) as u16).to_be_bytes());
            }
            4 if f.len() > 67 => f[66] = rng.random(),
            5 if f.len() > 59 => {
                let ulen = rng.random_range(0..128u16);
                f[58..60].copy_from_slice(&ulen.to_be_bytes());
            }
            _ => f.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
        }
    }
    f
}

#[test]
fn fuzzed_ipv6_frames_are_never_forwarded_malformed() {
    let dp = load();
    let seed = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut violations: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let mut verdicts = [0u64; 5];
    for _ in 0..CASES {
        let f = generate(&mut rng);
        if f.len() < 14 {
            continue;
        }
        let out = dp.test_run(abi::prog::XDP_LB, &f, 1).expect("test run");
        verdicts[(out.verdict as usize).min(4)] += 1;
        let wrong = match out.verdict {
            XDP_PASS if out.data != f => Some("passed but changed"),
            XDP_PASS => None,
            XDP_DROP if !to_vip_address(&f) => Some("dropped traffic not ours"),
            XDP_DROP => None,
            XDP_TX => {
                if !well_formed(&f) {
                    Some("forwarded a malformed frame")
                } else if service_of(&f).is_none() {
                    Some("forwarded a frame for no service")
                } else if !well_formed(&out.data) {
                    Some("forwarded frame is malformed")
                } else if !rewritten_as_its_mode(&f, &out.data) {
                    Some("rewrite differs from the service's mode")
                } else if sum_ok(&f) && !sum_ok(&out.data) {
                    Some("checksum broken by the rewrite")
                } else {
                    None
                }
            }
            _ => Some("unexpected verdict"),
        };
        if let Some(w) = wrong {
            let e = violations.entry(w).or_insert((0, String::new()));
            e.0 += 1;
            if e.1.is_empty() {
                e.1 = f.iter().map(|b| format!("{b:02x}")).collect();
            }
        }
    }
    println!("seed {seed:#x}: verdicts (aborted, drop, pass, tx, other) {verdicts:?}");
    assert!(
        verdicts[XDP_TX as usize] > CASES / 10,
        "too few frames forwarded to exercise the rewrites: {verdicts:?}"
    );
    assert!(
        verdicts[XDP_DROP as usize] > CASES / 100,
        "too few drops to exercise the policy: {verdicts:?}"
    );
    assert!(violations.is_empty(), "violations: {violations:#?}");
}
