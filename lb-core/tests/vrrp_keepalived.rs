//! Interop with the real keepalived 2.2.7: our instance and keepalived on one
//! VRID, in network namespaces joined by a bridge in a namespace of its own.
//! Needs root; it fails, rather than skips, without it.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lb_core::vrrp::garp;
use lb_core::vrrp::packet::{self, Advert, Auth, VRRP_MULTICAST, VRRP_TTL};
use lb_core::vrrp::{InstanceConfig, State, Status, Version, Vip, run_instance};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};

const OURS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const KEEPALIVED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VRID: u8 = 51;

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces (bridge, ours, keepalived's) and keepalived itself;
/// dropping it stops keepalived and deletes the namespaces.
struct Lab {
    prefix: String,
    dir: PathBuf,
    keepalived: Option<Child>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        assert_eq!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() },
            0,
            "this test configures network namespaces and needs root"
        );
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "lbvrrp{}{}{}",
            std::process::id(),
            tag,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).expect("lab dir");
        let lab = Lab {
            prefix,
            dir,
            keepalived: None,
        };
        let (br, a, k) = (lab.ns("br"), lab.ns("a"), lab.ns("k"));
        for ns in [&br, &a, &k] {
            sh(&["ip", "netns", "add", ns]);
        }
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        for (ns, ifname, port, addr) in [(&a, "a0", "pa", OURS), (&k, "k0", "pk", KEEPALIVED)] {
            sh(&[
                "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port,
                "netns", &br,
            ]);
            sh(&["ip", "-n", &br, "link", "set", port, "master", "br0", "up"]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                ifname,
            ]);
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("keepalived.log")
    }

    /// `extra` goes into the vrrp_instance block, e.g. unicast settings.
    fn start_keepalived(&mut self, version: Version, priority: u8, extra: &str) {
        let conf = self.dir.join("keepalived.conf");
        let v = match version {
            Version::V2 => 2,
            Version::V3 => 3,
        };
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id lbtest\n}}\n\
                 vrrp_instance VI_1 {{\n  state BACKUP\n  interface k0\n  version {v}\n\
                 virtual_router_id {VRID}\n  priority {priority}\n  advert_int 1\n\
                 virtual_ipaddress {{\n    {VIP}/32\n  }}\n{extra}}}\n"
            ),
        )
        .expect("keepalived.conf");
        let log = File::create(self.log_path()).expect("keepalived.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("k"), "/usr/sbin/keepalived"])
            .args(["-n", "-l", "-D", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(self.dir.join("keepalived.pid"))
            .arg("-r")
            .arg(self.dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting keepalived");
        self.keepalived = Some(child);
    }

    fn keepalived_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn has_vip(&self, which: &str, ifname: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns(which), "-4", "addr", "show", "dev", ifname])
            .output()
            .expect("ip addr show");
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/32"))
    }

    /// SIGTERM, on which keepalived sends priority 0 and drops its VIPs.
    fn stop_keepalived(&mut self) {
        if let Some(mut child) = self.keepalived.take() {
            // `ip netns exec` execs keepalived, so this is keepalived's parent
            // process, which stops its VRRP child on SIGTERM.
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill has no memory-safety preconditions; the pid is
                // our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_keepalived();
        for which in ["a", "k", "br"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(which)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn in_netns<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns only changes this thread's network namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
}

/// Receives one VRRP datagram (IPv4 header included) from `from`, on the
/// other node's side: in namespace `which`, on `ifname` with address `local`.
fn capture_advert(
    lab: &Lab,
    (which, ifname, local): (&str, &'static str, Ipv4Addr),
    from: Ipv4Addr,
) -> Vec<u8> {
    in_netns(format!("/run/netns/{}", lab.ns(which)), move || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).expect("raw");
        s.bind_device(Some(ifname.as_bytes())).expect("bind device");
        s.join_multicast_v4_n(&VRRP_MULTICAST, &InterfaceIndexOrAddress::Address(local))
            .expect("join 224.0.0.18");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        loop {
            let n = io::Read::read(&mut &s, &mut buf).expect("no VRRP advert within 10 s");
            if buf[12..16] == from.octets() {
                return buf[..n].to_vec();
            }
        }
    })
    .join()
    .expect("capture thread")
}

/// keepalived's advert decodes with our codec and re-encodes to the same bytes.
fn check_golden(datagram: &[u8], version: Version, auth: Auth) {
    let (ip, payload) = packet::parse_ipv4(datagram).expect("IPv4 header");
    assert_eq!(ip.ttl, VRRP_TTL);
    assert_eq!(ip.src, KEEPALIVED);
    assert_eq!(ip.dst, VRRP_MULTICAST);
    let advert = Advert::decode(payload, ip.src, ip.dst).expect("keepalived's advert decodes");
    assert_eq!(
        advert,
        Advert {
            version,
            vrid: VRID,
            priority: 100,
            advert_int: Duration::from_secs(1),
            auth,
            addresses: vec![VIP],
        }
    );
    assert_eq!(
        advert.encode(ip.src, ip.dst).expect("encode"),
        payload,
        "our encoding differs from keepalived's bytes"
    );
}

fn our_config(version: Version, priority: u8) -> InstanceConfig {
    let mut config = InstanceConfig::new(
        "VI_1",
        "a0",
        VRID,
        priority,
        vec![Vip {
            addr: VIP,
            prefix_len: 32,
        }],
    );
    config.version = version;
    config
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Graceful,
    Crash,
}

/// Our instance on its own thread in namespace `a`. Dropping it (say, when
/// an assertion fails) crashes it, so that no thread outlives its lab.
struct Ours {
    status: watch::Receiver<Status>,
    stop: watch::Sender<Option<Stop>>,
    thread: Option<JoinHandle<()>>,
}

impl Ours {
    fn start(lab: &Lab, config: InstanceConfig) -> Ours {
        let (status_tx, status) = watch::channel(Status::default());
        let (stop, stop_rx) = watch::channel(None);
        let thread = in_netns(format!("/run/netns/{}", lab.ns("a")), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (_tracks_tx, tracks) = mpsc::channel(1);
                let mut graceful = stop_rx.clone();
                let mut crash = stop_rx;
                let shutdown = async move {
                    let _ = graceful.wait_for(|s| *s == Some(Stop::Graceful)).await;
                };
                tokio::select! {
                    r = run_instance(config, tracks, status_tx, shutdown) => {
                        r.expect("run_instance");
                    }
                    _ = crash.wait_for(|s| *s == Some(Stop::Crash)) => {}
                }
            });
        });
        Ours {
            status,
            stop,
            thread: Some(thread),
        }
    }

    fn state(&self) -> State {
        self.status.borrow().state
    }

    fn stop(mut self, how: Stop) -> Status {
        self.stop.send_replace(Some(how));
        if let Some(thread) = self.thread.take() {
            thread.join().expect("our instance");
        }
        self.status.borrow().clone()
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.send_replace(Some(Stop::Crash));
            let _ = thread.join();
        }
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

fn assert_clean_log(log: &str) {
    for line in log.lines() {
        let l = line.to_lowercase();
        assert!(
            !["invalid", "bad", "mismatch", "error", "wrong", "unexpected"]
                .iter()
                .any(|w| l.contains(w)),
            "keepalived complained: {line}\n--- full log ---\n{log}"
        );
    }
}

fn backup_entries(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("Entering BACKUP STATE") && !l.contains("(init)"))
        .count()
}

fn master_entries(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("Entering MASTER STATE"))
        .count()
}

/// keepalived (100) is master alone; we (150) start, preempt it and hold the
/// VIP; then we leave, `how`, and keepalived takes the VIP back. Returns how
/// long keepalived took to take over.
/// `auth_pass` is v2's PASS authentication, on both sides.
fn preempt_and_fail_over(version: Version, how: Stop, auth_pass: Option<&str>) -> Duration {
    let mut lab = Lab::new(match version {
        Version::V2 => "v2",
        Version::V3 => "v3",
    });
    let extra = auth_pass
        .map(|p| format!("  authentication {{\n    auth_type PASS\n    auth_pass {p}\n  }}\n"))
        .unwrap_or_default();
    lab.start_keepalived(version, 100, &extra);
    check_golden(
        &capture_advert(&lab, ("a", "a0", OURS), KEEPALIVED),
        version,
        auth_pass.map_or(Auth::None, Auth::pass),
    );
    assert!(
        wait_until(Duration::from_secs(5), || lab.has_vip("k", "k0")).is_some(),
        "keepalived never took the VIP alone:\n{}",
        lab.keepalived_log()
    );

    let mut config = our_config(version, 150);
    config.auth_pass = auth_pass.map(str::to_owned);
    let ours = Ours::start(&lab, config);
    // keepalived's adverts (100) are ignored: 3 s + 106/256 s, plus start-up.
    assert!(
        wait_until(Duration::from_secs(8), || ours.state() == State::Master).is_some(),
        "we never became master"
    );
    assert!(
        wait_until(Duration::from_secs(3), || backup_entries(
            &lab.keepalived_log()
        ) == 1
            && !lab.has_vip("k", "k0"))
        .is_some(),
        "keepalived did not yield:\n{}",
        lab.keepalived_log()
    );
    assert!(lab.has_vip("a", "a0"), "we hold no VIP");
    // A few adverts more: we stay master and keepalived stays quiet.
    thread::sleep(Duration::from_millis(2_500));
    assert_eq!(ours.state(), State::Master);
    assert_eq!(master_entries(&lab.keepalived_log()), 1);

    let status = ours.stop(how);
    assert!(
        status.rejected.is_empty(),
        "we dropped packets: {:?}",
        status.rejected
    );
    if how == Stop::Graceful {
        assert!(!lab.has_vip("a", "a0"), "shutdown left the VIP behind");
    }
    let took = wait_until(Duration::from_secs(8), || lab.has_vip("k", "k0")).unwrap_or_else(|| {
        panic!(
            "keepalived never took the VIP back:\n{}",
            lab.keepalived_log()
        )
    });
    if how == Stop::Crash {
        // Restarted below keepalived, we drop the VIP the crash left behind
        // and stay backup.
        let mut config = our_config(version, 50);
        config.auth_pass = auth_pass.map(str::to_owned);
        let ours = Ours::start(&lab, config);
        assert!(
            wait_until(Duration::from_secs(3), || ours.state() == State::Backup
                && !lab.has_vip("a", "a0"))
            .is_some(),
            "a restarted backup kept the stale VIP"
        );
        thread::sleep(Duration::from_millis(4_000));
        assert_eq!(ours.state(), State::Backup);
        assert_eq!(ours.status.borrow().master, Some((KEEPALIVED, 100)));
        ours.stop(Stop::Graceful);
    }
    let log = lab.keepalived_log();
    assert_eq!(master_entries(&log), 2, "{log}");
    assert_clean_log(&log);
    eprintln!("{version:?}: keepalived took over {took:?} after we stopped ({how:?})\n{log}");
    took
}

#[test]
fn vrrp_v2_pass_auth_preempt_then_graceful_shutdown_hands_over_after_skew() {
    let took = preempt_and_fail_over(Version::V2, Stop::Graceful, Some("s3cret"));
    // Priority 0: skew time (156/256 s), not the 3.6 s master-down interval.
    assert!(took < Duration::from_millis(2_000), "took {took:?}");
}

#[test]
fn vrrp_v3_preempt_then_crash_hands_over_after_master_down() {
    let took = preempt_and_fail_over(Version::V3, Stop::Crash, None);
    // No priority 0: keepalived waits 3 s + 156/256 s from our last advert.
    assert!(
        took > Duration::from_millis(2_500) && took < Duration::from_millis(5_000),
        "took {took:?}"
    );
}

/// The other way round: we (100) are master alone, keepalived (150) preempts
/// us, and when keepalived stops (priority 0) we take over after skew time.
/// Unicast, so that keepalived checks our per-peer v3 checksums.
#[test]
fn vrrp_v3_unicast_keepalived_preempts_us_and_we_take_over_on_its_shutdown() {
    let mut lab = Lab::new("uc");
    let mut config = our_config(Version::V3, 100);
    config.unicast_src_ip = Some(OURS);
    config.unicast_peer = vec![KEEPALIVED];
    let ours = Ours::start(&lab, config);
    assert!(
        wait_until(Duration::from_secs(8), || ours.state() == State::Master).is_some(),
        "we never became master alone"
    );
    assert!(lab.has_vip("a", "a0"));

    lab.start_keepalived(
        Version::V3,
        150,
        &format!("  unicast_src_ip {KEEPALIVED}\n  unicast_peer {{\n    {OURS}\n  }}\n"),
    );
    assert!(
        wait_until(Duration::from_secs(8), || ours.state() == State::Backup).is_some(),
        "keepalived did not preempt us:\n{}",
        lab.keepalived_log()
    );
    assert!(
        wait_until(Duration::from_secs(2), || !lab.has_vip("a", "a0")).is_some(),
        "we kept the VIP as backup"
    );
    assert!(
        wait_until(Duration::from_secs(2), || lab.has_vip("k", "k0")).is_some(),
        "keepalived holds no VIP as master"
    );
    assert_eq!(ours.status.borrow().master, Some((KEEPALIVED, 150)));

    let log = lab.keepalived_log();
    lab.stop_keepalived();
    let took = wait_until(Duration::from_secs(5), || ours.state() == State::Master)
        .expect("we never took over from keepalived");
    // Priority 0 from keepalived: skew time for priority 100 is 0.61 s.
    assert!(took < Duration::from_millis(2_000), "took {took:?}");
    assert!(
        wait_until(Duration::from_secs(2), || lab.has_vip("a", "a0")).is_some(),
        "we hold no VIP as master"
    );
    let status = ours.stop(Stop::Graceful);
    assert!(
        status.rejected.is_empty(),
        "we dropped packets: {:?}",
        status.rejected
    );
    assert_clean_log(&log);
    assert_eq!(master_entries(&log), 1, "{log}");
    eprintln!("we took over {took:?} after keepalived stopped\n{log}");
}

/// Our interface going down is a fault: we release the VIP and keepalived
/// takes over; when it comes back we preempt again, as keepalived would.
#[test]
fn vrrp_v2_interface_down_is_fault_and_up_preempts_again() {
    let mut lab = Lab::new("if");
    lab.start_keepalived(Version::V2, 100, "");
    let ours = Ours::start(&lab, our_config(Version::V2, 150));
    // Started together, we win the first election (shorter skew) and
    // keepalived stays backup.
    assert!(
        wait_until(Duration::from_secs(10), || ours.state() == State::Master).is_some(),
        "we never became master:\n{}",
        lab.keepalived_log()
    );
    thread::sleep(Duration::from_millis(1_500));
    assert!(!lab.has_vip("k", "k0"));
    assert_eq!(master_entries(&lab.keepalived_log()), 0);

    sh(&["ip", "-n", &lab.ns("a"), "link", "set", "a0", "down"]);
    assert!(
        wait_until(Duration::from_secs(2), || ours.state() == State::Fault).is_some(),
        "interface down did not fault us"
    );
    assert!(!lab.has_vip("a", "a0"), "a faulted instance kept the VIP");
    assert!(
        wait_until(Duration::from_secs(6), || lab.has_vip("k", "k0")).is_some(),
        "keepalived did not take over:\n{}",
        lab.keepalived_log()
    );

    sh(&["ip", "-n", &lab.ns("a"), "link", "set", "a0", "up"]);
    assert!(
        wait_until(Duration::from_secs(2), || ours.state() == State::Backup).is_some(),
        "interface up did not bring us back to backup"
    );
    assert!(
        wait_until(Duration::from_secs(8), || ours.state() == State::Master
            && backup_entries(&lab.keepalived_log()) == 1
            && !lab.has_vip("k", "k0"))
        .is_some(),
        "we did not preempt keepalived again:\n{}",
        lab.keepalived_log()
    );
    let status = ours.stop(Stop::Graceful);
    assert!(
        status.rejected.is_empty(),
        "we dropped packets: {:?}",
        status.rejected
    );
    assert_clean_log(&lab.keepalived_log());
}

fn mac_of(lab: &Lab, which: &str, ifname: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", &lab.ns(which), "-br", "link", "show", ifname])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    let mac: Vec<u8> = text
        .split_whitespace()
        .nth(2)
        .expect("MAC column")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    mac.try_into().expect("6-byte MAC")
}

/// Every ARP frame seen in namespace `which` during `window`, with its time
/// from the start.
fn capture_arp(lab: &Lab, which: &str, window: Duration) -> JoinHandle<Vec<(Duration, Vec<u8>)>> {
    in_netns(format!("/run/netns/{}", lab.ns(which)), move || {
        const ETH_P_ARP: u16 = 0x0806;
        let s = Socket::new(
            Domain::PACKET,
            Type::RAW,
            Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )
        .expect("AF_PACKET");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let start = Instant::now();
        let mut frames = Vec::new();
        let mut buf = [0u8; 1514];
        while start.elapsed() < window {
            if let Ok(n) = io::Read::read(&mut &s, &mut buf) {
                frames.push((start.elapsed(), buf[..n].to_vec()));
            }
        }
        frames
    })
}

/// What the peer sees from us: v3 adverts with TTL 255 and keepalived's TOS,
/// and keepalived's GARP pattern (5 at once, 5 more after 5 s).
#[test]
fn vrrp_v3_our_adverts_and_garps_on_the_wire() {
    let lab = Lab::new("wire");
    let arp = capture_arp(&lab, "k", Duration::from_secs(11));
    let ours = Ours::start(&lab, our_config(Version::V3, 150));
    let datagram = capture_advert(&lab, ("k", "k0", KEEPALIVED), OURS);
    assert_eq!(datagram[1], 0xc0, "TOS");
    let (ip, payload) = packet::parse_ipv4(&datagram).expect("IPv4 header");
    assert_eq!((ip.ttl, ip.src, ip.dst), (VRRP_TTL, OURS, VRRP_MULTICAST));
    let advert = Advert::decode(payload, ip.src, ip.dst).expect("our advert decodes");
    assert_eq!(
        advert,
        Advert {
            version: Version::V3,
            vrid: VRID,
            priority: 150,
            advert_int: Duration::from_secs(1),
            auth: Auth::None,
            addresses: vec![VIP],
        }
    );

    let expected = garp::frame(mac_of(&lab, "a", "a0"), VIP);
    let garps: Vec<Duration> = arp
        .join()
        .expect("ARP capture")
        .into_iter()
        .filter(|(_, f)| f[..] == expected[..])
        .map(|(t, _)| t)
        .collect();
    assert_eq!(garps.len(), 10, "GARPs at {garps:?}");
    assert!(
        garps[4] - garps[0] < Duration::from_millis(100),
        "{garps:?}"
    );
    assert!(
        garps[9] - garps[5] < Duration::from_millis(100),
        "{garps:?}"
    );
    let gap = garps[5] - garps[4];
    assert!(
        gap > Duration::from_millis(4_800) && gap < Duration::from_millis(5_500),
        "second GARP batch after {gap:?}"
    );
    assert_eq!(ours.state(), State::Master);
    ours.stop(Stop::Graceful);
}
