//! Established flows survive a VRRP failover, in every forwarding mode: two
//! real `lb run` nodes in network namespaces (198.18.0.0/15), 200 long-lived
//! TCP connections exchanging data through the VIP, half echoed by the
//! backends, half pushed by them (each connection checks every byte; see
//! `lb_testlab::flows`), and the master fails again and again, back and
//! forth: the failed node is restarted each time and the other fails next.
//! A failure is a SIGKILL of `lb run` (its datapath is pinned, so the
//! host's kernel, which keeps the VIP, does not reset the flows before the
//! takeover) or a host crash (SIGKILL, and the host falls off the network).
//!
//! nat needs the connection-state sync (`[sync]`); dr and tun rely on both
//! nodes building the same Maglev table.
//!
//! The tests run one at a time (a lock): 200 connections plus two daemons
//! already keep a 2-core machine busy.
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    sync::Mutex,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_core::sync::wire::{Body, FlowRecord, Key, Message, seal};
use lb_testlab::{
    flows::Conns,
    in_ns,
    vrrp::{ECHO_PORT, FailoverLab, Forwarding, NodeSpec, SYNC_PORT, Services, Speaker, VIP, Vrrp},
};

const LB_BIN: &str = env!("CARGO_BIN_EXE_lb");
static SERIAL: Mutex<()> = Mutex::new(());
const SEC: Duration = Duration::from_secs(1);
const CONNS: usize = 200;
/// Each connection sends a message and waits for its echo this often.
const EVERY: Duration = Duration::from_millis(100);
const SYNC_INTERVAL: Duration = Duration::from_millis(200);
const BACKUP: &str = r#"lb_vrrp_state{instance="VI_1",interface="eth0",vrid="51",state="BACKUP"}"#;

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
fn wait_for(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}

/// How the master fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// SIGKILL of `lb run` on a host that stays up: its pinned datapath
    /// forwards on until the other node's gratuitous ARPs move the traffic.
    Sigkill,
    /// The host dies: SIGKILL and it falls off the network at once.
    HostCrash,
}

/// Fails the master `rounds` times, alternating nodes, and checks after
/// each failure that every connection still works through the new master.
fn flows_survive_failovers(test: &str, forwarding: Forwarding, failure: Failure, rounds: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let v = Vrrp {
        version: 2,
        advert_int: SEC,
    };
    // nopreempt on both: a restarted node stays backup, so each round
    // crashes the other node and flows go back and forth.
    let spec = |priority| NodeSpec {
        speaker: Speaker::Lb,
        priority,
        nopreempt: true,
    };
    let nat = forwarding == Forwarding::Nat;
    let services = Services {
        forwarding,
        echo: true,
        sync: nat.then_some(SYNC_INTERVAL),
        pin: failure == Failure::Sigkill,
    };
    let mut fl =
        FailoverLab::with_services(test, Path::new(LB_BIN), v, spec(150), spec(100), services);
    fl.start(0);
    ok(fl.wait_sole_master(0, 15 * SEC));
    fl.start(1);
    assert!(
        wait_for(15 * SEC, || fl.metric(1, BACKUP) == Some(1.0)),
        "node 1 never became backup\n{}",
        fl.logs()
    );
    let vip = SocketAddrV4::new(VIP, ECHO_PORT);
    let conns = Conns::open(&fl.client, vip, CONNS, EVERY, 30 * SEC);
    assert!(
        conns.failures().is_empty(),
        "connections failed before any failover: {:?}\n{}",
        &conns.failures()[..conns.failures().len().min(5)],
        fl.logs()
    );
    println!(
        "{forwarding:?}: {CONNS} connections, per backend {:?}",
        conns.backends()
    );
    let mut master = 0;
    for round in 1..=rounds {
        let standby = 1 - master;
        if nat {
            // The standby has every flow before its master dies.
            let synced = wait_for(20 * SEC, || {
                fl.metric(standby, "lb_sync_flows_applied_total")
                    .is_some_and(|n| n >= CONNS as f64)
            });
            assert!(
                synced,
                "round {round}: node {standby} never got the flows\n{}",
                fl.logs()
            );
            thread::sleep(2 * SYNC_INTERVAL);
        }
        let crashed_at = Instant::now();
        match failure {
            Failure::Sigkill => fl.kill(master),
            Failure::HostCrash => fl.crash(master),
        }
        let takeover = ok(fl.wait_vip(standby, 10 * SEC));
        // A second after the takeover the gratuitous ARPs have moved the
        // client and the backends to the new master: what works from then
        // on works through it.
        let moved = Instant::now() + SEC;
        thread::sleep(SEC);
        let echoed = conns.wait_echoed_since(moved, 30 * SEC);
        let recovered = crashed_at.elapsed();
        println!(
            "{forwarding:?} {failure:?} round {round}: node {master} failed, node {standby} took over after {takeover:?}; \
             {echoed}/{CONNS} connections exchanged data through it (all by {recovered:?}); \
             {} failed ({} reset at the client, {} at the backends)",
            conns.failures().len(),
            conns.resets(),
            fl.backend_resets()
        );
        assert_eq!(
            (conns.resets(), fl.backend_resets()),
            (0, 0),
            "round {round}: connections were reset: {:?}\n{}",
            conns.failures(),
            fl.logs()
        );
        let survival = echoed as f64 / CONNS as f64;
        assert!(
            survival >= 0.999,
            "round {round}: only {echoed}/{CONNS} connections work after the failover: {:?}\n{}",
            &conns.failures()[..conns.failures().len().min(5)],
            fl.logs()
        );
        fl.start(master);
        assert!(
            wait_for(20 * SEC, || fl.metric(master, BACKUP) == Some(1.0)),
            "round {round}: restarted node {master} never became backup\n{}",
            fl.logs()
        );
        if failure == Failure::Sigkill {
            let replaced = fl.lb_log(master).matches("replaced the datapath").count();
            assert_eq!(
                replaced,
                round.div_ceil(2),
                "round {round}: node {master} did not replace its pinned datapath\n{}",
                fl.logs()
            );
        }
        master = standby;
    }
    let failures = conns.failures();
    println!(
        "{forwarding:?} {failure:?}: after {rounds} failovers {}/{CONNS} connections work, {} echoes checked, test took {:?}",
        CONNS - failures.len(),
        conns.echoes(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn nat_flows_survive_ten_sigkills_with_sync() {
    flows_survive_failovers("fsnatk", Forwarding::Nat, Failure::Sigkill, 10);
}

#[test]
fn nat_flows_survive_host_crashes_with_sync() {
    flows_survive_failovers("fsnatc", Forwarding::Nat, Failure::HostCrash, 4);
}

#[test]
fn dr_flows_survive_sigkills_and_host_crashes_without_sync() {
    flows_survive_failovers("fsdrk", Forwarding::Dr, Failure::Sigkill, 6);
    flows_survive_failovers("fsdrc", Forwarding::Dr, Failure::HostCrash, 4);
}

#[test]
fn tun_flows_survive_sigkills_and_host_crashes_without_sync() {
    flows_survive_failovers("fstunk", Forwarding::Tun, Failure::Sigkill, 6);
    flows_survive_failovers("fstunc", Forwarding::Tun, Failure::HostCrash, 4);
}

/// A running node's sync channel applies an authentic message once and
/// refuses (and counts) a replay of it, a wrong key, an altered byte, a
/// message signed for another sender, an old timestamp, a truncated and an
/// oversized datagram, and any datagram from an address that is not a
/// configured peer.
#[test]
fn sync_channel_refuses_forged_replayed_and_foreign_datagrams() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = Vrrp {
        version: 2,
        advert_int: SEC,
    };
    let spec = |priority| NodeSpec {
        speaker: Speaker::Lb,
        priority,
        nopreempt: false,
    };
    let services = Services {
        forwarding: Forwarding::Nat,
        echo: true,
        sync: Some(SYNC_INTERVAL),
        pin: false,
    };
    let mut fl = FailoverLab::with_services(
        "fsauth",
        Path::new(LB_BIN),
        v,
        spec(150),
        spec(100),
        services,
    );
    fl.start(0);
    ok(fl.wait_sole_master(0, 15 * SEC));
    let secret = std::fs::read(fl.lab.dir().join("sync.key")).expect("lab key");
    let key = Key::new(secret.trim_ascii()).expect("key");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let message = |seq, sent_ms| Message {
        boot_id: 1,
        seq,
        sent_ms,
        body: Body::Flows(vec![FlowRecord {
            proto: 6,
            closing: false,
            client_mac: [2, 0, 0, 0, 0, 1],
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40_000),
            vip: SocketAddrV4::new(VIP, ECHO_PORT),
            backend: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), ECHO_PORT + 1),
            snat: SocketAddrV4::new(VIP, 2_000),
        }]),
    };
    // Node 1's address, a configured peer: node 1 is not running.
    let peer = Ipv4Addr::new(198, 18, 0, 3);
    let authentic = seal(&key, peer, &message(1, now_ms));
    let other_key = Key::new(b"not the lab key, and 32 bytes!!!").expect("key");
    let wrong_key = seal(&other_key, peer, &message(2, now_ms));
    let mut altered = seal(&key, peer, &message(3, now_ms));
    altered[40] ^= 1;
    let stale = seal(&key, peer, &message(4, now_ms - 3_600_000));
    // Signed for the client's address, sent from the peer's.
    let misattributed = seal(&key, Ipv4Addr::new(198, 18, 0, 1), &message(5, now_ms));
    let truncated = authentic[..20].to_vec();
    let oversized = vec![0u8; 2_000];
    let node0 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), SYNC_PORT);
    let from_peer = vec![
        authentic.clone(),
        authentic.clone(),
        wrong_key,
        altered,
        misattributed,
        stale,
        truncated,
        oversized,
    ];
    in_ns(&fl.lab.ns("b"), move || {
        let s = UdpSocket::bind((peer, SYNC_PORT)).expect("bind");
        for d in from_peer {
            s.send_to(&d, node0).expect("send");
            thread::sleep(Duration::from_millis(20));
        }
    });
    in_ns(&fl.client, move || {
        let s = UdpSocket::bind((Ipv4Addr::new(198, 18, 0, 1), 0)).expect("bind");
        s.send_to(&authentic, node0).expect("send");
    });
    let rejected = |reason: &str| {
        fl.metric(
            0,
            &format!("lb_sync_messages_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    let expected = [
        ("replayed", 1.0),
        ("bad_tag", 3.0),
        ("stale", 1.0),
        ("truncated", 1.0),
        ("oversized", 1.0),
        ("unknown_peer", 1.0),
    ];
    let counted = wait_for(5 * SEC, || {
        expected.iter().all(|(r, n)| rejected(r) == Some(*n))
    });
    let seen: Vec<(&str, Option<f64>)> = expected.iter().map(|(r, _)| (*r, rejected(r))).collect();
    assert!(counted, "rejections counted: {seen:?}\n{}", fl.logs());
    assert_eq!(fl.metric(0, "lb_sync_messages_received_total"), Some(1.0));
    assert_eq!(fl.metric(0, "lb_sync_flows_applied_total"), Some(1.0));
}
