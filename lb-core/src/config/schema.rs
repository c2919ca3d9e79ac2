//! The file format, as serde reads it.
//!
//! Every field the validator checks is `Spanned` so errors can name a
//! line:col, and nearly every field is optional here even when the config
//! requires it: a missing key is then reported by the validator next to all
//! the other problems instead of aborting deserialization. Defaults are
//! applied by the validator and written in each field's doc comment.
//!
//! Durations are humantime strings ("5s", "250ms", "1m30s") everywhere,
//! including where keepalived takes integer seconds, so one rule covers every
//! duration key.

use serde::Deserialize;
use toml::Spanned;

use super::model::{CheckType, Forwarding, Observe, Protocol, Scheduler, XdpMode};

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Process-wide settings. Default: every `[daemon]` default.
    pub daemon: Option<RawDaemon>,
    /// Virtual servers. Default: none.
    #[serde(default)]
    pub service: Vec<S<RawService>>,
    /// VRRP instances. Default: none (the node then never owns a VIP itself;
    /// something else must route the VIPs to it).
    #[serde(default)]
    pub vrrp_instance: Vec<S<RawVrrpInstance>>,
    /// Connection-state sync with the other VRRP node(s), so nat flows
    /// survive a failover. Default: none (no sync; dr and tun flows survive
    /// anyway, see `lb_core::sync`).
    pub sync: Option<S<RawSync>>,
}

/// The sync channel (like the LVS sync daemon or conntrackd).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSync {
    /// This node's IPv4 address: the channel binds to it and sends from it.
    /// Required.
    pub source_address: Option<S<String>>,
    /// The other nodes' `source_address`es; only they are listened to.
    /// Required, at least one.
    pub peers: Option<S<Vec<S<String>>>>,
    /// UDP port, the same on every node. Default: 8849.
    pub port: Option<S<i64>>,
    /// File holding the shared key (at least 16 bytes, surrounding
    /// whitespace ignored); refused if "other" may access it. Required.
    pub key_file: Option<S<String>>,
    /// Time between two scans of the connection table by the master (and
    /// between hellos). Default: "1s".
    pub interval: Option<S<String>>,
    /// The `[[vrrp_instance]]` whose MASTER sends its flows. Default: the
    /// only instance (required when there are several).
    pub vrrp_instance: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    /// Unix socket of the admin API (created with mode 0600).
    /// Default: `/run/lb/admin.sock`.
    pub admin_socket: Option<S<String>>,
    /// TCP address of the Prometheus exporter. Default: `127.0.0.1:9658`.
    pub metrics_listen: Option<S<String>>,
    /// How XDP attaches. Default: `auto` (native, falling back to generic).
    pub xdp_mode: Option<S<XdpMode>>,
    /// Connection-table entries, per address family. Default: 262144.
    pub flow_capacity: Option<S<i64>>,
    /// SYN-flood guard: new dr/tun flows per CPU per second recorded in the
    /// connection table; more are forwarded unrecorded. Default: 125000
    /// (Katran's MAX_CONN_RATE); 0 = no limit.
    pub max_new_flows_per_cpu: Option<S<i64>>,
    /// VIP slots in the datapath maps. Default: 64.
    pub max_vips: Option<S<i64>>,
    /// Backend slots in the datapath maps, all services together. Default: 4096.
    pub max_backends: Option<S<i64>>,
    /// Maglev table size of every service, prime. Default: 65537.
    pub table_size: Option<S<i64>>,
    /// tracing filter directive (`RUST_LOG` syntax). Default: `info`.
    pub log_level: Option<S<String>>,
    /// Directory on a bpf filesystem where the XDP attachment is pinned, so
    /// the datapath keeps forwarding if lb dies without a clean stop
    /// (SIGKILL, OOM, panic); the next start replaces it, a clean stop
    /// removes it. Default: none (the datapath leaves with the process).
    pub pin_dir: Option<S<String>>,
    /// Refuse scripts (checks, track scripts, notify) that a user other
    /// than root or the daemon's own could change, like keepalived's
    /// `enable_script_security`. Default: true.
    pub script_security: Option<S<bool>>,
    /// User that checks, track scripts and notify scripts run as (with its
    /// primary group and no supplementary groups), like keepalived's
    /// `script_user`. Default: none (the daemon's own user).
    pub script_user: Option<S<String>>,
}

/// keepalived's `virtual_server`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    /// Unique label for the CLI and metrics. Default: none (the VIP names it).
    pub name: Option<S<String>>,
    /// "ip:port" clients connect to, IPv4 or "[IPv6]:port". Required. All
    /// addresses of the service are of its family.
    pub vip: Option<S<String>>,
    /// Default: `tcp`.
    pub protocol: Option<S<Protocol>>,
    /// Interface the VIP's packets arrive on (XDP attaches there). Required.
    pub interface: Option<S<String>>,
    /// `dr`, `nat` or `tun`. Required: the modes need different backend
    /// setups, so there is no safe guess.
    pub forwarding: Option<S<Forwarding>>,
    /// `mh`, `sh`, `rr`, `wrr`, `lc` or `wlc` (LVS names). Default: `mh`
    /// (weighted Maglev).
    pub scheduler: Option<S<Scheduler>>,
    /// Per-service Maglev table size, prime. Default: `daemon.table_size`.
    pub table_size: Option<S<i64>>,
    /// nat only: source address towards remote backends, of the VIP's
    /// family. Default: the interface's primary address of that family
    /// (IPv6: the first that is not link-local), found at runtime.
    pub snat_address: Option<S<String>>,
    /// nat only: source ports, "first-last" inclusive. Default: "1024-32767".
    pub snat_ports: Option<S<String>>,
    /// keepalived: a client keeps its backend across connections until it
    /// has opened none for this long. Default: none (off).
    pub persistence_timeout: Option<S<String>>,
    /// keepalived: the netmask applied to client addresses for persistence;
    /// for IPv6 services a prefix length ("64") or an IPv6 netmask.
    /// Default: "255.255.255.255" / "128" (each client address on its own).
    pub persistence_granularity: Option<S<String>>,
    /// tun only: outer source of the tunnel packets, an address or a prefix
    /// (/16 to /32; IPv6 /112 to /128) whose host bits are taken from the
    /// flow hash so backend NICs spread flows over their queues. Default:
    /// the interface's primary address of the VIP's family.
    pub tun_source: Option<S<String>>,
    /// Idle time before a TCP flow is forgotten. Default: "900s".
    pub tcp_timeout: Option<S<String>>,
    /// Idle time before a UDP flow is forgotten. Default: "300s".
    pub udp_timeout: Option<S<String>>,
    /// keepalived: minimum total weight of healthy backends for the service
    /// to be up. Default: 1.
    pub quorum: Option<S<i64>>,
    /// keepalived: the service goes up at `quorum + hysteresis` and down below
    /// `quorum - hysteresis`. Default: 0.
    pub hysteresis: Option<S<i64>>,
    /// keepalived: "ip:port" that takes all new flows while the service is
    /// down. Default: none (new flows are dropped).
    pub sorry_server: Option<S<String>>,
    /// keepalived: a failed backend keeps its slots with weight 0 (existing
    /// flows finish) instead of being removed. Default: false.
    pub inhibit_on_failure: Option<S<bool>>,
    /// keepalived: backends start down and need a passing check first.
    /// Default: false (backends start up).
    pub alpha: Option<S<bool>>,
    /// Passive health from the datapath (HAProxy's `observe layer4`):
    /// `layer4` or `none`. Default: `layer4` with `nat`, `none` with `dr`
    /// (dr replies bypass the LB, so there is nothing to observe). Only
    /// backends with an active check are observed, as only a check brings
    /// a backend back; `layer4` with no check at all is an error.
    pub observe: Option<S<Observe>>,
    /// HAProxy's `error-limit`: consecutive connection errors (a RST
    /// answering a SYN, or a SYN unanswered after `syn_timeout`) that mark a
    /// backend down at once; active checks bring it back. Default: 10.
    pub error_limit: Option<S<i64>>,
    /// How long a SYN may wait for the backend's SYN-ACK before it counts as
    /// an error. Default: "2s".
    pub syn_timeout: Option<S<String>>,
    /// Health check of every backend. Default: none (backends are always up).
    /// Not `Spanned`: toml_edit cannot span a table written with dotted keys
    /// (`check.type = "tcp"`), and would reject that valid spelling.
    pub check: Option<RawCheck>,
    /// keepalived's `real_server` blocks. Default: none.
    #[serde(default)]
    pub backend: Vec<S<RawBackend>>,
}

/// keepalived's `real_server`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    /// "ip:port". Required.
    pub address: Option<S<String>>,
    /// keepalived: share of new flows, 0..=65535; 0 drains. Default: 1.
    pub weight: Option<S<i64>>,
    /// Replaces (does not merge with) the service's check for this backend.
    /// Default: the service's check. Not `Spanned`, as for the service's.
    pub check: Option<RawCheck>,
}

/// One table for every check type; keys that do not apply to the chosen
/// `type` are rejected by the validator, which keeps the messages precise
/// (an internally tagged enum would lose the spans).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    /// `tcp`, `http`, `https` or `script`. Required.
    #[serde(rename = "type")]
    pub kind: Option<S<CheckType>>,
    /// keepalived: time between checks. Default: "5s" (keepalived: 60 s).
    pub delay_loop: Option<S<String>>,
    /// keepalived: connect (and for http, response) timeout. Default: "5s".
    pub connect_timeout: Option<S<String>>,
    /// keepalived: port to check. Default: the backend's port.
    pub connect_port: Option<S<i64>>,
    /// Consecutive failures that mark a backend down. Default: 2 (keepalived's
    /// default of one `retry`).
    pub fall: Option<S<i64>>,
    /// keepalived: retries after a failure before marking down; the same as
    /// `fall = retry + 1`. Only one of `fall` and `retry` may be set.
    pub retry: Option<S<i64>>,
    /// Consecutive successes that mark a backend up. Default: 1.
    pub rise: Option<S<i64>>,
    /// keepalived: time between checks while a failure is being retried.
    /// Default: "1s".
    pub delay_before_retry: Option<S<String>>,
    /// keepalived: source address of the probes. Default: chosen by routing.
    pub source_address: Option<S<String>>,
    /// http/https: request path. Default: "/".
    pub path: Option<S<String>>,
    /// http/https: accepted status codes, "200" or "200-299".
    /// Default: ["200-299"] (keepalived accepts any 2xx by default).
    pub status: Option<S<Vec<S<String>>>>,
    /// http/https: Host header. Default: the backend's address.
    pub host: Option<S<String>>,
    /// http/https: keepalived's `digest`, MD5 of the body in hex.
    /// Default: the body is not checked.
    pub digest: Option<S<String>>,
    /// http/https: regex the body must match. Default: the body is not checked.
    pub body_regex: Option<S<String>>,
    /// script: argv, run without a shell; exit 0 means healthy. Required for
    /// `type = "script"`.
    pub command: Option<S<Vec<S<String>>>>,
    /// script: kill the command after this long. Default: `delay_loop`, like
    /// keepalived's `misc_timeout`.
    pub timeout: Option<S<String>>,
}

/// keepalived's `vrrp_instance`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVrrpInstance {
    /// Unique name, as in keepalived. Required.
    pub name: Option<S<String>>,
    /// Interface adverts are sent and received on. Required.
    pub interface: Option<S<String>>,
    /// keepalived: 1..=255, unique per interface. Required.
    pub virtual_router_id: Option<S<i64>>,
    /// keepalived: 1..=255; 255 means this node owns the addresses. Default: 100.
    pub priority: Option<S<i64>>,
    /// keepalived: advert interval; whole seconds for version 2, multiples of
    /// 10 ms up to 40.95 s for version 3. Default: "1s".
    pub advert_int: Option<S<String>>,
    /// VRRP version, 2 or 3. Default: 2 (keepalived's default).
    pub version: Option<S<i64>>,
    /// keepalived: a higher-priority node does not take over from a running
    /// master. Default: false.
    pub nopreempt: Option<S<bool>>,
    /// keepalived: wait this long after startup before preempting, at most
    /// "1000s". Default: "0s".
    pub preempt_delay: Option<S<String>>,
    /// keepalived: addresses moved with mastership, "ip" or "ip/prefix".
    /// Required, at least one.
    pub virtual_ipaddress: Option<S<Vec<S<String>>>>,
    /// keepalived: source of unicast adverts. Default: the interface's address.
    pub unicast_src_ip: Option<S<String>>,
    /// keepalived: send adverts to these peers instead of 224.0.0.18.
    /// Default: none (multicast).
    pub unicast_peer: Option<S<Vec<S<String>>>>,
    /// keepalived: version 2 `auth_type PASS` password, at most 8 characters.
    /// Default: none (no authentication).
    pub auth_pass: Option<S<String>>,
    /// keepalived: interfaces whose link state this instance follows.
    /// Default: none.
    #[serde(default)]
    pub track_interface: Vec<S<RawTrackInterface>>,
    /// keepalived's `vrrp_script`, defined inline. Default: none.
    #[serde(default)]
    pub track_script: Vec<S<RawTrackScript>>,
    /// keepalived: argv run on becoming master. Default: none.
    pub notify_master: Option<S<Vec<S<String>>>>,
    /// keepalived: argv run on becoming backup. Default: none.
    pub notify_backup: Option<S<Vec<S<String>>>>,
    /// keepalived: argv run on entering fault. Default: none.
    pub notify_fault: Option<S<Vec<S<String>>>>,
    /// keepalived: argv run on every transition, with "INSTANCE" NAME STATE
    /// PRIORITY appended as keepalived does. Default: none.
    pub notify: Option<S<Vec<S<String>>>>,
    /// keepalived: delay before the second burst of gratuitous ARPs. Default: "5s".
    pub garp_master_delay: Option<S<String>>,
    /// keepalived: gratuitous ARPs per burst. Default: 5.
    pub garp_master_repeat: Option<S<i64>>,
}

/// Either `"eth1"` or `{ name = "eth1", weight = -20 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawTrackInterface {
    Name(String),
    Weighted(RawWeightedInterface),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWeightedInterface {
    pub name: String,
    /// keepalived: -253..=253 added to the priority while the link is up
    /// (positive) or down (negative). Default: 0 (link down means fault).
    #[serde(default)]
    pub weight: i64,
}

/// keepalived's `vrrp_script`, inline.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrackScript {
    /// Label for logs and status. Required.
    pub name: Option<S<String>>,
    /// argv, run without a shell; exit 0 means OK. Required.
    pub command: Option<S<Vec<S<String>>>>,
    /// keepalived: time between runs. Default: "1s".
    pub interval: Option<S<String>>,
    /// keepalived: kill the command after this long. Default: `interval`.
    pub timeout: Option<S<String>>,
    /// keepalived: -253..=253, like `track_interface`. Default: 0 (failure
    /// means fault).
    pub weight: Option<S<i64>>,
    /// keepalived: consecutive failures before the script counts as failed.
    /// Default: 1.
    pub fall: Option<S<i64>>,
    /// keepalived: consecutive successes before it counts as OK. Default: 1.
    pub rise: Option<S<i64>>,
}
