//! Services and EndpointSlices decoded without what kproxy never reads.
//!
//! `kproxy run` receives them in protobuf (`proto`, which produces these types too); the
//! JSON decoding here is the reference that `proto`'s tests check the protobuf path
//! against, on lists captured from a real API server.
//!
//! Every object the API server lists carries `metadata.managedFields` (one entry per
//! writer, each a JSON tree of field paths), and objects written with `kubectl apply`
//! carry their whole last-applied copy as an annotation. k8s-openapi decodes both into
//! allocated trees and strings; at 10k Services that is most of the initial list's decode
//! time and memory. These wrappers decode the same JSON but skip those parts unread: the
//! metadata keeps its name, namespace, uid, resourceVersion, labels and the one annotation
//! proxy-core reads (`endpoints.kubernetes.io/last-change-trigger-time`).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Service, ServiceSpec, ServiceStatus};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The annotations kept.
const KEPT_ANNOTATIONS: &[&str] = &["endpoints.kubernetes.io/last-change-trigger-time"];

/// The metadata fields kproxy reads; everything else (managedFields, other annotations,
/// owner references, …) is skipped while parsing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "kept_annotations")]
    annotations: Option<BTreeMap<String, String>>,
}

/// Keeps only [`KEPT_ANNOTATIONS`] of a decoded annotation map (the protobuf path, which
/// has no cheaper way to skip map entries).
pub fn keep_annotations(mut annotations: BTreeMap<String, String>) -> BTreeMap<String, String> {
    annotations.retain(|k, _| KEPT_ANNOTATIONS.contains(&k.as_str()));
    annotations
}

fn lean_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations,
        ..ObjectMeta::default()
    })
}

/// Reads an annotation map keeping only [`KEPT_ANNOTATIONS`]; other values are skipped
/// without being copied (`kubectl apply`'s last-applied copy is the size of the object).
fn kept_annotations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Kept;
    impl<'de> Visitor<'de> for Kept {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of annotations")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Kept)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if KEPT_ANNOTATIONS.contains(&key.as_str()) {
                    kept.insert(key, map.next_value::<String>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    d.deserialize_option(Kept)
}

/// A Service decoded without its managed fields and annotations.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LeanService {
    #[serde(deserialize_with = "lean_meta")]
    metadata: ObjectMeta,
    spec: Option<ServiceSpec>,
    status: Option<ServiceStatus>,
}

impl From<Service> for LeanService {
    fn from(s: Service) -> LeanService {
        LeanService { metadata: s.metadata, spec: s.spec, status: s.status }
    }
}

impl From<LeanService> for Service {
    fn from(s: LeanService) -> Service {
        Service { metadata: s.metadata, spec: s.spec, status: s.status }
    }
}

/// An EndpointSlice decoded without its managed fields and unread annotations.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanSlice {
    #[serde(deserialize_with = "lean_meta")]
    metadata: ObjectMeta,
    address_type: String,
    endpoints: Option<Vec<Endpoint>>,
    ports: Option<Vec<EndpointPort>>,
}

impl From<EndpointSlice> for LeanSlice {
    fn from(s: EndpointSlice) -> LeanSlice {
        LeanSlice { metadata: s.metadata, address_type: s.address_type, endpoints: s.endpoints, ports: s.ports }
    }
}

impl From<LeanSlice> for EndpointSlice {
    fn from(s: LeanSlice) -> EndpointSlice {
        EndpointSlice { metadata: s.metadata, address_type: s.address_type, endpoints: s.endpoints, ports: s.ports }
    }
}

/// Makes a wrapper a Kubernetes resource of the type it wraps (what kube's `Api` and
/// watcher need: the URL path and the metadata).
macro_rules! resource_of {
    ($lean:ty, $full:ty) => {
        impl k8s_openapi::Resource for $lean {
            const API_VERSION: &'static str = <$full as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$full as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$full as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$full as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str = <$full as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$full as k8s_openapi::Resource>::Scope;
        }

        impl k8s_openapi::Metadata for $lean {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource_of!(LeanService, Service);
resource_of!(LeanSlice, EndpointSlice);

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: &str = r#"{
      "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
      "metadata": {
        "name": "web-abc", "namespace": "default", "uid": "u-1", "resourceVersion": "42",
        "labels": {"kubernetes.io/service-name": "web"},
        "annotations": {
          "endpoints.kubernetes.io/last-change-trigger-time": "2026-11-28T06:00:00Z",
          "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"discovery.k8s.io/v1\"}"
        },
        "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:endpoints": {}, "f:metadata": {"f:labels": {".": {}}}}}]
      },
      "addressType": "IPv4",
      "endpoints": [{"addresses": ["10.244.0.11"], "conditions": {"ready": true}, "nodeName": "node-a"}],
      "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }"#;

    #[test]
    fn a_lean_slice_is_the_full_slice_less_what_is_never_read() {
        let lean: EndpointSlice = serde_json::from_str::<LeanSlice>(SLICE).unwrap().into();
        let mut full: EndpointSlice = serde_json::from_str(SLICE).unwrap();
        full.metadata.managed_fields = None;
        full.metadata.annotations.as_mut().unwrap().remove("kubectl.kubernetes.io/last-applied-configuration");
        assert_eq!(lean, full);
    }

    #[test]
    fn a_lean_service_keeps_spec_status_and_identity() {
        let json = r#"{"metadata": {"name": "web", "namespace": "ns", "uid": "u-2", "annotations": null,
                      "labels": {"service.kubernetes.io/service-proxy-name": "other"},
                      "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {}}}]},
                      "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
                      "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}"#;
        let lean: Service = serde_json::from_str::<LeanService>(json).unwrap().into();
        let mut full: Service = serde_json::from_str(json).unwrap();
        full.metadata.managed_fields = None;
        assert_eq!(lean, full);
        assert_eq!(<LeanService as k8s_openapi::Resource>::URL_PATH_SEGMENT, "services");
        assert_eq!(<LeanSlice as k8s_openapi::Resource>::API_VERSION, "discovery.k8s.io/v1");
    }
}
