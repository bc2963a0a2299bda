//! What every target that reads Kubernetes objects does with them: ingest them as the
//! daemon does and compute the node's rules, so that an object that decodes but makes no
//! sense must still come out as a warning, never a panic.

use proxy_core::{Engine, Event, LocalDetectMode, NodeContext};

/// An engine for a dual-stack node with a pod-CIDR detector and Maglev on by default, so
/// that every code path of `compute` can be reached.
pub fn engine() -> Engine {
    let mut node = NodeContext::new("node-a");
    node.node_ips = vec!["192.168.0.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
    node.local_detect =
        LocalDetectMode::ClusterCidr(vec!["10.244.0.0/16".parse().unwrap(), "fd00:244::/48".parse().unwrap()]);
    node.maglev.by_default = true;
    Engine::new(node)
}

/// Applies the events and plans.
pub fn apply_and_plan(events: impl IntoIterator<Item = Event>) {
    let mut engine = engine();
    for event in events {
        engine.apply(event);
    }
    std::hint::black_box(engine.plan());
}
