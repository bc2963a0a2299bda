//! IPVS state as plain data: virtual services, their real servers, and the conversion
//! to and from the netlink attributes of [`crate::genl`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proxy_core::Protocol;

use crate::genl::{DestAttr, IpvsAttr, ServiceAttr};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `IP_VS_SVC_F_PERSISTENT`.
const F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every service it holds; never ours to set.
const F_HASHED: u32 = 0x2;
/// `IP_VS_CONN_F_MASQ`: forward by NAT.
const FWD_MASQ: u32 = 0;

/// What identifies a virtual service: protocol, address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The protocol.
    pub protocol: Protocol,
    /// The virtual address.
    pub addr: IpAddr,
    /// The virtual port.
    pub port: u16,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.protocol.as_str().to_uppercase(), SocketAddr::new(self.addr, self.port))
    }
}

/// How a virtual service balances.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VirtualService {
    /// The scheduler (`rr`, `lc`, `sh`, `mh`, …).
    pub scheduler: String,
    /// Persistence (ClientIP affinity) with this timeout in seconds.
    pub persistence: Option<u32>,
}

/// A real server of a virtual service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RealServer {
    /// Its weight: 0 stops new connections (a draining server).
    pub weight: u32,
    /// Active connections (as the kernel reports them; 0 in a desired state).
    pub active: u32,
    /// Inactive connections (as the kernel reports them; 0 in a desired state).
    pub inactive: u32,
}

impl RealServer {
    /// A server that takes new connections with weight 1.
    pub const SERVING: RealServer = RealServer { weight: 1, active: 0, inactive: 0 };

    /// Whether connections still go through it.
    pub fn has_connections(&self) -> bool {
        self.active + self.inactive > 0
    }
}

/// A virtual service and its real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The virtual service.
    pub service: VirtualService,
    /// Its real servers by address.
    pub servers: BTreeMap<SocketAddr, RealServer>,
}

/// Every virtual service of interest, by key.
pub type IpvsState = BTreeMap<ServiceKey, ServiceEntry>;

fn family(ip: IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// An address as `union nf_inet_addr`.
fn inet(ip: IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn from_inet(raw: [u8; 16], af: u16) -> Option<IpAddr> {
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(raw))),
        _ => None,
    }
}

fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn protocol(n: u16) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The attributes that name a virtual service (what `DEL_SERVICE` and the destination
/// commands need).
pub fn key_attrs(key: &ServiceKey) -> Vec<ServiceAttr> {
    vec![
        ServiceAttr::AddressFamily(family(key.addr)),
        ServiceAttr::Protocol(protocol_number(key.protocol)),
        ServiceAttr::Address(inet(key.addr)),
        ServiceAttr::Port(key.port),
    ]
}

/// The full attributes of a virtual service (`NEW_SERVICE`, `SET_SERVICE`).
pub fn service_attrs(key: &ServiceKey, service: &VirtualService) -> Vec<ServiceAttr> {
    let mut attrs = key_attrs(key);
    attrs.push(ServiceAttr::Scheduler(service.scheduler.clone()));
    let flags = if service.persistence.is_some() { F_PERSISTENT } else { 0 };
    attrs.push(ServiceAttr::Flags { flags, mask: !0 });
    attrs.push(ServiceAttr::Timeout(service.persistence.unwrap_or(0)));
    // Persistence per client address: the whole address for IPv4, /128 for IPv6.
    attrs.push(ServiceAttr::Netmask(if key.addr.is_ipv4() { u32::MAX } else { 128 }));
    attrs
}

/// The attributes of a real server (`NEW_DEST`, `SET_DEST`): forwarded by NAT.
pub fn dest_attrs(addr: SocketAddr, weight: u32) -> Vec<DestAttr> {
    vec![
        DestAttr::Address(inet(addr.ip())),
        DestAttr::Port(addr.port()),
        DestAttr::ForwardMethod(FWD_MASQ),
        DestAttr::Weight(weight),
        DestAttr::UpperThreshold(0),
        DestAttr::LowerThreshold(0),
        DestAttr::AddressFamily(family(addr.ip())),
    ]
}

/// The attributes that name a real server (`DEL_DEST`).
pub fn dest_key_attrs(addr: SocketAddr) -> Vec<DestAttr> {
    vec![DestAttr::Address(inet(addr.ip())), DestAttr::Port(addr.port())]
}

/// Reads a virtual service the kernel reported. `None` for services kproxy never makes
/// (firewall-mark services, unknown protocols or families).
pub fn parse_service(attrs: &[ServiceAttr]) -> Option<(ServiceKey, VirtualService)> {
    let (mut af, mut proto, mut addr, mut port) = (None, None, None, None);
    let (mut scheduler, mut flags, mut timeout) = (String::new(), 0, 0);
    for a in attrs {
        match a {
            ServiceAttr::AddressFamily(f) => af = Some(*f),
            ServiceAttr::Protocol(p) => proto = protocol(*p),
            ServiceAttr::Address(raw) => addr = Some(*raw),
            ServiceAttr::Port(p) => port = Some(*p),
            ServiceAttr::Fwmark(m) if *m != 0 => return None,
            ServiceAttr::Scheduler(s) => scheduler = s.clone(),
            ServiceAttr::Flags { flags: f, .. } => flags = *f & !F_HASHED,
            ServiceAttr::Timeout(t) => timeout = *t,
            _ => {}
        }
    }
    let key = ServiceKey { protocol: proto?, addr: from_inet(addr?, af?)?, port: port? };
    let persistence = (flags & F_PERSISTENT != 0).then_some(timeout);
    Some((key, VirtualService { scheduler, persistence }))
}

/// Reads a real server the kernel reported; `service_family` is the family of its
/// service, for kernels that do not report the server's own.
pub fn parse_dest(attrs: &[DestAttr], service_family: IpAddr) -> Option<(SocketAddr, RealServer)> {
    let (mut addr, mut port, mut af) = (None, None, family(service_family));
    let mut server = RealServer::default();
    for a in attrs {
        match a {
            DestAttr::Address(raw) => addr = Some(*raw),
            DestAttr::Port(p) => port = Some(*p),
            DestAttr::AddressFamily(f) => af = *f,
            DestAttr::Weight(w) => server.weight = *w,
            DestAttr::ActiveConnections(n) => server.active = *n,
            DestAttr::InactiveConnections(n) => server.inactive = *n,
            _ => {}
        }
    }
    Some((SocketAddr::new(from_inet(addr?, af)?, port?), server))
}

/// A request naming one service.
pub fn service_request(key: &ServiceKey) -> Vec<IpvsAttr> {
    vec![IpvsAttr::Service(key_attrs(key))]
}
