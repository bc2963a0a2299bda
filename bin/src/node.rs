//! This node, as seen from the network namespace kproxy runs in: its name, its addresses
//! and its primary IPs, combined with the configuration into a [`NodeContext`].

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Result;
use proxy_core::model::Node;
use proxy_core::{IpFamily, LocalDetectMode, NodeContext};

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

/// The interface of the default route of a family, from `/proc/net/route` and
/// `/proc/net/ipv6_route` (which show this network namespace's tables).
fn default_route_interface(family: IpFamily) -> Option<String> {
    match family {
        IpFamily::V4 => {
            let table = std::fs::read_to_string("/proc/net/route").ok()?;
            table.lines().skip(1).find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000").then(|| cols[0].to_string())
            })
        }
        IpFamily::V6 => {
            let table = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
            table.lines().find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() == 10 && cols[0].chars().all(|c| c == '0') && cols[1] == "00" && cols[9] != "lo")
                    .then(|| cols[9].to_string())
            })
        }
    }
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// The primary IP of a family: the Node's first address of that family, else the address
/// of the default route's interface, else the first usable interface address.
fn primary_ip(family: IpFamily, node: Option<&Node>, addrs: &[InterfaceAddr]) -> Option<IpAddr> {
    let of_family = |ip: &IpAddr| IpFamily::of(ip) == family;
    if let Some(ip) = node.and_then(|n| n.addresses.iter().copied().find(of_family)) {
        return Some(ip);
    }
    let usable_addrs = || addrs.iter().filter(|a| of_family(&a.ip) && usable(&a.ip));
    if let Some(iface) = default_route_interface(family)
        && let Some(a) = usable_addrs().find(|a| a.interface == iface)
    {
        return Some(a.ip);
    }
    usable_addrs().next().map(|a| a.ip)
}

/// Builds the node context from the configuration, this node's Node object (if the
/// manifests or the API have one) and the service CIDRs.
pub fn context(config: &Config, node: Option<&Node>, service_cidrs: Vec<ipnet::IpNet>) -> Result<NodeContext> {
    let name = node_name(config);
    let addrs = interface_addrs();
    let mut ctx = NodeContext::new(name);
    let primaries: Vec<IpAddr> = IpFamily::ALL.iter().filter_map(|f| primary_ip(*f, node, &addrs)).collect();
    // Primary first, then every other local address (they are all `fib … type local`).
    let mut seen = BTreeSet::new();
    ctx.node_ips = primaries
        .iter()
        .copied()
        .chain(node.into_iter().flat_map(|n| n.addresses.iter().copied()))
        .chain(addrs.iter().map(|a| a.ip).filter(usable))
        .filter(|ip| seen.insert(*ip))
        .collect();
    ctx.nodeport_addresses = match &config.nodeport_cidrs {
        Some(cidrs) => cidrs.clone(),
        // Upstream's defaults: every local address in IPVS mode, the primary IPs in
        // nftables mode.
        None if config.proxy_mode == "ipvs" => Vec::new(),
        None => primaries.iter().map(|ip| ipnet::IpNet::from(*ip)).collect(),
    };
    ctx.local_detect = match &config.detect_local {
        DetectLocal::ClusterCidr if config.cluster_cidrs.is_empty() => LocalDetectMode::None,
        DetectLocal::ClusterCidr => LocalDetectMode::ClusterCidr(config.cluster_cidrs.clone()),
        DetectLocal::NodeCidr => LocalDetectMode::NodeCidr(Vec::new()),
        DetectLocal::BridgeInterface(b) => LocalDetectMode::BridgeInterface(b.clone()),
        DetectLocal::InterfaceNamePrefix(p) => LocalDetectMode::InterfaceNamePrefix(p.clone()),
    };
    ctx.masquerade_all = config.masquerade_all;
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
