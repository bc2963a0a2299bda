//! Services and EndpointSlices in the API server's protobuf encoding.
//!
//! kube-proxy (client-go) lists and watches in protobuf; kube-rs speaks JSON only
//! (kube-rs/kube#725). At 10k Services the API server encodes a JSON list two to three
//! times slower than a protobuf one, and kproxy decodes JSON several times slower still,
//! so the initial list was most of kproxy's cold start. These messages are the subset of
//! `k8s.io/api`'s `generated.proto` that kproxy reads, with the same field numbers; prost
//! skips every other field (managedFields, owner references, selectors, conditions…)
//! without allocating.
//!
//! On the wire, an object or list is the 4-byte magic `k8s\0` followed by a
//! `runtime.Unknown` envelope whose `raw` field holds the message itself. A watch stream
//! is a sequence of frames, each a big-endian `u32` length and a `metav1.WatchEvent`
//! whose `object.raw` is such an enveloped object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;

/// What a protobuf payload failed on.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The payload does not start with `k8s\0`.
    #[error("not a Kubernetes protobuf payload (no k8s magic)")]
    NoMagic,
    /// The payload's bytes do not parse as the expected message.
    #[error("malformed protobuf: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A length-delimited field runs past the end of its message.
    #[error("malformed protobuf: field {0} runs past the end of the message")]
    Truncated(u32),
    /// A wire type protobuf does not define (3 and 4, groups, are not used by Kubernetes).
    #[error("malformed protobuf: unsupported wire type {0}")]
    WireType(u64),
}

/// The magic prefix of every enveloped Kubernetes protobuf object.
const MAGIC: &[u8] = b"k8s\0";

/// `metav1.ObjectMeta`: the fields kproxy reads.
#[derive(Clone, PartialEq, Message)]
pub struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub resource_version: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    pub annotations: BTreeMap<String, String>,
}

/// `metav1.ListMeta`.
#[derive(Clone, PartialEq, Message)]
pub struct ListMeta {
    #[prost(string, optional, tag = "2")]
    pub resource_version: Option<String>,
}

/// `metav1.WatchEvent`, its object still enveloped.
#[derive(Clone, PartialEq, Message)]
pub struct WatchEvent {
    #[prost(string, optional, tag = "1")]
    pub r#type: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub object: Option<RawExtension>,
}

/// `runtime.RawExtension`.
#[derive(Clone, PartialEq, Message)]
pub struct RawExtension {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub raw: Option<Vec<u8>>,
}

/// `metav1.Status`, as a watch's ERROR event or a failed request carries it.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(string, optional, tag = "3")]
    pub message: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub reason: Option<String>,
    #[prost(int32, optional, tag = "6")]
    pub code: Option<i32>,
}

/// `v1.Service`.
#[derive(Clone, PartialEq, Message)]
pub struct Service {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    pub spec: Option<ServiceSpec>,
    #[prost(message, optional, tag = "3")]
    pub status: Option<ServiceStatus>,
}

/// `v1.ServiceSpec` without the selector (kube-proxy never reads it).
#[derive(Clone, PartialEq, Message)]
pub struct ServiceSpec {
    #[prost(message, repeated, tag = "1")]
    pub ports: Vec<ServicePort>,
    #[prost(string, optional, tag = "3")]
    pub cluster_ip: Option<String>,
    #[prost(string, repeated, tag = "18")]
    pub cluster_ips: Vec<String>,
    #[prost(string, optional, tag = "4")]
    pub r#type: Option<String>,
    #[prost(string, repeated, tag = "5")]
    pub external_ips: Vec<String>,
    #[prost(string, optional, tag = "7")]
    pub session_affinity: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub load_balancer_ip: Option<String>,
    #[prost(string, repeated, tag = "9")]
    pub load_balancer_source_ranges: Vec<String>,
    #[prost(string, optional, tag = "10")]
    pub external_name: Option<String>,
    #[prost(string, optional, tag = "11")]
    pub external_traffic_policy: Option<String>,
    #[prost(int32, optional, tag = "12")]
    pub health_check_node_port: Option<i32>,
    #[prost(bool, optional, tag = "13")]
    pub publish_not_ready_addresses: Option<bool>,
    #[prost(message, optional, tag = "14")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[prost(string, optional, tag = "17")]
    pub ip_family_policy: Option<String>,
    #[prost(string, repeated, tag = "19")]
    pub ip_families: Vec<String>,
    #[prost(bool, optional, tag = "20")]
    pub allocate_load_balancer_node_ports: Option<bool>,
    #[prost(string, optional, tag = "21")]
    pub load_balancer_class: Option<String>,
    #[prost(string, optional, tag = "22")]
    pub internal_traffic_policy: Option<String>,
    #[prost(string, optional, tag = "23")]
    pub traffic_distribution: Option<String>,
}

/// `v1.ServicePort`.
#[derive(Clone, PartialEq, Message)]
pub struct ServicePort {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub protocol: Option<String>,
    #[prost(int32, optional, tag = "3")]
    pub port: Option<i32>,
    #[prost(message, optional, tag = "4")]
    pub target_port: Option<IntOrStr>,
    #[prost(int32, optional, tag = "5")]
    pub node_port: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub app_protocol: Option<String>,
}

/// `intstr.IntOrString`: `type` 0 is the number, 1 the string.
#[derive(Clone, PartialEq, Message)]
pub struct IntOrStr {
    #[prost(int64, optional, tag = "1")]
    pub r#type: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    pub int_val: Option<i32>,
    #[prost(string, optional, tag = "3")]
    pub str_val: Option<String>,
}

/// `v1.SessionAffinityConfig`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionAffinityConfig {
    #[prost(message, optional, tag = "1")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `v1.ClientIPConfig`.
#[derive(Clone, PartialEq, Message)]
pub struct ClientIpConfig {
    #[prost(int32, optional, tag = "1")]
    pub timeout_seconds: Option<i32>,
}

/// `v1.ServiceStatus` without conditions.
#[derive(Clone, PartialEq, Message)]
pub struct ServiceStatus {
    #[prost(message, optional, tag = "1")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

/// `v1.LoadBalancerStatus`.
#[derive(Clone, PartialEq, Message)]
pub struct LoadBalancerStatus {
    #[prost(message, repeated, tag = "1")]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// `v1.LoadBalancerIngress` without its port statuses.
#[derive(Clone, PartialEq, Message)]
pub struct LoadBalancerIngress {
    #[prost(string, optional, tag = "1")]
    pub ip: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub hostname: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub ip_mode: Option<String>,
}

/// `discovery/v1.EndpointSlice`.
#[derive(Clone, PartialEq, Message)]
pub struct EndpointSlice {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "2")]
    pub endpoints: Vec<Endpoint>,
    #[prost(message, repeated, tag = "3")]
    pub ports: Vec<EndpointPort>,
    #[prost(string, optional, tag = "4")]
    pub address_type: Option<String>,
}

/// `discovery/v1.Endpoint` without its target reference and deprecated topology.
#[derive(Clone, PartialEq, Message)]
pub struct Endpoint {
    #[prost(string, repeated, tag = "1")]
    pub addresses: Vec<String>,
    #[prost(message, optional, tag = "2")]
    pub conditions: Option<EndpointConditions>,
    #[prost(string, optional, tag = "3")]
    pub hostname: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub node_name: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub zone: Option<String>,
    #[prost(message, optional, tag = "8")]
    pub hints: Option<EndpointHints>,
}

/// `discovery/v1.EndpointConditions`.
#[derive(Clone, PartialEq, Message)]
pub struct EndpointConditions {
    #[prost(bool, optional, tag = "1")]
    pub ready: Option<bool>,
    #[prost(bool, optional, tag = "2")]
    pub serving: Option<bool>,
    #[prost(bool, optional, tag = "3")]
    pub terminating: Option<bool>,
}

/// `discovery/v1.EndpointHints`.
#[derive(Clone, PartialEq, Message)]
pub struct EndpointHints {
    #[prost(message, repeated, tag = "1")]
    pub for_zones: Vec<Named>,
    #[prost(message, repeated, tag = "2")]
    pub for_nodes: Vec<Named>,
}

/// `discovery/v1.ForZone` and `ForNode`: a name.
#[derive(Clone, PartialEq, Message)]
pub struct Named {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
}

/// `discovery/v1.EndpointPort`.
#[derive(Clone, PartialEq, Message)]
pub struct EndpointPort {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub protocol: Option<String>,
    #[prost(int32, optional, tag = "3")]
    pub port: Option<i32>,
    #[prost(string, optional, tag = "4")]
    pub app_protocol: Option<String>,
}

/// An object kproxy lists and watches in protobuf.
pub trait Wire: Sized + Send + 'static {
    /// Its protobuf message.
    type Message: Message + Default;

    /// The message's metadata (a watch bookmark carries only that).
    fn meta(message: &Self::Message) -> Option<&ObjectMeta>;

    /// The object the rest of kproxy works with.
    fn from_message(message: Self::Message) -> Self;
}

impl Wire for core::Service {
    type Message = Service;

    fn meta(message: &Service) -> Option<&ObjectMeta> {
        message.metadata.as_ref()
    }

    fn from_message(m: Service) -> core::Service {
        core::Service {
            metadata: object_meta(m.metadata),
            spec: m.spec.map(service_spec),
            status: m.status.map(|s| core::ServiceStatus {
                load_balancer: s.load_balancer.map(|lb| core::LoadBalancerStatus {
                    ingress: non_empty(lb.ingress.into_iter().map(ingress).collect()),
                }),
                conditions: None,
            }),
        }
    }
}

impl Wire for discovery::EndpointSlice {
    type Message = EndpointSlice;

    fn meta(message: &EndpointSlice) -> Option<&ObjectMeta> {
        message.metadata.as_ref()
    }

    fn from_message(m: EndpointSlice) -> discovery::EndpointSlice {
        discovery::EndpointSlice {
            metadata: object_meta(m.metadata),
            address_type: m.address_type.unwrap_or_default(),
            endpoints: non_empty(m.endpoints.into_iter().map(endpoint).collect()),
            ports: non_empty(
                m.ports
                    .into_iter()
                    .map(|p| discovery::EndpointPort {
                        name: set(p.name),
                        protocol: set(p.protocol),
                        port: p.port,
                        app_protocol: set(p.app_protocol),
                    })
                    .collect(),
            ),
        }
    }
}

/// The annotations kept: those proxy-core reads. Every other annotation (a `kubectl
/// apply`'d object carries its whole last-applied copy in one) is dropped as soon as it
/// is decoded.
const KEPT_ANNOTATIONS: &[&str] = &[
    proxy_core::translate::ANNOTATION_TRIGGER_TIME,
    proxy_core::translate::ANNOTATION_LOAD_BALANCING,
    proxy_core::translate::ANNOTATION_MAGLEV_TABLE_SIZE,
    proxy_core::translate::ANNOTATION_MAGLEV_HASH,
];

/// Keeps only [`KEPT_ANNOTATIONS`] of a decoded annotation map.
fn keep_annotations(mut annotations: BTreeMap<String, String>) -> BTreeMap<String, String> {
    annotations.retain(|k, _| KEPT_ANNOTATIONS.contains(&k.as_str()));
    annotations
}

/// Go's encoder writes its non-pointer fields even when empty, where JSON omits them
/// (`omitempty`): an empty string, a zero port or a false flag reads as absent, as in JSON.
fn set(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn nonzero(n: Option<i32>) -> Option<i32> {
    n.filter(|n| *n != 0)
}

/// Protobuf has no absent list, only an empty one; JSON's `null` and `[]` mean the same.
fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn non_empty_map(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

fn object_meta(m: Option<ObjectMeta>) -> meta::ObjectMeta {
    let m = m.unwrap_or_default();
    meta::ObjectMeta {
        name: set(m.name),
        namespace: set(m.namespace),
        uid: set(m.uid),
        resource_version: set(m.resource_version),
        labels: non_empty_map(m.labels),
        annotations: non_empty_map(keep_annotations(m.annotations)),
        ..meta::ObjectMeta::default()
    }
}

fn service_spec(s: ServiceSpec) -> core::ServiceSpec {
    core::ServiceSpec {
        ports: non_empty(s.ports.into_iter().map(service_port).collect()),
        cluster_ip: set(s.cluster_ip),
        cluster_ips: non_empty(s.cluster_ips),
        type_: set(s.r#type),
        external_ips: non_empty(s.external_ips),
        session_affinity: set(s.session_affinity),
        load_balancer_ip: set(s.load_balancer_ip),
        load_balancer_source_ranges: non_empty(s.load_balancer_source_ranges),
        external_name: set(s.external_name),
        external_traffic_policy: set(s.external_traffic_policy),
        health_check_node_port: nonzero(s.health_check_node_port),
        publish_not_ready_addresses: s.publish_not_ready_addresses.filter(|p| *p),
        session_affinity_config: s.session_affinity_config.map(|c| core::SessionAffinityConfig {
            client_ip: c.client_ip.map(|c| core::ClientIPConfig { timeout_seconds: c.timeout_seconds }),
        }),
        ip_families: non_empty(s.ip_families),
        ip_family_policy: set(s.ip_family_policy),
        allocate_load_balancer_node_ports: s.allocate_load_balancer_node_ports,
        load_balancer_class: set(s.load_balancer_class),
        internal_traffic_policy: set(s.internal_traffic_policy),
        traffic_distribution: set(s.traffic_distribution),
        selector: None,
    }
}

fn service_port(p: ServicePort) -> core::ServicePort {
    core::ServicePort {
        name: set(p.name),
        protocol: set(p.protocol),
        port: p.port.unwrap_or_default(),
        target_port: p.target_port.map(|t| match t.r#type {
            Some(1) => IntOrString::String(t.str_val.unwrap_or_default()),
            _ => IntOrString::Int(t.int_val.unwrap_or_default()),
        }),
        node_port: nonzero(p.node_port),
        app_protocol: set(p.app_protocol),
    }
}

fn ingress(i: LoadBalancerIngress) -> core::LoadBalancerIngress {
    core::LoadBalancerIngress { ip: set(i.ip), hostname: set(i.hostname), ip_mode: set(i.ip_mode), ports: None }
}

fn endpoint(e: Endpoint) -> discovery::Endpoint {
    let named = |v: Vec<Named>| v.into_iter().map(|n| n.name.unwrap_or_default());
    discovery::Endpoint {
        addresses: e.addresses,
        conditions: e.conditions.map(|c| discovery::EndpointConditions {
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
        }),
        hostname: set(e.hostname),
        node_name: set(e.node_name),
        zone: set(e.zone),
        hints: e.hints.map(|h| discovery::EndpointHints {
            for_zones: non_empty(named(h.for_zones).map(|name| discovery::ForZone { name }).collect()),
            for_nodes: non_empty(named(h.for_nodes).map(|name| discovery::ForNode { name }).collect()),
        }),
        target_ref: None,
        deprecated_topology: None,
    }
}

/// The message inside an enveloped payload (`k8s\0` + `runtime.Unknown`), borrowed.
pub fn unwrap_envelope(payload: &[u8]) -> Result<&[u8], WireError> {
    let unknown = payload.strip_prefix(MAGIC).ok_or(WireError::NoMagic)?;
    let mut raw: &[u8] = &[];
    for field in Fields(unknown) {
        if let (2, Value::Bytes(b)) = field? {
            raw = b;
        }
    }
    Ok(raw)
}

/// A list's resource version and its items (each still encoded), borrowed from the
/// unwrapped list message: items are decoded one at a time, so a 44k list never exists
/// twice in memory.
pub fn list_parts(list: &[u8]) -> Result<(Option<String>, Vec<&[u8]>), WireError> {
    let mut version = None;
    let mut items = Vec::new();
    for field in Fields(list) {
        match field? {
            (1, Value::Bytes(b)) => version = ListMeta::decode(b)?.resource_version,
            (2, Value::Bytes(b)) => items.push(b),
            _ => {}
        }
    }
    Ok((version, items))
}

/// One field of a message: its number and, for length-delimited fields, its bytes.
enum Value<'a> {
    Bytes(&'a [u8]),
    Scalar,
}

/// The top-level fields of an encoded message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let key = prost::encoding::decode_varint(&mut self.0)?;
        let number = (key >> 3) as u32;
        let value = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut self.0)?;
                Value::Scalar
            }
            1 => self.skip(8, number)?,
            5 => self.skip(4, number)?,
            2 => {
                let len = prost::encoding::decode_varint(&mut self.0)?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated(number))?;
                if len > self.0.len() {
                    return Err(WireError::Truncated(number));
                }
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                Value::Bytes(bytes)
            }
            other => return Err(WireError::WireType(other)),
        };
        Ok((number, value))
    }

    fn skip(&mut self, n: usize, number: u32) -> Result<Value<'a>, WireError> {
        self.0 = self.0.get(n..).ok_or(WireError::Truncated(number))?;
        Ok(Value::Scalar)
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
