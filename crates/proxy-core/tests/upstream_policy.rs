//! Ports of upstream's traffic-policy and terminating-endpoint tests
//! (`pkg/proxy/nftables/proxier_test.go`): TestInternalTrafficPolicy,
//! TestTerminatingEndpointsTrafficPolicyLocal/Cluster, TestHealthCheckNodePortWhenTerminating.

mod common;

use common::*;

/// (case, internalTrafficPolicy, endpoints as (ip, node), expected output)
type PolicyCase = (&'static str, Option<&'static str>, [(&'static str, &'static str); 3], &'static str);

#[test]
fn internal_traffic_policy() {
    let cases: [PolicyCase; 4] = [
        (
            "internalTrafficPolicy is cluster",
            Some("Cluster"),
            [("10.0.1.1", NODE_NAME), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")],
            "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80",
        ),
        (
            "internalTrafficPolicy is local and there is one local endpoint",
            Some("Local"),
            [("10.0.1.1", NODE_NAME), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")],
            "10.0.1.1:80",
        ),
        (
            "internalTrafficPolicy is local and there are multiple local endpoints",
            Some("Local"),
            [("10.0.1.1", NODE_NAME), ("10.0.1.2", NODE_NAME), ("10.0.1.3", "node2")],
            "10.0.1.1:80, 10.0.1.2:80",
        ),
        (
            "internalTrafficPolicy is local and there are no local endpoints",
            Some("Local"),
            [("10.0.1.1", "node0"), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")],
            "DROP",
        ),
    ];
    for (name, itp, endpoints, output) in cases {
        let mut c = Cluster::upstream();
        c.add_service(service("ns1", "svc1", "172.30.1.1", |s| {
            s.ports = Some(vec![port("", 80, "TCP")]);
            s.internal_traffic_policy = itp.map(str::to_string);
        }));
        let eps: Vec<Ep> = endpoints.iter().map(|(ip, node)| ep(ip).node(node).ready(true)).collect();
        let s = slice("ns1", "svc1", 1, &[("", 80, "TCP")], &eps);
        c.add_slice(s.clone());
        eprintln!("case {name}");
        run_flows(c.sync(), &[tcp(name, "10.0.0.2", "172.30.1.1", 80, output, false)]);
        c.delete_slice(&s);
        run_flows(c.sync(), &[tcp("endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT", false)]);
    }
}

/// (ip, ready, serving, terminating, node)
type EpSpec = (&'static str, bool, bool, bool, &'static str);

struct TerminatingCase {
    name: &'static str,
    endpoints: &'static [EpSpec],
    /// Pod to ClusterIP.
    internal: &'static str,
    /// External client to the LB IP.
    external: &'static str,
    external_masq: bool,
}

fn run_terminating(etp: &str, cases: &[TerminatingCase]) {
    for case in cases {
        let mut c = Cluster::upstream();
        c.add_service(with_ingress(
            service("ns1", "svc1", "172.30.1.1", |s| {
                s.type_ = Some("LoadBalancer".into());
                s.ports = Some(vec![port("", 80, "TCP")]);
                s.health_check_node_port = Some(30000);
                s.external_traffic_policy = Some(etp.into());
            }),
            &[("1.2.3.4", None)],
        ));
        let eps: Vec<Ep> =
            case.endpoints.iter().map(|(ip, r, s, t, node)| ep(ip).node(node).conditions(*r, *s, *t)).collect();
        let s = slice("ns1", "svc1", 1, &[("", 80, "TCP")], &eps);
        c.add_slice(s.clone());
        eprintln!("{etp}: case {}", case.name);
        run_flows(
            c.sync(),
            &[
                tcp("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, case.internal, false),
                tcp("external to LB", "203.0.113.2", "1.2.3.4", 80, case.external, case.external_masq),
            ],
        );
        c.delete_slice(&s);
        run_flows(
            c.sync(),
            &[
                tcp("pod to clusterIP after endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT", false),
                tcp("external to LB after endpoints deleted", "203.0.113.2", "1.2.3.4", 80, "REJECT", false),
            ],
        );
    }
}

#[test]
fn terminating_endpoints_traffic_policy_local() {
    run_terminating(
        "Local",
        &[
            TerminatingCase {
                name: "ready endpoints exist",
                endpoints: &[
                    ("10.0.1.1", true, true, false, NODE_NAME),
                    ("10.0.1.2", true, true, false, NODE_NAME),
                    ("10.0.1.3", false, true, true, NODE_NAME),
                    ("10.0.1.4", false, false, true, NODE_NAME),
                    ("10.0.1.5", true, true, false, "node-1"),
                ],
                internal: "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
                external: "10.0.1.1:80, 10.0.1.2:80",
                external_masq: false,
            },
            TerminatingCase {
                name: "only terminating endpoints exist",
                endpoints: &[
                    ("10.0.1.2", false, true, true, NODE_NAME),
                    ("10.0.1.3", false, true, true, NODE_NAME),
                    ("10.0.1.4", false, false, true, NODE_NAME),
                    ("10.0.1.5", true, true, false, "node-1"),
                ],
                internal: "10.0.1.5:80",
                external: "10.0.1.2:80, 10.0.1.3:80",
                external_masq: false,
            },
            TerminatingCase {
                name: "terminating endpoints on remote node",
                endpoints: &[("10.0.1.5", false, true, true, "node-1")],
                internal: "10.0.1.5:80",
                external: "DROP",
                external_masq: false,
            },
            TerminatingCase {
                name: "no usable endpoints on any node",
                endpoints: &[("10.0.1.5", false, false, true, NODE_NAME), ("10.0.1.5", false, false, true, "node-1")],
                internal: "REJECT",
                external: "REJECT",
                external_masq: false,
            },
        ],
    );
}

#[test]
fn terminating_endpoints_traffic_policy_cluster() {
    run_terminating(
        "Cluster",
        &[
            TerminatingCase {
                name: "ready endpoints exist",
                endpoints: &[
                    ("10.0.1.1", true, true, false, NODE_NAME),
                    ("10.0.1.2", true, true, false, NODE_NAME),
                    ("10.0.1.3", false, true, true, "another-node"),
                    ("10.0.1.4", false, false, true, "another-node"),
                    ("10.0.1.5", true, true, false, "another-node"),
                ],
                internal: "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
                external: "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
                external_masq: true,
            },
            TerminatingCase {
                name: "only terminating endpoints exist",
                endpoints: &[
                    ("10.0.1.2", false, true, true, NODE_NAME),
                    ("10.0.1.3", false, true, true, NODE_NAME),
                    ("10.0.1.4", false, false, true, "another-node"),
                    ("10.0.1.5", false, true, true, "another-node"),
                ],
                internal: "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80",
                external: "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80",
                external_masq: true,
            },
            TerminatingCase {
                name: "terminating endpoints on remote node",
                endpoints: &[("10.0.1.5", false, true, true, "node-1")],
                internal: "10.0.1.5:80",
                external: "10.0.1.5:80",
                external_masq: true,
            },
            TerminatingCase {
                name: "no usable endpoints on any node",
                endpoints: &[("10.0.1.5", false, false, true, NODE_NAME), ("10.0.1.5", false, false, true, "node-1")],
                internal: "REJECT",
                external: "REJECT",
                external_masq: false,
            },
        ],
    );
}

#[test]
fn health_check_node_port_when_terminating() {
    let mut c = Cluster::upstream();
    c.add_service(with_ingress(
        service("ns1", "svc1", "172.30.1.1", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.ports = Some(vec![port("", 80, "TCP")]);
            s.health_check_node_port = Some(30000);
            s.external_traffic_policy = Some("Local".into());
        }),
        &[("1.2.3.4", None)],
    ));
    let ready = [
        ep("10.0.1.1").local().ready(true),
        ep("10.0.1.2").local().ready(true),
        ep("10.0.1.3").local().ready(true),
        ep("10.0.1.4").local().ready(false),
    ];
    c.add_slice(slice("ns1", "svc1", 1, &[("", 80, "TCP")], &ready));
    assert_eq!(c.sync().health_checks().values().collect::<Vec<_>>(), [&(30000, 3)]);

    let terminating = [
        ep("10.0.1.1").local().conditions(false, true, false),
        ep("10.0.1.2").local().conditions(false, true, true),
        ep("10.0.1.3").local().conditions(false, true, true),
        ep("10.0.1.4").local().conditions(false, false, true),
    ];
    c.add_slice(slice("ns1", "svc1", 1, &[("", 80, "TCP")], &terminating));
    assert_eq!(c.sync().health_checks().values().collect::<Vec<_>>(), [&(30000, 0)]);
}
