//! The IO edge: drives one [`Instance`] with a raw VRRP socket, netlink for
//! the VIPs and link states, an AF_PACKET socket for GARPs and the notify
//! scripts. Tracked scripts are run elsewhere and arrive as [`TrackUpdate`]s.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use rtnetlink::Handle;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use super::config::{ConfigError, InstanceConfig};
use super::garp::{self, GarpSender};
use super::netlink::{self, Link, LinkEvents, NetlinkError};
use super::notify;
use super::packet::{self, Advert, EncodeError, Expected, PacketError, VRRP_MULTICAST, VRRP_TTL};
use super::state::{Action, Event, Instance, State, TrackKind};

/// keepalived's IPTOS_PREC_INTERNETCONTROL, so QoS treats adverts alike.
const TOS_INTERNET_CONTROL: u32 = 0xc0;
/// A VRRP datagram is at most 20 + 40 (options) + 8 + 255 * 4 + 8 bytes.
const RECV_BUF: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("invalid VRRP instance: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("VRRP socket: {0}")]
    Socket(#[from] io::Error),
    #[error("encoding an advert: {0}")]
    Encode(#[from] EncodeError),
}

/// A tracked interface or script changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackUpdate {
    pub kind: TrackKind,
    pub name: String,
    pub up: bool,
}

/// What `lb status` shows for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub priority: u8,
    pub master: Option<(Ipv4Addr, u8)>,
    /// Dropped packets by [`PacketError::counter`].
    pub rejected: BTreeMap<&'static str, u64>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: State::Initialize,
            priority: 0,
            master: None,
            rejected: BTreeMap::new(),
        }
    }
}

/// Runs one instance until `shutdown` resolves; then a master sends
/// priority 0 and releases the VIPs before this returns.
pub async fn run_instance(
    config: InstanceConfig,
    mut tracks: mpsc::Receiver<TrackUpdate>,
    status: watch::Sender<Status>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IoError> {
    config.validate()?;
    let handle = netlink::connect()?;
    let link = netlink::link(&handle, &config.interface).await?;
    let local = match config.unicast_src_ip {
        Some(addr) => addr,
        None => {
            netlink::primary_ipv4(&handle, &link, &config.interface, &config.virtual_ipaddress)
                .await?
        }
    };
    let mut links = LinkEvents::subscribe()?;
    let rx = open_rx(&config, &link)?;
    // SAFETY: the Socket owns its descriptor, keeps it open until dropped
    // and always returns the same one from as_raw_fd.
    let rx = unsafe { AsyncFd::register_with_interest(rx, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let edge = Edge {
        tx: open_tx(&config, local)?,
        garp: GarpSender::new(link.index)?,
        expected: config.expected(),
        handle,
        link,
        local,
        config,
    };
    let mut machine = Instance::new(&edge.config, local);
    let mut rejected = BTreeMap::new();
    let watched = std::iter::once(&edge.config.interface)
        .chain(edge.config.track_interface.iter().map(|t| &t.name));
    for name in watched {
        let up = netlink::link_up(&edge.handle, name).await?;
        machine.handle(interface_event(name.clone(), up), Instant::now());
    }
    edge.apply(machine.handle(Event::Startup, Instant::now()))
        .await;
    publish(&status, &machine, &rejected);

    tokio::pin!(shutdown);
    let mut tracks_open = true;
    let mut links_open = true;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let deadline = machine.poll_timeout();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            () = &mut shutdown => break,
            () = timer => Event::Timeout,
            received = recv(&rx, &mut buf) => match received.map(|n| edge.accept(&buf[..n])) {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => {
                    if !matches!(e, PacketError::WrongVrid { .. }) {
                        tracing::debug!(instance = %edge.config.name, error = %e, "VRRP packet dropped");
                    }
                    *rejected.entry(e.counter()).or_insert(0) += 1;
                    publish(&status, &machine, &rejected);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(instance = %edge.config.name, error = %e, "VRRP receive failed");
                    continue;
                }
            },
            change = links.next(), if links_open => match change {
                Some((name, up)) => interface_event(name, up),
                None => {
                    // Adverts still flow; a dead link then shows as silence
                    // to the peer, which takes over as it would anyway.
                    tracing::error!(instance = %edge.config.name, "netlink link events stopped");
                    links_open = false;
                    continue;
                }
            },
            update = tracks.recv(), if tracks_open => match update {
                Some(u) => Event::Track { kind: u.kind, name: u.name, up: u.up },
                None => {
                    tracks_open = false;
                    continue;
                }
            },
        };
        edge.apply(machine.handle(event, Instant::now())).await;
        publish(&status, &machine, &rejected);
    }
    edge.apply(machine.handle(Event::Shutdown, Instant::now()))
        .await;
    publish(&status, &machine, &rejected);
    Ok(())
}

fn interface_event(name: String, up: bool) -> Event {
    Event::Track {
        kind: TrackKind::Interface,
        name,
        up,
    }
}

fn publish(
    status: &watch::Sender<Status>,
    machine: &Instance,
    rejected: &BTreeMap<&'static str, u64>,
) {
    status.send_replace(Status {
        state: machine.state(),
        priority: machine.effective_priority(),
        master: machine.master(),
        rejected: rejected.clone(),
    });
}

/// Receives on an unbound raw socket: binding a raw socket to an address
/// would filter out the multicast adverts. SO_BINDTODEVICE keeps other
/// interfaces' VRRP traffic away.
fn open_rx(config: &InstanceConfig, link: &Link) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(packet::IPPROTO_VRRP))),
    )?;
    s.bind_device(Some(config.interface.as_bytes()))?;
    if !config.is_unicast() {
        s.join_multicast_v4_n(&VRRP_MULTICAST, &InterfaceIndexOrAddress::Index(link.index))?;
        // Only the group we joined, not every group of every socket.
        s.set_multicast_all_v4(false)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Sends from `local` (bound, so that it is also the v3 pseudo-header's
/// source), TTL 255 for unicast and multicast alike, without looping our
/// own adverts back to us. SO_BINDTODEVICE also picks the multicast
/// interface.
fn open_tx(config: &InstanceConfig, local: Ipv4Addr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(packet::IPPROTO_VRRP))),
    )?;
    s.bind_device(Some(config.interface.as_bytes()))?;
    s.bind(&SocketAddrV4::new(local, 0).into())?;
    s.set_ttl_v4(u32::from(VRRP_TTL))?;
    s.set_multicast_ttl_v4(u32::from(VRRP_TTL))?;
    s.set_multicast_loop_v4(false)?;
    s.set_tos_v4(TOS_INTERNET_CONTROL)?;
    Ok(s)
}

async fn recv(fd: &AsyncFd<Socket>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().read(buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

struct Edge {
    config: InstanceConfig,
    handle: Handle,
    link: Link,
    local: Ipv4Addr,
    tx: Socket,
    garp: GarpSender,
    expected: Expected,
}

impl Edge {
    fn accept(&self, datagram: &[u8]) -> Result<Event, PacketError> {
        let (ip, payload) = packet::parse_ipv4(datagram)?;
        let advert = Advert::decode(payload, ip.src, ip.dst)?;
        self.expected.check(&ip, &advert)?;
        Ok(Event::Advert {
            src: ip.src,
            priority: advert.priority,
            advert_int: advert.advert_int,
        })
    }

    /// Carries out actions in order. A failure is logged and the rest still
    /// run: a missed GARP must not keep the VIP from being added.
    async fn apply(&self, actions: Vec<Action>) {
        for action in actions {
            let result = match action {
                Action::SendAdvert { priority } => self.send_advert(priority),
                Action::AddVips => self.for_each_vip(true).await,
                Action::RemoveVips => self.for_each_vip(false).await,
                Action::SendGarp { repeat } => self.send_garps(repeat),
                Action::Notify { state, priority } => {
                    tracing::info!(instance = %self.config.name, state = state.as_str(), priority, "VRRP transition");
                    notify::spawn(
                        notify::commands(&self.config, state, priority),
                        self.config.notify_run_as,
                    );
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!(instance = %self.config.name, ?action, error = %e, "VRRP action failed");
            }
        }
    }

    fn send_advert(&self, priority: u8) -> Result<(), IoError> {
        let advert = Advert {
            version: self.config.version,
            vrid: self.config.virtual_router_id,
            priority,
            advert_int: self.config.advert_int,
            auth: self.config.auth(),
            addresses: self.config.vip_addresses(),
        };
        let peers = if self.config.is_unicast() {
            self.config.unicast_peer.clone()
        } else {
            vec![VRRP_MULTICAST]
        };
        // Every peer gets its try: one unreachable peer must not silence us
        // towards the others.
        let mut first_error = None;
        for dst in peers {
            let sent = advert
                .encode(self.local, dst)
                .map_err(IoError::from)
                .and_then(|bytes| {
                    self.tx
                        .send_to(&bytes, &SocketAddrV4::new(dst, 0).into())
                        .map_err(IoError::from)
                });
            if let Err(e) = sent {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn for_each_vip(&self, add: bool) -> Result<(), IoError> {
        let mut first_error = None;
        for vip in &self.config.virtual_ipaddress {
            let result = if add {
                netlink::add_vip(&self.handle, &self.link, vip).await
            } else {
                netlink::remove_vip(&self.handle, &self.link, vip).await
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    fn send_garps(&self, repeat: u32) -> Result<(), IoError> {
        for vip in &self.config.virtual_ipaddress {
            let frame = garp::frame(self.link.mac, vip.addr);
            for _ in 0..repeat {
                self.garp.send(&frame)?;
            }
        }
        Ok(())
    }
}
