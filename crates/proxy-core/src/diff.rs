//! `diff(&applied, &desired) -> Changes`, and applying Changes back.
//!
//! Changes are per service port (added, removed, updated) and, inside an update, per
//! endpoint. The law, property-tested: `applied.apply(&diff(&applied, &desired)) ==
//! desired`, and `diff(&a, &a)` is empty.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use crate::context::FamilyContext;
use crate::desired::{Desired, FamilyRules, ServicePortRules, Target};
use crate::model::{IpFamily, ServicePortName};

/// The endpoints that appeared and disappeared in an update (over both policies), for a
/// backend that programs endpoints one by one. Computed on demand by
/// [`Change::endpoint_delta`]: the nftables backend does not need it, and the sync path
/// should not pay for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointDelta {
    /// Endpoints reachable now but not before.
    pub added: Vec<Target>,
    /// Endpoints reachable before but not now.
    pub removed: Vec<Target>,
}

impl EndpointDelta {
    fn between(old: &ServicePortRules, new: &ServicePortRules) -> EndpointDelta {
        let before = old.reachable_endpoints();
        let after = new.reachable_endpoints();
        EndpointDelta {
            added: after.iter().filter(|t| before.binary_search(t).is_err()).copied().collect(),
            removed: before.iter().filter(|t| after.binary_search(t).is_err()).copied().collect(),
        }
    }
}

/// How one service port changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new service port.
    Added(Arc<ServicePortRules>),
    /// A service port that is gone; holds what was applied.
    Removed(Arc<ServicePortRules>),
    /// A service port whose rules changed.
    Updated {
        /// What was applied.
        old: Arc<ServicePortRules>,
        /// What is desired.
        new: Arc<ServicePortRules>,
    },
}

impl Change {
    /// Builds the change from `old` to `new`; `None` when they are equal.
    pub fn between(old: Option<&Arc<ServicePortRules>>, new: Option<&Arc<ServicePortRules>>) -> Option<Change> {
        match (old, new) {
            (None, None) => None,
            (None, Some(new)) => Some(Change::Added(new.clone())),
            (Some(old), None) => Some(Change::Removed(old.clone())),
            (Some(old), Some(new)) if Arc::ptr_eq(old, new) || old == new => None,
            (Some(old), Some(new)) => Some(Change::Updated { old: old.clone(), new: new.clone() }),
        }
    }

    /// Which endpoints appeared or disappeared: all of them for an added or removed port.
    pub fn endpoint_delta(&self) -> EndpointDelta {
        match self {
            Change::Added(new) => EndpointDelta { added: new.reachable_endpoints(), removed: Vec::new() },
            Change::Removed(old) => EndpointDelta { added: Vec::new(), removed: old.reachable_endpoints() },
            Change::Updated { old, new } => EndpointDelta::between(old, new),
        }
    }

    /// The desired rules after this change, if the port still exists.
    pub fn new_rules(&self) -> Option<&Arc<ServicePortRules>> {
        match self {
            Change::Added(new) | Change::Updated { new, .. } => Some(new),
            Change::Removed(_) => None,
        }
    }

    /// The applied rules before this change, if the port existed.
    pub fn old_rules(&self) -> Option<&Arc<ServicePortRules>> {
        match self {
            Change::Removed(old) | Change::Updated { old, .. } => Some(old),
            Change::Added(_) => None,
        }
    }
}

/// The changes of one IP family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyChanges {
    /// The new family context, when it changed.
    pub context: Option<Arc<FamilyContext>>,
    /// Changed service ports, in name order.
    pub service_ports: BTreeMap<ServicePortName, Change>,
}

impl FamilyChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.context.is_none() && self.service_ports.is_empty()
    }
}

/// Everything that differs between two [`Desired`] states.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    families: [FamilyChanges; 2],
}

impl Changes {
    /// The changes of one family.
    pub fn family(&self, family: IpFamily) -> &FamilyChanges {
        &self.families[family.index()]
    }

    /// The changes of one family, mutably.
    pub fn family_mut(&mut self, family: IpFamily) -> &mut FamilyChanges {
        &mut self.families[family.index()]
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.families.iter().all(FamilyChanges::is_empty)
    }

    /// The number of changed service ports over both families.
    pub fn len(&self) -> usize {
        self.families.iter().map(|f| f.service_ports.len()).sum()
    }

    /// Records the change of one service port between `applied` and `desired` (used by
    /// incremental recomputes that know which ports may have changed).
    pub fn record(
        &mut self,
        family: IpFamily,
        applied: Option<&Arc<ServicePortRules>>,
        desired: Option<&Arc<ServicePortRules>>,
    ) {
        if let Some(change) = Change::between(applied, desired) {
            let name = change.new_rules().or(change.old_rules()).map(|r| r.name.clone()).expect("a change has a side");
            self.family_mut(family).service_ports.insert(name, change);
        }
    }
}

/// Computes what changes `applied` into `desired`.
pub fn diff(applied: &Desired, desired: &Desired) -> Changes {
    let mut changes = Changes::default();
    for family in IpFamily::ALL {
        let (a, d) = (applied.family(family), desired.family(family));
        let out = changes.family_mut(family);
        if a.context != d.context {
            out.context = Some(d.context.clone());
        }
        out.service_ports = diff_ports(a, d).collect();
    }
    changes
}

/// Merge-walks two name-ordered maps: O(n) with a pointer-equality fast path. The changes
/// come out in name order, so collecting them bulk-builds the map.
fn diff_ports<'a>(
    applied: &'a FamilyRules,
    desired: &'a FamilyRules,
) -> impl Iterator<Item = (ServicePortName, Change)> + 'a {
    let mut a = applied.service_ports.iter().peekable();
    let mut d = desired.service_ports.iter().peekable();
    std::iter::from_fn(move || {
        loop {
            let (name, old, new) = match (a.peek(), d.peek()) {
                (None, None) => return None,
                (Some((name, old)), None) => (*name, Some(*old), None),
                (None, Some((name, new))) => (*name, None, Some(*new)),
                (Some((an, old)), Some((dn, new))) => match an.cmp(dn) {
                    std::cmp::Ordering::Less => (*an, Some(*old), None),
                    std::cmp::Ordering::Greater => (*dn, None, Some(*new)),
                    std::cmp::Ordering::Equal => (*an, Some(*old), Some(*new)),
                },
            };
            if old.is_some() {
                a.next();
            }
            if new.is_some() {
                d.next();
            }
            if let Some(change) = Change::between(old, new) {
                return Some((name.clone(), change));
            }
        }
    })
}

impl Desired {
    /// Applies `changes`, computed against a state equal to `self`.
    pub fn apply(&mut self, changes: &Changes) {
        for family in IpFamily::ALL {
            let fc = changes.family(family);
            let rules = self.family_mut(family);
            if let Some(context) = &fc.context {
                rules.context = context.clone();
            }
            for (name, change) in &fc.service_ports {
                match (change.new_rules(), rules.service_ports.entry(name.clone())) {
                    (Some(new), Entry::Occupied(mut e)) => {
                        e.insert(new.clone());
                    }
                    (Some(new), Entry::Vacant(e)) => {
                        e.insert(new.clone());
                    }
                    (None, Entry::Occupied(e)) => {
                        e.remove();
                    }
                    (None, Entry::Vacant(_)) => {}
                }
            }
        }
    }
}
