//! Clearing stale UDP conntrack entries over ctnetlink, after each sync.
//!
//! proxy-core decides which entries are stale
//! ([`UdpFrontends`](proxy_core::conntrack::UdpFrontends)); this module lists the UDP
//! entries of the current network namespace and deletes those, with plain netlink
//! messages built and parsed here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nft_client::netlink::attrs;
use proxy_core::conntrack::{UdpFlow, UdpFrontends};
use proxy_core::{Desired, IpFamily};

const SUBSYS_CTNETLINK: u16 = 1;
const MSG_CT_NEW: u16 = 0;
const MSG_CT_GET: u16 = 1;
const MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
const IPPROTO_UDP: u8 = 17;

fn af(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => libc::AF_INET as u8,
        IpFamily::V6 => libc::AF_INET6 as u8,
    }
}

/// A netlink message under construction: header, `nfgenmsg`, attributes.
struct Message(Vec<u8>);

impl Message {
    fn new(msg: u16, flags: u16, family: IpFamily, seq: u32) -> Message {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        b.extend_from_slice(&((SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        b.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        b.extend_from_slice(&[af(family), 0, 0, 0]); // nfgenmsg: family, version, res_id
        Message(b)
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    /// Opens a nested attribute; returns where its length goes.
    fn nest(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// (source, destination, protocol) of a tuple attribute.
fn tuple(buf: &[u8]) -> Option<(SocketAddr, SocketAddr, u8)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0u16, 0u16);
    for (kind, value) in attrs(buf) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(value) {
                    let ip = match v.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?)),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?)),
                        _ => continue,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(value) {
                    match (k, v) {
                        (CTA_PROTO_NUM, [p, ..]) => proto = Some(*p),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((SocketAddr::new(src?, sport), SocketAddr::new(dst?, dport), proto?))
}

/// What one receive of a dump held.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// More messages follow.
    More,
    /// The dump ended.
    Done,
    /// The kernel refused, with this errno.
    Error(i32),
}

/// Reads the messages of one receive: UDP flows go to `flows`. Never panics: a message
/// cut short ends the buffer's reading, as the kernel never sends one.
fn read_dump(buf: &[u8], flows: &mut Vec<UdpFlow>) -> Received {
    let mut rest = buf;
    while let Some(header) = rest.get(..16) {
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let Some(message) = rest.get(16..len).filter(|_| len >= 16) else { break };
        if kind == libc::NLMSG_DONE as u16 {
            return Received::Done;
        }
        if kind == libc::NLMSG_ERROR as u16 {
            let code = message.get(..4).map_or(-libc::EPROTO, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
            if code != 0 {
                return Received::Error(-code);
            }
        } else if kind == (SUBSYS_CTNETLINK << 8) | MSG_CT_NEW {
            // After the 4-byte nfgenmsg.
            let (mut orig, mut reply) = (None, None);
            for (k, v) in attrs(message.get(4..).unwrap_or_default()) {
                match k {
                    CTA_TUPLE_ORIG => orig = tuple(v),
                    CTA_TUPLE_REPLY => reply = tuple(v),
                    _ => {}
                }
            }
            if let (Some((orig_src, orig_dst, IPPROTO_UDP)), Some((reply_src, _, _))) = (orig, reply) {
                flows.push(UdpFlow { orig_src, orig_dst, reply_src: reply_src.ip() });
            }
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Received::More
}

/// Lists the UDP conntrack entries of one family.
fn list_udp(sock: &mnl::Socket, family: IpFamily, seq: u32) -> io::Result<Vec<UdpFlow>> {
    let dump = Message::new(MSG_CT_GET, libc::NLM_F_DUMP as u16, family, seq).finish();
    sock.send(&dump)?;
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

fn delete(sock: &mnl::Socket, family: IpFamily, flow: &UdpFlow, seq: u32) -> io::Result<()> {
    let mut m = Message::new(MSG_CT_DELETE, libc::NLM_F_ACK as u16, family, seq);
    let orig = m.nest(CTA_TUPLE_ORIG);
    let ip = m.nest(CTA_TUPLE_IP);
    match (flow.orig_src.ip(), flow.orig_dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            m.attr(CTA_IP_V4_SRC, &s.octets());
            m.attr(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            m.attr(CTA_IP_V6_SRC, &v6(s));
            m.attr(CTA_IP_V6_DST, &v6(d));
        }
    }
    m.end(ip);
    let proto = m.nest(CTA_TUPLE_PROTO);
    m.attr(CTA_PROTO_NUM, &[IPPROTO_UDP]);
    m.attr(CTA_PROTO_SRC_PORT, &flow.orig_src.port().to_be_bytes());
    m.attr(CTA_PROTO_DST_PORT, &flow.orig_dst.port().to_be_bytes());
    m.end(proto);
    m.end(orig);
    sock.send(&m.finish())?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv_raw(&mut buf)?;
    match read_dump(&buf[..n], &mut Vec::new()) {
        // ENOENT: the entry expired meanwhile; that is the goal anyway.
        Received::Error(errno) if errno != libc::ENOENT => Err(io::Error::from_raw_os_error(errno)),
        _ => Ok(()),
    }
}

/// Deletes every stale UDP conntrack entry in this network namespace; returns how many.
pub fn clear_stale(desired: &Desired, node_ips: &[IpAddr]) -> io::Result<usize> {
    let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let mut deleted = 0;
    let mut seq = 1;
    for family in IpFamily::ALL {
        let frontends = UdpFrontends::new(desired, family);
        if frontends.is_empty() {
            continue;
        }
        for flow in list_udp(&sock, family, seq)? {
            seq += 1;
            if frontends.is_stale(&flow, node_ips) {
                delete(&sock, family, &flow, seq)?;
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header (type, flags 0, seq 1, port 0) and body, padded.
    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(body);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    /// A conntrack entry as the kernel dumps it: nfgenmsg, then both tuples.
    fn entry(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, reply: [u8; 4]) -> Vec<u8> {
        let tuple = |kind: u16, s: [u8; 4], sp: u16, d: [u8; 4], dp: u16| {
            let mut m = Message(Vec::new());
            let t = m.nest(kind);
            let ip = m.nest(CTA_TUPLE_IP);
            m.attr(CTA_IP_V4_SRC, &s);
            m.attr(CTA_IP_V4_DST, &d);
            m.end(ip);
            let p = m.nest(CTA_TUPLE_PROTO);
            m.attr(CTA_PROTO_NUM, &[IPPROTO_UDP]);
            m.attr(CTA_PROTO_SRC_PORT, &sp.to_be_bytes());
            m.attr(CTA_PROTO_DST_PORT, &dp.to_be_bytes());
            m.end(p);
            m.end(t);
            m.0
        };
        let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
        body.extend(tuple(CTA_TUPLE_ORIG, src, sport, dst, dport));
        body.extend(tuple(CTA_TUPLE_REPLY, reply, dport, src, sport));
        message((SUBSYS_CTNETLINK << 8) | MSG_CT_NEW, &body)
    }

    #[test]
    fn a_dump_reads_flows_then_done() {
        let mut buf = entry([10, 0, 0, 2], 4000, [10, 96, 0, 53], 53, [10, 244, 0, 11]);
        buf.extend(message(libc::NLMSG_DONE as u16, &0i32.to_ne_bytes()));
        let mut flows = Vec::new();
        assert_eq!(read_dump(&buf, &mut flows), Received::Done);
        assert_eq!(
            flows,
            [UdpFlow {
                orig_src: "10.0.0.2:4000".parse().unwrap(),
                orig_dst: "10.96.0.53:53".parse().unwrap(),
                reply_src: "10.244.0.11".parse().unwrap(),
            }]
        );
        let error = message(libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(read_dump(&error, &mut flows), Received::Error(libc::EPERM));
    }

    #[test]
    fn short_and_cut_replies_do_not_panic() {
        let whole = entry([10, 0, 0, 2], 4000, [10, 96, 0, 53], 53, [10, 244, 0, 11]);
        // Every prefix of a real entry, and headers claiming lengths the buffer lacks.
        for cut in 0..whole.len() {
            let mut flows = Vec::new();
            let _ = read_dump(&whole[..cut], &mut flows);
            assert!(flows.len() <= 1);
        }
        let short_error = message(libc::NLMSG_ERROR as u16, &[]);
        assert_eq!(read_dump(&short_error, &mut Vec::new()), Received::Error(libc::EPROTO));
        let mut liar = message(libc::NLMSG_ERROR as u16, &0i32.to_ne_bytes());
        liar[..4].copy_from_slice(&17u32.to_ne_bytes());
        let _ = read_dump(&liar, &mut Vec::new());
        let mut tiny = liar.clone();
        tiny[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(read_dump(&tiny, &mut Vec::new()), Received::More);
    }
}
