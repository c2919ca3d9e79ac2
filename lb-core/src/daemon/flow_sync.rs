//! The connection-state sync task: the UDP edge around `crate::sync`.
//!
//! One task per daemon. Each `interval` it sends a hello to every peer and,
//! while the VRRP instance is MASTER, the flows the scan selects; it applies
//! whatever its peers send, whatever its own state. See `crate::sync` for
//! the design.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{net::UdpSocket, sync::watch, task::JoinHandle, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Dataplane;
use crate::{
    config,
    sync::{
        Counters, MAX_BATCH, MAX_FLOWS_PER_SCAN, PACE_EVERY,
        flows::Sent,
        keyfile::{self, KeyFileError},
        wire::{self, Body, FlowRecord, Gate, Key, MAX_MESSAGE, Message, RECORDS_PER_MESSAGE},
    },
    vrrp,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncSetupError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("sync: binding {addr}: {error}")]
    Bind {
        addr: SocketAddrV4,
        error: std::io::Error,
    },
    #[error("sync: no running vrrp_instance named {0:?}")]
    NoInstance(String),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything the sender needs between ticks.
struct Sender {
    sock: Arc<UdpSocket>,
    key: Key,
    peers: Vec<SocketAddr>,
    /// The address the socket is bound to: peers see it as the source, and
    /// the tag covers it.
    source: Ipv4Addr,
    boot_id: u64,
    seq: u64,
    counters: Arc<Counters>,
}

impl Sender {
    async fn send(&mut self, body: Body) {
        self.seq += 1;
        let records = match &body {
            Body::Flows(r) => r.len() as u64,
            Body::Hello => 0,
        };
        let bytes = wire::seal(
            &self.key,
            self.source,
            &Message {
                boot_id: self.boot_id,
                seq: self.seq,
                sent_ms: unix_ms(),
                body,
            },
        );
        for p in &self.peers {
            match self.sock.send_to(&bytes, p).await {
                Ok(_) => {
                    Counters::add(&self.counters.messages_sent, 1);
                    Counters::add(&self.counters.flows_sent, records);
                }
                Err(e) => {
                    Counters::add(&self.counters.send_errors, 1);
                    tracing::debug!(peer = %p, error = %e, "sync send failed");
                }
            }
        }
    }

    async fn send_flows(&mut self, records: Vec<FlowRecord>) {
        for (i, chunk) in records.chunks(RECORDS_PER_MESSAGE).enumerate() {
            if i > 0 && i % PACE_EVERY == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.send(Body::Flows(chunk.to_vec())).await;
        }
    }
}

/// Loads the key, binds the socket and starts the task. `role` is the
/// status of the instance whose mastership makes this node the sender.
pub async fn start(
    cfg: &config::Sync,
    dataplane: Dataplane,
    role: watch::Receiver<vrrp::Status>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, SyncSetupError> {
    let key = keyfile::load(&cfg.key_file)?;
    let addr = SocketAddrV4::new(cfg.source_address, cfg.port);
    let sock = UdpSocket::bind(addr)
        .await
        .map_err(|error| SyncSetupError::Bind { addr, error })?;
    let boot_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    tracing::info!(listen = %addr, peers = ?cfg.peers, instance = %cfg.vrrp_instance, "connection-state sync running");
    let sender = Sender {
        sock: Arc::new(sock),
        key: key.clone(),
        peers: cfg
            .peers
            .iter()
            .map(|p| SocketAddr::V4(SocketAddrV4::new(*p, cfg.port)))
            .collect(),
        source: cfg.source_address,
        boot_id,
        seq: 0,
        counters: counters.clone(),
    };
    let gate = Gate::new(key, &cfg.peers, boot_id);
    Ok(tokio::spawn(run(
        sender,
        gate,
        cfg.interval,
        dataplane,
        role,
        stop,
    )))
}

async fn run(
    mut sender: Sender,
    mut gate: Gate,
    interval: Duration,
    dataplane: Dataplane,
    role: watch::Receiver<vrrp::Status>,
    stop: CancellationToken,
) {
    let counters = sender.counters.clone();
    let sock = sender.sock.clone();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = Sent::default();
    let mut peer_boots: HashMap<Ipv4Addr, u64> = HashMap::new();
    // One byte more than accepted, so an oversized datagram is seen as such
    // rather than silently truncated.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                sender.send(Body::Hello).await;
                if role.borrow().state != vrrp::State::Master {
                    // Whatever was sent before, a new master sends it all.
                    sent.clear();
                    continue;
                }
                match dataplane.sync_scan(std::mem::take(&mut sent), MAX_FLOWS_PER_SCAN).await {
                    Ok((records, s)) => {
                        sent = s;
                        sender.send_flows(records).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "sync: reading the connection table failed"),
                }
            }
            first = sock.recv_from(&mut buf) => {
                let mut records = Vec::new();
                let mut next = first;
                for _ in 0..MAX_BATCH {
                    let (n, from) = match next {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(error = %e, "sync receive failed");
                            break;
                        }
                    };
                    let from_ip = match from {
                        SocketAddr::V4(a) => *a.ip(),
                        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                    };
                    match gate.accept(from_ip, &buf[..n], unix_ms()) {
                        Ok(m) => {
                            Counters::add(&counters.messages_received, 1);
                            if peer_boots.insert(from_ip, m.boot_id) != Some(m.boot_id) {
                                tracing::info!(peer = %from_ip, "sync peer (re)started: resending the whole connection table");
                                sent.clear();
                            }
                            if let Body::Flows(r) = m.body {
                                records.extend(r);
                            }
                        }
                        Err(reject) => {
                            counters.reject(reject);
                            tracing::debug!(peer = %from, reason = %reject, "sync message refused");
                        }
                    }
                    next = match sock.try_recv_from(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        r => r,
                    };
                }
                if records.is_empty() {
                    continue;
                }
                match dataplane.sync_apply(records).await {
                    Ok((applied, skipped)) => {
                        Counters::add(&counters.flows_applied, applied);
                        for s in skipped {
                            counters.skip(s);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "sync: writing received flows failed"),
                }
            }
        }
    }
}
