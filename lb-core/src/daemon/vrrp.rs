//! VRRP instances of the daemon: config conversion, one task per instance,
//! and the `track_script` probes that feed them.
//!
//! Services are programmed on every node whatever its VRRP role: only the
//! address moves. A node that becomes MASTER adds the VIP and sends GARPs, so
//! traffic arrives and the datapath, already loaded, forwards it at once; a
//! node that becomes BACKUP removes the address and keeps its datapath.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::status::VrrpStatus;
use crate::{
    config,
    health::{
        self, CheckKind, CheckSpec,
        script::ScriptSpec,
        state::{RiseFall, Thresholds},
    },
    vrrp::{self, InstanceConfig, Track, TrackUpdate, Vip, state::TrackKind},
};

#[derive(Debug, thiserror::Error)]
pub enum VrrpSetupError {
    #[error("vrrp_instance {instance}: {what} {addr} is IPv6; VRRP here is IPv4 only")]
    Ipv6 {
        instance: String,
        what: &'static str,
        addr: IpAddr,
    },
    #[error("vrrp_instance {instance}: track_script {script}: {error}")]
    Script {
        instance: String,
        script: String,
        error: health::BuildError,
    },
}

fn v4(instance: &str, what: &'static str, a: IpAddr) -> Result<Ipv4Addr, VrrpSetupError> {
    match a {
        IpAddr::V4(v) => Ok(v),
        IpAddr::V6(_) => Err(VrrpSetupError::Ipv6 {
            instance: instance.to_string(),
            what,
            addr: a,
        }),
    }
}

/// The instance as the VRRP module's config; notify scripts run as
/// `run_as` (uid, gid) when given.
pub fn instance_config(
    c: &config::VrrpInstance,
    run_as: Option<(u32, u32)>,
) -> Result<InstanceConfig, VrrpSetupError> {
    let vips = c
        .virtual_ipaddress
        .iter()
        .map(|v| {
            Ok(Vip {
                addr: v4(&c.name, "virtual_ipaddress", v.addr)?,
                prefix_len: v.prefix_len,
            })
        })
        .collect::<Result<Vec<_>, VrrpSetupError>>()?;
    let mut i = InstanceConfig::new(
        c.name.clone(),
        c.interface.clone(),
        c.virtual_router_id,
        c.priority,
        vips,
    );
    i.advert_int = c.advert_int;
    i.notify_run_as = run_as;
    i.version = match c.version {
        config::VrrpVersion::V2 => vrrp::Version::V2,
        config::VrrpVersion::V3 => vrrp::Version::V3,
    };
    i.nopreempt = c.nopreempt;
    i.preempt_delay = c.preempt_delay;
    i.unicast_src_ip = c
        .unicast_src_ip
        .map(|a| v4(&c.name, "unicast_src_ip", a))
        .transpose()?;
    i.unicast_peer = c
        .unicast_peer
        .iter()
        .map(|a| v4(&c.name, "unicast_peer", *a))
        .collect::<Result<_, _>>()?;
    i.auth_pass = c.auth_pass.clone();
    i.track_interface = c
        .track_interface
        .iter()
        .map(|t| Track {
            name: t.name.clone(),
            weight: t.weight,
        })
        .collect();
    i.track_script = c
        .track_script
        .iter()
        .map(|t| Track {
            name: t.name.clone(),
            weight: t.weight,
        })
        .collect();
    i.notify = c.notify.clone();
    i.notify_master = c.notify_master.clone();
    i.notify_backup = c.notify_backup.clone();
    i.notify_fault = c.notify_fault.clone();
    i.garp_master_delay = c.garp_master_delay;
    i.garp_master_repeat = c.garp_master_repeat;
    Ok(i)
}

/// keepalived's state words.
pub fn state_name(s: vrrp::State) -> &'static str {
    match s {
        vrrp::State::Initialize => "INIT",
        vrrp::State::Backup => "BACKUP",
        vrrp::State::Master => "MASTER",
        vrrp::State::Fault => "FAULT",
    }
}

/// A running instance and what the status snapshot needs from it.
pub struct Running {
    cfg: config::VrrpInstance,
    status: watch::Receiver<vrrp::Status>,
    transitions: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn config(&self) -> &config::VrrpInstance {
        &self.cfg
    }

    /// The instance's live status (state, master), for tasks that follow
    /// its role.
    pub fn watch(&self) -> watch::Receiver<vrrp::Status> {
        self.status.clone()
    }

    pub fn status(&self) -> VrrpStatus {
        let s = self.status.borrow();
        VrrpStatus {
            name: self.cfg.name.clone(),
            interface: self.cfg.interface.clone(),
            virtual_router_id: self.cfg.virtual_router_id,
            state: state_name(s.state).to_string(),
            priority: s.priority,
            master: s.master.map(|(a, p)| format!("{a} (priority {p})")),
            transitions: self.transitions.load(Ordering::Relaxed),
            rejected: s
                .rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }

    /// Waits for the instance to leave (a master sends priority 0 and
    /// releases its addresses first).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts an instance and its track scripts. `changed` gets a message on
/// every status change so the daemon republishes its snapshot; `stop`
/// cancels everything.
pub fn start(
    cfg: &config::VrrpInstance,
    run_as: Option<(u32, u32)>,
    changed: mpsc::Sender<()>,
    stop: CancellationToken,
) -> Result<Running, VrrpSetupError> {
    let icfg = instance_config(cfg, run_as)?;
    let (track_tx, track_rx) = mpsc::channel(64);
    for t in &cfg.track_script {
        spawn_track_script(&cfg.name, t, run_as, track_tx.clone(), stop.clone())?;
    }
    let (status_tx, status_rx) = watch::channel(vrrp::Status::default());
    let transitions = Arc::new(AtomicU64::new(0));
    let mut watcher = status_rx.clone();
    let counter = transitions.clone();
    let name = cfg.name.clone();
    tokio::spawn(async move {
        let mut last = watcher.borrow().state;
        while watcher.changed().await.is_ok() {
            let now = watcher.borrow().state;
            if now != last {
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::info!(instance = %name, from = state_name(last), to = state_name(now), "VRRP state change");
                last = now;
            }
            if changed.send(()).await.is_err() {
                break;
            }
        }
    });
    let name = cfg.name.clone();
    let task = tokio::spawn(async move {
        // Keep the sender alive as long as the instance: a closed channel
        // would read as "no more track updates".
        let _track_tx = track_tx;
        if let Err(e) = vrrp::run_instance(icfg, track_rx, status_tx, stop.cancelled_owned()).await
        {
            tracing::error!(instance = %name, error = %e, "VRRP instance stopped");
        }
    });
    Ok(Running {
        cfg: cfg.clone(),
        status: status_rx,
        transitions,
        task,
    })
}

/// Runs a `track_script` every `interval`; `fall` consecutive failures
/// report it down, `rise` successes up (it starts up, as keepalived's).
fn spawn_track_script(
    instance: &str,
    t: &config::TrackScript,
    run_as: Option<(u32, u32)>,
    updates: mpsc::Sender<TrackUpdate>,
    stop: CancellationToken,
) -> Result<(), VrrpSetupError> {
    let spec = CheckSpec::new(CheckKind::Script(ScriptSpec {
        argv: t.command.iter().map(OsString::from).collect(),
        timeout: t.timeout,
        run_as,
    }));
    let checker = health::build(&spec).map_err(|error| VrrpSetupError::Script {
        instance: instance.to_string(),
        script: t.name.clone(),
        error,
    })?;
    let mut state = RiseFall::new(
        Thresholds {
            rise: t.rise,
            fall: t.fall,
            retry: 0,
        },
        false,
    );
    let name = t.name.clone();
    let interval = t.interval.max(Duration::from_millis(100));
    // Scripts get no real target; the checker wants one.
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = checker.check(target) => r,
            };
            if let Some(tr) = state.observe(&result).transition {
                tracing::info!(script = %name, up = tr.up, reason = %tr.reason, "track_script changed");
                let update = TrackUpdate {
                    kind: TrackKind::Script,
                    name: name.clone(),
                    up: tr.up,
                };
                if updates.send(update).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testutil::ArgvProbe;

    /// `daemon.script_user` reaches track scripts and notify scripts.
    #[tokio::test]
    async fn track_and_notify_scripts_run_as_the_script_user() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root (setuid)"
        );
        let t = config::TrackScript {
            name: "as-root".into(),
            // Passes as root, so it only goes down if it runs as nobody.
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "test \"$(id -u)\" = 0".into(),
            ],
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            weight: 0,
            fall: 1,
            rise: 1,
        };
        let (tx, mut rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        spawn_track_script("VI_1", &t, Some((65534, 65534)), tx, stop.clone())
            .expect("valid script");
        let update = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a transition within 10 s")
            .expect("an update");
        stop.cancel();
        assert!(!update.up, "the script ran as root");
        let mut c = crate::config::parse(
            "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"lb0\"\nvirtual_router_id = 7\n\
             virtual_ipaddress = [\"198.18.0.100\"]\n",
            "t.toml",
            &|_: &str| true,
        )
        .expect("valid");
        let c = c.vrrp_instances.remove(0);
        let i = instance_config(&c, Some((65534, 65534))).expect("valid instance");
        assert_eq!(i.notify_run_as, Some((65534, 65534)));
    }

    #[tokio::test]
    async fn track_script_arguments_reach_the_program_verbatim_and_run_nothing() {
        let probe = ArgvProbe::new("track-argv");
        let mut command = probe.command();
        command.extend(probe.hostile.iter().cloned());
        let t = config::TrackScript {
            name: "chk".into(),
            command,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            weight: 0,
            fall: 1,
            rise: 1,
        };
        let (tx, _rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        spawn_track_script("VI_1", &t, None, tx, stop.clone()).expect("valid script");
        let recorded = probe.wait_recorded().await;
        stop.cancel();
        assert_eq!(recorded, probe.hostile);
        probe.assert_nothing_ran();
    }
}
