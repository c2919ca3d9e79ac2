//! From validated config values to what the datapath and the checkers take.

use std::{ffi::OsString, net::SocketAddr};

use crate::{
    config::{self, XdpMode},
    datapath::{
        AttachMode, Limits,
        balancer::{BackendSpec, ServiceSpec},
    },
    health::{
        self, CheckSpec,
        http::{HttpSpec, StatusRanges, TlsSpec},
        script::ScriptSpec,
    },
};

/// Map sizes for the datapath. The ring stride fits the largest table size
/// of the config at start; a reload asking for a larger one is refused by
/// the datapath (it needs a restart).
pub fn limits(c: &config::Config) -> Limits {
    let largest = c.services.iter().map(|s| s.table_size).max().unwrap_or(0);
    Limits {
        max_vips: c.daemon.max_vips,
        max_backends: c.daemon.max_backends,
        ring_stride: c.daemon.table_size.max(largest),
        flow_capacity: c.daemon.flow_capacity,
        new_flow_cap: c.daemon.max_new_flows_per_cpu,
    }
}

pub fn attach_mode(m: XdpMode) -> AttachMode {
    match m {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
    }
}

pub fn service_spec(s: &config::Service) -> ServiceSpec {
    ServiceSpec {
        vip: s.vip,
        protocol: s.protocol,
        interface: s.interface.clone(),
        forwarding: s.forwarding,
        scheduler: s.scheduler,
        table_size: s.table_size,
        snat_address: s.snat_address,
        snat_ports: (s.snat_ports.first, s.snat_ports.last),
        tun_source: s.tun_source,
        persistence: s.persistence,
        tcp_timeout: s.tcp_timeout,
        udp_timeout: s.udp_timeout,
    }
}

pub fn backend_specs(live: &[(SocketAddr, u32)]) -> Vec<BackendSpec> {
    live.iter()
        .map(|(a, w)| BackendSpec {
            addr: *a,
            weight: *w,
        })
        .collect()
}

/// uid and gid of `daemon.script_user`, if set.
pub fn run_as(d: &config::Daemon) -> Option<(u32, u32)> {
    d.script_user.as_ref().map(|u| (u.uid, u.gid))
}

/// A config check as the health module's spec. The config's `fall` already
/// counts keepalived's `retry` (fall = retry + 1), and rounds are spaced by
/// `delay_loop`, so the checker retries nothing within a round: a backend
/// leaves rotation within `delay_loop × fall` plus one probe timeout.
/// Scripts run as `run_as` (uid, gid) when given.
pub fn check_spec(c: &config::Check, alpha: bool, run_as: Option<(u32, u32)>) -> CheckSpec {
    let http = |h: &config::HttpCheck, tls: bool| HttpSpec {
        path: h.path.clone(),
        host: h.host.clone(),
        status: StatusRanges::new(h.status.iter().map(|r| (r.first, r.last)).collect()),
        digest: h.digest.clone(),
        body_regex: h.body_regex.clone(),
        tls: tls.then(TlsSpec::default),
        ..HttpSpec::default()
    };
    let kind = match &c.kind {
        config::CheckKind::Tcp => health::CheckKind::Tcp,
        config::CheckKind::Http(h) => health::CheckKind::Http(http(h, false)),
        config::CheckKind::Https(h) => health::CheckKind::Http(http(h, true)),
        config::CheckKind::Script(s) => health::CheckKind::Script(ScriptSpec {
            argv: s.command.iter().map(OsString::from).collect(),
            timeout: s.timeout,
            run_as,
        }),
    };
    CheckSpec {
        kind,
        delay_loop: c.delay_loop,
        connect_timeout: c.connect_timeout,
        rise: c.rise,
        fall: c.fall,
        retry: 0,
        delay_before_retry: c.delay_before_retry,
        alpha,
        source_address: c.source_address,
    }
}

/// Where probes of `backend` go (keepalived's `connect_port`).
pub fn probe_target(c: &config::Check, backend: SocketAddr) -> SocketAddr {
    SocketAddr::new(backend.ip(), c.connect_port.unwrap_or(backend.port()))
}
