//! Which UDP conntrack entries are stale after a sync (pure; the daemon does the netlink).
//!
//! UDP has no connection teardown, so a conntrack entry keeps sending a client's packets
//! to the endpoint chosen when the flow began, even after that endpoint is gone, and a
//! flow that began while a Service had no endpoints keeps bypassing DNAT after endpoints
//! appear (k#48370, k#139628). As upstream's reconciler does, an entry is stale when its
//! original destination is a UDP frontend (ClusterIP, external IP, LB IP, or a NodePort)
//! and its reply does not come from a serving endpoint of that Service. Traffic policies,
//! topology and termination are deliberately ignored, so UDP flows behave like TCP ones:
//! an endpoint that still serves keeps its flows.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::desired::Desired;
use crate::model::{IpFamily, Protocol};

/// A UDP conntrack entry, reduced to what staleness depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpFlow {
    /// The original direction's source.
    pub orig_src: SocketAddr,
    /// The original direction's destination (what the client sent to).
    pub orig_dst: SocketAddr,
    /// The reply direction's source address: the endpoint the flow was DNATed to, or the
    /// original destination if it was not DNATed.
    pub reply_src: IpAddr,
}

/// The serving endpoints behind every UDP frontend of one family.
#[derive(Clone, Debug, Default)]
pub struct UdpFrontends<'a> {
    addresses: HashMap<SocketAddr, &'a [IpAddr]>,
    node_ports: HashMap<u16, &'a [IpAddr]>,
}

impl<'a> UdpFrontends<'a> {
    /// Collects the UDP frontends of `family` from the desired rules.
    pub fn new(desired: &'a Desired, family: IpFamily) -> UdpFrontends<'a> {
        let mut out = UdpFrontends::default();
        for rules in desired.family(family).service_ports.values().filter(|r| r.name.protocol == Protocol::Udp) {
            let serving = rules.serving.as_slice();
            for (_, ip) in rules.frontends() {
                out.addresses.insert(SocketAddr::new(ip, rules.port), serving);
            }
            if let Some(np) = rules.node_port {
                out.node_ports.insert(np, serving);
            }
        }
        out
    }

    /// Whether there is no UDP frontend at all (nothing to clean).
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.node_ports.is_empty()
    }

    /// Whether `flow` is stale. `node_ips` are the node's addresses: a flow to one of them
    /// on a NodePort belongs to that NodePort.
    pub fn is_stale(&self, flow: &UdpFlow, node_ips: &[IpAddr]) -> bool {
        let serving = self.addresses.get(&flow.orig_dst).or_else(|| {
            let to_node = node_ips.contains(&flow.orig_dst.ip()) || flow.orig_dst.ip().is_loopback();
            if to_node { self.node_ports.get(&flow.orig_dst.port()) } else { None }
        });
        serving.is_some_and(|eps| !eps.contains(&flow.reply_src))
    }
}
