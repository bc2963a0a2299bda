//! One request over a netlink socket, answered by an acknowledgement or a dump: what both
//! the IPVS generic-netlink family and rtnetlink (the dummy interface) need.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

use crate::error::Error;

/// A netlink socket of one protocol, connected to the kernel.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

/// Whether a request reads a dump or waits for an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A dump: every reply until `NLMSG_DONE`.
    Dump,
    /// A change, with these extra `NLM_F_*` flags (`NLM_F_CREATE`, …): acknowledged.
    Change(u16),
}

impl Netlink {
    /// Opens a socket of `protocol` (`NETLINK_GENERIC`, `NETLINK_ROUTE`).
    pub fn open(protocol: isize) -> io::Result<Netlink> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Ask the kernel to say why it refuses a request, not only the errno.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the replies. `what` names the request in errors.
    pub fn request<T>(&mut self, payload: T, kind: Kind, what: impl Fn() -> String) -> Result<Vec<T>, Error>
    where
        T: NetlinkSerializable + NetlinkDeserializable + Debug,
        NetlinkPayload<T>: From<T>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(payload);
        msg.header.flags = NLM_F_REQUEST
            | match kind {
                Kind::Dump => NLM_F_DUMP,
                Kind::Change(flags) => NLM_F_ACK | flags,
            };
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        let io_err = |e: io::Error| Error::Io { what: what(), source: e };
        self.socket.send(&buf, 0).map_err(io_err)?;

        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(io_err)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<T>::deserialize(&data[offset..])
                    .map_err(|e| Error::Decode { what: what(), detail: e.to_string() })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => return Err(Error::Kernel { what: what(), errno: -code.get() }),
                    },
                    _ => {}
                }
            }
        }
    }
}
