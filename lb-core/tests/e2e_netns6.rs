//! End to end over IPv6 through the XDP datapath in network namespaces:
//! curl through an IPv6 VIP to python HTTP backends, in dr, nat (port 80 →
//! 8033, SNAT) and tun (IPv6-in-IPv6 with lb's decap helper on the
//! backends), generic XDP, and dr and nat in native mode too; rr and lc with
//! real TCP connections; persistence; ICMPv6 echo answered by the datapath.
//! The IPv4 counterpart is `e2e_netns.rs`.
//!
//! Layout: the lab's one L2 segment (its hosts keep their 198.18.0.0/15
//! addresses), plus 2001:2::/64 (RFC 5180): client ::1, lb ::2 (holds the
//! VIP ::100), backends ::11-::13. Addresses are added with `nodad` so they
//! are usable at once.

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb_core::{
    config::{Forwarding, Protocol, Scheduler},
    datapath::{
        AttachMode, Datapath, Limits, XdpRunMode,
        balancer::{BackendSpec, Balancer, ServiceSpec},
    },
};
use lb_testlab::{Lab, NsWorker, in_ns};

const VIP: &str = "2001:2::100";
const LB: &str = "2001:2::2";
const BACKENDS: [&str; 3] = ["2001:2::11", "2001:2::12", "2001:2::13"];

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), port)
}

fn limits() -> Limits {
    Limits {
        max_vips: 4,
        max_backends: 64,
        ring_stride: 65_537,
        flow_capacity: 65_536,
        new_flow_cap: 0,
    }
}

fn spec(forwarding: Forwarding, scheduler: Scheduler) -> ServiceSpec {
    ServiceSpec {
        vip: sa(VIP, 80),
        protocol: Protocol::Tcp,
        interface: "eth0".into(),
        forwarding,
        scheduler,
        table_size: 65_537,
        snat_address: (forwarding == Forwarding::Nat).then(|| LB.parse().expect("address")),
        snat_ports: (1_024, 32_767),
        tun_source: (forwarding == Forwarding::Tun)
            .then(|| ("2001:2:0:9::".parse().expect("address"), 120)),
        persistence: None,
        tcp_timeout: Duration::from_secs(900),
        udp_timeout: Duration::from_secs(300),
    }
}

struct Setup {
    lab: Lab,
    lb: NsWorker<Balancer>,
    /// Keeps the XDP_PASS program on the LB's bridge port in native mode.
    _peer: Option<NsWorker<Datapath>>,
    /// tun: the decap helpers on the backends.
    _decaps: Vec<NsWorker<Datapath>>,
    client: String,
}

fn add6(lab: &Lab, ns: &str, addr: &str, dev: &str) {
    lab.ip(&["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
}

fn small_datapath() -> Datapath {
    Datapath::load(Limits {
        max_vips: 1,
        max_backends: 1,
        ring_stride: 2,
        flow_capacity: 16,
        new_flow_cap: 0,
    })
    .expect("load")
}

/// Builds the lab, starts three HTTP backends and programs the VIP (mh) with
/// XDP in `mode`.
fn setup(test: &str, forwarding: Forwarding, mode: AttachMode) -> Setup {
    setup_sched(test, forwarding, mode, Scheduler::Mh)
}

/// [`setup`] with `scheduler`.
fn setup_sched(
    test: &str,
    forwarding: Forwarding,
    mode: AttachMode,
    scheduler: Scheduler,
) -> Setup {
    setup_spec(test, mode, spec(forwarding, scheduler))
}

/// [`setup`] of the service `service`.
fn setup_spec(test: &str, mode: AttachMode, service: ServiceSpec) -> Setup {
    let forwarding = service.forwarding;
    let mut lab = Lab::new(test);
    let client = lab.host("client", "198.18.0.1/15");
    add6(&lab, &client, "2001:2::1/64", "eth0");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    add6(&lab, &lb_ns, &format!("{LB}/64"), "eth0");
    add6(&lab, &lb_ns, &format!("{VIP}/128"), "eth0");
    let port = if forwarding == Forwarding::Nat {
        8033
    } else {
        80
    };
    let mut decaps = Vec::new();
    for (i, be) in BACKENDS.iter().enumerate() {
        let ns = lab.host(&format!("be{}", i + 1), &format!("198.18.1.{}/15", i + 1));
        add6(&lab, &ns, &format!("{be}/64"), "eth0");
        if forwarding == Forwarding::Tun {
            decaps.push(NsWorker::start(&ns, || {
                let mut dp = small_datapath();
                dp.attach_decap("eth0", AttachMode::Generic).expect("decap");
                dp
            }));
        }
        if forwarding != Forwarding::Nat {
            // The VIP on loopback: IPv6 neighbour discovery only answers
            // for addresses of the asking interface, so eth0 stays silent
            // about it (what arp_ignore does for IPv4).
            add6(&lab, &ns, &format!("{VIP}/128"), "lo");
        }
        let bind = if forwarding == Forwarding::Nat {
            be.to_string()
        } else {
            "::".to_string()
        };
        lab.http_backend(&ns, &bind, port, &format!("be{}", i + 1));
    }
    // Native veth: XDP_TX frames are dropped unless the peer has an XDP
    // program too (EBPF_TOOLCHAIN.md).
    let peer = (mode == AttachMode::Native).then(|| {
        let (br, p) = lab.bridge_port(2);
        NsWorker::start(&br, move || {
            let mut dp = small_datapath();
            dp.attach_pass(&p, AttachMode::Native)
                .expect("XDP_PASS on peer");
            dp
        })
    });
    let lb = NsWorker::start(&lb_ns, move || {
        Balancer::new(Datapath::load(limits()).expect("loading datapath"), mode)
    });
    let backends: Vec<BackendSpec> = BACKENDS
        .iter()
        .map(|b| BackendSpec {
            addr: sa(b, port),
            weight: 1,
        })
        .collect();
    let swap = lb.call(move |b| {
        b.add_service(service).expect("add_service");
        b.set_backends(sa(VIP, 80), Protocol::Tcp, &backends)
            .expect("set_backends")
    });
    assert!(
        swap.unresolved.is_empty(),
        "backends without a neighbour entry: {:?}",
        swap.unresolved
    );
    let want = match mode {
        AttachMode::Native => XdpRunMode::Native,
        _ => XdpRunMode::Generic,
    };
    assert_eq!(lb.call(|b| b.attached()), vec![("eth0".to_string(), want)]);
    Setup {
        lab,
        lb,
        _peer: peer,
        _decaps: decaps,
        client,
    }
}

/// `n` HTTP requests from the client through the VIP; bodies by count.
fn curl_many(s: &Setup, n: usize) -> HashMap<String, usize> {
    let out = s.lab.sh(
        &s.client,
        &format!(
            "for i in $(seq {n}); do curl -gsS --fail --max-time 3 http://[{VIP}]/; echo; done"
        ),
    );
    let mut seen = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *seen.entry(line.to_string()).or_insert(0) += 1;
    }
    seen
}

/// 30 requests answered, by all three backends, all through the datapath.
fn spreads(test: &str, forwarding: Forwarding, mode: AttachMode) {
    let s = setup(test, forwarding, mode);
    let n = 30;
    let seen = curl_many(&s, n);
    assert_eq!(seen.values().sum::<usize>(), n, "answers: {seen:?}");
    for i in 1..=3 {
        assert!(
            seen.get(&format!("be{i}")).copied().unwrap_or(0) > 0,
            "backend be{i} got nothing: {seen:?}"
        );
    }
    let c =
        s.lb.call(|b| b.datapath().vip_counters(0).expect("counters"));
    assert!(c.new_flows >= n as u64, "counters: {c:?}");
    assert!(c.packets >= 3 * n as u64, "counters: {c:?}");
    let flows = s.lb.call(|b| b.datapath().flows6().expect("flows"));
    assert!(flows.len() >= n, "IPv6 flows: {}", flows.len());
}

#[test]
fn dr_generic_spreads_http_over_ipv6_backends() {
    spreads("dr6", Forwarding::Dr, AttachMode::Generic);
}

#[test]
fn dr_native_spreads_http_over_ipv6_backends() {
    spreads("dr6n", Forwarding::Dr, AttachMode::Native);
}

#[test]
fn nat_generic_translates_ipv6_port_80_to_8033() {
    spreads("nat6", Forwarding::Nat, AttachMode::Generic);
}

#[test]
fn nat_native_translates_ipv6_port_80_to_8033() {
    spreads("nat6n", Forwarding::Nat, AttachMode::Native);
}

/// tun: IPv6-in-IPv6 to backends that answer the client directly; the
/// backends run lb's decap helper.
#[test]
fn tun_generic_spreads_http_over_ipv6_backends() {
    spreads("tun6", Forwarding::Tun, AttachMode::Generic);
}

/// nat with the LB node itself as one backend: XDP hands the packet to the
/// local stack, the IPv6 tc egress path translates the reply.
#[test]
fn nat_with_the_lb_node_as_an_ipv6_backend() {
    let mut s = setup("nat6l", Forwarding::Nat, AttachMode::Generic);
    let lb_ns = s.lab.ns("lb");
    s.lab.http_backend(&lb_ns, LB, 8033, "lb-local");
    let backends = vec![
        BackendSpec {
            addr: sa(LB, 8033),
            weight: 1,
        },
        BackendSpec {
            addr: sa(BACKENDS[0], 8033),
            weight: 1,
        },
    ];
    s.lb.call(move |b| {
        b.set_backends(sa(VIP, 80), Protocol::Tcp, &backends)
            .expect("set_backends")
    });
    let seen = curl_many(&s, 30);
    assert_eq!(seen.values().sum::<usize>(), 30, "answers: {seen:?}");
    assert!(seen.get("lb-local").copied().unwrap_or(0) > 0, "{seen:?}");
    assert!(seen.get("be1").copied().unwrap_or(0) > 0, "{seen:?}");
}

/// A TCP connection to the VIP from the calling thread's netns.
fn open() -> TcpStream {
    let c = TcpStream::connect_timeout(&sa(VIP, 80), Duration::from_secs(3)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c
}

/// One HTTP/1.0 request on `c`: the answering backend's name (the body).
fn get(mut c: TcpStream) -> String {
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("answer");
    let (_, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    body.trim().to_string()
}

/// rr over IPv6, native XDP: consecutive real connections from one CPU (a
/// veth receives on the sender's CPU, so one per-CPU cursor serves them)
/// reach the backends in turn.
#[test]
fn rr_gives_ipv6_connections_to_backends_in_turn() {
    let s = setup_sched("rr6", Forwarding::Dr, AttachMode::Native, Scheduler::Rr);
    let names = in_ns(&s.client, || {
        common::pin_to_one_cpu();
        (0..9).map(|_| get(open())).collect::<Vec<_>>()
    });
    for w in names.windows(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["be1", "be2", "be3"], "not in turn: {names:?}");
    }
}

/// lc over IPv6, native XDP: held connections count on their backend
/// (ties to the first in address order, so 6 go 2, 2, 2), the client's
/// close counts them out, and new connections go to the least busy one.
#[test]
fn lc_sends_ipv6_connections_to_the_least_busy_backend() {
    let s = setup_sched("lc6", Forwarding::Dr, AttachMode::Native, Scheduler::Lc);
    let active = |s: &Setup| {
        s.lb.call(|b| {
            BACKENDS.map(|a| {
                let id = b.backend_id("eth0", sa(a, 80)).expect("backend id");
                b.datapath().active_flows(id)
            })
        })
    };
    // A socket stays in the netns it was made in, whichever thread holds it.
    let mut held: Vec<TcpStream> = in_ns(&s.client, || (0..6).map(|_| open()).collect());
    assert_eq!(active(&s), [2, 2, 2]);
    // The 1st and 4th went to be1 (1, 2, 3, 1, 2, 3): closing them (FIN)
    // leaves it the least busy.
    held.remove(3);
    held.remove(0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(active(&s), [0, 2, 2]);
    let names = in_ns(&s.client, || {
        (0..2).map(|_| get(open())).collect::<Vec<_>>()
    });
    assert_eq!(names, ["be1", "be1"]);
    drop(held);
}

/// Persistence over IPv6 (a /128 template over rr): a client's connections
/// stay on one backend until it has opened none for the timeout; then rr's
/// next turn is taken.
#[test]
fn persistence_keeps_an_ipv6_clients_connections_on_one_backend() {
    let s = setup_spec(
        "pers6",
        AttachMode::Generic,
        ServiceSpec {
            persistence: Some((
                Duration::from_secs(2),
                std::net::Ipv6Addr::from(u128::MAX).into(),
            )),
            ..spec(Forwarding::Dr, Scheduler::Rr)
        },
    );
    let (sticky, after) = in_ns(&s.client, || {
        common::pin_to_one_cpu();
        let sticky: Vec<String> = (0..6).map(|_| get(open())).collect();
        std::thread::sleep(Duration::from_millis(3_100));
        (sticky, get(open()))
    });
    assert!(
        sticky.iter().all(|n| *n == sticky[0]),
        "connections left the client's backend: {sticky:?}"
    );
    assert_ne!(
        after, sticky[0],
        "after the timeout rr's next turn should have been taken"
    );
}

/// ICMPv6 echo to the VIP is answered by the datapath: the LB node does not
/// hold the VIP here (the client's neighbour entry points at the LB), so
/// only lb can answer; without the service nothing does.
#[test]
fn icmpv6_echo_to_the_vip_is_answered_by_the_datapath() {
    let s = setup("icmp6", Forwarding::Dr, AttachMode::Generic);
    let lb_ns = s.lab.ns("lb");
    s.lab.ip(&[
        "-n",
        &lb_ns,
        "addr",
        "del",
        &format!("{VIP}/128"),
        "dev",
        "eth0",
    ]);
    let mac = s.lab.sh(&lb_ns, "cat /sys/class/net/eth0/address");
    let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
    s.lab.ip(&[
        "-n", &s.client, "neigh", "replace", VIP, "lladdr", &mac, "dev", "eth0",
    ]);
    let answered = in_ns(&s.client, || (0..3u16).filter(|seq| echo6(*seq)).count());
    assert_eq!(answered, 3, "echo requests to the VIP went unanswered");
    s.lb.call(|b| b.remove_service(sa(VIP, 80), Protocol::Tcp))
        .expect("remove_service");
    assert!(!in_ns(&s.client, || echo6(9)), "something else answered");
}

/// One ICMPv6 echo request to the VIP (raw socket: the kernel fills in the
/// checksum) and up to 2 s for its reply.
fn echo6(seq: u16) -> bool {
    let s = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV6),
    )
    .expect("raw socket");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let id = 0x4c42u16;
    let mut req = vec![128u8, 0, 0, 0];
    req.extend_from_slice(&id.to_be_bytes());
    req.extend_from_slice(&seq.to_be_bytes());
    req.extend_from_slice(b"lb");
    s.send_to(&req, &sa(VIP, 0).into()).expect("send echo");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
    while std::time::Instant::now() < deadline {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        // SAFETY: recv_from initialised the first n bytes.
        let p: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // ICMPv6 raw sockets hand the message without the IPv6 header.
        if from.as_socket().map(|a| a.ip()) == Some(VIP.parse().expect("vip"))
            && n >= 8
            && p[0] == 129
            && p[4..6] == id.to_be_bytes()
            && p[6..8] == seq.to_be_bytes()
        {
            return true;
        }
    }
    false
}
