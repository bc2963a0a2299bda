//! Translation and validation: malformed input is skipped at the smallest unit with a
//! typed reason, upstream's filters apply, and one bad object never blocks the others.

mod common;

use common::*;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use proxy_core::model::{IpMode, ServiceType, TrafficPolicy};
use proxy_core::translate::{self, Ignored, Rejected};
use proxy_core::{Error, IpFamily, ingest};

fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// (case, manifest, expected problems as (field, error)).
type ServiceCase = (&'static str, &'static str, Vec<(&'static str, Error)>);

#[test]
fn service_parts_are_dropped_alone() {
    let cases: Vec<ServiceCase> = vec![
        (
            "port 0 and port 70000 are dropped, the good port stays",
            "spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 0}, {name: b, port: 70000}, {name: c, port: 80}]}",
            vec![
                ("spec.ports[0].port", Error::PortOutOfRange(0)),
                ("spec.ports[1].port", Error::PortOutOfRange(70000)),
            ],
        ),
        (
            "unknown protocol",
            "spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 80, protocol: ICMP}, {name: c, port: 81}]}",
            vec![("spec.ports[0].protocol", Error::UnknownProtocol(String::new()))],
        ),
        (
            "duplicate name and duplicate number",
            "spec: {clusterIP: 10.96.0.1, ports: [{name: a, port: 80}, {name: a, port: 81}, {name: b, port: 80}, {name: c, port: 82}]}",
            vec![
                ("spec.ports[1]", Error::DuplicatePort(String::new())),
                ("spec.ports[2]", Error::DuplicatePort(String::new())),
            ],
        ),
        (
            "bad external IP",
            "spec: {clusterIP: 10.96.0.1, externalIPs: [1.2.3.4, nope], ports: [{port: 80}]}",
            vec![("spec.externalIPs[1]", Error::BadIp(String::new()))],
        ),
        (
            "bad source range",
            "spec: {clusterIP: 10.96.0.1, type: LoadBalancer, loadBalancerSourceRanges: [10.0.0.0/33, 10.0.0.0/8], ports: [{port: 80, nodePort: 30080}]}",
            vec![("spec.loadBalancerSourceRanges[0]", Error::BadCidr(String::new()))],
        ),
        (
            "bad nodePort drops that port",
            "spec: {clusterIP: 10.96.0.1, type: NodePort, ports: [{name: a, port: 80, nodePort: 99999}, {name: b, port: 81, nodePort: 30081}]}",
            vec![("spec.ports[0].nodePort", Error::PortOutOfRange(99999))],
        ),
        (
            "bad second cluster IP keeps the first family",
            "spec: {clusterIPs: [10.96.0.1, 'fd00::zz'], ports: [{port: 80}]}",
            vec![("spec.clusterIPs[1]", Error::BadIp(String::new()))],
        ),
        (
            "affinity timeout out of range falls back to the default",
            "spec: {clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}",
            vec![("spec.sessionAffinityConfig.clientIP.timeoutSeconds", Error::OutOfRange(0))],
        ),
        (
            "unknown traffic policy",
            "spec: {clusterIP: 10.96.0.1, externalTrafficPolicy: Sometimes, ports: [{port: 80}]}",
            vec![("spec.externalTrafficPolicy", Error::UnknownValue(String::new()))],
        ),
    ];
    for (name, spec, want) in cases {
        let svc: core::Service = from_yaml(&format!("metadata: {{namespace: ns, name: svc}}\n{spec}"));
        let t = translate::service(&svc).unwrap_or_else(|e| panic!("{name}: rejected whole: {e:?}"));
        let got: Vec<(&str, std::mem::Discriminant<Error>)> =
            t.problems.iter().map(|p| (p.field.as_str(), std::mem::discriminant(&p.error))).collect();
        let want: Vec<(&str, std::mem::Discriminant<Error>)> =
            want.iter().map(|(f, e)| (*f, std::mem::discriminant(e))).collect();
        assert_eq!(got, want, "{name}");
        assert!(t.problems.iter().all(|p| !p.object_skipped), "{name}");
        assert!(!t.value.ports.is_empty(), "{name}: the good ports survive");
    }
}

#[test]
fn problems_name_the_object_and_field() {
    let svc: core::Service = from_yaml(
        "metadata: {namespace: shop, name: cart}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 0}, {port: 80}]}",
    );
    let t = translate::service(&svc).unwrap();
    assert_eq!(t.problems[0].to_string(), "Service shop/cart: spec.ports[0].port: port 0 is outside 1-65535");
}

#[test]
fn whole_services_rejected_or_ignored() {
    let cases: &[(&str, &str, Option<Ignored>)] = &[
        ("headless", "spec: {clusterIP: None, ports: [{port: 80}]}", Some(Ignored::Headless)),
        ("no cluster IP", "spec: {ports: [{port: 80}]}", Some(Ignored::Headless)),
        ("external name", "spec: {type: ExternalName, externalName: example.com}", Some(Ignored::ExternalName)),
        ("bad cluster IP", "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}", None),
        ("unknown type", "spec: {clusterIP: 10.96.0.1, type: Magic}", None),
        ("no spec", "status: {}", None),
    ];
    for (name, rest, want) in cases {
        let svc: core::Service = from_yaml(&format!("metadata: {{namespace: ns, name: svc}}\n{rest}"));
        match (translate::service(&svc), want) {
            (Err(Rejected::Ignored(got)), Some(want)) => assert_eq!(got, *want, "{name}"),
            (Err(Rejected::Invalid(p)), None) => assert!(p.object_skipped, "{name}"),
            (other, _) => panic!("{name}: unexpected {other:?}"),
        }
    }
    let labelled: core::Service = from_yaml(
        "metadata: {namespace: ns, name: svc, labels: {service.kubernetes.io/service-proxy-name: other}}\nspec: {clusterIP: 10.96.0.1}",
    );
    assert_eq!(translate::service(&labelled), Err(Rejected::Ignored(Ignored::OtherProxy)));
    // Upstream's Service informer selects `!service.kubernetes.io/headless` too, whatever
    // the Service's cluster IP.
    let labelled: core::Service = from_yaml(
        "metadata: {namespace: ns, name: svc, labels: {service.kubernetes.io/headless: \"\"}}\nspec: {clusterIP: 10.96.0.1}",
    );
    assert_eq!(translate::service(&labelled), Err(Rejected::Ignored(Ignored::Headless)));
}

#[test]
fn service_fields_are_read() {
    let svc: core::Service = from_yaml(
        r#"
metadata: {namespace: ns, name: web}
spec:
  type: LoadBalancer
  clusterIPs: [10.96.0.10, "fd00::10"]
  externalIPs: [192.168.99.1, "2001:db8::99"]
  loadBalancerSourceRanges: [203.0.113.0/24]
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  trafficDistribution: PreferSameNode
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, targetPort: web, nodePort: 30080}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}]
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}, {ip: 5.6.7.8, ipMode: Proxy}, {hostname: lb.example.com}]
"#,
    );
    let t = translate::service(&svc).unwrap();
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let s = t.value;
    assert_eq!(s.kind, ServiceType::LoadBalancer);
    assert_eq!(s.cluster_ip(IpFamily::V6), Some(ip("fd00::10")));
    assert_eq!(s.external_ips.len(), 2);
    assert_eq!(s.load_balancer_ingress.len(), 2);
    assert_eq!(s.load_balancer_ingress[1].ip_mode, IpMode::Proxy);
    assert_eq!(s.session_affinity, Some(10_800));
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(s.health_check_node_port, Some(32000));
    assert_eq!(s.ports[0].node_port, Some(30080));
    assert_eq!(s.ports[1].protocol, proxy_core::Protocol::Udp);
}

#[test]
fn endpoint_slices() {
    let slice: discovery::EndpointSlice = from_yaml(
        r#"
metadata: {namespace: ns, name: web-abc, labels: {kubernetes.io/service-name: web},
           annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-11-27T10:00:00Z"}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: bad, port: 0}, {name: dns, port: 53, protocol: UDP}]
endpoints:
  - addresses: [10.0.0.1]
    conditions: {ready: false, serving: true, terminating: true}
    nodeName: node-a
    zone: zone-a
    hints: {forZones: [{name: zone-a}], forNodes: [{name: node-a}]}
  - addresses: []
  - addresses: [not-an-ip]
  - addresses: ["fd00::1"]
  - addresses: [010.000.000.002]
"#,
    );
    let t = translate::endpoint_slice(&slice).unwrap();
    let fields: Vec<&str> = t.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["ports[1].port", "endpoints[1].addresses", "endpoints[2].addresses[0]", "endpoints[3].addresses[0]"]
    );
    let s = t.value;
    assert_eq!(s.service.to_string(), "ns/web");
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.endpoints.len(), 2);
    let e = &s.endpoints[0];
    assert!(!e.ready && e.serving && e.terminating);
    assert_eq!(e.node_name.as_deref(), Some("node-a"));
    assert!(e.zone_hints.contains("zone-a") && e.node_hints.contains("node-a"));
    assert_eq!(s.endpoints[1].ip, ip("10.0.0.2"));
    assert!(s.endpoints[1].ready && s.endpoints[1].serving && !s.endpoints[1].terminating);
    assert!(s.trigger_time.is_some());

    let unlabelled: discovery::EndpointSlice = from_yaml("metadata: {namespace: ns, name: x}\naddressType: IPv4");
    match translate::endpoint_slice(&unlabelled) {
        Err(Rejected::Invalid(p)) => assert_eq!(p.error, Error::MissingServiceName),
        other => panic!("unexpected {other:?}"),
    }
    let fqdn: discovery::EndpointSlice =
        from_yaml("metadata: {namespace: ns, name: x, labels: {kubernetes.io/service-name: web}}\naddressType: FQDN");
    assert_eq!(translate::endpoint_slice(&fqdn), Err(Rejected::Ignored(Ignored::NotProxied)));
}

#[test]
fn nodes() {
    let node: core::Node = from_yaml(
        r#"
metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}
spec: {podCIDRs: [10.244.1.0/24, "fd00:244:1::/64"], taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}
status: {addresses: [{type: Hostname, address: node-a}, {type: ExternalIP, address: 203.0.113.9}, {type: InternalIP, address: 192.168.0.2}]}
"#,
    );
    let n = translate::node(&node).unwrap().value;
    assert_eq!(n.zone.as_deref(), Some("zone-a"));
    assert_eq!(n.addresses, [ip("192.168.0.2"), ip("203.0.113.9")], "InternalIP first");
    assert_eq!(n.pod_cidrs.len(), 2);
    assert!(n.being_deleted);
}

#[test]
fn an_invalid_update_removes_the_old_rules_and_nothing_else() {
    let mut c = Cluster::upstream();
    c.add_service(service("ns", "good", "172.30.0.1", |s| s.ports = Some(vec![port("p", 80, "TCP")])));
    c.add_service(service("ns", "soon-bad", "172.30.0.2", |s| s.ports = Some(vec![port("p", 80, "TCP")])));
    assert_eq!(c.sync().service_port_count(), 2);
    let broken = service("ns", "soon-bad", "172.30.0.999", |s| s.ports = Some(vec![port("p", 80, "TCP")]));
    let i = ingest::service_applied(&broken);
    assert_eq!(i.problems.len(), 1);
    assert_eq!(i.problems[0].to_string(), "Service ns/soon-bad: spec.clusterIP: invalid IP address \"172.30.0.999\"");
    c.engine.apply(i.event);
    let desired = c.sync();
    let names: Vec<String> = desired.family(IpFamily::V4).service_ports.keys().map(|k| k.to_string()).collect();
    assert_eq!(names, ["ns/good:p"]);
}
