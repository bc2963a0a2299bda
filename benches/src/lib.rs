//! Synthetic clusters for kproxy's benches: N Services × E endpoints, shaped like a real
//! cluster (namespaces, one TCP port, endpoints spread over nodes, some local).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use proxy_core::model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, ObjectRef, Protocol, Service, ServicePort, ServiceType,
};
use proxy_core::{Engine, Event, LocalDetectMode, NodeContext, Snapshot};

/// This node's name in the synthetic clusters.
pub const NODE: &str = "node-0";

/// The node context the benches use: a pod-CIDR detector and NodePorts on one address.
pub fn node_context() -> NodeContext {
    let mut node = NodeContext::new(NODE);
    node.node_ips = vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))];
    node.nodeport_addresses = vec!["192.168.0.2/32".parse().unwrap()];
    node.local_detect = LocalDetectMode::ClusterCidr(vec!["10.0.0.0/8".parse().unwrap()]);
    node.service_cidrs = vec!["172.16.0.0/12".parse().unwrap()];
    node
}

fn service_ref(i: usize) -> ObjectRef {
    ObjectRef::new(format!("ns-{}", i % 100), format!("svc-{i}"))
}

/// Service `i`: ClusterIP 172.16.0.0/12 + i, one TCP port 80; every tenth is a NodePort.
pub fn service(i: usize) -> Service {
    service_with_ports(i, 1)
}

/// The name of a Service's port `k`: `http`, then `http-1`, `http-2`, …
fn port_name(k: usize) -> Arc<str> {
    if k == 0 { Arc::from("http") } else { Arc::from(format!("http-{k}")) }
}

/// Service `i` with `ports` TCP ports (80, 81, …, to target ports 8080, 8081, …): a
/// Service with many ports, as cilium#32391's.
pub fn service_with_ports(i: usize, ports: usize) -> Service {
    let ip = u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i as u32;
    let node_port = |k: usize| i.is_multiple_of(10).then(|| 30000 + ((i / 10 * ports + k) % 2768) as u16);
    Service {
        kind: if i.is_multiple_of(10) { ServiceType::NodePort } else { ServiceType::ClusterIp },
        ports: (0..ports)
            .map(|k| ServicePort {
                name: port_name(k),
                protocol: Protocol::Tcp,
                port: 80 + k as u16,
                node_port: node_port(k),
                target_port: None,
            })
            .collect(),
        ..Service::new(service_ref(i), vec![IpAddr::V4(Ipv4Addr::from(ip))])
    }
}

/// The EndpointSlices of service `i` with `endpoints` endpoints (100 per slice, as the
/// EndpointSlice controller does). `generation` shifts the first endpoint's address, so
/// alternating generations is a one-endpoint change.
pub fn slices(i: usize, endpoints: usize, generation: u32) -> Vec<EndpointSlice> {
    slices_with_ports(i, endpoints, generation, 1)
}

/// The EndpointSlices of service `i` with `ports` ports (see [`service_with_ports`]).
pub fn slices_with_ports(i: usize, endpoints: usize, generation: u32, ports: usize) -> Vec<EndpointSlice> {
    let svc = service_ref(i);
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i as u32) * 64;
    let all: Vec<Endpoint> = (0..endpoints)
        .map(|e| {
            let shift = if e == 0 { generation * 50 } else { 0 };
            Endpoint {
                ip: IpAddr::V4(Ipv4Addr::from(base + e as u32 + shift)),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some(Arc::from(format!("node-{}", (i + e) % 50))),
                zone: None,
                zone_hints: Default::default(),
                node_hints: Default::default(),
            }
        })
        .collect();
    all.chunks(100)
        .enumerate()
        .map(|(n, chunk)| EndpointSlice {
            id: ObjectRef::new(&*svc.namespace, format!("{}-{n}", svc.name)),
            service: svc.clone(),
            family: IpFamily::V4,
            ports: (0..ports)
                .map(|k| EndpointPort { name: port_name(k), protocol: Protocol::Tcp, port: 8080 + k as u16 })
                .collect(),
            endpoints: chunk.to_vec(),
            trigger_time: None,
        })
        .collect()
}

/// A snapshot of `services` Services with `endpoints` endpoints each.
pub fn snapshot(services: usize, endpoints: usize) -> Snapshot {
    let mut s = Snapshot::new();
    for i in 0..services {
        s.apply(Event::ServiceApplied(service(i)));
        for slice in slices(i, endpoints, 0) {
            s.apply(Event::SliceApplied(slice));
        }
    }
    s.take_pending();
    s
}

/// An engine holding the same cluster, after its first (full) plan.
pub fn engine(services: usize, endpoints: usize) -> Engine {
    engine_on(node_context(), services, endpoints)
}

/// The same cluster on a node of one's own (say, with Maglev on by default).
pub fn engine_on(node: NodeContext, services: usize, endpoints: usize) -> Engine {
    engine_with_ports(node, services, endpoints, 1)
}

/// The same cluster with `ports` ports per Service.
pub fn engine_with_ports(node: NodeContext, services: usize, endpoints: usize, ports: usize) -> Engine {
    let mut engine = Engine::new(node);
    for i in 0..services {
        engine.apply(Event::ServiceApplied(service_with_ports(i, ports)));
        for slice in slices_with_ports(i, endpoints, 0, ports) {
            engine.apply(Event::SliceApplied(slice));
        }
    }
    engine.plan();
    engine
}
