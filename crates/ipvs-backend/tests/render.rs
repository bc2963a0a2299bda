//! `Desired` → IPVS virtual services, bound addresses and the nftables side, table-driven
//! over the traffic policies (pure: no kernel).

#[path = "../../nft-backend/tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use ipvs_backend::filter;
use ipvs_backend::kernel::ServiceKey;
use ipvs_backend::render::{IpvsDesired, render};
use nft_client::ruleset::{Data, Key, Verdict};
use proxy_core::{IpFamily, Protocol};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: cluster}
spec:
  type: NodePort
  clusterIP: 172.30.0.10
  externalIPs: [192.0.2.10]
  ports: [{name: p, port: 80, targetPort: 8080, nodePort: 30010}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: ns, name: cluster-1, labels: {kubernetes.io/service-name: cluster}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
  - {addresses: [10.0.1.1], nodeName: test-node}
  - {addresses: [10.0.2.1], nodeName: other-node}
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: local}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.20
  externalTrafficPolicy: Local
  healthCheckNodePort: 30000
  sessionAffinity: ClientIP
  ports: [{name: p, port: 80, targetPort: 8080, nodePort: 30020}]
  loadBalancerSourceRanges: [203.0.113.0/24]
status: {loadBalancer: {ingress: [{ip: 198.51.100.20}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: ns, name: local-1, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
  - {addresses: [10.0.1.2], nodeName: test-node}
  - {addresses: [10.0.2.2], nodeName: other-node}
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: remote-only}
spec:
  type: NodePort
  clusterIP: 172.30.0.30
  externalTrafficPolicy: Local
  ports: [{name: p, port: 53, protocol: UDP, nodePort: 30030}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: ns, name: remote-only-1, labels: {kubernetes.io/service-name: remote-only}}
addressType: IPv4
ports: [{name: p, port: 53, protocol: UDP}]
endpoints:
  - {addresses: [10.0.2.3], nodeName: other-node}
---
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: empty}
spec:
  clusterIP: 172.30.0.40
  ports: [{name: p, port: 80}]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn servers(out: &IpvsDesired, proto: Protocol, addr: &str, port: u16) -> (Vec<SocketAddr>, Option<u32>) {
    let key = ServiceKey { protocol: proto, addr: ip(addr), port };
    let entry = out.services.get(&key).unwrap_or_else(|| panic!("no virtual service {key}"));
    (entry.servers.keys().copied().collect(), entry.service.persistence)
}

fn sa(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn virtual_services_follow_the_traffic_policies() {
    let engine = engine(node(), CLUSTER);
    let out = render(engine.desired(), "rr", &Default::default());
    let tcp = Protocol::Tcp;
    let udp = Protocol::Udp;
    // (protocol, address, port) → (real servers, persistence)
    type Case<'a> = (Protocol, &'a str, u16, &'a [&'a str], Option<u32>);
    let cases: &[Case] = &[
        // Cluster policy: every frontend balances over every endpoint.
        (tcp, "172.30.0.10", 80, &["10.0.1.1:8080", "10.0.2.1:8080"], None),
        (tcp, "192.0.2.10", 80, &["10.0.1.1:8080", "10.0.2.1:8080"], None),
        (tcp, "192.168.0.2", 30010, &["10.0.1.1:8080", "10.0.2.1:8080"], None),
        // Local external policy: the ClusterIP keeps every endpoint, the external
        // frontends get the local ones; affinity is persistence with upstream's default.
        (tcp, "172.30.0.20", 80, &["10.0.1.2:8080", "10.0.2.2:8080"], Some(10800)),
        (tcp, "198.51.100.20", 80, &["10.0.1.2:8080"], Some(10800)),
        (tcp, "192.168.0.2", 30020, &["10.0.1.2:8080"], Some(10800)),
        // Local policy without local endpoints: external frontends have no servers (dropped
        // by nftables), the ClusterIP still works.
        (udp, "172.30.0.30", 53, &["10.0.2.3:53"], None),
        (udp, "192.168.0.2", 30030, &[], None),
        // No endpoints at all: no servers (rejected by nftables).
        (tcp, "172.30.0.40", 80, &[], None),
    ];
    for (proto, addr, port, want, persistence) in cases {
        assert_eq!(servers(&out, *proto, addr, *port), (sa(want), *persistence), "{addr}:{port}");
    }
    // NodePorts listen only on the --nodeport-addresses (192.168.0.2 here, not .1.2).
    assert!(!out.services.keys().any(|k| k.addr == ip("192.168.1.2")));
    assert_eq!(out.services.len(), cases.len());
    // Bound to the dummy interface: Service IPs, never node IPs.
    let bound: Vec<IpAddr> = out.bound.iter().copied().collect();
    let want: Vec<IpAddr> =
        ["172.30.0.10", "172.30.0.20", "172.30.0.30", "172.30.0.40", "192.0.2.10", "198.51.100.20"].map(ip).to_vec();
    assert_eq!(bound, want);
}

#[test]
fn nftables_rejects_drops_firewalls_and_masquerades() {
    let engine = engine(node(), CLUSTER);
    let rules = engine.desired().family(IpFamily::V4);
    let rs = filter::family(rules, &render(engine.desired(), "rr", &Default::default()).node_ports);
    let elements = |set: &str| rs.sets[set].elements.clone();
    let tcp = Protocol::Tcp;
    let reject = Some(Data::Verdict(Verdict::Goto("reject-chain".into())));
    assert_eq!(elements("no-endpoint-services"), [(Key::AddrProtoPort(ip("172.30.0.40"), tcp, 80), reject)].into());
    assert_eq!(
        elements("no-endpoint-nodeports"),
        [(Key::ProtoPort(Protocol::Udp, 30030), Some(Data::Verdict(Verdict::Drop)))].into()
    );
    let firewall = elements("firewall-ips");
    assert_eq!(firewall.len(), 1);
    assert!(matches!(
        &firewall[&Key::AddrProtoPort(ip("198.51.100.20"), tcp, 80)],
        Some(Data::Verdict(Verdict::Jump(chain))) if chain.starts_with("firewall-") && rs.chains.contains_key(chain)
    ));
    // Masquerade: external frontends with Cluster policy only (Local keeps the source).
    assert_eq!(
        elements("external-masquerade").into_keys().collect::<Vec<_>>(),
        [Key::AddrProtoPort(ip("192.0.2.10"), tcp, 80)]
    );
    assert_eq!(elements("nodeports-masquerade").into_keys().collect::<Vec<_>>(), [Key::ProtoPort(tcp, 30010)]);
    assert_eq!(elements("cluster-ip-ports").len(), 4);
    assert!(elements("hairpin-endpoints").contains_key(&Key::AddrAddr(ip("10.0.1.1"), ip("10.0.1.1"))));
}

#[test]
fn node_ports_listen_on_node_addresses_but_never_on_service_ips() {
    // Every local address accepts NodePorts, and the node's address list holds, as it does
    // in IPVS mode, the Service IPs bound to the dummy interface, and loopback.
    let mut ctx = node();
    ctx.nodeport_addresses = vec!["0.0.0.0/0".parse().unwrap()];
    ctx.node_ips = ["192.168.0.2", "127.0.0.1", "172.30.0.10", "172.30.0.99"].map(ip).to_vec();
    let engine = engine(ctx, CLUSTER);
    // 172.30.0.99 is no Service's any more, but still on the dummy interface.
    let out = render(engine.desired(), "rr", &[ip("172.30.0.99")].into());
    assert_eq!(out.node_ports.iter().copied().collect::<Vec<_>>(), [ip("192.168.0.2")]);
    assert!(out.services.keys().filter(|k| k.port == 30010).all(|k| k.addr == ip("192.168.0.2")));
}

/// A Maglev Service gets IPVS's Maglev scheduler `mh`; the others keep the configured one.
#[test]
fn maglev_services_get_the_mh_scheduler() {
    let yaml = CLUSTER.replace(
        "metadata: {namespace: ns, name: cluster}",
        "metadata: {namespace: ns, name: cluster, annotations: {kproxy.io/load-balancing: maglev}}",
    );
    let engine = engine(node(), &yaml);
    let out = render(engine.desired(), "rr", &Default::default());
    let scheduler = |addr: &str, port: u16| {
        let key = ServiceKey { protocol: Protocol::Tcp, addr: ip(addr), port };
        out.services[&key].service.scheduler.clone()
    };
    assert_eq!(scheduler("172.30.0.10", 80), "mh");
    assert_eq!(scheduler("192.0.2.10", 80), "mh");
    assert_eq!(scheduler("172.30.0.20", 80), "rr", "a Service without the annotation");
}
