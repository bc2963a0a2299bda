//! [`NftBackend`]: proxy-core's [`Backend`] over nftables.
//!
//! A full sync replaces each family's table atomically: `add table`, `delete table`,
//! then everything, in one batch with both families. A partial sync touches only the
//! changed service ports. It diffs their rendered objects against an in-memory record of
//! what was committed, so it never lists the kernel. The record is updated only after the
//! kernel accepted the batch, so a failed batch leaves both the kernel and the record as
//! they were.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proxy_core::{Backend, Changes, Desired, IpFamily, ServicePortName, SyncStats};

use crate::error::Error;
use crate::netlink::{self, socket::Socket};
use crate::render::{self, Pick, PortObjects};
use crate::ruleset::{Data, Key, Ruleset};
use crate::tx::{Op, OpCounts, Transaction};

/// The default table name.
pub const DEFAULT_TABLE: &str = "kproxy";

/// Claims on shared elements: per (set, key), each claimant's data. The kernel holds the
/// first claimant's, in name order, as a full sync resolves conflicts; when it lets go,
/// the next claimant's takes its place.
type Claims = HashMap<(&'static str, Key), Claimants>;

/// The claims on one element: (claimant, data), in claimant name order. Nearly every
/// element has exactly one claimant, so this is a vector, not a map: a one-entry `BTreeMap`
/// allocates a node for eleven, and there are several elements per service port.
#[derive(Clone, Debug, Default)]
struct Claimants(Vec<(ServicePortName, Option<Data>)>);

impl Claimants {
    fn insert(&mut self, name: ServicePortName, data: Option<Data>) {
        match self.0.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(i) => self.0[i].1 = data,
            Err(i) => self.0.insert(i, (name, data)),
        }
    }

    fn remove(&mut self, name: &ServicePortName) {
        if let Ok(i) = self.0.binary_search_by(|(n, _)| n.cmp(name)) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the kernel holds for an element: absent, or present with this data.
type Held = Option<Option<Data>>;

/// The data the kernel holds for an element, if any service port claims it.
fn effective(claims: &Claimants) -> Held {
    claims.0.first().map(|(_, data)| data.clone())
}

/// What was committed for one family.
#[derive(Debug, Default)]
struct Committed {
    /// Objects of each service port, as last committed.
    ports: HashMap<ServicePortName, PortObjects>,
    /// Every service port's claim on each shared element.
    claims: Claims,
    /// The `pick-…` rules in the kernel.
    picks: BTreeMap<Pick, PickRule>,
}

/// A `pick-…` rule in the kernel.
#[derive(Clone, Copy, Debug, Default)]
struct PickRule {
    /// How many service ports need it.
    users: usize,
    /// Its handle, as the kernel echoed it; unknown after a batch sent in parts.
    handle: Option<u64>,
}

#[derive(Debug, Default)]
struct FamilyState {
    committed: Option<Committed>,
}

/// The nftables backend.
pub struct NftBackend {
    table: String,
    socket: Option<Socket>,
    families: [FamilyState; 2],
    generation: Option<u32>,
    /// Successful transactions so far (each bumps the generation by one).
    commits: u64,
    last_transaction_bytes: usize,
    last_counts: OpCounts,
    /// The handles of the rules the last transaction added with an echo request:
    /// (index of the operation over all its transactions, handle).
    last_handles: Vec<(usize, u64)>,
    /// Whether the next full sync must replace the tables (their contents unknown: at
    /// start, and after any failed transaction) rather than refresh them in place.
    replace_next: bool,
}

impl NftBackend {
    /// A backend writing to table `table` (in families `ip` and `ip6`).
    pub fn new(table: &str) -> NftBackend {
        NftBackend {
            table: table.to_string(),
            socket: None,
            families: Default::default(),
            generation: None,
            commits: 0,
            last_transaction_bytes: 0,
            last_counts: OpCounts::default(),
            last_handles: Vec::new(),
            replace_next: true,
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The ruleset generation after our last successful transaction.
    pub fn generation(&self) -> Option<u32> {
        self.generation
    }

    /// The kernel's ruleset generation now (it counts every commit, by anyone).
    pub fn current_generation(&mut self) -> Result<u32, Error> {
        self.socket()?.generation().map_err(Error::Socket)
    }

    /// How many transactions this backend has committed so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The netlink port id our transactions come from (see
    /// [`Monitor`](crate::netlink::monitor::Monitor)), once a socket is open.
    pub fn port_id(&self) -> Option<u32> {
        self.socket.as_ref().map(Socket::port_id)
    }

    /// The size in bytes of the last transaction sent.
    pub fn last_transaction_bytes(&self) -> usize {
        self.last_transaction_bytes
    }

    /// What the last transaction sent did, counted by kind.
    pub fn last_counts(&self) -> OpCounts {
        self.last_counts
    }

    /// Opens the netlink socket now (instead of at the first sync) and returns its port
    /// id, so a drift monitor can tell our changes from others' from the start.
    pub fn connect(&mut self) -> Result<u32, Error> {
        Ok(self.socket()?.port_id())
    }

    fn socket(&mut self) -> Result<&mut Socket, Error> {
        if self.socket.is_none() {
            self.socket = Some(Socket::open().map_err(Error::Socket)?);
        }
        Ok(self.socket.as_mut().expect("just opened"))
    }

    /// Sends the transactions as one batch.
    ///
    /// If the kernel refuses the batch as larger than this socket may send (`EMSGSIZE`:
    /// no `CAP_NET_ADMIN` over the initial user namespace, so the send buffer stops at
    /// `net.core.wmem_max`), the operations are sent in order in several smaller batches
    /// instead, with a warning: each part is atomic, the whole is not.
    fn commit(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        let ops: usize = txs.iter().map(|t| t.ops.len()).sum();
        if ops == 0 {
            return Ok(0);
        }
        self.last_counts = OpCounts::default();
        self.last_handles.clear();
        for tx in txs {
            self.last_counts += tx.counts();
        }
        // After a failure the kernel's contents are unknown: the next full sync replaces.
        self.replace_next = true;
        let result = self.commit_unchecked(txs);
        self.replace_next = result.is_err();
        result
    }

    fn commit_unchecked(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        match self.commit_batch(txs) {
            Err(Error::Socket(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                tracing::warn!(
                    bytes = self.last_transaction_bytes,
                    "transaction exceeds the socket send buffer (net.core.wmem_max); sending it in parts, \
                     which is not atomic: run as root in the initial user namespace to avoid this"
                );
                let mut messages = 0;
                for tx in txs {
                    messages += self.commit_in_parts(tx, &tx.ops)?;
                }
                // Operation indices of the parts do not map back: rule handles stay unknown.
                self.last_handles.clear();
                Ok(messages)
            }
            other => other,
        }
    }

    /// Sends `ops` of `tx` in order, halving the parts until each fits.
    fn commit_in_parts(&mut self, tx: &Transaction, ops: &[Op]) -> Result<usize, Error> {
        let part = Transaction { family: tx.family, table: tx.table.clone(), ops: ops.to_vec() };
        match self.commit_batch(std::slice::from_ref(&part)) {
            Err(Error::Socket(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) && ops.len() > 1 => {
                let (first, second) = ops.split_at(ops.len() / 2);
                Ok(self.commit_in_parts(tx, first)? + self.commit_in_parts(tx, second)?)
            }
            other => other,
        }
    }

    fn commit_batch(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        let encoded = netlink::encode(txs);
        self.last_transaction_bytes = encoded.bytes;
        let outcome = self.socket()?.send(&encoded).map_err(Error::Socket)?;
        if let Some(first) = outcome.errors.first() {
            let failed = encoded.seqs.iter().find(|(seq, _)| *seq == first.seq).map(|(_, op)| *op);
            let op = failed.and_then(|i| op_at(txs, i)).unwrap_or_else(|| "(unknown message)".into());
            return Err(Error::Transaction {
                errno: first.errno,
                detail: first.detail.clone(),
                op,
                errors: outcome.errors.len(),
            });
        }
        self.generation = Some(outcome.generation);
        self.commits += 1;
        for (seq, handle) in outcome.rule_handles {
            if let Some((_, op)) = encoded.seqs.iter().find(|(s, _)| *s == seq) {
                self.last_handles.push((*op, handle));
            }
        }
        Ok(encoded.messages)
    }

    /// Replaces this backend's table in each given family with `ruleset`, atomically (one
    /// batch): for other backends that keep a small table of their own (the IPVS backend's
    /// masquerade, reject and firewall rules). Returns the netlink messages sent.
    pub fn replace_tables(&mut self, rulesets: &[(IpFamily, &Ruleset)]) -> Result<usize, Error> {
        let txs: Vec<Transaction> = rulesets
            .iter()
            .map(|(family, ruleset)| Transaction::replace(*family, &self.table, ruleset, std::iter::empty()))
            .collect();
        let sent = self.commit(&txs)?;
        // The table no longer holds what a full or partial sync of ours would expect.
        self.families = Default::default();
        self.replace_next = true;
        Ok(sent)
    }

    /// Renders the full rule set of every family as nft text (`kproxy plan`).
    pub fn plan(&mut self, desired: &Desired) -> String {
        let mut out = String::new();
        for rules in desired.families() {
            let ruleset = render::family(&rules.context, &rules.service_ports);
            out.push_str(&crate::text::table(rules.context.family, &self.table, &ruleset));
        }
        out
    }
}

/// Whether a set of `previous` has another definition in `next`.
fn redefines_sets(previous: &Committed, next: &Committed) -> bool {
    let before: HashMap<&String, &crate::ruleset::Set> = previous.ports.values().flat_map(|p| p.sets.iter()).collect();
    next.ports
        .values()
        .flat_map(|p| p.sets.iter())
        .any(|(name, set)| before.get(name).is_some_and(|b| !b.same_definition(set)))
}

/// Chains and sets of `previous` that `next` no longer has: those of service ports, and
/// endpoint maps of counts no longer in use.
fn stale(previous: &Committed, next: &Committed) -> (Vec<String>, Vec<String>) {
    let keep_chains: HashSet<&String> = next.ports.values().flat_map(|p| p.chains.keys()).collect();
    let keep_sets: HashSet<&String> = next.ports.values().flat_map(|p| p.sets.keys()).collect();
    let mut chains: Vec<String> =
        previous.ports.values().flat_map(|p| p.chains.keys()).filter(|c| !keep_chains.contains(c)).cloned().collect();
    let mut sets: Vec<String> =
        previous.ports.values().flat_map(|p| p.sets.keys()).filter(|s| !keep_sets.contains(s)).cloned().collect();
    let keep_maps: HashSet<&str> = next.picks.keys().map(Pick::map).collect();
    sets.extend(previous.picks.keys().map(Pick::map).filter(|m| !keep_maps.contains(m)).map(String::from));
    chains.sort();
    chains.dedup();
    sets.sort();
    sets.dedup();
    (chains, sets)
}

/// The `pick-…` rules the last transaction added, with the handles the kernel gave them.
fn echoed_picks(txs: &[Transaction], handles: &[(usize, u64)]) -> Vec<(IpFamily, Pick, u64)> {
    let mut out = Vec::new();
    for (index, handle) in handles {
        let mut i = *index;
        for tx in txs {
            if i < tx.ops.len() {
                if let Op::AddRule(chain, rule) | Op::InsertRule(chain, rule, _) = &tx.ops[i]
                    && let Some(pick) = Pick::of(chain, rule)
                {
                    out.push((tx.family, pick, *handle));
                }
                break;
            }
            i -= tx.ops.len();
        }
    }
    out
}

/// The `nft` command of the operation at a global index over several transactions.
fn op_at(txs: &[Transaction], mut i: usize) -> Option<String> {
    for tx in txs {
        if i < tx.ops.len() {
            let single = Transaction { family: tx.family, table: tx.table.clone(), ops: vec![tx.ops[i].clone()] };
            return Some(single.to_string().lines().next().unwrap_or_default().to_string());
        }
        i -= tx.ops.len();
    }
    None
}

impl Backend for NftBackend {
    type Error = Error;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, Error> {
        let mut txs = Vec::new();
        let mut records = Vec::new();
        for rules in desired.families() {
            let family = rules.context.family;
            let mut committed = Committed::default();
            for r in rules.service_ports.values() {
                let objects = render::service_port(r, &rules.context);
                for (key, data) in &objects.elements {
                    committed.claims.entry(*key).or_default().insert(r.name.clone(), data.clone());
                }
                for pick in &objects.picks {
                    committed.picks.entry(*pick).or_default().users += 1;
                }
                committed.ports.insert(r.name.clone(), objects);
            }
            // In name order, so that conflicting claims resolve as they do in `plan`.
            let picks: BTreeSet<Pick> = committed.picks.keys().copied().collect();
            let skeleton = render::skeleton(&rules.context, &picks);
            let ordered = rules.service_ports.keys().filter_map(|name| committed.ports.get(name));
            // A set redefined in place would be refused, so a redefinition (an affinity
            // timeout change arriving with a full sync) means a replace.
            // The previous record is only needed for the names of stale objects: let it go
            // before the transaction is built (peak memory). If the commit fails, the next
            // full sync replaces anyway.
            let previous = self.families[family.index()].committed.take();
            let stale = previous
                .filter(|previous| !self.replace_next && !redefines_sets(previous, &committed))
                .map(|previous| stale(&previous, &committed));
            txs.push(match stale {
                None => Transaction::replace(family, &self.table, &skeleton, ordered),
                Some((chains, sets)) => Transaction::refresh(family, &self.table, &skeleton, ordered, &chains, &sets),
            });
            records.push((family, committed));
        }
        let operations = self.commit(&txs)?;
        for (family, pick, handle) in echoed_picks(&txs, &self.last_handles) {
            if let Some((_, committed)) = records.iter_mut().find(|(f, _)| *f == family)
                && let Some(rule) = committed.picks.get_mut(&pick)
            {
                rule.handle = Some(handle);
            }
        }
        for (family, committed) in records {
            self.families[family.index()].committed = Some(committed);
        }
        Ok(SyncStats { full: true, operations })
    }

    fn sync_partial(&mut self, changes: &Changes, desired: &Desired) -> Result<SyncStats, Error> {
        if IpFamily::ALL
            .iter()
            .any(|f| changes.family(*f).context.is_some() || self.families[f.index()].committed.is_none())
        {
            return self.sync_full(desired);
        }
        let mut txs = Vec::new();
        let mut updates = Vec::new();
        for family in IpFamily::ALL {
            let fc = changes.family(family);
            if fc.service_ports.is_empty() {
                continue;
            }
            let ctx = desired.family(family).context.clone();
            let committed = self.families[family.index()].committed.as_ref().expect("checked above");
            let mut plan = PortPlan::default();
            let mut new_objects = Vec::new();
            for (name, change) in &fc.service_ports {
                let new = change.new_rules().map(|r| render::service_port(r, &ctx));
                plan.port(name, committed.ports.get(name), new.as_ref(), &committed.claims);
                new_objects.push((name.clone(), new));
            }
            let mut tx = Transaction::new(family, &self.table);
            let (claims, picks) = plan.emit(&mut tx, &committed.picks);
            txs.push(tx);
            updates.push((family, new_objects, claims, picks));
        }
        let operations = self.commit(&txs)?;
        let echoed = echoed_picks(&txs, &self.last_handles);
        for (family, new_objects, claims, mut picks) in updates {
            for (_, pick, handle) in echoed.iter().filter(|(f, ..)| *f == family) {
                if let Some(rule) = picks.get_mut(pick) {
                    rule.handle = Some(*handle);
                }
            }
            let committed = self.families[family.index()].committed.as_mut().expect("checked above");
            committed.picks = picks;
            for (key, claimants) in claims {
                if claimants.is_empty() {
                    committed.claims.remove(&key);
                } else {
                    committed.claims.insert(key, claimants);
                }
            }
            for (name, objects) in new_objects {
                match objects {
                    Some(o) => committed.ports.insert(name, o),
                    None => committed.ports.remove(&name),
                };
            }
        }
        Ok(SyncStats { full: false, operations })
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        for family in IpFamily::ALL {
            // `add` then `delete`: removes the table whether or not it exists.
            let mut tx = Transaction::new(family, &self.table);
            tx.push(Op::AddTable);
            tx.push(Op::DeleteTable);
            self.commit(&[tx])?;
            self.families[family.index()] = FamilyState::default();
            self.replace_next = true;
        }
        Ok(())
    }
}

/// The operations of a partial sync, bucketed so they can be emitted in an order the
/// kernel accepts: new objects before references to them, references removed before the
/// objects they point to.
#[derive(Default)]
struct PortPlan {
    pre_flush: Vec<Op>,
    redefine: Vec<Op>,
    add_sets: Vec<Op>,
    add_chains: Vec<Op>,
    rewrite: Vec<Op>,
    delete_elements: BTreeMap<&'static str, Vec<Key>>,
    add_elements: BTreeMap<&'static str, Vec<(Key, Option<Data>)>>,
    /// Per `pick-…` rule, how many more (or fewer) service ports need it.
    picks: BTreeMap<Pick, isize>,
    flush_removed: Vec<Op>,
    delete_chains: Vec<Op>,
    delete_sets: Vec<Op>,
    /// Shared elements this plan touches: the verdict the kernel holds now, and the
    /// claims after the plan.
    elements: HashMap<(&'static str, Key), (Held, Claimants)>,
}

impl PortPlan {
    fn port(
        &mut self,
        name: &ServicePortName,
        old: Option<&PortObjects>,
        new: Option<&PortObjects>,
        committed: &Claims,
    ) {
        let empty = PortObjects::default();
        let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
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
        for key in old.elements.keys().chain(new.elements.keys()) {
            let (_, claims) = self.elements.entry(*key).or_insert_with(|| {
                let claims = committed.get(key).cloned().unwrap_or_default();
                (effective(&claims), claims)
            });
            match new.elements.get(key) {
                Some(data) => claims.insert(name.clone(), data.clone()),
                None => claims.remove(name),
            }
        }
        for pick in &old.picks {
            *self.picks.entry(*pick).or_default() -= 1;
        }
        for pick in &new.picks {
            *self.picks.entry(*pick).or_default() += 1;
        }
        for chain_name in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
            self.flush_removed.push(Op::FlushChain(chain_name.clone()));
            self.delete_chains.push(Op::DeleteChain(chain_name.clone()));
        }
        for set_name in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
            self.delete_sets.push(Op::DeleteSet(set_name.clone()));
        }
    }

    /// Appends the operations; returns the claims and `pick-…` rules to record once the
    /// transaction is committed.
    fn emit(
        mut self,
        tx: &mut Transaction,
        committed: &BTreeMap<Pick, PickRule>,
    ) -> (Claims, BTreeMap<Pick, PickRule>) {
        let picks = self.emit_picks(committed);
        let mut claims = Claims::new();
        for (key, (before, after)) in self.elements.drain() {
            let now = effective(&after);
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
        tx.ops.extend(self.flush_removed);
        tx.ops.extend(self.delete_chains);
        tx.ops.extend(self.delete_sets);
        (claims, picks)
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
        let maps = |picks: &BTreeMap<Pick, PickRule>| -> BTreeMap<&'static str, Pick> {
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
                    for (pick, rule) in picks.iter_mut().filter(|(p, _)| p.chain == chain) {
                        rule.handle = None;
                        self.rewrite.push(Op::AddRule(chain.to_string(), pick.rule()));
                    }
                }
            }
        }
        picks
    }
}
