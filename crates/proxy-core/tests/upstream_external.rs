//! Ports of upstream's external-traffic packet-flow tests (`pkg/proxy/nftables/proxier_test.go`):
//! TestLoadBalancer, TestNodePorts, TestExternalTrafficPolicyLocal/Cluster and the 27-flow
//! TestInternalExternalMasquerade matrix in its four configurations.

mod common;

use common::*;
use proxy_core::{LocalDetectMode, NodeContext};

#[test]
fn load_balancer_source_ranges() {
    let mut c = Cluster::upstream();
    c.add_service(with_ingress(
        service("ns1", "svc1", "172.30.0.41", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.ports = Some(vec![node_port("p80", 80, 3001)]);
            // The leading space is upstream's: ranges are trimmed.
            s.load_balancer_source_ranges = Some(vec!["192.168.0.0/24".into(), " 203.0.113.0/25".into()]);
        }),
        &[("1.2.3.4", None), ("5.6.7.8", None)],
    ));
    c.add_slice(slice("ns1", "svc1", 1, &[("p80", 80, "TCP")], &[ep("10.180.0.1")]));
    let ep = "10.180.0.1:80";
    run_flows(
        c.sync(),
        &[
            tcp("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, ep, false),
            tcp("external to nodePort", "203.0.113.2", NODE_IP, 3001, ep, true),
            tcp("nodePort bypasses LoadBalancerSourceRanges", "203.0.113.130", NODE_IP, 3001, ep, true),
            tcp("accepted external to LB1", "203.0.113.2", "1.2.3.4", 80, ep, true),
            tcp("accepted external to LB2", "203.0.113.2", "5.6.7.8", 80, ep, true),
            tcp("blocked external to LB1", "203.0.113.130", "1.2.3.4", 80, "DROP", false),
            tcp("blocked external to LB2", "203.0.113.130", "5.6.7.8", 80, "DROP", false),
            tcp("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP", false),
            tcp("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP", false),
            tcp("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, ep, true),
            tcp("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, ep, true),
            tcp("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, ep, true),
            tcp("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, ep, true),
        ],
    );
}

struct NodePortCase {
    name: &'static str,
    nodeport_addresses: Option<&'static [&'static str]>,
    alt_node_ip_allowed: bool,
    svc_ip: &'static str,
    ep1: &'static str,
    ep2: &'static str,
    node_ip: &'static str,
    pod_ip: &'static str,
    external: &'static str,
    alt_node_ip: &'static str,
    output: &'static str,
}

#[test]
fn node_ports() {
    let cases = [
        NodePortCase {
            name: "ipv4",
            nodeport_addresses: None,
            alt_node_ip_allowed: false,
            svc_ip: "172.30.0.41",
            ep1: "10.180.0.1",
            ep2: "10.180.2.1",
            node_ip: "192.168.0.2",
            pod_ip: "10.0.0.2",
            external: "203.0.113.2",
            alt_node_ip: "192.168.1.2",
            output: "10.180.0.1:80, 10.180.2.1:80",
        },
        NodePortCase {
            name: "ipv4, multiple nodeport-addresses",
            nodeport_addresses: Some(&["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"]),
            alt_node_ip_allowed: true,
            svc_ip: "172.30.0.41",
            ep1: "10.180.0.1",
            ep2: "10.180.2.1",
            node_ip: "192.168.0.2",
            pod_ip: "10.0.0.2",
            external: "203.0.113.2",
            alt_node_ip: "192.168.1.2",
            output: "10.180.0.1:80, 10.180.2.1:80",
        },
        NodePortCase {
            name: "ipv6",
            nodeport_addresses: None,
            alt_node_ip_allowed: false,
            svc_ip: "fd00:172:30::41",
            ep1: "fd00:10:180::1",
            ep2: "fd00:10:180::2:1",
            node_ip: "2001:db8::1",
            pod_ip: "fd00:10::2",
            external: "2600:5200::1",
            alt_node_ip: "2001:db8:1::2",
            output: "[fd00:10:180::1]:80, [fd00:10:180::2:1]:80",
        },
        NodePortCase {
            name: "ipv6, multiple nodeport-addresses",
            nodeport_addresses: Some(&["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64", "2001:db8:1::2/128"]),
            alt_node_ip_allowed: true,
            svc_ip: "fd00:172:30::41",
            ep1: "fd00:10:180::1",
            ep2: "fd00:10:180::2:1",
            node_ip: "2001:db8::1",
            pod_ip: "fd00:10::2",
            external: "2600:5200::1",
            alt_node_ip: "2001:db8:1::2",
            output: "[fd00:10:180::1]:80, [fd00:10:180::2:1]:80",
        },
    ];
    for case in cases {
        let mut node = upstream_node();
        if let Some(addrs) = case.nodeport_addresses {
            node.nodeport_addresses = addrs.iter().map(|s| net(s)).collect();
        }
        let mut c = Cluster::new(node);
        c.add_service(service("ns1", "svc1", case.svc_ip, |s| {
            s.type_ = Some("NodePort".into());
            s.ports = Some(vec![node_port("p80", 80, 3001)]);
        }));
        c.add_slice(slice("ns1", "svc1", 1, &[("p80", 80, "TCP")], &[ep(case.ep1), ep(case.ep2).local()]));
        let alt = if case.alt_node_ip_allowed {
            tcp("external to nodePort on secondary IP", case.external, case.alt_node_ip, 3001, case.output, true)
        } else {
            tcp("secondary nodeIP ignores NodePorts", case.external, case.alt_node_ip, 3001, "", false)
        };
        let flows = [
            tcp("pod to cluster IP", case.pod_ip, case.svc_ip, 80, case.output, false),
            tcp("external to nodePort", case.external, case.node_ip, 3001, case.output, true),
            tcp("node to nodePort", case.node_ip, case.node_ip, 3001, case.output, true),
            alt,
        ];
        eprintln!("case {}", case.name);
        run_flows(c.sync(), &flows);
    }
}

fn etp_cluster_fixture(local: bool) -> Cluster {
    let mut c = Cluster::upstream();
    c.add_service(with_ingress(
        service("ns1", "svc1", "172.30.0.41", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.external_ips = Some(vec!["192.168.99.11".into()]);
            s.ports = Some(vec![node_port("p80", 80, 3001)]);
            if local {
                s.external_traffic_policy = Some("Local".into());
                s.health_check_node_port = Some(30000);
            }
        }),
        &[("1.2.3.4", None)],
    ));
    c.add_slice(slice("ns1", "svc1", 1, &[("p80", 80, "TCP")], &[ep("10.180.0.1"), ep("10.180.2.1").local()]));
    c
}

#[test]
fn external_traffic_policy_local() {
    let mut c = etp_cluster_fixture(true);
    let both = "10.180.0.1:80, 10.180.2.1:80";
    let local = "10.180.2.1:80";
    let desired = c.sync();
    run_flows(
        desired,
        &[
            tcp("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, false),
            tcp("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, both, false),
            tcp("external to external IP hits only local endpoint", "203.0.113.2", "192.168.99.11", 80, local, false),
            tcp("pod to LB IP hits both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, both, false),
            tcp(
                "external to LB IP hits only local endpoint, unmasqueraded",
                "203.0.113.2",
                "1.2.3.4",
                80,
                local,
                false,
            ),
            tcp("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", NODE_IP, 3001, both, false),
            tcp(
                "external to NodePort hits only local endpoint, unmasqueraded",
                "203.0.113.2",
                NODE_IP,
                3001,
                local,
                false,
            ),
        ],
    );
    let health = desired.health_checks();
    assert_eq!(health.values().collect::<Vec<_>>(), [&(30000, 1)]);
}

#[test]
fn external_traffic_policy_cluster() {
    let mut c = etp_cluster_fixture(false);
    let both = "10.180.0.1:80, 10.180.2.1:80";
    let desired = c.sync();
    run_flows(
        desired,
        &[
            tcp("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, false),
            tcp("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, both, true),
            tcp(
                "external to external IP hits both endpoints, masqueraded",
                "203.0.113.2",
                "192.168.99.11",
                80,
                both,
                true,
            ),
            tcp("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both, true),
            tcp("external to LB IP hits both endpoints, masqueraded", "203.0.113.2", "1.2.3.4", 80, both, true),
            tcp("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", NODE_IP, 3001, both, true),
            tcp("external to NodePort hits both endpoints, masqueraded", "203.0.113.2", NODE_IP, 3001, both, true),
        ],
    );
    assert!(desired.health_checks().is_empty());
}

const P: &str = "10.0.0.2";
const N: &str = "192.168.0.2";
const X: &str = "203.0.113.2";
const SVC1: &str = "10.180.0.1:80, 10.180.1.1:80";
const SVC2: &str = "10.180.0.2:80, 10.180.1.2:80";
const SVC3: &str = "10.180.0.3:80, 10.180.1.3:80";

/// TestInternalExternalMasquerade's base table, for config "base".
fn masquerade_base_flows() -> Vec<Flow> {
    vec![
        tcp("pod to ClusterIP", P, "172.30.0.41", 80, SVC1, false),
        tcp("pod to NodePort", P, N, 3001, SVC1, true),
        tcp("pod to LB", P, "1.2.3.4", 80, SVC1, true),
        tcp("node to ClusterIP", N, "172.30.0.41", 80, SVC1, true),
        tcp("node to NodePort", N, N, 3001, SVC1, true),
        tcp("node to LB", N, "1.2.3.4", 80, SVC1, true),
        tcp("external to ClusterIP", X, "172.30.0.41", 80, SVC1, true),
        tcp("external to NodePort", X, N, 3001, SVC1, true),
        tcp("external to LB", X, "1.2.3.4", 80, SVC1, true),
        tcp("pod to ClusterIP with eTP:Local", P, "172.30.0.42", 80, SVC2, false),
        tcp("pod to NodePort with eTP:Local", P, N, 3002, SVC2, false),
        tcp("pod to LB with eTP:Local", P, "5.6.7.8", 80, SVC2, false),
        tcp("node to ClusterIP with eTP:Local", N, "172.30.0.42", 80, SVC2, true),
        // Upstream's row uses svc1's NodePort here (3001); kept as upstream has it.
        tcp("node to NodePort with eTP:Local", N, N, 3001, SVC1, true),
        tcp("node to LB with eTP:Local", N, "5.6.7.8", 80, SVC2, true),
        tcp("external to ClusterIP with eTP:Local", X, "172.30.0.42", 80, SVC2, true),
        tcp("external to NodePort with eTP:Local", X, N, 3002, "10.180.0.2:80", false),
        tcp("external to LB with eTP:Local", X, "5.6.7.8", 80, "10.180.0.2:80", false),
        tcp("pod to ClusterIP with iTP:Local", P, "172.30.0.43", 80, "10.180.0.3:80", false),
        tcp("pod to NodePort with iTP:Local", P, N, 3003, SVC3, true),
        tcp("pod to LB with iTP:Local", P, "9.10.11.12", 80, SVC3, true),
        tcp("node to ClusterIP with iTP:Local", N, "172.30.0.43", 80, "10.180.0.3:80", true),
        tcp("node to NodePort with iTP:Local", N, N, 3003, SVC3, true),
        tcp("node to LB with iTP:Local", N, "9.10.11.12", 80, SVC3, true),
        tcp("external to ClusterIP with iTP:Local", X, "172.30.0.43", 80, "10.180.0.3:80", true),
        tcp("external to NodePort with iTP:Local", X, N, 3003, SVC3, true),
        tcp("external to LB with iTP:Local", X, "9.10.11.12", 80, SVC3, true),
    ]
}

/// An override of one base row: a new output and/or masquerade value.
struct Override {
    name: &'static str,
    output: Option<&'static str>,
    masq: Option<bool>,
}

const fn masq(name: &'static str, masq: bool) -> Override {
    Override { name, output: None, masq: Some(masq) }
}

const fn output(name: &'static str, output: &'static str) -> Override {
    Override { name, output: Some(output), masq: None }
}

const NO_DETECTOR: &[Override] = &[
    masq("node to ClusterIP", false),
    masq("node to ClusterIP with eTP:Local", false),
    masq("node to ClusterIP with iTP:Local", false),
    masq("external to ClusterIP", false),
    masq("external to ClusterIP with eTP:Local", false),
    masq("external to ClusterIP with iTP:Local", false),
    output("pod to NodePort with eTP:Local", "10.180.0.2:80"),
    output("pod to LB with eTP:Local", "10.180.0.2:80"),
];

const MASQUERADE_ALL: &[Override] = &[
    masq("pod to ClusterIP", true),
    masq("pod to ClusterIP with eTP:Local", true),
    masq("pod to ClusterIP with iTP:Local", true),
];

const MASQUERADE_ALL_NO_DETECTOR: &[Override] = &[
    masq("pod to ClusterIP", true),
    masq("pod to ClusterIP with eTP:Local", true),
    masq("pod to ClusterIP with iTP:Local", true),
    output("pod to NodePort with eTP:Local", "10.180.0.2:80"),
    output("pod to LB with eTP:Local", "10.180.0.2:80"),
];

#[test]
fn internal_external_masquerade_matrix() {
    let configs: [(&str, bool, bool, &[Override]); 4] = [
        ("base", false, true, &[]),
        ("no LocalTrafficDetector", false, false, NO_DETECTOR),
        ("masqueradeAll", true, true, MASQUERADE_ALL),
        ("masqueradeAll, no LocalTrafficDetector", true, false, MASQUERADE_ALL_NO_DETECTOR),
    ];
    for (config, masquerade_all, detector, overrides) in configs {
        let mut node: NodeContext = upstream_node();
        node.masquerade_all = masquerade_all;
        if !detector {
            node.local_detect = LocalDetectMode::None;
        }
        let mut c = Cluster::new(node);
        let services = [
            ("ns1", "svc1", "172.30.0.41", 3001, 30001, "1.2.3.4", None, None),
            ("ns2", "svc2", "172.30.0.42", 3002, 30002, "5.6.7.8", Some("Local"), None),
            ("ns3", "svc3", "172.30.0.43", 3003, 30003, "9.10.11.12", None, Some("Local")),
        ];
        for (i, (ns, name, cip, np, hc, lb, etp, itp)) in services.into_iter().enumerate() {
            c.add_service(with_ingress(
                service(ns, name, cip, |s| {
                    s.type_ = Some("LoadBalancer".into());
                    s.ports = Some(vec![node_port("p80", 80, np)]);
                    s.health_check_node_port = Some(hc);
                    s.external_traffic_policy = etp.map(str::to_string);
                    s.internal_traffic_policy = itp.map(str::to_string);
                }),
                &[(lb, None)],
            ));
            let n = i + 1;
            c.add_slice(slice(
                ns,
                name,
                1,
                &[("p80", 80, "TCP")],
                &[ep(&format!("10.180.0.{n}")).local(), ep(&format!("10.180.1.{n}")).node("remote")],
            ));
        }
        let mut flows = masquerade_base_flows();
        for o in overrides {
            let row = flows.iter_mut().find(|f| f.name == o.name).unwrap_or_else(|| panic!("no row {}", o.name));
            if let Some(out) = o.output {
                assert_ne!(row.output, out, "{config}: override of {} changes nothing", o.name);
                row.output = out;
            }
            if let Some(m) = o.masq {
                assert_ne!(row.masq, m, "{config}: override of {} changes nothing", o.name);
                row.masq = m;
            }
        }
        eprintln!("config {config}");
        run_flows(c.sync(), &flows);
    }
}
