//! What the daemon shows: a snapshot published after every change, read
//! without blocking by the admin API and metrics (arc-swap), plus the
//! requests the admin API may make.

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;

use crate::{config::Protocol, health::ProbeRecord};

/// The daemon's state as operators see it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub config_path: String,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Rejected reloads since start (the previous config kept serving).
    pub reload_failures: u64,
    pub services: Vec<ServiceStatus>,
    pub vrrp: Vec<VrrpStatus>,
    /// Connection-state sync counters, live (read when shown); absent
    /// without `[sync]`.
    pub sync: Option<SyncStatus>,
}

/// The sync task's counters, shared: a snapshot of the status still shows
/// the current values.
#[derive(Clone, Debug, Default)]
pub struct SyncStatus(pub std::sync::Arc<crate::sync::Counters>);

impl Serialize for SyncStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One VRRP instance, as `lb status` and the metrics show it.
#[derive(Clone, Debug, Serialize)]
pub struct VrrpStatus {
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    /// `INIT`, `BACKUP`, `MASTER` or `FAULT` (keepalived's words).
    pub state: String,
    /// Effective priority (configured, adjusted by tracked objects).
    pub priority: u8,
    /// The current master's address and priority, as last advertised.
    pub master: Option<String>,
    /// State changes since start.
    pub transitions: u64,
    /// Adverts rejected, by reason (bad checksum, wrong TTL, auth, ...).
    pub rejected: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatus {
    pub name: Option<String>,
    pub vip: SocketAddr,
    pub protocol: String,
    pub interface: String,
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
    /// Idle timeout of the service's flows (tcp_timeout or udp_timeout).
    pub idle_timeout_seconds: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
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
    /// The health check's probes, read live (the status is published on
    /// changes, probes land every `delay_loop`). `None` without a check.
    #[serde(skip)]
    pub probes: Option<Arc<ProbeRecord>>,
    /// This backend is the service's sorry server.
    pub sorry_server: bool,
}

/// Changes operators make through the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Weight 0: no new flows; existing flows finish.
    Drain {
        vip: SocketAddr,
        protocol: Protocol,
        backend: SocketAddr,
    },
    /// Back to the configured weight.
    Undrain {
        vip: SocketAddr,
        protocol: Protocol,
        backend: SocketAddr,
    },
    SetWeight {
        vip: SocketAddr,
        protocol: Protocol,
        backend: SocketAddr,
        weight: u32,
    },
    /// Re-read the config file, as SIGHUP does.
    Reload,
}

/// Why an admin request was refused. Nothing changed when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no service {0}/{1}")]
    UnknownVip(SocketAddr, Protocol),
    #[error("service {0}/{1} has no backend {2}")]
    UnknownBackend(SocketAddr, Protocol, SocketAddr),
    #[error("weight {0} is out of range 0..=65535")]
    WeightRange(u32),
    #[error("reload failed, the previous config keeps serving:\n{0}")]
    Reload(String),
    #[error("the datapath refused the change: {0}")]
    Datapath(String),
}
