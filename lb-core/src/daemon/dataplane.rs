//! The datapath on its own thread.
//!
//! Programming a backend may block (ARP resolution waits up to a second), and
//! the aya handles are not async, so one OS thread owns the [`Balancer`] and
//! the async side talks to it through a channel. Dropping the last handle
//! ends the thread, which drops the datapath and detaches its programs.

use std::{net::SocketAddr, sync::mpsc, thread};

use lb_ebpf::abi::{Counters, FLOW_CLOSING, FLOW_FORWARD, Flow, Flow6, FlowKey, FlowKey6};
use tokio::sync::oneshot;

use crate::{
    config::Protocol,
    datapath::{
        AttachMode, Datapath, DatapathError, Limits,
        balancer::{BackendSpec, Balancer, BalancerError, ServiceSpec, Swap},
        monotonic_ns,
    },
    sync::{
        flows::{self, Sent, Skip},
        wire::FlowRecord,
    },
};

type Job = Box<dyn FnOnce(&mut Balancer) + Send>;

/// Counters and live flows of one backend or VIP, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub counters: Counters,
    /// Connections in progress: forward flows seen within their idle
    /// timeout with no FIN or RST in either direction.
    pub active_flows: u64,
}

/// Counters of every programmed service, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct UsageSnapshot {
    pub vips: Vec<((SocketAddr, Protocol), Usage)>,
    pub backends: Vec<((SocketAddr, Protocol, SocketAddr), Usage)>,
    /// Drops of packets to a VIP address that matched no service.
    pub unmatched: Counters,
}

/// What to read for one service.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub interface: String,
    pub backends: Vec<SocketAddr>,
    /// The service's idle timeout: older flows are not counted as active.
    pub idle: std::time::Duration,
    /// Count active flows (a scan of the connection table); counters alone
    /// are cheap.
    pub count_flows: bool,
}

#[derive(Clone)]
pub struct Dataplane {
    tx: mpsc::Sender<Job>,
}

impl Dataplane {
    /// Loads the datapath on a new thread; fails if loading fails. With
    /// `pin_dir`, XDP attachments are pinned there (`Datapath::pin_xdp_in`).
    pub fn start(
        limits: Limits,
        mode: AttachMode,
        pin_dir: Option<std::path::PathBuf>,
    ) -> Result<Self, DatapathError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name("datapath".into())
            .spawn(move || {
                let mut balancer = match Datapath::load(limits) {
                    Ok(mut dp) => {
                        if let Some(dir) = pin_dir {
                            dp.pin_xdp_in(dir);
                        }
                        let _ = ready_tx.send(Ok(()));
                        Balancer::new(dp, mode)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    job(&mut balancer);
                }
            })
            .map_err(DatapathError::Thread)?;
        ready_rx.recv().map_err(|_| DatapathError::ThreadGone)??;
        Ok(Dataplane { tx })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Balancer) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |b| {
            let _ = tx.send(f(b));
        });
        // The thread lives as long as a handle exists, so both ends stay open.
        self.tx.send(job).expect("datapath thread gone");
        rx.await.expect("datapath job panicked")
    }

    /// A clean stop: the datapath leaves the interfaces with the process,
    /// pinned or not.
    pub async fn release_pins(&self) {
        self.call(|b| b.datapath_mut().release_pins()).await
    }

    pub async fn add_service(&self, spec: ServiceSpec) -> Result<u32, BalancerError> {
        self.call(move |b| b.add_service(spec)).await
    }

    pub async fn remove_service(&self, vip: SocketAddr, p: Protocol) -> Result<(), BalancerError> {
        self.call(move |b| b.remove_service(vip, p)).await
    }

    pub async fn set_backends(
        &self,
        vip: SocketAddr,
        p: Protocol,
        backends: Vec<BackendSpec>,
    ) -> Result<Swap, BalancerError> {
        self.call(move |b| b.set_backends(vip, p, &backends)).await
    }

    /// Connection-state sync, sending side: the nat flows to send from the
    /// current connection table (see `sync::flows::select`).
    pub async fn sync_scan(
        &self,
        mut sent: Sent,
        limit: usize,
    ) -> Result<(Vec<FlowRecord>, Sent), DatapathError> {
        self.call(move |b| {
            let services = b.sync_services();
            if services.is_empty() {
                return Ok((Vec::new(), sent));
            }
            let table = b.datapath().flows()?;
            let records = flows::select(&table, &services, &mut sent, monotonic_ns(), limit);
            Ok((records, sent))
        })
        .await
    }

    /// Connection-state sync, receiving side: writes both entries of each
    /// record this node can honour. Returns how many were applied and why
    /// the others were not.
    pub async fn sync_apply(
        &self,
        records: Vec<FlowRecord>,
    ) -> Result<(u64, Vec<Skip>), DatapathError> {
        self.call(move |b| {
            let services = b.sync_services();
            let now = monotonic_ns();
            let mut entries = Vec::with_capacity(records.len() * 2);
            let mut skipped = Vec::new();
            for r in &records {
                match flows::rebuild(r, &services, now) {
                    Ok([forward, reply]) => {
                        // An older flow on the client's 5-tuple keeps its SNAT
                        // port taken unless its reply entry goes.
                        if let Some(old) = b.datapath().flow(&forward.0)
                            && old.kind == FLOW_FORWARD
                        {
                            let old_reply = flows::reply_key(&forward.0, &old);
                            if old_reply != reply.0 {
                                b.datapath_mut().remove_flow(&old_reply)?;
                            }
                        }
                        entries.push(forward);
                        entries.push(reply);
                    }
                    Err(s) => skipped.push(s),
                }
            }
            b.datapath_mut().write_flows(&entries)?;
            Ok(((entries.len() / 2) as u64, skipped))
        })
        .await
    }

    /// Corrects the datapath's active flow counts (lc/wlc) from a recount
    /// of the connection table; returns the sum of corrections.
    pub async fn reconcile_active(&self) -> Result<u64, DatapathError> {
        self.call(|b| b.datapath().reconcile_active()).await
    }

    /// Counters of the given services and backends, and live flows counted
    /// from the connection table (forward entries seen within `idle`).
    pub async fn usage(&self, services: Vec<UsageQuery>) -> Result<UsageSnapshot, DatapathError> {
        self.call(move |b| {
            let now = monotonic_ns();
            let flows = if services.iter().any(|q| q.count_flows) {
                let mut live = live_forward(&b.datapath().flows()?);
                live.extend(live_forward6(&b.datapath().flows6()?));
                live
            } else {
                Vec::new()
            };
            let mut snap = UsageSnapshot {
                unmatched: b.datapath().unmatched_counters()?,
                ..Default::default()
            };
            for UsageQuery {
                vip,
                protocol: p,
                interface: iface,
                backends,
                idle,
                count_flows: _,
            } in services
            {
                let Some(vip_id) = b.vip_id(vip, p) else {
                    continue;
                };
                let idle = idle.as_nanos() as u64;
                let live = |pred: &dyn Fn(u32) -> bool| {
                    flows
                        .iter()
                        .filter(|f| {
                            f.vip == vip_id
                                && pred(f.backend)
                                && now.saturating_sub(f.last_seen_ns) <= idle
                        })
                        .count() as u64
                };
                snap.vips.push((
                    (vip, p),
                    Usage {
                        counters: b.datapath().vip_counters(vip_id)?,
                        active_flows: live(&|_| true),
                    },
                ));
                for be in backends {
                    let Some(id) = b.backend_id(&iface, be) else {
                        continue;
                    };
                    snap.backends.push((
                        (vip, p, be),
                        Usage {
                            counters: b.datapath().backend_counters(id)?,
                            active_flows: live(&|x| x == id),
                        },
                    ));
                }
            }
            Ok(snap)
        })
        .await
    }
}

/// What counting live flows needs of a forward entry, whatever its family.
struct Forward {
    vip: u32,
    backend: u32,
    last_seen_ns: u64,
}

/// Forward entries of connections that have not ended: no FIN or RST seen,
/// in nat mode by the reply entry either (a backend closing is only seen
/// there).
fn live_forward(flows: &[(FlowKey, Flow)]) -> Vec<Forward> {
    let closing: std::collections::HashSet<FlowKey> = flows
        .iter()
        .filter(|(_, f)| f.flags & FLOW_CLOSING != 0)
        .map(|(k, _)| *k)
        .collect();
    flows
        .iter()
        .filter(|(k, f)| {
            let reply = FlowKey {
                src_addr: f.rw_dst_addr,
                dst_addr: f.rw_src_addr,
                src_port: f.rw_dst_port,
                dst_port: f.rw_src_port,
                proto: k.proto,
                _pad: [0; 3],
            };
            f.kind == FLOW_FORWARD && !closing.contains(k) && !closing.contains(&reply)
        })
        .map(|(_, f)| Forward {
            vip: f.vip,
            backend: f.backend,
            last_seen_ns: f.last_seen_ns,
        })
        .collect()
}

/// [`live_forward`] of the IPv6 table.
fn live_forward6(flows: &[(FlowKey6, Flow6)]) -> Vec<Forward> {
    let closing: std::collections::HashSet<FlowKey6> = flows
        .iter()
        .filter(|(_, f)| f.flags & FLOW_CLOSING != 0)
        .map(|(k, _)| *k)
        .collect();
    flows
        .iter()
        .filter(|(k, f)| {
            let reply = FlowKey6 {
                src_addr: f.rw_dst_addr,
                dst_addr: f.rw_src_addr,
                src_port: f.rw_dst_port,
                dst_port: f.rw_src_port,
                proto: k.proto,
                _pad: [0; 3],
            };
            f.kind == FLOW_FORWARD && !closing.contains(k) && !closing.contains(&reply)
        })
        .map(|(_, f)| Forward {
            vip: f.vip,
            backend: f.backend,
            last_seen_ns: f.last_seen_ns,
        })
        .collect()
}
