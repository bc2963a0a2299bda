//! `Desired` → the virtual services and real servers IPVS should hold, and the addresses
//! bound to the dummy interface (pure).
//!
//! As upstream's IPVS mode: one virtual service per ClusterIP, external IP and
//! load-balancer IP, and one per NodePort address. The ClusterIP balances over the
//! endpoints its internal traffic policy picks; the other frontends over those of the
//! external policy. A frontend without usable endpoints keeps its virtual service with no
//! real servers; the nftables side rejects or drops its traffic first.

use std::collections::BTreeSet;
use std::net::IpAddr;

use proxy_core::{Desired, FamilyContext, NodePortIps, Route, ServicePortRules, Target};

use crate::kernel::{IpvsState, RealServer, ServiceEntry, ServiceKey, VirtualService};

/// The scheduler of virtual services when none is configured (upstream's default).
pub const DEFAULT_SCHEDULER: &str = "rr";
/// IPVS's Maglev scheduler, for Services with the `kproxy.io/load-balancing: maglev`
/// annotation (IPVS hashes with its own table; the cross-node promise holds among IPVS
/// nodes, not between IPVS and nftables nodes). `mh` hashes the source address; kproxy
/// sets none of its flags, so `kproxy.io/maglev-hash: connection` is not applied in IPVS
/// mode.
pub const MAGLEV_SCHEDULER: &str = "mh";

/// What IPVS and the dummy interface should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsDesired {
    /// The virtual services with their real servers.
    pub services: IpvsState,
    /// The addresses bound to the dummy interface: ClusterIPs, external IPs, LB IPs.
    pub bound: BTreeSet<IpAddr>,
    /// The addresses NodePort virtual services listen on.
    pub node_ports: BTreeSet<IpAddr>,
}

/// The addresses NodePort virtual services listen on: the node's addresses the context
/// accepts NodePorts on, except loopback and the Service IPs in `service_ips` (they are
/// local too, on the dummy interface, as upstream's `GetAllLocalAddressesExcept(kube-ipvs0)`
/// excludes them).
pub fn node_port_addresses(ctx: &FamilyContext, service_ips: &BTreeSet<IpAddr>) -> Vec<IpAddr> {
    let candidates = match &ctx.nodeport_ips {
        NodePortIps::All => &ctx.node_ips,
        NodePortIps::Only(ips) => ips,
    };
    candidates.iter().copied().filter(|ip| !ip.is_loopback() && !service_ips.contains(ip)).collect()
}

fn entry(scheduler: &str, r: &ServicePortRules, endpoints: &[Target]) -> ServiceEntry {
    ServiceEntry {
        // A Maglev Service gets IPVS's own Maglev scheduler, `mh`.
        service: VirtualService {
            scheduler: if r.maglev.is_some() { MAGLEV_SCHEDULER } else { scheduler }.to_string(),
            persistence: r.affinity_timeout,
        },
        servers: endpoints.iter().map(|t| (t.addr, RealServer::SERVING)).collect(),
    }
}

/// Renders the desired IPVS state. `on_dummy` holds the addresses the dummy interface
/// has now: never NodePort addresses, even if no Service claims them any more. When two
/// service ports claim one frontend, the first by name keeps it.
pub fn render(desired: &Desired, scheduler: &str, on_dummy: &BTreeSet<IpAddr>) -> IpvsDesired {
    let mut out = IpvsDesired::default();
    for family in desired.families() {
        for r in family.service_ports.values() {
            out.bound.insert(r.cluster_ip);
            out.bound.extend(r.external_ips.iter().chain(&r.load_balancer_ips));
        }
    }
    let service_ips: BTreeSet<IpAddr> = out.bound.union(on_dummy).copied().collect();
    for family in desired.families() {
        let node_ports = node_port_addresses(&family.context, &service_ips);
        out.node_ports.extend(&node_ports);
        for r in family.service_ports.values() {
            let proto = r.name.protocol;
            let internal: &[Target] = match r.internal_route() {
                Route::Endpoints(policy) => r.endpoints(policy),
                Route::NoEndpoints(_) => &[],
            };
            let external: &[Target] =
                if r.external_verdict().is_none() { r.endpoints(r.external_policy()) } else { &[] };
            let mut add = |addr: IpAddr, port: u16, endpoints: &[Target]| {
                let key = ServiceKey { protocol: proto, addr, port };
                out.services.entry(key).or_insert_with(|| entry(scheduler, r, endpoints));
            };
            add(r.cluster_ip, r.port, internal);
            for ip in r.external_ips.iter().chain(&r.load_balancer_ips) {
                add(*ip, r.port, external);
            }
            if let Some(np) = r.node_port {
                for ip in &node_ports {
                    add(*ip, np, external);
                }
            }
        }
    }
    out
}
