//! Interface facts and VIP add/remove over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::Handle;
use rtnetlink::constants::RTMGRP_LINK;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};

use super::config::Vip;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("interface {0} has no Ethernet address")]
    NoMac(String),
    #[error("interface {0} has no primary IPv4 address (set unicast_src_ip)")]
    NoAddress(String),
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Request(#[from] rtnetlink::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
}

/// Opens a netlink connection and drives it on the current tokio runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn get_link(handle: &Handle, name: &str) -> Result<LinkMessage, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(NetlinkError::NoInterface(name.to_owned())),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
            Err(NetlinkError::NoInterface(name.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn link(handle: &Handle, name: &str) -> Result<Link, NetlinkError> {
    let msg = get_link(handle, name).await?;
    let mac = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::NoMac(name.to_owned()))?;
    Ok(Link {
        index: msg.header.index,
        mac,
    })
}

/// The interface's first primary IPv4 address that is not one of our VIPs:
/// the source keepalived advertises from and compares in tie-breaks.
pub async fn primary_ipv4(
    handle: &Handle,
    link: &Link,
    name: &str,
    vips: &[Vip],
) -> Result<Ipv4Addr, NetlinkError> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        if msg.header.family != AddressFamily::Inet
            || msg.header.flags.contains(AddressHeaderFlags::Secondary)
        {
            continue;
        }
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        if let Some(addr) = local.filter(|a| vips.iter().all(|v| v.addr != *a)) {
            return Ok(addr);
        }
    }
    Err(NetlinkError::NoAddress(name.to_owned()))
}

/// Adds a VIP; one that is already there counts as added.
pub async fn add_vip(handle: &Handle, link: &Link, vip: &Vip) -> Result<(), NetlinkError> {
    match handle
        .address()
        .add(link.index, IpAddr::V4(vip.addr), vip.prefix_len)
        .execute()
        .await
    {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => Ok(()),
        other => Ok(other?),
    }
}

/// Removes a VIP; one that is already gone counts as removed.
pub async fn remove_vip(handle: &Handle, link: &Link, vip: &Vip) -> Result<(), NetlinkError> {
    let msg = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
        .index(link.index)
        .address(vip.addr, vip.prefix_len)
        .build();
    match handle.address().del(msg).execute().await {
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(e.raw_code().abs(), libc::EADDRNOTAVAIL | libc::ENOENT) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

/// keepalived's test for a usable interface: administratively up and running.
fn is_running(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up | LinkFlags::Running)
}

/// Whether an interface is usable now; a missing one is not.
pub async fn link_up(handle: &Handle, name: &str) -> Result<bool, NetlinkError> {
    match get_link(handle, name).await {
        Ok(msg) => Ok(is_running(msg.header.flags)),
        Err(NetlinkError::NoInterface(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Link changes from the kernel's RTMGRP_LINK multicast group.
pub struct LinkEvents(Messages);

impl LinkEvents {
    /// Subscribes before the caller reads the initial states, so that no
    /// change falls between the two.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let (mut connection, _, messages) = rtnetlink::new_connection()?;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        tokio::spawn(connection);
        Ok(LinkEvents(messages))
    }

    /// The next interface that appeared, changed or went away, with whether
    /// it is usable now. `None` when the netlink connection is gone.
    pub async fn next(&mut self) -> Option<(String, bool)> {
        while let Some((msg, _)) = self.0.next().await {
            if let Some(change) = link_change(&msg.payload) {
                return Some(change);
            }
        }
        None
    }
}

fn link_change(payload: &NetlinkPayload<RouteNetlinkMessage>) -> Option<(String, bool)> {
    let (link, exists) = match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, true),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, false),
        _ => return None,
    };
    let name = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    Some((name, exists && is_running(link.header.flags)))
}
