//! Shared fixtures for the ported upstream tests: upstream's fake-proxier node, builders
//! for `k8s-openapi` objects, and a flow-table runner over the tracer.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proxy_core::trace::{Packet, Source, Verdict, trace};
use proxy_core::{Desired, Engine, LocalDetectMode, NodeContext, Protocol, ingest};

pub const NODE_NAME: &str = "test-node";
pub const NODE_IP: &str = "192.168.0.2";
pub const NODE_IPS: [&str; 5] = ["192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2"];

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

/// Upstream's `NewFakeProxier`: node `test-node`, pod CIDR detector, NodePorts on the
/// primary node IPs, service CIDRs known.
pub fn upstream_node() -> NodeContext {
    let mut node = NodeContext::new(NODE_NAME);
    node.node_ips = NODE_IPS.iter().map(|s| ip(s)).collect();
    node.nodeport_addresses = vec![net("192.168.0.2/32"), net("2001:db8::1/128")];
    node.local_detect = LocalDetectMode::ClusterCidr(vec![net("10.0.0.0/8"), net("fd00:10::/64")]);
    node.service_cidrs = vec![net("172.30.0.0/16"), net("fd00:10:96::/112")];
    node
}

/// A test cluster: an engine fed with k8s objects.
pub struct Cluster {
    pub engine: Engine,
}

impl Cluster {
    pub fn new(node: NodeContext) -> Cluster {
        Cluster { engine: Engine::new(node) }
    }

    pub fn upstream() -> Cluster {
        Cluster::new(upstream_node())
    }

    pub fn add_service(&mut self, svc: core::Service) -> &mut Self {
        let i = ingest::service_applied(&svc);
        assert!(i.problems.is_empty(), "unexpected problems: {:?}", i.problems);
        self.engine.apply(i.event);
        self
    }

    pub fn add_slice(&mut self, slice: discovery::EndpointSlice) -> &mut Self {
        let i = ingest::slice_applied(&slice);
        assert!(i.problems.is_empty(), "unexpected problems: {:?}", i.problems);
        self.engine.apply(i.event);
        self
    }

    pub fn delete_slice(&mut self, slice: &discovery::EndpointSlice) -> &mut Self {
        self.engine.apply(ingest::slice_deleted(slice));
        self
    }

    /// Plans (incrementally) and returns the desired state, checking that the incremental
    /// result equals a from-scratch compute.
    pub fn sync(&mut self) -> &Desired {
        self.engine.plan();
        let full = proxy_core::compute(self.engine.snapshot(), self.engine.node_context());
        assert_eq!(&full, self.engine.desired(), "incremental and full compute disagree");
        self.engine.desired()
    }
}

// === Service builders ===

pub fn service(ns: &str, name: &str, cluster_ip: &str, f: impl FnOnce(&mut core::ServiceSpec)) -> core::Service {
    let mut spec = core::ServiceSpec { cluster_ip: Some(cluster_ip.into()), ..Default::default() };
    f(&mut spec);
    core::Service {
        metadata: ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() },
        spec: Some(spec),
        status: None,
    }
}

pub fn port(name: &str, port: i32, protocol: &str) -> core::ServicePort {
    core::ServicePort { name: Some(name.into()), port, protocol: Some(protocol.into()), ..Default::default() }
}

pub fn node_port(name: &str, p: i32, node_port: i32) -> core::ServicePort {
    core::ServicePort { node_port: Some(node_port), ..port(name, p, "TCP") }
}

pub fn with_ingress(mut svc: core::Service, ips: &[(&str, Option<&str>)]) -> core::Service {
    let ingress = ips
        .iter()
        .map(|(ip, mode)| core::LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: mode.map(str::to_string),
            ..Default::default()
        })
        .collect();
    svc.status = Some(core::ServiceStatus {
        load_balancer: Some(core::LoadBalancerStatus { ingress: Some(ingress) }),
        ..Default::default()
    });
    svc
}

// === EndpointSlice builders ===

/// An endpoint: `ep("10.0.0.1").node("test-node").conditions(false, true, true)`.
#[derive(Clone)]
pub struct Ep(discovery::Endpoint);

pub fn ep(address: &str) -> Ep {
    Ep(discovery::Endpoint { addresses: vec![address.into()], ..Default::default() })
}

impl Ep {
    pub fn node(mut self, node: &str) -> Ep {
        self.0.node_name = Some(node.into());
        self
    }

    pub fn local(self) -> Ep {
        self.node(NODE_NAME)
    }

    /// Ready, serving, terminating.
    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Ep {
        self.0.conditions = Some(discovery::EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        });
        self
    }

    pub fn ready(mut self, ready: bool) -> Ep {
        self.0.conditions = Some(discovery::EndpointConditions { ready: Some(ready), ..Default::default() });
        self
    }

    pub fn zone_hints(mut self, zones: &[&str]) -> Ep {
        let hints = self.0.hints.get_or_insert_with(Default::default);
        hints.for_zones = Some(zones.iter().map(|z| discovery::ForZone { name: z.to_string() }).collect());
        self
    }

    pub fn node_hints(mut self, nodes: &[&str]) -> Ep {
        let hints = self.0.hints.get_or_insert_with(Default::default);
        hints.for_nodes = Some(nodes.iter().map(|n| discovery::ForNode { name: n.to_string() }).collect());
        self
    }
}

/// A slice named `<service>-<n>` in `ns`, of the family of its first endpoint (IPv4 if
/// empty), with ports given as (name, port, protocol).
pub fn slice(
    ns: &str,
    service: &str,
    n: u32,
    ports: &[(&str, i32, &str)],
    endpoints: &[Ep],
) -> discovery::EndpointSlice {
    let family = match endpoints.first().map(|e| e.0.addresses[0].contains(':')) {
        Some(true) => "IPv6",
        _ => "IPv4",
    };
    let labels = [("kubernetes.io/service-name".to_string(), service.to_string())].into();
    #[allow(clippy::needless_update)]
    discovery::EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(format!("{service}-{n}")),
            labels: Some(labels),
            ..Default::default()
        },
        address_type: family.into(),
        endpoints: endpoints.iter().map(|e| e.0.clone()).collect::<Vec<_>>().into(),
        ports: Some(
            ports
                .iter()
                .map(|(name, port, proto)| discovery::EndpointPort {
                    name: Some(name.to_string()),
                    port: Some(*port),
                    protocol: Some(proto.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

// === Flow tables ===

/// One row of an upstream packet-flow table.
pub struct Flow {
    pub name: &'static str,
    pub src: &'static str,
    pub proto: Protocol,
    pub dst: &'static str,
    pub port: u16,
    /// Comma-separated endpoints, `REJECT`, `DROP`, or empty for no match.
    pub output: &'static str,
    pub masq: bool,
}

/// A TCP flow row.
pub const fn tcp(
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    port: u16,
    output: &'static str,
    masq: bool,
) -> Flow {
    Flow { name, src, proto: Protocol::Tcp, dst, port, output, masq }
}

/// Classifies a source the way upstream's fixture does: node IPs are the node, the pod
/// CIDRs are pods, everything else is external.
pub fn source(src: IpAddr) -> Source {
    if NODE_IPS.iter().any(|n| ip(n) == src) {
        Source::node(src)
    } else if net("10.0.0.0/8").contains(&src) || net("fd00:10::/64").contains(&src) {
        Source::pod(src)
    } else {
        Source::external(src)
    }
}

pub fn expected_verdict(output: &str) -> Verdict {
    match output {
        "" => Verdict::NoMatch,
        "REJECT" => Verdict::Reject,
        "DROP" => Verdict::Drop,
        eps => Verdict::Endpoints(eps.split(", ").map(|e| e.parse::<SocketAddr>().unwrap()).collect::<BTreeSet<_>>()),
    }
}

/// Runs every flow and reports all mismatches at once.
#[track_caller]
pub fn run_flows(desired: &Desired, flows: &[Flow]) {
    let mut failures = Vec::new();
    for f in flows {
        let packet = Packet { source: source(ip(f.src)), protocol: f.proto, destination: ip(f.dst), port: f.port };
        let got = trace(desired, &packet);
        let want = expected_verdict(f.output);
        if got.verdict != want || got.masquerade != f.masq {
            failures.push(format!(
                "{}: {} -> {}:{}/{}: got {:?} masq={}, want {:?} masq={}",
                f.name,
                f.src,
                f.dst,
                f.port,
                f.proto,
                got.verdict.to_string(),
                got.masquerade,
                f.output,
                f.masq
            ));
        }
    }
    assert!(failures.is_empty(), "{} flow(s) failed:\n{}", failures.len(), failures.join("\n"));
}
