//! Packet fuzzing of the XDP datapath through BPF_PROG_TEST_RUN.
//!
//! Over a million generated frames (random bytes, and valid frames that are
//! then mutated) go through `lb_xdp` against a datapath with dr and nat VIPs,
//! TCP and UDP. Every case is judged by an oracle that does not trust the
//! datapath: etherparse plus explicit header checks decide what a well-formed
//! frame is, the policy table of `lb-ebpf/README.md` decides what must be
//! dropped, and a forwarded frame is checked field by field against what was
//! sent. Violations are collected (first example of each kind, as hex) and
//! reported together at the end, so one bug does not hide the others.
//!
//! The run is reproducible: the PRNG seed is fixed (`LB_FUZZ_SEED` overrides
//! it to explore) and printed with the rate.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use common::*;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use lb_core::{
    datapath::{Datapath, Limits},
    table::{Member, build_maglev},
};
use lb_ebpf::abi::{self, Backend, Counters, DROP_REASONS, DropReason, VipKey, VipMeta};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const SEED: u64 = 0x1b_f022_2026;
/// Cases per phase. The two phases together make the required 10^6.
const MALFORMED_CASES: u64 = 500_000;
const MIXED_CASES: u64 = 500_000;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const LB_MAC_OUT: [u8; 6] = [2, 0, 0, 0, 0, 3];
const SNAT: [u8; 4] = [198, 18, 0, 2];
const VIP_DR: [u8; 4] = [198, 18, 0, 100];
const VIP_NAT: [u8; 4] = [198, 18, 0, 101];
const OTHER: [u8; 4] = [198, 18, 0, 200];
const SNAT_PORTS: (u16, u16) = (20_000, 29_999);
const TABLE: u32 = 1_009;
const BACKENDS: u32 = 4;
/// This backend sits behind another interface, so frames to it leave with
/// `bpf_redirect` (`XDP_REDIRECT`) instead of `XDP_TX`. A test run only
/// reports the verdict; nothing is sent, so the interface need not exist.
const REDIRECT_BACKEND: usize = 3;
const REDIRECT_IFINDEX: u32 = 1_000;
/// Client pool: few enough addresses and ports that flows repeat (the
/// established-flow path) and many enough that new flows keep coming.
const CLIENTS: u8 = 32;
const CLIENT_PORTS: u16 = 64;
const CLIENT_PORT_BASE: u16 = 30_000;

#[derive(Clone, Copy, Debug)]
struct Service {
    addr: [u8; 4],
    port: u16,
    proto: u8,
    mode: u8,
}

const SERVICES: [Service; 4] = [
    Service {
        addr: VIP_DR,
        port: 80,
        proto: TCP,
        mode: abi::MODE_DR,
    },
    Service {
        addr: VIP_DR,
        port: 53,
        proto: UDP,
        mode: abi::MODE_DR,
    },
    Service {
        addr: VIP_NAT,
        port: 80,
        proto: TCP,
        mode: abi::MODE_NAT,
    },
    Service {
        addr: VIP_NAT,
        port: 53,
        proto: UDP,
        mode: abi::MODE_NAT,
    },
];

fn backend_addr(b: usize) -> [u8; 4] {
    [198, 18, 1, 1 + b as u8]
}

fn backend_port(b: usize) -> u16 {
    8_080 + b as u16
}

fn backend_mac(b: usize) -> [u8; 6] {
    [2, 0, 0, 0, 1, 1 + b as u8]
}

/// The verdict that sends a frame to backend `b`.
fn verdict_to(b: usize) -> u32 {
    if b == REDIRECT_BACKEND {
        XDP_REDIRECT
    } else {
        XDP_TX
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn addr_at(f: &[u8], at: usize) -> [u8; 4] {
    [f[at], f[at + 1], f[at + 2], f[at + 3]]
}

fn hex(f: &[u8]) -> String {
    f.iter()
        .fold(String::with_capacity(f.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn load() -> Datapath {
    require_root();
    let mut dp = Datapath::load(Limits {
        max_vips: SERVICES.len() as u32,
        max_backends: 8,
        ring_stride: TABLE,
        // Far above the entries this run can create, so LRU eviction never
        // makes the model's view of the table stale.
        flow_capacity: 1 << 18,
        new_flow_cap: 0,
    })
    .expect("loading the datapath");
    for b in 0..BACKENDS as usize {
        dp.set_backend(
            b as u32,
            Backend {
                addr: u32::from_ne_bytes(backend_addr(b)),
                port: backend_port(b).to_be(),
                flags: 0,
                _pad: 0,
                mac: backend_mac(b),
                src_mac: LB_MAC_OUT,
                ifindex: if b == REDIRECT_BACKEND {
                    REDIRECT_IFINDEX
                } else {
                    0
                },
            },
        )
        .expect("set_backend");
    }
    let members: Vec<Member> = (0..BACKENDS)
        .map(|id| Member {
            id,
            addr: (backend_addr(id as usize), backend_port(id as usize)).into(),
            weight: 1,
        })
        .collect();
    let table = build_maglev(&members, TABLE).expect("maglev");
    for (id, s) in SERVICES.iter().enumerate() {
        dp.set_vip(
            VipKey {
                addr: u32::from_ne_bytes(s.addr),
                port: s.port.to_be(),
                proto: s.proto,
                _pad: 0,
            },
            VipMeta {
                id: id as u32,
                mode: s.mode,
                snat_addr: u32::from_ne_bytes(SNAT),
                snat_port_min: SNAT_PORTS.0,
                snat_port_max: SNAT_PORTS.1,
                tcp_timeout_s: 900,
                udp_timeout_s: 900,
                ..Default::default()
            },
        )
        .expect("set_vip");
        let ids: Vec<u32> = (0..BACKENDS).collect();
        dp.set_members(id as u32, &ids).expect("set_members");
        dp.swap_table(id as u32, abi::TABLE_MAGLEV, &table)
            .expect("swap_table");
    }
    dp
}

/// What the policy of `lb-ebpf/README.md` says must happen to a frame.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// `XDP_PASS`, frame untouched.
    Pass,
    Drop(DropReason),
    /// A TCP/UDP header whose own length field does not fit, to a VIP
    /// address but no service: the README asks for a `malformed` drop, and
    /// passing it (the datapath reads no ports beyond the service lookup) is
    /// as harmless.
    DropOrPass,
    /// A well-formed frame to a service.
    Forward(usize),
    /// A well-formed reply of a known nat flow.
    Reply(NatFlow),
    /// A reply to a SNAT port its client flow has since left for another
    /// (the connection was reopened): the datapath may still translate it or
    /// may have freed the entry, so either is right.
    ReplyOrPass(NatFlow),
}

/// The client side of a nat flow, learned from the forward frames the
/// datapath emitted.
#[derive(Clone, Copy, Debug, PartialEq)]
struct NatFlow {
    client: [u8; 4],
    client_port: u16,
    service: usize,
}

/// (proto, backend address, backend port, SNAT port): the reply's key.
type ReplyKey = (u8, [u8; 4], u16, u16);
/// (src, dst, sport, dport, proto) as on the wire.
type Tuple = ([u8; 4], [u8; 4], u16, u16, u8);

/// A well-formed IPv4 TCP/UDP frame without options or fragmentation: what
/// the datapath may forward. etherparse must accept it (strict, not lax),
/// and the checks etherparse leaves out are made explicitly.
fn well_formed(f: &[u8]) -> bool {
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        return false;
    };
    if p.vlan.is_some() || !matches!(p.net, Some(NetSlice::Ipv4(_))) {
        return false;
    }
    if f[12..14] != [8, 0] || f[14] != 0x45 || be16(f, 20) & 0x3fff != 0 {
        return false;
    }
    let tot = be16(f, 16) as usize;
    if 14 + tot > f.len() {
        return false;
    }
    match (f[23], p.transport) {
        (TCP, Some(TransportSlice::Tcp(_))) => {
            let doff = (f[46] >> 4) as usize * 4;
            tot >= 40 && doff >= 20 && doff <= tot - 20
        }
        (UDP, Some(TransportSlice::Udp(_))) => {
            // 0 would mean "take the length from IP" (a jumbogram rule):
            // IPv4 has no such thing. Shorter than the IP payload is legal
            // (the receiver trims), longer is truncation.
            let ulen = be16(f, 38) as usize;
            tot >= 28 && ulen >= 8 && ulen <= tot - 20
        }
        _ => false,
    }
}

/// Why a frame is not well-formed: groups the violations by cause.
fn defect(f: &[u8]) -> &'static str {
    if f[12..14] != [8, 0] {
        return "not an untagged IPv4 EtherType";
    }
    if f.len() < 34 {
        return "IPv4 header truncated";
    }
    if f[14] != 0x45 {
        return "version or IHL";
    }
    if be16(f, 20) & 0x3fff != 0 {
        return "fragment";
    }
    let tot = be16(f, 16) as usize;
    match f[23] {
        TCP if tot >= 40 && 14 + tot <= f.len() => match (f[46] >> 4) as usize * 4 {
            d if d < 20 => "TCP data offset below 5",
            d if d > tot - 20 => "TCP data offset past the segment",
            _ => "rejected by etherparse",
        },
        UDP if tot >= 28 && 14 + tot <= f.len() => match be16(f, 38) as usize {
            0 => "UDP length 0",
            u if u < 8 => "UDP length below 8",
            u if u > tot - 20 => "UDP length past the datagram",
            _ => "rejected by etherparse",
        },
        TCP | UDP => "IPv4 total length",
        _ => "not TCP or UDP",
    }
}

/// 0x0000 and 0xffff are the two one's-complement zeros: an incremental
/// update may produce either where a full computation gives the other.
fn same_sum(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sum {
    Good,
    Bad,
    /// UDP without a checksum (0).
    Absent,
}

/// IPv4 header and L4 checksum states of a well-formed frame, by etherparse.
fn sums(f: &[u8]) -> (Sum, Sum) {
    let p = SlicedPacket::from_ethernet(f).expect("sums of a well-formed frame");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        unreachable!("well-formed frames are IPv4")
    };
    let h = ip.header().to_header();
    let ok = |good| if good { Sum::Good } else { Sum::Bad };
    let ip_sum = ok(same_sum(h.header_checksum, h.calc_header_checksum()));
    let l4 = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let c = t.calc_checksum_ipv4(h.source, h.destination).unwrap();
            ok(same_sum(t.checksum(), c))
        }
        Some(TransportSlice::Udp(u)) if u.checksum() == 0 => Sum::Absent,
        Some(TransportSlice::Udp(u)) => {
            let c = u
                .to_header()
                .calc_checksum_ipv4_raw(h.source, h.destination, u.payload())
                .unwrap();
            ok(same_sum(u.checksum(), c))
        }
        _ => unreachable!("well-formed frames are TCP or UDP"),
    };
    (ip_sum, l4)
}

/// One's-complement sum of `data` (odd length padded), not folded.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut it = data.chunks_exact(2);
    for w in &mut it {
        acc += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [b] = it.remainder() {
        acc += (*b as u32) << 8;
    }
    acc
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Recomputes the IPv4 header checksum, when the header is in the frame: a
/// mutated frame with a correct checksum gets past any checksum test and so
/// reaches the checks behind it.
fn fix_ip_sum(f: &mut [u8]) {
    let ihl = (f.get(14).copied().unwrap_or(0) & 0xf) as usize * 4;
    if ihl < 20 || f.len() < 14 + ihl {
        return;
    }
    put16(f, 24, 0);
    let c = !fold(sum16(&f[14..14 + ihl], 0));
    put16(f, 24, c);
}

/// Recomputes the TCP/UDP checksum over the L4 length the header claims,
/// when that fits in the frame.
fn fix_l4_sum(f: &mut [u8]) {
    if f.len() < 34 || f[14] >> 4 != 4 {
        return;
    }
    let ihl = (f[14] & 0xf) as usize * 4;
    let l4 = 14 + ihl;
    let tot = be16(f, 16) as usize;
    let (len, at) = match f[23] {
        TCP if tot >= ihl => (tot - ihl, l4 + 16),
        UDP if f.len() >= l4 + 8 => (be16(f, l4 + 4) as usize, l4 + 6),
        _ => return,
    };
    if ihl < 20 || len < at - l4 + 2 || f.len() < l4 + len {
        return;
    }
    put16(f, at, 0);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&f[26..34]);
    pseudo[9] = f[23];
    pseudo[10..].copy_from_slice(&(len as u16).to_be_bytes());
    let c = !fold(sum16(&f[l4..l4 + len], sum16(&pseudo, 0)));
    put16(f, at, if f[23] == UDP && c == 0 { 0xffff } else { c });
}

/// Counters of every VIP slot and the unmatched slot, in that order.
fn counters(dp: &Datapath) -> Vec<Counters> {
    let mut v: Vec<Counters> = (0..SERVICES.len() as u32)
        .map(|id| dp.vip_counters(id).expect("vip counters"))
        .collect();
    v.push(dp.unmatched_counters().expect("unmatched counters"));
    v
}

struct Fuzz {
    dp: Datapath,
    /// Xoshiro: a few instructions a number, where the test spends a good
    /// part of its time in an unoptimised build.
    rng: SmallRng,
    /// Nat reply keys seen in the datapath's output → the flow's client side.
    replies: HashMap<ReplyKey, NatFlow>,
    /// The same keys in learning order, to draw replies from in O(1).
    reply_keys: Vec<ReplyKey>,
    /// The reply key each nat client 5-tuple was last given, and the keys
    /// it was given before.
    current_reply: HashMap<Tuple, ReplyKey>,
    superseded: HashSet<ReplyKey>,
    /// Every well-formed client 5-tuple sent to a service: the only keys a
    /// forward entry may have.
    valid: HashSet<Tuple>,
    violations: BTreeMap<String, (u64, String)>,
    runs: u64,
    /// Per phase: drops the policy asked for, by reason; `XDP_DROP` verdicts;
    /// `XDP_TX` verdicts per service.
    want_drops: [u64; DROP_REASONS],
    drop_verdicts: u64,
    forwarded: [u64; SERVICES.len()],
    /// nat replies translated back to a client, over the whole run.
    replied: u64,
}

impl Fuzz {
    fn new(seed: u64) -> Self {
        Fuzz {
            dp: load(),
            rng: SmallRng::seed_from_u64(seed),
            replies: HashMap::new(),
            reply_keys: Vec::new(),
            current_reply: HashMap::new(),
            superseded: HashSet::new(),
            valid: HashSet::new(),
            violations: BTreeMap::new(),
            runs: 0,
            want_drops: [0; DROP_REASONS],
            drop_verdicts: 0,
            forwarded: [0; SERVICES.len()],
            replied: 0,
        }
    }

    fn violation(&mut self, what: impl Into<String>, detail: String) {
        let e = self.violations.entry(what.into()).or_insert((0, detail));
        e.0 += 1;
    }

    fn service_of(&self, dst: [u8; 4], dport: u16, proto: u8) -> Option<usize> {
        SERVICES
            .iter()
            .position(|s| s.addr == dst && s.port == dport && s.proto == proto)
    }

    /// The README's policy table, in the order the datapath applies it.
    /// `wf` is `well_formed(f)`, computed once per case by the caller.
    fn expect(&self, f: &[u8], wf: bool) -> Expect {
        if f[12..14] != [8, 0] {
            return Expect::Pass;
        }
        if f.len() < 34 {
            return Expect::Drop(DropReason::Malformed);
        }
        let dst = addr_at(f, 30);
        let to_vip = SERVICES.iter().any(|s| s.addr == dst);
        let policy = |r| {
            if to_vip {
                Expect::Drop(r)
            } else {
                Expect::Pass
            }
        };
        if f[14] != 0x45 {
            return policy(if f[14] >> 4 == 4 && f[14] & 0xf > 5 {
                DropReason::IpOptions
            } else {
                DropReason::Malformed
            });
        }
        if be16(f, 20) & 0x3fff != 0 {
            return policy(DropReason::Fragment);
        }
        let l4_min = match f[23] {
            TCP => 20,
            UDP => 8,
            _ => return Expect::Pass,
        };
        let tot = be16(f, 16) as usize;
        if tot < 20 + l4_min || 14 + tot > f.len() {
            return policy(DropReason::Malformed);
        }
        let (sport, dport) = (be16(f, 34), be16(f, 36));
        if let Some(s) = self.service_of(dst, dport, f[23]) {
            // "Truncated L4 header" in the README: a TCP data offset or a
            // UDP length that does not fit is a header the backend would
            // read past.
            return if wf {
                Expect::Forward(s)
            } else {
                Expect::Drop(DropReason::Malformed)
            };
        }
        if to_vip && !wf {
            return Expect::DropOrPass;
        }
        if dst == SNAT && wf {
            let key = (f[23], addr_at(f, 26), sport, dport);
            if let Some(flow) = self.replies.get(&key) {
                return if self.superseded.contains(&key) {
                    Expect::ReplyOrPass(*flow)
                } else {
                    Expect::Reply(*flow)
                };
            }
        }
        Expect::Pass
    }

    /// Runs one frame and judges the verdict and output; `wf` is
    /// `well_formed(f)`, which the generators already know.
    fn case(&mut self, f: &[u8], wf: bool) {
        let expect = self.expect(f, wf);
        let out = match self.dp.test_run(abi::prog::XDP_LB, f, 1) {
            Ok(o) => o,
            Err(e) => {
                self.violation("BPF_PROG_TEST_RUN failed", format!("{e}: {}", hex(f)));
                return;
            }
        };
        self.runs += 1;
        let (verdict, data) = (out.verdict, out.data);
        if matches!(verdict, XDP_TX | XDP_REDIRECT)
            && f.len() >= 38
            && let Some(s) = self.service_of(addr_at(f, 30), be16(f, 36), f[23])
        {
            self.forwarded[s] += 1;
        }
        if matches!(verdict, XDP_TX | XDP_REDIRECT) && !wf {
            self.violation(
                format!("(a) malformed frame forwarded: {}", defect(f)),
                format!("verdict {verdict}, expected {expect:?}: {}", hex(f)),
            );
            return;
        }
        if verdict == XDP_DROP {
            self.drop_verdicts += 1;
        }
        match expect {
            Expect::Pass if verdict == XDP_PASS && data == f => {}
            Expect::Pass => self.violation(
                "not passed untouched",
                format!("verdict {verdict}: {} -> {}", hex(f), hex(&data)),
            ),
            Expect::Drop(r) if verdict == XDP_DROP => self.want_drops[r as usize] += 1,
            Expect::DropOrPass if verdict == XDP_DROP => {
                self.want_drops[DropReason::Malformed as usize] += 1
            }
            Expect::DropOrPass if verdict == XDP_PASS && data == f => {}
            Expect::DropOrPass => self.violation(
                "inconsistent L4 header neither dropped nor passed untouched",
                format!("verdict {verdict}: {} -> {}", hex(f), hex(&data)),
            ),
            Expect::Drop(r) => self.violation(
                "policy drop not dropped",
                format!("want {r:?}, verdict {verdict}: {}", hex(f)),
            ),
            Expect::Forward(s) if matches!(verdict, XDP_TX | XDP_REDIRECT) => {
                self.valid.insert((
                    addr_at(f, 26),
                    addr_at(f, 30),
                    be16(f, 34),
                    be16(f, 36),
                    f[23],
                ));
                match SERVICES[s].mode {
                    abi::MODE_DR => self.check_dr(f, &data, verdict),
                    _ => self.check_nat(f, &data, s, verdict),
                }
            }
            Expect::Forward(s) => {
                // Every drop in a VIP's own slot is unexpected here (full
                // tables, a wide SNAT range): name its reason.
                let c = self.dp.vip_counters(s as u32).expect("vip counters");
                self.violation(
                    "well-formed frame to a VIP not forwarded",
                    format!(
                        "service {s}, verdict {verdict}, VIP drops {:?}: {}",
                        c.drops,
                        hex(f)
                    ),
                );
            }
            Expect::Reply(flow) if verdict == XDP_TX => {
                self.replied += 1;
                self.check_reply(f, &data, flow);
            }
            Expect::ReplyOrPass(flow) if verdict == XDP_TX => {
                self.replied += 1;
                self.check_reply(f, &data, flow);
            }
            Expect::ReplyOrPass(_) if verdict == XDP_PASS && data == f => {}
            Expect::Reply(flow) | Expect::ReplyOrPass(flow) => self.violation(
                "nat reply not translated",
                format!("{flow:?}, verdict {verdict}: {}", hex(f)),
            ),
        }
    }

    /// (b) dr: only the MACs change, towards a programmed backend, sent
    /// the way that backend is reached.
    fn check_dr(&mut self, f: &[u8], out: &[u8], verdict: u32) {
        let b = (0..BACKENDS as usize).find(|b| out[..6] == backend_mac(*b));
        if b.map(verdict_to) != Some(verdict) || out[6..12] != LB_MAC_OUT || out[12..] != f[12..] {
            self.violation(
                "(b) dr output wrong",
                format!("verdict {verdict}: {} -> {}", hex(f), hex(out)),
            );
        }
    }

    /// Bytes a nat rewrite may change: MACs, IP checksum and addresses,
    /// ports, L4 checksum. Everything else must come out as it went in.
    fn same_except_nat_fields(f: &[u8], out: &[u8]) -> bool {
        let l4_sum = if f[23] == TCP { 50 } else { 40 };
        f.len() == out.len()
            && f.iter().zip(out).enumerate().all(|(i, (a, b))| {
                a == b || i < 12 || (24..38).contains(&i) || (l4_sum..l4_sum + 2).contains(&i)
            })
    }

    /// (b) nat forward: SNAT address and a port of the range, a programmed
    /// backend's address, port and MAC, checksums exactly as good as before.
    fn check_nat(&mut self, f: &[u8], out: &[u8], s: usize, verdict: u32) {
        let b = (0..BACKENDS as usize).find(|b| out[..6] == backend_mac(*b));
        let snat_port = be16(out, 34);
        let ok = b.is_some_and(|b| {
            addr_at(out, 30) == backend_addr(b)
                && be16(out, 36) == backend_port(b)
                && verdict == verdict_to(b)
        }) && out[6..12] == LB_MAC_OUT
            && addr_at(out, 26) == SNAT
            && (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&snat_port)
            && Self::same_except_nat_fields(f, out)
            && well_formed(out)
            && sums(out) == sums(f);
        match b {
            Some(b) if ok => {
                let flow = NatFlow {
                    client: addr_at(f, 26),
                    client_port: be16(f, 34),
                    service: s,
                };
                let key = (f[23], backend_addr(b), backend_port(b), snat_port);
                if self.replies.insert(key, flow).is_none() {
                    self.reply_keys.push(key);
                }
                let client = (
                    addr_at(f, 26),
                    addr_at(f, 30),
                    be16(f, 34),
                    be16(f, 36),
                    f[23],
                );
                if let Some(old) = self.current_reply.insert(client, key)
                    && old != key
                {
                    self.superseded.insert(old);
                }
                self.superseded.remove(&key);
            }
            _ => self.violation(
                "(b) nat output wrong",
                format!("verdict {verdict}: {} -> {}", hex(f), hex(out)),
            ),
        }
    }

    /// (b) nat reply: back to VIP:port → client, towards the client's MAC.
    fn check_reply(&mut self, f: &[u8], out: &[u8], flow: NatFlow) {
        let s = SERVICES[flow.service];
        let ok = out[..6] == CLIENT_MAC
            && out[6..12] == LB_MAC
            && addr_at(out, 26) == s.addr
            && be16(out, 34) == s.port
            && addr_at(out, 30) == flow.client
            && be16(out, 36) == flow.client_port
            && Self::same_except_nat_fields(f, out)
            && well_formed(out)
            && sums(out) == sums(f);
        if !ok {
            self.violation(
                "(b) nat reply output wrong",
                format!("{flow:?}: {} -> {}", hex(f), hex(out)),
            );
        }
    }

    fn client(&mut self) -> ([u8; 4], u16) {
        (
            [198, 18, 2, 1 + self.rng.random_range(0..CLIENTS)],
            CLIENT_PORT_BASE + self.rng.random_range(0..CLIENT_PORTS),
        )
    }

    /// A valid TCP or UDP frame with random payload, flags and options.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        macs: ([u8; 6], [u8; 6]),
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> Vec<u8> {
        let rng = &mut self.rng;
        let payload: Vec<u8> = (0..rng.random_range(0..48)).map(|_| rng.random()).collect();
        let ip = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src, dst, rng.random());
        let mut out = Vec::with_capacity(payload.len() + 80);
        if proto == TCP {
            let mut t = ip.tcp(sport, dport, rng.random(), rng.random());
            // Mostly established traffic, with the flags that open and end
            // connections often enough to exercise rescheduling.
            t = match rng.random_range(0..20) {
                0..4 => t.syn(),
                4..6 => t.fin().ack(rng.random()),
                6 => t.rst(),
                _ => t.ack(rng.random()).psh(),
            };
            if rng.random_bool(0.2) {
                // NOPs: options the backend ignores, but a longer header.
                let opts = vec![1u8; 4 * rng.random_range(1..=10)];
                t = t.options_raw(&opts).expect("TCP options");
            }
            t.write(&mut out, &payload).expect("TCP frame");
        } else {
            ip.udp(sport, dport)
                .write(&mut out, &payload)
                .expect("UDP frame");
            if rng.random_bool(0.1) {
                put16(&mut out, 40, 0);
            }
        }
        if rng.random_bool(0.1) {
            // Ethernet padding to the 60-byte minimum, past the IP datagram.
            out.resize(out.len().max(60), 0);
        }
        out
    }

    /// A valid frame: a client's to a service, a known nat flow's reply, or
    /// a client's to some other address or port.
    fn valid_frame(&mut self) -> Vec<u8> {
        let pick = self.rng.random_range(0..10);
        if pick < 3 && !self.reply_keys.is_empty() {
            let i = self.rng.random_range(0..self.reply_keys.len());
            let (proto, addr, port, snat_port) = self.reply_keys[i];
            let b = (addr[3] - 1) as usize;
            return self.build(
                (backend_mac(b), LB_MAC_OUT),
                addr,
                SNAT,
                port,
                snat_port,
                proto,
            );
        }
        let (client, cport) = self.client();
        let s = SERVICES[self.rng.random_range(0..SERVICES.len())];
        let (dst, dport) = match pick {
            9 => (OTHER, s.port),
            8 => (s.addr, s.port + 1),
            _ => (s.addr, s.port),
        };
        self.build((CLIENT_MAC, LB_MAC), client, dst, cport, dport, s.proto)
    }

    /// One mutation of a valid frame. MACs are left alone: the datapath does
    /// not read them, and the nat reply check relies on the client's.
    fn mutate(&mut self, f: &mut Vec<u8>) {
        let rng = &mut self.rng;
        match rng.random_range(0..12) {
            0 => f.truncate(rng.random_range(14..f.len())),
            1 => f[14] = (f[14] & 0xf0) | rng.random_range(0..16),
            2 => f[14] = (rng.random_range(0..16) << 4) | (f[14] & 0xf),
            3 => {
                let tot = be16(f, 16) as i32;
                let v = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => (tot + rng.random_range(-30..30)).clamp(0, 0xffff) as u16,
                    _ => [0, 19, 20, 27, 39, 0xffff][rng.random_range(0..6)],
                };
                put16(f, 16, v);
            }
            4 if f[23] == UDP => {
                let ulen = be16(f, 38) as i32;
                let v = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => (ulen + rng.random_range(-10..10)).clamp(0, 0xffff) as u16,
                    _ => [0, 1, 7, 8, 0xffff][rng.random_range(0..5)],
                };
                put16(f, 38, v);
            }
            4 => f[46] = (rng.random_range(0..16) << 4) | (f[46] & 0xf),
            5 => {
                // IP options: NOPs and an end, IHL and total length updated
                // (or, sometimes, left stale).
                let words = rng.random_range(1..=10usize);
                let mut opts = vec![1u8; words * 4];
                opts[words * 4 - 1] = 0;
                f.splice(34..34, opts);
                if rng.random_bool(0.8) {
                    f[14] = 0x40 | (5 + words as u8);
                    let tot = be16(f, 16).wrapping_add(words as u16 * 4);
                    put16(f, 16, tot);
                }
            }
            6 => {
                let v = match rng.random_range(0..4) {
                    0 => 0x2000,
                    1 => rng.random_range(1..0x2000),
                    2 => 0x6000 | rng.random_range(0..0x2000),
                    _ => rng.random(),
                };
                put16(f, 20, v);
            }
            7 => {
                // 802.1Q, or QinQ (802.1ad outer tag).
                let mut tags = vec![0x81, 0x00, rng.random(), rng.random()];
                if rng.random_bool(0.5) {
                    tags.splice(0..0, [0x88, 0xa8, rng.random(), rng.random()]);
                }
                f.splice(12..12, tags);
            }
            8 => {
                let t = [0x86dd, 0x0806, 0x8847, 0x88cc, 0x0801, 0x0000, 0xffff];
                let v = match rng.random_range(0..2) {
                    0 => t[rng.random_range(0..t.len())],
                    _ => rng.random(),
                };
                put16(f, 12, v);
            }
            9 => {
                let p = [0, 1, 4, 6, 17, 41, 47, 50, 51, 132, 136, 255];
                f[23] = match rng.random_range(0..2) {
                    0 => p[rng.random_range(0..p.len())],
                    _ => rng.random(),
                };
            }
            10 => {
                // Flag-ish bytes: TOS, the flags/fragment byte, TTL, TCP flags.
                let at = [15, 20, 22, 47][rng.random_range(0..4)];
                if at < f.len() {
                    f[at] = rng.random();
                }
            }
            _ => {
                for _ in 0..rng.random_range(1..=8) {
                    let at = rng.random_range(12..f.len());
                    f[at] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        if self.rng.random_bool(0.5) {
            fix_ip_sum(f);
        }
        if self.rng.random_bool(0.5) {
            fix_l4_sum(f);
        }
    }

    /// Random bytes, half of them given an IPv4 header start aimed at a VIP
    /// service so the random part reaches the header checks.
    fn random_frame(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        let mut f: Vec<u8> = (0..rng.random_range(14..=128))
            .map(|_| rng.random())
            .collect();
        if rng.random_bool(0.5) {
            put16(&mut f, 12, 0x0800);
            if f.len() >= 38 && rng.random_bool(0.7) {
                let s = SERVICES[rng.random_range(0..SERVICES.len())];
                f[14] = 0x45;
                f[23] = s.proto;
                f[30..34].copy_from_slice(&s.addr);
                put16(&mut f, 36, s.port);
            }
        }
        f
    }

    fn phase_counters(&mut self) -> Vec<Counters> {
        self.want_drops = [0; DROP_REASONS];
        self.drop_verdicts = 0;
        self.forwarded = [0; SERVICES.len()];
        counters(&self.dp)
    }

    /// (d) Every drop is counted, under the reason the policy gives; every
    /// forwarded client frame is counted for its VIP.
    fn check_counters(&mut self, phase: &'static str, before: &[Counters]) {
        let after = counters(&self.dp);
        let mut drops = [0u64; DROP_REASONS];
        for (a, b) in after.iter().zip(before) {
            for ((d, a), b) in drops.iter_mut().zip(a.drops).zip(b.drops) {
                *d += a - b;
            }
        }
        let packets: Vec<u64> = (0..SERVICES.len())
            .map(|s| after[s].packets - before[s].packets)
            .collect();
        // Drops outside the policy (a VIP's no_backend, nat_ports_exhausted)
        // are reported per frame where they happen; here only their total.
        let policy = [
            DropReason::Malformed,
            DropReason::Fragment,
            DropReason::IpOptions,
        ];
        if drops.iter().sum::<u64>() != self.drop_verdicts
            || policy
                .iter()
                .any(|r| drops[*r as usize] != self.want_drops[*r as usize])
            || packets != self.forwarded
        {
            self.violation(
                "(d) counters disagree",
                format!(
                    "{phase}: drops {drops:?}, policy {:?}, {} XDP_DROP; \
                     VIP packets {packets:?}, forwarded {:?}",
                    self.want_drops, self.drop_verdicts, self.forwarded
                ),
            );
        }
    }

    /// Phase 1: only frames that are not well-formed. Truncation is swept
    /// over every offset of each base frame; the rest is drawn at random.
    fn malformed_phase(&mut self) {
        let before = self.phase_counters();
        while self.runs < MALFORMED_CASES {
            let base = self.valid_frame();
            for cut in 14..base.len() {
                let mut f = base[..cut].to_vec();
                if self.rng.random_bool(0.5) && cut >= 34 {
                    put16(&mut f, 16, (cut - 14) as u16);
                    fix_ip_sum(&mut f);
                }
                if !well_formed(&f) {
                    self.case(&f, false);
                }
            }
            for _ in 0..256 {
                let f = if self.rng.random_bool(0.3) {
                    self.random_frame()
                } else {
                    let mut f = base.clone();
                    self.mutate(&mut f);
                    f
                };
                if f.len() >= 14 && !well_formed(&f) {
                    self.case(&f, false);
                }
            }
        }
        self.check_counters("malformed phase", &before);
        let flows = self.dp.flows().expect("flows");
        if !flows.is_empty() {
            self.violation(
                "(c) malformed frames created flows",
                format!("{} entries, first {:?}", flows.len(), flows[0]),
            );
        }
    }

    /// Phase 2: valid frames (which build up flows, so replies and
    /// established flows are exercised) interleaved with their mutations.
    fn mixed_phase(&mut self) {
        // A fresh datapath, so whatever phase 1 left behind is not blamed
        // on the frames of this phase.
        self.dp = load();
        let before = self.phase_counters();
        let end = self.runs + MIXED_CASES;
        while self.runs < end {
            let mut f = self.valid_frame();
            if self.rng.random_bool(0.6) {
                self.mutate(&mut f);
            }
            if f.len() >= 14 {
                let wf = well_formed(&f);
                self.case(&f, wf);
            }
        }
        self.check_counters("mixed phase", &before);
        self.check_table();
    }

    /// (c) The connection table holds only flows of valid frames: forward
    /// entries keyed by a well-formed client 5-tuple, reply entries by a
    /// reply key the datapath itself handed out, and no more than one entry
    /// per dr flow and two per nat flow.
    fn check_table(&mut self) {
        let flows = self.dp.flows().expect("flows");
        let nat = |t: &Tuple| {
            SERVICES
                .iter()
                .any(|s| s.mode == abi::MODE_NAT && s.addr == t.1)
        };
        let bound: usize = self.valid.iter().map(|t| if nat(t) { 2 } else { 1 }).sum();
        let mut stray = None;
        let mut orphans = 0;
        let forward: HashMap<Tuple, u16> = flows
            .iter()
            .filter(|(_, f)| f.kind == abi::FLOW_FORWARD)
            .map(|(k, f)| (tuple(k), f.rw_src_port))
            .collect();
        for (k, f) in &flows {
            let t = tuple(k);
            let known = if f.kind == abi::FLOW_FORWARD {
                self.valid.contains(&t)
            } else {
                self.replies.contains_key(&(t.4, t.0, t.2, t.3))
            };
            if !known && stray.is_none() {
                stray = Some((*k, *f));
            }
            // A reply entry whose forward entry has moved to another SNAT
            // port is unreachable: nothing will ever refresh or free it.
            if f.kind == abi::FLOW_REPLY {
                let fwd = (
                    f.rw_dst_addr.to_ne_bytes(),
                    f.rw_src_addr.to_ne_bytes(),
                    u16::from_be(f.rw_dst_port),
                    u16::from_be(f.rw_src_port),
                    t.4,
                );
                if forward.get(&fwd) != Some(&k.dst_port) {
                    orphans += 1;
                }
            }
        }
        if let Some((k, f)) = stray {
            self.violation(
                "(c) flow entry no valid frame explains",
                format!("{k:?} {f:?}"),
            );
        }
        if flows.len() > bound {
            self.violation(
                "(c) connection table larger than the valid flows sent",
                format!(
                    "{} entries for {} valid flows (bound {bound}); \
                     {orphans} reply entries whose forward entry moved on",
                    flows.len(),
                    self.valid.len()
                ),
            );
        }
        println!(
            "connection table: {} entries, {} distinct valid flows, bound {bound}, \
             {orphans} orphaned reply entries",
            flows.len(),
            self.valid.len()
        );
    }
}

/// A flow key as the wire tuple, host-order ports.
fn tuple(k: &abi::FlowKey) -> Tuple {
    (
        k.src_addr.to_ne_bytes(),
        k.dst_addr.to_ne_bytes(),
        u16::from_be(k.src_port),
        u16::from_be(k.dst_port),
        k.proto,
    )
}

#[test]
fn a_million_fuzzed_frames_never_forward_malformed_packets() {
    let seed = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut fz = Fuzz::new(seed);
    let t0 = Instant::now();
    fz.malformed_phase();
    let t1 = Instant::now();
    let phase1 = fz.runs;
    fz.mixed_phase();
    let t2 = Instant::now();
    let rate = |n: u64, d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "seed {seed}: {} cases in {:.1?} ({:.0}/s); malformed phase {phase1} ({:.0}/s), \
         mixed phase {} ({:.0}/s); {} nat flows learned, {} replies translated",
        fz.runs,
        t2 - t0,
        rate(fz.runs, t2 - t0),
        rate(phase1, t1 - t0),
        fz.runs - phase1,
        rate(fz.runs - phase1, t2 - t1),
        fz.replies.len(),
        fz.replied
    );
    assert!(fz.runs >= 1_000_000, "only {} cases ran", fz.runs);
    let report: Vec<String> = fz
        .violations
        .iter()
        .map(|(what, (n, first))| format!("{what}: {n}x, first: {first}"))
        .collect();
    assert!(
        report.is_empty(),
        "seed {seed}: {} kinds of violation:\n{}",
        report.len(),
        report.join("\n")
    );
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Found by the fuzzer: the datapath checks that the first 20 (TCP) or 8
/// (UDP) bytes of the L4 header are in the frame, but not the header's own
/// length fields, so a UDP length past the datagram or a TCP data offset
/// below 5 or past the segment is forwarded (and gets a flow, and in nat a
/// SNAT port). The README's policy drops "truncated L4 header" as malformed.
#[test]
fn inconsistent_l4_headers_to_a_vip_are_not_forwarded() {
    let mut fz = Fuzz::new(SEED);
    // A find of the fuzzer: UDP to 198.18.0.100:53 (dr), IP total length
    // 28, UDP length 37.
    let mut frames = vec![unhex(
        "02000000000202000000000108004500001c0000400091115b2ec612021ac61200647531003500253908",
    )];
    for (s, doff) in [(0, 4u8), (0, 15), (2, 0), (2, 6)] {
        let svc = SERVICES[s];
        let mut f = frame(
            CLIENT_MAC,
            LB_MAC,
            [198, 18, 2, 1],
            svc.addr,
            30_000,
            80,
            TCP,
            b"",
        );
        f[46] = doff << 4;
        fix_l4_sum(&mut f);
        frames.push(f);
    }
    for (s, ulen) in [(1, 7u16), (3, 0), (3, 200)] {
        let svc = SERVICES[s];
        let mut f = frame(
            CLIENT_MAC,
            LB_MAC,
            [198, 18, 2, 1],
            svc.addr,
            30_000,
            53,
            UDP,
            b"xy",
        );
        put16(&mut f, 38, ulen);
        fix_l4_sum(&mut f);
        frames.push(f);
    }
    for f in &frames {
        assert!(!well_formed(f), "{}", hex(f));
        fz.case(f, false);
    }
    let flows = fz.dp.flows().expect("flows");
    assert!(
        fz.violations.is_empty() && flows.is_empty(),
        "{:#?}\n{} flow entries",
        fz.violations,
        flows.len()
    );
}

/// Found by the fuzzer (the table outgrew the valid flows, then valid SYNs
/// were dropped as `nat_ports_exhausted`): when a nat TCP connection that saw
/// a FIN/RST is reopened by a SYN on the same 5-tuple, a new SNAT port is
/// allocated and the old reply entry stays behind. `is_dead` keeps it alive
/// because the forward 5-tuple is alive, so every reopen leaks a port until
/// the flow idles out; the port search probes the same 8 ports for the same
/// 5-tuple, so the 9th connection of a client that reuses its source port
/// is dropped.
#[test]
fn reopened_nat_connections_do_not_leak_snat_ports() {
    let fz = Fuzz::new(SEED);
    let svc = SERVICES[2];
    let seg = |flags: u8| {
        let mut f = frame(
            CLIENT_MAC,
            LB_MAC,
            [198, 18, 2, 1],
            svc.addr,
            30_000,
            80,
            TCP,
            b"",
        );
        f[47] = flags;
        fix_l4_sum(&mut f);
        f
    };
    for conn in 1..=12 {
        for (flags, what) in [(0x02, "SYN"), (0x11, "FIN|ACK")] {
            let out = fz.dp.test_run(abi::prog::XDP_LB, &seg(flags), 1).unwrap();
            assert_eq!(
                out.verdict,
                XDP_TX,
                "connection {conn}, {what}: VIP drops {:?}",
                fz.dp.vip_counters(2).unwrap().drops
            );
        }
    }
    let flows = fz.dp.flows().expect("flows");
    assert_eq!(
        flows.len(),
        2,
        "one forward and one reply entry: {flows:#?}"
    );
}
