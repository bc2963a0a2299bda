//! Translation from `k8s-openapi` objects to the typed [model](crate::model), with validation.
//!
//! Each function either returns the translated object together with the [`Problem`]s of
//! the parts it had to drop (one IP, one port, one endpoint), or says why the whole object
//! is not used: [`Rejected::Ignored`] for objects upstream kube-proxy deliberately does not
//! proxy (headless and ExternalName Services, Services owned by another proxy, FQDN
//! slices), and [`Rejected::Invalid`] for objects too broken to use at all. Nothing here
//! panics on any input; property tests feed it arbitrary objects.

mod endpointslice;
mod node;
mod service;

pub use endpointslice::{ANNOTATION_TRIGGER_TIME, endpoint_slice};
pub use node::node;
pub use service::{ANNOTATION_LOAD_BALANCING, ANNOTATION_MAGLEV_HASH, ANNOTATION_MAGLEV_TABLE_SIZE, service};

use crate::error::{Error, ObjectKind, Problem};
use crate::model::ObjectRef;

/// The label that hands a Service to another proxy implementation.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// The label that joins an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label marking EndpointSlices of headless Services (upstream also ignores a Service
/// that carries it).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The node label holding the node's zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// A translated object plus the problems of the parts that were dropped from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Translated<T> {
    /// The usable object.
    pub value: T,
    /// Parts that were dropped, each with its reason.
    pub problems: Vec<Problem>,
}

/// Why a whole object is not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Deliberately not proxied, as upstream does; not an error.
    Ignored(Ignored),
    /// Too broken to use.
    Invalid(Problem),
}

/// Objects upstream kube-proxy filters out on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// `clusterIP: None` (or no cluster IP at all), or labelled
    /// `service.kubernetes.io/headless`.
    Headless,
    /// `type: ExternalName`.
    ExternalName,
    /// Carries the `service.kubernetes.io/service-proxy-name` label.
    OtherProxy,
    /// An EndpointSlice of `addressType: FQDN`, or of a headless Service.
    NotProxied,
}

/// Collects the problems of one object while it is being translated.
struct Problems {
    kind: ObjectKind,
    object: ObjectRef,
    list: Vec<Problem>,
}

impl Problems {
    fn new(kind: ObjectKind, object: ObjectRef) -> Problems {
        Problems { kind, object, list: Vec::new() }
    }

    fn problem(&self, field: impl Into<String>, error: Error, object_skipped: bool) -> Problem {
        Problem { kind: self.kind, object: self.object.clone(), field: field.into(), error, object_skipped }
    }

    /// Records a dropped part.
    fn drop_part(&mut self, field: impl Into<String>, error: Error) {
        let p = self.problem(field, error, false);
        self.list.push(p);
    }

    /// The whole object is unusable.
    fn reject(&self, field: impl Into<String>, error: Error) -> Rejected {
        Rejected::Invalid(self.problem(field, error, true))
    }

    fn done<T>(self, value: T) -> Translated<T> {
        Translated { value, problems: self.list }
    }
}

fn object_ref(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
    ObjectRef::new(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""))
}

/// Whether `s` is a valid object name or namespace (a DNS subdomain). The API server
/// guarantees it; manifests do not, and kproxy builds nftables names from these.
fn valid_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Whether `s` is a valid port name (empty for an unnamed port).
fn valid_port_name(s: &str) -> bool {
    s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Rejects an object whose namespace or name is not a valid Kubernetes name.
fn check_names(problems: &Problems, id: &ObjectRef) -> Result<(), Rejected> {
    for (field, value) in [("metadata.namespace", &id.namespace), ("metadata.name", &id.name)] {
        if !valid_object_name(value) {
            return Err(problems.reject(field, Error::InvalidName(value.to_string())));
        }
    }
    Ok(())
}

/// A port's protocol (absent means TCP, as the API defaults it); `None` (with the
/// problem recorded) for an unknown one.
fn protocol(raw: Option<&str>, field: &str, problems: &mut Problems) -> Option<crate::model::Protocol> {
    match raw {
        None | Some("") => Some(crate::model::Protocol::Tcp),
        Some(s) => {
            let proto = crate::model::Protocol::from_k8s(s);
            if proto.is_none() {
                problems.drop_part(format!("{field}.protocol"), Error::UnknownProtocol(s.into()));
            }
            proto
        }
    }
}

/// Converts an API port number, rejecting 0 and anything above 65535.
fn port_number(value: i32) -> Result<u16, Error> {
    u16::try_from(value).ok().filter(|p| *p != 0).ok_or(Error::PortOutOfRange(i64::from(value)))
}
