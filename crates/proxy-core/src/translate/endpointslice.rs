//! EndpointSlice translation.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1 as k8s;

use super::{
    Ignored, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, Problems, Rejected, Translated, check_names,
    object_ref, port_number, protocol, valid_object_name, valid_port_name,
};
use crate::error::{Error, ObjectKind};
use crate::ip::parse_ip_sloppy;
use crate::model::{Endpoint, EndpointPort, EndpointSlice, IpFamily, ObjectRef};

/// The annotation the EndpointSlice controller stamps with the time of the triggering change.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Translates an EndpointSlice (`discovery.k8s.io/v1`).
///
/// A slice without the `kubernetes.io/service-name` label is rejected; FQDN slices and
/// slices of headless Services are ignored. A bad port or endpoint is dropped alone.
/// Like upstream, an endpoint is represented by its first address.
pub fn endpoint_slice(slice: &k8s::EndpointSlice) -> Result<Translated<EndpointSlice>, Rejected> {
    let id = object_ref(&slice.metadata);
    let mut problems = Problems::new(ObjectKind::EndpointSlice, id.clone());
    if id.name.is_empty() {
        return Err(problems.reject("metadata.name", Error::MissingField));
    }
    check_names(&problems, &id)?;
    let labels = slice.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS) || l.contains_key(LABEL_SERVICE_PROXY_NAME)) {
        return Err(Rejected::Ignored(Ignored::NotProxied));
    }
    let Some(service_name) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)).filter(|s| !s.is_empty()) else {
        return Err(problems.reject(format!("metadata.labels[{LABEL_SERVICE_NAME}]"), Error::MissingServiceName));
    };
    if !valid_object_name(service_name) {
        let field = format!("metadata.labels[{LABEL_SERVICE_NAME}]");
        return Err(problems.reject(field, Error::InvalidName(service_name.clone())));
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Err(Rejected::Ignored(Ignored::NotProxied)),
        other => return Err(problems.reject("addressType", Error::UnknownValue(other.into()))),
    };

    let mut ports = Vec::new();
    let mut seen = HashSet::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let Some(number) = p.port else {
            problems.drop_part(format!("{field}.port"), Error::MissingField);
            continue;
        };
        let port = match port_number(number) {
            Ok(port) => port,
            Err(e) => {
                problems.drop_part(format!("{field}.port"), e);
                continue;
            }
        };
        let Some(protocol) = protocol(p.protocol.as_deref(), &field, &mut problems) else { continue };
        let name: Arc<str> = Arc::from(p.name.as_deref().unwrap_or(""));
        if !valid_port_name(&name) {
            problems.drop_part(format!("{field}.name"), Error::InvalidName(name.to_string()));
            continue;
        }
        if !seen.insert((name.clone(), protocol)) {
            problems.drop_part(field, Error::DuplicatePort(format!("{protocol} {name}")));
            continue;
        }
        ports.push(EndpointPort { name, protocol, port });
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice_endpoints(slice).iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let Some(raw) = ep.addresses.first() else {
            problems.drop_part(format!("{field}.addresses"), Error::MissingField);
            continue;
        };
        let Some(ip) = parse_ip_sloppy(raw) else {
            problems.drop_part(format!("{field}.addresses[0]"), Error::BadIp(raw.clone()));
            continue;
        };
        if IpFamily::of(&ip) != family {
            problems.drop_part(format!("{field}.addresses[0]"), Error::WrongFamily(raw.clone()));
            continue;
        }
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        // As upstream's endpointslicecache: an absent `serving` counts as serving.
        let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let hints = ep.hints.as_ref();
        let zone_hints: BTreeSet<Arc<str>> = hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| Arc::from(z.name.as_str()))
            .collect();
        let node_hints: BTreeSet<Arc<str>> = hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| Arc::from(n.name.as_str()))
            .collect();
        endpoints.push(Endpoint {
            ip,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.as_deref().filter(|n| !n.is_empty()).map(Arc::from),
            zone: ep.zone.as_deref().filter(|z| !z.is_empty()).map(Arc::from),
            zone_hints,
            node_hints,
        });
    }

    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TRIGGER_TIME))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
    let service = ObjectRef { namespace: id.namespace.clone(), name: Arc::from(service_name.as_str()) };
    Ok(problems.done(EndpointSlice { id, service, family, ports, endpoints, trigger_time }))
}

/// `endpoints` became optional in the v1.36 API types.
#[allow(clippy::needless_return)] // exactly one of the two arms is compiled in
fn slice_endpoints(slice: &k8s::EndpointSlice) -> &[k8s::Endpoint] {
    k8s_openapi::k8s_if_ge_1_36! {
        return slice.endpoints.as_deref().unwrap_or_default();
    }
    k8s_openapi::k8s_if_le_1_35! {
        return &slice.endpoints;
    }
}
