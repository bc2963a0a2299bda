//! From `k8s-openapi` objects to snapshot [`Event`]s, in one call per watch event.
//!
//! An object that translation rejects or ignores becomes a *deletion* of whatever was
//! known under its name: the API now says something we cannot or must not proxy, so the
//! old rules must go, and every other object is untouched.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use crate::error::Problem;
use crate::model::ObjectRef;
use crate::snapshot::Event;
use crate::translate::{self, Ignored, Rejected, Translated};

/// The event for one applied object, with the problems found in it.
#[derive(Clone, Debug)]
pub struct Ingested {
    /// The event to apply.
    pub event: Event,
    /// Parts of the object (or the whole object) that were dropped.
    pub problems: Vec<Problem>,
    /// Set when the object is deliberately not proxied.
    pub ignored: Option<Ignored>,
}

fn ingested<T>(
    result: Result<Translated<T>, Rejected>,
    applied: impl FnOnce(T) -> Event,
    deleted: impl FnOnce() -> Event,
) -> Ingested {
    match result {
        Ok(t) => Ingested { event: applied(t.value), problems: t.problems, ignored: None },
        Err(Rejected::Ignored(why)) => Ingested { event: deleted(), problems: Vec::new(), ignored: Some(why) },
        Err(Rejected::Invalid(problem)) => Ingested { event: deleted(), problems: vec![problem], ignored: None },
    }
}

fn id(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
    ObjectRef::new(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""))
}

/// A Service was created or updated.
pub fn service_applied(svc: &core::Service) -> Ingested {
    ingested(translate::service(svc), Event::ServiceApplied, || Event::ServiceDeleted(id(&svc.metadata)))
}

/// A Service was deleted.
pub fn service_deleted(svc: &core::Service) -> Event {
    Event::ServiceDeleted(id(&svc.metadata))
}

/// An EndpointSlice was created or updated.
pub fn slice_applied(slice: &discovery::EndpointSlice) -> Ingested {
    ingested(translate::endpoint_slice(slice), Event::SliceApplied, || Event::SliceDeleted(id(&slice.metadata)))
}

/// An EndpointSlice was deleted.
pub fn slice_deleted(slice: &discovery::EndpointSlice) -> Event {
    Event::SliceDeleted(id(&slice.metadata))
}
