//! The IPVS operation order, table-driven: adds before removals, draining before deletion.

use std::net::SocketAddr;

use ipvs_backend::kernel::{IpvsState, RealServer, ServiceEntry, ServiceKey, VirtualService};
use ipvs_backend::plan::{Op, plan, settled};
use proxy_core::Protocol;

fn key(proto: Protocol, port: u16) -> ServiceKey {
    ServiceKey { protocol: proto, addr: "10.96.0.10".parse().unwrap(), port }
}

fn rr() -> VirtualService {
    VirtualService { scheduler: "rr".into(), persistence: None }
}

fn ep(last: u8) -> SocketAddr {
    format!("10.244.0.{last}:8080").parse().unwrap()
}

/// A state of one service; each server as (last octet, weight, active, inactive).
fn state(key: ServiceKey, service: VirtualService, servers: &[(u8, u32, u32, u32)]) -> IpvsState {
    let servers = servers.iter().map(|&(n, weight, active, inactive)| (ep(n), RealServer { weight, active, inactive }));
    [(key, ServiceEntry { service, servers: servers.collect() })].into()
}

#[test]
fn operations_come_in_a_safe_order() {
    let tcp = key(Protocol::Tcp, 80);
    let udp = key(Protocol::Udp, 53);
    let sctp = key(Protocol::Sctp, 9000);
    let sticky = VirtualService { scheduler: "rr".into(), persistence: Some(10800) };
    struct Case {
        name: &'static str,
        current: IpvsState,
        desired: IpvsState,
        ops: Vec<Op>,
    }
    let cases = [
        Case {
            name: "a new service: the service, then its servers",
            current: IpvsState::new(),
            desired: state(tcp, rr(), &[(11, 1, 0, 0), (12, 1, 0, 0)]),
            ops: vec![Op::AddService(tcp, rr()), Op::AddServer(tcp, ep(11), 1), Op::AddServer(tcp, ep(12), 1)],
        },
        Case {
            name: "nothing changed",
            current: state(tcp, rr(), &[(11, 1, 5, 2)]),
            desired: state(tcp, rr(), &[(11, 1, 0, 0)]),
            ops: vec![],
        },
        Case {
            name: "an endpoint replaced: the new one first",
            current: state(tcp, rr(), &[(11, 1, 0, 0)]),
            desired: state(tcp, rr(), &[(12, 1, 0, 0)]),
            ops: vec![Op::AddServer(tcp, ep(12), 1), Op::DeleteServer(tcp, ep(11))],
        },
        Case {
            name: "a removed TCP server with connections drains at weight 0",
            current: state(tcp, rr(), &[(11, 1, 1, 0), (12, 1, 0, 0)]),
            desired: state(tcp, rr(), &[(12, 1, 0, 0)]),
            ops: vec![Op::UpdateServer(tcp, ep(11), 0)],
        },
        Case {
            name: "a draining server with only inactive connections keeps draining",
            current: state(tcp, rr(), &[(11, 0, 0, 3), (12, 1, 0, 0)]),
            desired: state(tcp, rr(), &[(12, 1, 0, 0)]),
            ops: vec![],
        },
        Case {
            name: "a drained server goes",
            current: state(tcp, rr(), &[(11, 0, 0, 0), (12, 1, 0, 0)]),
            desired: state(tcp, rr(), &[(12, 1, 0, 0)]),
            ops: vec![Op::DeleteServer(tcp, ep(11))],
        },
        Case {
            name: "a draining server back in the endpoints serves again",
            current: state(tcp, rr(), &[(11, 0, 2, 0)]),
            desired: state(tcp, rr(), &[(11, 1, 0, 0)]),
            ops: vec![Op::UpdateServer(tcp, ep(11), 1)],
        },
        Case {
            name: "UDP servers go at once, connections or not",
            current: state(udp, rr(), &[(11, 1, 4, 4), (12, 1, 0, 0)]),
            desired: state(udp, rr(), &[(12, 1, 0, 0)]),
            ops: vec![Op::DeleteServer(udp, ep(11))],
        },
        Case {
            name: "SCTP servers go at once too",
            current: state(sctp, rr(), &[(11, 1, 2, 0), (12, 1, 0, 0)]),
            desired: state(sctp, rr(), &[(12, 1, 0, 0)]),
            ops: vec![Op::DeleteServer(sctp, ep(11))],
        },
        Case {
            name: "affinity turned on: the service is updated in place",
            current: state(tcp, rr(), &[(11, 1, 0, 0)]),
            desired: state(tcp, sticky.clone(), &[(11, 1, 0, 0)]),
            ops: vec![Op::UpdateService(tcp, sticky.clone())],
        },
        Case {
            name: "a service gone, another added: the addition first",
            current: state(tcp, rr(), &[(11, 1, 9, 9)]),
            desired: state(udp, rr(), &[(11, 1, 0, 0)]),
            ops: vec![Op::AddService(udp, rr()), Op::AddServer(udp, ep(11), 1), Op::DeleteService(tcp)],
        },
    ];
    for case in cases {
        assert_eq!(plan(&case.current, &case.desired), case.ops, "{}", case.name);
    }
}

#[test]
fn settled_state_keeps_only_the_draining_servers() {
    let tcp = key(Protocol::Tcp, 80);
    let udp = key(Protocol::Udp, 53);
    let mut current = state(tcp, rr(), &[(11, 1, 1, 0), (12, 1, 0, 0), (13, 1, 0, 0)]);
    current.extend(state(udp, rr(), &[(11, 1, 1, 0)]));
    let mut desired = state(tcp, rr(), &[(12, 1, 0, 0)]);
    desired.extend(state(udp, rr(), &[]));
    let after = settled(&current, &desired);
    assert_eq!(after[&tcp].servers.keys().copied().collect::<Vec<_>>(), [ep(11), ep(12)]);
    assert_eq!(after[&tcp].servers[&ep(11)].weight, 0);
    assert!(after[&udp].servers.is_empty());
    // Planning again from the settled state changes nothing.
    assert_eq!(plan(&after, &desired), []);
}

#[test]
fn operations_read_as_ipvsadm_commands() {
    let tcp = key(Protocol::Tcp, 80);
    let sticky = VirtualService { scheduler: "sh".into(), persistence: Some(600) };
    assert_eq!(Op::AddService(tcp, sticky).to_string(), "ipvsadm -A -t 10.96.0.10:80 -s sh -p 600");
    assert_eq!(Op::UpdateServer(tcp, ep(11), 0).to_string(), "ipvsadm -e -t 10.96.0.10:80 -r 10.244.0.11:8080 -m -w 0");
    assert_eq!(Op::DeleteService(key(Protocol::Udp, 53)).to_string(), "ipvsadm -D -u 10.96.0.10:53");
}
