//! The plan of a partial sync: the operations that take the kernel from what was committed
//! for some service ports to their new objects, and what to record once they are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use proxy_core::{ServicePortName, ServicePortRules, SharedTable};

use crate::committed::{Claimants, Claims, Committed, Held, PickRule, TableRecord, owned_part};
use crate::render::{self, Pick, PortObjects, shared};
use nft_client::ruleset::{Data, Key, SetName};
use nft_client::tx::{Op, Transaction};

/// The operations of a partial sync, bucketed so they can be emitted in an order the
/// kernel accepts: new objects before references to them, references removed before the
/// objects they point to.
pub(crate) struct PortPlan<'a> {
    committed: &'a Committed,
    /// The service ports this plan changes: their new rules and objects (none if removed).
    changed: HashMap<ServicePortName, Option<(Arc<ServicePortRules>, PortObjects)>>,
    /// Committed service ports rendered again because they claim an element this plan
    /// touches (a conflict, which the API server normally prevents).
    others: HashMap<ServicePortName, Option<PortObjects>>,
    pre_flush: Vec<Op>,
    redefine: Vec<Op>,
    add_sets: Vec<Op>,
    add_chains: Vec<Op>,
    rewrite: Vec<Op>,
    delete_elements: BTreeMap<SetName, Vec<Key>>,
    add_elements: BTreeMap<SetName, Vec<(Key, Option<Data>)>>,
    /// Per `pick-…` rule, how many more (or fewer) service ports need it.
    picks: BTreeMap<Pick, isize>,
    /// Per shared Maglev table, how many more (or fewer) service ports use it, and what
    /// it holds after the plan, if a changed port says.
    tables: BTreeMap<String, (isize, Option<Arc<SharedTable>>)>,
    /// Element operations on shared Maglev tables (each table is one map of its own).
    table_elements: Vec<Op>,
    flush_removed: Vec<Op>,
    delete_chains: Vec<Op>,
    delete_sets: Vec<Op>,
    /// Shared elements this plan touches: what the kernel holds now, the claims after the
    /// plan, and the data the last changed port to claim it renders (what the kernel will
    /// hold when that port is the first claimant, the usual case: no lookup needed then).
    /// Hashed with foldhash, as [`Claims`]: a Maglev port touches thousands of elements.
    elements: foldhash::HashMap<(SetName, Key), Touched>,
}

/// One element a plan touches.
struct Touched {
    held: Held,
    claims: Claimants,
    rendered: Option<(Arc<ServicePortRules>, Option<Data>)>,
}

/// What to record once a partial sync's transaction is committed.
pub(crate) struct Update {
    pub(crate) claims: Claims,
    pub(crate) picks: BTreeMap<Pick, PickRule>,
    /// The shared Maglev tables this plan touched: their record after it (`None`: gone).
    pub(crate) tables: Vec<(String, Option<TableRecord>)>,
    /// Per changed service port: its rules and own chains and sets, if it remains.
    pub(crate) ports: Vec<(ServicePortName, Option<Arc<ServicePortRules>>, Option<PortObjects>)>,
}

impl<'a> PortPlan<'a> {
    pub(crate) fn new(committed: &'a Committed) -> PortPlan<'a> {
        PortPlan {
            committed,
            changed: HashMap::new(),
            others: HashMap::new(),
            pre_flush: Vec::new(),
            redefine: Vec::new(),
            add_sets: Vec::new(),
            add_chains: Vec::new(),
            rewrite: Vec::new(),
            delete_elements: BTreeMap::new(),
            add_elements: BTreeMap::new(),
            picks: BTreeMap::new(),
            tables: BTreeMap::new(),
            table_elements: Vec::new(),
            flush_removed: Vec::new(),
            delete_chains: Vec::new(),
            delete_sets: Vec::new(),
            elements: foldhash::HashMap::default(),
        }
    }

    /// The data a committed service port holds for an element (it claims it).
    fn committed_data(&mut self, name: &ServicePortName, key: &(SetName, Key)) -> Option<Data> {
        let committed = self.committed;
        let objects = self.others.entry(name.clone()).or_insert_with(|| committed.render(name));
        objects.as_ref().and_then(|o| o.elements.get(key)).cloned().flatten()
    }

    /// Plans one service port's change from what was committed to `new`.
    pub(crate) fn port(&mut self, name: &ServicePortName, new: Option<&Arc<ServicePortRules>>) {
        let old = self.committed.render(name).unwrap_or_default();
        let new_objects = new.map(|r| render::service_port(r, &self.committed.context));
        let empty = PortObjects::default();
        let new_ref = new_objects.as_ref().unwrap_or(&empty);
        self.objects(&old, new_ref);
        // Both renderings are sorted by key: one merge gives each key's old and new data.
        for (key, before, after) in merge(&old.elements, &new_ref.elements) {
            if !self.elements.contains_key(key) {
                let claims = self.committed.claims.get(key).cloned().unwrap_or_default();
                let held = match claims.first() {
                    None => None,
                    Some(first) if first == name => Some(before.cloned().flatten()),
                    Some(first) => {
                        let first = first.clone();
                        Some(self.committed_data(&first, key))
                    }
                };
                self.elements.insert(*key, Touched { held, claims, rendered: None });
            }
            let touched = self.elements.get_mut(key).expect("just inserted");
            match (new, after) {
                (Some(rules), Some(data)) => {
                    touched.claims.insert(rules);
                    touched.rendered = Some((rules.clone(), data.clone()));
                }
                _ => {
                    touched.claims.remove(name);
                    if touched.rendered.as_ref().is_some_and(|(r, _)| &r.name == name) {
                        touched.rendered = None;
                    }
                }
            }
        }
        self.changed.insert(name.clone(), new.cloned().zip(new_objects));
    }

    /// Plans the port's own chains and sets and its `pick-…` rules.
    fn objects(&mut self, old: &PortObjects, new: &PortObjects) {
        // A set whose definition changed (an affinity timeout) is deleted and created
        // again; every chain of the port may refer to it, so all are emptied first and
        // refilled after.
        let redefined: Vec<&String> = new
            .sets
            .iter()
            .filter(|(n, set)| old.sets.get(*n).is_some_and(|o| !o.same_definition(set)))
            .map(|(n, _)| n)
            .collect();
        let refill_all = !redefined.is_empty();
        if refill_all {
            self.pre_flush.extend(old.chains.keys().map(|c| Op::FlushChain(c.clone())));
            self.redefine.extend(redefined.iter().map(|n| Op::DeleteSet((*n).clone())));
        }
        for (set_name, set) in &new.sets {
            if !old.sets.contains_key(set_name) || redefined.contains(&set_name) {
                self.add_sets.push(Op::AddSet(set_name.clone(), set.clone()));
            }
        }
        for (chain_name, chain) in &new.chains {
            match old.chains.get(chain_name) {
                None => self.add_chains.push(Op::AddChain(chain_name.clone(), chain.base)),
                Some(_) if refill_all => {}
                Some(old_chain) if old_chain == chain => continue,
                Some(_) => self.rewrite.push(Op::FlushChain(chain_name.clone())),
            }
            for rule in &chain.rules {
                self.rewrite.push(Op::AddRule(chain_name.clone(), rule.clone()));
            }
        }
        for pick in &old.picks {
            *self.picks.entry(*pick).or_default() -= 1;
        }
        for pick in &new.picks {
            *self.picks.entry(*pick).or_default() += 1;
        }
        for name in old.tables.keys() {
            self.tables.entry(name.clone()).or_default().0 -= 1;
        }
        for (name, table) in &new.tables {
            let entry = self.tables.entry(name.clone()).or_default();
            entry.0 += 1;
            entry.1 = Some(table.clone());
        }
        for chain_name in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
            self.flush_removed.push(Op::FlushChain(chain_name.clone()));
            self.delete_chains.push(Op::DeleteChain(chain_name.clone()));
        }
        for set_name in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
            self.delete_sets.push(Op::DeleteSet(set_name.clone()));
        }
    }

    /// The data the kernel will hold for an element its first claimant after the plan
    /// renders.
    fn data_after(&mut self, name: &ServicePortName, key: &(SetName, Key)) -> Option<Data> {
        match self.changed.get(name) {
            Some(new) => new.as_ref().and_then(|(_, o)| o.elements.get(key)).cloned().flatten(),
            None => self.committed_data(name, key),
        }
    }

    /// Appends the operations; returns what to record once the transaction is committed.
    pub(crate) fn emit(mut self, tx: &mut Transaction) -> Update {
        let committed = self.committed;
        let picks = self.emit_picks(&committed.picks);
        let tables = self.emit_tables(&committed.tables);
        let mut claims = Claims::default();
        for (key, Touched { held: before, claims: after, rendered }) in std::mem::take(&mut self.elements) {
            let now = after.first().map(|first| match &rendered {
                Some((rules, data)) if &rules.name == first => data.clone(),
                _ => self.data_after(&first.clone(), &key),
            });
            if now != before {
                if before.is_some() {
                    self.delete_elements.entry(key.0).or_default().push(key.1);
                }
                if let Some(data) = now {
                    self.add_elements.entry(key.0).or_default().push((key.1, data));
                }
            }
            claims.insert(key, after);
        }
        tx.ops.extend(self.pre_flush);
        tx.ops.extend(self.redefine);
        tx.ops.extend(self.add_sets);
        tx.ops.extend(self.add_chains);
        tx.ops.extend(self.rewrite);
        for (set, keys) in self.delete_elements {
            tx.push(Op::DeleteElements(set.to_string(), keys));
        }
        for (set, elements) in self.add_elements {
            tx.push(Op::AddElements(set.to_string(), elements));
        }
        tx.ops.extend(self.table_elements);
        tx.ops.extend(self.flush_removed);
        tx.ops.extend(self.delete_chains);
        tx.ops.extend(self.delete_sets);
        let ports = self
            .changed
            .into_iter()
            .map(|(name, new)| match new {
                Some((rules, objects)) => (name, Some(rules), owned_part(&objects)),
                None => (name, None, None),
            })
            .collect();
        Update { claims, picks, tables, ports }
    }

    /// The shared Maglev tables: created when a first port uses one, removed after the
    /// last; a changed table rewrites only the slots whose owner moved, unless its size
    /// changed (then its map is defined again) — and its chain only if its rules did.
    /// Returns the touched tables' records, O(changes) like the rest of the plan.
    fn emit_tables(&mut self, committed: &HashMap<String, TableRecord>) -> Vec<(String, Option<TableRecord>)> {
        let seed = self.committed.context.maglev_seed;
        let mut tables = Vec::new();
        for (name, (delta, new)) in std::mem::take(&mut self.tables) {
            let before = committed.get(&name);
            let users =
                before.map_or(0, |r| r.users).checked_add_signed(delta).expect("table users never go below zero");
            let Some(table) = new.or_else(|| before.map(|r| r.table.clone())) else { continue };
            match before {
                _ if users == 0 => {
                    if before.is_some() {
                        tables.push((name.clone(), None));
                        self.flush_removed.push(Op::FlushChain(name.clone()));
                        self.delete_chains.push(Op::DeleteChain(name.clone()));
                        self.delete_sets.push(Op::DeleteSet(name.clone()));
                    }
                    continue;
                }
                None => {
                    self.add_sets.push(Op::AddSet(name.clone(), shared::map_definition(&table)));
                    self.add_chains.push(Op::AddChain(name.clone(), None));
                    self.rewrite
                        .extend(shared::chain(&table, seed).rules.into_iter().map(|r| Op::AddRule(name.clone(), r)));
                    self.table_elements.push(Op::AddElements(name.clone(), shared::elements(&table).collect()));
                }
                Some(old) if Arc::ptr_eq(&old.table, &table) || *old.table == *table => {}
                Some(old) => self.change_table(&name, &old.table, &table, seed),
            }
            tables.push((name, Some(TableRecord { table, users })));
        }
        tables
    }

    /// Takes a shared table in the kernel from `old` to `new`.
    fn change_table(&mut self, name: &str, old: &SharedTable, new: &SharedTable, seed: u32) {
        let rules = shared::chain(new, seed).rules;
        if old.table.size != new.table.size {
            // A new size is a new map definition: empty the chain that refers to the
            // map, define the map again, refill both.
            self.pre_flush.push(Op::FlushChain(name.to_string()));
            self.redefine.push(Op::DeleteSet(name.to_string()));
            self.add_sets.push(Op::AddSet(name.to_string(), shared::map_definition(new)));
            self.rewrite.extend(rules.into_iter().map(|r| Op::AddRule(name.to_string(), r)));
            self.table_elements.push(Op::AddElements(name.to_string(), shared::elements(new).collect()));
            return;
        }
        if shared::chain(old, seed).rules != rules {
            self.rewrite.push(Op::FlushChain(name.to_string()));
            self.rewrite.extend(rules.into_iter().map(|r| Op::AddRule(name.to_string(), r)));
        }
        let moved: Vec<(u32, IpAddr)> = old
            .owners()
            .zip(new.owners())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(slot, (_, b))| (slot as u32, b))
            .collect();
        if !moved.is_empty() {
            let keys = moved.iter().map(|(slot, _)| Key::Slot(*slot)).collect();
            self.table_elements.push(Op::DeleteElements(name.to_string(), keys));
            let elements = moved.iter().map(|(slot, ip)| (Key::Slot(*slot), Some(Data::Addr(*ip)))).collect();
            self.table_elements.push(Op::AddElements(name.to_string(), elements));
        }
    }

    /// The `pick-…` rules: one is added when an endpoint count is used for the first time,
    /// and deleted when it is no longer used. A new rule goes right after the one for the
    /// next smaller count, so the chain stays in the order a full sync writes. Adding or
    /// deleting single rules keeps the chain's other rules bound to the endpoint map; a
    /// flushed chain would make the kernel re-check every element of the map when the
    /// first rule binds it again. That rewrite happens only when a handle is unknown or
    /// two counts appear in one chain at once.
    fn emit_picks(&mut self, committed: &BTreeMap<Pick, PickRule>) -> BTreeMap<Pick, PickRule> {
        let mut picks = committed.clone();
        let mut added: BTreeMap<&'static str, Vec<Pick>> = BTreeMap::new();
        let mut deleted: BTreeMap<&'static str, Vec<Option<u64>>> = BTreeMap::new();
        for (pick, delta) in std::mem::take(&mut self.picks) {
            let before = picks.get(&pick).map_or(0, |r| r.users);
            let after = before.checked_add_signed(delta).expect("pick counts never go below zero");
            match (before > 0, after > 0) {
                (false, true) => added.entry(pick.chain).or_default().push(pick),
                (true, false) => deleted.entry(pick.chain).or_default().push(picks[&pick].handle),
                _ => {}
            }
            if after == 0 {
                picks.remove(&pick);
            } else {
                picks.entry(pick).or_default().users = after;
            }
        }
        // Each endpoint count has its own map, there while any rule looks it up.
        let maps = |picks: &BTreeMap<Pick, PickRule>| -> BTreeMap<SetName, Pick> {
            picks.keys().map(|p| (p.map(), *p)).collect()
        };
        let (maps_before, maps_after) = (maps(committed), maps(&picks));
        for (name, pick) in &maps_after {
            if !maps_before.contains_key(name) {
                self.add_sets.push(Op::AddSet(name.to_string(), pick.map_definition()));
            }
        }
        for name in maps_before.keys().filter(|m| !maps_after.contains_key(*m)) {
            self.delete_sets.push(Op::DeleteSet(name.to_string()));
        }
        let chains: BTreeSet<&'static str> = added.keys().chain(deleted.keys()).copied().collect();
        for chain in chains {
            let new = added.remove(chain).unwrap_or_default();
            let gone = deleted.remove(chain).unwrap_or_default();
            // Where each new rule goes: after its predecessor in the chain, if any.
            let placed: Option<Vec<(Pick, Option<u64>)>> = new
                .iter()
                .map(|p| {
                    let before = picks.range(..*p).rev().find(|(q, _)| q.chain == chain);
                    match before {
                        None => Some((*p, None)),
                        Some((q, _)) if new.contains(q) => None,
                        Some((_, rule)) => rule.handle.map(|h| (*p, Some(h))),
                    }
                })
                .collect();
            let handles: Option<Vec<u64>> = gone.into_iter().collect();
            match (placed, handles) {
                (Some(placed), Some(handles)) if placed.len() <= 1 => {
                    self.rewrite.extend(handles.into_iter().map(|h| Op::DeleteRule(chain.to_string(), h)));
                    for (pick, after) in placed {
                        self.rewrite.push(Op::InsertRule(chain.to_string(), pick.rule(), after));
                    }
                }
                _ => {
                    self.rewrite.push(Op::FlushChain(chain.to_string()));
                    for (_, rule) in picks.iter_mut().filter(|(p, _)| p.chain == chain) {
                        rule.handle = None;
                    }
                    for rule in render::pick_chain_rules(chain, picks.keys()) {
                        self.rewrite.push(Op::AddRule(chain.to_string(), rule));
                    }
                }
            }
        }
        picks
    }
}

/// One key of two element maps, with its data in each (`None`: absent there).
type Merged<'m> = (&'m (SetName, Key), Option<&'m Option<Data>>, Option<&'m Option<Data>>);

/// The keys of two sorted element maps, each with its data on either side, in key order.
fn merge<'m>(
    old: &'m BTreeMap<(SetName, Key), Option<Data>>,
    new: &'m BTreeMap<(SetName, Key), Option<Data>>,
) -> impl Iterator<Item = Merged<'m>> {
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    std::iter::from_fn(move || match (old.peek(), new.peek()) {
        (None, None) => None,
        (Some(_), None) => old.next().map(|(k, d)| (k, Some(d), None)),
        (None, Some(_)) => new.next().map(|(k, d)| (k, None, Some(d))),
        (Some((a, _)), Some((b, _))) => match a.cmp(b) {
            std::cmp::Ordering::Less => old.next().map(|(k, d)| (k, Some(d), None)),
            std::cmp::Ordering::Greater => new.next().map(|(k, d)| (k, None, Some(d))),
            std::cmp::Ordering::Equal => {
                let (k, before) = old.next().expect("peeked");
                let (_, after) = new.next().expect("peeked");
                Some((k, Some(before), Some(after)))
            }
        },
    })
}
