//! The crate's error type: why a piece of input was not used.
//!
//! proxy-core never fails a whole computation because of one bad object. Translation
//! skips the smallest unit it can (an IP, a port, an endpoint, an object) and reports a
//! [`Problem`] that names the object, the field and the [`Error`]; the caller logs it or
//! turns it into a Kubernetes Event, and everything else is still programmed.

use std::fmt;

use crate::model::ObjectRef;

/// Why an input value was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required field is absent.
    #[error("missing required field")]
    MissingField,
    /// A value is not an IP address.
    #[error("invalid IP address {0:?}")]
    BadIp(String),
    /// A value is not a CIDR.
    #[error("invalid CIDR {0:?}")]
    BadCidr(String),
    /// A port number is outside 1–65535.
    #[error("port {0} is outside 1-65535")]
    PortOutOfRange(i64),
    /// A protocol other than TCP, UDP or SCTP.
    #[error("unknown protocol {0:?}")]
    UnknownProtocol(String),
    /// A port repeats the name/protocol or number/protocol of an earlier port.
    #[error("duplicate port {0}")]
    DuplicatePort(String),
    /// A Service `type` this proxy does not know.
    #[error("unknown service type {0:?}")]
    UnknownServiceType(String),
    /// An enumerated field holds an unknown value.
    #[error("unknown value {0:?}")]
    UnknownValue(String),
    /// An EndpointSlice without the `kubernetes.io/service-name` label.
    #[error("no kubernetes.io/service-name label")]
    MissingServiceName,
    /// An address of the wrong IP family for its EndpointSlice or Service.
    #[error("address {0} does not match the object's IP family")]
    WrongFamily(String),
    /// A value outside its allowed range, such as an affinity timeout.
    #[error("value {0} is out of range")]
    OutOfRange(i64),
    /// A name that is not a valid Kubernetes name (lower-case alphanumerics, `-`, `.`).
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// A manifest that is not valid YAML/JSON or does not match its kind's schema.
    #[error("invalid manifest: {0}")]
    Manifest(String),
}

/// The kind of object a [`Problem`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A Service.
    Service,
    /// An EndpointSlice.
    EndpointSlice,
    /// A Node.
    Node,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
        })
    }
}

/// A rejected piece of input: which object, which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {error}")]
pub struct Problem {
    /// The kind of object.
    pub kind: ObjectKind,
    /// The object (a Node has an empty namespace).
    pub object: ObjectRef,
    /// The field path, such as `spec.ports[1].port`.
    pub field: String,
    /// Why it was rejected.
    #[source]
    pub error: Error,
    /// Whether the whole object was skipped (`true`) or only the named part of it.
    pub object_skipped: bool,
}
