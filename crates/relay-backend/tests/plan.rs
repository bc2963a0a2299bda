//! Which listeners a cluster asks for, and that following changes gives what a full plan
//! gives, sync after sync.

use std::net::SocketAddr;

use proxy_core::manifest::{self, Object};
use proxy_core::{Engine, IpFamily, NodeContext, Protocol, ingest};
use relay_backend::plan::{Listener, Listeners, Pick, plan};

fn service(name: &str, ip: u8, proto: &str, node_port: u16, extra: &str, eps: &[(u8, &str)]) -> String {
    let endpoints: String =
        eps.iter().map(|(i, node)| format!("  - {{addresses: [10.244.0.{i}], nodeName: {node}}}\n")).collect();
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{namespace: default, name: {name}}}
spec:
  type: NodePort
  clusterIP: 10.96.0.{ip}
  ports: [{{name: p, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: {proto}}}]
{extra}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{namespace: default, name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: 8080, protocol: {proto}}}]
endpoints:
{endpoints}"
    )
}

fn apply(engine: &mut Engine, yaml: &str) {
    for object in manifest::parse(yaml) {
        let ingested = match object.expect("parses") {
            Object::Service(s) => ingest::service_applied(&s),
            Object::EndpointSlice(s) => ingest::slice_applied(&s),
            _ => continue,
        };
        engine.apply(ingested.event);
    }
}

fn delete(engine: &mut Engine, name: &str) {
    engine.apply(proxy_core::Event::ServiceDeleted(proxy_core::model::ObjectRef::new("default", name)));
}

fn listener(protocol: Protocol, port: u16) -> Listener {
    Listener { family: IpFamily::V4, protocol, port }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn nodeports_with_endpoints_get_listeners_by_policy() {
    let mut engine = Engine::new(NodeContext::new("node-a"));
    let here_and_there = [(11, "node-a"), (12, "node-b")];
    apply(&mut engine, &service("web", 10, "TCP", 30080, "", &here_and_there));
    apply(&mut engine, &service("dns", 11, "UDP", 30053, "", &here_and_there));
    apply(&mut engine, &service("local", 12, "TCP", 30081, "  externalTrafficPolicy: Local\n", &here_and_there));
    apply(&mut engine, &service("remote", 13, "TCP", 30082, "  externalTrafficPolicy: Local\n", &[(12, "node-b")]));
    apply(&mut engine, &service("empty", 14, "TCP", 30083, "", &[]));
    apply(&mut engine, &service("sctp", 15, "SCTP", 30084, "", &here_and_there));
    apply(&mut engine, &service("sticky", 16, "TCP", 30085, "  sessionAffinity: ClientIP\n", &[(11, "node-a")]));
    engine.plan();
    let p = plan(engine.desired());
    let ports: Vec<_> = p.keys().map(|l| (l.protocol, l.port)).collect();
    // No listener without endpoints for external traffic (remote: Local with none here;
    // empty), nor for SCTP.
    assert_eq!(
        ports,
        [(Protocol::Tcp, 30080), (Protocol::Udp, 30053), (Protocol::Tcp, 30081), (Protocol::Tcp, 30085)]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(p[&listener(Protocol::Tcp, 30080)].endpoints, addrs(&["10.244.0.11:8080", "10.244.0.12:8080"]));
    assert_eq!(p[&listener(Protocol::Tcp, 30081)].endpoints, addrs(&["10.244.0.11:8080"]));
    assert_eq!(p[&listener(Protocol::Tcp, 30080)].pick, Pick::Random);
    assert_eq!(p[&listener(Protocol::Tcp, 30085)].pick, Pick::Affinity(std::time::Duration::from_secs(10800)));
    assert_eq!(listener(Protocol::Tcp, 30080).addr(), "127.0.0.1:30080".parse().unwrap());
    let v6 = Listener { family: IpFamily::V6, ..listener(Protocol::Udp, 30053) };
    assert_eq!(v6.addr(), "[::1]:30053".parse().unwrap());
}

/// One change to the cluster.
type Step<'a> = Box<dyn Fn(&mut Engine) + 'a>;

#[test]
fn following_changes_gives_the_full_plan() {
    let mut engine = Engine::new(NodeContext::new("node-a"));
    let mut listeners = Listeners::default();
    let one = [(11, "node-a")];
    let two = [(11, "node-a"), (12, "node-b")];
    let steps: Vec<Step> = vec![
        Box::new(|e| apply(e, &service("web", 10, "TCP", 30080, "", &two))),
        Box::new(|e| apply(e, &service("dns", 11, "UDP", 30053, "", &one))),
        // Endpoints change, a port moves, a policy empties a listener, a Service goes.
        Box::new(|e| apply(e, &service("web", 10, "TCP", 30080, "", &one))),
        Box::new(|e| apply(e, &service("dns", 11, "UDP", 30054, "", &one))),
        Box::new(|e| {
            apply(e, &service("web", 10, "TCP", 30080, "  externalTrafficPolicy: Local\n", &[(12, "node-b")]))
        }),
        // Endpoints change elsewhere: still no local endpoint, no listener, nothing to send.
        Box::new(|e| {
            apply(e, &service("web", 10, "TCP", 30080, "  externalTrafficPolicy: Local\n", &[(13, "node-b")]))
        }),
        Box::new(|e| apply(e, &service("web", 10, "TCP", 30080, "  externalTrafficPolicy: Local\n", &two))),
        Box::new(|e| delete(e, "dns")),
        // A NodePort handed from one Service to another.
        Box::new(|e| delete(e, "web")),
        Box::new(|e| apply(e, &service("api", 20, "TCP", 30080, "", &two))),
    ];
    for (i, step) in steps.iter().enumerate() {
        step(&mut engine);
        let p = engine.plan();
        if i == 0 {
            listeners.full(engine.desired());
        } else {
            let before = listeners.wanted().clone();
            let changed = listeners.partial(&p.changes, engine.desired());
            assert_eq!(changed, before != *listeners.wanted(), "step {i}: partial says changed = {changed}");
        }
        assert_eq!(*listeners.wanted(), plan(engine.desired()), "after step {i}");
    }
}
