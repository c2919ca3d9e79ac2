//! End to end through the XDP datapath in network namespaces: a real HTTP
//! client (curl) and real HTTP backends (python's http.server) through the
//! VIP, in dr and nat mode, with XDP in generic and in native mode; a hot
//! swap of the backend table under long-lived connections; and the rr, wrr,
//! lc, wlc and sh schedulers with real TCP connections.
//!
//! Layout (one L2 segment, the LVS one-armed shape), all in 198.18.0.0/15:
//! client .0.1, lb .0.2 (holds the VIP .0.100), backends .1.1-.1.3.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_core::{
    config::{Forwarding, Protocol, Scheduler},
    datapath::{
        AttachMode, Datapath, Limits, XdpRunMode,
        balancer::{BackendSpec, Balancer, ServiceSpec},
    },
};
use lb_testlab::{Lab, NsWorker, echo_backend, enter, in_ns};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 1, 1),
    Ipv4Addr::new(198, 18, 1, 2),
    Ipv4Addr::new(198, 18, 1, 3),
];

fn limits() -> Limits {
    Limits {
        max_vips: 4,
        max_backends: 64,
        ring_stride: 65_537,
        flow_capacity: 65_536,
        new_flow_cap: 0,
    }
}

fn spec(forwarding: Forwarding) -> ServiceSpec {
    ServiceSpec {
        vip: SocketAddr::from((VIP, 80)),
        protocol: Protocol::Tcp,
        interface: "eth0".into(),
        forwarding,
        scheduler: Scheduler::Mh,
        table_size: 65_537,
        snat_address: None,
        snat_ports: (1_024, 32_767),
        tun_source: (forwarding == Forwarding::Tun)
            .then(|| (Ipv4Addr::new(198, 19, 0, 0).into(), 24)),
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

/// Builds the lab, starts backends (`http` = python HTTP servers, else
/// none) and programs the VIP in `forwarding` mode with XDP in `mode`.
fn setup(test: &str, forwarding: Forwarding, mode: AttachMode) -> Setup {
    setup_with(test, forwarding, mode, limits())
}

fn setup_with(test: &str, forwarding: Forwarding, mode: AttachMode, limits: Limits) -> Setup {
    let mut lab = Lab::new(test);
    let client = lab.host("client", "198.18.0.1/15");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    lab.ip(&[
        "-n",
        &lb_ns,
        "addr",
        "add",
        "198.18.0.100/32",
        "dev",
        "eth0",
    ]);
    let port = if forwarding == Forwarding::Nat {
        8033
    } else {
        80
    };
    let mut decaps = Vec::new();
    for (i, be) in BACKENDS.iter().enumerate() {
        let ns = lab.host(&format!("be{}", i + 1), &format!("{be}/15"));
        if forwarding == Forwarding::Tun {
            // This kernel has no IPIP device: lb's decap helper stands in.
            decaps.push(NsWorker::start(&ns, || {
                let mut dp = Datapath::load(Limits {
                    max_vips: 1,
                    max_backends: 1,
                    ring_stride: 2,
                    flow_capacity: 16,
                    new_flow_cap: 0,
                })
                .expect("load");
                dp.attach_decap("eth0", AttachMode::Generic).expect("decap");
                dp
            }));
        }
        if forwarding != Forwarding::Nat {
            // LVS-DR backend: the VIP on loopback, never answered for in ARP.
            lab.ip(&["-n", &ns, "addr", "add", "198.18.0.100/32", "dev", "lo"]);
            lab.sh(
                &ns,
                "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
            );
        }
        let bind = if forwarding != Forwarding::Nat {
            "0.0.0.0".to_string()
        } else {
            be.to_string()
        };
        lab.http_backend(&ns, &bind, port, &format!("be{}", i + 1));
    }
    let peer = (mode == AttachMode::Native).then(|| {
        let (br, p) = lab.bridge_port(2);
        NsWorker::start(&br, move || {
            let mut dp = Datapath::load(Limits {
                max_vips: 1,
                max_backends: 1,
                ring_stride: 2,
                flow_capacity: 16,
                new_flow_cap: 0,
            })
            .expect("load");
            dp.attach_pass(&p, AttachMode::Native)
                .expect("XDP_PASS on peer");
            dp
        })
    });
    let lb = NsWorker::start(&lb_ns, move || {
        Balancer::new(Datapath::load(limits).expect("loading datapath"), mode)
    });
    let backends: Vec<BackendSpec> = BACKENDS
        .iter()
        .map(|b| BackendSpec {
            addr: SocketAddr::from((*b, port)),
            weight: 1,
        })
        .collect();
    lb.call(move |b| {
        b.add_service(spec(forwarding)).expect("add_service");
        b.set_backends(SocketAddr::from((VIP, 80)), Protocol::Tcp, &backends)
            .expect("set_backends");
    });
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
            "for i in $(seq {n}); do curl -sS --fail --max-time 3 http://198.18.0.100/; echo; done"
        ),
    );
    let mut seen = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *seen.entry(line.to_string()).or_insert(0) += 1;
    }
    seen
}

fn assert_spread(s: &Setup, n: usize) {
    let seen = curl_many(s, n);
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
}

/// The XDP program must be gone from the LB's interface after the datapath
/// is dropped.
fn assert_detaches(s: Setup) {
    let Setup {
        lab,
        lb,
        _peer,
        _decaps,
        ..
    } = s;
    let ns = lab.ns("lb");
    let shown = |lab: &Lab| {
        String::from_utf8_lossy(&lab.ip(&["-n", &ns, "link", "show", "eth0"]).stdout).to_string()
    };
    assert!(shown(&lab).contains("xdp"), "no XDP program attached");
    drop(lb);
    let link = shown(&lab);
    assert!(!link.contains("xdp"), "XDP left on eth0 after exit: {link}");
}

/// 30 requests spread over the three backends, then nothing left attached.
fn spreads_then_detaches(test: &str, forwarding: Forwarding, mode: AttachMode) {
    let s = setup(test, forwarding, mode);
    assert_spread(&s, 30);
    assert_detaches(s);
}

#[test]
fn dr_generic_spreads_http_over_backends() {
    spreads_then_detaches("drg", Forwarding::Dr, AttachMode::Generic);
}

#[test]
fn dr_native_spreads_http_over_backends() {
    spreads_then_detaches("drn", Forwarding::Dr, AttachMode::Native);
}

/// tun: IPIP to backends that answer the client directly; the backends run
/// lb's decap helper (no IPIP device here).
#[test]
fn tun_generic_spreads_http_over_backends() {
    spreads_then_detaches("tung", Forwarding::Tun, AttachMode::Generic);
}

/// tun: a full-size segment does not fit the link once wrapped (1500 +
/// 20 > 1500). It is dropped and counted as `tun_too_big` (no ICMP is sent
/// back: the policy documented in lb-ebpf/README.md), while segments that
/// fit go through.
#[test]
fn tun_drops_and_counts_what_does_not_fit_once_wrapped() {
    let s = setup("tunbig", Forwarding::Tun, AttachMode::Generic);
    assert_spread(&s, 30);
    let too_big = |s: &Setup| {
        s.lb.call(|b| {
            let id = b
                .vip_id(SocketAddr::from((VIP, 80)), Protocol::Tcp)
                .expect("vip id");
            b.datapath().vip_counters(id).expect("counters").drops
                [lb_ebpf::abi::DropReason::TunTooBig as usize]
        })
    };
    assert_eq!(too_big(&s), 0, "small requests fit");
    // 64 KiB written at once after the handshake: the kernel sends a full
    // initial window of full-size (1500-byte) segments before anything can
    // come back. (An HTTP POST would race the backend, whose http.server
    // answers a POST with 501 as soon as it has the headers, so the client
    // may stop before its first full-size segment leaves.)
    let vip = SocketAddrV4::new(VIP, 80);
    in_ns(&s.client, move || {
        let mut c =
            TcpStream::connect_timeout(&vip.into(), Duration::from_secs(3)).expect("connect");
        c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = c.write(&[b'x'; 65_536]);
        thread::sleep(Duration::from_millis(200));
    });
    assert!(too_big(&s) > 0, "full-size segments are counted");
}

#[test]
fn nat_generic_translates_port_80_to_8033() {
    spreads_then_detaches("natg", Forwarding::Nat, AttachMode::Generic);
}

#[test]
fn nat_native_translates_port_80_to_8033() {
    spreads_then_detaches("natn", Forwarding::Nat, AttachMode::Native);
}

/// The seed's plan: the portal runs on the LB nodes themselves, so one of
/// the backends is the LB's own address (XDP hands the packet to the local
/// stack, tc egress translates the reply).
#[test]
fn nat_with_the_lb_node_as_a_backend() {
    let mut s = setup("natl", Forwarding::Nat, AttachMode::Generic);
    let lb_ns = s.lab.ns("lb");
    s.lab
        .http_backend(&lb_ns, &LB.to_string(), 8033, "lb-local");
    let backends = vec![
        BackendSpec {
            addr: SocketAddr::from((LB, 8033)),
            weight: 1,
        },
        BackendSpec {
            addr: SocketAddr::from((BACKENDS[0], 8033)),
            weight: 1,
        },
    ];
    s.lb.call(move |b| {
        b.set_backends(SocketAddr::from((VIP, 80)), Protocol::Tcp, &backends)
            .expect("set_backends")
    });
    let seen = curl_many(&s, 30);
    assert_eq!(seen.values().sum::<usize>(), 30, "answers: {seen:?}");
    assert!(seen.get("lb-local").copied().unwrap_or(0) > 0, "{seen:?}");
    assert!(seen.get("be1").copied().unwrap_or(0) > 0, "{seen:?}");
}

#[test]
fn hot_swap_keeps_long_lived_connections() {
    let mut lab = Lab::new("swap");
    let client = lab.host("client", "198.18.0.1/15");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    lab.ip(&[
        "-n",
        &lb_ns,
        "addr",
        "add",
        "198.18.0.100/32",
        "dev",
        "eth0",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let names = ["be1", "be2", "be3"];
    for (i, be) in BACKENDS.iter().enumerate() {
        let ns = lab.host(names[i], &format!("{be}/15"));
        echo_backend(&ns, SocketAddrV4::new(*be, 8033), names[i], stop.clone());
    }
    let lb = NsWorker::start(&lb_ns, || {
        Balancer::new(Datapath::load(limits()).expect("load"), AttachMode::Generic)
    });
    let vip = SocketAddr::from((VIP, 80));
    let set = move |b: &mut Balancer, w: [u32; 3]| {
        let specs: Vec<BackendSpec> = BACKENDS
            .iter()
            .zip(w)
            .filter(|(_, w)| *w > 0)
            .map(|(a, w)| BackendSpec {
                addr: SocketAddr::from((*a, 8033)),
                weight: w,
            })
            .collect();
        b.set_backends(vip, Protocol::Tcp, &specs)
            .expect("swap")
            .generation
    };
    lb.call(move |b| {
        b.add_service(spec(Forwarding::Nat)).expect("add");
        set(b, [1, 1, 1]);
    });

    const CONNS: usize = 48;
    let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
    let (report_tx, report_rx) = std::sync::mpsc::channel();
    let client_ns = client.clone();
    let client_thread = thread::spawn(move || {
        enter(&client_ns);
        let mut conns = Vec::new();
        let mut greeted = HashMap::new();
        for _ in 0..CONNS {
            let c = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut name = String::new();
            r.read_line(&mut name).expect("greeting");
            *greeted.entry(name.trim().to_string()).or_insert(0) += 1;
            conns.push((c, r, name));
        }
        report_tx.send(greeted).unwrap();
        let mut rounds = 0u32;
        let mut failures = Vec::new();
        // Exchange data on every connection until told the swaps are done,
        // then one last round.
        loop {
            let last = go_rx.try_recv().is_ok();
            for (i, (c, r, name)) in conns.iter_mut().enumerate() {
                let msg = format!("conn {i} round {rounds}\n");
                let mut back = String::new();
                let res = c
                    .write_all(msg.as_bytes())
                    .and_then(|_| r.read_line(&mut back).map(|_| ()));
                if let Err(e) = res {
                    failures.push(format!("conn {i} ({}) round {rounds}: {e}", name.trim()));
                } else if back != msg {
                    failures.push(format!("conn {i} round {rounds}: got {back:?}"));
                }
            }
            rounds += 1;
            if last || rounds > 2_000 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        (rounds, failures)
    });
    let greeted = report_rx.recv().expect("client failed to connect");
    assert!(greeted.len() >= 2, "initial spread: {greeted:?}");

    let plans: [[u32; 3]; 6] = [
        [1, 1, 0],
        [0, 1, 1],
        [2, 1, 1],
        [1, 0, 3],
        [0, 0, 1],
        [5, 5, 5],
    ];
    let started = Instant::now();
    let mut generation = 0;
    for i in 0..120 {
        let w = plans[i % plans.len()];
        generation = lb.call(move |b| set(b, w));
        thread::sleep(Duration::from_millis(15));
    }
    let swap_time = started.elapsed();
    go_tx.send(true).unwrap();
    let (rounds, failures) = client_thread.join().expect("client panicked");
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        rounds >= 20,
        "only {rounds} rounds of traffic during {swap_time:?}"
    );
    assert!(generation >= 121, "generation {generation}");

    // New connections follow the last table (all three, equal weights), and
    // one with be3 only must land on be3.
    lb.call(move |b| set(b, [0, 0, 1]));
    let got = in_ns(&client, move || {
        let c = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut name = String::new();
        BufReader::new(c).read_line(&mut name).expect("greeting");
        name
    });
    assert_eq!(got.trim(), "be3");
    stop.store(true, Ordering::Relaxed);
}

/// Bad input names what is wrong, and what was already programmed keeps
/// serving: missing interface, VIP slots full, backend slots full; a backend
/// that does not answer ARP is left out and named.
#[test]
fn bad_input_is_named_and_nothing_programmed_is_lost() {
    let mut lab = Lab::new("badin");
    let client = lab.host("client", "198.18.0.1/15");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    for vip in ["198.18.0.100/32", "198.18.0.101/32"] {
        lab.ip(&["-n", &lb_ns, "addr", "add", vip, "dev", "eth0"]);
    }
    for (i, be) in BACKENDS.iter().enumerate() {
        let ns = lab.host(&format!("be{}", i + 1), &format!("{be}/15"));
        lab.http_backend(&ns, &be.to_string(), 8033, &format!("be{}", i + 1));
    }
    let lb = NsWorker::start(&lb_ns, || {
        let limits = Limits {
            max_vips: 2,
            max_backends: 4,
            ring_stride: 65_537,
            flow_capacity: 4_096,
            new_flow_cap: 0,
        };
        Balancer::new(Datapath::load(limits).expect("load"), AttachMode::Generic)
    });
    let vip_a = SocketAddr::from((VIP, 80));
    let be = |i: usize| BackendSpec {
        addr: SocketAddr::from((BACKENDS[i], 8033)),
        weight: 1,
    };
    let generation = lb.call(move |b| {
        b.add_service(spec(Forwarding::Nat)).expect("add");
        b.set_backends(vip_a, Protocol::Tcp, &[be(0), be(1), be(2)])
            .expect("backends")
            .generation
    });
    let serves = |lab: &Lab| {
        let out = lab.try_sh(&client, "curl -sS --fail --max-time 3 http://198.18.0.100/");
        assert!(out.status.success(), "VIP A stopped serving: {out:?}");
    };
    serves(&lab);

    let err = lb.call(|b| {
        let mut s = spec(Forwarding::Nat);
        s.vip = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 101), 80));
        s.interface = "nope0".into();
        b.add_service(s).unwrap_err().to_string()
    });
    assert!(err.contains("nope0"), "{err}");
    serves(&lab);

    let err = lb.call(|b| {
        let mut s = spec(Forwarding::Nat);
        s.vip = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 101), 80));
        b.add_service(s).expect("second VIP fits");
        s = spec(Forwarding::Nat);
        s.vip = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 102), 80));
        b.add_service(s).unwrap_err().to_string()
    });
    assert!(
        err.contains("198.18.0.102:80") && err.contains("max_vips"),
        "{err}"
    );
    serves(&lab);

    // Four backend slots: A holds three; B asks for two new ones.
    let err = lb.call(move |b| {
        let vip_b = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 101), 80));
        let extra = [
            BackendSpec {
                addr: SocketAddr::from((LB, 8034)),
                weight: 1,
            },
            BackendSpec {
                addr: SocketAddr::from((LB, 8035)),
                weight: 1,
            },
        ];
        b.set_backends(vip_b, Protocol::Tcp, &extra)
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains("198.18.0.101:80") && err.contains("max_backends"),
        "{err}"
    );
    let now = lb.call(|b| b.datapath().table_state(0).expect("state").generation);
    assert_eq!(now, generation, "a failed change swapped VIP A's table");
    serves(&lab);

    // A backend that does not answer ARP is left out and named; the others
    // keep serving.
    let (unresolved, now) = lb.call(move |b| {
        let ghost = BackendSpec {
            addr: SocketAddr::from((Ipv4Addr::new(198, 18, 9, 9), 8033)),
            weight: 1,
        };
        let swap = b
            .set_backends(vip_a, Protocol::Tcp, &[be(0), ghost])
            .expect("swap without the ghost");
        let names: Vec<String> = swap
            .unresolved
            .iter()
            .map(|(a, e)| format!("{a}: {e}"))
            .collect();
        (names, swap.generation)
    });
    assert_eq!(unresolved.len(), 1, "{unresolved:?}");
    assert!(
        unresolved[0].starts_with("198.18.9.9:8033: no ARP answer"),
        "{unresolved:?}"
    );
    assert_eq!(now, generation + 1);
    serves(&lab);
}

/// A nat service on VIP:80 with `scheduler` over three echo backends (each
/// greets a connection with its name, then echoes). Dropping it stops the
/// backends.
struct EchoService {
    lab: Lab,
    lb: NsWorker<Balancer>,
    client: String,
    stop: Arc<AtomicBool>,
}

impl Drop for EchoService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo_service(test: &str, scheduler: Scheduler) -> EchoService {
    echo_service_with(
        test,
        ServiceSpec {
            scheduler,
            ..spec(Forwarding::Nat)
        },
        [1; 3],
    )
}

/// The echo backends with these weights; a weight of 0 leaves the backend
/// out of the set altogether (not drained: removed).
fn echo_backends(weights: [u32; 3]) -> Vec<BackendSpec> {
    BACKENDS
        .iter()
        .zip(weights)
        .filter(|(_, w)| *w > 0)
        .map(|(a, weight)| BackendSpec {
            addr: SocketAddr::from((*a, 8033)),
            weight,
        })
        .collect()
}

fn echo_service_with(test: &str, service: ServiceSpec, weights: [u32; 3]) -> EchoService {
    let mut lab = Lab::new(test);
    let client = lab.host("client", "198.18.0.1/15");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    lab.ip(&[
        "-n",
        &lb_ns,
        "addr",
        "add",
        "198.18.0.100/32",
        "dev",
        "eth0",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let names = ["be1", "be2", "be3"];
    for (i, be) in BACKENDS.iter().enumerate() {
        let ns = lab.host(names[i], &format!("{be}/15"));
        echo_backend(&ns, SocketAddrV4::new(*be, 8033), names[i], stop.clone());
    }
    let lb = NsWorker::start(&lb_ns, || {
        Balancer::new(Datapath::load(limits()).expect("load"), AttachMode::Generic)
    });
    let backends = echo_backends(weights);
    lb.call(move |b| {
        b.add_service(service).expect("add_service");
        b.set_backends(SocketAddr::from((VIP, 80)), Protocol::Tcp, &backends)
            .expect("set_backends");
    });
    EchoService {
        lab,
        lb,
        client,
        stop,
    }
}

/// A connection from the client through the VIP, and the backend's name.
fn connect(vip: SocketAddrV4) -> (TcpStream, String) {
    greeted(TcpStream::connect_timeout(&vip.into(), Duration::from_secs(3)).expect("connect"))
}

/// [`connect`] from source address `src` (one of the client's).
fn connect_from(src: Ipv4Addr, vip: SocketAddrV4) -> (TcpStream, String) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((src, 0)).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    s.connect_timeout(&SocketAddr::from(vip).into(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    greeted(s.into())
}

/// `c` and the name its backend greeted it with.
fn greeted(c: TcpStream) -> (TcpStream, String) {
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut name = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut name)
        .expect("greeting");
    (c, name.trim().to_string())
}

/// Keeps the calling thread on CPU 0: its SYNs then meet XDP on CPU 0 (veth
/// receives on the sender's CPU), so one rr cursor serves them all.
fn pin_to_cpu0() {
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

/// rr: consecutive real connections (from one CPU) go to the backends in
/// turn, whatever their ports hash to.
#[test]
fn rr_gives_connections_to_backends_in_turn() {
    let s = echo_service("rr", Scheduler::Rr);
    let vip = SocketAddrV4::new(VIP, 80);
    let names = in_ns(&s.client, move || {
        pin_to_cpu0();
        (0..12).map(|_| connect(vip).1).collect::<Vec<_>>()
    });
    for w in names.windows(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["be1", "be2", "be3"], "not in turn: {names:?}");
    }
}

/// lc: new connections go to the backend with the fewest open ones, and a
/// connection the client closes stops counting.
#[test]
fn lc_sends_connections_to_the_least_busy_backend() {
    let s = echo_service("lc", Scheduler::Lc);
    let vip = SocketAddrV4::new(VIP, 80);
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let (names_tx, names_rx) = std::sync::mpsc::channel();
    let client = s.client.clone();
    // The client holds its connections open, closing on demand those of
    // the first backend, then opens `n` more.
    let client = thread::spawn(move || {
        enter(&client);
        let mut conns: Vec<(TcpStream, String)> = (0..6).map(|_| connect(vip)).collect();
        names_tx
            .send(conns.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>())
            .unwrap();
        let Ok(n) = rx.recv() else { return };
        conns.retain(|(_, name)| name != "be1");
        // Dropping the streams sent FINs; give them a moment to pass.
        thread::sleep(Duration::from_millis(200));
        let more: Vec<(TcpStream, String)> = (0..n).map(|_| connect(vip)).collect();
        names_tx
            .send(more.iter().map(|(_, n)| n.clone()).collect())
            .unwrap();
        let _ = rx.recv();
    });
    let first = names_rx.recv().expect("client failed to connect");
    assert_eq!(
        count(&first),
        HashMap::from([("be1".into(), 2), ("be2".into(), 2), ("be3".into(), 2)]),
        "six connections over three idle backends: {first:?}"
    );
    assert_eq!(active(&s), [2, 2, 2]);
    tx.send(2).unwrap();
    let more = names_rx.recv().expect("client failed");
    assert_eq!(
        more,
        ["be1", "be1"],
        "be1 had closed both of its connections"
    );
    assert_eq!(active(&s), [2, 2, 2]);
    let _ = tx.send(0);
    client.join().expect("client panicked");
}

/// A backend that leaves the table (down, removed by a reload) and comes
/// back keeps its datapath id: its counters go on from where they were
/// (Prometheus sees no reset), and the connection pinned to it before keeps
/// counting to it. A new service on a removed service's VIP id starts from
/// zero.
#[test]
fn a_returning_backend_keeps_its_id_and_counters() {
    let s = echo_service("retid", Scheduler::Mh);
    let vip = SocketAddrV4::new(VIP, 80);
    let be1 = SocketAddr::from((BACKENDS[0], 8033));
    let counters = |s: &EchoService| {
        s.lb.call(move |b| {
            let id = b.backend_id("eth0", be1).expect("be1 in use");
            (id, b.datapath().backend_counters(id).unwrap().packets)
        })
    };
    // Connect until one lands on be1, and keep it.
    let (mut pinned, _) = in_ns(&s.client, move || {
        (0..64)
            .map(|_| connect(vip))
            .find(|(_, name)| name == "be1")
            .expect("no connection reached be1 in 64 tries")
    });
    let (id, before) = counters(&s);
    assert!(before > 0);
    let set = |s: &EchoService, weights: [u32; 3]| {
        s.lb.call(move |b| {
            b.set_backends(
                SocketAddr::from((VIP, 80)),
                Protocol::Tcp,
                &echo_backends(weights),
            )
            .expect("set_backends")
        })
    };
    set(&s, [0, 1, 1]);
    assert_eq!(s.lb.call(move |b| b.backend_id("eth0", be1)), None);
    // Its pinned connection still works, and still counts to its id.
    pinned.write_all(b"ping\n").unwrap();
    let mut echo = String::new();
    BufReader::new(pinned.try_clone().unwrap())
        .read_line(&mut echo)
        .expect("echo while be1 is out of the table");
    assert_eq!(echo, "ping\n");
    set(&s, [1, 1, 1]);
    let (id_back, after) = counters(&s);
    assert_eq!(id_back, id, "be1 came back with another id");
    assert!(after > before, "counters restarted: {before} then {after}");

    // A service removed and another added on its VIP id: zero counts.
    let other = SocketAddr::from(([198, 18, 0, 100], 81));
    let fresh = s.lb.call(move |b| {
        let old_id = b
            .vip_id(SocketAddr::from((VIP, 80)), Protocol::Tcp)
            .unwrap();
        assert!(b.datapath().vip_counters(old_id).unwrap().packets > 0);
        b.remove_service(SocketAddr::from((VIP, 80)), Protocol::Tcp)
            .expect("remove");
        b.add_service(ServiceSpec {
            vip: other,
            ..spec(Forwarding::Nat)
        })
        .expect("add");
        let id = b.vip_id(other, Protocol::Tcp).unwrap();
        (id == old_id, b.datapath().vip_counters(id).unwrap().packets)
    });
    assert_eq!(fresh, (true, 0), "(same VIP id, its packets)");
}

/// Connections per backend name.
fn count(names: &[String]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for name in names {
        *n.entry(name.clone()).or_insert(0) += 1;
    }
    n
}

/// The datapath's active flow count of be1..be3 (what lc/wlc choose by).
fn active(s: &EchoService) -> [i64; 3] {
    s.lb.call(|b| {
        BACKENDS.map(|a| {
            let id = b
                .backend_id("eth0", SocketAddr::from((a, 8033)))
                .expect("backend id");
            b.datapath().active_flows(id)
        })
    })
}

/// wrr: from one CPU, consecutive connections follow LVS's interleaved
/// sequence for weights 3, 2, 1 (documented as `a a b a b c`), so every
/// full cycle gives each backend exactly its weight, spread rather than in
/// bursts. Only the starting point in the cycle is left open.
#[test]
fn wrr_gives_connections_weighted_turns() {
    const CYCLE: [&str; 6] = ["be1", "be1", "be2", "be1", "be2", "be3"];
    const CYCLES: usize = 4;
    let s = echo_service_with(
        "wrr",
        ServiceSpec {
            scheduler: Scheduler::Wrr,
            ..spec(Forwarding::Nat)
        },
        [3, 2, 1],
    );
    let vip = SocketAddrV4::new(VIP, 80);
    let names = in_ns(&s.client, move || {
        pin_to_cpu0();
        (0..CYCLES * CYCLE.len())
            .map(|_| connect(vip).1)
            .collect::<Vec<_>>()
    });
    let follows = |start: usize| {
        names
            .iter()
            .enumerate()
            .all(|(i, n)| *n == CYCLE[(start + i) % CYCLE.len()])
    };
    assert!(
        (0..CYCLE.len()).any(follows),
        "not the weighted turn {CYCLE:?}: {names:?}"
    );
    assert_eq!(
        count(&names),
        HashMap::from([
            ("be1".into(), 3 * CYCLES),
            ("be2".into(), 2 * CYCLES),
            ("be3".into(), CYCLES)
        ]),
    );
}

/// wlc with weights 2, 1, 1: held connections go where active / weight is
/// lowest (the first backend on a tie), so be1 carries twice the others;
/// once be1's connections close it takes the next ones until it is back to
/// twice the others' load.
#[test]
fn wlc_spreads_held_connections_by_weight() {
    let s = echo_service_with(
        "wlc",
        ServiceSpec {
            scheduler: Scheduler::Wlc,
            ..spec(Forwarding::Nat)
        },
        [2, 1, 1],
    );
    let vip = SocketAddrV4::new(VIP, 80);
    let mut held = in_ns(&s.client, move || {
        (0..8).map(|_| connect(vip)).collect::<Vec<_>>()
    });
    let names: Vec<String> = held.iter().map(|(_, n)| n.clone()).collect();
    // active/weight after each: (½,0,0) (½,1,0) (½,1,1) (1,1,1) tie→be1
    // (1½,1,1) (1½,2,1) (1½,2,2) (2,2,2).
    assert_eq!(
        names,
        ["be1", "be2", "be3", "be1", "be1", "be2", "be3", "be1"],
        "eight held connections over weights 2, 1, 1"
    );
    assert_eq!(active(&s), [4, 2, 2]);

    // Closing sends FINs; the count drops when the datapath sees them.
    held.retain(|(_, name)| name != "be1");
    let deadline = Instant::now() + Duration::from_secs(3);
    while active(&s) != [0, 2, 2] && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        active(&s),
        [0, 2, 2],
        "be1's closed connections still count"
    );
    let refilled = in_ns(&s.client, move || {
        (0..4).map(|_| connect(vip)).collect::<Vec<_>>()
    });
    let more: Vec<String> = refilled.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(
        more, ["be1"; 4],
        "be1 (weight 2) is below its share until it holds 4"
    );
    assert_eq!(active(&s), [4, 2, 2]);
    drop((held, refilled));
}

/// A line sent on `c` comes back (the connection still reaches its backend).
fn echoes(c: &mut TcpStream, line: &str) -> bool {
    let mut back = String::new();
    c.write_all(format!("{line}\n").as_bytes()).is_ok()
        && BufReader::new(&*c).read_line(&mut back).is_ok()
        && back.trim_end() == line
}

/// sh: every connection of a client address, whatever its source port,
/// reaches one backend, and different addresses spread. When a client's
/// backend leaves the set, that backend's clients move (each to one new
/// backend) while its established connections keep working, and every other
/// client stays put (Maglev's minimal disruption); when it comes back, its
/// clients return to it (the table depends on the set only).
#[test]
fn sh_keeps_each_client_address_on_its_backend() {
    const PER_CLIENT: usize = 4;
    let s = echo_service("sh", Scheduler::Sh);
    let vip = SocketAddrV4::new(VIP, 80);
    let clients: Vec<Ipv4Addr> = std::iter::once(Ipv4Addr::new(198, 18, 0, 1))
        .chain((11..19).map(|i| Ipv4Addr::new(198, 18, 0, i)))
        .collect();
    for c in &clients[1..] {
        s.lab.ip(&[
            "-n",
            &s.client,
            "addr",
            "add",
            &format!("{c}/15"),
            "dev",
            "eth0",
        ]);
    }
    // Each client's backend, checking that all its connections agree; the
    // connections are handed back open.
    let backends_of = |s: &EchoService| {
        let clients = clients.clone();
        in_ns(&s.client, move || {
            clients
                .iter()
                .map(|src| {
                    let conns: Vec<(TcpStream, String)> =
                        (0..PER_CLIENT).map(|_| connect_from(*src, vip)).collect();
                    let names: Vec<&String> = conns.iter().map(|(_, n)| n).collect();
                    assert!(
                        names.iter().all(|n| *n == names[0]),
                        "{src}'s connections went to several backends: {names:?}"
                    );
                    (names[0].clone(), conns)
                })
                .collect::<Vec<_>>()
        })
    };
    let mut before = backends_of(&s);
    let on: Vec<String> = before.iter().map(|(n, _)| n.clone()).collect();
    let mut used = on.clone();
    used.sort();
    used.dedup();
    assert!(used.len() > 1, "{} clients all on {used:?}", clients.len());

    // The first client's backend leaves the set.
    let gone = on[0].clone();
    let weights: [u32; 3] = std::array::from_fn(|i| u32::from(format!("be{}", i + 1) != gone));
    s.lb.call(move |b| {
        b.set_backends(
            SocketAddr::from((VIP, 80)),
            Protocol::Tcp,
            &echo_backends(weights),
        )
        .expect("set_backends")
    });
    let during: Vec<String> = backends_of(&s).into_iter().map(|(n, _)| n).collect();
    for ((c, was), now) in clients.iter().zip(&on).zip(&during) {
        if *was == gone {
            assert_ne!(*now, gone, "{c} still sent to the removed {gone}");
        } else {
            assert_eq!(now, was, "{c} moved though its backend stayed: {during:?}");
        }
    }
    for (c, (name, conns)) in clients.iter().zip(&mut before) {
        for (i, (conn, _)) in conns.iter_mut().enumerate() {
            assert!(
                echoes(conn, &format!("{c} conn {i}")),
                "{c}'s established connection to {name} broke"
            );
        }
    }

    s.lb.call(|b| {
        b.set_backends(
            SocketAddr::from((VIP, 80)),
            Protocol::Tcp,
            &echo_backends([1; 3]),
        )
        .expect("set_backends")
    });
    let after: Vec<String> = backends_of(&s).into_iter().map(|(n, _)| n).collect();
    assert_eq!(after, on, "clients did not return once {gone} was back");
}

/// persistence_timeout: a client's new connections stick to its first
/// backend (rr would rotate them); once it has opened none for the timeout,
/// its next connection is scheduled afresh.
#[test]
fn persistence_keeps_a_clients_connections_on_one_backend() {
    let s = echo_service_with(
        "pers",
        ServiceSpec {
            scheduler: Scheduler::Rr,
            persistence: Some((Duration::from_secs(2), Ipv4Addr::BROADCAST.into())),
            ..spec(Forwarding::Nat)
        },
        [1; 3],
    );
    let vip = SocketAddrV4::new(VIP, 80);
    let (sticky, after) = in_ns(&s.client, move || {
        pin_to_cpu0();
        let sticky: Vec<String> = (0..6).map(|_| connect(vip).1).collect();
        thread::sleep(Duration::from_millis(3_100));
        (sticky, connect(vip).1)
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

/// ICMP echo to a VIP is answered by the datapath itself: the LB holds no
/// such address here (the client reaches its MAC through a static
/// neighbour entry), so its kernel could not answer.
#[test]
fn icmp_echo_to_the_vip_is_answered_by_the_datapath() {
    let s = echo_service("icmp", Scheduler::Mh);
    let lb_ns = s.lab.ns("lb");
    s.lab.ip(&[
        "-n",
        &lb_ns,
        "addr",
        "del",
        "198.18.0.100/32",
        "dev",
        "eth0",
    ]);
    let mac = s.lab.sh(&lb_ns, "cat /sys/class/net/eth0/address");
    let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
    s.lab.ip(&[
        "-n",
        &s.client,
        "neigh",
        "replace",
        "198.18.0.100",
        "lladdr",
        &mac,
        "dev",
        "eth0",
    ]);
    let answered = in_ns(&s.client, || {
        (0..3u16).filter(|seq| echo(VIP, *seq)).count()
    });
    assert_eq!(answered, 3, "echo requests to the VIP went unanswered");
    // Without the VIP in the datapath nothing answers: it was lb.
    s.lb.call(|b| b.remove_service(SocketAddr::from((VIP, 80)), Protocol::Tcp))
        .expect("remove_service");
    assert!(!in_ns(&s.client, || echo(VIP, 9)), "the kernel answered");
}

/// Sends one ICMP echo request to `dst` (raw socket, no ping binary needed)
/// and waits up to 2 s for its reply.
fn echo(dst: Ipv4Addr, seq: u16) -> bool {
    // SAFETY: plain socket calls on a descriptor owned here and closed at
    // the end; buffers outlive the calls that use them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let id = 0x4c42u16;
        let mut req = [8u8, 0, 0, 0, 0, 0, 0, 0, b'l', b'b'];
        req[4..6].copy_from_slice(&id.to_be_bytes());
        req[6..8].copy_from_slice(&seq.to_be_bytes());
        let sum = req
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        req[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        let mut got = false;
        let deadline = Instant::now() + Duration::from_secs(2);
        while sent > 0 && !got && Instant::now() < deadline {
            let mut buf = [0u8; 256];
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 28 {
                break;
            }
            // The raw socket hands the IPv4 header too (20 bytes here).
            let icmp = &buf[20..n as usize];
            got = icmp[0] == 0
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
                && buf[12..16] == dst.octets();
        }
        libc::close(fd);
        got
    }
}

/// SYN-flood guard (max_new_flows_per_cpu): past the cap, new dr flows are
/// forwarded without a connection table entry and counted as unpinned; the
/// flow hash keeps every packet of such a connection on one backend, so the
/// connections still work.
#[test]
fn over_the_new_flow_cap_connections_work_unpinned() {
    const CAP: u32 = 3;
    const N: u64 = 20;
    let s = setup_with(
        "synf",
        Forwarding::Dr,
        AttachMode::Generic,
        Limits {
            new_flow_cap: CAP,
            ..limits()
        },
    );
    let started = Instant::now();
    // One CPU, so one per-CPU budget.
    let out = s.lab.sh(
        &s.client,
        &format!(
            "for i in $(seq {N}); do taskset -c 0 curl -sS --fail --max-time 3 http://198.18.0.100/; echo; done"
        ),
    );
    let secs = started.elapsed().as_secs() + 1;
    let answered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("be"))
        .count() as u64;
    assert_eq!(answered, N, "{}", String::from_utf8_lossy(&out.stderr));
    let c =
        s.lb.call(|b| b.datapath().vip_counters(0).expect("counters"));
    // At most CAP flows per started second entered the table; every other
    // new connection went unpinned (and later packets of it count again).
    let pinned_max = CAP as u64 * (secs + 1);
    assert!(
        c.unpinned >= N.saturating_sub(pinned_max),
        "{} unpinned of {N} connections in {secs} s: {c:?}",
        c.unpinned
    );
    let recorded =
        s.lb.call(|b| b.datapath().flows().expect("flows").len() as u64);
    assert!(
        recorded <= pinned_max,
        "{recorded} flows recorded, cap {CAP}/s over {secs} s"
    );
}

/// ICMP "fragmentation needed" sent to the VIP about a dr flow (a router on
/// the backend's path to the client answering the backend's reply, which
/// leaves from the VIP) reaches that flow's backend, and only it, so the
/// backend's socket can lower its path MTU.
#[test]
fn frag_needed_about_a_dr_flow_reaches_its_backend() {
    let mut lab = Lab::new("fragn");
    let client = lab.host("client", "198.18.0.1/15");
    let lb_ns = lab.host("lb", "198.18.0.2/15");
    lab.ip(&[
        "-n",
        &lb_ns,
        "addr",
        "add",
        "198.18.0.100/32",
        "dev",
        "eth0",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let names = ["be1", "be2", "be3"];
    let mut backend_ns = Vec::new();
    for (i, be) in BACKENDS.iter().enumerate() {
        let ns = lab.host(names[i], &format!("{be}/15"));
        // LVS-DR backend: the VIP on loopback, never answered for in ARP.
        lab.ip(&["-n", &ns, "addr", "add", "198.18.0.100/32", "dev", "lo"]);
        lab.sh(
            &ns,
            "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
        );
        echo_backend(&ns, SocketAddrV4::new(VIP, 80), names[i], stop.clone());
        backend_ns.push(ns);
    }
    let lb = NsWorker::start(&lb_ns, || {
        Balancer::new(Datapath::load(limits()).expect("load"), AttachMode::Generic)
    });
    let backends: Vec<BackendSpec> = BACKENDS
        .iter()
        .map(|a| BackendSpec {
            addr: SocketAddr::from((*a, 80)),
            weight: 1,
        })
        .collect();
    lb.call(move |b| {
        b.add_service(spec(Forwarding::Dr)).expect("add_service");
        b.set_backends(SocketAddr::from((VIP, 80)), Protocol::Tcp, &backends)
            .expect("set_backends");
    });
    let (conn, name) = in_ns(&client, || connect(SocketAddrV4::new(VIP, 80)));
    let port = conn.local_addr().expect("local addr").port();
    // Every backend listens for ICMP before the message is sent.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listeners: Vec<_> = backend_ns
        .iter()
        .map(|ns| {
            let (ns, ready) = (ns.clone(), ready_tx.clone());
            thread::spawn(move || {
                enter(&ns);
                frag_needed_seen(port, ready)
            })
        })
        .collect();
    for _ in 0..listeners.len() {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("listener ready");
    }
    in_ns(&client, move || send_frag_needed(port, 1200));
    let seen: Vec<bool> = listeners
        .into_iter()
        .map(|t| t.join().expect("listener"))
        .collect();
    let want: Vec<bool> = names.iter().map(|n| *n == name).collect();
    assert_eq!(seen, want, "the flow is on {name}");
    stop.store(true, Ordering::Relaxed);
    drop(conn);
}

/// Sends, from the client, ICMP "fragmentation needed" (next-hop MTU `mtu`)
/// to the VIP, quoting the header of a segment VIP:80 → client:`port`.
fn send_frag_needed(port: u16, mtu: u16) {
    let client = Ipv4Addr::new(198, 18, 0, 1);
    let mut quoted = [0u8; 28];
    quoted[0] = 0x45;
    quoted[2..4].copy_from_slice(&1500u16.to_be_bytes());
    quoted[6] = 0x40; // DF
    quoted[8] = 64;
    quoted[9] = 6; // TCP
    quoted[12..16].copy_from_slice(&VIP.octets());
    quoted[16..20].copy_from_slice(&client.octets());
    let sum = !fold(&quoted[..20]);
    quoted[10..12].copy_from_slice(&sum.to_be_bytes());
    quoted[20..22].copy_from_slice(&80u16.to_be_bytes());
    quoted[22..24].copy_from_slice(&port.to_be_bytes());
    let mut msg = vec![3u8, 4, 0, 0, 0, 0];
    msg.extend_from_slice(&mtu.to_be_bytes());
    msg.extend_from_slice(&quoted);
    let sum = !fold(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV4),
    )
    .expect("raw socket");
    s.send_to(&msg, &SocketAddr::from((VIP, 0)).into())
        .expect("send frag needed");
}

/// Waits up to 3 s for ICMP "fragmentation needed" quoting a TCP segment
/// from VIP:80 to the client's `port`; says whether one came.
fn frag_needed_seen(port: u16, ready: std::sync::mpsc::Sender<()>) -> bool {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV4),
    )
    .expect("raw socket");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let _ = ready.send(());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 512];
    while Instant::now() < deadline {
        let Ok(n) = s.recv(&mut buf) else {
            continue;
        };
        // SAFETY: recv initialised the first n bytes.
        let p: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // Outer IPv4 header (20 bytes), ICMP (8), quoted IPv4 (20), ports.
        if n >= 52
            && p[20] == 3
            && p[21] == 4
            && p[24..28] == [0, 0, 0x04, 0xb0]
            && p[48..50] == 80u16.to_be_bytes()
            && p[50..52] == port.to_be_bytes()
        {
            return true;
        }
    }
    false
}

/// The ones' complement sum of `b` (even length), folded to 16 bits.
fn fold(b: &[u8]) -> u16 {
    let sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}
