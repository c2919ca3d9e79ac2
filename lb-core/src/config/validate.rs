//! `RawConfig` to `Config`: defaults, ranges and cross-references.
//!
//! Nothing stops at the first problem: each check records its error and the
//! walk goes on with a placeholder value, so one run lists everything to fix.
//! The placeholders never escape, because `super::parse` discards the
//! `Config` whenever an error was recorded.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use lb_ebpf::abi::LEAST_MAX_BACKENDS;

use super::Environment;
use super::error::{ConfigError, Locator};
use super::model::{
    Backend, Check, CheckKind, CheckType, Config, DEFAULT_ADMIN_SOCKET, DEFAULT_METRICS_LISTEN,
    DEFAULT_SNAT_PORTS, DEFAULT_SYNC_INTERVAL, DEFAULT_SYNC_PORT, Daemon, Forwarding, HttpCheck,
    Observe, PortRange, Protocol, Scheduler, ScriptCheck, ScriptUser, Service, ServiceKey,
    StatusRange, Sync, TrackInterface, TrackScript, VirtualAddress, VrrpInstance, VrrpVersion,
    XdpMode,
};
use super::schema::{
    RawBackend, RawCheck, RawConfig, RawDaemon, RawService, RawSync, RawTrackInterface,
    RawTrackScript, RawVrrpInstance, S,
};
use crate::table::is_prime;

const DEFAULT_TABLE_SIZE: u32 = lb_ebpf::abi::DEFAULT_RING_SIZE;
const U32_MAX: i64 = u32::MAX as i64;
/// keepalived's limit for `track_interface` and `vrrp_script` weights.
const TRACK_WEIGHT: i64 = 253;

fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) struct Validator<'a> {
    loc: &'a Locator<'a>,
    env: &'a dyn Environment,
    /// Keys whose value was already reported (and removed) by the parser.
    blanked: &'a HashSet<String>,
    /// `daemon.script_security`, once `[daemon]` is read.
    script_security: bool,
    /// `daemon.script_user`, once `[daemon]` is read.
    script_user: Option<ScriptUser>,
    pub errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(
        loc: &'a Locator<'a>,
        env: &'a dyn Environment,
        blanked: &'a HashSet<String>,
    ) -> Self {
        Self {
            loc,
            env,
            blanked,
            script_security: true,
            script_user: None,
            errors: Vec::new(),
        }
    }

    fn err(&mut self, span: &Range<usize>, key: &str, reason: impl Into<String>) {
        let e = self.loc.error(Some(span.clone()), key, reason);
        self.errors.push(e);
    }

    fn required<'r, T>(
        &mut self,
        value: &'r Option<S<T>>,
        table: &Range<usize>,
        key: &str,
    ) -> Option<&'r S<T>> {
        if value.is_none() && !self.blanked.contains(key) {
            self.err(table, key, "missing required key");
        }
        value.as_ref()
    }

    fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        value: &Option<S<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        default: T,
    ) -> T {
        let Some(v) = value else { return default };
        let n = *v.get_ref();
        match T::try_from(n) {
            Ok(t) if range.contains(&n) => t,
            _ => {
                let (min, max) = range.into_inner();
                self.err(&v.span(), key, format!("{n} is out of range {min}..={max}"));
                default
            }
        }
    }

    fn flag(value: &Option<S<bool>>) -> bool {
        value.as_ref().is_some_and(|v| *v.get_ref())
    }

    fn duration(&mut self, value: &Option<S<String>>, key: &str, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                let reason = format!(
                    "invalid duration {:?}: {e} (write a number and a unit, like \"5s\" or \"250ms\")",
                    v.get_ref()
                );
                self.err(&v.span(), key, reason);
                default
            }
        }
    }

    /// A duration the datapath stores as a u32 of seconds.
    fn whole_seconds(&mut self, value: &Option<S<String>>, key: &str, default: u64) -> Duration {
        let d = self.duration(value, key, secs(default));
        if let Some(v) = value
            && (d.subsec_nanos() != 0 || d.is_zero() || d.as_secs() > u64::from(u32::MAX))
        {
            let reason = format!("must be a whole number of seconds from 1s to {}s", u32::MAX);
            self.err(&v.span(), key, reason);
            return secs(default);
        }
        d
    }

    fn positive_duration(
        &mut self,
        value: &Option<S<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(value, key, default);
        if let Some(v) = value
            && d.is_zero()
        {
            self.err(&v.span(), key, "must be longer than 0s");
            return default;
        }
        d
    }

    fn ip(&mut self, v: &S<String>, key: &str) -> Option<IpAddr> {
        match v.get_ref().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(
                    &v.span(),
                    key,
                    format!("invalid IP address {:?}", v.get_ref()),
                );
                None
            }
        }
    }

    /// An IPv4 address: the sync channel speaks IPv4 only, as VRRP here.
    fn ipv4(&mut self, v: &S<String>, key: &str) -> Option<Ipv4Addr> {
        match self.ip(v, key)? {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => {
                self.err(&v.span(), key, "IPv6 is not supported by the sync channel");
                None
            }
        }
    }

    /// An address of the VIP's family: a service is IPv4 or IPv6 throughout.
    /// An invalid VIP (reported already, stood in for by 0.0.0.0:0) sets
    /// off nothing here.
    fn same_family(&mut self, ip: IpAddr, vip: SocketAddr, span: &Range<usize>, key: &str) -> bool {
        if ip.is_ipv4() == vip.is_ipv4() || vip.ip().is_unspecified() {
            return true;
        }
        let fam = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
        let reason = format!(
            "{ip} is {} but the VIP {vip} is {}: a service's addresses must all be of one family",
            fam(ip.is_ipv4()),
            fam(vip.is_ipv4())
        );
        self.err(span, key, reason);
        false
    }

    /// An "ip:port" (IPv4, or IPv6 in brackets) with a real port.
    fn endpoint(&mut self, v: &S<String>, key: &str) -> Option<SocketAddr> {
        let Ok(addr) = v.get_ref().parse::<SocketAddr>() else {
            let reason = format!("invalid address {:?}: expected \"ip:port\"", v.get_ref());
            self.err(&v.span(), key, reason);
            return None;
        };
        if addr.port() == 0 {
            self.err(&v.span(), key, "port 0 is not allowed");
            return None;
        }
        Some(addr)
    }

    fn interface(&mut self, v: &S<String>, key: &str) -> String {
        let name = v.get_ref();
        if !self.env.interface_exists(name) {
            self.err(&v.span(), key, format!("interface {name:?} does not exist"));
        }
        name.clone()
    }

    fn argv(&mut self, v: &S<Vec<S<String>>>, key: &str) -> Vec<String> {
        let argv: Vec<String> = v.get_ref().iter().map(|a| a.get_ref().clone()).collect();
        if argv.first().is_none_or(|a| a.is_empty()) {
            self.err(
                &v.span(),
                key,
                "must name a program to run: [\"/path/to/program\", \"arg\", ...]",
            );
        } else if self.script_security
            && let Some(reason) = self.env.script_problem(&argv[0], self.script_user.as_ref())
        {
            self.err(&v.span(), key, reason);
        }
        argv
    }

    fn opt_argv(&mut self, v: &Option<S<Vec<S<String>>>>, key: &str) -> Option<Vec<String>> {
        v.as_ref().map(|v| self.argv(v, key))
    }

    fn table_size(&mut self, v: &S<i64>, key: &str) -> Option<u32> {
        let n = *v.get_ref();
        match u32::try_from(n) {
            Ok(size) if is_prime(size) => Some(size),
            _ => {
                self.err(&v.span(), key, format!("table size {n} is not a prime"));
                None
            }
        }
    }

    pub(crate) fn config(&mut self, raw: &RawConfig) -> Config {
        let daemon = self.daemon(raw.daemon.as_ref().unwrap_or(&RawDaemon::default()));
        self.script_security = daemon.script_security;
        self.script_user = daemon.script_user.clone();
        let services = self.services(&raw.service, &daemon);
        self.snat_ports_clear_of_vips(raw, &services);
        let vrrp_instances = self.vrrp_instances(&raw.vrrp_instance);
        let sync = raw
            .sync
            .as_ref()
            .map(|s| self.sync(s, &vrrp_instances, raw, &services));
        Config {
            daemon,
            services,
            vrrp_instances,
            sync,
        }
    }

    fn sync(
        &mut self,
        v: &S<RawSync>,
        instances: &[VrrpInstance],
        raw: &RawConfig,
        services: &[Service],
    ) -> Sync {
        let p = "sync";
        let span = v.span();
        let r = v.get_ref();
        let src_key = key(p, "source_address");
        let source_address = self
            .required(&r.source_address, &span, &src_key)
            .and_then(|a| self.ipv4(a, &src_key))
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let peers_key = key(p, "peers");
        let mut peers = Vec::new();
        if let Some(list) = self.required(&r.peers, &span, &peers_key) {
            if list.get_ref().is_empty() {
                self.err(
                    &list.span(),
                    &peers_key,
                    "must list at least one peer address",
                );
            }
            for (i, a) in list.get_ref().iter().enumerate() {
                let k = format!("{peers_key}[{i}]");
                if let Some(ip) = self.ipv4(a, &k) {
                    if ip == source_address {
                        self.err(&a.span(), &k, "is this node's own source_address");
                    }
                    peers.push(ip);
                }
            }
        }
        let port = self.int(&r.port, &key(p, "port"), 1..=65535, DEFAULT_SYNC_PORT);
        let kf_key = key(p, "key_file");
        let key_file = match self.required(&r.key_file, &span, &kf_key) {
            Some(f) if !f.get_ref().starts_with('/') => {
                self.err(&f.span(), &kf_key, "must be an absolute path");
                PathBuf::new()
            }
            Some(f) => PathBuf::from(f.get_ref()),
            None => PathBuf::new(),
        };
        let iv_key = key(p, "interval");
        let interval = self.duration(&r.interval, &iv_key, DEFAULT_SYNC_INTERVAL);
        if let Some(d) = &r.interval
            && !(Duration::from_millis(10)..=secs(60)).contains(&interval)
        {
            self.err(&d.span(), &iv_key, "must be from 10ms to 60s");
        }
        let vi_key = key(p, "vrrp_instance");
        let instance = match (&r.vrrp_instance, instances) {
            (Some(n), _) => {
                let found = instances.iter().find(|i| i.name == *n.get_ref());
                if found.is_none() {
                    let reason = format!("no [[vrrp_instance]] is named {:?}", n.get_ref());
                    self.err(&n.span(), &vi_key, reason);
                }
                found
            }
            (None, [only]) => Some(only),
            (None, []) => {
                self.err(
                    &span,
                    p,
                    "needs a [[vrrp_instance]]: only the VRRP master sends its flows",
                );
                None
            }
            (None, _) => {
                self.err(
                    &span,
                    &vi_key,
                    "there are several [[vrrp_instance]]s: name the one whose master sends",
                );
                None
            }
        };
        if let Some(inst) = instance {
            self.snat_moves_with_vip(inst, raw, services);
        }
        Sync {
            source_address,
            peers,
            port,
            key_file,
            interval,
            vrrp_instance: instance.map(|i| i.name.clone()).unwrap_or_default(),
        }
    }

    /// A nat service whose SNAT address carries VIPs (the VIP itself, as
    /// `[sync]` suggests) must not translate to one of their ports: the
    /// datapath looks VIPs up first, so a backend's reply to that port would
    /// be taken for a new connection to the service.
    fn snat_ports_clear_of_vips(&mut self, raw: &RawConfig, services: &[Service]) {
        for (i, (svc, rs)) in services.iter().zip(&raw.service).enumerate() {
            let Some(snat) = svc
                .snat_address
                .filter(|_| svc.forwarding == Forwarding::Nat)
            else {
                continue;
            };
            let clash = services.iter().find(|o| {
                o.vip.ip() == snat
                    && o.protocol == svc.protocol
                    && (svc.snat_ports.first..=svc.snat_ports.last).contains(&o.vip.port())
            });
            if let Some(o) = clash {
                let reason = format!(
                    "{}-{} includes port {} of the VIP {}/{} on the SNAT address: replies to it would be \
                     taken for new connections to that service; choose ports that avoid it",
                    svc.snat_ports.first,
                    svc.snat_ports.last,
                    o.vip.port(),
                    o.vip,
                    o.protocol
                );
                let span = rs
                    .get_ref()
                    .snat_ports
                    .as_ref()
                    .map_or_else(|| rs.span(), |a| a.span());
                self.err(&span, &format!("service[{i}].snat_ports"), reason);
            }
        }
    }

    /// Synced nat flows survive a failover only if the backends' replies
    /// follow the new master: they go to the SNAT address, so it must be one
    /// of the instance's virtual addresses.
    fn snat_moves_with_vip(&mut self, inst: &VrrpInstance, raw: &RawConfig, services: &[Service]) {
        for (i, (svc, rs)) in services.iter().zip(&raw.service).enumerate() {
            if svc.forwarding != Forwarding::Nat {
                continue;
            }
            let moves = svc
                .snat_address
                .is_some_and(|a| inst.virtual_ipaddress.iter().any(|v| v.addr == a));
            if moves {
                continue;
            }
            let k = format!("service[{i}].snat_address");
            let reason = format!(
                "with [sync], a nat service's snat_address must be a virtual_ipaddress of vrrp_instance {:?} \
                 (the VIP itself will do): backends answer to it, so it must move to the new master",
                inst.name
            );
            let span = rs
                .get_ref()
                .snat_address
                .as_ref()
                .map_or_else(|| rs.span(), |a| a.span());
            self.err(&span, &k, reason);
        }
    }

    fn daemon(&mut self, raw: &RawDaemon) -> Daemon {
        let p = "daemon";
        let admin_socket = match &raw.admin_socket {
            Some(v) if !v.get_ref().starts_with('/') => {
                self.err(
                    &v.span(),
                    &key(p, "admin_socket"),
                    "must be an absolute path",
                );
                PathBuf::from(DEFAULT_ADMIN_SOCKET)
            }
            Some(v) => PathBuf::from(v.get_ref()),
            None => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        };
        let metrics_listen = match &raw.metrics_listen {
            Some(v) => v.get_ref().parse().unwrap_or_else(|_| {
                let reason = format!("invalid address {:?}: expected \"ip:port\"", v.get_ref());
                self.err(&v.span(), &key(p, "metrics_listen"), reason);
                DEFAULT_METRICS_LISTEN
            }),
            None => DEFAULT_METRICS_LISTEN,
        };
        let table_size = match &raw.table_size {
            Some(v) => self.table_size(v, &key(p, "table_size")),
            None => None,
        };
        let log_level = match &raw.log_level {
            Some(v) if v.get_ref().trim().is_empty() => {
                self.err(&v.span(), &key(p, "log_level"), "must not be empty");
                "info".to_owned()
            }
            Some(v) => v.get_ref().clone(),
            None => "info".to_owned(),
        };
        let pin_dir = match &raw.pin_dir {
            Some(v) if !v.get_ref().starts_with('/') => {
                self.err(&v.span(), &key(p, "pin_dir"), "must be an absolute path");
                None
            }
            Some(v) => Some(PathBuf::from(v.get_ref())),
            None => None,
        };
        let u32_range = 1..=U32_MAX;
        Daemon {
            admin_socket,
            metrics_listen,
            xdp_mode: raw
                .xdp_mode
                .as_ref()
                .map_or(XdpMode::Auto, |v| *v.get_ref()),
            flow_capacity: self.int(
                &raw.flow_capacity,
                &key(p, "flow_capacity"),
                u32_range.clone(),
                lb_ebpf::abi::DEFAULT_FLOW_CAPACITY,
            ),
            max_new_flows_per_cpu: self.int(
                &raw.max_new_flows_per_cpu,
                &key(p, "max_new_flows_per_cpu"),
                0..=i64::from(u32::MAX),
                125_000,
            ),
            max_vips: self.int(
                &raw.max_vips,
                &key(p, "max_vips"),
                u32_range.clone(),
                lb_ebpf::abi::DEFAULT_MAX_VIPS,
            ),
            max_backends: self.int(
                &raw.max_backends,
                &key(p, "max_backends"),
                u32_range,
                lb_ebpf::abi::DEFAULT_MAX_BACKENDS,
            ),
            table_size: table_size.unwrap_or(DEFAULT_TABLE_SIZE),
            log_level,
            pin_dir,
            script_security: raw.script_security.as_ref().is_none_or(|v| *v.get_ref()),
            script_user: raw.script_user.as_ref().and_then(|v| {
                let name = v.get_ref();
                let found = self.env.user_ids(name);
                if found.is_none() {
                    let reason = format!("no user {name:?} on this host");
                    self.err(&v.span(), &key(p, "script_user"), reason);
                }
                found.map(|(uid, gid)| ScriptUser {
                    name: name.clone(),
                    uid,
                    gid,
                })
            }),
        }
    }

    fn services(&mut self, raw: &[S<RawService>], daemon: &Daemon) -> Vec<Service> {
        let mut by_key: HashMap<ServiceKey, String> = HashMap::new();
        let mut by_name: HashMap<String, String> = HashMap::new();
        let mut backends_total = 0usize;
        let mut services = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let p = format!("service[{i}]");
            let r = s.get_ref();
            if i == daemon.max_vips as usize {
                let reason = format!("more services than daemon.max_vips ({})", daemon.max_vips);
                self.err(&s.span(), &p, reason);
            }
            if let Some(name) = &r.name {
                let k = key(&p, "name");
                if name.get_ref().is_empty() {
                    self.err(&name.span(), &k, "must not be empty");
                } else if let Some(first) = by_name.get(name.get_ref()) {
                    let reason = format!(
                        "duplicate service name {:?} (already used by {first})",
                        name.get_ref()
                    );
                    self.err(&name.span(), &k, reason);
                } else {
                    by_name.insert(name.get_ref().clone(), p.clone());
                }
            }
            let service = self.service(&p, s, daemon);
            // `service` gives an invalid VIP port 0, already reported.
            if let Some(v) = &r.vip
                && service.vip.port() != 0
            {
                match by_key.get(&service.key()) {
                    Some(first) => {
                        let reason = format!(
                            "duplicate VIP {}/{} (already defined by {first})",
                            service.vip, service.protocol
                        );
                        self.err(&v.span(), &key(&p, "vip"), reason);
                    }
                    None => {
                        by_key.insert(service.key(), p.clone());
                    }
                }
            }
            for (j, b) in r.backend.iter().enumerate() {
                backends_total += 1;
                if backends_total == daemon.max_backends as usize + 1 {
                    let reason = format!(
                        "more backends in all services than daemon.max_backends ({})",
                        daemon.max_backends
                    );
                    self.err(&b.span(), &format!("{p}.backend[{j}]"), reason);
                }
            }
            services.push(service);
        }
        services
    }

    fn service(&mut self, p: &str, s: &S<RawService>, daemon: &Daemon) -> Service {
        let span = s.span();
        let r = s.get_ref();
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let vip_key = key(p, "vip");
        let vip = self
            .required(&r.vip, &span, &vip_key)
            .and_then(|v| self.endpoint(v, &vip_key))
            .unwrap_or(unspecified);
        let if_key = key(p, "interface");
        let interface = self
            .required(&r.interface, &span, &if_key)
            .map(|v| self.interface(v, &if_key))
            .unwrap_or_default();
        let fwd_key = key(p, "forwarding");
        // `None` (missing, already reported) must not set off the checks
        // that depend on the mode.
        let mode = self
            .required(&r.forwarding, &span, &fwd_key)
            .map(|v| *v.get_ref());
        let forwarding = mode.unwrap_or(Forwarding::Nat);
        let scheduler = match &r.scheduler {
            Some(v)
                if matches!(v.get_ref(), Scheduler::Lc | Scheduler::Wlc)
                    && r.backend.len() > LEAST_MAX_BACKENDS as usize =>
            {
                let reason = format!(
                    "scheduler \"{}\" scans every backend for each new flow: at most {LEAST_MAX_BACKENDS} backends, not {}",
                    v.get_ref(),
                    r.backend.len()
                );
                self.err(&v.span(), &key(p, "scheduler"), reason);
                *v.get_ref()
            }
            Some(v) => *v.get_ref(),
            None => Scheduler::Mh,
        };
        let nat = mode.is_none_or(|m| m == Forwarding::Nat);
        let snat_address = r.snat_address.as_ref().and_then(|v| {
            let k = key(p, "snat_address");
            if !nat {
                self.err(&v.span(), &k, "only valid with forwarding = \"nat\"");
                return None;
            }
            let ip = self.ip(v, &k)?;
            self.same_family(ip, vip, &v.span(), &k).then_some(ip)
        });
        let tun_source = r.tun_source.as_ref().and_then(|v| {
            let k = key(p, "tun_source");
            if mode.is_some_and(|m| m != Forwarding::Tun) {
                self.err(&v.span(), &k, "only valid with forwarding = \"tun\"");
                return None;
            }
            let text = v.get_ref();
            let (addr, len) = text.split_once('/').map_or((text.as_str(), None), |(a, l)| (a, Some(l)));
            // At most 16 host bits vary per flow, so the prefix is at least
            // /16 (IPv4) or /112 (IPv6).
            let parsed = addr.parse::<IpAddr>().ok().and_then(|a| {
                let bits: u8 = if a.is_ipv4() { 32 } else { 128 };
                let l = len.map_or(Some(bits), |l| l.parse::<u8>().ok())?;
                (bits - 16..=bits).contains(&l).then_some((a, l))
            });
            match parsed {
                Some((a, l)) => self.same_family(a, vip, &v.span(), &k).then_some((a, l)),
                None => {
                    let reason = format!(
                        "invalid {text:?}: expected an address or prefix from /16 to /32 (IPv6: /112 to /128), like \"198.19.0.0/24\""
                    );
                    self.err(&v.span(), &k, reason);
                    None
                }
            }
        });
        let persistence = r.persistence_timeout.as_ref().map(|v| {
            let t = self.duration(&Some(v.clone()), &key(p, "persistence_timeout"), Duration::ZERO);
            let all_ones = if vip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::BROADCAST)
            } else {
                IpAddr::V6(Ipv6Addr::from(u128::MAX))
            };
            let mask = r.persistence_granularity.as_ref().map_or(all_ones, |g| {
                let k = key(p, "persistence_granularity");
                match netmask(g.get_ref(), vip.is_ipv4()) {
                    Some(m) => m,
                    None => {
                        let reason = if vip.is_ipv4() {
                            format!(
                                "invalid netmask {:?}: expected a contiguous netmask like \"255.255.255.0\"",
                                g.get_ref()
                            )
                        } else {
                            format!(
                                "invalid IPv6 granularity {:?}: expected a prefix length like \"64\" or a contiguous netmask like \"ffff:ffff:ffff:ffff::\"",
                                g.get_ref()
                            )
                        };
                        self.err(&g.span(), &k, reason);
                        all_ones
                    }
                }
            });
            (t, mask)
        });
        // keepalived reads a timeout of 0 as "no persistence".
        let persistence = persistence.filter(|(t, _)| !t.is_zero());
        if r.persistence_timeout.is_none()
            && let Some(g) = &r.persistence_granularity
        {
            self.err(
                &g.span(),
                &key(p, "persistence_granularity"),
                "needs persistence_timeout",
            );
        }
        let snat_ports = match &r.snat_ports {
            Some(v) => {
                let k = key(p, "snat_ports");
                if !nat {
                    self.err(&v.span(), &k, "only valid with forwarding = \"nat\"");
                }
                self.port_range(v, &k)
            }
            None => DEFAULT_SNAT_PORTS,
        };
        let (table_size, table_key) = match &r.table_size {
            Some(v) => {
                let k = key(p, "table_size");
                (self.table_size(v, &k), Some((v.span(), k)))
            }
            None => (None, None),
        };
        let table_size = table_size.unwrap_or(daemon.table_size);
        if r.backend.len() > table_size as usize {
            let reason = format!(
                "table size {table_size} is smaller than the number of backends ({})",
                r.backend.len()
            );
            match table_key {
                Some((span, k)) => self.err(&span, &k, reason),
                None => self.err(&span, p, reason),
            }
        }
        let check = r
            .check
            .as_ref()
            .and_then(|c| self.check(c, &span, &key(p, "check")));
        let backends = self.backends(p, r, vip, mode, check.as_ref());
        let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let quorum: u32 = self.int(&r.quorum, &key(p, "quorum"), 1..=U32_MAX, 1);
        if let Some(v) = &r.quorum
            && u64::from(quorum) > total_weight
        {
            let reason = format!(
                "quorum {quorum} is larger than the total backend weight {total_weight}, so the service can never be up"
            );
            self.err(&v.span(), &key(p, "quorum"), reason);
        }
        let hysteresis: u32 = self.int(&r.hysteresis, &key(p, "hysteresis"), 0..=U32_MAX, 0);
        if let Some(v) = &r.hysteresis
            && hysteresis >= quorum
        {
            let reason = format!("hysteresis {hysteresis} must be smaller than quorum ({quorum})");
            self.err(&v.span(), &key(p, "hysteresis"), reason);
        }
        let sorry_server = r.sorry_server.as_ref().and_then(|v| {
            let k = key(p, "sorry_server");
            let addr = self.endpoint(v, &k)?;
            if !self.same_family(addr.ip(), vip, &v.span(), &k) {
                return None;
            }
            if let Some(j) = backends.iter().position(|b| b.address == addr) {
                let reason = format!("sorry_server {addr} is also {p}.backend[{j}]");
                self.err(&v.span(), &k, reason);
            }
            Some(addr)
        });
        let observe = match &r.observe {
            Some(v) if *v.get_ref() == Observe::Layer4 && forwarding != Forwarding::Nat => {
                let reason = "observe = \"layer4\" needs forwarding = \"nat\": other modes' replies bypass the LB";
                self.err(&v.span(), &key(p, "observe"), reason);
                Observe::None
            }
            Some(v)
                if *v.get_ref() == Observe::Layer4
                    && backends.iter().all(|b| b.check.is_none()) =>
            {
                let reason = "observe = \"layer4\" needs a health check ([service.check] or a backend's own): nothing else would bring a backend it took down back";
                self.err(&v.span(), &key(p, "observe"), reason);
                Observe::None
            }
            Some(v) => *v.get_ref(),
            None if forwarding == Forwarding::Nat => Observe::Layer4,
            None => Observe::None,
        };
        Service {
            name: r.name.as_ref().map(|n| n.get_ref().clone()),
            vip,
            protocol: r.protocol.as_ref().map_or(Protocol::Tcp, |v| *v.get_ref()),
            interface,
            forwarding,
            scheduler,
            table_size,
            snat_address,
            snat_ports,
            tun_source,
            persistence,
            tcp_timeout: self.whole_seconds(&r.tcp_timeout, &key(p, "tcp_timeout"), 900),
            udp_timeout: self.whole_seconds(&r.udp_timeout, &key(p, "udp_timeout"), 300),
            quorum,
            hysteresis,
            sorry_server,
            inhibit_on_failure: Self::flag(&r.inhibit_on_failure),
            alpha: Self::flag(&r.alpha),
            observe,
            error_limit: self.int(&r.error_limit, &key(p, "error_limit"), 1..=1_000_000, 10),
            syn_timeout: self.duration(
                &r.syn_timeout,
                &key(p, "syn_timeout"),
                Duration::from_secs(2),
            ),
            check,
            backends,
        }
    }

    fn port_range(&mut self, v: &S<String>, k: &str) -> PortRange {
        let text = v.get_ref();
        let parsed = text.split_once('-').and_then(|(a, b)| {
            Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
        });
        match parsed {
            Some((0, _)) => {
                self.err(&v.span(), k, "port 0 is not allowed");
                DEFAULT_SNAT_PORTS
            }
            Some((first, last)) if first > last => {
                self.err(
                    &v.span(),
                    k,
                    format!("range {text:?} is inverted: {first} > {last}"),
                );
                DEFAULT_SNAT_PORTS
            }
            Some((first, last)) => PortRange { first, last },
            None => {
                let reason = format!(
                    "invalid port range {text:?}: expected \"first-last\", like \"1024-32767\""
                );
                self.err(&v.span(), k, reason);
                DEFAULT_SNAT_PORTS
            }
        }
    }

    fn backends(
        &mut self,
        p: &str,
        r: &RawService,
        vip: SocketAddr,
        mode: Option<Forwarding>,
        service_check: Option<&Check>,
    ) -> Vec<Backend> {
        let mut seen: HashMap<SocketAddr, String> = HashMap::new();
        let mut backends = Vec::with_capacity(r.backend.len());
        for (j, b) in r.backend.iter().enumerate() {
            let bp = format!("{p}.backend[{j}]");
            let raw: &RawBackend = b.get_ref();
            let addr_key = key(&bp, "address");
            let address = self
                .required(&raw.address, &b.span(), &addr_key)
                .and_then(|v| self.endpoint(v, &addr_key).map(|a| (a, v.span())));
            let address = match address {
                Some((addr, span)) => {
                    self.same_family(addr.ip(), vip, &span, &addr_key);
                    if addr == vip {
                        self.err(&span, &addr_key, "is the service's own VIP");
                    }
                    if let Some(first) = seen.get(&addr) {
                        let reason =
                            format!("duplicate backend {addr} (already listed as {first})");
                        self.err(&span, &addr_key, reason);
                    } else {
                        seen.insert(addr, bp.clone());
                    }
                    if matches!(mode, Some(Forwarding::Dr | Forwarding::Tun))
                        && vip.port() != 0
                        && addr.port() != vip.port()
                    {
                        let m = if mode == Some(Forwarding::Dr) {
                            "dr"
                        } else {
                            "tun"
                        };
                        let reason = format!(
                            "{m} forwarding cannot change ports: backend port {} differs from the VIP port {} (use forwarding = \"nat\")",
                            addr.port(),
                            vip.port()
                        );
                        self.err(&span, &addr_key, reason);
                    }
                    addr
                }
                None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            };
            let weight = self.int(&raw.weight, &key(&bp, "weight"), 0..=65535, 1);
            let check = match &raw.check {
                Some(c) => self.check(c, &b.span(), &key(&bp, "check")),
                None => service_check.cloned(),
            };
            backends.push(Backend {
                address,
                weight,
                check,
            });
        }
        backends
    }

    /// `owner` is the span of the service or backend table holding the
    /// check, where a missing key is reported.
    fn check(&mut self, r: &RawCheck, owner: &Range<usize>, p: &str) -> Option<Check> {
        let kind_key = key(p, "type");
        let kind = self
            .required(&r.kind, owner, &kind_key)
            .map(|v| *v.get_ref());
        let is_http = matches!(kind, Some(CheckType::Http | CheckType::Https));
        let is_script = kind == Some(CheckType::Script);
        if kind.is_some() {
            let http_only = [
                ("path", r.path.as_ref().map(S::span)),
                ("status", r.status.as_ref().map(S::span)),
                ("host", r.host.as_ref().map(S::span)),
                ("digest", r.digest.as_ref().map(S::span)),
                ("body_regex", r.body_regex.as_ref().map(S::span)),
            ];
            let script_only = [
                ("command", r.command.as_ref().map(S::span)),
                ("timeout", r.timeout.as_ref().map(S::span)),
            ];
            let network_only = [
                ("connect_timeout", r.connect_timeout.as_ref().map(S::span)),
                ("connect_port", r.connect_port.as_ref().map(S::span)),
                ("source_address", r.source_address.as_ref().map(S::span)),
            ];
            let misplaced = [
                (
                    !is_http,
                    &http_only[..],
                    "only valid for http and https checks",
                ),
                (!is_script, &script_only[..], "only valid for script checks"),
                (is_script, &network_only[..], "not used by script checks"),
            ];
            for (wrong, keys, reason) in misplaced {
                for (name, span) in keys {
                    if let (true, Some(span)) = (wrong, span) {
                        self.err(span, &key(p, name), reason.to_string());
                    }
                }
            }
        }
        let delay_loop = self.positive_duration(&r.delay_loop, &key(p, "delay_loop"), secs(5));
        let connect_timeout =
            self.positive_duration(&r.connect_timeout, &key(p, "connect_timeout"), secs(5));
        let connect_port = r
            .connect_port
            .as_ref()
            .map(|_| self.int(&r.connect_port, &key(p, "connect_port"), 1..=65535, 1u16));
        let fall = match (&r.fall, &r.retry) {
            (Some(_), Some(retry)) => {
                self.err(
                    &retry.span(),
                    &key(p, "retry"),
                    "set either `fall` or `retry`, not both",
                );
                2
            }
            (None, Some(_)) => self.int::<u32>(&r.retry, &key(p, "retry"), 0..=999, 1) + 1,
            _ => self.int(&r.fall, &key(p, "fall"), 1..=1000, 2),
        };
        let rise = self.int(&r.rise, &key(p, "rise"), 1..=1000, 1);
        let delay_before_retry = self.positive_duration(
            &r.delay_before_retry,
            &key(p, "delay_before_retry"),
            secs(1),
        );
        let source_address = r
            .source_address
            .as_ref()
            .and_then(|v| self.ip(v, &key(p, "source_address")));
        let kind = match kind? {
            CheckType::Tcp => CheckKind::Tcp,
            CheckType::Http => CheckKind::Http(self.http(r, p)),
            CheckType::Https => CheckKind::Https(self.http(r, p)),
            CheckType::Script => CheckKind::Script(self.script(r, owner, p, delay_loop)),
        };
        Some(Check {
            kind,
            delay_loop,
            connect_timeout,
            connect_port,
            fall,
            rise,
            delay_before_retry,
            source_address,
        })
    }

    fn http(&mut self, r: &RawCheck, p: &str) -> HttpCheck {
        let path = match &r.path {
            Some(v) if !v.get_ref().starts_with('/') => {
                self.err(&v.span(), &key(p, "path"), "must start with '/'");
                "/".to_owned()
            }
            Some(v) => v.get_ref().clone(),
            None => "/".to_owned(),
        };
        let status = match &r.status {
            Some(list) if list.get_ref().is_empty() => {
                self.err(
                    &list.span(),
                    &key(p, "status"),
                    "must list at least one status code or range",
                );
                Vec::new()
            }
            Some(list) => list
                .get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.status_range(v, &format!("{p}.status[{i}]")))
                .collect(),
            None => vec![StatusRange {
                first: 200,
                last: 299,
            }],
        };
        let host = match &r.host {
            Some(v) if v.get_ref().is_empty() => {
                self.err(&v.span(), &key(p, "host"), "must not be empty");
                None
            }
            other => other.as_ref().map(|v| v.get_ref().clone()),
        };
        let digest = r.digest.as_ref().and_then(|v| {
            let d = v.get_ref();
            if d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
                Some(d.to_ascii_lowercase())
            } else {
                self.err(
                    &v.span(),
                    &key(p, "digest"),
                    "must be 32 hexadecimal digits (an MD5 digest)",
                );
                None
            }
        });
        let body_regex = r
            .body_regex
            .as_ref()
            .and_then(|v| match regex::Regex::new(v.get_ref()) {
                Ok(_) => Some(v.get_ref().clone()),
                Err(e) => {
                    // regex's syntax errors draw a multi-line caret diagram; its
                    // last line alone says what is wrong, and keeps one error per
                    // output line.
                    let text = e.to_string();
                    let last = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    let reason = format!(
                        "invalid regex: {}",
                        last.trim().trim_start_matches("error: ")
                    );
                    self.err(&v.span(), &key(p, "body_regex"), reason);
                    None
                }
            });
        HttpCheck {
            path,
            status,
            host,
            digest,
            body_regex,
        }
    }

    fn status_range(&mut self, v: &S<String>, k: &str) -> Option<StatusRange> {
        let text = v.get_ref();
        let (a, b) = text.split_once('-').unwrap_or((text, text));
        let parsed = a
            .trim()
            .parse::<u16>()
            .ok()
            .zip(b.trim().parse::<u16>().ok());
        match parsed {
            Some((first, last))
                if (100..=599).contains(&first) && (100..=599).contains(&last) && first <= last =>
            {
                Some(StatusRange { first, last })
            }
            _ => {
                let reason = format!(
                    "invalid status {text:?}: expected a code or an ascending range within 100-599, like \"200\" or \"200-299\""
                );
                self.err(&v.span(), k, reason);
                None
            }
        }
    }

    fn script(
        &mut self,
        r: &RawCheck,
        owner: &Range<usize>,
        p: &str,
        delay_loop: Duration,
    ) -> ScriptCheck {
        let k = key(p, "command");
        let command = self
            .required(&r.command, owner, &k)
            .map(|v| self.argv(v, &k))
            .unwrap_or_default();
        ScriptCheck {
            command,
            timeout: self.positive_duration(&r.timeout, &key(p, "timeout"), delay_loop),
        }
    }

    fn vrrp_instances(&mut self, raw: &[S<RawVrrpInstance>]) -> Vec<VrrpInstance> {
        let mut names: HashMap<String, String> = HashMap::new();
        let mut vrids: HashMap<(String, u8), String> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let p = format!("vrrp_instance[{i}]");
            let r = v.get_ref();
            let inst = self.vrrp_instance(&p, v);
            if let Some(n) = &r.name {
                if let Some(first) = names.get(n.get_ref()) {
                    let reason = format!(
                        "duplicate vrrp_instance name {:?} (already used by {first})",
                        n.get_ref()
                    );
                    self.err(&n.span(), &key(&p, "name"), reason);
                } else {
                    names.insert(n.get_ref().clone(), p.clone());
                }
            }
            if let (Some(id), Some(_)) = (&r.virtual_router_id, &r.interface)
                && inst.virtual_router_id != 0
            {
                let slot = (inst.interface.clone(), inst.virtual_router_id);
                if let Some(first) = vrids.get(&slot) {
                    let reason = format!(
                        "virtual_router_id {} is already used on {} by {first}",
                        inst.virtual_router_id, inst.interface
                    );
                    self.err(&id.span(), &key(&p, "virtual_router_id"), reason);
                } else {
                    vrids.insert(slot, p.clone());
                }
            }
            out.push(inst);
        }
        out
    }

    fn vrrp_instance(&mut self, p: &str, v: &S<RawVrrpInstance>) -> VrrpInstance {
        let span = v.span();
        let r = v.get_ref();
        let name_key = key(p, "name");
        let name = match self.required(&r.name, &span, &name_key) {
            Some(n) if n.get_ref().is_empty() => {
                self.err(&n.span(), &name_key, "must not be empty");
                String::new()
            }
            Some(n) => n.get_ref().clone(),
            None => String::new(),
        };
        let if_key = key(p, "interface");
        let interface = self
            .required(&r.interface, &span, &if_key)
            .map(|v| self.interface(v, &if_key))
            .unwrap_or_default();
        let vrid_key = key(p, "virtual_router_id");
        // 0 is never a valid id, so it marks "missing or invalid" below.
        let virtual_router_id = match self.required(&r.virtual_router_id, &span, &vrid_key) {
            Some(_) => self.int(&r.virtual_router_id, &vrid_key, 1..=255, 0u8),
            None => 0,
        };
        let version = match &r.version {
            None => VrrpVersion::V2,
            Some(n) => match n.get_ref() {
                2 => VrrpVersion::V2,
                3 => VrrpVersion::V3,
                other => {
                    self.err(
                        &n.span(),
                        &key(p, "version"),
                        format!("version {other} is not 2 or 3"),
                    );
                    VrrpVersion::V2
                }
            },
        };
        let advert_int = self.advert_int(r, p, version);
        let preempt_delay =
            self.duration(&r.preempt_delay, &key(p, "preempt_delay"), Duration::ZERO);
        if let Some(d) = &r.preempt_delay
            && preempt_delay > secs(1000)
        {
            self.err(
                &d.span(),
                &key(p, "preempt_delay"),
                "must be at most 1000s (keepalived's limit)",
            );
        }
        let vip_key = key(p, "virtual_ipaddress");
        let virtual_ipaddress = match self.required(&r.virtual_ipaddress, &span, &vip_key) {
            Some(list) if list.get_ref().is_empty() => {
                self.err(&list.span(), &vip_key, "must list at least one address");
                Vec::new()
            }
            Some(list) => list
                .get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, a)| self.virtual_address(a, &format!("{vip_key}[{i}]")))
                .collect(),
            None => Vec::new(),
        };
        let unicast_src_ip = r
            .unicast_src_ip
            .as_ref()
            .and_then(|a| self.ip(a, &key(p, "unicast_src_ip")));
        let unicast_peer: Vec<IpAddr> = r.unicast_peer.as_ref().map_or_else(Vec::new, |list| {
            list.get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, a)| self.ip(a, &format!("{p}.unicast_peer[{i}]")))
                .collect()
        });
        if let Some(src) = &r.unicast_src_ip
            && r.unicast_peer
                .as_ref()
                .is_none_or(|l| l.get_ref().is_empty())
        {
            self.err(
                &src.span(),
                &key(p, "unicast_src_ip"),
                "needs at least one unicast_peer",
            );
        }
        let auth_pass = r.auth_pass.as_ref().map(|a| {
            let k = key(p, "auth_pass");
            let len = a.get_ref().chars().count();
            if version == VrrpVersion::V3 {
                self.err(
                    &a.span(),
                    &k,
                    "only valid with version 2 (VRRPv3 has no authentication)",
                );
            } else if len == 0 || len > 8 {
                let reason =
                    format!("is {len} characters; VRRPv2 PASS authentication carries 1 to 8");
                self.err(&a.span(), &k, reason);
            }
            a.get_ref().clone()
        });
        let track_interface = r
            .track_interface
            .iter()
            .enumerate()
            .map(|(i, t)| self.track_interface(t, &format!("{p}.track_interface[{i}]")))
            .collect();
        let mut script_names: HashMap<String, String> = HashMap::new();
        let mut track_script = Vec::with_capacity(r.track_script.len());
        for (i, t) in r.track_script.iter().enumerate() {
            let tp = format!("{p}.track_script[{i}]");
            let script = self.track_script(t, &tp);
            if let Some(n) = &t.get_ref().name
                && !script.name.is_empty()
            {
                if let Some(first) = script_names.get(&script.name) {
                    let reason = format!(
                        "duplicate track_script name {:?} (already used by {first})",
                        script.name
                    );
                    self.err(&n.span(), &key(&tp, "name"), reason);
                } else {
                    script_names.insert(script.name.clone(), tp);
                }
            }
            track_script.push(script);
        }
        VrrpInstance {
            name,
            interface,
            virtual_router_id,
            priority: self.int(&r.priority, &key(p, "priority"), 1..=255, 100u8),
            advert_int,
            version,
            nopreempt: Self::flag(&r.nopreempt),
            preempt_delay,
            virtual_ipaddress,
            unicast_src_ip,
            unicast_peer,
            auth_pass,
            track_interface,
            track_script,
            notify_master: self.opt_argv(&r.notify_master, &key(p, "notify_master")),
            notify_backup: self.opt_argv(&r.notify_backup, &key(p, "notify_backup")),
            notify_fault: self.opt_argv(&r.notify_fault, &key(p, "notify_fault")),
            notify: self.opt_argv(&r.notify, &key(p, "notify")),
            garp_master_delay: self.duration(
                &r.garp_master_delay,
                &key(p, "garp_master_delay"),
                secs(5),
            ),
            garp_master_repeat: self.int(
                &r.garp_master_repeat,
                &key(p, "garp_master_repeat"),
                1..=255,
                5,
            ),
        }
    }

    /// The advert field is 8 bits of seconds in v2 and 12 bits of
    /// centiseconds in v3; reject what the wire cannot carry.
    fn advert_int(&mut self, r: &RawVrrpInstance, p: &str, version: VrrpVersion) -> Duration {
        let k = key(p, "advert_int");
        let d = self.duration(&r.advert_int, &k, secs(1));
        let Some(v) = &r.advert_int else { return d };
        let ok = match version {
            VrrpVersion::V2 => d.subsec_nanos() == 0 && (1..=255).contains(&d.as_secs()),
            VrrpVersion::V3 => {
                d.as_nanos().is_multiple_of(10_000_000)
                    && (1..=4095).contains(&(d.as_millis() / 10))
            }
        };
        if ok {
            return d;
        }
        let reason = match version {
            VrrpVersion::V2 => "must be whole seconds from 1s to 255s for version 2",
            VrrpVersion::V3 => "must be a multiple of 10ms from 10ms to 40950ms for version 3",
        };
        self.err(&v.span(), &k, reason);
        secs(1)
    }

    fn virtual_address(&mut self, v: &S<String>, k: &str) -> Option<VirtualAddress> {
        let text = v.get_ref();
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text.as_str(), None),
        };
        let Ok(addr) = ip.parse::<IpAddr>() else {
            self.err(
                &v.span(),
                k,
                format!("invalid address {text:?}: expected \"ip\" or \"ip/prefix\""),
            );
            return None;
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match len.map(str::parse::<u8>) {
            None => Some(VirtualAddress {
                addr,
                prefix_len: max,
            }),
            Some(Ok(prefix_len)) if prefix_len <= max => Some(VirtualAddress { addr, prefix_len }),
            Some(_) => {
                self.err(
                    &v.span(),
                    k,
                    format!("invalid prefix length in {text:?}: expected 0..={max}"),
                );
                None
            }
        }
    }

    fn track_weight(&mut self, n: i64, span: &Range<usize>, k: &str) -> i32 {
        if (-TRACK_WEIGHT..=TRACK_WEIGHT).contains(&n) {
            n as i32
        } else {
            self.err(
                span,
                k,
                format!("{n} is out of range -{TRACK_WEIGHT}..={TRACK_WEIGHT}"),
            );
            0
        }
    }

    fn track_interface(&mut self, t: &S<RawTrackInterface>, p: &str) -> TrackInterface {
        let (name, weight) = match t.get_ref() {
            RawTrackInterface::Name(n) => (n.clone(), 0),
            RawTrackInterface::Weighted(w) => (
                w.name.clone(),
                self.track_weight(w.weight, &t.span(), &key(p, "weight")),
            ),
        };
        if !self.env.interface_exists(&name) {
            self.err(&t.span(), p, format!("interface {name:?} does not exist"));
        }
        TrackInterface { name, weight }
    }

    fn track_script(&mut self, t: &S<RawTrackScript>, p: &str) -> TrackScript {
        let r = t.get_ref();
        let name = self
            .required(&r.name, &t.span(), &key(p, "name"))
            .map(|n| n.get_ref().clone())
            .unwrap_or_default();
        let cmd_key = key(p, "command");
        let command = self
            .required(&r.command, &t.span(), &cmd_key)
            .map(|c| self.argv(c, &cmd_key))
            .unwrap_or_default();
        let interval = self.positive_duration(&r.interval, &key(p, "interval"), secs(1));
        let weight = r.weight.as_ref().map_or(0, |w| {
            self.track_weight(*w.get_ref(), &w.span(), &key(p, "weight"))
        });
        TrackScript {
            name,
            command,
            interval,
            timeout: self.positive_duration(&r.timeout, &key(p, "timeout"), interval),
            weight,
            fall: self.int(&r.fall, &key(p, "fall"), 1..=1000, 1),
            rise: self.int(&r.rise, &key(p, "rise"), 1..=1000, 1),
        }
    }
}

/// A persistence granularity of the VIP's family as a mask: an IPv4
/// netmask; for IPv6 a prefix length ("64") or a netmask. Contiguous only.
fn netmask(text: &str, v4: bool) -> Option<IpAddr> {
    let contiguous = |m: u128| (!m).wrapping_add(1).is_power_of_two() || m == 0;
    if v4 {
        let m = text.parse::<Ipv4Addr>().ok()?;
        return contiguous(u128::from(u32::from(m)) | !u128::from(u32::MAX))
            .then_some(IpAddr::V4(m));
    }
    if let Ok(len) = text.parse::<u8>() {
        let m = u128::MAX
            .checked_shl(128 - u32::from(len.min(128)))
            .unwrap_or(0);
        return (len <= 128).then_some(IpAddr::V6(Ipv6Addr::from(m)));
    }
    let m = text.parse::<Ipv6Addr>().ok()?;
    contiguous(u128::from(m)).then_some(IpAddr::V6(m))
}
