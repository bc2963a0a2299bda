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
//!
//! A frontend that is gone (its Service deleted, or the port, IP or NodePort changed) has
//! no endpoints left to compare with; upstream leaves its DNATed flows going to the old
//! endpoint until they time out (k#141371). Here such a flow is stale too: a flow to a
//! frontend of [`GoneFrontends`] (collected from the changes since the last cleanup) that
//! was DNATed (its reply comes from elsewhere), unless a current Service has that frontend.
//! Flows that were never DNATed are left alone.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::desired::Desired;
use crate::diff::FamilyChanges;
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

/// UDP frontends of service ports that were removed or changed: where DNATed flows may
/// still point at an old endpoint. Collected from each sync's changes until a cleanup
/// has run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoneFrontends {
    addresses: HashSet<SocketAddr>,
    node_ports: HashSet<u16>,
}

impl GoneFrontends {
    /// Adds the UDP frontends that the changes of one family removed (every frontend of a
    /// changed port's old rules; those still in use are told apart at cleanup).
    pub fn add(&mut self, changes: &FamilyChanges) {
        let old = changes.service_ports.values().filter_map(|c| c.old_rules());
        for rules in old.filter(|r| r.name.protocol == Protocol::Udp) {
            self.addresses.extend(rules.frontends().map(|(_, ip)| SocketAddr::new(ip, rules.port)));
            self.node_ports.extend(rules.node_port);
        }
    }

    /// Whether nothing is gone.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.node_ports.is_empty()
    }
}

/// The serving endpoints behind every UDP frontend of one family.
#[derive(Clone, Debug, Default)]
pub struct UdpFrontends<'a> {
    addresses: HashMap<SocketAddr, &'a [IpAddr]>,
    node_ports: HashMap<u16, &'a [IpAddr]>,
    gone: Option<&'a GoneFrontends>,
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

    /// Also treats as stale the DNATed flows to these frontends that no current Service has.
    pub fn with_gone(self, gone: &'a GoneFrontends) -> UdpFrontends<'a> {
        UdpFrontends { gone: Some(gone), ..self }
    }

    /// Whether there is no UDP frontend at all, current or gone (nothing to clean).
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.node_ports.is_empty() && self.gone.is_none_or(GoneFrontends::is_empty)
    }

    /// Whether `flow` is stale. `node_ips` are the node's addresses: a flow to one of them
    /// on a NodePort belongs to that NodePort. Loopback is not one of them: unlike
    /// iptables mode's `route_localnet`, the nftables and IPVS layouts never DNAT it, so a
    /// flow to `127.0.0.1:<nodePort>` is the localhost relay's (or a local server's), and
    /// deleting its entry at every sync would only churn conntrack.
    pub fn is_stale(&self, flow: &UdpFlow, node_ips: &[IpAddr]) -> bool {
        let to_node = node_ips.contains(&flow.orig_dst.ip()) && !flow.orig_dst.ip().is_loopback();
        let port = flow.orig_dst.port();
        let serving =
            self.addresses.get(&flow.orig_dst).or_else(|| if to_node { self.node_ports.get(&port) } else { None });
        match serving {
            Some(eps) => !eps.contains(&flow.reply_src),
            None => {
                let dnated = flow.reply_src != flow.orig_dst.ip();
                let gone = self
                    .gone
                    .is_some_and(|g| g.addresses.contains(&flow.orig_dst) || (to_node && g.node_ports.contains(&port)));
                dnated && gone
            }
        }
    }
}
