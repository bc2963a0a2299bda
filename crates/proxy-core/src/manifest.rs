//! Parsing Kubernetes manifests (YAML or JSON, multi-document, `kind: List`) into the
//! objects a proxy reads. Text in, objects out: reading files is the caller's business.
//!
//! Each document (or `List` item) is parsed on its own, so one malformed object yields one
//! [`ManifestError`] naming it, and the others still come through.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::serde_json::{self, Value};
use serde::Deserialize;

use crate::error::Error;

/// An object a proxy reads.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Service.
    Service(Box<core::Service>),
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(Box<discovery::EndpointSlice>),
    /// A Node.
    Node(Box<core::Node>),
    /// A `networking.k8s.io/v1` ServiceCIDR: a range ClusterIPs are allocated from.
    ServiceCidr(Box<k8s_openapi::api::networking::v1::ServiceCIDR>),
}

/// A manifest entry that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("document {document}{item}{object}: {error}", item = item_suffix(*item), object = object_suffix(kind, name))]
pub struct ManifestError {
    /// The document's index in the text (0-based).
    pub document: usize,
    /// The index inside a `kind: List`, if the entry is a list item.
    pub item: Option<usize>,
    /// The entry's `kind`, when known.
    pub kind: Option<String>,
    /// The entry's `namespace/name` (or name), when known.
    pub name: Option<String>,
    /// Why it was not used.
    #[source]
    pub error: Error,
}

fn item_suffix(item: Option<usize>) -> String {
    item.map(|i| format!(" item {i}")).unwrap_or_default()
}

fn object_suffix(kind: &Option<String>, name: &Option<String>) -> String {
    match (kind, name) {
        (Some(k), Some(n)) => format!(" ({k} {n})"),
        (Some(k), None) => format!(" ({k})"),
        (None, Some(n)) => format!(" ({n})"),
        (None, None) => String::new(),
    }
}

/// Parses every document of a YAML or JSON text. Kinds other than Service, EndpointSlice
/// and Node are skipped silently (a manifest directory usually holds Deployments too);
/// `Endpoints` (the legacy API) is skipped as upstream kube-proxy does.
pub fn parse(text: &str) -> Vec<Result<Object, ManifestError>> {
    let mut out = Vec::new();
    for (document, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(de) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                out.push(Err(ManifestError {
                    document,
                    item: None,
                    kind: None,
                    name: None,
                    error: Error::Manifest(e.to_string()),
                }));
                // A syntax error leaves the parser unable to find the next document.
                break;
            }
        };
        if value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) {
            let items = value.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                if let Some(r) = object(document, Some(i), item) {
                    out.push(r);
                }
            }
        } else if let Some(r) = object(document, None, value) {
            out.push(r);
        }
    }
    out
}

fn object(document: usize, item: Option<usize>, value: Value) -> Option<Result<Object, ManifestError>> {
    let kind = value.get("kind").and_then(Value::as_str).map(str::to_string);
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str).map(str::to_string);
    let name = match (field("namespace"), field("name")) {
        (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
        (None, n) => n,
        (Some(_), None) => None,
    };
    let fail = |error| ManifestError { document, item, kind: kind.clone(), name: name.clone(), error };
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let typed = match kind.as_deref() {
        Some("Service") => serde_json::from_value(value).map(|s| Object::Service(Box::new(s))),
        Some("EndpointSlice") if api_version == "discovery.k8s.io/v1" => {
            serde_json::from_value(value).map(|s| Object::EndpointSlice(Box::new(s)))
        }
        Some("EndpointSlice") => return Some(Err(fail(Error::UnknownValue(format!("apiVersion {api_version}"))))),
        Some("Node") => serde_json::from_value(value).map(|n| Object::Node(Box::new(n))),
        Some("ServiceCIDR") => serde_json::from_value(value).map(|c| Object::ServiceCidr(Box::new(c))),
        Some(_) => return None,
        None => return Some(Err(fail(Error::MissingField))),
    };
    Some(typed.map_err(|e| fail(Error::Manifest(e.to_string()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_errors() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {namespace: a, name: one}
spec: {clusterIP: 10.0.0.1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Node, metadata: {name: n1}}
  - {apiVersion: v1, kind: Service, metadata: {namespace: a, name: bad}, spec: {ports: "not a list"}}
  - {apiVersion: discovery.k8s.io/v1beta1, kind: EndpointSlice, metadata: {namespace: a, name: old}}
---
{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"namespace": "a", "name": "s"}, "addressType": "IPv4", "endpoints": []}
---
metadata: {name: kindless}
"#;
        let parsed = parse(text);
        let summary: Vec<String> = parsed
            .iter()
            .map(|r| match r {
                Ok(Object::Service(s)) => format!("Service {}", s.metadata.name.as_deref().unwrap()),
                Ok(Object::EndpointSlice(s)) => format!("EndpointSlice {}", s.metadata.name.as_deref().unwrap()),
                Ok(Object::Node(n)) => format!("Node {}", n.metadata.name.as_deref().unwrap()),
                Ok(Object::ServiceCidr(c)) => format!("ServiceCIDR {}", c.metadata.name.as_deref().unwrap()),
                Err(e) => format!("error {}", e.to_string().split(':').next().unwrap()),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "Service one",
                "Node n1",
                "error document 2 item 1 (Service a/bad)",
                "error document 2 item 2 (EndpointSlice a/old)",
                "EndpointSlice s",
                "error document 4 (kindless)",
            ]
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let parsed = parse("kind: Service\nmetadata: [unclosed\n");
        assert_eq!(parsed.len(), 1);
        assert!(matches!(&parsed[0], Err(ManifestError { error: Error::Manifest(_), .. })));
    }
}
