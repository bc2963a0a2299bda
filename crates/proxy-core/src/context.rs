//! The node context: everything about *this* node that shapes its rules.
//!
//! kube-proxy's node flags (`--hostname-override`, `--nodeport-addresses`,
//! `--cluster-cidr`, `--detect-local-mode`, `--masquerade-all`) and its Node object end up
//! here. Per IP family it resolves to a [`FamilyContext`], which is the part of the
//! context a backend renders (the local-traffic detector, the NodePort addresses, the
//! service CIDRs).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{IpFamily, Node};

/// How kube-proxy decides that a packet comes from a pod of this cluster
/// (`--detect-local-mode`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum LocalDetectMode {
    /// Sources inside `--cluster-cidr` are local (upstream's default when a CIDR is given).
    ClusterCidr(Vec<IpNet>),
    /// Sources inside this node's `spec.podCIDRs` are local.
    NodeCidr(Vec<IpNet>),
    /// Packets arriving on this bridge are local.
    BridgeInterface(String),
    /// Packets arriving on interfaces whose name starts with this prefix are local.
    InterfaceNamePrefix(String),
    /// No detection: ClusterIP traffic is never masqueraded for being off-cluster, and
    /// `externalTrafficPolicy: Local` has no pod short-circuit.
    #[default]
    None,
}

/// The local-traffic detector of one IP family, as a backend renders it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum LocalDetector {
    /// `ip saddr` within any of these networks is local.
    Cidrs(Vec<IpNet>),
    /// `iifname` equal to this bridge is local.
    Bridge(String),
    /// `iifname` starting with this prefix is local.
    InterfacePrefix(String),
    /// Not implemented for this family.
    #[default]
    None,
}

impl LocalDetector {
    /// Whether a detector exists (upstream's `IsImplemented`).
    pub fn is_implemented(&self) -> bool {
        !matches!(self, LocalDetector::None)
    }
}

/// Which destination addresses accept NodePort traffic, for one family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodePortIps {
    /// Every local address except loopback (`fib daddr type local`).
    All,
    /// Only these addresses (the `nodeport-ips` set).
    Only(Vec<IpAddr>),
}

/// The parts of the node context that concern one IP family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FamilyContext {
    /// The family.
    pub family: IpFamily,
    /// The node's addresses of this family, primary first.
    pub node_ips: Vec<IpAddr>,
    /// Where NodePorts are accepted.
    pub nodeport_ips: NodePortIps,
    /// The local-traffic detector.
    pub local_detector: LocalDetector,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// Service CIDRs of this family: traffic to unallocated IPs in them is dropped.
    pub service_cidrs: Vec<IpNet>,
    /// The seed of the kernel's `jhash` for Maglev Services: the same on every node.
    pub maglev_seed: u32,
}

impl FamilyContext {
    /// The node's primary IP of this family.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.node_ips.first().copied()
    }

    /// Whether `ip` is one of this node's addresses (nftables' `fib … type local`, which
    /// also covers loopback).
    pub fn is_local_address(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.node_ips.contains(&ip)
    }

    /// Whether NodePort traffic to `ip` is accepted.
    pub fn accepts_node_port(&self, ip: IpAddr) -> bool {
        match &self.nodeport_ips {
            NodePortIps::All => self.is_local_address(ip) && !ip.is_loopback(),
            NodePortIps::Only(ips) => ips.contains(&ip),
        }
    }
}

/// Everything about this node that shapes its rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeContext {
    /// This node's name (`--hostname-override`); endpoints with this `nodeName` are local.
    pub node_name: String,
    /// This node's zone, from its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// This node's addresses, primary first for each family.
    pub node_ips: Vec<IpAddr>,
    /// `--nodeport-addresses`, with upstream's `primary` already expanded to the primary
    /// node IPs. Empty means every local address.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--detect-local-mode` with its parameter.
    pub local_detect: LocalDetectMode,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// The cluster's Service CIDRs, when known.
    pub service_cidrs: Vec<IpNet>,
    /// Maglev consistent hashing: whether Services without the annotation use it, the
    /// table size cap and the hash seed.
    pub maglev: MaglevSettings,
}

/// The node's Maglev settings (kproxy's own flags and config fields). Every node of a
/// cluster must have the same, or clients land on different endpoints through different
/// nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevSettings {
    /// Services without the `kproxy.io/load-balancing` annotation use Maglev.
    pub by_default: bool,
    /// The largest table size picked by endpoint count.
    pub max_table_size: u32,
    /// The seed of the kernel's `jhash`.
    pub seed: u32,
}

impl Default for MaglevSettings {
    fn default() -> Self {
        MaglevSettings {
            by_default: false,
            max_table_size: crate::maglev::DEFAULT_MAX_SIZE,
            seed: crate::maglev::DEFAULT_SEED,
        }
    }
}

impl NodeContext {
    /// A context for `node_name` with upstream's defaults and nothing else known.
    pub fn new(node_name: impl Into<String>) -> NodeContext {
        NodeContext {
            node_name: node_name.into(),
            zone: None,
            node_ips: Vec::new(),
            nodeport_addresses: Vec::new(),
            local_detect: LocalDetectMode::None,
            masquerade_all: false,
            service_cidrs: Vec::new(),
            maglev: MaglevSettings::default(),
        }
    }

    /// Takes the zone from a Node object and, in `NodeCidr` mode, its pod CIDRs; node IPs
    /// are taken from the Node only when none were configured.
    pub fn update_from_node(&mut self, node: &Node) {
        self.zone = node.zone.clone();
        if let LocalDetectMode::NodeCidr(cidrs) = &mut self.local_detect {
            cidrs.clone_from(&node.pod_cidrs);
        }
        if self.node_ips.is_empty() {
            self.node_ips.clone_from(&node.addresses);
        }
    }

    /// The context of one family.
    pub fn family(&self, family: IpFamily) -> FamilyContext {
        let node_ips: Vec<IpAddr> = self.node_ips.iter().copied().filter(|ip| IpFamily::of(ip) == family).collect();
        let cidrs: Vec<IpNet> =
            self.nodeport_addresses.iter().copied().filter(|n| IpFamily::of_net(n) == family).collect();
        // Upstream: no CIDR of this family, or a zero CIDR, means "every local address".
        let nodeport_ips = if cidrs.is_empty() || cidrs.iter().any(|n| n.prefix_len() == 0) {
            NodePortIps::All
        } else {
            // nftables mode does not support NodePorts on loopback (KEP-3866).
            NodePortIps::Only(
                node_ips
                    .iter()
                    .copied()
                    .filter(|ip| !ip.is_loopback() && cidrs.iter().any(|n| n.contains(ip)))
                    .collect(),
            )
        };
        let in_family =
            |nets: &[IpNet]| -> Vec<IpNet> { nets.iter().copied().filter(|n| IpFamily::of_net(n) == family).collect() };
        let local_detector = match &self.local_detect {
            LocalDetectMode::ClusterCidr(nets) | LocalDetectMode::NodeCidr(nets) => {
                let nets = in_family(nets);
                if nets.is_empty() { LocalDetector::None } else { LocalDetector::Cidrs(nets) }
            }
            LocalDetectMode::BridgeInterface(name) => LocalDetector::Bridge(name.clone()),
            LocalDetectMode::InterfaceNamePrefix(prefix) => LocalDetector::InterfacePrefix(prefix.clone()),
            LocalDetectMode::None => LocalDetector::None,
        };
        FamilyContext {
            family,
            node_ips,
            nodeport_ips,
            local_detector,
            masquerade_all: self.masquerade_all,
            service_cidrs: in_family(&self.service_cidrs),
            maglev_seed: self.maglev.seed,
        }
    }
}
