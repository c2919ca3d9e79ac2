//! Interface facts and VIP add/remove over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkAttribute;

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

pub async fn link(handle: &Handle, name: &str) -> Result<Link, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    let msg = match links.try_next().await {
        Ok(Some(msg)) => msg,
        Ok(None) => return Err(NetlinkError::NoInterface(name.to_owned())),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
            return Err(NetlinkError::NoInterface(name.to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
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
