//! Port of upstream's `TestUpdateEndpointsMap` (`pkg/proxy/nftables/proxier_test.go`):
//! EndpointSlice adds, updates and deletes fold into the right endpoints per service port,
//! with the right local-ready counts, and only real changes require UDP conntrack cleanup
//! (here: produce Changes, since every port is UDP).
//!
//! Upstream checks its endpoints map without Services; proxy-core only programs service
//! ports that exist, so each test Service declares every port its slices use.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use k8s_openapi::api::discovery::v1 as discovery;
use proxy_core::{Desired, IpFamily, ObjectRef, ingest};

/// A Service: (namespace, name, ports as (name, service port)).
type ServiceSpec = (&'static str, &'static str, &'static [(&'static str, i32)]);

const SERVICES: &[ServiceSpec] = &[
    ("ns1", "ep1", &[("p11", 11), ("p12", 12), ("p13", 13), ("p14", 14), ("p11-2", 1102), ("p122", 122)]),
    ("ns2", "ep2", &[("p21", 21), ("p22", 22), ("p23", 23)]),
    ("ns3", "ep3", &[("p33", 33)]),
    ("ns4", "ep4", &[("p44", 44), ("p45", 45)]),
];

/// A slice's content: endpoints as (ip, local) and ports as (name, port).
type Content = (&'static [(&'static str, bool)], &'static [(&'static str, i32)]);

const SUBSET1: Content = (&[("10.1.1.1", false)], &[("p11", 11)]);
const SUBSET2: Content = (&[("10.1.1.2", false)], &[("p12", 12)]);
const NAMED_PORT_LOCAL: Content = (&[("10.1.1.1", true)], &[("p11", 11)]);
const NAMED_PORT_RENAMED: Content = (&[("10.1.1.1", false)], &[("p11-2", 11)]);
const NAMED_PORT_RENUMBERED: Content = (&[("10.1.1.1", false)], &[("p11", 22)]);
const NAMED_PORTS_LOCAL_NO_LOCAL: Content = (&[("10.1.1.1", false), ("10.1.1.2", true)], &[("p11", 11), ("p12", 12)]);
const SUBSET_LOCAL: Content = (&[("10.1.1.2", true)], &[("p12", 12)]);
const SUBSET_MULTIPLE_PORTS_LOCAL: Content = (&[("10.1.1.1", true)], &[("p11", 11), ("p12", 12)]);
const SUBSET3: Content = (&[("10.1.1.3", false)], &[("p13", 13)]);
const IPS_PORTS_1: Content = (&[("10.1.1.1", false), ("10.1.1.2", true)], &[("p11", 11), ("p12", 12)]);
const IPS_PORTS_2: Content = (&[("10.1.1.3", false), ("10.1.1.4", true)], &[("p13", 13), ("p14", 14)]);
const IPS_PORTS_3: Content = (&[("10.2.2.1", false), ("10.2.2.2", true)], &[("p21", 21), ("p22", 22)]);
const COMPLEX1: Content = (&[("10.2.2.2", true), ("10.2.2.22", true)], &[("p22", 22)]);
const COMPLEX2: Content = (&[("10.2.2.3", true)], &[("p23", 23)]);
const COMPLEX3: Content = (&[("10.4.4.4", true), ("10.4.4.5", true)], &[("p44", 44)]);
const COMPLEX4: Content = (&[("10.4.4.6", true)], &[("p45", 45)]);
const COMPLEX5: Content = (&[("10.1.1.1", false), ("10.1.1.11", false)], &[("p11", 11)]);
const COMPLEX6: Content = (&[("10.1.1.2", false)], &[("p12", 12), ("p122", 122)]);
const COMPLEX7: Content = (&[("10.3.3.3", false)], &[("p33", 33)]);
const COMPLEX8: Content = (&[("10.4.4.4", true)], &[("p44", 44)]);

/// A slot: (namespace, service, slice number, content); `None` is "no slice here".
type Slot = Option<(&'static str, &'static str, u32, Content)>;

fn build(ns: &str, svc: &str, n: u32, (endpoints, ports): Content) -> discovery::EndpointSlice {
    let eps: Vec<Ep> = endpoints.iter().map(|(ip, local)| if *local { ep(ip).local() } else { ep(ip) }).collect();
    let ports: Vec<(&str, i32, &str)> = ports.iter().map(|(name, port)| (*name, *port, "UDP")).collect();
    slice(ns, svc, n, &ports, &eps)
}

/// The endpoints map: `ns/svc:port` → sorted `ip:port (L)` strings.
fn endpoints_map(desired: &Desired) -> BTreeMap<String, Vec<String>> {
    desired
        .family(IpFamily::V4)
        .service_ports
        .values()
        .filter(|r| !r.cluster_endpoints.is_empty())
        .map(|r| {
            let eps = r
                .cluster_endpoints
                .iter()
                .map(|t| format!("{}{}", t.addr, if t.local { " L" } else { "" }))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            (r.name.to_string(), eps)
        })
        .collect()
}

fn map(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>().into_iter().collect()))
        .collect()
}

struct Case {
    name: &'static str,
    previous: Vec<Slot>,
    current: Vec<Slot>,
    old_map: BTreeMap<String, Vec<String>>,
    new_map: BTreeMap<String, Vec<String>>,
    cleanup: bool,
    local_ready: &'static [(&'static str, usize)],
}

fn s(ns: &'static str, svc: &'static str, n: u32, c: Content) -> Slot {
    Some((ns, svc, n, c))
}

fn cases() -> Vec<Case> {
    let ep1 = |n, c| s("ns1", "ep1", n, c);
    let multiple_subsets = vec![ep1(1, SUBSET1), ep1(2, SUBSET2)];
    let ips_ports = vec![ep1(1, IPS_PORTS_1), ep1(2, IPS_PORTS_2), s("ns2", "ep2", 1, IPS_PORTS_3)];
    let ips_ports_map = map(&[
        ("ns1/ep1:p11", &["10.1.1.1:11", "10.1.1.2:11 L"]),
        ("ns1/ep1:p12", &["10.1.1.1:12", "10.1.1.2:12 L"]),
        ("ns1/ep1:p13", &["10.1.1.3:13", "10.1.1.4:13 L"]),
        ("ns1/ep1:p14", &["10.1.1.3:14", "10.1.1.4:14 L"]),
        ("ns2/ep2:p21", &["10.2.2.1:21", "10.2.2.2:21 L"]),
        ("ns2/ep2:p22", &["10.2.2.1:22", "10.2.2.2:22 L"]),
    ]);
    let p11 = map(&[("ns1/ep1:p11", &["10.1.1.1:11"])]);
    let p11_local = map(&[("ns1/ep1:p11", &["10.1.1.1:11 L"])]);
    let two_ips_two_ports =
        map(&[("ns1/ep1:p11", &["10.1.1.1:11", "10.1.1.2:11 L"]), ("ns1/ep1:p12", &["10.1.1.1:12", "10.1.1.2:12 L"])]);
    vec![
        Case {
            name: "nothing",
            previous: vec![],
            current: vec![],
            old_map: map(&[]),
            new_map: map(&[]),
            cleanup: false,
            local_ready: &[],
        },
        Case {
            name: "no change, named port, local",
            previous: vec![ep1(1, NAMED_PORT_LOCAL)],
            current: vec![ep1(1, NAMED_PORT_LOCAL)],
            old_map: p11_local.clone(),
            new_map: p11_local.clone(),
            cleanup: false,
            local_ready: &[("ns1/ep1", 1)],
        },
        Case {
            name: "no change, multiple subsets",
            previous: multiple_subsets.clone(),
            current: multiple_subsets.clone(),
            old_map: map(&[("ns1/ep1:p11", &["10.1.1.1:11"]), ("ns1/ep1:p12", &["10.1.1.2:12"])]),
            new_map: map(&[("ns1/ep1:p11", &["10.1.1.1:11"]), ("ns1/ep1:p12", &["10.1.1.2:12"])]),
            cleanup: false,
            local_ready: &[],
        },
        Case {
            name: "no change, multiple subsets, multiple ports, local",
            previous: vec![ep1(1, SUBSET_MULTIPLE_PORTS_LOCAL), ep1(2, SUBSET3)],
            current: vec![ep1(1, SUBSET_MULTIPLE_PORTS_LOCAL), ep1(2, SUBSET3)],
            old_map: map(&[
                ("ns1/ep1:p11", &["10.1.1.1:11 L"]),
                ("ns1/ep1:p12", &["10.1.1.1:12 L"]),
                ("ns1/ep1:p13", &["10.1.1.3:13"]),
            ]),
            new_map: map(&[
                ("ns1/ep1:p11", &["10.1.1.1:11 L"]),
                ("ns1/ep1:p12", &["10.1.1.1:12 L"]),
                ("ns1/ep1:p13", &["10.1.1.3:13"]),
            ]),
            cleanup: false,
            local_ready: &[("ns1/ep1", 1)],
        },
        Case {
            name: "no change, multiple endpoints, subsets, IPs, and ports",
            previous: ips_ports.clone(),
            current: ips_ports.clone(),
            old_map: ips_ports_map.clone(),
            new_map: ips_ports_map.clone(),
            cleanup: false,
            local_ready: &[("ns1/ep1", 2), ("ns2/ep2", 1)],
        },
        Case {
            name: "add an Endpoints",
            previous: vec![None],
            current: vec![ep1(1, NAMED_PORT_LOCAL)],
            old_map: map(&[]),
            new_map: p11_local.clone(),
            cleanup: true,
            local_ready: &[("ns1/ep1", 1)],
        },
        Case {
            name: "remove an Endpoints",
            previous: vec![ep1(1, NAMED_PORT_LOCAL)],
            current: vec![None],
            old_map: p11_local.clone(),
            new_map: map(&[]),
            cleanup: true,
            local_ready: &[],
        },
        Case {
            name: "add an IP and port",
            previous: vec![ep1(1, SUBSET1)],
            current: vec![ep1(1, NAMED_PORTS_LOCAL_NO_LOCAL)],
            old_map: p11.clone(),
            new_map: two_ips_two_ports.clone(),
            cleanup: true,
            local_ready: &[("ns1/ep1", 1)],
        },
        Case {
            name: "remove an IP and port",
            previous: vec![ep1(1, NAMED_PORTS_LOCAL_NO_LOCAL)],
            current: vec![ep1(1, SUBSET1)],
            old_map: two_ips_two_ports,
            new_map: p11.clone(),
            cleanup: true,
            local_ready: &[],
        },
        Case {
            name: "add a subset",
            previous: vec![ep1(1, SUBSET1), None],
            current: vec![ep1(1, SUBSET1), ep1(2, SUBSET_LOCAL)],
            old_map: p11.clone(),
            new_map: map(&[("ns1/ep1:p11", &["10.1.1.1:11"]), ("ns1/ep1:p12", &["10.1.1.2:12 L"])]),
            cleanup: true,
            local_ready: &[("ns1/ep1", 1)],
        },
        Case {
            name: "remove a subset",
            previous: multiple_subsets,
            current: vec![ep1(1, SUBSET1), None],
            old_map: map(&[("ns1/ep1:p11", &["10.1.1.1:11"]), ("ns1/ep1:p12", &["10.1.1.2:12"])]),
            new_map: p11.clone(),
            cleanup: true,
            local_ready: &[],
        },
        Case {
            name: "rename a port",
            previous: vec![ep1(1, SUBSET1)],
            current: vec![ep1(1, NAMED_PORT_RENAMED)],
            old_map: p11.clone(),
            new_map: map(&[("ns1/ep1:p11-2", &["10.1.1.1:11"])]),
            cleanup: true,
            local_ready: &[],
        },
        Case {
            name: "renumber a port",
            previous: vec![ep1(1, SUBSET1)],
            current: vec![ep1(1, NAMED_PORT_RENUMBERED)],
            old_map: p11.clone(),
            new_map: map(&[("ns1/ep1:p11", &["10.1.1.1:22"])]),
            cleanup: true,
            local_ready: &[],
        },
        Case {
            name: "complex add and remove",
            previous: vec![
                ep1(1, SUBSET1),
                None,
                s("ns2", "ep2", 1, COMPLEX1),
                s("ns2", "ep2", 2, COMPLEX2),
                None,
                s("ns4", "ep4", 1, COMPLEX3),
                s("ns4", "ep4", 2, COMPLEX4),
            ],
            current: vec![
                ep1(1, COMPLEX5),
                ep1(2, COMPLEX6),
                None,
                None,
                s("ns3", "ep3", 1, COMPLEX7),
                s("ns4", "ep4", 1, COMPLEX8),
                None,
            ],
            old_map: map(&[
                ("ns1/ep1:p11", &["10.1.1.1:11"]),
                ("ns2/ep2:p22", &["10.2.2.22:22 L", "10.2.2.2:22 L"]),
                ("ns2/ep2:p23", &["10.2.2.3:23 L"]),
                ("ns4/ep4:p44", &["10.4.4.4:44 L", "10.4.4.5:44 L"]),
                ("ns4/ep4:p45", &["10.4.4.6:45 L"]),
            ]),
            new_map: map(&[
                ("ns1/ep1:p11", &["10.1.1.11:11", "10.1.1.1:11"]),
                ("ns1/ep1:p12", &["10.1.1.2:12"]),
                ("ns1/ep1:p122", &["10.1.1.2:122"]),
                ("ns3/ep3:p33", &["10.3.3.3:33"]),
                ("ns4/ep4:p44", &["10.4.4.4:44 L"]),
            ]),
            cleanup: true,
            local_ready: &[("ns4/ep4", 1)],
        },
    ]
}

fn cluster() -> Cluster {
    let mut c = Cluster::upstream();
    for (i, (ns, name, ports)) in SERVICES.iter().enumerate() {
        let ports = ports.iter().map(|(n, p)| port(n, *p, "UDP")).collect();
        c.add_service(service(ns, name, &format!("172.30.1.{}", i + 1), |s| s.ports = Some(ports)));
    }
    c
}

fn local_ready(desired: &Desired) -> Vec<(String, usize)> {
    desired.local_ready_endpoints().into_iter().map(|(svc, n): (ObjectRef, usize)| (svc.to_string(), n)).collect()
}

#[test]
fn update_endpoints_map() {
    for case in cases() {
        let mut c = cluster();
        for (ns, svc, n, content) in case.previous.iter().flatten() {
            c.add_slice(build(ns, svc, *n, *content));
        }
        assert_eq!(endpoints_map(c.sync()), case.old_map, "{}: old map", case.name);
        let slots = case.previous.len().max(case.current.len());
        for i in 0..slots {
            let prev = case.previous.get(i).copied().flatten();
            let curr = case.current.get(i).copied().flatten();
            match (prev, curr) {
                (_, Some((ns, svc, n, content))) => {
                    c.add_slice(build(ns, svc, n, content));
                }
                (Some((ns, svc, n, content)), None) => {
                    c.delete_slice(&build(ns, svc, n, content));
                }
                (None, None) => {}
            }
        }
        let plan = c.engine.plan();
        assert_eq!(!plan.changes.is_empty(), case.cleanup, "{}: conntrack cleanup required", case.name);
        let desired = c.sync();
        assert_eq!(endpoints_map(desired), case.new_map, "{}: new map", case.name);
        let want: Vec<(String, usize)> = case.local_ready.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        assert_eq!(local_ready(desired), want, "{}: local ready endpoints", case.name);
    }
}

#[test]
fn zero_addresses_to_one_named_port() {
    // Upstream case 14: a slice with nothing set (no address type) is unusable; replacing it
    // with a real one programs its endpoint.
    let mut c = cluster();
    let mut empty = build("ns1", "ep1", 1, (&[], &[]));
    empty.address_type = String::new();
    let ingested = ingest::slice_applied(&empty);
    assert_eq!(ingested.problems.len(), 1, "an empty address type is reported");
    c.engine.apply(ingested.event);
    assert!(endpoints_map(c.sync()).is_empty());
    c.add_slice(build("ns1", "ep1", 1, SUBSET1));
    assert!(!c.engine.plan().changes.is_empty());
    assert_eq!(endpoints_map(c.sync()), map(&[("ns1/ep1:p11", &["10.1.1.1:11"])]));
}
