//! The IPVS client: dumps what the kernel holds and applies [`Op`]s, one request each.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::protocols::NETLINK_GENERIC;

use crate::error::Error;
use crate::genl::{Command, FAMILY_NAME, IpvsAttr, IpvsMessage};
use crate::kernel::{self, IpvsState, RealServer, ServiceEntry, ServiceKey, VirtualService};
use crate::plan::Op;
use crate::socket::{Kind, Netlink};

/// A connection to the kernel's IPVS.
#[derive(Debug)]
pub struct Ipvs {
    netlink: Netlink,
    family: u16,
}

impl Ipvs {
    /// Connects and resolves the IPVS family; [`Error::NoIpvs`] if the kernel has none.
    pub fn open() -> Result<Ipvs, Error> {
        let mut netlink = Netlink::open(NETLINK_GENERIC)
            .map_err(|e| Error::Io { what: "opening a generic netlink socket".into(), source: e })?;
        let ask = GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())] };
        let replies = match netlink
            .request(GenlMessage::from_payload(ask), Kind::Change(0), || "resolving the IPVS netlink family".into())
        {
            Err(Error::Kernel { errno, .. }) if errno == ENOENT => return Err(Error::NoIpvs),
            other => other?,
        };
        let family = replies
            .iter()
            .flat_map(|m| &m.payload.nlas)
            .find_map(|a| if let GenlCtrlAttrs::FamilyId(id) = a { Some(*id) } else { None })
            .ok_or(Error::NoIpvs)?;
        Ok(Ipvs { netlink, family })
    }

    fn request(&mut self, msg: IpvsMessage, kind: Kind, what: impl Fn() -> String) -> Result<Vec<IpvsMessage>, Error> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family);
        let replies = self.netlink.request(genl, kind, what)?;
        Ok(replies.into_iter().map(|m| m.payload).collect())
    }

    /// Every virtual service the kernel holds (firewall-mark services excluded).
    pub fn services(&mut self) -> Result<Vec<(ServiceKey, VirtualService)>, Error> {
        let replies =
            self.request(IpvsMessage::new(Command::GetService, vec![]), Kind::Dump, || "listing IPVS services".into())?;
        Ok(replies.iter().filter_map(|m| m.service().and_then(kernel::parse_service)).collect())
    }

    /// The real servers of one virtual service, with their connection counts.
    pub fn servers(&mut self, key: &ServiceKey) -> Result<BTreeMap<SocketAddr, RealServer>, Error> {
        let msg = IpvsMessage::new(Command::GetDest, kernel::service_request(key));
        let replies = self.request(msg, Kind::Dump, || format!("listing the real servers of {key}"))?;
        Ok(replies.iter().filter_map(|m| m.dest().and_then(|d| kernel::parse_dest(d, key.addr))).collect())
    }

    /// The virtual services for which `owned` holds, with their real servers.
    pub fn state(&mut self, owned: impl Fn(&ServiceKey) -> bool) -> Result<IpvsState, Error> {
        let mut state = IpvsState::new();
        for (key, service) in self.services()? {
            if owned(&key) {
                let servers = self.servers(&key)?;
                state.insert(key, ServiceEntry { service, servers });
            }
        }
        Ok(state)
    }

    /// Deletes every virtual service (`ipvsadm -C`).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.request(IpvsMessage::new(Command::Flush, vec![]), Kind::Change(0), || "flushing IPVS".into()).map(drop)
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &Op) -> Result<(), Error> {
        let what = || op.to_string();
        let (cmd, attrs, flags) = match op {
            Op::AddService(k, s) => {
                (Command::NewService, vec![IpvsAttr::Service(kernel::service_attrs(k, s))], NLM_F_CREATE | NLM_F_EXCL)
            }
            Op::UpdateService(k, s) => (Command::SetService, vec![IpvsAttr::Service(kernel::service_attrs(k, s))], 0),
            Op::DeleteService(k) => (Command::DelService, kernel::service_request(k), 0),
            Op::AddServer(k, addr, w) | Op::UpdateServer(k, addr, w) => {
                let cmd = if matches!(op, Op::AddServer(..)) { Command::NewDest } else { Command::SetDest };
                (cmd, vec![IpvsAttr::Service(kernel::key_attrs(k)), IpvsAttr::Dest(kernel::dest_attrs(*addr, *w))], 0)
            }
            Op::DeleteServer(k, addr) => (
                Command::DelDest,
                vec![IpvsAttr::Service(kernel::key_attrs(k)), IpvsAttr::Dest(kernel::dest_key_attrs(*addr))],
                0,
            ),
        };
        self.request(IpvsMessage::new(cmd, attrs), Kind::Change(flags), what).map(drop)
    }
}

/// `ENOENT`: what the generic-netlink controller answers for an unknown family.
const ENOENT: i32 = 2;
