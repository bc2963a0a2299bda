//! The cluster snapshot and its change tracking.
//!
//! A [`Snapshot`] holds the current Services and EndpointSlices, and
//! remembers which Services changed since the last [`Snapshot::take_pending`]: the
//! equivalent of upstream's `ServiceChangeTracker` and `EndpointsChangeTracker`. An update
//! that leaves an object unchanged marks nothing, so a watch relist that delivers the same
//! objects again costs no recompute.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::iter::Peekable;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use crate::model::{EndpointSlice, ObjectRef, Service};

/// A change to the snapshot.
#[derive(Clone, Debug)]
pub enum Event {
    /// A Service was created or updated.
    ServiceApplied(Service),
    /// A Service was deleted.
    ServiceDeleted(ObjectRef),
    /// An EndpointSlice was created or updated.
    SliceApplied(EndpointSlice),
    /// An EndpointSlice was deleted (by the slice's own namespace/name).
    SliceDeleted(ObjectRef),
}

/// The EndpointSlices of one Service, by slice name.
pub type Slices = BTreeMap<Arc<str>, Arc<EndpointSlice>>;

/// What changed since the last [`Snapshot::take_pending`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Services whose spec or endpoints changed (including deleted ones).
    pub services: BTreeSet<ObjectRef>,
    /// The `last-change-trigger-time` of every EndpointSlice change, per Service.
    pub trigger_times: BTreeMap<ObjectRef, Vec<Timestamp>>,
    /// How many Service events changed something.
    pub service_changes: u64,
    /// How many EndpointSlice events changed something.
    pub endpoint_changes: u64,
}

impl Pending {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The Services and EndpointSlices a proxy acts on. This node's context (from its Node
/// object, flags and ServiceCIDRs) is the embedder's to build: see
/// [`NodeContext::update_from_node`](crate::NodeContext::update_from_node).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Ordered, so a full compute walks Services and their slices side by side and emits
    /// service ports already sorted.
    services: BTreeMap<ObjectRef, Arc<Service>>,
    /// Slices grouped by the Service they belong to, in slice-name order.
    slices: BTreeMap<ObjectRef, Slices>,
    /// Slice id → the Service it was filed under (a slice's label may change).
    slice_owner: HashMap<ObjectRef, ObjectRef>,
    pending: Pending,
    /// One shared allocation per namespace, port name and endpoint node name. These are
    /// few (not one per object), so the set is never pruned.
    interned: HashSet<Arc<str>>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// Applies one event. Returns whether anything changed.
    pub fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::ServiceApplied(mut svc) => {
                if self.services.get(&svc.id).is_some_and(|old| **old == svc) {
                    return false;
                }
                self.canonical_service(&mut svc);
                self.mark_service(svc.id.clone());
                self.services.insert(svc.id.clone(), Arc::new(svc));
            }
            Event::ServiceDeleted(id) => {
                if self.services.remove(&id).is_none() {
                    return false;
                }
                self.mark_service(id);
            }
            Event::SliceApplied(slice) => return self.apply_slice(slice),
            Event::SliceDeleted(id) => {
                let Some(owner) = self.slice_owner.remove(&id) else { return false };
                self.remove_slice(&owner, &id.name);
                self.mark_slice(owner, None);
            }
        }
        true
    }

    fn apply_slice(&mut self, mut slice: EndpointSlice) -> bool {
        self.canonical_slice(&mut slice);
        let id = slice.id.clone();
        let owner = slice.service.clone();
        let unchanged =
            self.slices.get(&owner).and_then(|by_name| by_name.get(&id.name)).is_some_and(|old| **old == slice);
        if unchanged {
            return false;
        }
        // A slice relabelled to another Service leaves its old Service.
        if let Some(previous) = self.slice_owner.insert(id.clone(), owner.clone())
            && previous != owner
        {
            self.remove_slice(&previous, &id.name);
            self.mark_slice(previous, None);
        }
        let trigger = slice.trigger_time;
        self.slices.entry(owner.clone()).or_default().insert(id.name.clone(), Arc::new(slice));
        self.mark_slice(owner, trigger);
        true
    }

    fn intern(&mut self, s: &mut Arc<str>) {
        match self.interned.get(s) {
            Some(shared) => *s = shared.clone(),
            None => {
                self.interned.insert(s.clone());
            }
        }
    }

    /// Makes a Service share allocations with what the snapshot already holds: its
    /// namespace and port names are interned, and its id takes over the key its slices are
    /// filed under (so the full compute's merge of Services and slices compares pointers).
    fn canonical_service(&mut self, svc: &mut Service) {
        self.intern(&mut svc.id.namespace);
        for port in &mut svc.ports {
            self.intern(&mut port.name);
        }
        if let Some((key, _)) = self.slices.get_key_value(&svc.id) {
            svc.id = key.clone();
        } else if let Some((key, _)) = self.services.get_key_value(&svc.id) {
            svc.id = key.clone();
        }
    }

    /// The slice-side counterpart of [`canonical_service`](Snapshot::canonical_service).
    fn canonical_slice(&mut self, slice: &mut EndpointSlice) {
        self.intern(&mut slice.id.namespace);
        slice.service.namespace = slice.id.namespace.clone();
        for port in &mut slice.ports {
            self.intern(&mut port.name);
        }
        for endpoint in &mut slice.endpoints {
            if let Some(node) = &mut endpoint.node_name {
                self.intern(node);
            }
        }
        if let Some((key, _)) = self.services.get_key_value(&slice.service) {
            slice.service = key.clone();
        } else if let Some((key, _)) = self.slices.get_key_value(&slice.service) {
            slice.service = key.clone();
        }
    }

    fn remove_slice(&mut self, owner: &ObjectRef, name: &str) {
        if let Some(by_name) = self.slices.get_mut(owner) {
            by_name.remove(name);
            if by_name.is_empty() {
                self.slices.remove(owner);
            }
        }
    }

    fn mark_service(&mut self, id: ObjectRef) {
        self.pending.service_changes += 1;
        self.pending.services.insert(id);
    }

    fn mark_slice(&mut self, owner: ObjectRef, trigger: Option<Timestamp>) {
        self.pending.endpoint_changes += 1;
        if let Some(t) = trigger {
            self.pending.trigger_times.entry(owner.clone()).or_default().push(t);
        }
        self.pending.services.insert(owner);
    }

    /// Takes the record of what changed, leaving an empty one.
    pub fn take_pending(&mut self) -> Pending {
        std::mem::take(&mut self.pending)
    }

    /// What changed since the last [`take_pending`](Snapshot::take_pending).
    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// A Service by namespace/name.
    pub fn service(&self, id: &ObjectRef) -> Option<&Arc<Service>> {
        self.services.get(id)
    }

    /// Every Service, in namespace/name order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Every Service with its slices, in namespace/name order: a merge of two ordered maps,
    /// with no per-Service lookup.
    pub fn services_with_slices(&self) -> impl Iterator<Item = (&Arc<Service>, Option<&Slices>)> {
        ServicesWithSlices { services: self.services.iter(), slices: self.slices.iter().peekable() }
    }

    /// The snapshot's shared allocation of a namespace, port name or node name, if any
    /// object uses it: compare with [`Arc::ptr_eq`] instead of by content.
    pub fn shared_name(&self, name: &str) -> Option<&Arc<str>> {
        self.interned.get(name)
    }

    /// The slices of one Service, by slice name.
    pub fn slices(&self, service: &ObjectRef) -> Option<&Slices> {
        self.slices.get(service)
    }

    /// The EndpointSlices of a Service, in slice-name order.
    pub fn slices_of(&self, service: &ObjectRef) -> impl Iterator<Item = &Arc<EndpointSlice>> {
        self.slices.get(service).into_iter().flat_map(|by_name| by_name.values())
    }
}

/// The merge behind [`Snapshot::services_with_slices`].
struct ServicesWithSlices<'a> {
    services: std::collections::btree_map::Iter<'a, ObjectRef, Arc<Service>>,
    slices: Peekable<std::collections::btree_map::Iter<'a, ObjectRef, Slices>>,
}

impl<'a> Iterator for ServicesWithSlices<'a> {
    type Item = (&'a Arc<Service>, Option<&'a Slices>);

    fn next(&mut self) -> Option<Self::Item> {
        let (id, svc) = self.services.next()?;
        // Skip slices of Services that do not exist (yet).
        while self.slices.next_if(|(owner, _)| *owner < id).is_some() {}
        let slices = self.slices.next_if(|(owner, _)| *owner == id).map(|(_, s)| s);
        Some((svc, slices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpFamily;

    fn svc(name: &str, ip: &str) -> Service {
        Service::new(ObjectRef::new("ns", name), vec![ip.parse().unwrap()])
    }

    fn slice(name: &str, service: &str) -> EndpointSlice {
        EndpointSlice {
            id: ObjectRef::new("ns", name),
            service: ObjectRef::new("ns", service),
            family: IpFamily::V4,
            ports: vec![],
            endpoints: vec![],
            trigger_time: Some("2026-01-01T00:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn unchanged_updates_mark_nothing() {
        let mut s = Snapshot::new();
        assert!(s.apply(Event::ServiceApplied(svc("a", "10.0.0.1"))));
        assert!(s.apply(Event::SliceApplied(slice("a-1", "a"))));
        let p = s.take_pending();
        assert_eq!(p.services.len(), 1);
        assert_eq!((p.service_changes, p.endpoint_changes), (1, 1));
        assert_eq!(p.trigger_times[&ObjectRef::new("ns", "a")].len(), 1);

        assert!(!s.apply(Event::ServiceApplied(svc("a", "10.0.0.1"))));
        assert!(!s.apply(Event::SliceApplied(slice("a-1", "a"))));
        assert!(!s.apply(Event::ServiceDeleted(ObjectRef::new("ns", "nope"))));
        assert!(!s.apply(Event::SliceDeleted(ObjectRef::new("ns", "nope"))));
        assert!(s.take_pending().is_empty());
    }

    #[test]
    fn relabelled_slice_moves_between_services() {
        let mut s = Snapshot::new();
        s.apply(Event::SliceApplied(slice("x", "a")));
        s.take_pending();
        s.apply(Event::SliceApplied(slice("x", "b")));
        let p = s.take_pending();
        let touched: Vec<String> = p.services.iter().map(|r| r.to_string()).collect();
        assert_eq!(touched, ["ns/a", "ns/b"]);
        assert_eq!(s.slices_of(&ObjectRef::new("ns", "a")).count(), 0);
        assert_eq!(s.slices_of(&ObjectRef::new("ns", "b")).count(), 1);

        s.apply(Event::SliceDeleted(ObjectRef::new("ns", "x")));
        assert_eq!(s.take_pending().services.len(), 1);
        assert_eq!(s.slices_of(&ObjectRef::new("ns", "b")).count(), 0);
    }
}
