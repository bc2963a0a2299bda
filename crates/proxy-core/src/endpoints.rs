//! Endpoint selection: readiness, the serving-terminating fallback, topology hints and
//! traffic policy — upstream's `CategorizeEndpoints` (`pkg/proxy/topology.go`).

use std::net::SocketAddr;

use crate::desired::Target;
use crate::model::Endpoint;

/// An endpoint with its resolved port and locality.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// The port on the endpoint for this service port.
    pub port: u16,
    /// Whether the endpoint runs on this node.
    pub local: bool,
}

impl Candidate<'_> {
    fn target(&self) -> Target {
        Target { addr: SocketAddr::new(self.endpoint.ip, self.port), local: self.local }
    }

    fn serving_terminating(&self) -> bool {
        self.endpoint.serving && self.endpoint.terminating
    }
}

/// Which endpoint lists a service port needs, from its traffic policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uses {
    /// Cluster policy is used: internal policy Cluster, or any external frontend (eTP=Local
    /// still needs Cluster endpoints for the pod and node short-circuit).
    pub cluster: bool,
    /// Local policy is used: internal policy Local, or external policy Local on an
    /// externally accessible port.
    pub local: bool,
}

/// The result of [`categorize`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for Cluster policy.
    pub cluster: Vec<Target>,
    /// Endpoints for Local policy.
    pub local: Vec<Target>,
    /// Whether any usable (ready, or serving and terminating) endpoint exists anywhere.
    pub has_any: bool,
}

/// The topology mode picked from the hints of ready endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Use every endpoint.
    Any,
    /// Use endpoints hinted for this node.
    SameNode,
    /// Use endpoints hinted for this zone.
    SameZone,
}

/// Hints are used only when *every* ready endpoint carries them and at least one matches
/// this node (node hints, checked first) or zone; otherwise they are ignored.
fn topology(candidates: &[Candidate<'_>], node_name: &str, zone: Option<&str>) -> Topology {
    let mut all_node_hints = true;
    let mut node_match = false;
    let mut all_zone_hints = true;
    let mut zone_match = false;
    for c in candidates.iter().filter(|c| c.endpoint.ready) {
        let ep = c.endpoint;
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.contains(node_name) {
            node_match = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| ep.zone_hints.contains(z)) {
            zone_match = true;
        }
    }
    if all_node_hints && node_match {
        Topology::SameNode
    } else if all_zone_hints && zone_match {
        Topology::SameZone
    } else {
        Topology::Any
    }
}

fn allowed(c: &Candidate<'_>, mode: Topology, node_name: &str, zone: Option<&str>) -> bool {
    match mode {
        Topology::Any => true,
        Topology::SameNode => c.endpoint.node_hints.contains(node_name),
        Topology::SameZone => zone.is_some_and(|z| c.endpoint.zone_hints.contains(z)),
    }
}

fn targets<'a>(candidates: &'a [Candidate<'a>], keep: impl Fn(&Candidate<'a>) -> bool) -> Vec<Target> {
    let mut out: Vec<Target> = candidates.iter().filter(|c| keep(c)).map(Candidate::target).collect();
    out.sort_unstable();
    out
}

/// Splits a service port's endpoints into the Cluster and Local policy lists.
///
/// Ready endpoints are preferred; only when none exist are serving-and-terminating ones
/// used, decided separately for Cluster (cluster-wide) and Local (this node) traffic.
/// Endpoints that are not serving are never used. Topology hints narrow the Cluster list.
pub fn categorize(candidates: &[Candidate<'_>], uses: Uses, node_name: &str, zone: Option<&str>) -> Categorized {
    let mut out = Categorized::default();
    if uses.cluster {
        let mode = topology(candidates, node_name, zone);
        out.cluster = targets(candidates, |c| c.endpoint.ready && allowed(c, mode, node_name, zone));
        if out.cluster.is_empty() {
            // No ready endpoint anywhere (topology falls back to `Any` in that case).
            out.cluster = targets(candidates, |c| c.serving_terminating() && allowed(c, mode, node_name, zone));
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses.local {
        return out;
    }
    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for c in candidates {
        if c.endpoint.ready {
            out.has_any = true;
            local_ready |= c.local;
        } else if c.serving_terminating() {
            out.has_any = true;
            local_serving_terminating |= c.local;
        }
    }
    if local_ready {
        out.local = targets(candidates, |c| c.local && c.endpoint.ready);
    } else if local_serving_terminating {
        out.local = targets(candidates, |c| c.local && c.serving_terminating());
    }
    out
}
