//! The dummy interface that holds the Service IPs (`kproxy-ipvs0`), over rtnetlink.
//!
//! IPVS only sees packets addressed to the node itself, so every ClusterIP, external IP
//! and LB IP is bound to a dummy interface, as upstream binds them to `kube-ipvs0`. The
//! interface stays down, as upstream's: local addresses work without it being up, and
//! nothing is routed out of it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::error::Error;
use crate::socket::{Kind, Netlink};

/// The dummy interface's default name.
pub const DEFAULT_NAME: &str = "kproxy-ipvs0";

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;
const EOPNOTSUPP: i32 = 95;

/// The dummy interface.
#[derive(Debug)]
pub struct Dummy {
    netlink: Netlink,
    name: String,
}

impl Dummy {
    /// A handle on the interface `name` (nothing is created yet).
    pub fn open(name: &str) -> Result<Dummy, Error> {
        let netlink = Netlink::open(NETLINK_ROUTE)
            .map_err(|e| Error::Io { what: "opening an rtnetlink socket".into(), source: e })?;
        Ok(Dummy { netlink, name: name.to_string() })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's index, if it exists.
    pub fn index(&mut self) -> Result<Option<u32>, Error> {
        let mut ask = LinkMessage::default();
        ask.attributes.push(LinkAttribute::IfName(self.name.clone()));
        let name = self.name.clone();
        match self.netlink.request(RouteNetlinkMessage::GetLink(ask), Kind::Change(0), || format!("looking up {name}"))
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })),
            Err(Error::Kernel { errno: ENODEV, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the interface unless it exists; returns its index.
    pub fn ensure(&mut self) -> Result<u32, Error> {
        if let Some(index) = self.index()? {
            return Ok(index);
        }
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(self.name.clone()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]));
        let name = self.name.clone();
        match self.netlink.request(RouteNetlinkMessage::NewLink(link), Kind::Change(NLM_F_CREATE | NLM_F_EXCL), || {
            format!("creating dummy interface {name}")
        }) {
            Ok(_) | Err(Error::Kernel { errno: EEXIST, .. }) => {}
            Err(Error::Kernel { errno: EOPNOTSUPP, .. }) => {
                let what =
                    format!("creating dummy interface {}: the kernel has no dummy driver (CONFIG_DUMMY)", self.name);
                return Err(Error::Kernel { what, errno: EOPNOTSUPP });
            }
            Err(e) => return Err(e),
        }
        self.index()?.ok_or_else(|| Error::Kernel { what: format!("creating {}", self.name), errno: ENODEV })
    }

    /// Deletes the interface and with it its addresses (nothing if it does not exist).
    pub fn delete(&mut self) -> Result<(), Error> {
        let Some(index) = self.index()? else { return Ok(()) };
        let mut link = LinkMessage::default();
        link.header.index = index;
        let name = self.name.clone();
        match self.netlink.request(RouteNetlinkMessage::DelLink(link), Kind::Change(0), || format!("deleting {name}")) {
            Ok(_) | Err(Error::Kernel { errno: ENODEV, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The addresses bound to the interface `index`.
    pub fn addresses(&mut self, index: u32) -> Result<BTreeSet<IpAddr>, Error> {
        let replies =
            self.netlink.request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), Kind::Dump, || {
                "listing addresses".into()
            })?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.into_iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => Some(ip),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(index: u32, ip: IpAddr) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.prefix_len = if ip.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv6() {
            // No duplicate address detection: the address must work at once.
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        msg
    }

    /// Binds `ip` to the interface `index` (nothing if it is bound already).
    pub fn add(&mut self, index: u32, ip: IpAddr) -> Result<(), Error> {
        let msg = RouteNetlinkMessage::NewAddress(Self::address_message(index, ip));
        match self.netlink.request(msg, Kind::Change(NLM_F_CREATE | NLM_F_EXCL), || format!("binding {ip}")) {
            Ok(_) | Err(Error::Kernel { errno: EEXIST, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Unbinds `ip` from the interface `index` (nothing if it is not bound).
    pub fn remove(&mut self, index: u32, ip: IpAddr) -> Result<(), Error> {
        let msg = RouteNetlinkMessage::DelAddress(Self::address_message(index, ip));
        match self.netlink.request(msg, Kind::Change(0), || format!("unbinding {ip}")) {
            Ok(_) | Err(Error::Kernel { errno: EADDRNOTAVAIL, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
