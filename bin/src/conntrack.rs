//! Clearing stale UDP conntrack entries over ctnetlink, after each sync.
//!
//! proxy-core decides which entries are stale
//! ([`UdpFrontends`](proxy_core::conntrack::UdpFrontends)); this module lists the UDP
//! entries of the current network namespace and deletes those. The messages are
//! `netlink-packet-netfilter`'s; the socket is libmnl's, as for nf_tables.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use proxy_core::conntrack::{GoneFrontends, UdpFlow, UdpFrontends};
use proxy_core::{Desired, IpFamily};

/// Message types below this are netlink's own (`NLMSG_MIN_TYPE`: noop, error, done).
const NLMSG_MIN_TYPE: u16 = 0x10;
/// The nfnetlink subsystem of conntrack messages (the high byte of their type).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;

fn nfproto(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

/// One ctnetlink request, as bytes.
fn request(family: IpFamily, flags: u16, seq: u32, message: ConntrackMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let inner = NetfilterMessage::new(NetfilterHeader::new(nfproto(family), 0, 0), message);
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// (source, destination, protocol) of a tuple attribute.
fn tuple(parts: &[Tuple]) -> Option<(SocketAddr, SocketAddr, Protocol)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0u16, 0u16);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(fields) => {
                for field in fields {
                    match field {
                        ProtoTuple::Protocol(p) => proto = Some(*p),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((SocketAddr::new(src?, sport), SocketAddr::new(dst?, dport), proto?))
}

/// One conntrack entry of a protocol with ports (TCP, UDP, SCTP): where the client sent,
/// and where the reply comes from (the endpoint, when it was DNATed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The protocol.
    pub protocol: Protocol,
    /// The original direction's source: the client.
    pub orig_src: SocketAddr,
    /// The original direction's destination: what the client sent to.
    pub orig_dst: SocketAddr,
    /// The reply direction's source: the endpoint, or `orig_dst` if not DNATed.
    pub reply_src: SocketAddr,
}

impl Flow {
    /// Whether its destination was translated.
    pub fn dnated(&self) -> bool {
        self.reply_src != self.orig_dst
    }

    /// The protocol, if it is one a Service can have.
    pub fn service_protocol(&self) -> Option<proxy_core::Protocol> {
        match self.protocol {
            Protocol::Tcp => Some(proxy_core::Protocol::Tcp),
            Protocol::Udp => Some(proxy_core::Protocol::Udp),
            Protocol::Sctp => Some(proxy_core::Protocol::Sctp),
            _ => None,
        }
    }

    /// The entry as stale UDP cleanup reads it, if it is UDP.
    fn udp(&self) -> Option<UdpFlow> {
        (self.protocol == Protocol::Udp).then_some(UdpFlow {
            orig_src: self.orig_src,
            orig_dst: self.orig_dst,
            reply_src: self.reply_src.ip(),
        })
    }
}

/// The flow of one dumped entry, if it has both tuples.
fn flow(attributes: &[ConntrackAttribute]) -> Option<Flow> {
    let (mut orig, mut reply) = (None, None);
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            _ => {}
        }
    }
    let ((orig_src, orig_dst, protocol), (reply_src, _, _)) = (orig?, reply?);
    Some(Flow { protocol, orig_src, orig_dst, reply_src })
}

/// What one receive of a dump held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// More messages follow.
    More,
    /// The dump ended.
    Done,
    /// The kernel refused, with this errno.
    Error(i32),
}

/// Reads the messages of one receive (decoded by `netlink-packet-netfilter`): flows go to
/// `flows`. Never panics: a message that does not decode ends the buffer's reading, as
/// the kernel never sends one. Only ctnetlink and netlink's own messages are decoded;
/// others are skipped unread (the fuzzer found `netlink-packet-netfilter` 0.4 panicking
/// on a malformed nf_tables set message, which a ctnetlink socket never carries).
pub(crate) fn read_dump(buf: &[u8], flows: &mut Vec<Flow>) -> Received {
    let mut rest = buf;
    while !rest.is_empty() {
        let Some(&[l0, l1, l2, l3, t0, t1]) = rest.get(..6) else { break };
        let (length, kind) = (u32::from_ne_bytes([l0, l1, l2, l3]) as usize, u16::from_ne_bytes([t0, t1]));
        if kind >= NLMSG_MIN_TYPE && kind >> 8 != NFNL_SUBSYS_CTNETLINK {
            rest = rest.get(length.next_multiple_of(4).max(1)..).unwrap_or_default();
            continue;
        }
        let Ok(message) = NetlinkMessage::<NetfilterMessage>::deserialize(rest) else { break };
        match message.payload {
            NetlinkPayload::Done(_) => return Received::Done,
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Received::Error(-code.get());
                }
            }
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
                ..
            }) => flows.extend(flow(&attributes)),
            _ => {}
        }
        let len = (message.header.length as usize).next_multiple_of(4);
        rest = rest.get(len.max(1)..).unwrap_or_default();
    }
    Received::More
}

/// Lists the conntrack entries of one family.
fn list(sock: &mnl::Socket, family: IpFamily, seq: u32) -> io::Result<Vec<Flow>> {
    sock.send(&request(family, NLM_F_DUMP, seq, ConntrackMessage::Get(Vec::new())))?;
    let mut flows = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv_raw(&mut buf)?;
        match read_dump(&buf[..n], &mut flows) {
            Received::More => {}
            Received::Done => return Ok(flows),
            Received::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The original tuple of a flow, as ctnetlink names an entry.
fn orig_tuple(flow: &UdpFlow) -> ConntrackAttribute {
    let ip =
        Tuple::Ip(vec![IPTuple::SourceAddress(flow.orig_src.ip()), IPTuple::DestinationAddress(flow.orig_dst.ip())]);
    let proto = Tuple::Proto(vec![
        ProtoTuple::Protocol(Protocol::Udp),
        ProtoTuple::SourcePort(flow.orig_src.port()),
        ProtoTuple::DestinationPort(flow.orig_dst.port()),
    ]);
    ConntrackAttribute::CtaTupleOrig(vec![ip, proto])
}

fn delete(sock: &mnl::Socket, family: IpFamily, flow: &UdpFlow, seq: u32) -> io::Result<()> {
    sock.send(&request(family, NLM_F_ACK, seq, ConntrackMessage::Delete(vec![orig_tuple(flow)])))?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv_raw(&mut buf)?;
    match read_dump(&buf[..n], &mut Vec::new()) {
        // ENOENT: the entry expired meanwhile; that is the goal anyway.
        Received::Error(errno) if errno != libc::ENOENT => Err(io::Error::from_raw_os_error(errno)),
        _ => Ok(()),
    }
}

/// Deletes every stale UDP conntrack entry in this network namespace; returns how many.
/// `gone` are the UDP frontends removed since the last cleanup, per family (see
/// [`GoneFrontends`]).
pub fn clear_stale(desired: &Desired, gone: &[GoneFrontends; 2], node_ips: &[IpAddr]) -> io::Result<usize> {
    let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let mut deleted = 0;
    let mut seq = 1;
    for family in IpFamily::ALL {
        let frontends = UdpFrontends::new(desired, family).with_gone(&gone[family.index()]);
        if frontends.is_empty() {
            continue;
        }
        for flow in list(&sock, family, seq)?.iter().filter_map(Flow::udp) {
            seq += 1;
            if frontends.is_stale(&flow, node_ips) {
                delete(&sock, family, &flow, seq)?;
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// The DNATed flows of a client in this network namespace: which endpoint each of its
/// connections was actually sent to (`kproxy trace --conntrack`).
pub fn dnated_from(client: IpAddr) -> io::Result<Vec<Flow>> {
    let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let family = if client.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 };
    let mut flows: Vec<Flow> =
        list(&sock, family, 1)?.into_iter().filter(|f| f.orig_src.ip() == client && f.dnated()).collect();
    flows.sort_by_key(|f| (f.orig_dst, f.orig_src.port()));
    Ok(flows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage};

    fn bytes(payload: NetlinkPayload<NetfilterMessage>) -> Vec<u8> {
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), payload);
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    /// A conntrack entry as the kernel dumps it: both tuples.
    fn entry(orig: &UdpFlow, reply_src: IpAddr) -> Vec<u8> {
        let reply = UdpFlow {
            orig_src: SocketAddr::new(reply_src, orig.orig_dst.port()),
            orig_dst: orig.orig_src,
            reply_src: orig.orig_src.ip(),
        };
        let ConntrackAttribute::CtaTupleOrig(reply) = orig_tuple(&reply) else { unreachable!() };
        let attributes =
            vec![orig_tuple(orig), ConntrackAttribute::CtaTupleReply(reply), ConntrackAttribute::CtaMark(7)];
        let inner = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            ConntrackMessage::New(attributes),
        );
        bytes(NetlinkPayload::InnerMessage(inner))
    }

    fn flow() -> UdpFlow {
        UdpFlow {
            orig_src: "10.0.0.2:4000".parse().unwrap(),
            orig_dst: "10.96.0.53:53".parse().unwrap(),
            reply_src: "10.244.0.11".parse().unwrap(),
        }
    }

    #[test]
    fn a_dump_reads_flows_then_done() {
        let mut buf = entry(&flow(), flow().reply_src);
        buf.extend(bytes(NetlinkPayload::Done(DoneMessage::default())));
        let mut flows = Vec::new();
        assert_eq!(read_dump(&buf, &mut flows), Received::Done);
        let want = Flow {
            protocol: Protocol::Udp,
            orig_src: flow().orig_src,
            orig_dst: flow().orig_dst,
            reply_src: SocketAddr::new(flow().reply_src, flow().orig_dst.port()),
        };
        assert_eq!(flows, [want]);
        assert!(want.dnated());
        assert_eq!(want.udp(), Some(flow()));
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::EPERM);
        assert_eq!(read_dump(&bytes(NetlinkPayload::Error(error)), &mut flows), Received::Error(libc::EPERM));
    }

    #[test]
    fn short_and_cut_replies_do_not_panic() {
        let whole = entry(&flow(), flow().reply_src);
        // Every prefix of a real entry, and headers claiming lengths the buffer lacks.
        for cut in 0..whole.len() {
            let mut flows = Vec::new();
            let _ = read_dump(&whole[..cut], &mut flows);
            assert!(flows.len() <= 1);
        }
        let mut liar = whole.clone();
        liar[..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert_eq!(read_dump(&liar, &mut Vec::new()), Received::More);
        let mut tiny = whole;
        tiny[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(read_dump(&tiny, &mut Vec::new()), Received::More);
    }

    /// The fuzzer's first crash (fuzz/run.sh, ctnetlink_dump): an nf_tables NEWSET message
    /// with a malformed nested attribute made `netlink-packet-netfilter` panic. Messages of
    /// other subsystems are now skipped unread, and the entries after them still count.
    #[test]
    fn messages_of_other_subsystems_are_skipped_unread() {
        const CRASH: &str = "300000000b0a6800000801001c000280050001001100110000000200f0000000060a00101c00b5800500010000\
                             00052b0609090909090909c3090b0909090909090909090909090909090909090909090909090909090909090909";
        let crash: Vec<u8> =
            (0..CRASH.len() / 2).map(|i| u8::from_str_radix(&CRASH[2 * i..2 * i + 2], 16).unwrap()).collect();
        let mut flows = Vec::new();
        assert_eq!(read_dump(&crash, &mut flows), Received::More);
        assert!(flows.is_empty());
        let mut then_entry = crash[..0x30].to_vec();
        then_entry.extend(entry(&flow(), flow().reply_src));
        assert_eq!(read_dump(&then_entry, &mut flows), Received::More);
        assert_eq!(flows.len(), 1, "the entry after the foreign message is read");
    }
}
