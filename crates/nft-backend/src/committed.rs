//! The record of what each family's table holds, as committed: kept in memory so that a
//! partial sync never lists the kernel (see [`crate::NftBackend`]), and updated only after
//! the kernel accepted a batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proxy_core::{FamilyContext, ServicePortName, ServicePortRules, SharedTable};

use crate::render::{self, Pick, PortObjects};
use nft_client::ruleset::{Data, Key, SetName};

/// Claims on shared elements: per (set, key), the service ports whose rendering holds it.
/// The kernel holds the first claimant's data, in name order, as a full sync resolves
/// conflicts; when it lets go, the next claimant's takes its place. The data itself is not
/// kept here: it is in the claimant's rendering.
/// Hashed with foldhash (seeded per process) rather than SipHash: a full sync inserts every
/// element, and SipHash was a seventh of its time outside the kernel in a profile.
pub(crate) type Claims = foldhash::HashMap<(SetName, Key), Claimants>;

/// The claimants of one element, in name order: the rules each was last rendered from
/// (shared with [`Committed::ports`], so a claim costs a pointer). Nearly every element has
/// exactly one claimant, so one is held inline: a vector of names per element took 384
/// bytes (its first allocation holds four), 200 MB at 5k Services × 50 endpoints.
#[derive(Clone, Debug, Default)]
pub(crate) enum Claimants {
    #[default]
    None,
    One(Arc<ServicePortRules>),
    /// Two or more: a conflict, which the API server normally prevents. Boxed, so that
    /// the common case stays at 16 bytes a claim.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Arc<ServicePortRules>>>),
}

impl Claimants {
    /// Adds a claim by the port `rules` belong to, or renews its claim with them.
    pub(crate) fn insert(&mut self, rules: &Arc<ServicePortRules>) {
        match self {
            Claimants::None => *self = Claimants::One(rules.clone()),
            Claimants::One(first) if first.name == rules.name => *first = rules.clone(),
            Claimants::One(first) => {
                let mut all = vec![first.clone(), rules.clone()];
                all.sort_by(|a, b| a.name.cmp(&b.name));
                *self = Claimants::Many(Box::new(all));
            }
            Claimants::Many(all) => match all.binary_search_by(|r| r.name.cmp(&rules.name)) {
                Ok(i) => all[i] = rules.clone(),
                Err(i) => all.insert(i, rules.clone()),
            },
        }
    }

    pub(crate) fn remove(&mut self, name: &ServicePortName) {
        match self {
            Claimants::One(first) if &first.name == name => *self = Claimants::None,
            Claimants::Many(all) => {
                if let Ok(i) = all.binary_search_by(|r| r.name.cmp(name)) {
                    all.remove(i);
                }
                if all.len() == 1 {
                    *self = Claimants::One(all.remove(0));
                }
            }
            _ => {}
        }
    }

    /// The claimant whose data the kernel holds.
    pub(crate) fn first(&self) -> Option<&ServicePortName> {
        match self {
            Claimants::None => None,
            Claimants::One(first) => Some(&first.name),
            Claimants::Many(all) => all.first().map(|r| &r.name),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first().is_none()
    }
}

/// What the kernel holds for an element: absent, or present with this data.
pub(crate) type Held = Option<Option<Data>>;

/// What was committed for one family.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The context the family was rendered with.
    pub(crate) context: Arc<FamilyContext>,
    /// The rules each service port was rendered from, shared with the caller's desired
    /// state. A port's objects are rendered again when a change needs them rather than
    /// kept: at 5k Services × 50 endpoints, kept objects took 190 MB.
    pub(crate) ports: HashMap<ServicePortName, Arc<ServicePortRules>>,
    /// The chains and sets of the service ports that own any (ClientIP affinity,
    /// firewalls), without elements: a full resync removes those no longer desired.
    pub(crate) owned: HashMap<ServicePortName, PortObjects>,
    /// Every service port's claim on each shared element.
    pub(crate) claims: Claims,
    /// The `pick-…` rules in the kernel.
    pub(crate) picks: BTreeMap<Pick, PickRule>,
    /// The shared Maglev tables in the kernel, by name.
    pub(crate) tables: HashMap<String, TableRecord>,
}

impl Committed {
    pub(crate) fn new(context: Arc<FamilyContext>) -> Committed {
        Committed {
            context,
            ports: HashMap::new(),
            owned: HashMap::new(),
            claims: Claims::default(),
            picks: BTreeMap::new(),
            tables: HashMap::new(),
        }
    }

    /// A service port's objects as committed, rendered again.
    pub(crate) fn render(&self, name: &ServicePortName) -> Option<PortObjects> {
        self.ports.get(name).map(|r| render::service_port(r, &self.context))
    }
}

/// A service port's own chains and sets, if it has any, to keep in [`Committed::owned`].
pub(crate) fn owned_part(objects: &PortObjects) -> Option<PortObjects> {
    (!objects.chains.is_empty() || !objects.sets.is_empty()).then(|| PortObjects {
        chains: objects.chains.clone(),
        sets: objects.sets.clone(),
        ..Default::default()
    })
}

/// A shared Maglev table in the kernel: what it holds, and how many service ports use it.
#[derive(Clone, Debug)]
pub(crate) struct TableRecord {
    pub(crate) table: Arc<SharedTable>,
    pub(crate) users: usize,
}

/// A `pick-…` rule in the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PickRule {
    /// How many service ports need it.
    pub(crate) users: usize,
    /// Its handle, as the kernel echoed it; unknown after a batch sent in parts.
    pub(crate) handle: Option<u64>,
}
