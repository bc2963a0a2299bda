//! Incremental recompute: O(changed Services), not O(cluster).
//!
//! An [`Engine`] owns the [`Snapshot`], the [`NodeContext`] and the current [`Desired`].
//! Watch events go in through [`Engine::apply`]; [`Engine::plan`] recomputes only the
//! Services that changed since the previous plan and returns the [`Changes`] against the
//! previous desired state, so a one-endpoint change costs the same at 1k and at 44k
//! Services. A change of the node context (zone, pod CIDRs, flags) recomputes everything.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use crate::compute::{compute, compute_service};
use crate::context::NodeContext;
use crate::desired::{Desired, ServicePortRules};
use crate::diff::{Changes, diff};
use crate::model::{IpFamily, ObjectRef};
use crate::snapshot::{Event, Snapshot};

/// The outcome of [`Engine::plan`].
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// What changed since the previous plan.
    pub changes: Changes,
    /// Whether everything was recomputed (first plan, or the node context changed); a
    /// backend should then do a full sync.
    pub full: bool,
    /// `last-change-trigger-time`s of the EndpointSlice changes this plan covers.
    pub trigger_times: BTreeMap<ObjectRef, Vec<Timestamp>>,
    /// Service events covered.
    pub service_changes: u64,
    /// EndpointSlice events covered.
    pub endpoint_changes: u64,
}

/// Snapshot plus node context plus desired state, kept in step incrementally.
#[derive(Clone, Debug)]
pub struct Engine {
    snapshot: Snapshot,
    node: NodeContext,
    desired: Desired,
    recompute_all: bool,
}

impl Engine {
    /// An engine with an empty snapshot. The first [`plan`](Engine::plan) is full.
    pub fn new(node: NodeContext) -> Engine {
        let desired = compute(&Snapshot::new(), &node);
        Engine { snapshot: Snapshot::new(), node, desired, recompute_all: true }
    }

    /// Applies a watch event. Returns whether anything changed.
    pub fn apply(&mut self, event: Event) -> bool {
        self.snapshot.apply(event)
    }

    /// The snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The node context in force.
    pub fn node_context(&self) -> &NodeContext {
        &self.node
    }

    /// Replaces the node context; the next plan recomputes everything if it differs.
    pub fn set_node_context(&mut self, node: NodeContext) {
        if node != self.node {
            self.node = node;
            self.recompute_all = true;
        }
    }

    /// The desired state as of the last plan.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Recomputes what changed and returns the changes against the previous plan.
    pub fn plan(&mut self) -> Plan {
        let pending = self.snapshot.take_pending();
        let mut plan = Plan {
            changes: Changes::default(),
            full: self.recompute_all,
            trigger_times: pending.trigger_times,
            service_changes: pending.service_changes,
            endpoint_changes: pending.endpoint_changes,
        };
        if self.recompute_all {
            let desired = compute(&self.snapshot, &self.node);
            plan.changes = diff(&self.desired, &desired);
            self.desired = desired;
            self.recompute_all = false;
            return plan;
        }
        for service in &pending.services {
            self.recompute_service(service, &mut plan.changes);
        }
        plan
    }

    fn recompute_service(&mut self, service: &ObjectRef, changes: &mut Changes) {
        for family in IpFamily::ALL {
            let rules = self.desired.family_mut(family);
            let context = rules.context.clone();
            let old: BTreeMap<_, Arc<ServicePortRules>> =
                rules.ports_of(service).map(|r| (r.name.clone(), r.clone())).collect();
            let new: BTreeMap<_, Arc<ServicePortRules>> = match self.snapshot.service(service) {
                Some(svc) => compute_service(&self.snapshot, svc, &self.node, &context)
                    .into_iter()
                    .map(|r| (r.name.clone(), Arc::new(r)))
                    .collect(),
                None => BTreeMap::new(),
            };
            for (name, r) in &old {
                if !new.contains_key(name) {
                    changes.record(family, Some(r), None);
                    rules.service_ports.remove(name);
                }
            }
            for (name, r) in new {
                changes.record(family, old.get(&name), Some(&r));
                if old.get(&name) != Some(&r) {
                    rules.service_ports.insert(name, r);
                }
            }
        }
    }
}
