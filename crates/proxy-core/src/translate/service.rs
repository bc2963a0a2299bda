//! Service translation.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Ignored, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Problems, Rejected, Translated, check_names, object_ref,
    port_number, protocol, valid_port_name,
};
use crate::error::{Error, ObjectKind};
use crate::ip::{parse_cidr_sloppy, parse_ip_sloppy};
use crate::maglev;
use crate::model::{
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, IpFamily, IpMode, LoadBalancerIngress, LoadBalancing, Service, ServicePort,
    ServiceType, TargetPort, TrafficDistribution, TrafficPolicy,
};

/// kproxy's annotation choosing how endpoints are picked: `random` or `maglev`.
pub const ANNOTATION_LOAD_BALANCING: &str = "kproxy.io/load-balancing";
/// kproxy's annotation fixing a Maglev table size (a prime up to the largest size class).
pub const ANNOTATION_MAGLEV_TABLE_SIZE: &str = "kproxy.io/maglev-table-size";
/// kproxy's annotation choosing what a Maglev Service hashes: `source` (the client's
/// address, the default) or `connection` (its address and source port).
pub const ANNOTATION_MAGLEV_HASH: &str = "kproxy.io/maglev-hash";

/// The largest ClientIP affinity timeout the API allows (one day).
const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86_400;

/// Translates a Service.
///
/// Filters as upstream does: headless and ExternalName Services and Services labelled
/// with `service.kubernetes.io/service-proxy-name` or `service.kubernetes.io/headless`
/// (upstream's informers select `!` both labels, for Services as for EndpointSlices) are
/// [`Rejected::Ignored`]. A bad
/// external IP, ingress IP, source range or port is dropped alone; a Service none of whose
/// cluster IPs parse is rejected whole.
pub fn service(svc: &k8s::Service) -> Result<Translated<Service>, Rejected> {
    let id = object_ref(&svc.metadata);
    let mut problems = Problems::new(ObjectKind::Service, id.clone());
    if id.name.is_empty() {
        return Err(problems.reject("metadata.name", Error::MissingField));
    }
    check_names(&problems, &id)?;
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME)) {
        return Err(Rejected::Ignored(Ignored::OtherProxy));
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Err(Rejected::Ignored(Ignored::Headless));
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Err(problems.reject("spec", Error::MissingField));
    };
    let kind = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Err(Rejected::Ignored(Ignored::ExternalName)),
        Some(other) => return Err(problems.reject("spec.type", Error::UnknownServiceType(other.into()))),
    };

    let cluster_ips = cluster_ips(spec, &mut problems)?;
    let ports = ports(spec, kind, &mut problems);
    let external_ips = addresses(spec.external_ips.as_deref(), "spec.externalIPs", &mut problems);
    let load_balancer_ingress = ingress(svc, &mut problems);
    let load_balancer_source_ranges = source_ranges(spec.load_balancer_source_ranges.as_deref(), &mut problems);
    let session_affinity = session_affinity(spec, &mut problems);
    let external_traffic_policy =
        policy(spec.external_traffic_policy.as_deref(), "spec.externalTrafficPolicy", &mut problems);
    let internal_traffic_policy =
        policy(spec.internal_traffic_policy.as_deref(), "spec.internalTrafficPolicy", &mut problems);
    let traffic_distribution = spec.traffic_distribution.as_deref().map(|d| match d {
        "PreferClose" => TrafficDistribution::PreferClose,
        "PreferSameZone" => TrafficDistribution::PreferSameZone,
        "PreferSameNode" => TrafficDistribution::PreferSameNode,
        other => TrafficDistribution::Other(other.to_string()),
    });
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => match port_number(p) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.drop_part("spec.healthCheckNodePort", e);
                None
            }
        },
    };
    let load_balancing = load_balancing(svc, &mut problems);

    Ok(problems.done(Service {
        id,
        kind,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ingress,
        load_balancer_source_ranges,
        session_affinity,
        external_traffic_policy,
        internal_traffic_policy,
        traffic_distribution,
        health_check_node_port,
        load_balancing,
    }))
}

/// kproxy's load-balancing annotations. A bad value is dropped with a warning and the
/// node's default applies.
fn load_balancing(svc: &k8s::Service, problems: &mut Problems) -> LoadBalancing {
    let annotations = svc.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
    let field = |key: &str| format!("metadata.annotations[{key}]");
    let table_size = get(ANNOTATION_MAGLEV_TABLE_SIZE).and_then(|raw| {
        let max = *maglev::SIZE_CLASSES.last().expect("classes");
        match raw.parse::<u32>() {
            Ok(n) if maglev::is_prime(n) && n <= max => std::num::NonZeroU32::new(n),
            Ok(n) => {
                problems.drop_part(field(ANNOTATION_MAGLEV_TABLE_SIZE), Error::OutOfRange(i64::from(n)));
                None
            }
            Err(_) => {
                problems.drop_part(field(ANNOTATION_MAGLEV_TABLE_SIZE), Error::UnknownValue(raw.to_string()));
                None
            }
        }
    });
    let hash = match get(ANNOTATION_MAGLEV_HASH) {
        None => maglev::Hash::Source,
        Some(v) if v.eq_ignore_ascii_case("source") => maglev::Hash::Source,
        Some(v) if v.eq_ignore_ascii_case("connection") => maglev::Hash::Connection,
        Some(other) => {
            problems.drop_part(field(ANNOTATION_MAGLEV_HASH), Error::UnknownValue(other.to_string()));
            maglev::Hash::Source
        }
    };
    match get(ANNOTATION_LOAD_BALANCING) {
        None => LoadBalancing::NodeDefault,
        Some(v) if v.eq_ignore_ascii_case("maglev") => LoadBalancing::Maglev { table_size, hash },
        Some(v) if v.eq_ignore_ascii_case("random") => LoadBalancing::Random,
        Some(other) => {
            problems.drop_part(field(ANNOTATION_LOAD_BALANCING), Error::UnknownValue(other.to_string()));
            LoadBalancing::NodeDefault
        }
    }
}

/// `spec.clusterIPs` (or the older `spec.clusterIP`), at most one per family.
fn cluster_ips(spec: &k8s::ServiceSpec, problems: &mut Problems) -> Result<Vec<std::net::IpAddr>, Rejected> {
    let (raw, field): (Vec<&str>, &str) = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => (ips.iter().map(String::as_str).collect(), "spec.clusterIPs"),
        _ => (spec.cluster_ip.as_deref().into_iter().collect(), "spec.clusterIP"),
    };
    if raw.first().is_none_or(|ip| ip.is_empty() || *ip == "None") {
        return Err(Rejected::Ignored(Ignored::Headless));
    }
    let mut ips = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        match parse_ip_sloppy(s) {
            Some(ip) if ips.iter().any(|seen| IpFamily::of(seen) == IpFamily::of(&ip)) => {
                problems.drop_part(format!("{field}[{i}]"), Error::WrongFamily(s.to_string()));
            }
            Some(ip) => ips.push(ip),
            None => problems.drop_part(format!("{field}[{i}]"), Error::BadIp(s.to_string())),
        }
    }
    if ips.is_empty() {
        return Err(problems.reject(field, Error::BadIp(raw.join(","))));
    }
    Ok(ips)
}

fn ports(spec: &k8s::ServiceSpec, kind: ServiceType, problems: &mut Problems) -> Vec<ServicePort> {
    let mut out: Vec<ServicePort> = Vec::new();
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(protocol) = protocol(p.protocol.as_deref(), &field, problems) else { continue };
        let port = match port_number(p.port) {
            Ok(port) => port,
            Err(e) => {
                problems.drop_part(format!("{field}.port"), e);
                continue;
            }
        };
        // NodePorts exist only on NodePort and LoadBalancer Services (the API server
        // clears them elsewhere); a stray one in a manifest is ignored the same way.
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(_) if kind == ServiceType::ClusterIp => None,
            Some(np) => match port_number(np) {
                Ok(np) => Some(np),
                Err(e) => {
                    problems.drop_part(format!("{field}.nodePort"), e);
                    continue;
                }
            },
        };
        let name: Arc<str> = Arc::from(p.name.as_deref().unwrap_or(""));
        if !valid_port_name(&name) {
            problems.drop_part(format!("{field}.name"), Error::InvalidName(name.to_string()));
            continue;
        }
        if !names.insert((name.clone(), protocol)) || !numbers.insert((port, protocol)) {
            let what = format!("{}/{} {}", protocol, port, if name.is_empty() { "(unnamed)" } else { &name });
            problems.drop_part(field, Error::DuplicatePort(what));
            continue;
        }
        let target_port = match &p.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0).map(TargetPort::Number),
            Some(IntOrString::String(s)) if !s.is_empty() => Some(TargetPort::Name(s.clone())),
            _ => None,
        };
        out.push(ServicePort { name, protocol, port, node_port, target_port });
    }
    out
}

fn addresses(raw: Option<&[String]>, field: &str, problems: &mut Problems) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for (i, s) in raw.into_iter().flatten().enumerate() {
        match parse_ip_sloppy(s) {
            Some(ip) if !out.contains(&ip) => out.push(ip),
            Some(_) => {}
            None => problems.drop_part(format!("{field}[{i}]"), Error::BadIp(s.clone())),
        }
    }
    out
}

fn ingress(svc: &k8s::Service, problems: &mut Problems) -> Vec<LoadBalancerIngress> {
    let entries = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_deref());
    let mut out: Vec<LoadBalancerIngress> = Vec::new();
    for (i, ing) in entries.into_iter().flatten().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}]");
        // Hostname-only ingress (some clouds) carries no IP for a proxy to act on.
        let Some(raw) = ing.ip.as_deref().filter(|s| !s.is_empty()) else { continue };
        let Some(ip) = parse_ip_sloppy(raw) else {
            problems.drop_part(format!("{field}.ip"), Error::BadIp(raw.into()));
            continue;
        };
        let ip_mode = match ing.ip_mode.as_deref() {
            None | Some("") | Some("VIP") => IpMode::Vip,
            Some("Proxy") => IpMode::Proxy,
            Some(other) => {
                problems.drop_part(format!("{field}.ipMode"), Error::UnknownValue(other.into()));
                continue;
            }
        };
        if !out.iter().any(|seen| seen.ip == ip) {
            out.push(LoadBalancerIngress { ip, ip_mode });
        }
    }
    out
}

fn source_ranges(raw: Option<&[String]>, problems: &mut Problems) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for (i, s) in raw.into_iter().flatten().enumerate() {
        match parse_cidr_sloppy(s) {
            Some(net) if !out.contains(&net) => out.push(net),
            Some(_) => {}
            None => problems.drop_part(format!("spec.loadBalancerSourceRanges[{i}]"), Error::BadCidr(s.clone())),
        }
    }
    out
}

fn session_affinity(spec: &k8s::ServiceSpec, problems: &mut Problems) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS),
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&t) => Some(t as u32),
                Some(t) => {
                    problems.drop_part(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        Error::OutOfRange(i64::from(t)),
                    );
                    Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
                }
            }
        }
        Some(other) => {
            problems.drop_part("spec.sessionAffinity", Error::UnknownValue(other.into()));
            None
        }
    }
}

fn policy(raw: Option<&str>, field: &str, problems: &mut Problems) -> TrafficPolicy {
    match raw {
        None | Some("") | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            problems.drop_part(field, Error::UnknownValue(other.into()));
            TrafficPolicy::Cluster
        }
    }
}
