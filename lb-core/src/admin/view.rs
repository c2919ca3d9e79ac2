//! The JSON the admin API serves (`GET /v1/status`): the daemon's [`Status`]
//! with the datapath's counters and rates merged into each service and
//! backend.
//!
//! These are the v1 wire types, kept apart from [`Status`] so the daemon's
//! internals can change without breaking scripts that read the API.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_ebpf::abi::{Counters, DropReason};
use serde::{Deserialize, Serialize};

use super::rate::{RateKey, Rates};
use crate::{
    config::Protocol,
    daemon::{BackendStatus, ServiceStatus, Status, Usage, UsageSnapshot, VrrpStatus},
    health::ProbeSnapshot,
};

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub config_path: String,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Rejected reloads since start (the previous config kept serving).
    pub reload_failures: u64,
    /// Why `usage` is missing everywhere: the datapath could not be read.
    pub usage_error: Option<String>,
    /// Seconds between the two counter samples the rates come from.
    pub rate_window_seconds: Option<f64>,
    pub services: Vec<ServiceView>,
    /// Drops of packets to a VIP address that matched no service, by reason.
    pub unmatched_drops: BTreeMap<String, u64>,
    pub vrrp: Vec<VrrpView>,
    /// Connection-state sync; absent without `[sync]` (and from daemons
    /// that predate it).
    #[serde(default)]
    pub sync: Option<SyncView>,
}

/// The sync channel's counters since start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncView {
    pub messages_sent: u64,
    pub flows_sent: u64,
    pub send_errors: u64,
    pub messages_received: u64,
    pub flows_applied: u64,
    /// Datagrams refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Received flows not applied, by reason.
    pub skipped: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: Option<String>,
    pub vip: SocketAddr,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub interface: String,
    /// `dr`, `nat` or `tun`.
    pub forwarding: String,
    pub scheduler: String,
    /// keepalived's quorum state: enough healthy weight to serve.
    pub quorum_up: bool,
    /// The sorry server is serving instead of the backends.
    pub sorry: bool,
    /// Generation of the live scheduler table (bumped by every swap).
    pub table_generation: u32,
    /// Removed from the config; unprogrammed once its flows drained.
    pub removing: bool,
    pub idle_timeout_seconds: u64,
    /// `None` when the datapath could not be read (see `usage_error`).
    pub usage: Option<UsageView>,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    pub address: SocketAddr,
    /// Weight from the config.
    pub weight: u32,
    /// Weight set by `lb weight` / `lb drain` (0 = drained), if any.
    pub admin_weight: Option<u32>,
    /// Weight in the live table, `None` when out of it.
    pub live_weight: Option<u32>,
    pub healthy: bool,
    /// Why the health last changed (the probe's result).
    pub reason: Option<String>,
    /// Latency of the last successful probe (kept from the first v1
    /// schema; the same as `probes.last_ok_latency_seconds`).
    pub probe_latency_seconds: Option<f64>,
    /// The health check's probes so far (latency histogram, failures, last
    /// successful latency); `None` without a check.
    pub probes: Option<ProbeSnapshot>,
    pub sorry_server: bool,
    /// `None` when the datapath could not be read or the backend is not
    /// programmed (yet).
    pub usage: Option<UsageView>,
}

/// Datapath counters since the service was programmed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Drops by reason (every reason is listed, zeros included).
    pub drops: BTreeMap<String, u64>,
    /// Forward flows seen within the service's idle timeout.
    pub active_flows: u64,
    /// `None` until two samples exist.
    pub packets_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VrrpView {
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    /// `INIT`, `BACKUP`, `MASTER` or `FAULT` (keepalived's words).
    pub state: String,
    /// Effective priority.
    pub priority: u8,
    /// The current master's address and priority, as last advertised.
    pub master: Option<String>,
    /// State changes since start.
    pub transitions: u64,
    /// Adverts rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
}

/// Drop counters keyed by [`DropReason::name`].
fn drops(c: &Counters) -> BTreeMap<String, u64> {
    DropReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), c.drops[*r as usize]))
        .collect()
}

/// The datapath's key for a service as the status shows it; `None` for an
/// unknown protocol name.
pub fn service_key(s: &ServiceStatus) -> Option<(SocketAddr, Protocol)> {
    Some((s.vip, protocol(&s.protocol)?))
}

/// Parses `tcp` or `udp`, as [`Protocol`] displays itself.
pub fn protocol(s: &str) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .find(|p| p.to_string() == s)
}

fn usage_view(u: &Usage, rate: Option<(f64, f64)>) -> UsageView {
    UsageView {
        packets: u.counters.packets,
        bytes: u.counters.bytes,
        new_flows: u.counters.new_flows,
        drops: drops(&u.counters),
        active_flows: u.active_flows,
        packets_per_second: rate.map(|r| r.0),
        bytes_per_second: rate.map(|r| r.1),
    }
}

/// Merges a status snapshot with counters read just after it. `usage` is
/// the datapath's error message when it could not be read.
pub fn merge(
    status: &Status,
    usage: Result<&UsageSnapshot, String>,
    rates: Option<&Rates>,
) -> StatusView {
    let snap = usage.as_ref().ok();
    let rate = |k: RateKey| rates.and_then(|r| r.get(&k));
    let services = status
        .services
        .iter()
        .map(|s| {
            let key = service_key(s);
            let vip_usage = key.and_then(|k| {
                let u = snap?.vips.iter().find(|(vk, _)| *vk == k)?;
                Some(usage_view(&u.1, rate((k.0, k.1, None))))
            });
            let backend = |b: &BackendStatus| {
                let (vip, p) = key?;
                let addr = b.address;
                let u = snap?
                    .backends
                    .iter()
                    .find(|(bk, _)| *bk == (vip, p, addr))?;
                Some(usage_view(&u.1, rate((vip, p, Some(addr)))))
            };
            ServiceView {
                name: s.name.clone(),
                vip: s.vip,
                protocol: s.protocol.clone(),
                interface: s.interface.clone(),
                forwarding: s.forwarding.clone(),
                scheduler: s.scheduler.clone(),
                quorum_up: s.quorum_up,
                sorry: s.sorry,
                table_generation: s.table_generation,
                removing: s.removing,
                idle_timeout_seconds: s.idle_timeout_seconds,
                usage: vip_usage,
                backends: s
                    .backends
                    .iter()
                    .map(|b| {
                        let probes = b.probes.as_ref().map(|p| p.snapshot());
                        BackendView {
                            address: b.address,
                            weight: b.weight,
                            admin_weight: b.admin_weight,
                            live_weight: b.live_weight,
                            healthy: b.healthy,
                            reason: b.reason.clone(),
                            probe_latency_seconds: probes
                                .as_ref()
                                .and_then(|p| p.last_ok_latency_seconds),
                            probes,
                            sorry_server: b.sorry_server,
                            usage: backend(b),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    StatusView {
        config_path: status.config_path.clone(),
        reloads: status.reloads,
        reload_failures: status.reload_failures,
        usage_error: usage.as_ref().err().cloned(),
        rate_window_seconds: rates.map(|r| r.window.as_secs_f64()),
        services,
        unmatched_drops: snap.map(|u| drops(&u.unmatched)).unwrap_or_default(),
        vrrp: status.vrrp.iter().map(vrrp_view).collect(),
        sync: status.sync.as_ref().map(|s| sync_view(&s.0)),
    }
}

fn sync_view(c: &crate::sync::Counters) -> SyncView {
    use crate::sync::Counters as C;
    let map =
        |v: Vec<(&'static str, u64)>| v.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    SyncView {
        messages_sent: C::get(&c.messages_sent),
        flows_sent: C::get(&c.flows_sent),
        send_errors: C::get(&c.send_errors),
        messages_received: C::get(&c.messages_received),
        flows_applied: C::get(&c.flows_applied),
        rejected: map(c.rejected()),
        skipped: map(c.skipped()),
    }
}

fn vrrp_view(v: &VrrpStatus) -> VrrpView {
    VrrpView {
        name: v.name.clone(),
        interface: v.interface.clone(),
        virtual_router_id: v.virtual_router_id,
        state: v.state.clone(),
        priority: v.priority,
        master: v.master.clone(),
        transitions: v.transitions,
        rejected: v.rejected.clone(),
    }
}
