//! Stale UDP conntrack entries, as upstream's reconciler decides them (pkg/proxy/conntrack).

mod common;

use common::*;
use proxy_core::IpFamily;
use proxy_core::conntrack::{UdpFlow, UdpFrontends};

fn flow(dst: &str, reply_src: &str) -> UdpFlow {
    UdpFlow { orig_src: "10.0.0.2:40000".parse().unwrap(), orig_dst: dst.parse().unwrap(), reply_src: ip(reply_src) }
}

#[test]
fn stale_udp_flows() {
    let mut c = Cluster::upstream();
    c.add_service(with_ingress(
        service("ns1", "dns", "172.30.0.53", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.external_ips = Some(vec!["192.168.99.53".into()]);
            s.ports = Some(vec![core_udp_node_port()]);
        }),
        &[("1.2.3.53", None)],
    ));
    c.add_service(service("ns1", "web", "172.30.0.80", |s| s.ports = Some(vec![port("http", 80, "TCP")])));
    c.add_service(service("ns1", "empty", "172.30.0.54", |s| s.ports = Some(vec![port("dns", 53, "UDP")])));
    c.add_slice(slice(
        "ns1",
        "dns",
        1,
        &[("dns", 5353, "UDP")],
        &[
            ep("10.180.0.1").local(),
            ep("10.180.0.2").conditions(false, true, true),
            ep("10.180.0.3").conditions(false, false, false),
        ],
    ));
    let desired = c.sync().clone();
    let frontends = UdpFrontends::new(&desired, IpFamily::V4);
    let node_ips = [ip(NODE_IP)];
    let cases = [
        ("to the ClusterIP, DNATed to a ready endpoint", flow("172.30.0.53:53", "10.180.0.1"), false),
        ("to the ClusterIP, DNATed to a serving terminating endpoint", flow("172.30.0.53:53", "10.180.0.2"), false),
        ("to the ClusterIP, DNATed to a not-serving endpoint", flow("172.30.0.53:53", "10.180.0.3"), true),
        ("to the ClusterIP, DNATed to an endpoint that is gone", flow("172.30.0.53:53", "10.180.0.9"), true),
        ("to the ClusterIP, never DNATed (began with no endpoints)", flow("172.30.0.53:53", "172.30.0.53"), true),
        ("to an external IP, gone endpoint", flow("192.168.99.53:53", "10.180.0.9"), true),
        ("to the LB IP, current endpoint", flow("1.2.3.53:53", "10.180.0.1"), false),
        ("to the NodePort on the node, gone endpoint", flow("192.168.0.2:30053", "10.180.0.9"), true),
        ("to the NodePort on the node, current endpoint", flow("192.168.0.2:30053", "10.180.0.1"), false),
        ("to the NodePort port on another host", flow("192.168.7.7:30053", "10.180.0.9"), false),
        // Loopback is never DNATed in nftables or IPVS mode: a flow to 127.0.0.1 on a
        // NodePort is the localhost relay's (or any local server's) and is left alone.
        ("to the NodePort on 127.0.0.1 (the localhost relay)", flow("127.0.0.1:30053", "127.0.0.1"), false),
        ("to the NodePort on ::1 (the localhost relay)", flow("[::1]:30053", "::1"), false),
        ("to another port of the ClusterIP", flow("172.30.0.53:54", "10.180.0.9"), false),
        ("to a Service without endpoints (scale to zero, k#139628)", flow("172.30.0.54:53", "10.180.0.1"), true),
        ("to a TCP Service's address", flow("172.30.0.80:80", "10.180.0.9"), false),
    ];
    for (name, f, stale) in cases {
        assert_eq!(frontends.is_stale(&f, &node_ips), stale, "{name}");
    }
}

fn core_udp_node_port() -> k8s_openapi::api::core::v1::ServicePort {
    k8s_openapi::api::core::v1::ServicePort { node_port: Some(30053), ..port("dns", 53, "UDP") }
}

/// A frontend that went away (Service deleted, IP or NodePort changed): its DNATed flows
/// are stale, unless a current Service took the frontend over (k#141371).
#[test]
fn flows_to_gone_frontends() {
    use proxy_core::conntrack::GoneFrontends;
    use proxy_core::{Engine, Event, ObjectRef, ingest};

    let udp = |name: &str, cluster_ip: &str, node_port: i32| {
        service("ns1", name, cluster_ip, |s| {
            s.type_ = Some("NodePort".into());
            s.ports = Some(vec![k8s_openapi::api::core::v1::ServicePort {
                node_port: Some(node_port),
                ..port("dns", 53, "UDP")
            }]);
        })
    };
    let mut engine = Engine::new(upstream_node());
    for svc in [udp("dns", "172.30.0.53", 30053), udp("moved", "172.30.0.60", 30060)] {
        engine.apply(ingest::service_applied(&svc).event);
        let eps = [ep("10.180.0.1").local()];
        engine.apply(
            ingest::slice_applied(&slice("ns1", svc.metadata.name.as_deref().unwrap(), 1, &[("dns", 53, "UDP")], &eps))
                .event,
        );
    }
    engine.plan();
    // dns is deleted; moved gets a new ClusterIP and NodePort; a new Service takes over
    // moved's old ClusterIP.
    engine.apply(Event::ServiceDeleted(ObjectRef::new("ns1", "dns")));
    engine.apply(ingest::service_applied(&udp("moved", "172.30.0.61", 30061)).event);
    engine.apply(ingest::service_applied(&udp("heir", "172.30.0.60", 30070)).event);
    let eps = [ep("10.180.0.7").local()];
    engine.apply(ingest::slice_applied(&slice("ns1", "heir", 1, &[("dns", 53, "UDP")], &eps)).event);
    let plan = engine.plan();
    let mut gone = GoneFrontends::default();
    gone.add(plan.changes.family(IpFamily::V4));
    assert!(!gone.is_empty());

    let desired = engine.desired();
    let frontends = UdpFrontends::new(desired, IpFamily::V4).with_gone(&gone);
    let without_gone = UdpFrontends::new(desired, IpFamily::V4);
    let node_ips = [ip(NODE_IP)];
    let cases = [
        ("to a deleted Service's ClusterIP, DNATed", flow("172.30.0.53:53", "10.180.0.1"), true),
        ("to a deleted Service's ClusterIP, never DNATed", flow("172.30.0.53:53", "172.30.0.53"), false),
        ("to a deleted Service's NodePort on the node, DNATed", flow("192.168.0.2:30053", "10.180.0.1"), true),
        ("to a deleted Service's NodePort on another host", flow("192.168.7.7:30053", "10.180.0.1"), false),
        ("to a changed Service's old NodePort", flow("192.168.0.2:30060", "10.180.0.1"), true),
        ("to a changed Service's new ClusterIP, its endpoint", flow("172.30.0.61:53", "10.180.0.1"), false),
        ("to an old ClusterIP another Service took over, the old endpoint", flow("172.30.0.60:53", "10.180.0.1"), true),
        ("to an old ClusterIP another Service took over, its endpoint", flow("172.30.0.60:53", "10.180.0.7"), false),
        ("to an address that never was a frontend", flow("172.30.0.99:53", "10.180.0.1"), false),
    ];
    for (name, f, stale) in cases {
        assert_eq!(frontends.is_stale(&f, &node_ips), stale, "{name}");
    }
    // Without the gone frontends, flows to a deleted Service are left alone (upstream's
    // behaviour).
    assert!(!without_gone.is_stale(&flow("172.30.0.53:53", "10.180.0.1"), &node_ips));
}
