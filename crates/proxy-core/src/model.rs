//! The typed model: what kube-proxy reads from Services, EndpointSlices and Nodes.
//!
//! Everything here is plain, validated data. The [`translate`](crate::translate) module
//! builds it from `k8s-openapi` objects; embedders with their own sources may build it
//! directly. Names are shared through [`Arc<str>`] because the same namespace and service
//! name appear in every port and endpoint of a Service, and a 44k-Service cluster should
//! not copy them 44k × N times.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// An IP family. kube-proxy handles each family independently (one table per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> IpFamily {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// `0` for IPv4 and `1` for IPv6, for per-family arrays.
    pub fn index(self) -> usize {
        match self {
            IpFamily::V4 => 0,
            IpFamily::V6 => 1,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// A transport protocol a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP, the default when a port names no protocol.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_k8s(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lower-case name nftables and kube-proxy's chain names use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IANA protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares shared strings, skipping the bytes when both sides are the same allocation.
///
/// The [`Snapshot`](crate::Snapshot) shares one allocation per namespace, port name and
/// Service name among all objects that use it, so most comparisons on the hot paths of a
/// full compute never touch the string bytes (and their cache lines).
fn cmp_shared(a: &Arc<str>, b: &Arc<str>) -> Ordering {
    if Arc::ptr_eq(a, b) { Ordering::Equal } else { a.cmp(b) }
}

/// A namespaced object name, as `namespace/name`.
#[derive(Clone, Debug)]
pub struct ObjectRef {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The object's name.
    pub name: Arc<str>,
}

impl ObjectRef {
    /// Builds a reference from anything string-like.
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> ObjectRef {
        ObjectRef { namespace: Arc::from(namespace.as_ref()), name: Arc::from(name.as_ref()) }
    }
}

impl Ord for ObjectRef {
    fn cmp(&self, other: &ObjectRef) -> Ordering {
        cmp_shared(&self.namespace, &other.namespace).then_with(|| cmp_shared(&self.name, &other.name))
    }
}

impl PartialOrd for ObjectRef {
    fn partial_cmp(&self, other: &ObjectRef) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ObjectRef {
    fn eq(&self, other: &ObjectRef) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ObjectRef {}

/// Hashes the contents, consistent with the pointer-or-content equality above.
impl std::hash::Hash for ObjectRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.namespace.hash(state);
        self.name.hash(state);
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The identity of one Service port: namespace, Service name, port name and protocol.
///
/// This is kube-proxy's `ServicePortName`, the unit everything else is keyed by: one
/// Service with ports `http`/TCP and `dns`/UDP yields two independent service ports.
#[derive(Clone, Debug)]
pub struct ServicePortName {
    /// The Service.
    pub service: ObjectRef,
    /// The port's name (empty for a Service's single unnamed port).
    pub port: Arc<str>,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// Builds a name from its parts.
    pub fn new(
        namespace: impl AsRef<str>,
        name: impl AsRef<str>,
        port: impl AsRef<str>,
        protocol: Protocol,
    ) -> ServicePortName {
        ServicePortName { service: ObjectRef::new(namespace, name), port: Arc::from(port.as_ref()), protocol }
    }
}

impl Ord for ServicePortName {
    fn cmp(&self, other: &ServicePortName) -> Ordering {
        self.service
            .cmp(&other.service)
            .then_with(|| cmp_shared(&self.port, &other.port))
            .then_with(|| self.protocol.cmp(&other.protocol))
    }
}

impl PartialOrd for ServicePortName {
    fn partial_cmp(&self, other: &ServicePortName) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ServicePortName {
    fn eq(&self, other: &ServicePortName) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ServicePortName {}

impl std::hash::Hash for ServicePortName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.service.hash(state);
        self.port.hash(state);
        self.protocol.hash(state);
    }
}

impl fmt::Display for ServicePortName {
    /// Formats as upstream does: `ns/name:port` (without the port part when unnamed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() { write!(f, "{}", self.service) } else { write!(f, "{}:{}", self.service, self.port) }
    }
}

/// A Service's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ServiceType {
    /// `ClusterIP`, the default.
    #[default]
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
}

/// `externalTrafficPolicy` or `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TrafficPolicy {
    /// Traffic may go to any endpoint in the cluster (the default).
    #[default]
    Cluster,
    /// Traffic may go only to endpoints on the receiving node.
    Local,
}

/// `spec.trafficDistribution`.
///
/// kube-proxy itself acts on the EndpointSlice hints that the EndpointSlice controller
/// writes for these values; the field is kept so embedders and `kproxy trace` can show it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TrafficDistribution {
    /// `PreferClose` (the older spelling of `PreferSameZone`).
    PreferClose,
    /// `PreferSameZone`.
    PreferSameZone,
    /// `PreferSameNode`.
    PreferSameNode,
    /// A value this version does not know; kept verbatim.
    Other(String),
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum IpMode {
    /// `VIP` (also the meaning of an absent field): the node handles the IP itself.
    #[default]
    Vip,
    /// `Proxy`: the load balancer delivers traffic to the node, so kube-proxy adds no rule.
    Proxy,
}

/// One load-balancer ingress IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoadBalancerIngress {
    /// The ingress IP.
    pub ip: IpAddr,
    /// How traffic to it arrives.
    pub ip_mode: IpMode,
}

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// The port's name (may be empty).
    pub name: Arc<str>,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service port (the ClusterIP's port).
    pub port: u16,
    /// The allocated NodePort, if any.
    pub node_port: Option<u16>,
    /// `targetPort`, by number or name. Endpoints carry their own resolved ports, so this is
    /// informative only (upstream ignores it too).
    pub target_port: Option<TargetPort>,
}

/// A `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A numeric port.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// A Service, reduced to what a proxy needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub id: ObjectRef,
    /// The type.
    pub kind: ServiceType,
    /// The cluster IPs, at most one per family (primary first).
    pub cluster_ips: Vec<IpAddr>,
    /// The ports, in spec order.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress` entries that carry an IP.
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// ClientIP affinity timeout in seconds, when `sessionAffinity: ClientIP`.
    pub session_affinity: Option<u32>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<TrafficDistribution>,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// How new connections pick an endpoint (kproxy's annotations).
    pub load_balancing: LoadBalancing,
}

/// How new connections pick among a Service's endpoints: kproxy's
/// `kproxy.io/load-balancing` annotation (`random` or `maglev`), with the table size of
/// `kproxy.io/maglev-table-size` and the hash of `kproxy.io/maglev-hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum LoadBalancing {
    /// No annotation: the node's configured default.
    #[default]
    NodeDefault,
    /// `random`: a random endpoint per connection, as upstream.
    Random,
    /// `maglev`: Maglev consistent hashing of the client's address (see
    /// [`crate::maglev`]), with this table size when the annotation gives one.
    Maglev {
        /// A prime table size, overriding the size class (`NonZeroU32` keeps a Service as
        /// small as before the hash was added).
        table_size: Option<std::num::NonZeroU32>,
        /// What picks the slot (`kproxy.io/maglev-hash`: `source`, the default, or
        /// `connection`).
        hash: crate::maglev::Hash,
    },
}

impl Service {
    /// A `ClusterIP` Service with these cluster IPs and nothing else set (no ports, Cluster
    /// traffic policies, no affinity): a starting point for embedders and tests, which
    /// fill in the rest with struct update syntax.
    pub fn new(id: ObjectRef, cluster_ips: Vec<IpAddr>) -> Service {
        Service {
            id,
            kind: ServiceType::ClusterIp,
            cluster_ips,
            ports: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ingress: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            session_affinity: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            traffic_distribution: None,
            health_check_node_port: None,
            load_balancing: LoadBalancing::NodeDefault,
        }
    }

    /// The cluster IP of `family`, if the Service has one.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(|ip| IpFamily::of(ip) == family)
    }

    /// Whether the Service accepts traffic from outside the cluster network: it has a
    /// NodePort, external IPs or load-balancer IPs (upstream's `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        matches!(self.kind, ServiceType::NodePort | ServiceType::LoadBalancer) || !self.external_ips.is_empty()
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The endpoint's address (upstream uses the first of `addresses`).
    pub ip: IpAddr,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means serving, as upstream reads it).
    pub serving: bool,
    /// `conditions.terminating` (absent means false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<Arc<str>>,
    /// `zone`.
    pub zone: Option<Arc<str>>,
    /// `hints.forZones`.
    pub zone_hints: BTreeSet<Arc<str>>,
    /// `hints.forNodes`.
    pub node_hints: BTreeSet<Arc<str>>,
}

/// One port of an EndpointSlice, matched to Service ports by name and protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    /// The port name; matches [`ServicePort::name`].
    pub name: Arc<str>,
    /// The protocol.
    pub protocol: Protocol,
    /// The port number on the endpoints.
    pub port: u16,
}

/// An EndpointSlice, reduced to what a proxy needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace and the slice's own name.
    pub id: ObjectRef,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: ObjectRef,
    /// The slice's address family.
    pub family: IpFamily,
    /// The ports.
    pub ports: Vec<EndpointPort>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation: when the change
    /// that produced this version of the slice happened (for the programming-latency metric).
    pub trigger_time: Option<k8s_openapi::jiff::Timestamp>,
}

/// A Node, reduced to what a proxy needs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// The `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// `status.addresses` of type InternalIP and ExternalIP, InternalIP first.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<IpNet>,
    /// Whether the node is being deleted or carries the cluster autoscaler's
    /// `ToBeDeletedByClusterAutoscaler` taint (upstream's healthz "node eligible").
    pub being_deleted: bool,
}
