//! This node, as seen from the network namespace kproxy runs in: its name, its addresses
//! and its node IPs, combined with the configuration into a [`NodeContext`].

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Result;
use proxy_core::manifest::Object;
use proxy_core::model::Node;
use proxy_core::{IpFamily, LocalDetectMode, NodeContext, translate};

use crate::config::{Config, DetectLocal};

/// The host name, as kube-proxy uses it when no `--hostname-override` is given.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

/// One address of a local interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    /// The interface.
    pub interface: String,
    /// The address.
    pub ip: IpAddr,
}

/// Every address of every interface in this network namespace (`getifaddrs`).
pub fn interface_addrs() -> Vec<InterfaceAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            let ip = if let Some(sin) = addr.as_sockaddr_in() {
                IpAddr::V4(sin.ip())
            } else {
                IpAddr::V6(addr.as_sockaddr_in6()?.ip())
            };
            Some(InterfaceAddr { interface: ifa.interface_name, ip })
        })
        .collect()
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// This node's IP of each family, as kube-proxy v1.37 detects it (`detectNodeIPs`): the
/// Node's first address of each family, `bindAddress` (when not unspecified) over its
/// family's, and nothing where kube-proxy falls back to loopback: a family the Node has
/// no address of (or no Node at all). `primary` NodePorts then cover no address of that
/// family, so NodePorts are accepted on all of them, as upstream.
pub fn detected_ips(node: Option<&Node>, bind_address: Option<IpAddr>) -> Vec<IpAddr> {
    IpFamily::ALL
        .iter()
        .filter_map(|family| {
            let of_family = |ip: &IpAddr| IpFamily::of(ip) == *family;
            bind_address.filter(of_family).or_else(|| node.and_then(|n| n.addresses.iter().copied().find(of_family)))
        })
        .collect()
}

/// This node's context from the configuration and the Node and ServiceCIDRs among
/// `objects` (from manifests or the API): the one place a [`NodeContext`] is made.
pub fn context_of(config: &Config, objects: &[Object], problems: &mut Vec<String>) -> Result<NodeContext> {
    let name = node_name(config);
    let mut node_obj = None;
    let mut service_cidrs = Vec::new();
    for object in objects {
        match object {
            Object::Node(n) if n.metadata.name.as_deref() == Some(name.as_str()) => match translate::node(n) {
                Ok(t) => {
                    problems.extend(t.problems.iter().map(ToString::to_string));
                    node_obj = Some(t.value);
                }
                Err(e) => problems.push(format!("{e:?}")),
            },
            Object::ServiceCidr(c) => {
                let cidrs = c.spec.as_ref().and_then(|s| s.cidrs.as_ref()).into_iter().flatten();
                for cidr in cidrs {
                    match proxy_core::ip::parse_cidr_sloppy(cidr) {
                        Some(net) => service_cidrs.push(net),
                        None => problems.push(format!(
                            "ServiceCIDR {}: spec.cidrs: invalid CIDR {cidr:?}",
                            c.metadata.name.as_deref().unwrap_or("")
                        )),
                    }
                }
            }
            _ => {}
        }
    }
    context(config, node_obj.as_ref(), service_cidrs)
}

/// Whether this node may receive traffic: false while its Node object is being deleted
/// or carries the cluster autoscaler's deletion taint (kube-proxy's "node eligible").
pub fn node_eligible(config: &Config, objects: &[Object]) -> bool {
    let name = node_name(config);
    !objects.iter().any(|o| match o {
        Object::Node(n) if n.metadata.name.as_deref() == Some(name.as_str()) => {
            translate::node(n).is_ok_and(|t| t.value.being_deleted)
        }
        _ => false,
    })
}

/// Builds the node context from the configuration, this node's Node object (if the
/// manifests or the API have one) and the service CIDRs.
fn context(config: &Config, node: Option<&Node>, service_cidrs: Vec<ipnet::IpNet>) -> Result<NodeContext> {
    let name = node_name(config);
    let addrs = interface_addrs();
    let mut ctx = NodeContext::new(name);
    let primaries = detected_ips(node, config.bind_address);
    // Primary first, then every other local address (they are all `fib … type local`).
    let mut seen = BTreeSet::new();
    ctx.node_ips = primaries
        .iter()
        .copied()
        .chain(node.into_iter().flat_map(|n| n.addresses.iter().copied()))
        .chain(addrs.iter().map(|a| a.ip).filter(usable))
        .filter(|ip| seen.insert(*ip))
        .collect();
    // An empty list is every local address: IPVS mode's default, and where `primary`
    // found no node IP.
    ctx.nodeport_addresses = config.nodeport.expand(&primaries);
    ctx.local_detect = match &config.detect_local {
        DetectLocal::ClusterCidr if config.cluster_cidrs.is_empty() => LocalDetectMode::None,
        DetectLocal::ClusterCidr => LocalDetectMode::ClusterCidr(config.cluster_cidrs.clone()),
        DetectLocal::NodeCidr => LocalDetectMode::NodeCidr(Vec::new()),
        DetectLocal::BridgeInterface(b) => LocalDetectMode::BridgeInterface(b.clone()),
        DetectLocal::InterfaceNamePrefix(p) => LocalDetectMode::InterfaceNamePrefix(p.clone()),
    };
    ctx.masquerade_all = config.masquerade_all;
    ctx.maglev = config.maglev;
    ctx.service_cidrs = service_cidrs;
    if let Some(node) = node {
        ctx.update_from_node(node);
    }
    Ok(ctx)
}

/// This node's name: `--hostname-override`, else the host name, lower-cased as kube-proxy
/// does.
pub fn node_name(config: &Config) -> String {
    config.hostname_override.clone().unwrap_or_else(hostname).trim().to_lowercase()
}
