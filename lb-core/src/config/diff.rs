//! What changed between two validated configs, for a SIGHUP reload.
//!
//! Services are matched by (VIP, protocol), the datapath's key, so renaming a
//! service or reordering the file changes nothing on the wire. Backends are
//! matched by address; VRRP instances by name.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::model::{Backend, Config, Daemon, Service, ServiceKey, VrrpInstance};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Changed `[daemon]` keys; most only take effect on restart.
    pub daemon: Vec<&'static str>,
    /// In the new config's order.
    pub services_added: Vec<ServiceKey>,
    /// In the old config's order.
    pub services_removed: Vec<ServiceKey>,
    /// In the new config's order.
    pub services_changed: Vec<ServiceChange>,
    pub vrrp_added: Vec<String>,
    pub vrrp_removed: Vec<String>,
    /// Instances whose settings differ in any way.
    pub vrrp_changed: Vec<String>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChange {
    pub key: ServiceKey,
    /// Changed service keys other than `backend`, named as in the file.
    pub settings: Vec<&'static str>,
    /// In the new config's order, then removals in the old config's order.
    pub backends: Vec<BackendChange>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChange {
    Added(SocketAddr),
    Removed(SocketAddr),
    Reweighted {
        address: SocketAddr,
        old: u32,
        new: u32,
    },
    /// The effective check (the backend's own or the service's) differs.
    CheckChanged(SocketAddr),
}

/// Compares two validated configs. Pure: no I/O, no clock.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let old_services: HashMap<ServiceKey, &Service> =
        old.services.iter().map(|s| (s.key(), s)).collect();
    let new_keys: HashMap<ServiceKey, ()> = new.services.iter().map(|s| (s.key(), ())).collect();
    let mut d = ConfigDiff {
        daemon: daemon_changes(&old.daemon, &new.daemon),
        ..ConfigDiff::default()
    };
    for s in &new.services {
        match old_services.get(&s.key()) {
            None => d.services_added.push(s.key()),
            Some(o) => {
                let change = ServiceChange {
                    key: s.key(),
                    settings: service_changes(o, s),
                    backends: backend_changes(&o.backends, &s.backends),
                };
                if !change.settings.is_empty() || !change.backends.is_empty() {
                    d.services_changed.push(change);
                }
            }
        }
    }
    d.services_removed = old
        .services
        .iter()
        .map(Service::key)
        .filter(|k| !new_keys.contains_key(k))
        .collect();
    let old_vrrp: HashMap<&str, &VrrpInstance> = old
        .vrrp_instances
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    for v in &new.vrrp_instances {
        match old_vrrp.get(v.name.as_str()) {
            None => d.vrrp_added.push(v.name.clone()),
            Some(o) if *o != v => d.vrrp_changed.push(v.name.clone()),
            Some(_) => {}
        }
    }
    d.vrrp_removed = old
        .vrrp_instances
        .iter()
        .filter(|o| !new.vrrp_instances.iter().any(|v| v.name == o.name))
        .map(|o| o.name.clone())
        .collect();
    d
}

fn changed(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect()
}

fn daemon_changes(o: &Daemon, n: &Daemon) -> Vec<&'static str> {
    changed(&[
        ("admin_socket", o.admin_socket != n.admin_socket),
        ("metrics_listen", o.metrics_listen != n.metrics_listen),
        ("xdp_mode", o.xdp_mode != n.xdp_mode),
        ("flow_capacity", o.flow_capacity != n.flow_capacity),
        (
            "max_new_flows_per_cpu",
            o.max_new_flows_per_cpu != n.max_new_flows_per_cpu,
        ),
        ("max_vips", o.max_vips != n.max_vips),
        ("max_backends", o.max_backends != n.max_backends),
        ("table_size", o.table_size != n.table_size),
        ("log_level", o.log_level != n.log_level),
    ])
}

fn service_changes(o: &Service, n: &Service) -> Vec<&'static str> {
    changed(&[
        ("name", o.name != n.name),
        ("interface", o.interface != n.interface),
        ("forwarding", o.forwarding != n.forwarding),
        ("scheduler", o.scheduler != n.scheduler),
        ("table_size", o.table_size != n.table_size),
        ("snat_address", o.snat_address != n.snat_address),
        ("snat_ports", o.snat_ports != n.snat_ports),
        ("tun_source", o.tun_source != n.tun_source),
        ("persistence", o.persistence != n.persistence),
        ("tcp_timeout", o.tcp_timeout != n.tcp_timeout),
        ("udp_timeout", o.udp_timeout != n.udp_timeout),
        ("quorum", o.quorum != n.quorum),
        ("hysteresis", o.hysteresis != n.hysteresis),
        ("sorry_server", o.sorry_server != n.sorry_server),
        (
            "inhibit_on_failure",
            o.inhibit_on_failure != n.inhibit_on_failure,
        ),
        ("alpha", o.alpha != n.alpha),
        ("observe", o.observe != n.observe),
        ("error_limit", o.error_limit != n.error_limit),
        ("syn_timeout", o.syn_timeout != n.syn_timeout),
        ("check", o.check != n.check),
    ])
}

fn backend_changes(old: &[Backend], new: &[Backend]) -> Vec<BackendChange> {
    let by_addr: HashMap<SocketAddr, &Backend> = old.iter().map(|b| (b.address, b)).collect();
    let mut out = Vec::new();
    for b in new {
        match by_addr.get(&b.address) {
            None => out.push(BackendChange::Added(b.address)),
            Some(o) => {
                if o.weight != b.weight {
                    out.push(BackendChange::Reweighted {
                        address: b.address,
                        old: o.weight,
                        new: b.weight,
                    });
                }
                if o.check != b.check {
                    out.push(BackendChange::CheckChanged(b.address));
                }
            }
        }
    }
    out.extend(
        old.iter()
            .filter(|o| !new.iter().any(|b| b.address == o.address))
            .map(|o| BackendChange::Removed(o.address)),
    );
    out
}
