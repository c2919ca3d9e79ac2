//! Packet cases of the XDP/tc programs through BPF_PROG_TEST_RUN, against real
//! maps. Each case asserts the verdict and the whole output frame, byte for
//! byte (so rewritten headers and checksums are exact), plus counters.
mod common;

use std::{thread::sleep, time::Duration};

use common::*;
use lb_core::{
    config::Scheduler,
    datapath::{Datapath, Limits},
    table::{self, Member, build_maglev},
};
use lb_ebpf::abi::{self, Backend, DropReason, VipKey, VipMeta};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;

const CLIENT: [u8; 4] = [198, 18, 0, 1];
const LB: [u8; 4] = [198, 18, 0, 2];
const VIP: [u8; 4] = [198, 18, 0, 100];
const OTHER: [u8; 4] = [198, 18, 0, 200];
const BE: [[u8; 4]; 2] = [[198, 18, 1, 1], [198, 18, 1, 2]];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const LB_MAC_OUT: [u8; 6] = [2, 0, 0, 0, 0, 3];
const BE_MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2]];
const SNAT_PORTS: (u16, u16) = (20_000, 20_099);
const TABLE: u32 = 1_009;

fn ip(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn load() -> Datapath {
    require_root();
    Datapath::load(Limits {
        max_vips: 4,
        max_backends: 16,
        ring_stride: TABLE,
        flow_capacity: 4_096,
        new_flow_cap: 0,
    })
    .expect("loading the datapath")
}

/// The test VIP's settings in `mode`; tests adjust fields from here.
fn meta(mode: u8, timeout_s: u32) -> VipMeta {
    VipMeta {
        id: 0,
        mode,
        snat_addr: ip(LB),
        snat_port_min: SNAT_PORTS.0,
        snat_port_max: SNAT_PORTS.1,
        tcp_timeout_s: timeout_s,
        udp_timeout_s: timeout_s,
        ..Default::default()
    }
}

/// Programs VIP:80/`proto` with `meta`.
fn set_vip(dp: &mut Datapath, proto: u8, meta: VipMeta) {
    let key = VipKey {
        addr: ip(VIP),
        port: 80u16.to_be(),
        proto,
        _pad: 0,
    };
    dp.set_vip(key, meta).expect("set_vip");
}

fn vip(dp: &mut Datapath, mode: u8, proto: u8, timeout_s: u32) {
    set_vip(dp, proto, meta(mode, timeout_s));
}

fn backend(dp: &mut Datapath, id: u32, addr: [u8; 4], flags: u8) {
    dp.set_backend(
        id,
        Backend {
            addr: ip(addr),
            port: 8033u16.to_be(),
            flags,
            _pad: 0,
            mac: BE_MAC[id as usize % 2],
            src_mac: LB_MAC_OUT,
            ifindex: 0,
        },
    )
    .expect("set_backend");
}

/// Programs the VIP's table with the given backend ids (equal weights).
fn table(dp: &mut Datapath, ids: &[u32]) -> u32 {
    let members: Vec<Member> = ids
        .iter()
        .map(|id| Member {
            id: *id,
            addr: std::net::SocketAddr::from((BE[*id as usize % 2], 8033)),
            weight: 1,
        })
        .collect();
    let t = build_maglev(&members, TABLE).expect("maglev");
    dp.set_members(0, ids).expect("members");
    dp.swap_table(0, abi::TABLE_MAGLEV, &t).expect("swap")
}

fn setup(mode: u8, proto: u8) -> Datapath {
    let mut dp = load();
    vip(&mut dp, mode, proto, 900);
    backend(&mut dp, 0, BE[0], 0);
    backend(&mut dp, 1, BE[1], 0);
    table(&mut dp, &[0]);
    dp
}

fn run(dp: &Datapath, f: &[u8]) -> (u32, Vec<u8>) {
    let out = dp.test_run(abi::prog::XDP_LB, f, 1).expect("test run");
    (out.verdict, out.data)
}

fn client_pkt(sport: u16, proto: u8) -> Vec<u8> {
    frame(
        CLIENT_MAC,
        LB_MAC,
        CLIENT,
        VIP,
        sport,
        80,
        proto,
        b"GET / HTTP/1.0\r\n\r\n",
    )
}

/// A packet of an established TCP connection (ACK, no SYN).
fn ack_pkt(sport: u16) -> Vec<u8> {
    let mut f = client_pkt(sport, TCP);
    f[47] = 0x10;
    f
}

fn nat_port(out: &[u8]) -> u16 {
    u16::from_be_bytes([out[34], out[35]])
}

#[test]
fn dr_vip_hit_rewrites_only_macs() {
    for proto in [TCP, UDP] {
        let dp = setup(abi::MODE_DR, proto);
        let (v, out) = run(&dp, &client_pkt(40_000, proto));
        assert_eq!(v, XDP_TX);
        let want = frame(
            LB_MAC_OUT,
            BE_MAC[0],
            CLIENT,
            VIP,
            40_000,
            80,
            proto,
            b"GET / HTTP/1.0\r\n\r\n",
        );
        assert_eq!(out, want, "proto {proto}");
        let c = dp.vip_counters(0).unwrap();
        assert_eq!((c.packets, c.new_flows, c.bytes), (1, 1, want.len() as u64));
        assert_eq!(dp.backend_counters(0).unwrap().packets, 1);
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
        let payload = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            out,
            frame(LB_MAC_OUT, BE_MAC[0], LB, BE[0], port, 8033, proto, payload)
        );

        // The backend's reply comes back to the SNAT address and is
        // translated to VIP:80 → client, towards the client's MAC.
        let reply = frame(
            BE_MAC[0],
            LB_MAC_OUT,
            BE[0],
            LB,
            8033,
            port,
            proto,
            b"HTTP/1.0 200 OK\r\n\r\n",
        );
        let (v, out) = run(&dp, &reply);
        assert_eq!(v, XDP_TX);
        assert_eq!(
            out,
            frame(
                LB_MAC,
                CLIENT_MAC,
                VIP,
                CLIENT,
                80,
                40_001,
                proto,
                b"HTTP/1.0 200 OK\r\n\r\n"
            )
        );

        // The same client flow keeps its SNAT port.
        let (_, again) = run(&dp, &client_pkt(40_001, proto));
        assert_eq!(nat_port(&again), port);
        let c = dp.vip_counters(0).unwrap();
        assert_eq!((c.packets, c.new_flows), (2, 1));
    }
}

#[test]
fn nat_reply_to_unknown_port_passes() {
    let dp = setup(abi::MODE_NAT, TCP);
    let reply = frame(BE_MAC[0], LB_MAC_OUT, BE[0], LB, 8033, 20_050, TCP, b"");
    assert_eq!(run(&dp, &reply), (XDP_PASS, reply.clone()));
}

#[test]
fn udp_without_checksum_keeps_zero() {
    let dp = setup(abi::MODE_NAT, UDP);
    let mut f = client_pkt(40_002, UDP);
    f[40] = 0;
    f[41] = 0;
    let (v, out) = run(&dp, &f);
    assert_eq!(v, XDP_TX);
    assert_eq!(&out[40..42], &[0, 0]);
    let mut want = frame(
        LB_MAC_OUT,
        BE_MAC[0],
        LB,
        BE[0],
        nat_port(&out),
        8033,
        UDP,
        b"GET / HTTP/1.0\r\n\r\n",
    );
    want[40] = 0;
    want[41] = 0;
    assert_eq!(out, want);
}

#[test]
fn nat_to_local_backend_passes_to_stack_and_tc_unnats_reply() {
    let mut dp = setup(abi::MODE_NAT, TCP);
    backend(&mut dp, 2, LB, abi::BACKEND_LOCAL);
    dp.swap_table(0, abi::TABLE_MAGLEV, &vec![2; TABLE as usize])
        .unwrap();
    let (v, out) = run(&dp, &client_pkt(40_003, TCP));
    assert_eq!(v, XDP_PASS);
    // Only the destination changes: the local stack sees the real client.
    assert_eq!(
        out,
        frame(
            CLIENT_MAC,
            LB_MAC,
            CLIENT,
            LB,
            40_003,
            8033,
            TCP,
            b"GET / HTTP/1.0\r\n\r\n"
        )
    );
    let reply = frame(
        LB_MAC,
        CLIENT_MAC,
        LB,
        CLIENT,
        8033,
        40_003,
        TCP,
        b"HTTP/1.0 200 OK\r\n\r\n",
    );
    let out = dp.test_run(abi::prog::TC_EGRESS, &reply, 1).unwrap();
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        out.data,
        frame(
            LB_MAC,
            CLIENT_MAC,
            VIP,
            CLIENT,
            80,
            40_003,
            TCP,
            b"HTTP/1.0 200 OK\r\n\r\n"
        )
    );
    // Unrelated egress traffic is left alone.
    let other = frame(LB_MAC, CLIENT_MAC, LB, CLIENT, 22, 40_003, TCP, b"");
    let out = dp.test_run(abi::prog::TC_EGRESS, &other, 1).unwrap();
    assert_eq!((out.verdict, out.data), (TC_ACT_OK, other));
}

#[test]
fn established_flow_keeps_backend_across_table_swap() {
    let mut dp = setup(abi::MODE_DR, TCP);
    let (_, out) = run(&dp, &client_pkt(41_000, TCP));
    assert_eq!(&out[0..6], &BE_MAC[0]);
    let g = table(&mut dp, &[1]);
    assert_eq!(dp.table_state(0).unwrap().generation, g);
    let (_, out) = run(&dp, &ack_pkt(41_000));
    assert_eq!(&out[0..6], &BE_MAC[0], "existing flow moved after swap");
    let (_, out) = run(&dp, &client_pkt(41_001, TCP));
    assert_eq!(&out[0..6], &BE_MAC[1], "new flow ignored the new table");
    assert_eq!(dp.vip_counters(0).unwrap().new_flows, 2);
    // The pinned flow carries its own forwarding data: reusing its backend's
    // id for another backend does not move it.
    backend(&mut dp, 0, BE[1], 0);
    dp.set_backend(
        0,
        Backend {
            mac: [2, 0, 0, 0, 9, 9],
            ..Default::default()
        },
    )
    .unwrap();
    let (_, out) = run(&dp, &ack_pkt(41_000));
    assert_eq!(
        &out[0..6],
        &BE_MAC[0],
        "pinned flow followed a reused backend id"
    );
}

#[test]
fn idle_flows_are_rescheduled_after_timeout() {
    for proto in [TCP, UDP] {
        let mut dp = setup(abi::MODE_DR, proto);
        vip(&mut dp, abi::MODE_DR, proto, 1);
        run(&dp, &client_pkt(42_000, proto));
        table(&mut dp, &[1]);
        let again = if proto == TCP {
            ack_pkt(42_000)
        } else {
            client_pkt(42_000, proto)
        };
        let (_, out) = run(&dp, &again);
        assert_eq!(&out[0..6], &BE_MAC[0]);
        sleep(Duration::from_millis(2_100));
        let (_, out) = run(&dp, &again);
        assert_eq!(
            &out[0..6],
            &BE_MAC[1],
            "proto {proto}: idle flow not expired"
        );
    }
}

#[test]
fn non_vip_and_arp_pass_untouched() {
    let dp = setup(abi::MODE_DR, TCP);
    let f = frame(CLIENT_MAC, LB_MAC, CLIENT, OTHER, 40_000, 80, TCP, b"x");
    assert_eq!(run(&dp, &f), (XDP_PASS, f.clone()));
    let f = frame(CLIENT_MAC, LB_MAC, CLIENT, VIP, 40_000, 81, TCP, b"x");
    assert_eq!(
        run(&dp, &f),
        (XDP_PASS, f.clone()),
        "other port of the VIP address"
    );
    let f = frame(CLIENT_MAC, LB_MAC, CLIENT, VIP, 40_000, 80, UDP, b"x");
    assert_eq!(run(&dp, &f), (XDP_PASS, f.clone()), "other protocol");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&VIP);
    assert_eq!(run(&dp, &arp), (XDP_PASS, arp.clone()));
    let c = dp.vip_counters(0).unwrap();
    assert_eq!(c.packets, 0);
}

fn drops(dp: &Datapath, r: DropReason) -> u64 {
    dp.unmatched_counters().unwrap().drops[r as usize]
}

/// Fixes the IPv4 header checksum after a test edits the header.
fn fix_ip_csum(f: &mut [u8]) {
    let ihl = (f[14] & 0xf) as usize * 4;
    f[24] = 0;
    f[25] = 0;
    let mut s: u32 = 0;
    for i in (14..14 + ihl).step_by(2) {
        s += u16::from_be_bytes([f[i], f[i + 1]]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    f[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

#[test]
fn fragments_to_vip_are_dropped_elsewhere_passed() {
    let dp = setup(abi::MODE_DR, TCP);
    for (flags_off, what) in [
        (0x2000u16, "first fragment (MF)"),
        (0x0010, "later fragment"),
    ] {
        let mut f = client_pkt(43_000, TCP);
        f[20..22].copy_from_slice(&flags_off.to_be_bytes());
        fix_ip_csum(&mut f);
        assert_eq!(run(&dp, &f).0, XDP_DROP, "{what}");
        let mut o = frame(CLIENT_MAC, LB_MAC, CLIENT, OTHER, 43_000, 80, TCP, b"x");
        o[20..22].copy_from_slice(&flags_off.to_be_bytes());
        fix_ip_csum(&mut o);
        assert_eq!(run(&dp, &o), (XDP_PASS, o.clone()), "{what} to a non-VIP");
    }
    assert_eq!(drops(&dp, DropReason::Fragment), 2);
    // DF alone is not a fragment.
    let mut f = client_pkt(43_001, TCP);
    f[20..22].copy_from_slice(&0x4000u16.to_be_bytes());
    fix_ip_csum(&mut f);
    assert_eq!(run(&dp, &f).0, XDP_TX);
}

#[test]
fn ip_options_to_vip_are_dropped() {
    let dp = setup(abi::MODE_DR, TCP);
    let base = client_pkt(44_000, TCP);
    // Insert a 4-byte NOP option block: IHL 6.
    let mut f = base[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&base[34..]);
    f[14] = 0x46;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_csum(&mut f);
    assert_eq!(run(&dp, &f).0, XDP_DROP);
    assert_eq!(drops(&dp, DropReason::IpOptions), 1);
    assert!(
        dp.flows().unwrap().is_empty(),
        "a dropped packet created a flow"
    );
}

#[test]
fn truncated_and_malformed_headers_are_never_forwarded() {
    let dp = setup(abi::MODE_DR, TCP);
    let good = client_pkt(45_000, TCP);
    // IPv4 header cut short: not even the destination is known.
    assert_eq!(run(&dp, &good[..14 + 12]).0, XDP_DROP);
    // TCP header cut at every length short of 20 bytes.
    for cut in 34..54 {
        let mut f = good[..cut].to_vec();
        let tot = (cut - 14) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        fix_ip_csum(&mut f);
        assert_eq!(run(&dp, &f).0, XDP_DROP, "TCP cut at {cut}");
    }
    // Total length larger than the frame.
    let mut f = good.clone();
    f[16..18].copy_from_slice(&1_400u16.to_be_bytes());
    fix_ip_csum(&mut f);
    assert_eq!(run(&dp, &f).0, XDP_DROP);
    // IHL below 5, and a version other than 4.
    for b in [0x44u8, 0x65] {
        let mut f = good.clone();
        f[14] = b;
        assert_eq!(run(&dp, &f).0, XDP_DROP, "version/IHL byte {b:#x}");
    }
    assert_eq!(drops(&dp, DropReason::Malformed), 1 + 20 + 1 + 2);
    // A malformed packet to some other host is the kernel's business.
    let mut o = frame(CLIENT_MAC, LB_MAC, CLIENT, OTHER, 45_000, 80, TCP, b"");
    o[16..18].copy_from_slice(&1_400u16.to_be_bytes());
    fix_ip_csum(&mut o);
    assert_eq!(run(&dp, &o), (XDP_PASS, o.clone()));
    assert!(
        dp.flows().unwrap().is_empty(),
        "a dropped packet created a flow"
    );
    assert_eq!(dp.vip_counters(0).unwrap().packets, 0);
}

#[test]
fn empty_table_drops_new_flows_as_no_backend() {
    let mut dp = setup(abi::MODE_DR, TCP);
    dp.swap_table(0, abi::TABLE_MAGLEV, &[]).unwrap();
    assert_eq!(run(&dp, &client_pkt(46_000, TCP)).0, XDP_DROP);
    assert_eq!(
        dp.vip_counters(0).unwrap().drops[DropReason::NoBackend as usize],
        1
    );
}

/// A nat VIP with a single SNAT port (20000) and one backend.
fn one_port_nat() -> Datapath {
    let mut dp = load();
    set_vip(
        &mut dp,
        TCP,
        VipMeta {
            snat_port_min: 20_000,
            snat_port_max: 20_000,
            ..meta(abi::MODE_NAT, 900)
        },
    );
    backend(&mut dp, 0, BE[0], 0);
    table(&mut dp, &[0]);
    dp
}

#[test]
fn nat_port_exhaustion_is_a_counted_drop() {
    // A one-port range: the second concurrent flow cannot get a port.
    let dp = one_port_nat();
    assert_eq!(run(&dp, &client_pkt(47_000, TCP)).0, XDP_TX);
    assert_eq!(run(&dp, &client_pkt(47_001, TCP)).0, XDP_DROP);
    assert_eq!(
        dp.vip_counters(0).unwrap().drops[DropReason::NatPortsExhausted as usize],
        1
    );
}

#[test]
fn weighted_tables_spread_flows_by_weight() {
    let mut dp = setup(abi::MODE_DR, TCP);
    let members = [
        Member {
            id: 0,
            addr: std::net::SocketAddr::from((BE[0], 8033)),
            weight: 1,
        },
        Member {
            id: 1,
            addr: std::net::SocketAddr::from((BE[1], 8033)),
            weight: 3,
        },
    ];
    dp.swap_table(
        0,
        abi::TABLE_MAGLEV,
        &build_maglev(&members, TABLE).unwrap(),
    )
    .unwrap();
    let mut to = [0u32; 2];
    for p in 0..2_000u16 {
        let (_, out) = run(&dp, &client_pkt(10_000 + p, TCP));
        to[(out[5] - 1) as usize] += 1;
    }
    let share = to[1] as f64 / 2_000.0;
    assert!(
        (0.70..0.80).contains(&share),
        "weight-3 backend got {share}"
    );
}

fn tcp_frame(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
    rst: bool,
) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2(BE_MAC[0], LB_MAC_OUT)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 7, 64_000);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1001);
    }
    if rst {
        b = b.rst();
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// Passive health: the datapath counts per backend the SYNs of new flows
/// and the backend's first answer to each, SYN-ACK or RST (nat mode).
#[test]
fn nat_counts_syns_and_their_answers_per_backend() {
    let dp = setup(abi::MODE_NAT, TCP);
    let mut ports = Vec::new();
    for sport in [48_000u16, 48_001, 48_002] {
        let (v, out) = run(&dp, &client_pkt(sport, TCP));
        assert_eq!(v, XDP_TX);
        ports.push(nat_port(&out));
    }
    // A data packet of an established flow is not a SYN.
    let mut data = client_pkt(48_000, TCP);
    data[47] = 0x10;
    run(&dp, &data);
    let accept = tcp_frame(BE[0], LB, 8033, ports[0], true, true, false);
    assert_eq!(run(&dp, &accept).0, XDP_TX);
    // Retransmitted SYN-ACKs count once.
    assert_eq!(run(&dp, &accept).0, XDP_TX);
    let refuse = tcp_frame(BE[0], LB, 8033, ports[1], false, true, true);
    assert_eq!(run(&dp, &refuse).0, XDP_TX);
    let c = dp.backend_counters(0).unwrap();
    assert_eq!((c.syn, c.syn_ack, c.syn_rst), (3, 1, 1), "{c:?}");
}

/// A FIN or RST marks a flow as ending; a new SYN on the same 5-tuple is
/// then scheduled afresh instead of following the old connection's backend.
#[test]
fn ended_flows_are_marked_and_a_new_syn_reschedules() {
    let mut dp = setup(abi::MODE_DR, TCP);
    let (_, out) = run(&dp, &client_pkt(49_000, TCP));
    assert_eq!(&out[0..6], &BE_MAC[0]);
    table(&mut dp, &[1]);
    let mut fin = client_pkt(49_000, TCP);
    fin[47] = 0x11; // FIN|ACK
    let (_, out) = run(&dp, &fin);
    assert_eq!(
        &out[0..6],
        &BE_MAC[0],
        "the FIN belongs to the old connection"
    );
    let f = dp.flows().unwrap();
    assert!(
        f.iter().any(|(_, f)| f.flags & abi::FLOW_CLOSING != 0),
        "{f:?}"
    );
    let (_, out) = run(&dp, &client_pkt(49_000, TCP));
    assert_eq!(
        &out[0..6],
        &BE_MAC[1],
        "a new SYN followed the ended connection"
    );
}

fn tun_vip(dp: &mut Datapath, mtu: u16) {
    set_vip(
        dp,
        TCP,
        VipMeta {
            tun_src_bits: 8,
            mtu,
            tun_src: ip([198, 19, 0, 0]),
            ..meta(abi::MODE_TUN, 900)
        },
    );
}

/// tun: the client's packet, untouched, inside an outer IPv4 header (IPIP)
/// to the backend, from a per-flow source in the configured prefix; the
/// backend-side helper strips it again.
#[test]
fn tun_wraps_in_ipip_and_the_decap_helper_unwraps() {
    let mut dp = load();
    tun_vip(&mut dp, 1_500);
    backend(&mut dp, 0, BE[0], 0);
    table(&mut dp, &[0]);
    let pkt = client_pkt(50_000, TCP);
    let inner = &pkt[14..];
    let (v, out) = run(&dp, &pkt);
    assert_eq!(v, XDP_TX);
    assert_eq!(out.len(), 14 + 20 + inner.len());
    assert_eq!(&out[0..6], &BE_MAC[0]);
    assert_eq!(&out[6..12], &LB_MAC_OUT);
    assert_eq!(&out[12..14], &[8, 0]);
    let (outer, rest) = etherparse::Ipv4Header::from_slice(&out[14..]).expect("outer IPv4");
    assert_eq!(rest, inner, "the inner packet changed");
    assert_eq!(outer.protocol, etherparse::IpNumber::IPV4);
    assert_eq!(outer.destination, BE[0]);
    assert_eq!(&outer.source[..3], &[198, 19, 0]);
    assert_eq!(outer.total_len as usize, 20 + inner.len());
    assert_eq!(outer.time_to_live, 64);
    assert_eq!(outer.header_checksum, outer.calc_header_checksum());
    // The source is fixed per flow and spread across flows.
    let (_, again) = run(&dp, &pkt);
    assert_eq!(again, out);
    let sources: std::collections::HashSet<u8> = (0..64u16)
        .map(|p| run(&dp, &client_pkt(51_000 + p, TCP)).1[14 + 15])
        .collect();
    assert!(sources.len() > 16, "outer sources not spread: {sources:?}");

    let d = dp.test_run(abi::prog::XDP_DECAP, &out, 1).unwrap();
    assert_eq!(d.verdict, XDP_PASS);
    assert_eq!(d.data, [&out[0..14], inner].concat());
    // Anything else passes the helper untouched.
    let d = dp.test_run(abi::prog::XDP_DECAP, &pkt, 1).unwrap();
    assert_eq!((d.verdict, d.data), (XDP_PASS, pkt.clone()));
}

#[test]
fn tun_drops_what_would_exceed_the_mtu_once_wrapped() {
    let mut dp = load();
    let pkt = client_pkt(50_100, TCP);
    tun_vip(&mut dp, (pkt.len() - 14 + 19) as u16);
    backend(&mut dp, 0, BE[0], 0);
    table(&mut dp, &[0]);
    assert_eq!(run(&dp, &pkt).0, XDP_DROP);
    assert_eq!(
        dp.vip_counters(0).unwrap().drops[DropReason::TunTooBig as usize],
        1
    );
    tun_vip(&mut dp, (pkt.len() - 14 + 20) as u16);
    assert_eq!(run(&dp, &client_pkt(50_101, TCP)).0, XDP_TX);
}

/// Persistence (keepalived's persistence_timeout/granularity): a client's
/// new connections follow its first backend while the template is fresh and
/// the backend still in the table.
#[test]
fn persistence_keeps_a_client_on_its_backend_across_connections() {
    let mut dp = load();
    set_vip(
        &mut dp,
        TCP,
        VipMeta {
            persist_timeout_s: 1,
            persist_mask: ip([255, 255, 255, 0]),
            ..meta(abi::MODE_DR, 900)
        },
    );
    backend(&mut dp, 0, BE[0], 0);
    backend(&mut dp, 1, BE[1], 0);
    dp.set_members(0, &[0, 1]).unwrap();
    table(&mut dp, &[0]);
    let (_, out) = run(&dp, &client_pkt(52_000, TCP));
    assert_eq!(&out[0..6], &BE_MAC[0]);
    // The table now says backend 1, but the client (and its /24) stays.
    dp.swap_table(0, abi::TABLE_MAGLEV, &vec![1; TABLE as usize])
        .unwrap();
    let (_, out) = run(&dp, &client_pkt(52_001, TCP));
    assert_eq!(&out[0..6], &BE_MAC[0], "a new connection left its backend");
    let neighbour = frame(
        CLIENT_MAC,
        LB_MAC,
        [198, 18, 0, 9],
        VIP,
        52_002,
        80,
        TCP,
        b"",
    );
    assert_eq!(
        &run(&dp, &neighbour).1[0..6],
        &BE_MAC[0],
        "granularity /24 ignored"
    );
    let stranger = frame(
        CLIENT_MAC,
        LB_MAC,
        [198, 18, 7, 9],
        VIP,
        52_003,
        80,
        TCP,
        b"",
    );
    assert_eq!(&run(&dp, &stranger).1[0..6], &BE_MAC[1]);
    // Backend 0 leaves the table: the template is not followed any more.
    dp.set_members(0, &[1]).unwrap();
    let (_, out) = run(&dp, &client_pkt(52_004, TCP));
    assert_eq!(
        &out[0..6],
        &BE_MAC[1],
        "template followed to a backend out of the table"
    );
    // Templates expire after the timeout without new connections.
    dp.set_members(0, &[0, 1]).unwrap();
    dp.swap_table(0, abi::TABLE_MAGLEV, &vec![0; TABLE as usize])
        .unwrap();
    let (_, out) = run(&dp, &client_pkt(52_005, TCP));
    assert_eq!(
        &out[0..6],
        &BE_MAC[1],
        "fresh template (to backend 1) not followed"
    );
    std::thread::sleep(Duration::from_millis(2_100));
    let (_, out) = run(&dp, &client_pkt(52_006, TCP));
    assert_eq!(&out[0..6], &BE_MAC[0], "expired template still followed");
}

/// SYN-flood guard: past the per-CPU new-flow cap, dr flows are still
/// forwarded to their Maglev backend but not recorded, so the connection
/// table (and the established flows in it) is left alone.
#[test]
fn new_flows_over_the_cap_are_forwarded_unrecorded() {
    require_root();
    let mut dp = Datapath::load(Limits {
        max_vips: 4,
        max_backends: 16,
        ring_stride: TABLE,
        flow_capacity: 4_096,
        new_flow_cap: 3,
    })
    .unwrap();
    vip(&mut dp, abi::MODE_DR, TCP, 900);
    backend(&mut dp, 0, BE[0], 0);
    table(&mut dp, &[0]);
    // The cap is per CPU: keep this thread (and so the test runs) on one.
    pin_to_one_cpu();
    for p in 0..5u16 {
        let (v, out) = run(&dp, &client_pkt(53_000 + p, TCP));
        assert_eq!(v, XDP_TX);
        assert_eq!(&out[0..6], &BE_MAC[0]);
    }
    assert_eq!(dp.flows().unwrap().len(), 3);
    let c = dp.vip_counters(0).unwrap();
    assert_eq!((c.new_flows, c.unpinned), (5, 2));
}

fn echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], request: bool) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64);
    let b = if request {
        b.icmpv4_echo_request(7, 1)
    } else {
        b.icmpv4_echo_reply(7, 1)
    };
    let mut out = Vec::new();
    b.write(&mut out, b"ping").unwrap();
    out
}

/// ICMP echo to a VIP address is answered by the LB, whatever the VIP's
/// ports; echo to other addresses is the kernel's.
#[test]
fn echo_to_a_vip_is_answered() {
    let dp = setup(abi::MODE_NAT, TCP);
    let (v, out) = run(&dp, &echo(CLIENT_MAC, LB_MAC, CLIENT, VIP, true));
    assert_eq!(v, XDP_TX);
    assert_eq!(out, echo(LB_MAC, CLIENT_MAC, VIP, CLIENT, false));
    let other = echo(CLIENT_MAC, LB_MAC, CLIENT, OTHER, true);
    assert_eq!(run(&dp, &other), (XDP_PASS, other.clone()));
}

/// "Fragmentation needed" about a dr flow (the backend's reply, from the
/// VIP, was too big for a router) goes to that flow's backend unchanged.
#[test]
fn frag_needed_goes_to_the_flows_backend() {
    let dp = setup(abi::MODE_DR, TCP);
    run(&dp, &client_pkt(54_000, TCP));
    // What the backend sent: VIP:80 → client:54000, quoted by a router.
    let quoted = frame(
        BE_MAC[0], CLIENT_MAC, VIP, CLIENT, 80, 54_000, TCP, &[0u8; 64],
    );
    let mut icmp = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([198, 18, 0, 254], VIP, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1_400,
            },
        ))
        .write(&mut icmp, &quoted[14..14 + 28])
        .unwrap();
    let (v, out) = run(&dp, &icmp);
    assert_eq!(v, XDP_TX);
    assert_eq!(&out[0..6], &BE_MAC[0]);
    assert_eq!(&out[6..12], &LB_MAC_OUT);
    assert_eq!(
        &out[12..],
        &icmp[12..],
        "the ICMP packet itself must not change"
    );
    // Unknown flow: the kernel's business.
    let mut stray = icmp.clone();
    stray[14 + 20 + 8 + 22] ^= 0xff;
    assert_eq!(run(&dp, &stray).0, XDP_PASS);
}

/// A new SYN on the 5-tuple of a flow whose backend left the table (its end
/// never seen: a refused connection, a backend RST in dr mode) is scheduled
/// afresh instead of going back to the dead backend.
#[test]
fn a_new_syn_for_a_flow_of_a_departed_backend_is_rescheduled() {
    let mut dp = setup(abi::MODE_DR, TCP);
    dp.set_members(0, &[0, 1]).unwrap();
    let (_, out) = run(&dp, &client_pkt(55_000, TCP));
    assert_eq!(&out[0..6], &BE_MAC[0]);
    dp.set_members(0, &[1]).unwrap();
    table(&mut dp, &[1]);
    let mut ack = client_pkt(55_000, TCP);
    ack[47] = 0x10;
    assert_eq!(
        &run(&dp, &ack).1[0..6],
        &BE_MAC[0],
        "established packets stay"
    );
    assert_eq!(&run(&dp, &client_pkt(55_000, TCP)).1[0..6], &BE_MAC[1]);
}

/// The SNAT port of an ended nat connection is free again after 2 s of
/// silence, not after the whole idle timeout.
#[test]
fn a_closed_nat_connection_frees_its_port_soon() {
    let dp = one_port_nat();
    assert_eq!(run(&dp, &client_pkt(56_000, TCP)).0, XDP_TX);
    let mut fin = ack_pkt(56_000);
    fin[47] = 0x11;
    assert_eq!(run(&dp, &fin).0, XDP_TX);
    assert_eq!(
        run(&dp, &client_pkt(56_001, TCP)).0,
        XDP_DROP,
        "port reused at once"
    );
    sleep(Duration::from_millis(2_200));
    let (v, out) = run(&dp, &client_pkt(56_001, TCP));
    assert_eq!(v, XDP_TX, "the ended connection's port was not reused");
    assert_eq!(nat_port(&out), 20_000);
}

/// A client that reuses the 5-tuple of an ended nat connection (as clients
/// do under load, with tw_reuse) must not take away the reply entry of the
/// connection that has since been given that SNAT port: the newer
/// connection's replies would stop being translated and it would hang.
#[test]
fn reopening_an_ended_nat_flow_leaves_its_reused_port_alone() {
    let dp = one_port_nat();
    assert_eq!(run(&dp, &client_pkt(56_100, TCP)).0, XDP_TX);
    let mut fin = ack_pkt(56_100);
    fin[47] = 0x11;
    assert_eq!(run(&dp, &fin).0, XDP_TX);
    sleep(Duration::from_millis(2_200));
    let (v, out) = run(&dp, &client_pkt(56_101, TCP));
    assert_eq!(v, XDP_TX);
    assert_eq!(nat_port(&out), 20_000, "the ended connection's port");
    // The first client port comes back with a new connection; the only
    // port is taken by a live one, so it cannot be served.
    assert_eq!(run(&dp, &client_pkt(56_100, TCP)).0, XDP_DROP);
    let payload = b"HTTP/1.0 200 OK\r\n\r\n";
    let reply = frame(BE_MAC[0], LB_MAC_OUT, BE[0], LB, 8033, 20_000, TCP, payload);
    assert_eq!(
        run(&dp, &reply),
        (
            XDP_TX,
            frame(LB_MAC, CLIENT_MAC, VIP, CLIENT, 80, 56_101, TCP, payload)
        ),
        "the live connection's replies must still reach its client"
    );
}

/// Backend `id` of the scheduler cases, told apart by the last byte of its MAC.
fn sched_backend_addr(id: u32) -> [u8; 4] {
    [198, 18, 1, id as u8 + 1]
}

/// VIP:80/tcp in `mode` with `scheduler` over backends 0.. of `weights`.
fn sched_setup(mode: u8, scheduler: Scheduler, weights: &[u32], meta: VipMeta) -> Datapath {
    sched_program(load(), mode, scheduler, weights, meta)
}

fn sched_program(
    mut dp: Datapath,
    mode: u8,
    scheduler: Scheduler,
    weights: &[u32],
    meta: VipMeta,
) -> Datapath {
    pin_to_one_cpu();
    set_vip(&mut dp, TCP, VipMeta { mode, ..meta });
    let mut members = Vec::new();
    for (id, w) in weights.iter().enumerate() {
        let id = id as u32;
        dp.set_backend(
            id,
            Backend {
                addr: ip(sched_backend_addr(id)),
                port: 8033u16.to_be(),
                mac: [2, 0, 0, 0, 2, id as u8],
                src_mac: LB_MAC_OUT,
                ..Default::default()
            },
        )
        .unwrap();
        members.push(Member {
            id,
            addr: std::net::SocketAddr::from((sched_backend_addr(id), 8033)),
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

fn from(client: [u8; 4], sport: u16) -> Vec<u8> {
    frame(CLIENT_MAC, LB_MAC, client, VIP, sport, 80, TCP, b"")
}

#[test]
fn rr_gives_new_flows_to_backends_in_turn() {
    let dp = sched_setup(abi::MODE_DR, Scheduler::Rr, &[1, 5, 1], meta(0, 900));
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
    // An established flow stays where it was sent.
    for p in 0..9u16 {
        let (v, out) = run(&dp, &ack_pkt(30_000 + p));
        assert_eq!(sent_to(v, &out), to[p as usize]);
    }
}

#[test]
fn wrr_shares_follow_weights() {
    let dp = sched_setup(abi::MODE_DR, Scheduler::Wrr, &[3, 2, 1], meta(0, 900));
    let mut n = [0; 3];
    for p in 0..60u16 {
        let (v, out) = run(&dp, &client_pkt(31_000 + p, TCP));
        n[sent_to(v, &out) as usize] += 1;
    }
    assert_eq!(n, [30, 20, 10]);
}

#[test]
fn sh_keeps_a_client_on_one_backend_whatever_its_ports() {
    let dp = sched_setup(abi::MODE_DR, Scheduler::Sh, &[1, 1, 1, 1], meta(0, 900));
    let mut used = std::collections::HashSet::new();
    for c in 0..32u8 {
        let client = [198, 19, 3, c];
        let (v, out) = run(&dp, &from(client, 40_000));
        let first = sent_to(v, &out);
        for p in 1..20u16 {
            let (v, out) = run(&dp, &from(client, 40_000 + p * 97));
            assert_eq!(sent_to(v, &out), first, "client {client:?} moved");
        }
        used.insert(first);
    }
    assert!(used.len() >= 3, "clients not spread: {used:?}");
}

/// lc: a new flow goes to the backend with the fewest active flows; a flow
/// leaves the count when either side sends FIN or RST (nat: the backend's
/// side is seen on the reply) and when it idles out (the userspace recount).
#[test]
fn lc_picks_the_least_active_backend_and_counts_follow_flows() {
    let dp = sched_setup(abi::MODE_NAT, Scheduler::Lc, &[1, 1], meta(0, 1));
    let active = |dp: &Datapath| [dp.active_flows(0), dp.active_flows(1)];
    let open = |p: u16| {
        let (v, out) = run(&dp, &client_pkt(p, TCP));
        (sent_to(v, &out), nat_port(&out))
    };
    // Ties go to the first backend in address order.
    let (a, _) = open(32_000);
    let (b, b_port) = open(32_001);
    let (c, _) = open(32_002);
    assert_eq!([a, b, c], [0, 1, 0]);
    assert_eq!(active(&dp), [2, 1]);
    // More packets of a flow do not count again.
    run(&dp, &ack_pkt(32_000));
    assert_eq!(active(&dp), [2, 1]);
    // The client closes a flow of backend 0: 1 and 1, the tie goes to 0.
    let mut fin = ack_pkt(32_000);
    fin[47] = 0x11;
    run(&dp, &fin);
    run(&dp, &fin);
    assert_eq!(active(&dp), [1, 1]);
    assert_eq!(open(32_003).0, 0);
    assert_eq!(active(&dp), [2, 1]);
    // Backend 1 resets its flow (seen on the nat reply): 1 gets the next.
    let rst = tcp_frame(sched_backend_addr(1), LB, 8033, b_port, false, true, true);
    assert_eq!(run(&dp, &rst).0, XDP_TX);
    assert_eq!(active(&dp), [2, 0]);
    // The client's own RST afterwards does not count the flow out twice.
    let mut rst = ack_pkt(32_001);
    rst[47] = 0x14;
    run(&dp, &rst);
    assert_eq!(active(&dp), [2, 0]);
    assert_eq!(open(32_004).0, 1);
    assert_eq!(active(&dp), [2, 1]);
    // After the 1 s idle timeout the recount finds no active flow.
    sleep(Duration::from_millis(2_100));
    assert_eq!(dp.reconcile_active().unwrap(), 3);
    assert_eq!(active(&dp), [0, 0]);
    // A flow that comes back after its timeout is new, and counted once.
    assert_eq!(open(32_000).0, 0);
    assert_eq!(active(&dp), [1, 0]);
    assert_eq!(dp.reconcile_active().unwrap(), 0);
}

#[test]
fn wlc_divides_active_flows_by_weight() {
    let dp = sched_setup(abi::MODE_DR, Scheduler::Wlc, &[1, 3], meta(0, 900));
    let mut n = [0; 2];
    for p in 0..40u16 {
        let (v, out) = run(&dp, &client_pkt(33_000 + p, TCP));
        n[sent_to(v, &out) as usize] += 1;
    }
    assert_eq!(n, [10, 30]);
    assert_eq!([dp.active_flows(0), dp.active_flows(1)], [10, 30]);
}

/// Persistence works with every scheduler: rr would alternate, the client's
/// template keeps it on its first backend.
#[test]
fn persistence_overrides_rr_for_a_known_client() {
    let m = VipMeta {
        persist_timeout_s: 60,
        persist_mask: u32::MAX,
        ..meta(0, 900)
    };
    let dp = sched_setup(abi::MODE_DR, Scheduler::Rr, &[1, 1], m);
    let (v, out) = run(&dp, &client_pkt(34_000, TCP));
    let first = sent_to(v, &out);
    for p in 1..6u16 {
        let (v, out) = run(&dp, &client_pkt(34_000 + p, TCP));
        assert_eq!(sent_to(v, &out), first);
    }
    let (v, out) = run(&dp, &from([198, 19, 9, 9], 34_000));
    assert_ne!(
        sent_to(v, &out),
        first,
        "another client did not take its turn"
    );
}

/// Over the SYN-flood cap, flows are not recorded, so rr and lc index their
/// table by the flow hash: every packet of an unpinned flow gets the same
/// backend.
#[test]
fn unpinned_flows_keep_their_backend_with_rr_and_lc() {
    for scheduler in [Scheduler::Rr, Scheduler::Lc] {
        require_root();
        let capped = Datapath::load(Limits {
            max_vips: 4,
            max_backends: 16,
            ring_stride: TABLE,
            flow_capacity: 4_096,
            new_flow_cap: 1,
        })
        .unwrap();
        let dp = sched_program(capped, abi::MODE_DR, scheduler, &[1, 1, 1], meta(0, 900));
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
    }
}
