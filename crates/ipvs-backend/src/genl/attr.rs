//! The nested attributes of a virtual service (`IPVS_SVC_ATTR_*`) and of a real server
//! (`IPVS_DEST_ATTR_*`).
//!
//! Addresses travel as the kernel's `union nf_inet_addr`: 16 bytes, an IPv4 address in the
//! first four. Which family they hold is told by a separate attribute, so they are kept raw
//! here and read by [`crate::kernel`]. Ports are in network byte order, everything else in
//! host order.

use netlink_packet_core::{DecodeError, DefaultNla, Nla, NlaBuffer, Parseable};

const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;

const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_PERSIST_CONNS: u16 = 9;
const DEST_ADDR_FAMILY: u16 = 11;

/// An attribute of a virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAttr {
    /// `AF`: `AF_INET` or `AF_INET6`.
    AddressFamily(u16),
    /// `PROTOCOL`: an IP protocol number.
    Protocol(u16),
    /// `ADDR`: the virtual address (`union nf_inet_addr`).
    Address([u8; 16]),
    /// `PORT`.
    Port(u16),
    /// `FWMARK`: a firewall-mark service (kproxy makes none, but may find some).
    Fwmark(u32),
    /// `SCHED_NAME`: the scheduler, e.g. `rr`.
    Scheduler(String),
    /// `FLAGS`: `struct ip_vs_flags`, the flags and which of them to change.
    Flags {
        /// `IP_VS_SVC_F_*` bits.
        flags: u32,
        /// Which bits to set.
        mask: u32,
    },
    /// `TIMEOUT`: the persistence timeout in seconds.
    Timeout(u32),
    /// `NETMASK`: the persistence granularity (a mask for IPv4, a prefix length for IPv6).
    Netmask(u32),
    /// Anything else (statistics, persistence engine), kept as it came.
    Other(DefaultNla),
}

/// An attribute of a real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    /// `ADDR` (`union nf_inet_addr`).
    Address([u8; 16]),
    /// `PORT`.
    Port(u16),
    /// `FWD_METHOD`: `IP_VS_CONN_F_MASQ` (0) for NAT.
    ForwardMethod(u32),
    /// `WEIGHT`: 0 stops new connections.
    Weight(u32),
    /// `U_THRESH`: the connection upper threshold (0: none).
    UpperThreshold(u32),
    /// `L_THRESH`: the connection lower threshold.
    LowerThreshold(u32),
    /// `ACTIVE_CONNS` (read-only).
    ActiveConnections(u32),
    /// `INACT_CONNS` (read-only).
    InactiveConnections(u32),
    /// `PERSIST_CONNS` (read-only).
    PersistentConnections(u32),
    /// `ADDR_FAMILY`: the real server's family, when it differs from the service's.
    AddressFamily(u16),
    /// Anything else (statistics, tunnel settings), kept as it came.
    Other(DefaultNla),
}

pub(crate) fn u32_ne(b: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_ne_bytes(b.try_into().map_err(|_| DecodeError::from(format!("expected 4 bytes, got {}", b.len())))?))
}

fn u16_ne(b: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_ne_bytes(b.try_into().map_err(|_| DecodeError::from(format!("expected 2 bytes, got {}", b.len())))?))
}

fn u16_be(b: &[u8]) -> Result<u16, DecodeError> {
    u16_ne(b).map(u16::from_be)
}

fn addr(b: &[u8]) -> Result<[u8; 16], DecodeError> {
    if b.len() > 16 {
        return Err(DecodeError::from(format!("an address of {} bytes", b.len())));
    }
    let mut out = [0; 16];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

/// A NUL-terminated string.
fn string(b: &[u8]) -> Result<String, DecodeError> {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8(b[..end].to_vec()).map_err(|e| DecodeError::from(e.to_string()))
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        match self {
            ServiceAttr::AddressFamily(_) | ServiceAttr::Protocol(_) | ServiceAttr::Port(_) => 2,
            ServiceAttr::Address(_) => 16,
            ServiceAttr::Fwmark(_) | ServiceAttr::Timeout(_) | ServiceAttr::Netmask(_) => 4,
            ServiceAttr::Scheduler(s) => s.len() + 1,
            ServiceAttr::Flags { .. } => 8,
            ServiceAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            ServiceAttr::AddressFamily(_) => SVC_AF,
            ServiceAttr::Protocol(_) => SVC_PROTOCOL,
            ServiceAttr::Address(_) => SVC_ADDR,
            ServiceAttr::Port(_) => SVC_PORT,
            ServiceAttr::Fwmark(_) => SVC_FWMARK,
            ServiceAttr::Scheduler(_) => SVC_SCHED_NAME,
            ServiceAttr::Flags { .. } => SVC_FLAGS,
            ServiceAttr::Timeout(_) => SVC_TIMEOUT,
            ServiceAttr::Netmask(_) => SVC_NETMASK,
            ServiceAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            ServiceAttr::AddressFamily(v) | ServiceAttr::Protocol(v) => buffer[..2].copy_from_slice(&v.to_ne_bytes()),
            ServiceAttr::Port(p) => buffer[..2].copy_from_slice(&p.to_be_bytes()),
            ServiceAttr::Address(a) => buffer[..16].copy_from_slice(a),
            ServiceAttr::Fwmark(v) | ServiceAttr::Timeout(v) | ServiceAttr::Netmask(v) => {
                buffer[..4].copy_from_slice(&v.to_ne_bytes())
            }
            ServiceAttr::Scheduler(s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            ServiceAttr::Flags { flags, mask } => {
                buffer[..4].copy_from_slice(&flags.to_ne_bytes());
                buffer[4..8].copy_from_slice(&mask.to_ne_bytes());
            }
            ServiceAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl ServiceAttr {
    /// Parses one attribute.
    pub fn parse(nla: &NlaBuffer<&[u8]>) -> Result<ServiceAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            SVC_AF => ServiceAttr::AddressFamily(u16_ne(v)?),
            SVC_PROTOCOL => ServiceAttr::Protocol(u16_ne(v)?),
            SVC_ADDR => ServiceAttr::Address(addr(v)?),
            SVC_PORT => ServiceAttr::Port(u16_be(v)?),
            SVC_FWMARK => ServiceAttr::Fwmark(u32_ne(v)?),
            SVC_SCHED_NAME => ServiceAttr::Scheduler(string(v)?),
            SVC_FLAGS if v.len() == 8 => ServiceAttr::Flags { flags: u32_ne(&v[..4])?, mask: u32_ne(&v[4..])? },
            SVC_TIMEOUT => ServiceAttr::Timeout(u32_ne(v)?),
            SVC_NETMASK => ServiceAttr::Netmask(u32_ne(v)?),
            _ => ServiceAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Address(_) => 16,
            DestAttr::Port(_) | DestAttr::AddressFamily(_) => 2,
            DestAttr::Other(nla) => nla.value_len(),
            _ => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Address(_) => DEST_ADDR,
            DestAttr::Port(_) => DEST_PORT,
            DestAttr::ForwardMethod(_) => DEST_FWD_METHOD,
            DestAttr::Weight(_) => DEST_WEIGHT,
            DestAttr::UpperThreshold(_) => DEST_U_THRESH,
            DestAttr::LowerThreshold(_) => DEST_L_THRESH,
            DestAttr::ActiveConnections(_) => DEST_ACTIVE_CONNS,
            DestAttr::InactiveConnections(_) => DEST_INACT_CONNS,
            DestAttr::PersistentConnections(_) => DEST_PERSIST_CONNS,
            DestAttr::AddressFamily(_) => DEST_ADDR_FAMILY,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DestAttr::Address(a) => buffer[..16].copy_from_slice(a),
            DestAttr::Port(p) => buffer[..2].copy_from_slice(&p.to_be_bytes()),
            DestAttr::AddressFamily(f) => buffer[..2].copy_from_slice(&f.to_ne_bytes()),
            DestAttr::ForwardMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConnections(v)
            | DestAttr::InactiveConnections(v)
            | DestAttr::PersistentConnections(v) => buffer[..4].copy_from_slice(&v.to_ne_bytes()),
            DestAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl DestAttr {
    /// Parses one attribute.
    pub fn parse(nla: &NlaBuffer<&[u8]>) -> Result<DestAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            DEST_ADDR => DestAttr::Address(addr(v)?),
            DEST_PORT => DestAttr::Port(u16_be(v)?),
            DEST_FWD_METHOD => DestAttr::ForwardMethod(u32_ne(v)?),
            DEST_WEIGHT => DestAttr::Weight(u32_ne(v)?),
            DEST_U_THRESH => DestAttr::UpperThreshold(u32_ne(v)?),
            DEST_L_THRESH => DestAttr::LowerThreshold(u32_ne(v)?),
            DEST_ACTIVE_CONNS => DestAttr::ActiveConnections(u32_ne(v)?),
            DEST_INACT_CONNS => DestAttr::InactiveConnections(u32_ne(v)?),
            DEST_PERSIST_CONNS => DestAttr::PersistentConnections(u32_ne(v)?),
            DEST_ADDR_FAMILY => DestAttr::AddressFamily(u16_ne(v)?),
            _ => DestAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}
