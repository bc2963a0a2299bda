//! Ports of upstream's ClusterIP-centred packet-flow tests (`pkg/proxy/nftables/proxier_test.go`):
//! TestClusterIPGeneral, TestNoEndpointsReject, TestBadIPs, TestLoadBalancerIngressRouteTypeProxy.

mod common;

use common::*;
use proxy_core::Protocol;

#[test]
fn cluster_ip_general() {
    let mut c = Cluster::upstream();
    c.add_service(service("ns1", "svc1", "172.30.0.41", |s| s.ports = Some(vec![port("http", 80, "TCP")])));
    c.add_service(service("ns2", "svc2", "172.30.0.42", |s| {
        s.ports = Some(vec![
            port("http", 80, "TCP"),
            port("https", 443, "TCP"),
            port("dns-udp", 53, "UDP"),
            port("dns-tcp", 53, "TCP"),
            port("dns-sctp", 53, "SCTP"),
        ])
    }));
    c.add_slice(slice("ns1", "svc1", 1, &[("http", 80, "TCP")], &[ep("10.180.0.1").local()]));
    c.add_slice(slice(
        "ns2",
        "svc2",
        1,
        &[
            ("http", 80, "TCP"),
            ("https", 8443, "TCP"),
            ("dns-udp", 53, "UDP"),
            ("dns-tcp", 5353, "TCP"),
            ("dns-sctp", 53, "SCTP"),
        ],
        &[ep("10.180.0.1").local(), ep("10.180.2.1").node("node2")],
    ));
    let flow = |name, proto, dst, port, output| Flow { name, src: "10.180.0.2", proto, dst, port, output, masq: false };
    run_flows(
        c.sync(),
        &[
            tcp("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80", false),
            tcp("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", true),
            flow("clusterIP with multiple endpoints", Protocol::Tcp, "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80"),
            flow("clusterIP with TargetPort", Protocol::Tcp, "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
            flow(
                "TCP, UDP and SCTP on the same port (TCP)",
                Protocol::Tcp,
                "172.30.0.42",
                53,
                "10.180.0.1:5353, 10.180.2.1:5353",
            ),
            flow(
                "TCP, UDP and SCTP on the same port (UDP)",
                Protocol::Udp,
                "172.30.0.42",
                53,
                "10.180.0.1:53, 10.180.2.1:53",
            ),
            flow(
                "TCP, UDP and SCTP on the same port (SCTP)",
                Protocol::Sctp,
                "172.30.0.42",
                53,
                "10.180.0.1:53, 10.180.2.1:53",
            ),
            flow("TCP-only port does not match UDP traffic", Protocol::Udp, "172.30.0.42", 80, "REJECT"),
            flow("svc1 does not accept svc2's ports", Protocol::Tcp, "172.30.0.41", 443, "REJECT"),
            flow("packet to unallocated cluster ip", Protocol::Tcp, "172.30.0.50", 80, "DROP"),
        ],
    );
}

#[test]
fn no_endpoints_reject() {
    let mut c = Cluster::upstream();
    c.add_service(with_ingress(
        service("ns1", "svc1", "172.30.0.41", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.external_ips = Some(vec!["192.168.99.11".into()]);
            s.ports = Some(vec![node_port("p80", 80, 3001)]);
        }),
        &[("1.2.3.4", None)],
    ));
    run_flows(
        c.sync(),
        &[
            tcp("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT", false),
            tcp("external to external IP with no endpoints", "203.0.113.2", "192.168.99.11", 80, "REJECT", false),
            tcp("pod to NodePort with no endpoints", "10.0.0.2", "192.168.0.2", 3001, "REJECT", false),
            tcp("external to NodePort with no endpoints", "203.0.113.2", "192.168.0.2", 3001, "REJECT", false),
            tcp("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT", false),
            tcp("external to LoadBalancer IP with no endpoints", "203.0.113.2", "1.2.3.4", 80, "REJECT", false),
        ],
    );
}

#[test]
fn bad_ips_are_normalised() {
    let mut c = Cluster::upstream();
    c.add_service(with_ingress(
        service("ns1", "svc1", "172.30.0.041", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.external_ips = Some(vec!["192.168.099.022".into()]);
            s.load_balancer_source_ranges = Some(vec!["203.0.113.000/025".into()]);
            s.ports = Some(vec![node_port("p80", 80, 3001)]);
        }),
        &[("1.2.3.004", None)],
    ));
    c.add_slice(slice("ns1", "svc1", 1, &[("p80", 80, "TCP")], &[ep("10.180.00.001")]));
    let desired = c.sync();
    let rules = desired.family(proxy_core::IpFamily::V4).service_ports.values().next().unwrap();
    assert_eq!(rules.cluster_ip, ip("172.30.0.41"));
    assert_eq!(rules.external_ips, [ip("192.168.99.22")]);
    assert_eq!(rules.load_balancer_ips, [ip("1.2.3.4")]);
    assert_eq!(rules.firewall.as_ref().unwrap().allowed, [net("203.0.113.0/25")]);
    run_flows(
        desired,
        &[
            tcp("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80", false),
            tcp("allowed external to LB", "203.0.113.2", "1.2.3.4", 80, "10.180.0.1:80", true),
            tcp("blocked external to LB", "203.0.113.130", "1.2.3.4", 80, "DROP", false),
            tcp("external to external IP", "203.0.113.2", "192.168.99.22", 80, "10.180.0.1:80", true),
            tcp("external to NodePort", "203.0.113.2", "192.168.0.2", 3001, "10.180.0.1:80", true),
        ],
    );
}

#[test]
fn load_balancer_ingress_ip_mode_proxy_is_not_programmed() {
    let cases = [
        ("ipMode Proxy", "10.20.30.41", "1.2.3.4", Some("Proxy"), ""),
        ("ipMode VIP", "10.20.30.42", "1.2.3.5", Some("VIP"), "10.180.0.1:80"),
        ("ipMode nil", "10.20.30.43", "1.2.3.6", None, "10.180.0.1:80"),
    ];
    for (name, cluster_ip, lb_ip, mode, output) in cases {
        let mut c = Cluster::upstream();
        c.add_service(with_ingress(
            service("ns1", "svc1", cluster_ip, |s| {
                s.type_ = Some("LoadBalancer".into());
                s.ports = Some(vec![node_port("p80", 80, 3001)]);
            }),
            &[(lb_ip, mode)],
        ));
        c.add_slice(slice("ns1", "svc1", 1, &[("p80", 80, "TCP")], &[ep("10.180.0.1")]));
        let masq = !output.is_empty();
        run_flows(
            c.sync(),
            &[Flow { name, src: "203.0.113.2", proto: Protocol::Tcp, dst: lb_ip, port: 80, output, masq }],
        );
    }
}
