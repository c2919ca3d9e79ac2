//! IPv6 packet cases of the XDP/tc programs through BPF_PROG_TEST_RUN, as
//! `xdp_test_run.rs` does for IPv4: verdict and whole output frame, byte for
//! byte (expected frames are built by etherparse, so checksums are exact),
//! plus counters. Addresses are in 2001:2::/48 (RFC 5180).
mod common;

use std::{net::Ipv6Addr, thread::sleep, time::Duration};

use common::*;
use lb_core::{
    config::Scheduler,
    datapath::{Datapath, Limits, addr6},
    table::{self, Member, build_maglev},
};
use lb_ebpf::{
    abi::{self, Backend, DropReason, VipKey6, VipMeta, VipMeta6},
    hash::flow_hash6,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const LB_MAC_OUT: [u8; 6] = [2, 0, 0, 0, 0, 3];
const BE_MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2]];
const SNAT_PORTS: (u16, u16) = (20_000, 20_099);
const TABLE: u32 = 1_009;
const PAYLOAD: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\n\r\n";

fn a(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("address").octets()
}

fn client() -> [u8; 16] {
    a("2001:2::1")
}
fn lb() -> [u8; 16] {
    a("2001:2::2")
}
fn vip_addr() -> [u8; 16] {
    a("2001:2::100")
}
fn other() -> [u8; 16] {
    a("2001:2::200")
}
fn be(i: usize) -> [u8; 16] {
    [a("2001:2:0:1::1"), a("2001:2:0:1::2")][i % 2]
}

fn w(x: [u8; 16]) -> abi::Addr6 {
    addr6(Ipv6Addr::from(x))
}

fn load() -> Datapath {
    load_capped(0)
}

/// A datapath whose SYN-flood guard lets `new_flow_cap` new flows per CPU
/// per second into the connection table (0: no limit).
fn load_capped(new_flow_cap: u32) -> Datapath {
    require_root();
    Datapath::load(Limits {
        max_vips: 4,
        max_backends: 16,
        ring_stride: TABLE,
        flow_capacity: 4_096,
        new_flow_cap,
    })
    .expect("loading the datapath")
}

/// The test VIP's settings in `mode`; tests adjust fields from here.
fn meta(mode: u8) -> VipMeta6 {
    VipMeta6 {
        meta: VipMeta {
            id: 0,
            mode,
            snat_port_min: SNAT_PORTS.0,
            snat_port_max: SNAT_PORTS.1,
            tcp_timeout_s: 900,
            udp_timeout_s: 900,
            ..Default::default()
        },
        snat_addr: w(lb()),
        persist_mask: [u32::MAX; 4],
        ..Default::default()
    }
}

/// Programs [VIP]:80/`proto` with `meta`.
fn set_vip(dp: &mut Datapath, proto: u8, meta: VipMeta6) {
    let key = VipKey6 {
        addr: w(vip_addr()),
        port: 80u16.to_be(),
        proto,
        _pad: 0,
    };
    dp.set_vip6(key, meta).expect("set_vip6");
}

fn backend(dp: &mut Datapath, id: u32, addr: [u8; 16], flags: u8) {
    let b = Backend {
        port: 8033u16.to_be(),
        flags,
        mac: BE_MAC[id as usize % 2],
        src_mac: LB_MAC_OUT,
        ..Default::default()
    };
    dp.set_backend6(id, Ipv6Addr::from(addr), b)
        .expect("set_backend6");
}

/// Programs the VIP's table with the given backend ids (equal weights).
fn table(dp: &mut Datapath, ids: &[u32]) -> u32 {
    let members: Vec<Member> = ids
        .iter()
        .map(|id| Member {
            id: *id,
            addr: std::net::SocketAddr::from((be(*id as usize), 8033)),
            weight: 1,
        })
        .collect();
    let t = build_maglev(&members, TABLE).expect("maglev");
    dp.set_members(0, ids).expect("members");
    dp.swap_table(0, abi::TABLE_MAGLEV, &t).expect("swap")
}

fn setup_with(m: VipMeta6, proto: u8) -> Datapath {
    let mut dp = load();
    set_vip(&mut dp, proto, m);
    backend(&mut dp, 0, be(0), 0);
    backend(&mut dp, 1, be(1), 0);
    table(&mut dp, &[0]);
    dp
}

fn setup(mode: u8, proto: u8) -> Datapath {
    setup_with(meta(mode), proto)
}

fn run(dp: &Datapath, f: &[u8]) -> (u32, Vec<u8>) {
    let out = dp.test_run(abi::prog::XDP_LB, f, 1).expect("test run");
    (out.verdict, out.data)
}

fn to(dst: [u8; 16], sport: u16, proto: u8) -> Vec<u8> {
    frame6(CLIENT_MAC, LB_MAC, client(), dst, sport, 80, proto, PAYLOAD)
}

fn client_pkt(sport: u16, proto: u8) -> Vec<u8> {
    to(vip_addr(), sport, proto)
}

/// A packet of an established TCP connection (ACK, no SYN).
fn ack_pkt(sport: u16) -> Vec<u8> {
    let mut f = client_pkt(sport, TCP);
    f[54 + 13] = 0x10;
    let c = u16::from_be_bytes([f[54 + 16], f[54 + 17]]);
    // SYN (0x02) → ACK (0x10) in the flags byte: RFC 1624 update.
    let s = !c as u32 + !0x0002u16 as u32 + 0x0010;
    let s = (s & 0xffff) + (s >> 16);
    let c = !((s & 0xffff) + (s >> 16)) as u16;
    f[54 + 16..54 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

fn nat_port(out: &[u8]) -> u16 {
    u16::from_be_bytes([out[54], out[55]])
}

fn drops(dp: &Datapath, r: DropReason) -> u64 {
    dp.unmatched_counters().unwrap().drops[r as usize]
}

#[test]
fn dr_vip_hit_rewrites_only_macs() {
    for proto in [TCP, UDP] {
        let dp = setup(abi::MODE_DR, proto);
        let (v, out) = run(&dp, &client_pkt(40_000, proto));
        assert_eq!(v, XDP_TX);
        let want = frame6(
            LB_MAC_OUT,
            BE_MAC[0],
            client(),
            vip_addr(),
            40_000,
            80,
            proto,
            PAYLOAD,
        );
        assert_eq!(out, want, "proto {proto}");
        let c = dp.vip_counters(0).unwrap();
        assert_eq!((c.packets, c.new_flows, c.bytes), (1, 1, want.len() as u64));
        assert_eq!(dp.backend_counters(0).unwrap().packets, 1);
        assert_eq!(dp.flows6().unwrap().len(), 1);
        assert!(dp.flows().unwrap().is_empty(), "an IPv4 entry appeared");
    }
}

#[test]
fn nat_translates_to_backend_port_and_back() {
    for proto in [TCP, UDP] {
        let dp = setup(abi::MODE_NAT, proto);
        let (v, out) = run(&dp, &client_pkt(40_001, proto));
        assert_eq!(v, XDP_TX);
        let port = nat_port(&out);
        assert!(
            (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&port),
            "SNAT port {port}"
        );
        let want = frame6(
            LB_MAC_OUT,
            BE_MAC[0],
            lb(),
            be(0),
            port,
            8033,
            proto,
            PAYLOAD,
        );
        assert_eq!(out, want, "proto {proto}");

        let reply = frame6(
            BE_MAC[0],
            LB_MAC_OUT,
            be(0),
            lb(),
            8033,
            port,
            proto,
            ANSWER,
        );
        let (v, out) = run(&dp, &reply);
        assert_eq!(v, XDP_TX);
        let want = frame6(
            LB_MAC,
            CLIENT_MAC,
            vip_addr(),
            client(),
            80,
            40_001,
            proto,
            ANSWER,
        );
        assert_eq!(out, want, "reply, proto {proto}");

        let (_, again) = run(&dp, &client_pkt(40_001, proto));
        assert_eq!(nat_port(&again), port);
        let c = dp.vip_counters(0).unwrap();
        assert_eq!((c.packets, c.new_flows), (2, 1));
        // A reply to a port no flow holds is not ours.
        let stray = frame6(
            BE_MAC[0],
            LB_MAC_OUT,
            be(0),
            lb(),
            8033,
            port + 1,
            proto,
            b"",
        );
        assert_eq!(run(&dp, &stray), (XDP_PASS, stray.clone()));
    }
}

/// As `xdp_test_run::reopening_an_ended_nat_flow_leaves_its_reused_port_alone`:
/// a new connection on an ended one's 5-tuple must not take away the reply
/// entry of the live connection its SNAT port went to.
#[test]
fn reopening_an_ended_ipv6_nat_flow_leaves_its_reused_port_alone() {
    let dp = setup_with(
        VipMeta6 {
            meta: VipMeta {
                snat_port_min: 20_000,
                snat_port_max: 20_000,
                ..meta(abi::MODE_NAT).meta
            },
            ..meta(abi::MODE_NAT)
        },
        TCP,
    );
    assert_eq!(run(&dp, &client_pkt(56_100, TCP)).0, XDP_TX);
    let fin = with_flags(client_pkt(56_100, TCP), 0x11);
    assert_eq!(run(&dp, &fin).0, XDP_TX);
    sleep(Duration::from_millis(2_200));
    let (v, out) = run(&dp, &client_pkt(56_101, TCP));
    assert_eq!(v, XDP_TX);
    assert_eq!(nat_port(&out), 20_000, "the ended connection's port");
    assert_eq!(run(&dp, &client_pkt(56_100, TCP)).0, XDP_DROP);
    let reply = frame6(
        BE_MAC[0],
        LB_MAC_OUT,
        be(0),
        lb(),
        8033,
        20_000,
        TCP,
        ANSWER,
    );
    let want = frame6(
        LB_MAC,
        CLIENT_MAC,
        vip_addr(),
        client(),
        80,
        56_101,
        TCP,
        ANSWER,
    );
    assert_eq!(
        run(&dp, &reply),
        (XDP_TX, want),
        "the live connection's replies must still reach its client"
    );
}

#[test]
fn nat_to_local_backend_passes_to_stack_and_tc_unnats_reply() {
    let mut dp = setup(abi::MODE_NAT, TCP);
    backend(&mut dp, 2, lb(), abi::BACKEND_LOCAL);
    dp.swap_table(0, abi::TABLE_MAGLEV, &vec![2; TABLE as usize])
        .unwrap();
    let (v, out) = run(&dp, &client_pkt(40_003, TCP));
    assert_eq!(v, XDP_PASS);
    let want = frame6(
        CLIENT_MAC,
        LB_MAC,
        client(),
        lb(),
        40_003,
        8033,
        TCP,
        PAYLOAD,
    );
    assert_eq!(out, want);
    let reply = frame6(
        LB_MAC,
        CLIENT_MAC,
        lb(),
        client(),
        8033,
        40_003,
        TCP,
        ANSWER,
    );
    let out = dp.test_run(abi::prog::TC_EGRESS, &reply, 1).unwrap();
    assert_eq!(out.verdict, TC_ACT_OK);
    let want = frame6(
        LB_MAC,
        CLIENT_MAC,
        vip_addr(),
        client(),
        80,
        40_003,
        TCP,
        ANSWER,
    );
    assert_eq!(out.data, want);
    let other = frame6(LB_MAC, CLIENT_MAC, lb(), client(), 22, 40_003, TCP, b"");
    let out = dp.test_run(abi::prog::TC_EGRESS, &other, 1).unwrap();
    assert_eq!((out.verdict, out.data), (TC_ACT_OK, other));
}

#[test]
fn established_flow_keeps_backend_across_table_swap() {
    let mut dp = setup(abi::MODE_DR, TCP);
    let (_, out) = run(&dp, &client_pkt(41_000, TCP));
    assert_eq!(&out[0..6], &BE_MAC[0]);
    table(&mut dp, &[1]);
    let (v, out) = run(&dp, &ack_pkt(41_000));
    assert_eq!(v, XDP_TX);
    assert_eq!(&out[0..6], &BE_MAC[0], "existing flow moved after swap");
    let (_, out) = run(&dp, &client_pkt(41_001, TCP));
    assert_eq!(&out[0..6], &BE_MAC[1], "new flow ignored the new table");
    assert_eq!(dp.vip_counters(0).unwrap().new_flows, 2);
}

fn tun_meta(mtu: u16) -> VipMeta6 {
    let mut m = meta(abi::MODE_TUN);
    m.meta.tun_src_bits = 8;
    m.meta.mtu = mtu;
    m.tun_src = w(a("2001:2:0:9::"));
    m
}

/// tun: the client's packet, untouched, inside an outer IPv6 header (next
/// header 41) to the backend, from a per-flow source in the configured
/// prefix, with the inner traffic class and flow label; the backend-side
/// helper strips it again.
#[test]
fn tun_wraps_in_ipv6_and_the_decap_helper_unwraps() {
    let dp = setup_with(tun_meta(1_500), TCP);
    let mut pkt = client_pkt(50_000, TCP);
    // Traffic class 0xb8, flow label 0x01234 (not in the TCP checksum).
    pkt[14..18].copy_from_slice(&[0x6b, 0x80, 0x12, 0x34]);
    let inner = pkt[14..].to_vec();
    let (v, out) = run(&dp, &pkt);
    assert_eq!(v, XDP_TX);
    assert_eq!(out.len(), 14 + 40 + inner.len());
    assert_eq!(&out[0..6], &BE_MAC[0]);
    assert_eq!(&out[6..12], &LB_MAC_OUT);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let (outer, rest) = etherparse::Ipv6Header::from_slice(&out[14..]).expect("outer IPv6");
    assert_eq!(rest, &inner[..], "the inner packet changed");
    assert_eq!(outer.next_header.0, 41);
    assert_eq!(outer.destination, be(0));
    assert_eq!(outer.payload_length as usize, inner.len());
    assert_eq!(outer.hop_limit, 64);
    assert_eq!(&out[14..18], &pkt[14..18], "traffic class or flow label");
    let h = flow_hash6(
        &w(client()),
        &w(vip_addr()),
        50_000u16.to_be(),
        80u16.to_be(),
        TCP,
    );
    let mut src = a("2001:2:0:9::");
    src[15] = h as u8;
    assert_eq!(outer.source, src, "outer source: prefix + flow hash bits");
    let sources: std::collections::HashSet<u8> = (0..64u16)
        .map(|p| run(&dp, &client_pkt(51_000 + p, TCP)).1[14 + 8 + 15])
        .collect();
    assert!(sources.len() > 16, "outer sources not spread: {sources:?}");

    let d = dp.test_run(abi::prog::XDP_DECAP, &out, 1).unwrap();
    assert_eq!(d.verdict, XDP_PASS);
    assert_eq!(d.data, [&out[0..14], &inner[..]].concat());
    let d = dp.test_run(abi::prog::XDP_DECAP, &pkt, 1).unwrap();
    assert_eq!((d.verdict, d.data), (XDP_PASS, pkt.clone()));
}

#[test]
fn tun_drops_what_would_exceed_the_mtu_once_wrapped() {
    let pkt = client_pkt(50_100, TCP);
    let mut dp = setup_with(tun_meta((pkt.len() - 14 + 39) as u16), TCP);
    assert_eq!(run(&dp, &pkt).0, XDP_DROP);
    assert_eq!(
        dp.vip_counters(0).unwrap().drops[DropReason::TunTooBig as usize],
        1
    );
    set_vip(&mut dp, TCP, tun_meta((pkt.len() - 14 + 40) as u16));
    assert_eq!(run(&dp, &client_pkt(50_101, TCP)).0, XDP_TX);
}

fn icmp6(dst: [u8; 16], kind: u8, body: &[u8]) -> Vec<u8> {
    let t = etherparse::Icmpv6Type::Unknown {
        type_u8: kind,
        code_u8: 0,
        bytes5to8: [0; 4],
    };
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(client(), dst, 255)
        .icmpv6(t)
        .write(&mut out, body)
        .unwrap();
    out
}

/// Neighbour discovery (to the solicited-node group or to the VIP address
/// itself) and anything not for a VIP reach the kernel untouched.
#[test]
fn non_vip_and_neighbour_discovery_pass_untouched() {
    let dp = setup(abi::MODE_DR, TCP);
    for f in [
        to(other(), 40_010, TCP),
        to(other(), 40_010, UDP),
        // The VIP address on another port or protocol.
        frame6(CLIENT_MAC, LB_MAC, client(), vip_addr(), 1, 81, TCP, b""),
        frame6(CLIENT_MAC, LB_MAC, client(), vip_addr(), 1, 80, UDP, b""),
        icmp6(a("ff02::1:ff00:100"), 135, &vip_addr()),
        icmp6(vip_addr(), 135, &vip_addr()),
        icmp6(vip_addr(), 136, &vip_addr()),
        icmp6(a("ff02::2"), 133, &[]),
    ] {
        assert_eq!(run(&dp, &f), (XDP_PASS, f.clone()));
    }
    assert_eq!(dp.vip_counters(0).unwrap().packets, 0);
}

#[test]
fn echo_to_a_vip_is_answered() {
    let dp = setup(abi::MODE_DR, TCP);
    let echo = |smac, dmac, src, dst, hop, request: bool| {
        let b = etherparse::PacketBuilder::ethernet2(smac, dmac).ipv6(src, dst, hop);
        let b = if request {
            b.icmpv6_echo_request(7, 1)
        } else {
            b.icmpv6_echo_reply(7, 1)
        };
        let mut out = Vec::new();
        b.write(&mut out, b"ping").unwrap();
        out
    };
    let req = echo(CLIENT_MAC, LB_MAC, client(), vip_addr(), 9, true);
    let (v, out) = run(&dp, &req);
    assert_eq!(v, XDP_TX);
    assert_eq!(
        out,
        echo(LB_MAC, CLIENT_MAC, vip_addr(), client(), 64, false)
    );
    let elsewhere = echo(CLIENT_MAC, LB_MAC, client(), other(), 9, true);
    assert_eq!(run(&dp, &elsewhere), (XDP_PASS, elsewhere.clone()));
}

/// `pkt` with an 8-byte extension header of type `kind` (`body`: its last
/// six bytes) between the IPv6 and TCP headers.
fn with_ext(pkt: &[u8], kind: u8, body: [u8; 6]) -> Vec<u8> {
    let mut f = pkt[..54].to_vec();
    let next = f[20];
    f[20] = kind;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[next, 0]);
    f.extend_from_slice(&body);
    f.extend_from_slice(&pkt[54..]);
    f
}

#[test]
fn extension_headers_to_a_vip_are_dropped_elsewhere_passed() {
    let dp = setup(abi::MODE_DR, TCP);
    // Fragment header: offset 0, M set (a first fragment, ports present).
    let frag = [0, 1, 0, 0, 0, 42];
    let padn = [1, 4, 0, 0, 0, 0];
    let cases = [
        (44, frag, DropReason::Fragment),
        (0, padn, DropReason::IpOptions),
        (60, padn, DropReason::IpOptions),
        (43, [0, 0, 0, 0, 0, 0], DropReason::IpOptions),
    ];
    for (i, (kind, body, reason)) in cases.into_iter().enumerate() {
        let before = drops(&dp, reason);
        let f = with_ext(&client_pkt(42_000 + i as u16, TCP), kind, body);
        assert_eq!(run(&dp, &f).0, XDP_DROP, "next header {kind}");
        assert_eq!(drops(&dp, reason), before + 1, "next header {kind}");
        let f = with_ext(&to(other(), 42_000, TCP), kind, body);
        assert_eq!(run(&dp, &f), (XDP_PASS, f.clone()), "next header {kind}");
    }
    assert_eq!(dp.vip_counters(0).unwrap().packets, 0);
    assert!(
        dp.flows6().unwrap().is_empty(),
        "a refused packet made a flow"
    );
}

#[test]
fn truncated_and_malformed_headers_are_never_forwarded() {
    let dp = setup(abi::MODE_NAT, TCP);
    let good = client_pkt(43_000, TCP);
    let udp = client_pkt(43_001, UDP);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // TCP header cut short (payload length fixed).
    let mut f = good[..54 + 10].to_vec();
    f[18..20].copy_from_slice(&10u16.to_be_bytes());
    cases.push(f);
    // Payload length past the frame, or below the TCP header.
    let mut f = good.clone();
    f[19] += 10;
    cases.push(f);
    let mut f = good.clone();
    f[18..20].copy_from_slice(&12u16.to_be_bytes());
    cases.push(f);
    // Version 4 in an IPv6 frame.
    let mut f = good.clone();
    f[14] = 0x40;
    cases.push(f);
    // TCP data offset 4 words, and past the segment.
    let mut f = good.clone();
    f[54 + 12] = 0x40;
    cases.push(f);
    let mut f = good.clone();
    f[54 + 12] = 0xf0;
    cases.push(f);
    // UDP length below 8, and past the datagram.
    let mut f = udp.clone();
    f[54 + 4..54 + 6].copy_from_slice(&4u16.to_be_bytes());
    cases.push(f);
    let mut f = udp.clone();
    f[54 + 4..54 + 6].copy_from_slice(&200u16.to_be_bytes());
    cases.push(f);
    // The checks come before the VIP lookup: the UDP cases are dropped
    // because the address carries a VIP, whatever the port.
    for (i, f) in cases.iter().enumerate() {
        let before = drops(&dp, DropReason::Malformed);
        let (v, _) = run(&dp, f);
        assert_eq!(v, XDP_DROP, "case {i}");
        assert_eq!(drops(&dp, DropReason::Malformed), before + 1, "case {i}");
    }
    assert!(dp.flows6().unwrap().is_empty());
    // The same damage to a packet for another address is the kernel's, and
    // so is an IPv6 header too short to tell where it goes.
    let mut f = to(other(), 43_002, TCP);
    f[19] += 10;
    assert_eq!(run(&dp, &f), (XDP_PASS, f.clone()));
    let f = good[..14 + 30].to_vec();
    assert_eq!(run(&dp, &f), (XDP_PASS, f.clone()));
}

#[test]
fn empty_table_drops_new_flows_as_no_backend() {
    let mut dp = setup(abi::MODE_DR, UDP);
    dp.swap_table(0, abi::TABLE_MAGLEV, &[]).unwrap();
    assert_eq!(run(&dp, &client_pkt(44_000, UDP)).0, XDP_DROP);
    let c = dp.vip_counters(0).unwrap();
    assert_eq!(c.drops[DropReason::NoBackend as usize], 1);
}

/// Persistence with a /64 granularity: every connection of every client in
/// the /64 follows the first one's backend.
#[test]
fn persistence_keeps_a_prefix_on_its_backend() {
    let mut m = meta(abi::MODE_DR);
    m.meta.persist_timeout_s = 300;
    m.persist_mask = w(a("ffff:ffff:ffff:ffff::"));
    let mut dp = setup_with(m, TCP);
    table(&mut dp, &[0, 1]);
    let first = run(&dp, &client_pkt(45_000, TCP)).1[0..6].to_vec();
    for p in 1..32u16 {
        let mut src = client();
        src[15] = p as u8;
        let f = frame6(
            CLIENT_MAC,
            LB_MAC,
            src,
            vip_addr(),
            45_000 + p,
            80,
            TCP,
            b"",
        );
        assert_eq!(run(&dp, &f).1[0..6], first[..], "port {p}");
    }
    // Without persistence the same connections spread over both.
    let mut dp = setup(abi::MODE_DR, TCP);
    table(&mut dp, &[0, 1]);
    let macs: std::collections::HashSet<Vec<u8>> = (1..32u16)
        .map(|p| run(&dp, &client_pkt(45_000 + p, TCP)).1[0..6].to_vec())
        .collect();
    assert_eq!(macs.len(), 2);
}

/// "Packet too big" from a router, quoting what a backend sent from the
/// VIP (VIP:80 → client:54000 of a dr or tun flow).
fn too_big(sport: u16) -> Vec<u8> {
    let quoted = frame6(
        BE_MAC[0],
        CLIENT_MAC,
        vip_addr(),
        client(),
        80,
        sport,
        TCP,
        &[0u8; 64],
    );
    let mut icmp = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(a("2001:2::fe"), vip_addr(), 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1_400 })
        .write(&mut icmp, &quoted[14..])
        .unwrap();
    icmp
}

#[test]
fn packet_too_big_goes_to_the_flows_backend() {
    let dp = setup(abi::MODE_DR, TCP);
    run(&dp, &client_pkt(54_000, TCP));
    let icmp = too_big(54_000);
    let (v, out) = run(&dp, &icmp);
    assert_eq!(v, XDP_TX);
    assert_eq!(&out[0..6], &BE_MAC[0]);
    assert_eq!(&out[6..12], &LB_MAC_OUT);
    assert_eq!(&out[12..], &icmp[12..], "the ICMPv6 packet must not change");
    // Unknown flow: the kernel's business.
    let stray = too_big(54_001);
    assert_eq!(run(&dp, &stray), (XDP_PASS, stray.clone()));

    // tun: wrapped like the flow's packets.
    let dp = setup_with(tun_meta(1_500), TCP);
    run(&dp, &client_pkt(54_000, TCP));
    let (v, out) = run(&dp, &icmp);
    assert_eq!(v, XDP_TX);
    assert_eq!(&out[0..6], &BE_MAC[0]);
    let (outer, rest) = etherparse::Ipv6Header::from_slice(&out[14..]).expect("outer IPv6");
    assert_eq!(outer.next_header.0, 41);
    assert_eq!(outer.destination, be(0));
    assert_eq!(rest, &icmp[14..]);
}

/// Backend `id` of the scheduler cases; its MAC ends in `id`.
fn sched_be(id: u32) -> [u8; 16] {
    let mut b = a("2001:2:0:2::");
    b[15] = id as u8 + 1;
    b
}

/// [VIP]:80/tcp with `scheduler` over backends 0.. of `weights`, this
/// thread on one CPU (rr cursors and the new-flow cap are per CPU).
fn sched_setup(mut dp: Datapath, m: VipMeta6, scheduler: Scheduler, weights: &[u32]) -> Datapath {
    pin_to_one_cpu();
    set_vip(&mut dp, TCP, m);
    let mut members = Vec::new();
    for (id, w) in weights.iter().enumerate() {
        let id = id as u32;
        let b = Backend {
            port: 8033u16.to_be(),
            mac: [2, 0, 0, 0, 2, id as u8],
            src_mac: LB_MAC_OUT,
            ..Default::default()
        };
        dp.set_backend6(id, Ipv6Addr::from(sched_be(id)), b)
            .unwrap();
        members.push(Member {
            id,
            addr: std::net::SocketAddr::from((sched_be(id), 8033)),
            weight: *w,
        });
    }
    let t = table::build(scheduler, &members, TABLE).unwrap();
    let ids: Vec<u32> = (0..weights.len() as u32).collect();
    dp.set_members(0, &ids).unwrap();
    dp.swap_table(0, t.kind, &t.slots).unwrap();
    dp
}

/// The backend a forwarded frame went to.
fn sent_to(v: u32, out: &[u8]) -> u32 {
    assert_eq!(v, XDP_TX, "not forwarded");
    out[5] as u32
}

/// `pkt` with its TCP flags byte set to `flags` (the datapath does not
/// check L4 checksums).
fn with_flags(mut pkt: Vec<u8>, flags: u8) -> Vec<u8> {
    pkt[54 + 13] = flags;
    pkt
}

#[test]
fn rr_gives_new_ipv6_flows_to_backends_in_turn() {
    let dp = sched_setup(load(), meta(abi::MODE_DR), Scheduler::Rr, &[1, 5, 1]);
    let to: Vec<u32> = (0..9u16)
        .map(|p| {
            let (v, out) = run(&dp, &client_pkt(30_000 + p, TCP));
            sent_to(v, &out)
        })
        .collect();
    for w in to.windows(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, [0, 1, 2], "not in turn (rr ignores weights): {to:?}");
    }
    for p in 0..9u16 {
        let (v, out) = run(&dp, &ack_pkt(30_000 + p));
        assert_eq!(sent_to(v, &out), to[p as usize], "established flow moved");
    }
}

#[test]
fn wrr_shares_follow_weights_for_ipv6() {
    let dp = sched_setup(load(), meta(abi::MODE_DR), Scheduler::Wrr, &[3, 2, 1]);
    let mut n = [0; 3];
    for p in 0..60u16 {
        let (v, out) = run(&dp, &client_pkt(31_000 + p, TCP));
        n[sent_to(v, &out) as usize] += 1;
    }
    assert_eq!(n, [30, 20, 10]);
}

/// sh hashes the whole IPv6 client address: a client stays on one backend
/// whatever its ports, and clients differing only in the interface
/// identifier spread.
#[test]
fn sh_keeps_an_ipv6_client_on_one_backend_whatever_its_ports() {
    let dp = sched_setup(load(), meta(abi::MODE_DR), Scheduler::Sh, &[1, 1, 1, 1]);
    let mut used = std::collections::HashSet::new();
    for c in 0..32u8 {
        let mut client = client();
        client[15] = c + 1;
        let from = |sport| frame6(CLIENT_MAC, LB_MAC, client, vip_addr(), sport, 80, TCP, b"");
        let (v, out) = run(&dp, &from(40_000));
        let first = sent_to(v, &out);
        for p in 1..20u16 {
            let (v, out) = run(&dp, &from(40_000 + p * 97));
            assert_eq!(sent_to(v, &out), first, "client {c} moved");
        }
        used.insert(first);
    }
    assert!(used.len() >= 3, "clients not spread: {used:?}");
}

/// lc over IPv6 nat: the least active backend gets the new flow; a flow
/// leaves the count at the first FIN or RST of either side (the backend's
/// on the reply entry) and, once idle past its timeout, at the userspace
/// recount, which reads `FLOWS6`.
#[test]
fn lc_counts_ipv6_flows_in_and_out() {
    let mut m = meta(abi::MODE_NAT);
    m.meta.tcp_timeout_s = 1;
    let dp = sched_setup(load(), m, Scheduler::Lc, &[1, 1]);
    let active = |dp: &Datapath| [dp.active_flows(0), dp.active_flows(1)];
    let open = |p: u16| {
        let (v, out) = run(&dp, &client_pkt(p, TCP));
        (sent_to(v, &out), nat_port(&out))
    };
    // Ties go to the first backend in address order.
    let (a0, _) = open(32_000);
    let (a1, port1) = open(32_001);
    let (a2, _) = open(32_002);
    assert_eq!([a0, a1, a2], [0, 1, 0]);
    assert_eq!(active(&dp), [2, 1]);
    run(&dp, &ack_pkt(32_000));
    assert_eq!(
        active(&dp),
        [2, 1],
        "a packet of a known flow counted again"
    );
    // The client's FIN, twice: counted out once.
    let fin = with_flags(ack_pkt(32_000), 0x11);
    run(&dp, &fin);
    run(&dp, &fin);
    assert_eq!(active(&dp), [1, 1]);
    assert_eq!(open(32_003).0, 0);
    assert_eq!(active(&dp), [2, 1]);
    // Backend 1 resets its flow, seen on the nat reply: 1 gets the next.
    let mut rst = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 2, 1], LB_MAC_OUT)
        .ipv6(sched_be(1), lb(), 64)
        .tcp(8033, port1, 7, 64_000)
        .rst()
        .write(&mut rst, &[])
        .unwrap();
    assert_eq!(run(&dp, &rst).0, XDP_TX);
    assert_eq!(active(&dp), [2, 0]);
    // The client's RST afterwards does not count the flow out twice.
    run(&dp, &with_flags(ack_pkt(32_001), 0x14));
    assert_eq!(active(&dp), [2, 0]);
    assert_eq!(open(32_004).0, 1);
    assert_eq!(active(&dp), [2, 1]);
    // Past the 1 s idle timeout the recount of FLOWS6 finds none active.
    sleep(Duration::from_millis(2_100));
    assert_eq!(dp.reconcile_active().unwrap(), 3);
    assert_eq!(active(&dp), [0, 0]);
    // A flow back after its timeout is new, and counted once.
    assert_eq!(open(32_000).0, 0);
    assert_eq!(active(&dp), [1, 0]);
    assert_eq!(dp.reconcile_active().unwrap(), 0);
}

/// lc with the LB node as the backend: the local stack's FIN, un-NATed by
/// the tc egress program, counts the flow out.
#[test]
fn lc_counts_out_a_local_backends_close_seen_at_tc_egress() {
    let mut dp = sched_setup(load(), meta(abi::MODE_NAT), Scheduler::Lc, &[1]);
    backend(&mut dp, 0, lb(), abi::BACKEND_LOCAL);
    assert_eq!(run(&dp, &client_pkt(40_003, TCP)).0, XDP_PASS);
    assert_eq!(dp.active_flows(0), 1);
    let fin = with_flags(
        frame6(LB_MAC, CLIENT_MAC, lb(), client(), 8033, 40_003, TCP, b""),
        0x11,
    );
    let out = dp.test_run(abi::prog::TC_EGRESS, &fin, 1).unwrap();
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(dp.active_flows(0), 0);
}

#[test]
fn wlc_divides_active_ipv6_flows_by_weight() {
    let dp = sched_setup(load(), meta(abi::MODE_DR), Scheduler::Wlc, &[1, 3]);
    let mut n = [0; 2];
    for p in 0..40u16 {
        let (v, out) = run(&dp, &client_pkt(33_000 + p, TCP));
        n[sent_to(v, &out) as usize] += 1;
    }
    assert_eq!(n, [10, 30]);
    assert_eq!([dp.active_flows(0), dp.active_flows(1)], [10, 30]);
}

/// Over the SYN-flood cap IPv6 flows are not recorded either, so rr and lc
/// index their table by the flow hash: an unpinned flow keeps its backend,
/// and is not counted active.
#[test]
fn unpinned_ipv6_flows_keep_their_backend_with_rr_and_lc() {
    for scheduler in [Scheduler::Rr, Scheduler::Lc] {
        let dp = sched_setup(load_capped(1), meta(abi::MODE_DR), scheduler, &[1, 1, 1]);
        run(&dp, &client_pkt(35_000, TCP));
        let mut used = std::collections::HashSet::new();
        for p in 1..30u16 {
            let (v, out) = run(&dp, &client_pkt(35_000 + p, TCP));
            let first = sent_to(v, &out);
            used.insert(first);
            for _ in 0..3 {
                let (v, out) = run(&dp, &ack_pkt(35_000 + p));
                assert_eq!(sent_to(v, &out), first, "{scheduler}: unpinned flow moved");
            }
        }
        assert!(used.len() > 1, "{scheduler}: hash fallback sent all to one");
        assert!(dp.vip_counters(0).unwrap().unpinned > 20);
        let active: i64 = (0..3).map(|id| dp.active_flows(id)).sum();
        let pinned = dp.flows6().unwrap().len() as i64;
        assert_eq!(active, pinned, "{scheduler}: unpinned flows counted active");
    }
}
