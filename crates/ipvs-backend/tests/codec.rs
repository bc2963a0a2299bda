//! The IPVS codec against byte fixtures written from `linux/ip_vs.h` (not produced by the
//! encoder), and decode(encode(x)) == x for every message kproxy sends.

use std::net::SocketAddr;

use ipvs_backend::genl::{Command, IpvsAttr, IpvsMessage, ServiceAttr};
use ipvs_backend::kernel::{self, RealServer, ServiceKey, VirtualService};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use proxy_core::Protocol;

const FAMILY: u16 = 0x1c;

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.split_whitespace().collect();
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
}

fn encode(msg: IpvsMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(FAMILY);
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

fn decode(bytes: &[u8]) -> IpvsMessage {
    let nl = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(bytes).expect("decodes");
    match nl.payload {
        NetlinkPayload::InnerMessage(m) => m.payload,
        other => panic!("{other:?}"),
    }
}

fn web() -> ServiceKey {
    ServiceKey { protocol: Protocol::Tcp, addr: "10.96.0.10".parse().unwrap(), port: 80 }
}

/// `ipvsadm -A -t 10.96.0.10:80 -s rr`, as the kernel expects it.
const NEW_SERVICE: &str = "
    68000000 1c00 0506 01000000 00000000     # nlmsghdr: 104 bytes, family 0x1c, REQUEST|ACK|EXCL|CREATE, seq 1
    01 01 0000                               # genlmsghdr: IPVS_CMD_NEW_SERVICE, version 1
    5400 0180                                # IPVS_CMD_ATTR_SERVICE, nested, 84 bytes
      0600 0100 0200 0000                    # AF = AF_INET
      0600 0200 0600 0000                    # PROTOCOL = 6
      1400 0300 0a60000a 00000000 00000000 00000000   # ADDR = 10.96.0.10 (nf_inet_addr)
      0600 0400 0050 0000                    # PORT = 80, network order
      0700 0600 727200 00                    # SCHED_NAME = \"rr\"
      0c00 0700 00000000 ffffffff            # FLAGS = { flags 0, mask ~0 }
      0800 0800 00000000                     # TIMEOUT = 0
      0800 0900 ffffffff                     # NETMASK = 255.255.255.255
";

#[test]
fn new_service_matches_the_kernel_abi() {
    let service = VirtualService { scheduler: "rr".into(), persistence: None };
    let msg = IpvsMessage::new(Command::NewService, vec![IpvsAttr::Service(kernel::service_attrs(&web(), &service))]);
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    let fixture = hex(&strip_comments(NEW_SERVICE));
    assert_eq!(encode(msg.clone(), flags, 1), fixture);
    assert_eq!(decode(&fixture), msg);
}

/// A reply to `IPVS_CMD_GET_SERVICE`: persistent (600 s), hashed, with statistics.
const SERVICE_REPLY: &str = "
    74000000 1c00 0200 07000000 00000000     # 116 bytes
    01 01 0000                               # IPVS_CMD_NEW_SERVICE (the kernel's reply command)
    6000 0180                                # 96 bytes
      0600 0100 0200 0000
      0600 0200 0600 0000
      1400 0300 0a60000a 00000000 00000000 00000000
      0600 0400 0050 0000
      0700 0600 727200 00
      0c00 0700 03000000 ffffffff            # FLAGS = PERSISTENT | HASHED
      0800 0800 58020000                     # TIMEOUT = 600
      0800 0900 ffffffff
      0c00 0a80 0800 0100 07000000            # STATS, nested: CONNS = 7
";

#[test]
fn a_service_reply_reads_back_as_the_service() {
    let msg = decode(&hex(&strip_comments(SERVICE_REPLY)));
    let (key, service) = kernel::parse_service(msg.service().expect("a service")).expect("parses");
    assert_eq!(key, web());
    assert_eq!(service, VirtualService { scheduler: "rr".into(), persistence: Some(600) });
    // The statistics survive as a raw attribute.
    assert!(msg.service().unwrap().iter().any(|a| matches!(a, ServiceAttr::Other(_))));
}

/// A reply to `IPVS_CMD_GET_DEST`: 10.244.0.11:8080, NAT, weight 1, one active connection.
const DEST_REPLY: &str = "
    6c000000 1c00 0200 08000000 00000000
    05 01 0000                               # IPVS_CMD_NEW_DEST
    5800 0280                                # IPVS_CMD_ATTR_DEST, nested
      1400 0100 0af4000b 00000000 00000000 00000000   # ADDR = 10.244.0.11
      0600 0200 1f90 0000                    # PORT = 8080
      0800 0300 00000000                     # FWD_METHOD = MASQ
      0800 0400 01000000                     # WEIGHT = 1
      0800 0500 00000000                     # U_THRESH
      0800 0600 00000000                     # L_THRESH
      0800 0700 01000000                     # ACTIVE_CONNS = 1
      0800 0800 02000000                     # INACT_CONNS = 2
      0600 0b00 0200 0000                    # ADDR_FAMILY = AF_INET
";

#[test]
fn a_destination_reply_reads_back_with_its_connections() {
    let msg = decode(&hex(&strip_comments(DEST_REPLY)));
    let (addr, server) = kernel::parse_dest(msg.dest().expect("a destination"), web().addr).expect("parses");
    assert_eq!(addr, "10.244.0.11:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(server, RealServer { weight: 1, active: 1, inactive: 2 });
    assert!(server.has_connections());
}

#[test]
fn every_request_round_trips() {
    let v6 = ServiceKey { protocol: Protocol::Udp, addr: "fd00:10:96::a".parse().unwrap(), port: 53 };
    let sctp = ServiceKey { protocol: Protocol::Sctp, addr: "192.0.2.1".parse().unwrap(), port: 30000 };
    let sticky = VirtualService { scheduler: "mh".into(), persistence: Some(10800) };
    let server6: SocketAddr = "[fd00:244::11]:5353".parse().unwrap();
    let server4: SocketAddr = "10.244.0.12:30000".parse().unwrap();
    let messages = vec![
        IpvsMessage::new(Command::NewService, vec![IpvsAttr::Service(kernel::service_attrs(&v6, &sticky))]),
        IpvsMessage::new(Command::SetService, vec![IpvsAttr::Service(kernel::service_attrs(&sctp, &sticky))]),
        IpvsMessage::new(Command::DelService, kernel::service_request(&v6)),
        IpvsMessage::new(Command::GetService, vec![]),
        IpvsMessage::new(Command::GetDest, kernel::service_request(&sctp)),
        IpvsMessage::new(
            Command::NewDest,
            vec![IpvsAttr::Service(kernel::key_attrs(&v6)), IpvsAttr::Dest(kernel::dest_attrs(server6, 1))],
        ),
        IpvsMessage::new(
            Command::SetDest,
            vec![IpvsAttr::Service(kernel::key_attrs(&sctp)), IpvsAttr::Dest(kernel::dest_attrs(server4, 0))],
        ),
        IpvsMessage::new(
            Command::DelDest,
            vec![IpvsAttr::Service(kernel::key_attrs(&sctp)), IpvsAttr::Dest(kernel::dest_key_attrs(server4))],
        ),
        IpvsMessage::new(Command::Flush, vec![]),
        IpvsMessage::new(Command::GetInfo, vec![]),
    ];
    for msg in messages {
        let bytes = encode(msg.clone(), NLM_F_REQUEST | NLM_F_ACK, 9);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(decode(&bytes), msg, "{:?}", msg.cmd);
    }
    // And the typed views read back what was written.
    let attrs = kernel::service_attrs(&v6, &sticky);
    assert_eq!(kernel::parse_service(&attrs), Some((v6, sticky)));
    let (addr, server) = kernel::parse_dest(&kernel::dest_attrs(server6, 0), v6.addr).unwrap();
    assert_eq!((addr, server.weight), (server6, 0));
}

#[test]
fn info_replies_carry_the_version() {
    // IPVS_INFO_ATTR_VERSION = 1.2.1, IPVS_INFO_ATTR_CONN_TAB_SIZE = 4096.
    // The kernel answers GET_INFO with IPVS_CMD_SET_INFO (14).
    let reply = hex("24000000 1c00 0000 03000000 00000000 0e 01 0000 0800 0100 01020100 0800 0200 00100000");
    let msg = decode(&reply);
    assert_eq!(msg.cmd, Command::SetInfo);
    assert_eq!(msg.attrs[0], IpvsAttr::Version(0x010201));
    assert!(matches!(msg.attrs[1], IpvsAttr::Other(_)));
}

#[test]
fn services_kproxy_never_makes_are_not_read_as_its_own() {
    let mut fwmark = kernel::service_attrs(&web(), &VirtualService { scheduler: "rr".into(), persistence: None });
    fwmark.push(ServiceAttr::Fwmark(7));
    assert_eq!(kernel::parse_service(&fwmark), None);
    let mut odd = kernel::key_attrs(&web());
    odd[1] = ServiceAttr::Protocol(47); // GRE
    assert_eq!(kernel::parse_service(&odd), None);
    let truncated = hex("0600 0100 0200 0000 0500 0300 0a");
    let nla = netlink_packet_core::NlasIterator::new(&truncated[..]).nth(1).unwrap().unwrap();
    assert!(matches!(ServiceAttr::parse(&nla), Ok(ServiceAttr::Address(a)) if a[0] == 10 && a[1..] == [0; 15]));
}

/// The fixture without its comments (from `#` to the end of each line).
fn strip_comments(fixture: &str) -> String {
    fixture.lines().map(|line| line.split('#').next().unwrap_or_default()).collect::<Vec<_>>().join(" ")
}
