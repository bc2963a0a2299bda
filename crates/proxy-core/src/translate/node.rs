//! Node translation.

use k8s_openapi::api::core::v1 as k8s;

use super::{LABEL_TOPOLOGY_ZONE, Problems, Rejected, Translated};
use crate::error::{Error, ObjectKind};
use crate::ip::{parse_cidr_sloppy, parse_ip_sloppy};
use crate::model::{Node, ObjectRef};

/// The taint the cluster autoscaler puts on nodes it is about to remove.
const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// Translates a Node: its name, zone label, InternalIP and ExternalIP addresses (InternalIP
/// first), pod CIDRs, and whether it is being deleted.
pub fn node(node: &k8s::Node) -> Result<Translated<Node>, Rejected> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut problems = Problems::new(ObjectKind::Node, ObjectRef::new("", &name));
    if name.is_empty() {
        return Err(problems.reject("metadata.name", Error::MissingField));
    }
    let zone =
        node.metadata.labels.as_ref().and_then(|l| l.get(LABEL_TOPOLOGY_ZONE)).filter(|z| !z.is_empty()).cloned();

    let mut addresses = Vec::new();
    let statuses = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
    for kind in ["InternalIP", "ExternalIP"] {
        for (i, a) in statuses.iter().enumerate().filter(|(_, a)| a.type_ == kind) {
            match parse_ip_sloppy(&a.address) {
                Some(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Some(_) => {}
                None => problems.drop_part(format!("status.addresses[{i}]"), Error::BadIp(a.address.clone())),
            }
        }
    }

    let spec = node.spec.as_ref();
    let raw_cidrs: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(c) if !c.is_empty() => c.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut pod_cidrs = Vec::new();
    for (i, c) in raw_cidrs.into_iter().enumerate() {
        match parse_cidr_sloppy(c) {
            Some(net) => pod_cidrs.push(net),
            None => problems.drop_part(format!("spec.podCIDRs[{i}]"), Error::BadCidr(c.clone())),
        }
    }

    let tainted = spec.and_then(|s| s.taints.as_ref()).into_iter().flatten().any(|t| t.key == TAINT_TO_BE_DELETED);
    let being_deleted = node.metadata.deletion_timestamp.is_some() || tainted;
    Ok(problems.done(Node { name, zone, addresses, pod_cidrs, being_deleted }))
}
