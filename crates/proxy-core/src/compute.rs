//! `compute(&Snapshot, &NodeContext) -> Desired`: kube-proxy's decisions as a pure function.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::context::{FamilyContext, MaglevSettings, NodeContext};
use crate::desired::{Desired, Firewall, Maglev, Policy, ServicePortRules, SharedTable, Target};
use crate::endpoints::{Candidate, Uses, categorize};
use crate::maglev;
use crate::model::{IpFamily, IpMode, LoadBalancing, Service, ServicePort, ServicePortName, TrafficPolicy};
use crate::snapshot::{Slices, Snapshot};

/// Computes the desired rules of every Service in the snapshot for this node.
///
/// Pure: the same snapshot and context always give the same result.
pub fn compute(snapshot: &Snapshot, node: &NodeContext) -> Desired {
    let mut desired = Desired::empty(node.family(IpFamily::V4), node.family(IpFamily::V6));
    let local_node = snapshot.shared_name(&node.node_name);
    let contexts = IpFamily::ALL.map(|family| desired.family(family).context.clone());
    let mut ports: [Vec<ServicePortRules>; 2] = Default::default();
    let mut scratch = Vec::new();
    for (svc, slices) in snapshot.services_with_slices() {
        for context in &contexts {
            service_ports(svc, slices, local_node, node, context, &mut scratch, &mut ports[context.family.index()]);
        }
    }
    // Services come in name order and each one's ports are sorted, so the entries arrive
    // sorted and each map is bulk-built rather than inserted into one by one.
    for (family, ports) in IpFamily::ALL.into_iter().zip(ports) {
        desired.family_mut(family).service_ports = ports.into_iter().map(|r| (r.name.clone(), Arc::new(r))).collect();
    }
    desired
}

/// Computes the rules of one Service's ports in one family (none if the Service has no
/// ClusterIP of that family).
pub fn compute_service(
    snapshot: &Snapshot,
    svc: &Service,
    node: &NodeContext,
    context: &FamilyContext,
) -> Vec<ServicePortRules> {
    let mut out = Vec::new();
    let local_node = snapshot.shared_name(&node.node_name);
    service_ports(svc, snapshot.slices(&svc.id), local_node, node, context, &mut Vec::new(), &mut out);
    out
}

/// Appends the rules of one Service's ports in one family to `out`, sorted by port name
/// and protocol. `scratch` is a reusable buffer for endpoint candidates.
fn service_ports<'a>(
    svc: &Service,
    slices: Option<&'a Slices>,
    local_node: Option<&Arc<str>>,
    node: &NodeContext,
    context: &FamilyContext,
    scratch: &mut Vec<Candidate<'a>>,
    out: &mut Vec<ServicePortRules>,
) {
    let family = context.family;
    let Some(cluster_ip) = svc.cluster_ip(family) else { return };
    let of_family =
        |ips: &[IpAddr]| -> Vec<IpAddr> { ips.iter().copied().filter(|ip| IpFamily::of(ip) == family).collect() };
    let external_ips = of_family(&svc.external_ips);
    let lb_ips: Vec<IpAddr> = svc
        .load_balancer_ingress
        .iter()
        .filter(|ing| ing.ip_mode == IpMode::Vip && IpFamily::of(&ing.ip) == family)
        .map(|ing| ing.ip)
        .collect();
    let source_ranges: Vec<IpNet> =
        svc.load_balancer_source_ranges.iter().copied().filter(|n| IpFamily::of_net(n) == family).collect();
    let firewall =
        (!lb_ips.is_empty() && !source_ranges.is_empty()).then(|| firewall(&source_ranges, &lb_ips, context));
    let external_policy_local = svc.externally_accessible() && svc.external_traffic_policy == TrafficPolicy::Local;
    let internal_policy_local = svc.internal_traffic_policy == TrafficPolicy::Local;

    let first = out.len();
    for port in &svc.ports {
        candidates(slices, port, family, local_node, scratch);
        let candidates = &scratch[..];
        let accessible = port.node_port.is_some() || !external_ips.is_empty() || !lb_ips.is_empty();
        let uses = Uses {
            cluster: !internal_policy_local || accessible,
            local: internal_policy_local || (external_policy_local && accessible),
        };
        let cat = categorize(candidates, uses, &node.node_name, node.zone.as_deref());
        let mut local_ready: Vec<IpAddr> =
            candidates.iter().filter(|c| c.local && c.endpoint.ready).map(|c| c.endpoint.ip).collect();
        local_ready.sort_unstable();
        local_ready.dedup();
        let mut serving: Vec<IpAddr> =
            candidates.iter().filter(|c| c.endpoint.serving).map(|c| c.endpoint.ip).collect();
        serving.sort_unstable();
        serving.dedup();
        let maglev = maglev_table(svc, &node.maglev, cat.cluster.len().max(cat.local.len()))
            .map(|table| Maglev { table, shared: [None, None] });
        out.push(ServicePortRules {
            name: ServicePortName { service: svc.id.clone(), port: port.name.clone(), protocol: port.protocol },
            cluster_ip,
            port: port.port,
            node_port: port.node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: lb_ips.clone(),
            firewall: firewall.clone(),
            affinity_timeout: svc.session_affinity,
            maglev,
            internal_policy_local,
            external_policy_local,
            has_endpoints: cat.has_any,
            cluster_endpoints: cat.cluster,
            local_endpoints: cat.local,
            health_check_node_port: svc.health_check_node_port.filter(|_| external_policy_local),
            local_ready,
            serving,
        });
    }
    out[first..].sort_unstable_by(|a, b| a.name.cmp(&b.name));
    share_maglev_tables(&mut out[first..]);
}

/// Builds each Maglev table of a Service once: per policy, the ports whose endpoints are
/// at the same distinct addresses, each port on one target port, share one table named
/// after the first of them (`ports` is sorted by name). A port whose endpoints are not
/// like that keeps a table of its own ([`Maglev::shared`] stays `None`).
fn share_maglev_tables(ports: &mut [ServicePortRules]) {
    for policy in Policy::ALL {
        let mut groups: Vec<(maglev::Table, Vec<IpAddr>, Vec<usize>)> = Vec::new();
        for (i, r) in ports.iter().enumerate() {
            let Some(m) = &r.maglev else { continue };
            let Some(addresses) = addresses(r.endpoints(policy)).filter(|_| one_target_port(r)) else { continue };
            match groups.iter_mut().find(|(t, a, _)| *t == m.table && *a == addresses) {
                Some((_, _, members)) => members.push(i),
                None => groups.push((m.table, addresses, vec![i])),
            }
        }
        for (table, addresses, members) in groups {
            let mut protocols: Vec<_> = members.iter().map(|i| ports[*i].name.protocol).collect();
            protocols.sort_unstable();
            protocols.dedup();
            let owner = ports[members[0]].name.clone();
            let shared = Arc::new(SharedTable::new(owner, policy, table, protocols, addresses));
            for i in members {
                if let Some(m) = &mut ports[i].maglev {
                    m.shared[policy.index()] = Some(shared.clone());
                }
            }
        }
    }
}

/// Whether every endpoint of a port, over both policies, is on one target port: the
/// backend then finds the port by frontend, and the table needs only addresses.
fn one_target_port(r: &ServicePortRules) -> bool {
    let mut ports = r.cluster_endpoints.iter().chain(&r.local_endpoints).map(|t| t.addr.port());
    let first = ports.next();
    ports.all(|p| Some(p) == first)
}

/// The addresses of an endpoint list, if there are any and none appears twice.
fn addresses(endpoints: &[Target]) -> Option<Vec<IpAddr>> {
    let addrs: Vec<SocketAddr> = endpoints.iter().map(|t| t.addr).collect();
    (!addrs.is_empty() && maglev::addresses_distinct(&addrs)).then(|| addrs.iter().map(|a| a.ip()).collect())
}

/// The Maglev table of a service port with `endpoints` endpoints, if it uses Maglev:
/// by annotation or the node's default, never under ClientIP affinity (the API's field
/// wins over kproxy's annotation). The size is the annotation's, or the size class for
/// the larger of the port's two endpoint lists.
fn maglev_table(svc: &Service, settings: &MaglevSettings, endpoints: usize) -> Option<maglev::Table> {
    if svc.session_affinity.is_some() {
        return None;
    }
    let (size, hash) = match svc.load_balancing {
        LoadBalancing::Random => return None,
        LoadBalancing::NodeDefault if !settings.by_default => return None,
        LoadBalancing::NodeDefault => (None, maglev::Hash::Source),
        LoadBalancing::Maglev { table_size, hash } => (table_size, hash),
    };
    let size = size.map_or_else(|| maglev::size_for(endpoints, settings.max_table_size), |s| s.get());
    Some(maglev::Table { size, hash })
}

/// The allowed sources of a source-range firewall. When a range contains the node's
/// primary IP, the LB IPs are allowed too: a VIP-like LB loops node traffic back with the
/// VIP as its source.
fn firewall(ranges: &[IpNet], lb_ips: &[IpAddr], context: &FamilyContext) -> Firewall {
    let mut allowed = ranges.to_vec();
    if context.primary_ip().is_some_and(|ip| ranges.iter().any(|r| r.contains(&ip))) {
        allowed.extend(lb_ips.iter().map(|ip| IpNet::from(*ip)));
    }
    Firewall { allowed }
}

/// The endpoints of one service port in one family, merged over the Service's slices in
/// slice-name order. As upstream, an `ip:port` that appears again in a later slice replaces
/// the earlier one unless the later one is terminating.
///
/// `local_node` is the snapshot's shared allocation of this node's name: endpoints whose
/// `nodeName` points to it are local (no string comparison per endpoint).
fn candidates<'a>(
    slices: Option<&'a Slices>,
    port: &ServicePort,
    family: IpFamily,
    local_node: Option<&Arc<str>>,
    out: &mut Vec<Candidate<'a>>,
) {
    out.clear();
    for slice in slices.into_iter().flat_map(|s| s.values()).filter(|s| s.family == family) {
        let Some(ep_port) = slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let local = matches!((&endpoint.node_name, local_node), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
            out.push(Candidate { endpoint, port: ep_port.port, local });
        }
    }
    // Duplicates are rare: sort (stably, keeping slice order among equals) only if needed.
    if out.len() > 1 && !out.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
        out.sort_by_key(key);
        let mut deduped: Vec<Candidate<'a>> = Vec::with_capacity(out.len());
        for c in out.drain(..) {
            match deduped.last_mut() {
                Some(last) if key(last) == key(&c) => {
                    if !c.endpoint.terminating {
                        *last = c;
                    }
                }
                _ => deduped.push(c),
            }
        }
        *out = deduped;
    }
}

fn key(c: &Candidate<'_>) -> (IpAddr, u16) {
    (c.endpoint.ip, c.port)
}
