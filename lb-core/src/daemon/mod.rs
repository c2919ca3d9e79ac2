//! The daemon: config → health checks → live backend sets → scheduler tables in
//! the datapath.
//!
//! One controller task owns the desired state. Health transitions and admin
//! actions mark a service dirty; dirty services are rebuilt together after a
//! short window ([`COALESCE`]) so a burst of changes becomes one table swap.
//! Readers (admin API, metrics) get a [`Status`] snapshot from an arc-swap
//! and never block the controller.

pub mod convert;
mod dataplane;
pub mod flow_sync;
pub mod status;
pub mod vrrp;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};

pub use dataplane::{Dataplane, Usage, UsageQuery, UsageSnapshot};
pub use status::{AdminError, AdminRequest, BackendStatus, ServiceStatus, Status, VrrpStatus};

use crate::{
    config::{self, ConfigErrors, ServiceKey},
    datapath::{DatapathError, balancer::BalancerError},
    health::{
        self, BuildError,
        passive::{Observer, Sample},
        probes::ProbeRecord,
        runner::{HealthEvent, Job, Runner, Schedule},
        service::{LiveSet, Service as Policy, ServiceSpec as PolicySpec},
    },
};
use tokio_util::sync::CancellationToken;

/// Changes arriving within this window are applied in one table swap.
pub const COALESCE: Duration = Duration::from_millis(50);
/// A service removed from the config stops taking new flows at once and is
/// unprogrammed when its flows are gone, or after this long.
pub const REMOVED_SERVICE_DRAIN: Duration = Duration::from_secs(60);
/// A backend left out of a table for want of an ARP answer is tried again
/// after this long.
const UNRESOLVED_RETRY: Duration = Duration::from_secs(5);
/// Flows idle longer than this do not hold up a removed service.
const REMOVAL_IDLE: Duration = Duration::from_secs(10);
/// How often the datapath's passive-health counters are read: one map read
/// per observed backend, 1000 a second at 1000 backends (4000 at the first
/// 250 ms, when `lb-bench-health` showed the daemon's CPU rising); a second
/// keeps detection around 1 s.
pub const OBSERVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Balancer(#[from] BalancerError),
    #[error("health check of service {service} backend {backend}: {error}")]
    Check {
        service: SocketAddr,
        backend: SocketAddr,
        error: BuildError,
    },
    #[error(transparent)]
    Vrrp(#[from] vrrp::VrrpSetupError),
    #[error(transparent)]
    Sync(#[from] flow_sync::SyncSetupError),
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
}

type Reply = oneshot::Sender<Result<String, AdminError>>;

/// What the admin API and metrics hold.
#[derive(Clone)]
pub struct DaemonHandle {
    status: Arc<ArcSwap<Status>>,
    admin: mpsc::Sender<(AdminRequest, Reply)>,
    dataplane: Dataplane,
}

impl DaemonHandle {
    pub fn status(&self) -> Arc<Status> {
        self.status.load_full()
    }

    /// Applies an admin change; `Ok` carries a one-line summary.
    pub async fn request(&self, r: AdminRequest) -> Result<String, AdminError> {
        let (tx, rx) = oneshot::channel();
        let gone = || AdminError::Datapath("the daemon is shutting down".into());
        self.admin.send((r, tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Datapath counters and active flows of every service and backend.
    pub async fn usage(&self) -> Result<UsageSnapshot, DatapathError> {
        let status = self.status();
        let queries = status
            .services
            .iter()
            .map(|s| UsageQuery {
                vip: s.vip,
                protocol: if s.protocol == "udp" {
                    config::Protocol::Udp
                } else {
                    config::Protocol::Tcp
                },
                interface: s.interface.clone(),
                backends: s.backends.iter().map(|b| b.address).collect(),
                idle: Duration::from_secs(s.idle_timeout_seconds),
                count_flows: true,
            })
            .collect();
        self.dataplane.usage(queries).await
    }
}

/// The longest any backend's check takes to see it fail, from the start.
fn health_settle(cfg: &config::Config) -> Duration {
    cfg.services
        .iter()
        .flat_map(|s| s.backends.iter().filter_map(|b| b.check.as_ref()))
        .map(|c| convert::check_spec(c, false, None).down_within())
        .max()
        .unwrap_or_default()
}

/// A node that starts knows nothing of its backends: every one is up until
/// its checks fail. Taking over from a running master at once (a master
/// back from a crash preempts) would send new flows to backends the master
/// had taken out, a hung one for seconds (the chaos run saw it). So
/// preemption waits at least until the checks can have seen a failure;
/// keepalived leaves this to `preempt_delay`. A node that finds no master
/// still takes over after its master-down interval.
fn hold_preemption(v: &config::VrrpInstance, settle: Duration) -> config::VrrpInstance {
    let mut v = v.clone();
    let settle = settle.min(MAX_PREEMPT_HOLD);
    if !v.nopreempt && v.preempt_delay < settle {
        tracing::info!(instance = %v.name, ?settle, "preemption held until health checks have settled");
        v.preempt_delay = settle;
    }
    v
}

/// The largest `preempt_delay` the config accepts (keepalived's).
const MAX_PREEMPT_HOLD: Duration = Duration::from_secs(1000);

#[derive(Clone, Debug, Default)]
struct Health {
    up: bool,
    reason: Option<String>,
    /// The check's probe record; `None` for a backend without a check. Kept
    /// with the health across a reload, so its histogram does not restart.
    probes: Option<Arc<ProbeRecord>>,
}

struct Svc {
    cfg: config::Service,
    policy: Policy,
    health: HashMap<SocketAddr, Health>,
    overrides: HashMap<SocketAddr, u32>,
    runner: Option<Runner>,
    live: Option<LiveSet>,
    generation: u32,
    removing_since: Option<Instant>,
    /// Some backends could not be resolved: rebuild the table at this time.
    retry_at: Option<Instant>,
}

impl Svc {
    fn label(&self) -> String {
        format!("{}/{}", self.cfg.vip, self.cfg.protocol)
    }
}

/// The running daemon; see [`Daemon::start`] and [`Daemon::run`].
pub struct Daemon {
    path: PathBuf,
    cfg: config::Config,
    services: BTreeMap<ServiceKey, Svc>,
    dataplane: Dataplane,
    status: Arc<ArcSwap<Status>>,
    health_tx: mpsc::Sender<HealthEvent>,
    health_rx: mpsc::Receiver<HealthEvent>,
    admin_rx: mpsc::Receiver<(AdminRequest, Reply)>,
    dirty: BTreeSet<ServiceKey>,
    flush_at: Option<Instant>,
    reloads: u64,
    reload_failures: u64,
    vrrp: Vec<vrrp::Running>,
    vrrp_stop: CancellationToken,
    vrrp_changed: mpsc::Receiver<()>,
    /// Passive health per (service, backend), kept across runner restarts.
    observers: HashMap<(ServiceKey, SocketAddr), Observer>,
    /// Connection-state sync (`[sync]`): its counters, task and stop.
    sync_counters: Option<Arc<crate::sync::Counters>>,
    sync_task: Option<tokio::task::JoinHandle<()>>,
    sync_stop: CancellationToken,
    /// SIGHUP, caught from the start: a reload asked for while the daemon
    /// is still programming waits for the run loop instead of killing it
    /// (SIGHUP's default action).
    hup: Option<Signal>,
}

impl Daemon {
    /// Loads and validates the config, loads the datapath and programs every
    /// service. Any error here is fatal: nothing is serving yet.
    pub async fn start(path: PathBuf) -> Result<(Daemon, DaemonHandle), DaemonError> {
        let hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
        let cfg = config::load(&path).map_err(DaemonError::Config)?;
        let dataplane = Dataplane::start(
            convert::limits(&cfg),
            convert::attach_mode(cfg.daemon.xdp_mode),
            cfg.daemon.pin_dir.clone(),
        )?;
        let (health_tx, health_rx) = mpsc::channel(1024);
        let (admin_tx, admin_rx) = mpsc::channel(64);
        let (vrrp_changed_tx, vrrp_changed) = mpsc::channel(64);
        let status = Arc::new(ArcSwap::from_pointee(Status::default()));
        let mut d = Daemon {
            path,
            cfg: cfg.clone(),
            services: BTreeMap::new(),
            dataplane: dataplane.clone(),
            status: status.clone(),
            health_tx,
            health_rx,
            admin_rx,
            dirty: BTreeSet::new(),
            flush_at: None,
            reloads: 0,
            reload_failures: 0,
            vrrp: Vec::new(),
            vrrp_stop: CancellationToken::new(),
            vrrp_changed,
            observers: HashMap::new(),
            sync_counters: None,
            sync_task: None,
            sync_stop: CancellationToken::new(),
            hup: Some(hup),
        };
        for s in &cfg.services {
            d.program(s.clone(), HashMap::new(), HashMap::new()).await?;
        }
        // VRRP starts once every service is programmed, so a node that wins
        // the election forwards from its first packet.
        let settle = health_settle(&cfg);
        for v in &cfg.vrrp_instances {
            let v = hold_preemption(v, settle);
            let running = vrrp::start(
                &v,
                convert::run_as(&cfg.daemon),
                vrrp_changed_tx.clone(),
                d.vrrp_stop.clone(),
            )?;
            d.vrrp.push(running);
        }
        let failed = d.flush().await;
        if let Some(key) = failed.first() {
            tracing::error!(service = %key.vip, "initial table not programmed; new flows to it are dropped until a swap succeeds");
        }
        // Sync starts once the backends are programmed: flows received
        // before would be skipped for want of them, and not sent again.
        if let Some(s) = &cfg.sync {
            let role = d
                .vrrp
                .iter()
                .find(|r| r.config().name == s.vrrp_instance)
                .map(|r| r.watch())
                .ok_or_else(|| flow_sync::SyncSetupError::NoInstance(s.vrrp_instance.clone()))?;
            let counters = Arc::new(crate::sync::Counters::default());
            d.sync_task = Some(
                flow_sync::start(
                    s,
                    dataplane.clone(),
                    role,
                    counters.clone(),
                    d.sync_stop.clone(),
                )
                .await?,
            );
            d.sync_counters = Some(counters);
            d.publish();
        }
        let handle = DaemonHandle {
            status,
            admin: admin_tx,
            dataplane,
        };
        Ok((d, handle))
    }

    pub fn config(&self) -> &config::Config {
        &self.cfg
    }

    /// Programs (or reprograms) a service and (re)starts its checks. Health
    /// known from before a reload is kept for backends whose check did not
    /// change, so an unchanged backend does not flap.
    async fn program(
        &mut self,
        cfg: config::Service,
        prior: HashMap<SocketAddr, (Option<config::Check>, Health)>,
        overrides: HashMap<SocketAddr, u32>,
    ) -> Result<(), DaemonError> {
        let key = cfg.key();
        let spec = convert::service_spec(&cfg);
        let mut jobs = Vec::new();
        let mut health = HashMap::new();
        let label: Arc<str> = Arc::from(format!("{}/{}", cfg.vip, cfg.protocol));
        for b in &cfg.backends {
            let known = prior
                .get(&b.address)
                .filter(|(check, _)| *check == b.check)
                .map(|(_, h)| h.clone());
            let Some(check) = &b.check else {
                health.insert(
                    b.address,
                    known.unwrap_or(Health {
                        up: true,
                        reason: Some("no health check".into()),
                        probes: None,
                    }),
                );
                continue;
            };
            let mut state = known.unwrap_or(Health {
                up: !cfg.alpha,
                reason: Some(if cfg.alpha {
                    "alpha: down until a check passes".into()
                } else {
                    "up until checks fail (no alpha)".into()
                }),
                probes: None,
            });
            let probes = state.probes.get_or_insert_default().clone();
            // The checker starts from the state we already know.
            let check_spec =
                convert::check_spec(check, !state.up, convert::run_as(&self.cfg.daemon));
            let checker = health::build(&check_spec).map_err(|error| DaemonError::Check {
                service: cfg.vip,
                backend: b.address,
                error,
            })?;
            jobs.push(Job {
                service: label.clone(),
                backend: b.address,
                target: convert::probe_target(check, b.address),
                checker,
                schedule: Schedule::from(&check_spec),
                probes,
            });
            health.insert(b.address, state);
        }
        self.dataplane.add_service(spec).await?;
        if let Some(old) = self.services.get_mut(&key)
            && let Some(r) = old.runner.take()
        {
            r.shutdown().await;
        }
        let runner = (!jobs.is_empty()).then(|| Runner::start(jobs, self.health_tx.clone()));
        let mut policy_spec =
            PolicySpec::new(cfg.backends.iter().map(|b| (b.address, b.weight)).collect());
        policy_spec.inhibit_on_failure = cfg.inhibit_on_failure;
        policy_spec.sorry_server = cfg.sorry_server;
        policy_spec.quorum = cfg.quorum;
        policy_spec.hysteresis = cfg.hysteresis;
        let overrides = overrides
            .into_iter()
            .filter(|(a, _)| cfg.backends.iter().any(|b| b.address == *a))
            .collect();
        let generation = self.services.get(&key).map_or(0, |s| s.generation);
        self.services.insert(
            key,
            Svc {
                cfg,
                policy: Policy::new(policy_spec),
                health,
                overrides,
                runner,
                live: None,
                generation,
                removing_since: None,
                retry_at: None,
            },
        );
        self.dirty.insert(key);
        Ok(())
    }

    /// Rebuilds the live set of every dirty service and swaps its table.
    /// A failed swap is logged and the service keeps its previous table;
    /// the services that failed are returned.
    async fn flush(&mut self) -> BTreeSet<ServiceKey> {
        self.flush_at = None;
        let mut failed = BTreeSet::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(svc) = self.services.get_mut(&key) else {
                continue;
            };
            if svc.removing_since.is_some() {
                continue;
            }
            let up: HashMap<SocketAddr, bool> =
                svc.health.iter().map(|(a, h)| (*a, h.up)).collect();
            let live = svc.policy.live_set(&up, &svc.overrides);
            if live.quorum_changed {
                tracing::warn!(service = %svc.label(), quorum_up = live.quorum_up, sorry = live.sorry, "quorum changed");
            }
            if svc.retry_at.is_none()
                && svc.live.as_ref().map(|l| &l.backends) == Some(&live.backends)
            {
                svc.live = Some(live);
                continue;
            }
            let specs = convert::backend_specs(&live.backends);
            let (vip, p) = (svc.cfg.vip, svc.cfg.protocol);
            match self.dataplane.set_backends(vip, p, specs).await {
                Ok(swap) => {
                    svc.generation = swap.generation;
                    let mut live = live;
                    live.backends
                        .retain(|(a, _)| !swap.unresolved.iter().any(|(u, _)| u == a));
                    svc.retry_at =
                        (!swap.unresolved.is_empty()).then(|| Instant::now() + UNRESOLVED_RETRY);
                    for (backend, error) in &swap.unresolved {
                        if let Some(h) = svc.health.get_mut(backend) {
                            h.reason = Some(format!("not in the table: {error}"));
                        }
                    }
                    svc.live = Some(live);
                }
                Err(e) => {
                    tracing::error!(service = %svc.label(), error = %e, "table swap failed; the previous table keeps serving");
                    failed.insert(key);
                }
            }
        }
        self.publish();
        failed
    }

    fn mark_dirty(&mut self, key: ServiceKey) {
        self.dirty.insert(key);
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + COALESCE);
        }
    }

    fn on_health(&mut self, ev: HealthEvent) {
        let Some((key, svc)) = self
            .services
            .iter_mut()
            .find(|(_, s)| *ev.service == *s.label())
        else {
            return;
        };
        let Some(h) = svc.health.get_mut(&ev.backend) else {
            return;
        };
        // The health runner has logged the transition already.
        h.up = ev.up;
        h.reason = Some(ev.reason);
        let key = *key;
        self.mark_dirty(key);
    }

    async fn on_admin(&mut self, req: AdminRequest) -> Result<String, AdminError> {
        let (vip, protocol, backend, weight) = match req {
            AdminRequest::Reload => return self.reload().await,
            AdminRequest::Drain {
                vip,
                protocol,
                backend,
            } => (vip, protocol, backend, Some(0)),
            AdminRequest::Undrain {
                vip,
                protocol,
                backend,
            } => (vip, protocol, backend, None),
            AdminRequest::SetWeight {
                vip,
                protocol,
                backend,
                weight,
            } => {
                if weight > 65_535 {
                    return Err(AdminError::WeightRange(weight));
                }
                (vip, protocol, backend, Some(weight))
            }
        };
        let key = ServiceKey { vip, protocol };
        let svc = self
            .services
            .get_mut(&key)
            .filter(|s| s.removing_since.is_none())
            .ok_or(AdminError::UnknownVip(vip, protocol))?;
        if !svc.cfg.backends.iter().any(|b| b.address == backend) {
            return Err(AdminError::UnknownBackend(vip, protocol, backend));
        }
        let before = svc.overrides.clone();
        match weight {
            Some(w) => svc.overrides.insert(backend, w),
            None => svc.overrides.remove(&backend),
        };
        self.dirty.insert(key);
        if self.flush().await.contains(&key) {
            if let Some(svc) = self.services.get_mut(&key) {
                svc.overrides = before;
            }
            return Err(AdminError::Datapath(format!(
                "the table for {vip}/{protocol} could not be swapped (see the daemon log); nothing changed"
            )));
        }
        let what = match weight {
            Some(0) => "drained".to_string(),
            Some(w) => format!("weight set to {w}"),
            None => "undrained".to_string(),
        };
        tracing::info!(service = %format!("{vip}/{protocol}"), backend = %backend, "{what} by admin request");
        Ok(format!("{vip}/{protocol} backend {backend} {what}"))
    }

    /// Re-reads the config. A bad config changes nothing; a good one is
    /// applied by difference, and unchanged services are not touched.
    async fn reload(&mut self) -> Result<String, AdminError> {
        let new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.reload_failures += 1;
                tracing::error!("reload rejected, the previous config keeps serving:\n{e}");
                self.publish();
                return Err(AdminError::Reload(e.to_string()));
            }
        };
        // script_security is not a restart setting: it governs the reading
        // of the file it is in, this one included.
        let at_restart = |d: &config::Daemon| config::Daemon {
            script_security: true,
            ..d.clone()
        };
        if at_restart(&new.daemon) != at_restart(&self.cfg.daemon) {
            tracing::warn!("[daemon] settings changed: they apply at the next restart");
        }
        if new.sync != self.cfg.sync {
            tracing::warn!("[sync] changes apply at the next restart");
        }
        if new.vrrp_instances != self.cfg.vrrp_instances {
            // Restarting an instance would release the VIP (priority 0) and
            // move traffic for nothing; keepalived users expect no flap.
            tracing::warn!("[[vrrp_instance]] changes apply at the next restart");
        }
        let wanted: BTreeSet<ServiceKey> = new.services.iter().map(|s| s.key()).collect();
        let now = Instant::now();
        let mut removed = 0;
        for (key, svc) in self.services.iter_mut() {
            if !wanted.contains(key) && svc.removing_since.is_none() {
                svc.removing_since = Some(now);
                if let Some(r) = svc.runner.take() {
                    r.shutdown().await;
                }
                if let Err(e) = self
                    .dataplane
                    .set_backends(svc.cfg.vip, svc.cfg.protocol, Vec::new())
                    .await
                {
                    tracing::error!(service = %svc.label(), error = %e, "emptying the table of a removed service");
                }
                tracing::info!(service = %svc.label(), "removed from config: no new flows, unprogrammed once drained");
                removed += 1;
            }
        }
        let (mut added, mut changed) = (0, 0);
        for s in new.services.clone() {
            let key = s.key();
            let (prior, overrides) = match self.services.get(&key) {
                Some(old) if old.cfg == s && old.removing_since.is_none() => continue,
                Some(old) => (
                    old.cfg
                        .backends
                        .iter()
                        .filter_map(|b| {
                            Some((
                                b.address,
                                (b.check.clone(), old.health.get(&b.address)?.clone()),
                            ))
                        })
                        .collect(),
                    old.overrides.clone(),
                ),
                None => (HashMap::new(), HashMap::new()),
            };
            let is_new = !self.services.contains_key(&key);
            if let Err(e) = self.program(s, prior, overrides).await {
                tracing::error!(service = %key.vip, error = %e, "applying the reloaded service failed; it keeps its previous state");
                continue;
            }
            if is_new {
                added += 1;
            } else {
                changed += 1;
            }
        }
        self.cfg = new;
        self.reloads += 1;
        let _ = self.flush().await;
        let msg = format!(
            "config reloaded: {added} services added, {changed} changed, {removed} removed"
        );
        tracing::info!("{msg}");
        Ok(msg)
    }

    /// Unprograms removed services whose flows are gone (or that waited
    /// [`REMOVED_SERVICE_DRAIN`]).
    async fn reap_removed(&mut self) {
        let removing: Vec<(ServiceKey, Instant, String, Vec<SocketAddr>)> = self
            .services
            .iter()
            .filter_map(|(k, s)| {
                Some((
                    *k,
                    s.removing_since?,
                    s.cfg.interface.clone(),
                    s.cfg.backends.iter().map(|b| b.address).collect(),
                ))
            })
            .collect();
        if removing.is_empty() {
            return;
        }
        let queries = removing
            .iter()
            .map(|(k, _, iface, _)| UsageQuery {
                vip: k.vip,
                protocol: k.protocol,
                interface: iface.clone(),
                backends: Vec::new(),
                idle: REMOVAL_IDLE,
                count_flows: true,
            })
            .collect();
        let usage = self.dataplane.usage(queries).await.ok();
        for (key, since, _, _) in removing {
            let flows = usage.as_ref().and_then(|u| {
                u.vips
                    .iter()
                    .find(|((v, p), _)| *v == key.vip && *p == key.protocol)
                    .map(|(_, u)| u.active_flows)
            });
            if flows.unwrap_or(0) > 0 && since.elapsed() < REMOVED_SERVICE_DRAIN {
                continue;
            }
            match self.dataplane.remove_service(key.vip, key.protocol).await {
                Ok(()) => {
                    self.services.remove(&key);
                }
                Err(e) => {
                    tracing::error!(service = %key.vip, error = %e, "unprogramming a removed service")
                }
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let services = self
            .services
            .values()
            .map(|s| {
                let live = |a: &SocketAddr| {
                    s.live
                        .as_ref()
                        .and_then(|l| l.backends.iter().find(|(b, _)| b == a).map(|(_, w)| *w))
                };
                let mut backends: Vec<BackendStatus> = s
                    .cfg
                    .backends
                    .iter()
                    .map(|b| {
                        let h = s.health.get(&b.address).cloned().unwrap_or_default();
                        BackendStatus {
                            address: b.address,
                            weight: b.weight,
                            admin_weight: s.overrides.get(&b.address).copied(),
                            live_weight: live(&b.address),
                            healthy: h.up,
                            reason: h.reason,
                            probes: h.probes,
                            sorry_server: false,
                        }
                    })
                    .collect();
                if let Some(sorry) = s.cfg.sorry_server {
                    backends.push(BackendStatus {
                        address: sorry,
                        weight: 1,
                        admin_weight: None,
                        live_weight: live(&sorry),
                        healthy: true,
                        reason: None,
                        probes: None,
                        sorry_server: true,
                    });
                }
                ServiceStatus {
                    name: s.cfg.name.clone(),
                    vip: s.cfg.vip,
                    protocol: s.cfg.protocol.to_string(),
                    interface: s.cfg.interface.clone(),
                    forwarding: format!("{:?}", s.cfg.forwarding).to_lowercase(),
                    scheduler: s.cfg.scheduler.to_string(),
                    quorum_up: s.live.as_ref().is_none_or(|l| l.quorum_up),
                    sorry: s.live.as_ref().is_some_and(|l| l.sorry),
                    table_generation: s.generation,
                    removing: s.removing_since.is_some(),
                    idle_timeout_seconds: match s.cfg.protocol {
                        config::Protocol::Tcp => s.cfg.tcp_timeout.as_secs(),
                        config::Protocol::Udp => s.cfg.udp_timeout.as_secs(),
                    },
                    backends,
                }
            })
            .collect();
        self.status.store(Arc::new(Status {
            config_path: self.path.display().to_string(),
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            services,
            vrrp: self.vrrp_status(),
            sync: self.sync_counters.clone().map(status::SyncStatus),
        }));
    }

    /// Reads the passive-health counters of every observed backend that is
    /// up, and takes down at once those whose connections keep failing.
    /// Their checks restart from "down", so `rise` passes bring them back.
    /// Only backends with an active check are observed: nothing else would
    /// ever bring one back.
    async fn observe(&mut self) {
        let watched: Vec<(ServiceKey, UsageQuery)> = self
            .services
            .iter()
            .filter(|(_, s)| s.cfg.observe == config::Observe::Layer4 && s.removing_since.is_none())
            .map(|(k, s)| {
                (
                    *k,
                    UsageQuery {
                        vip: k.vip,
                        protocol: k.protocol,
                        interface: s.cfg.interface.clone(),
                        backends: s
                            .cfg
                            .backends
                            .iter()
                            .filter(|b| b.check.is_some())
                            .map(|b| b.address)
                            .collect(),
                        idle: Duration::ZERO,
                        count_flows: false,
                    },
                )
            })
            .filter(|(_, q)| !q.backends.is_empty())
            .collect();
        self.observers
            .retain(|(k, _), _| watched.iter().any(|(w, _)| w == k));
        if watched.is_empty() {
            return;
        }
        let Ok(usage) = self
            .dataplane
            .usage(watched.iter().map(|(_, q)| q.clone()).collect())
            .await
        else {
            return;
        };
        let now = Instant::now();
        let mut down = Vec::new();
        for ((vip, p, be), u) in usage.backends {
            let key = ServiceKey { vip, protocol: p };
            let backend = be;
            let Some(svc) = self.services.get(&key) else {
                continue;
            };
            if !svc.health.get(&backend).is_some_and(|h| h.up) {
                // Counting starts afresh when the backend is back up.
                self.observers.remove(&(key, backend));
                continue;
            }
            let obs = self
                .observers
                .entry((key, backend))
                .or_insert_with(|| Observer::new(svc.cfg.error_limit, svc.cfg.syn_timeout));
            let sample = Sample {
                syn: u.counters.syn,
                syn_ack: u.counters.syn_ack,
                syn_rst: u.counters.syn_rst,
            };
            if let Some(reason) = obs.observe(now, sample) {
                down.push((key, backend, reason));
            }
        }
        for (key, backend, reason) in down {
            self.observers.remove(&(key, backend));
            let Some(svc) = self.services.get_mut(&key) else {
                continue;
            };
            tracing::warn!(service = %svc.label(), backend = %backend, reason = %reason, "backend down");
            if let Some(h) = svc.health.get_mut(&backend) {
                h.up = false;
                h.reason = Some(reason);
            }
            let cfg = svc.cfg.clone();
            let overrides = svc.overrides.clone();
            let prior = cfg
                .backends
                .iter()
                .filter_map(|b| {
                    Some((
                        b.address,
                        (b.check.clone(), svc.health.get(&b.address)?.clone()),
                    ))
                })
                .collect();
            if let Err(e) = self.program(cfg, prior, overrides).await {
                tracing::error!(service = %key.vip, error = %e, "restarting checks after a passive failure");
            }
            self.mark_dirty(key);
        }
    }

    /// lc/wlc schedule by active flow counts that flows ending by timeout
    /// or eviction leave too high: recount them while such a service
    /// exists. Returns how long the scan of the connection table took.
    async fn recount_active(&mut self) -> Option<Duration> {
        if !self.services.values().any(|s| {
            matches!(
                s.cfg.scheduler,
                config::Scheduler::Lc | config::Scheduler::Wlc
            )
        }) {
            return None;
        }
        let started = Instant::now();
        match self.dataplane.reconcile_active().await {
            Ok(0) => {}
            Ok(fixed) => tracing::debug!(fixed, "active flow counts corrected"),
            Err(e) => tracing::warn!(error = %e, "recounting active flows"),
        }
        Some(started.elapsed())
    }

    fn vrrp_status(&self) -> Vec<VrrpStatus> {
        self.vrrp.iter().map(|r| r.status()).collect()
    }

    /// Runs until `shutdown` resolves. SIGHUP reloads the config.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let mut hup = match self.hup.take() {
            Some(h) => h,
            None => signal(SignalKind::hangup()).map_err(DaemonError::Signal)?,
        };
        let mut reap = tokio::time::interval(Duration::from_secs(1));
        let mut observe = tokio::time::interval(OBSERVE_INTERVAL);
        let mut recount = tokio::time::interval(crate::datapath::active::RECOUNT_INTERVAL);
        recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let flush_at = self.flush_at;
            tokio::select! {
                _ = &mut shutdown => break,
                Some(ev) = self.health_rx.recv() => self.on_health(ev),
                Some((req, reply)) = self.admin_rx.recv() => {
                    let r = self.on_admin(req).await;
                    let _ = reply.send(r);
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", self.path.display());
                    let _ = self.reload().await;
                }
                _ = async { sleep_until(flush_at.unwrap_or_else(Instant::now)).await }, if flush_at.is_some() => {
                    let _ = self.flush().await;
                }
                _ = reap.tick() => {
                    self.reap_removed().await;
                    let now = Instant::now();
                    let due: Vec<ServiceKey> = self
                        .services
                        .iter()
                        .filter(|(_, s)| s.retry_at.is_some_and(|t| t <= now))
                        .map(|(k, _)| *k)
                        .collect();
                    for key in due {
                        self.mark_dirty(key);
                    }
                }
                _ = observe.tick() => self.observe().await,
                _ = recount.tick() => {
                    if let Some(took) = self.recount_active().await {
                        recount.reset_after(crate::datapath::active::recount_interval(took));
                    }
                }
                Some(()) = self.vrrp_changed.recv() => self.publish(),
            }
        }
        tracing::info!("shutting down");
        // A master's priority-0 advert hands the VIP over after the backup's
        // skew (≤ 1 s in v2, ≤ advert_int in v3); clients keep sending here
        // until the new master's gratuitous ARP. The datapath forwards
        // without the address, so it stays until then.
        let handover = self
            .vrrp
            .iter()
            .filter(|r| r.status().state == "MASTER")
            .map(|r| r.config().advert_int.max(Duration::from_secs(1)) + Duration::from_millis(250))
            .max();
        self.vrrp_stop.cancel();
        for r in std::mem::take(&mut self.vrrp) {
            r.join().await;
        }
        self.sync_stop.cancel();
        if let Some(t) = self.sync_task.take() {
            let _ = t.await;
        }
        if let Some(wait) = handover {
            tracing::info!(
                ?wait,
                "VIP released; forwarding until the new master has taken over"
            );
            tokio::time::sleep(wait).await;
        }
        for svc in self.services.values_mut() {
            if let Some(r) = svc.runner.take() {
                r.shutdown().await;
            }
        }
        self.dataplane.release_pins().await;
        Ok(())
    }
}
