//! The desired rule set: plain data a backend renders.
//!
//! [`Desired`] holds, per IP family, the [`FamilyContext`] and one [`ServicePortRules`]
//! per service port. Each [`ServicePortRules`] carries the decisions upstream kube-proxy
//! makes inside `syncProxyRules` — which endpoints Cluster and Local policy use, whether
//! there are endpoints at all, whether traffic is masqueraded — so that every backend
//! renders the same semantics without re-deriving them. The derived questions a backend
//! asks ("does ClusterIP traffic get endpoints or a verdict?") are methods, so the data
//! holds each fact once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::context::FamilyContext;
use crate::model::{IpFamily, ObjectRef, ServicePortName};

/// One endpoint as a backend programs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// The endpoint's address and port.
    pub addr: SocketAddr,
    /// Whether the endpoint runs on this node.
    pub local: bool,
}

/// How a Maglev service port picks its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Maglev {
    /// The table's size and what the kernel hashes.
    pub table: crate::maglev::Table,
    /// Per policy (indexed by [`Policy::index`]): the table this port shares with the
    /// Service's other ports that reach the same pods. `None` when the policy has no
    /// endpoints, or when they are not one address each on one target port (a named
    /// target port that differs between pods): the port then needs a table of its own.
    pub shared: [Option<Arc<SharedTable>>; 2],
}

impl Maglev {
    /// The shared table of a policy, if any.
    pub fn shared(&self, policy: Policy) -> Option<&Arc<SharedTable>> {
        self.shared[policy.index()].as_ref()
    }
}

/// A Maglev lookup table over endpoint addresses, built once per Service and policy and
/// shared by every port of the Service whose endpoints are at the same addresses. A
/// backend programs it once however many ports and frontends use it: a table per port
/// multiplies memory and work by the port count (a Service with 400 ports once cost
/// Cilium minutes, cilium#32391).
#[derive(Clone, Debug)]
pub struct SharedTable {
    /// The first of the Service's ports (in name order) that uses it: a name that stays
    /// while endpoints come and go.
    pub owner: ServicePortName,
    /// The endpoint list it was built from.
    pub policy: Policy,
    /// Its size and hash.
    pub table: crate::maglev::Table,
    /// The protocols of the ports that use it, sorted.
    pub protocols: Vec<crate::Protocol>,
    /// The endpoint addresses, sorted and distinct.
    pub addresses: Vec<IpAddr>,
    /// For each slot, the index in `addresses` of the endpoint that owns it
    /// ([`crate::maglev::address_table`]).
    pub slots: Vec<u32>,
}

impl SharedTable {
    /// Builds the table of these addresses (sorted, distinct).
    pub fn new(
        owner: ServicePortName,
        policy: Policy,
        table: crate::maglev::Table,
        protocols: Vec<crate::Protocol>,
        addresses: Vec<IpAddr>,
    ) -> SharedTable {
        let slots = crate::maglev::address_table(&addresses, table.size);
        SharedTable { owner, policy, table, protocols, addresses, slots }
    }

    /// The address that owns each slot, in slot order.
    pub fn owners(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.slots.iter().map(|i| self.addresses[*i as usize])
    }

    /// Whether the kernel objects that hold it are defined alike (everything but the
    /// slots' owners), so that a change is a change of elements only.
    pub fn same_definition(&self, other: &SharedTable) -> bool {
        self.owner == other.owner
            && self.policy == other.policy
            && self.table == other.table
            && self.protocols == other.protocols
    }
}

/// The slots are a function of the rest: equality and hashing skip them.
impl PartialEq for SharedTable {
    fn eq(&self, other: &SharedTable) -> bool {
        self.same_definition(other) && self.addresses == other.addresses
    }
}

impl Eq for SharedTable {}

impl std::hash::Hash for SharedTable {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.owner, self.policy, self.table, &self.protocols, &self.addresses).hash(state);
    }
}

/// What happens to traffic for a frontend that has no usable endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoEndpoints {
    /// No endpoints anywhere: reject with ICMP port-unreachable.
    Reject,
    /// Endpoints exist, but none that this traffic policy may use (Local policy with no
    /// local endpoints): drop silently.
    Drop,
}

/// Which endpoint list a frontend's traffic is balanced over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// [`ServicePortRules::cluster_endpoints`].
    Cluster,
    /// [`ServicePortRules::local_endpoints`].
    Local,
}

impl Policy {
    /// Both policies.
    pub const ALL: [Policy; 2] = [Policy::Cluster, Policy::Local];

    /// 0 for Cluster, 1 for Local: an index into per-policy arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where a frontend's traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Balanced over an endpoint list.
    Endpoints(Policy),
    /// Rejected or dropped.
    NoEndpoints(NoEndpoints),
}

/// The `loadBalancerSourceRanges` firewall of a service port's load-balancer IPs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Firewall {
    /// Sources allowed in; everything else to the LB IPs is dropped before DNAT. Besides the
    /// ranges, holds the LB IPs themselves when a range contains the node's primary IP
    /// (a VIP-like LB loops node traffic back with the VIP as source).
    pub allowed: Vec<IpNet>,
}

/// Everything needed to program one service port in one IP family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePortRules {
    /// The service port.
    pub name: ServicePortName,
    /// The ClusterIP of this family.
    pub cluster_ip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// External IPs of this family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of this family (excluding `ipMode: Proxy`).
    pub load_balancer_ips: Vec<IpAddr>,
    /// The source-range firewall, when the Service has LB IPs and source ranges.
    pub firewall: Option<Firewall>,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Set when new connections pick their endpoint by Maglev hashing of the client
    /// ([`crate::maglev`]); `None` picks at random. Never set together with
    /// [`Self::affinity_timeout`]: `sessionAffinity: ClientIP` wins.
    pub maglev: Option<Maglev>,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `externalTrafficPolicy: Local` on an externally accessible Service.
    pub external_policy_local: bool,
    /// Whether any usable endpoint exists anywhere in the cluster.
    pub has_endpoints: bool,
    /// Endpoints for Cluster policy, sorted; empty when Cluster policy is unused.
    pub cluster_endpoints: Vec<Target>,
    /// Endpoints for Local policy, sorted; empty when Local policy is unused or no local
    /// endpoint exists.
    pub local_endpoints: Vec<Target>,
    /// The Service's health-check NodePort (external policy Local only).
    pub health_check_node_port: Option<u16>,
    /// Addresses of local endpoints that are ready (terminating ones excluded), sorted:
    /// what the health-check NodePort counts.
    pub local_ready: Vec<IpAddr>,
    /// Addresses of every serving endpoint, whatever the policies chose, sorted: UDP
    /// conntrack entries DNATed elsewhere are stale (see [`crate::conntrack`]).
    pub serving: Vec<IpAddr>,
}

impl ServicePortRules {
    /// Whether the port has NodePort, external-IP or LB-IP frontends.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }

    /// Whether ClusterIP traffic has endpoints to go to.
    pub fn has_internal_endpoints(&self) -> bool {
        if self.internal_policy_local { !self.local_endpoints.is_empty() } else { self.has_endpoints }
    }

    /// Whether traffic from outside the cluster to external frontends has endpoints.
    pub fn has_external_endpoints(&self) -> bool {
        if self.external_policy_local { !self.local_endpoints.is_empty() } else { self.has_endpoints }
    }

    /// Whether external frontends are captured into the external chain at all. It exists
    /// whenever any endpoint does, even if external traffic itself will be dropped,
    /// because pod and node traffic to external frontends short-circuits to Cluster policy.
    pub fn uses_external_chain(&self) -> bool {
        self.has_endpoints && self.externally_accessible()
    }

    /// The verdict for frontends without usable endpoints, given whether that kind of
    /// traffic has endpoints.
    fn verdict(&self, has: bool) -> Option<NoEndpoints> {
        match (has, self.has_endpoints) {
            (true, _) => None,
            (false, false) => Some(NoEndpoints::Reject),
            (false, true) => Some(NoEndpoints::Drop),
        }
    }

    /// The ClusterIP frontend's route.
    pub fn internal_route(&self) -> Route {
        match self.verdict(self.has_internal_endpoints()) {
            Some(v) => Route::NoEndpoints(v),
            None if self.internal_policy_local => Route::Endpoints(Policy::Local),
            None => Route::Endpoints(Policy::Cluster),
        }
    }

    /// The verdict for external traffic that the external chain does not DNAT.
    pub fn external_verdict(&self) -> Option<NoEndpoints> {
        self.verdict(self.has_external_endpoints())
    }

    /// The policy external traffic uses when it has endpoints.
    pub fn external_policy(&self) -> Policy {
        if self.external_policy_local { Policy::Local } else { Policy::Cluster }
    }

    /// The endpoints of a policy.
    pub fn endpoints(&self, policy: Policy) -> &[Target] {
        match policy {
            Policy::Cluster => &self.cluster_endpoints,
            Policy::Local => &self.local_endpoints,
        }
    }

    /// Every endpoint reachable from this node through any policy, sorted and deduplicated
    /// (the endpoint chains a backend needs).
    pub fn reachable_endpoints(&self) -> Vec<Target> {
        let mut all: Vec<Target> = self.cluster_endpoints.iter().chain(&self.local_endpoints).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Every address this port can be reached at besides NodePorts: the ClusterIP, then
    /// external IPs, then LB IPs.
    pub fn frontends(&self) -> impl Iterator<Item = (Frontend, IpAddr)> + '_ {
        std::iter::once((Frontend::ClusterIp, self.cluster_ip))
            .chain(self.external_ips.iter().map(|ip| (Frontend::ExternalIp, *ip)))
            .chain(self.load_balancer_ips.iter().map(|ip| (Frontend::LoadBalancer, *ip)))
    }
}

/// The kind of an address frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frontend {
    /// The ClusterIP.
    ClusterIp,
    /// An external IP.
    ExternalIp,
    /// A load-balancer ingress IP.
    LoadBalancer,
}

/// The desired rules of one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyRules {
    /// The node context of this family.
    pub context: Arc<FamilyContext>,
    /// Rules per service port, in name order.
    pub service_ports: BTreeMap<ServicePortName, Arc<ServicePortRules>>,
}

impl FamilyRules {
    /// The rules of every port of one Service.
    pub fn ports_of<'a>(&'a self, service: &'a ObjectRef) -> impl Iterator<Item = &'a Arc<ServicePortRules>> + 'a {
        let start = ServicePortName { service: service.clone(), port: Arc::from(""), protocol: crate::Protocol::Tcp };
        self.service_ports.range(start..).take_while(move |(name, _)| name.service == *service).map(|(_, r)| r)
    }
}

/// The desired rules of a node: one [`FamilyRules`] per IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    families: [FamilyRules; 2],
}

impl Desired {
    /// Rules with no service ports, for these family contexts.
    pub fn empty(v4: FamilyContext, v6: FamilyContext) -> Desired {
        debug_assert!(v4.family == IpFamily::V4 && v6.family == IpFamily::V6);
        let family = |context| FamilyRules { context: Arc::new(context), service_ports: BTreeMap::new() };
        Desired { families: [family(v4), family(v6)] }
    }

    /// The rules of one family.
    pub fn family(&self, family: IpFamily) -> &FamilyRules {
        &self.families[family.index()]
    }

    /// The rules of one family, mutably.
    pub fn family_mut(&mut self, family: IpFamily) -> &mut FamilyRules {
        &mut self.families[family.index()]
    }

    /// Both families, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = &FamilyRules> {
        self.families.iter()
    }

    /// The total number of service ports over both families.
    pub fn service_port_count(&self) -> usize {
        self.families.iter().map(|f| f.service_ports.len()).sum()
    }

    /// Per Service, the number of distinct local ready endpoint addresses over all its
    /// ports and families, for Services that have any (upstream's `LocalReadyEndpoints`).
    pub fn local_ready_endpoints(&self) -> BTreeMap<ObjectRef, usize> {
        let mut ips: BTreeMap<&ObjectRef, BTreeSet<IpAddr>> = BTreeMap::new();
        for family in &self.families {
            for rules in family.service_ports.values().filter(|r| !r.local_ready.is_empty()) {
                ips.entry(&rules.name.service).or_default().extend(rules.local_ready.iter().copied());
            }
        }
        ips.into_iter().map(|(svc, ips)| (svc.clone(), ips.len())).collect()
    }

    /// Per Service with a health-check NodePort: the port, and how many local ready
    /// endpoints the health check reports.
    ///
    /// Runs after every sync, so it counts endpoints only for the Services that have a
    /// health-check port (those with `externalTrafficPolicy: Local`), not for all of them.
    pub fn health_checks(&self) -> BTreeMap<ObjectRef, (u16, usize)> {
        let mut ports: BTreeMap<&ObjectRef, u16> = BTreeMap::new();
        for family in &self.families {
            for rules in family.service_ports.values() {
                if let Some(port) = rules.health_check_node_port {
                    ports.insert(&rules.name.service, port);
                }
            }
        }
        ports
            .into_iter()
            .map(|(service, port)| {
                let ready: BTreeSet<IpAddr> = self
                    .families
                    .iter()
                    .flat_map(|f| f.ports_of(service))
                    .flat_map(|r| r.local_ready.iter().copied())
                    .collect();
                (service.clone(), (port, ready.len()))
            })
            .collect()
    }
}
