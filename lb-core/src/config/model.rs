//! The validated config the daemon works with: plain types, defaults applied,
//! no spans.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default `daemon.metrics_listen`. 9658 sits in the Prometheus exporter range
/// but is taken by none of the widely deployed exporters (node 9100, haproxy
/// 9101, blackbox 9115, ...), and loopback keeps it private by default.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9658);
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/lb/admin.sock";
/// Default SNAT ports: below Linux's default `ip_local_port_range`
/// (32768-60999), so translated flows never collide with the node's own
/// outgoing connections, which the datapath would otherwise mistake for
/// replies. Starting at 1024 keeps clear of privileged ports.
pub const DEFAULT_SNAT_PORTS: PortRange = PortRange {
    first: 1024,
    last: 32767,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub daemon: Daemon,
    pub services: Vec<Service>,
    pub vrrp_instances: Vec<VrrpInstance>,
    pub sync: Option<Sync>,
}

/// Default `sync.port`: next to LVS's sync daemon (8848), so firewall rules
/// read alike, without colliding with an IPVS sync daemon kept during a
/// migration.
pub const DEFAULT_SYNC_PORT: u16 = 8849;
/// Default `sync.interval`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// `[sync]`: connection-state sync between the VRRP nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sync {
    pub source_address: Ipv4Addr,
    pub peers: Vec<Ipv4Addr>,
    pub port: u16,
    pub key_file: PathBuf,
    pub interval: Duration,
    /// Name of the instance whose master sends.
    pub vrrp_instance: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    pub admin_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub xdp_mode: XdpMode,
    pub flow_capacity: u32,
    pub max_new_flows_per_cpu: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    pub table_size: u32,
    pub log_level: String,
    /// Where the XDP attachment is pinned; `None`: not pinned.
    pub pin_dir: Option<PathBuf>,
    /// Scripts must be safe from other users (`script_security`).
    pub script_security: bool,
    /// Who scripts run as; `None`: the daemon's user.
    pub script_user: Option<ScriptUser>,
}

/// `daemon.script_user`, resolved when the config is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptUser {
    pub name: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    Dr,
    Nat,
    Tun,
}

/// Passive health: what the datapath watches in backend replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Observe {
    None,
    Layer4,
}

/// keepalived's `lb_algo` (LVS) names: how a new flow picks a backend. The
/// semantics of each are in `configs/reference.toml` and `lb_core::table`.
/// Default: `mh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Mh,
    Rr,
    Wrr,
    Lc,
    Wlc,
    Sh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Tcp,
    Http,
    Https,
    Script,
}

/// What identifies a service across reloads: the datapath's VIP key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: SocketAddr,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: Option<String>,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub interface: String,
    pub forwarding: Forwarding,
    pub scheduler: Scheduler,
    /// The service's own `table_size`, or the daemon's.
    pub table_size: u32,
    /// `None`: the interface's primary address, resolved at runtime.
    pub snat_address: Option<IpAddr>,
    pub snat_ports: PortRange,
    /// tun: outer source address and prefix length; `None`: the interface's
    /// primary address.
    pub tun_source: Option<(IpAddr, u8)>,
    /// keepalived's persistence_timeout and persistence_granularity.
    pub persistence: Option<(Duration, IpAddr)>,
    pub tcp_timeout: Duration,
    pub udp_timeout: Duration,
    pub quorum: u32,
    pub hysteresis: u32,
    pub sorry_server: Option<SocketAddr>,
    pub inhibit_on_failure: bool,
    pub alpha: bool,
    pub observe: Observe,
    pub error_limit: u32,
    pub syn_timeout: Duration,
    pub check: Option<Check>,
    pub backends: Vec<Backend>,
}

impl Service {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: self.vip,
            protocol: self.protocol,
        }
    }
}

/// Spelled as in the file, so messages and status output match it.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Spelled as in the file, so messages and status output match it.
impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduler::Mh => "mh",
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sh => "sh",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: SocketAddr,
    pub weight: u32,
    /// The backend's own check, or the service's.
    pub check: Option<Check>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    pub delay_loop: Duration,
    pub connect_timeout: Duration,
    pub connect_port: Option<u16>,
    /// Consecutive failures to mark down (`retry + 1` when given as `retry`).
    pub fall: u32,
    pub rise: u32,
    pub delay_before_retry: Duration,
    pub source_address: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http(HttpCheck),
    Https(HttpCheck),
    Script(ScriptCheck),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    pub status: Vec<StatusRange>,
    pub host: Option<String>,
    /// Lowercase hex MD5 of the expected body.
    pub digest: Option<String>,
    /// Already known to compile with the `regex` crate.
    pub body_regex: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    pub first: u16,
    pub last: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.first..=self.last).contains(&status)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptCheck {
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VrrpVersion {
    V2,
    V3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VrrpInstance {
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    pub advert_int: Duration,
    pub version: VrrpVersion,
    pub nopreempt: bool,
    pub preempt_delay: Duration,
    pub virtual_ipaddress: Vec<VirtualAddress>,
    pub unicast_src_ip: Option<IpAddr>,
    pub unicast_peer: Vec<IpAddr>,
    pub auth_pass: Option<String>,
    pub track_interface: Vec<TrackInterface>,
    pub track_script: Vec<TrackScript>,
    pub notify_master: Option<Vec<String>>,
    pub notify_backup: Option<Vec<String>>,
    pub notify_fault: Option<Vec<String>>,
    pub notify: Option<Vec<String>>,
    pub garp_master_delay: Duration,
    pub garp_master_repeat: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackInterface {
    pub name: String,
    pub weight: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackScript {
    pub name: String,
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub weight: i32,
    pub fall: u32,
    pub rise: u32,
}
