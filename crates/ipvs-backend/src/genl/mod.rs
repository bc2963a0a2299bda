//! The IPVS generic-netlink family (`linux/ip_vs.h`) as typed messages.
//!
//! No maintained crate speaks IPVS, so this is a small codec on the rust-netlink stack:
//! [`IpvsMessage`] is a [`GenlFamily`] payload, so `netlink-packet-generic` frames it and
//! `netlink-packet-core` parses the attributes. Only what kproxy sends or reads is typed;
//! anything else (statistics, daemon attributes) round-trips as a raw attribute.

mod attr;

pub use attr::{DestAttr, ServiceAttr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The family's registered name.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const VERSION: u8 = 1;

/// An IPVS command (`IPVS_CMD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `IPVS_CMD_NEW_SERVICE`.
    NewService,
    /// `IPVS_CMD_SET_SERVICE`.
    SetService,
    /// `IPVS_CMD_DEL_SERVICE`.
    DelService,
    /// `IPVS_CMD_GET_SERVICE` (and the kernel's replies to it).
    GetService,
    /// `IPVS_CMD_NEW_DEST`.
    NewDest,
    /// `IPVS_CMD_SET_DEST`.
    SetDest,
    /// `IPVS_CMD_DEL_DEST`.
    DelDest,
    /// `IPVS_CMD_GET_DEST` (and the kernel's replies to it).
    GetDest,
    /// `IPVS_CMD_SET_INFO`: the kernel's reply to `GET_INFO`.
    SetInfo,
    /// `IPVS_CMD_GET_INFO`.
    GetInfo,
    /// `IPVS_CMD_FLUSH`: removes every virtual service.
    Flush,
    /// Any other command, by number.
    Other(u8),
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        match c {
            Command::NewService => 1,
            Command::SetService => 2,
            Command::DelService => 3,
            Command::GetService => 4,
            Command::NewDest => 5,
            Command::SetDest => 6,
            Command::DelDest => 7,
            Command::GetDest => 8,
            Command::SetInfo => 14,
            Command::GetInfo => 15,
            Command::Flush => 17,
            Command::Other(n) => n,
        }
    }
}

impl From<u8> for Command {
    fn from(n: u8) -> Command {
        match n {
            1 => Command::NewService,
            2 => Command::SetService,
            3 => Command::DelService,
            4 => Command::GetService,
            5 => Command::NewDest,
            6 => Command::SetDest,
            7 => Command::DelDest,
            8 => Command::GetDest,
            14 => Command::SetInfo,
            15 => Command::GetInfo,
            17 => Command::Flush,
            n => Command::Other(n),
        }
    }
}

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const INFO_ATTR_VERSION: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// A top-level attribute (`IPVS_CMD_ATTR_*`, or `IPVS_INFO_ATTR_*` in `GET_INFO` replies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsAttr {
    /// `IPVS_CMD_ATTR_SERVICE`: a virtual service, nested.
    Service(Vec<ServiceAttr>),
    /// `IPVS_CMD_ATTR_DEST`: a real server, nested.
    Dest(Vec<DestAttr>),
    /// `IPVS_INFO_ATTR_VERSION` in a `GET_INFO` reply: the IPVS version, `0x00MMmmpp`.
    Version(u32),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        match self {
            IpvsAttr::Service(attrs) => attrs.as_slice().buffer_len(),
            IpvsAttr::Dest(attrs) => attrs.as_slice().buffer_len(),
            IpvsAttr::Version(_) => 4,
            IpvsAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            IpvsAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            IpvsAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            IpvsAttr::Version(_) => INFO_ATTR_VERSION,
            IpvsAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            IpvsAttr::Service(attrs) => attrs.as_slice().emit(buffer),
            IpvsAttr::Dest(attrs) => attrs.as_slice().emit(buffer),
            IpvsAttr::Version(v) => buffer[..4].copy_from_slice(&v.to_ne_bytes()),
            IpvsAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

/// Parses a list of attributes with `parse`.
fn parse_all<T>(
    buf: &[u8],
    parse: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(buf).map(|nla| nla.and_then(|nla| parse(&nla))).collect()
}

fn parse_top(nla: &NlaBuffer<&[u8]>, cmd: Command) -> Result<IpvsAttr, DecodeError> {
    // Info messages number their attributes differently (`IPVS_INFO_ATTR_*`).
    let info = matches!(cmd, Command::GetInfo | Command::SetInfo);
    Ok(match nla.kind() {
        INFO_ATTR_VERSION if info => IpvsAttr::Version(attr::u32_ne(nla.value())?),
        CMD_ATTR_SERVICE if !info => {
            IpvsAttr::Service(parse_all(nla.value(), ServiceAttr::parse).context("in an IPVS service attribute")?)
        }
        CMD_ATTR_DEST if !info => {
            IpvsAttr::Dest(parse_all(nla.value(), DestAttr::parse).context("in an IPVS destination attribute")?)
        }
        _ => IpvsAttr::Other(DefaultNla::parse(nla)?),
    })
}

/// One IPVS message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub cmd: Command,
    /// The attributes.
    pub attrs: Vec<IpvsAttr>,
}

impl IpvsMessage {
    /// A message.
    pub fn new(cmd: Command, attrs: Vec<IpvsAttr>) -> IpvsMessage {
        IpvsMessage { cmd, attrs }
    }

    /// The nested service attributes, if any.
    pub fn service(&self) -> Option<&[ServiceAttr]> {
        self.attrs.iter().find_map(|a| if let IpvsAttr::Service(s) = a { Some(s.as_slice()) } else { None })
    }

    /// The nested destination attributes, if any.
    pub fn dest(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| if let IpvsAttr::Dest(d) = a { Some(d.as_slice()) } else { None })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<IpvsMessage, DecodeError> {
        let cmd = Command::from(header.cmd);
        let attrs = parse_all(buf, |nla| parse_top(nla, cmd)).context("in an IPVS message")?;
        Ok(IpvsMessage { cmd, attrs })
    }
}
