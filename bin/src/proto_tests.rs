//! The protobuf decoding checked against a real API server's output: `testdata/` holds
//! the same lists in JSON and in protobuf, captured from the test bed's kube-apiserver
//! after applying `testdata/objects.yaml` (a LoadBalancer Service's status patched in).

use k8s_openapi::api::core::v1::Service as CoreService;
use k8s_openapi::api::discovery::v1::EndpointSlice as CoreSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proxy_core::ingest;
use serde::Deserialize;

use super::*;

/// The metadata fields the protobuf path decodes (annotations are compared apart: the
/// protobuf path keeps only the one kproxy reads).
struct ObjectMetaLean;

impl ObjectMetaLean {
    fn of(m: &meta::ObjectMeta) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            labels: m.labels.clone(),
            ..Default::default()
        }
    }
}

#[derive(Deserialize)]
struct JsonList<T> {
    items: Vec<T>,
}

fn protobuf_items<K: Wire>(payload: &[u8]) -> (String, Vec<K>) {
    let (version, items) = list_parts(unwrap_envelope(payload).unwrap()).unwrap();
    let items = items.into_iter().map(|b| K::from_message(K::Message::decode(b).unwrap())).collect();
    (version.unwrap(), items)
}

/// What proxy-core makes of an ingested object: its event and problems, as text.
fn ingested(i: ingest::Ingested) -> String {
    format!("{:?} {:?} {:?}", i.event, i.problems, i.ignored)
}

#[test]
fn services_in_protobuf_ingest_as_in_json() {
    let json: JsonList<CoreService> = serde_json::from_slice(include_bytes!("../testdata/services.json")).unwrap();
    let (version, pb) = protobuf_items::<CoreService>(include_bytes!("../testdata/services.pb"));
    assert!(!version.is_empty());
    assert_eq!(pb.len(), 4);
    for (j, p) in json.items.into_iter().zip(pb) {
        assert_eq!(ingested(ingest::service_applied(&j)), ingested(ingest::service_applied(&p)));
        assert_eq!(j.metadata.resource_version, p.metadata.resource_version);
        assert_eq!(j.metadata.labels, p.metadata.labels);
        // The same objects, less what the protobuf path leaves out on purpose.
        let lean_json = CoreService {
            metadata: ObjectMetaLean::of(&j.metadata),
            spec: j.spec.map(|s| core::ServiceSpec { selector: None, ..s }),
            status: j.status.map(|s| core::ServiceStatus {
                conditions: None,
                load_balancer: s.load_balancer.map(|lb| core::LoadBalancerStatus {
                    ingress: lb
                        .ingress
                        .map(|i| i.into_iter().map(|i| core::LoadBalancerIngress { ports: None, ..i }).collect()),
                }),
            }),
        };
        let lean_pb = CoreService { metadata: ObjectMetaLean::of(&p.metadata), ..p };
        assert_eq!(lean_json, lean_pb);
    }
}

#[test]
fn service_fields_survive_protobuf() {
    let (_, pb) = protobuf_items::<CoreService>(include_bytes!("../testdata/services.pb"));
    let by_name = |n: &str| pb.iter().find(|s| s.metadata.name.as_deref() == Some(n)).cloned();
    let web = by_name("web").unwrap();
    let spec = web.spec.unwrap();
    let ports = spec.ports.unwrap();
    assert_eq!(ports[0].target_port, Some(IntOrString::String("http-port".into())));
    assert_eq!(ports[1].target_port, Some(IntOrString::Int(5353)));
    assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
    assert_eq!(spec.external_ips.unwrap(), ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(spec.session_affinity_config.unwrap().client_ip.unwrap().timeout_seconds, Some(600));
    assert_eq!(spec.traffic_distribution.as_deref(), Some("PreferClose"));
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
    // Go writes its empty non-pointer fields; they read as absent, as in JSON.
    assert_eq!((ports[0].node_port, spec.health_check_node_port, spec.publish_not_ready_addresses), (None, None, None));
    assert_eq!((spec.load_balancer_ip, spec.external_name), (None, None));
    // kubectl's last-applied copy and other annotations are dropped.
    assert_eq!(web.metadata.annotations, None);

    let lb = by_name("lb").unwrap();
    let spec = lb.spec.unwrap();
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    assert!(spec.health_check_node_port.is_some() && spec.ports.unwrap().iter().all(|p| p.node_port.is_some()));
    assert_eq!(spec.load_balancer_source_ranges.unwrap(), ["203.0.113.0/24", "198.51.100.7/32"]);
    let ingress = lb.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    let ips: Vec<_> = ingress.iter().map(|i| (i.ip.as_deref(), i.hostname.as_deref(), i.ip_mode.as_deref())).collect();
    assert_eq!(
        ips,
        [
            (Some("198.51.100.20"), None, Some("Proxy")),
            (None, Some("lb.example.com"), None),
            (Some("198.51.100.21"), None, Some("VIP"))
        ]
    );
    assert_eq!(lb.metadata.labels.unwrap()["tier"], "edge");
}

#[test]
fn endpoint_slices_in_protobuf_ingest_as_in_json() {
    let json: JsonList<CoreSlice> = serde_json::from_slice(include_bytes!("../testdata/endpointslices.json")).unwrap();
    let (_, pb) = protobuf_items::<CoreSlice>(include_bytes!("../testdata/endpointslices.pb"));
    assert_eq!(pb.len(), 3);
    for (j, p) in json.items.into_iter().zip(pb) {
        assert_eq!(ingested(ingest::slice_applied(&j)), ingested(ingest::slice_applied(&p)));
        assert_eq!(
            j.metadata.annotations.clone().map(keep_annotations).filter(|a| !a.is_empty()),
            p.metadata.annotations
        );
        let strip = |e: discovery::Endpoint| discovery::Endpoint { target_ref: None, deprecated_topology: None, ..e };
        let lean_json = CoreSlice {
            metadata: ObjectMetaLean::of(&j.metadata),
            endpoints: j.endpoints.map(|e| e.into_iter().map(strip).collect()),
            ..j
        };
        assert_eq!(lean_json, CoreSlice { metadata: ObjectMetaLean::of(&p.metadata), ..p });
    }
}

#[test]
fn endpoint_fields_survive_protobuf() {
    let (_, pb) = protobuf_items::<CoreSlice>(include_bytes!("../testdata/endpointslices.pb"));
    let slices: Vec<CoreSlice> = pb;
    let web = slices.iter().find(|s| s.metadata.name.as_deref() == Some("web-1")).unwrap();
    let trigger = "endpoints.kubernetes.io/last-change-trigger-time";
    assert_eq!(web.metadata.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(), [trigger]);
    let eps = web.endpoints.as_ref().unwrap();
    let first = &eps[0];
    let c = first.conditions.as_ref().unwrap();
    assert_eq!((c.ready, c.serving, c.terminating), (Some(true), Some(true), Some(false)));
    let hints = first.hints.as_ref().unwrap();
    assert_eq!(hints.for_zones.as_ref().unwrap()[0].name, "zone-a");
    assert_eq!(hints.for_nodes.as_ref().unwrap()[0].name, "vs-node");
    assert_eq!((first.node_name.as_deref(), first.zone.as_deref()), (Some("vs-node"), Some("zone-a")));
    let c = eps[1].conditions.as_ref().unwrap();
    assert_eq!((c.ready, c.serving, c.terminating), (Some(false), Some(true), Some(true)));
    assert!(eps[2].conditions.as_ref().is_none_or(|c| c.ready.is_none()));
    let ports = web.ports.as_ref().unwrap();
    assert_eq!((ports[0].port, ports[0].app_protocol.as_deref()), (Some(8080), Some("http")));

    let v6 = slices.iter().find(|s| s.metadata.name.as_deref() == Some("lb-6")).unwrap();
    assert_eq!(v6.address_type, "IPv6");
    let empty = slices.iter().find(|s| s.metadata.name.as_deref() == Some("np-empty")).unwrap();
    assert_eq!(empty.endpoints, None);
}

#[test]
fn a_watch_stream_frames_events_with_enveloped_objects() {
    let mut stream: &[u8] = include_bytes!("../testdata/watch-np.pb");
    let mut kinds = Vec::new();
    while !stream.is_empty() {
        let len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        let event = WatchEvent::decode(&stream[4..4 + len]).unwrap();
        stream = &stream[4 + len..];
        let raw = event.object.unwrap().raw.unwrap();
        let svc = Service::decode(unwrap_envelope(&raw).unwrap()).unwrap();
        kinds.push((event.r#type.unwrap(), svc.metadata.unwrap().name));
    }
    assert_eq!(kinds[0], ("ADDED".to_string(), Some("np".to_string())));
}

#[test]
fn malformed_payloads_are_errors() {
    assert!(matches!(unwrap_envelope(b"{\"kind\": \"List\"}"), Err(WireError::NoMagic)));
    // An envelope whose raw field claims 100 bytes but holds 2.
    assert!(matches!(unwrap_envelope(b"k8s\0\x12\x64ab"), Err(WireError::Truncated(2))));
    // Wire type 3 (a group) is not used by Kubernetes.
    assert!(matches!(list_parts(b"\x0b"), Err(WireError::WireType(3))));
    let list = unwrap_envelope(include_bytes!("../testdata/services.pb")).unwrap();
    let (_, items) = list_parts(list).unwrap();
    assert!(Service::decode(&items[0][..items[0].len() - 3]).is_err());
}

#[test]
fn an_int_or_string_follows_its_type() {
    let port = |t: IntOrStr| service_port(ServicePort { target_port: Some(t), ..ServicePort::default() }).target_port;
    assert_eq!(port(IntOrStr { r#type: Some(0), int_val: Some(8080), str_val: None }), Some(IntOrString::Int(8080)));
    assert_eq!(
        port(IntOrStr { r#type: Some(1), int_val: None, str_val: Some("http".into()) }),
        Some(IntOrString::String("http".into()))
    );
}
