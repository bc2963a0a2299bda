//! A packet tracer over [`Desired`]: where would this packet go?
//!
//! It walks the same decision order as kube-proxy's nftables rules — the source-range
//! firewall before DNAT, then service dispatch (ClusterIP, external and LB IPs, NodePorts),
//! then the no-endpoint and ClusterIP checks in the filter hooks — and explores every load
//! balancing branch, so the answer is the *set* of endpoints the packet may reach. Tests
//! assert through it; `kproxy trace` prints it. Backends' own tracers (over rendered
//! rules) must agree with it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::context::{FamilyContext, LocalDetector};
use crate::desired::{Desired, NoEndpoints, Policy, Route, ServicePortRules};
use crate::model::{IpFamily, Protocol};

/// Where a packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A pod on this node (arrives on the pod bridge or a pod interface).
    Pod,
    /// The node itself (locally originated).
    Node,
    /// Anything else: another node, a client outside the cluster.
    External,
}

/// A packet's source: its address and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The source address.
    pub ip: IpAddr,
    /// Where it comes from.
    pub kind: SourceKind,
}

impl Source {
    /// A pod on this node.
    pub fn pod(ip: IpAddr) -> Source {
        Source { ip, kind: SourceKind::Pod }
    }

    /// The node itself.
    pub fn node(ip: IpAddr) -> Source {
        Source { ip, kind: SourceKind::Node }
    }

    /// A host outside this node.
    pub fn external(ip: IpAddr) -> Source {
        Source { ip, kind: SourceKind::External }
    }
}

/// A packet to trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The source.
    pub source: Source,
    /// The protocol.
    pub protocol: Protocol,
    /// The destination address.
    pub destination: IpAddr,
    /// The destination port.
    pub port: u16,
}

/// What happens to a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// DNATed to one of these endpoints (exactly one under Maglev hashing of the source
    /// address: the one this client gets).
    Endpoints(BTreeSet<SocketAddr>),
    /// Rejected (ICMP port unreachable).
    Reject,
    /// Dropped.
    Drop,
    /// No rule matches; the packet passes untouched.
    NoMatch,
}

/// The result of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// What happens to the packet.
    pub verdict: Verdict,
    /// Whether it is masqueraded (on any possible path).
    pub masquerade: bool,
}

impl fmt::Display for Verdict {
    /// Formats as upstream's tracer does: `ip:port, ip:port`, `REJECT`, `DROP` or nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Endpoints(eps) => {
                for (i, ep) in eps.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{ep}")?;
                }
                Ok(())
            }
            Verdict::Reject => f.write_str("REJECT"),
            Verdict::Drop => f.write_str("DROP"),
            Verdict::NoMatch => Ok(()),
        }
    }
}

/// Traces a packet through the desired rules.
pub fn trace(desired: &Desired, packet: &Packet) -> Trace {
    let rules = desired.family(IpFamily::of(&packet.destination));
    let ctx = &rules.context;
    let verdict = |verdict| Trace { verdict, masquerade: false };
    if IpFamily::of(&packet.source.ip) != ctx.family {
        return verdict(Verdict::NoMatch);
    }
    let ports = || rules.service_ports.values().filter(|r| r.name.protocol == packet.protocol);
    let at_frontend =
        |r: &ServicePortRules| r.port == packet.port && r.frontends().any(|(_, ip)| ip == packet.destination);
    let at_node_port = |r: &ServicePortRules| r.node_port == Some(packet.port);
    let to_node_port = ctx.accepts_node_port(packet.destination);

    // filter-prerouting-pre-dnat / filter-output-pre-dnat: the source-range firewall.
    for r in ports().filter(|r| r.port == packet.port && r.load_balancer_ips.contains(&packet.destination)) {
        if let Some(fw) = &r.firewall
            && !fw.allowed.iter().any(|net| net.contains(&packet.source.ip))
        {
            return verdict(Verdict::Drop);
        }
    }

    // nat-prerouting / nat-output: service dispatch.
    let mut walk = Walk { ctx, packet, masquerade: false, endpoints: BTreeSet::new() };
    if let Some(r) = ports().find(|r| at_frontend(r)) {
        if packet.destination == r.cluster_ip {
            if let Route::Endpoints(policy) = r.internal_route() {
                walk.policy_chain(r, policy);
            }
        } else if r.has_endpoints {
            walk.external_chain(r);
        }
    } else if to_node_port && let Some(r) = ports().find(|r| at_node_port(r) && r.has_endpoints) {
        walk.external_chain(r);
    }
    if !walk.endpoints.is_empty() {
        return Trace { verdict: Verdict::Endpoints(walk.endpoints), masquerade: walk.masquerade };
    }
    let masquerade = walk.masquerade;
    let no_endpoints = |v: NoEndpoints| Trace {
        verdict: match v {
            NoEndpoints::Reject => Verdict::Reject,
            NoEndpoints::Drop => Verdict::Drop,
        },
        masquerade,
    };

    // filter-forward / filter-input / filter-output: service-endpoints-check.
    if let Some(r) = ports().find(|r| at_frontend(r)) {
        let v = if packet.destination == r.cluster_ip {
            match r.internal_route() {
                Route::NoEndpoints(v) => Some(v),
                Route::Endpoints(_) => None,
            }
        } else {
            r.external_verdict()
        };
        if let Some(v) = v {
            return no_endpoints(v);
        }
    }
    // filter-input: nodeport-endpoints-check.
    if to_node_port && let Some(v) = ports().find(|r| at_node_port(r)).and_then(|r| r.external_verdict()) {
        return no_endpoints(v);
    }
    // filter-forward / filter-output: cluster-ips-check (not for local destinations).
    if !ctx.is_local_address(packet.destination) {
        if rules.service_ports.values().any(|r| r.cluster_ip == packet.destination) {
            return Trace { verdict: Verdict::Reject, masquerade };
        }
        if ctx.service_cidrs.iter().any(|net| net.contains(&packet.destination)) {
            return Trace { verdict: Verdict::Drop, masquerade };
        }
    }
    Trace { verdict: Verdict::NoMatch, masquerade }
}

/// The state of one walk through the NAT chains.
struct Walk<'a> {
    ctx: &'a FamilyContext,
    packet: &'a Packet,
    masquerade: bool,
    endpoints: BTreeSet<SocketAddr>,
}

impl Walk<'_> {
    /// Whether the local-traffic detector classifies the source as a local pod.
    fn source_is_local_pod(&self) -> bool {
        let src = self.packet.source;
        match &self.ctx.local_detector {
            LocalDetector::Cidrs(nets) => nets.iter().any(|n| n.contains(&src.ip)),
            LocalDetector::Bridge(_) | LocalDetector::InterfacePrefix(_) => src.kind == SourceKind::Pod,
            LocalDetector::None => false,
        }
    }

    /// `fib saddr type local`.
    fn source_is_node(&self) -> bool {
        self.packet.source.kind == SourceKind::Node || self.ctx.is_local_address(self.packet.source.ip)
    }

    /// The `external-…` chain: NodePort, external-IP and LB-IP traffic.
    fn external_chain(&mut self, r: &ServicePortRules) {
        if !r.external_policy_local {
            // Cluster policy may send it to another node: always masquerade.
            self.masquerade = true;
            self.policy_chain(r, Policy::Cluster);
            return;
        }
        if self.ctx.local_detector.is_implemented() && self.source_is_local_pod() {
            // Pod traffic short-circuits to Cluster policy, as if it had gone out to the
            // load balancer and come back.
            self.policy_chain(r, Policy::Cluster);
        } else if self.source_is_node() {
            // The node's own traffic: its source would be a local address, so masquerade.
            self.masquerade = true;
            self.policy_chain(r, Policy::Cluster);
        } else if r.has_external_endpoints() {
            self.policy_chain(r, Policy::Local);
        }
    }

    /// The `service-…` or `local-…` chain and the endpoint chains below it.
    fn policy_chain(&mut self, r: &ServicePortRules, policy: Policy) {
        if self.packet.destination == r.cluster_ip {
            let off_cluster = self.ctx.local_detector.is_implemented() && !self.source_is_local_pod();
            if self.ctx.masquerade_all || off_cluster {
                self.masquerade = true;
            }
        }
        let eps = r.endpoints(policy);
        // Hashing the connection needs its source port, which a traced packet does not
        // have: every endpoint is possible then.
        let picked = r
            .maglev
            .as_ref()
            .filter(|m| m.table.hash == crate::maglev::Hash::Source)
            .and_then(|m| maglev_pick(eps, m.table.size, self.ctx.maglev_seed, self.packet.source.ip));
        for ep in eps.iter().filter(|ep| picked.is_none_or(|p| p == ep.addr)) {
            // Hairpin: an endpoint reaching itself through the Service.
            if ep.addr.ip() == self.packet.source.ip {
                self.masquerade = true;
            }
            self.endpoints.insert(ep.addr);
        }
    }
}

/// The endpoint a Maglev service port gives this client: the owner of the slot the
/// kernel's `jhash` picks (see [`crate::maglev`]); `None` without endpoints.
fn maglev_pick(eps: &[crate::desired::Target], size: u32, seed: u32, client: IpAddr) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = eps.iter().map(|ep| ep.addr).collect();
    let table = crate::maglev::table(&addrs, size);
    table.get(crate::maglev::slot(client, size, seed) as usize).map(|owner| addrs[*owner as usize])
}
