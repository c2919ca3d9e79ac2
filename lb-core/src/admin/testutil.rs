//! Fixtures shared by the admin and metrics tests: one service on
//! 198.18.0.100:80/tcp with two backends, one VRRP instance.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use lb_ebpf::abi::Counters;

use crate::{
    config::Protocol,
    daemon::{BackendStatus, ServiceStatus, Status, Usage, UsageSnapshot, VrrpStatus},
    health::ProbeRecord,
};

pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
pub const B1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 8080);
pub const B2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 8080);

pub fn backend(a: SocketAddrV4) -> BackendStatus {
    BackendStatus {
        address: a.into(),
        weight: 100,
        admin_weight: None,
        live_weight: Some(100),
        healthy: true,
        reason: Some("tcp connect ok".into()),
        probes: Some({
            let p = Arc::new(ProbeRecord::default());
            p.observe(true, Duration::from_micros(1200));
            p
        }),
        sorry_server: false,
    }
}

pub fn status() -> Status {
    Status {
        config_path: "/etc/lb/lb.toml".into(),
        reloads: 2,
        reload_failures: 1,
        services: vec![ServiceStatus {
            name: Some("web".into()),
            vip: VIP.into(),
            protocol: "tcp".into(),
            interface: "eth0".into(),
            forwarding: "nat".into(),
            scheduler: "maglev".into(),
            quorum_up: true,
            sorry: false,
            table_generation: 3,
            removing: false,
            idle_timeout_seconds: 900,
            backends: vec![backend(B1), backend(B2)],
        }],
        vrrp: vec![VrrpStatus {
            name: "VI_1".into(),
            interface: "eth0".into(),
            virtual_router_id: 51,
            state: "MASTER".into(),
            priority: 150,
            master: Some("198.18.0.11 (150)".into()),
            transitions: 1,
            rejected: BTreeMap::new(),
        }],
    }
}

pub fn usage(packets: u64) -> Usage {
    Usage {
        counters: Counters {
            packets,
            bytes: packets * 100,
            new_flows: packets / 10,
            drops: [0, 0, 0, 1, 0, 0, 0],
            ..Counters::default()
        },
        active_flows: 7,
    }
}

pub fn snapshot(n: u64) -> UsageSnapshot {
    UsageSnapshot {
        vips: vec![((VIP.into(), Protocol::Tcp), usage(n))],
        backends: vec![
            ((VIP.into(), Protocol::Tcp, B1.into()), usage(n / 2)),
            ((VIP.into(), Protocol::Tcp, B2.into()), usage(n / 2)),
        ],
        unmatched: Counters::default(),
    }
}

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
