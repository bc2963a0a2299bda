//! [`NftBackend`]: proxy-core's [`Backend`] over nftables.
//!
//! A full sync replaces each family's table atomically: `add table`, `delete table`,
//! then everything, in one batch per family. Each family commits on its own, as
//! upstream's per-family proxiers do: a family whose table cannot be written (a kernel
//! without IPv6, a fault) fails alone, and the other family's rules still go in.
//!
//! A partial sync touches only the changed service ports. It diffs their rendered objects against those of an in-memory
//! record of what was committed, so it never lists the kernel. The record keeps the rules
//! each port was rendered from (shared with the caller's desired state) and renders them
//! again when needed, not the objects themselves. It is updated only after the kernel
//! accepted the batch, so a failed batch leaves both the kernel and the record as they
//! were.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};

use nft_client::ruleset::{Set, SetName};
use nft_client::tx::{Gathered, Op, Transaction};
use nft_client::{Client, Commit, Error, netlink};
use proxy_core::diff::FamilyChanges;
use proxy_core::{Backend, Changes, Desired, FamilyRules, IpFamily, SyncStats};

use crate::committed::{Claimants, Committed, TableRecord, owned_part};
use crate::partial::PortPlan;
use crate::render::{self, Pick};

/// A `pick-…` rule the kernel echoed back with its handle: (family, pick, handle).
type Echoed = (IpFamily, Pick, u64);

#[derive(Debug)]
struct FamilyState {
    committed: Option<Committed>,
    /// Whether the next full sync must replace the table (its contents unknown: at start,
    /// and after a failed transaction) rather than refresh it in place.
    replace_next: bool,
    /// Whether the family's last transaction failed.
    failed: bool,
}

impl Default for FamilyState {
    fn default() -> Self {
        FamilyState { committed: None, replace_next: true, failed: false }
    }
}

/// The nftables backend. It commits to the kernel through a [`Client`], or to any other
/// [`Commit`] (the [`Model`](nft_client::model::Model) in tests).
pub struct NftBackend<K: Commit = Client> {
    table: String,
    client: K,
    families: [FamilyState; 2],
}

impl NftBackend {
    /// A backend writing to table `table` (in families `ip` and `ip6`) in the kernel.
    pub fn new(table: &str) -> NftBackend {
        NftBackend::with(table, Client::new())
    }

    /// Opens the netlink socket now (instead of at the first sync) and returns its port
    /// id, so a drift monitor can tell our changes from others' from the start.
    pub fn connect(&mut self) -> Result<u32, Error> {
        self.client.connect()
    }
}

impl<K: Commit> NftBackend<K> {
    /// A backend writing to table `table` through `client`.
    pub fn with(table: &str, client: K) -> NftBackend<K> {
        NftBackend { table: table.to_string(), client, families: Default::default() }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Where the transactions go: the nftables client (its generation, commits, port id and
    /// last transaction), or the model.
    pub fn client(&self) -> &K {
        &self.client
    }

    /// Whether `family`'s last transaction failed: after a failed sync, which family it was
    /// (the other's commit stands).
    pub fn failed(&self, family: IpFamily) -> bool {
        self.families[family.index()].failed
    }

    /// The client, to change: a test injects faults into the model through it.
    pub fn client_mut(&mut self) -> &mut K {
        &mut self.client
    }

    /// Commits one family's transaction; after a failure the kernel's contents are
    /// unknown to us, so the family's next full sync replaces its table.
    fn commit(&mut self, tx: Transaction) -> Result<(usize, Vec<Echoed>), Error> {
        let family = tx.family;
        self.families[family.index()].replace_next = true;
        let txs = [tx];
        let result = self.client.commit(&txs);
        self.families[family.index()].replace_next = result.is_err();
        self.families[family.index()].failed = result.is_err();
        result.map(|operations| (operations, echoed_picks(&txs, self.client.last_handles())))
    }

    /// Renders the full rule set of every family as nft text (`kproxy plan`).
    pub fn plan(&mut self, desired: &Desired) -> String {
        let mut out = String::new();
        for rules in desired.families() {
            let ruleset = render::family(&rules.context, &rules.service_ports);
            out.push_str(&nft_client::text::table(rules.context.family, &self.table, &ruleset));
        }
        out
    }
}

/// Whether a set of `previous` has another definition in `next`: an affinity set, or a
/// shared Maglev table of another size.
fn redefines_sets(previous: &Committed, next: &Committed) -> bool {
    let before: HashMap<&String, &Set> = previous.owned.values().flat_map(|p| p.sets.iter()).collect();
    let affinity = next
        .owned
        .values()
        .flat_map(|p| p.sets.iter())
        .any(|(name, set)| before.get(name).is_some_and(|b| !b.same_definition(set)));
    let tables = next
        .tables
        .iter()
        .any(|(name, t)| previous.tables.get(name).is_some_and(|before| before.table.table.size != t.table.table.size));
    affinity || tables
}

/// Chains and sets of `previous` that `next` no longer has: those of service ports, and
/// endpoint maps of counts no longer in use.
fn stale(previous: &Committed, next: &Committed) -> (Vec<String>, Vec<String>) {
    let keep_chains: HashSet<&String> = next.owned.values().flat_map(|p| p.chains.keys()).collect();
    let keep_sets: HashSet<&String> = next.owned.values().flat_map(|p| p.sets.keys()).collect();
    let mut chains: Vec<String> =
        previous.owned.values().flat_map(|p| p.chains.keys()).filter(|c| !keep_chains.contains(c)).cloned().collect();
    let mut sets: Vec<String> =
        previous.owned.values().flat_map(|p| p.sets.keys()).filter(|s| !keep_sets.contains(s)).cloned().collect();
    let keep_maps: HashSet<SetName> = next.picks.keys().map(Pick::map).collect();
    sets.extend(previous.picks.keys().map(Pick::map).filter(|m| !keep_maps.contains(m)).map(|m| m.to_string()));
    // A shared Maglev table is a chain and a map of one name.
    let gone = previous.tables.keys().filter(|t| !next.tables.contains_key(*t));
    for table in gone {
        chains.push(table.clone());
        sets.push(table.clone());
    }
    chains.sort();
    chains.dedup();
    sets.sort();
    sets.dedup();
    (chains, sets)
}

/// The `pick-…` rules the last transaction added, with the handles the kernel gave them.
fn echoed_picks(txs: &[Transaction], handles: &[(usize, u64)]) -> Vec<Echoed> {
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

impl<K: Commit> Backend for NftBackend<K> {
    type Error = Error;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, Error> {
        let mut outcome = Outcome::default();
        for rules in desired.families() {
            let result = self.full_family(rules);
            outcome.add(result);
        }
        outcome.stats(true)
    }

    fn sync_partial(&mut self, changes: &Changes, desired: &Desired) -> Result<SyncStats, Error> {
        let mut outcome = Outcome::default();
        let mut full = false;
        for family in IpFamily::ALL {
            let fc = changes.family(family);
            // A family without a record (none yet), whose last transaction failed (the
            // changes it carried are lost to the record) or with a new context gets a full
            // sync of its own; the other family stays partial.
            let state = &self.families[family.index()];
            if fc.context.is_some() || state.committed.is_none() || state.failed {
                full = true;
                let result = self.full_family(desired.family(family));
                outcome.add(result);
            } else if !fc.service_ports.is_empty() {
                let result = self.partial_family(family, fc);
                outcome.add(result);
            }
        }
        outcome.stats(full)
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        for family in IpFamily::ALL {
            self.commit(Transaction::delete_table(family, &self.table))?;
            self.families[family.index()] = FamilyState::default();
        }
        Ok(())
    }

    /// A family whose last transaction failed gets a full sync of its own at the next
    /// partial sync; the other family stays partial.
    fn full_after_failure(&self) -> bool {
        false
    }
}

/// The result of a sync over both families: the operations committed, and the first
/// failure (the other family's commit stands).
#[derive(Default)]
struct Outcome {
    operations: usize,
    error: Option<Error>,
}

impl Outcome {
    fn add(&mut self, result: Result<usize, Error>) {
        match result {
            Ok(n) => self.operations += n,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    fn stats(self, full: bool) -> Result<SyncStats, Error> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(SyncStats { full, operations: self.operations }),
        }
    }
}

impl<K: Commit> NftBackend<K> {
    /// Replaces (or refreshes in place) one family's table with its desired rules.
    fn full_family(&mut self, rules: &FamilyRules) -> Result<usize, Error> {
        let family = rules.context.family;
        let mut committed = Committed::new(rules.context.clone());
        let mut gathered = Gathered::default();
        // In name order: the first claimant of an element is the one the kernel holds,
        // as in `PortPlan`.
        for r in rules.service_ports.values() {
            let objects = render::service_port(r, &rules.context);
            for pick in &objects.picks {
                committed.picks.entry(*pick).or_default().users += 1;
            }
            for (name, table) in &objects.tables {
                let record = committed.tables.entry(name.clone());
                record.or_insert_with(|| TableRecord { table: table.clone(), users: 0 }).users += 1;
            }
            if let Some(owned) = owned_part(&objects) {
                committed.owned.insert(r.name.clone(), owned);
            }
            gathered.own(objects.chains, objects.sets);
            for ((set, key), data) in objects.elements {
                match committed.claims.entry((set, key)) {
                    Entry::Vacant(v) => {
                        v.insert(Claimants::One(r.clone()));
                        gathered.element(set, key, data);
                    }
                    Entry::Occupied(mut o) => o.get_mut().insert(r),
                }
            }
            committed.ports.insert(r.name.clone(), r.clone());
        }
        let picks: BTreeSet<Pick> = committed.picks.keys().copied().collect();
        let mut skeleton = render::skeleton(&rules.context, &picks);
        let tables = committed.tables.iter().map(|(name, r)| (name.clone(), r.table.clone())).collect();
        render::shared_tables(&mut skeleton, &tables, rules.context.maglev_seed);
        // A set redefined in place would be refused, so a redefinition (an affinity
        // timeout change arriving with a full sync) means a replace.
        // The previous record is only needed for the names of stale objects: let it go
        // before the transaction is built (peak memory). If the commit fails, the next
        // full sync replaces anyway.
        let state = &mut self.families[family.index()];
        let previous = state.committed.take();
        let stale = previous
            .filter(|previous| !state.replace_next && !redefines_sets(previous, &committed))
            .map(|previous| stale(&previous, &committed));
        let tx = match stale {
            None => Transaction::replace(family, &self.table, &skeleton, gathered),
            Some((chains, sets)) => Transaction::refresh(family, &self.table, &skeleton, gathered, &chains, &sets),
        };
        let (operations, echoed) = self.commit(tx)?;
        for (_, pick, handle) in echoed {
            if let Some(rule) = committed.picks.get_mut(&pick) {
                rule.handle = Some(handle);
            }
        }
        self.families[family.index()].committed = Some(committed);
        Ok(operations)
    }

    /// Applies one family's changed service ports against its committed record.
    fn partial_family(&mut self, family: IpFamily, fc: &FamilyChanges) -> Result<usize, Error> {
        let committed = self.families[family.index()].committed.as_ref().expect("checked by the caller");
        let mut plan = PortPlan::new(committed);
        for (name, change) in &fc.service_ports {
            plan.port(name, change.new_rules());
        }
        let mut tx = Transaction::new(family, &self.table);
        let mut update = plan.emit(&mut tx);
        let (operations, echoed) = self.commit(tx)?;
        for (_, pick, handle) in echoed {
            if let Some(rule) = update.picks.get_mut(&pick) {
                rule.handle = Some(handle);
            }
        }
        let committed = self.families[family.index()].committed.as_mut().expect("checked by the caller");
        committed.picks = update.picks;
        for (name, record) in update.tables {
            match record {
                Some(r) => committed.tables.insert(name, r),
                None => committed.tables.remove(&name),
            };
        }
        for (key, claimants) in update.claims {
            if claimants.is_empty() {
                committed.claims.remove(&key);
            } else {
                committed.claims.insert(key, claimants);
            }
        }
        for (name, rules, owned) in update.ports {
            match rules {
                Some(r) => committed.ports.insert(name.clone(), r),
                None => committed.ports.remove(&name),
            };
            match owned {
                Some(o) => committed.owned.insert(name, o),
                None => committed.owned.remove(&name),
            };
        }
        Ok(operations)
    }
}

impl netlink::monitor::Committer for NftBackend {
    fn current_generation(&mut self) -> Result<u32, Error> {
        self.client.current_generation()
    }

    fn commits(&self) -> u64 {
        self.client.commits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::{Protocol, ServicePortName, ServicePortRules};
    use std::sync::Arc;

    fn name(service: &str) -> ServicePortName {
        ServicePortName::new("ns", service, "p", Protocol::Tcp)
    }

    fn rules(service: &str) -> Arc<ServicePortRules> {
        Arc::new(ServicePortRules {
            name: name(service),
            cluster_ip: "10.96.0.1".parse().unwrap(),
            port: 80,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            firewall: None,
            affinity_timeout: None,
            maglev: None,
            internal_policy_local: false,
            external_policy_local: false,
            has_endpoints: false,
            cluster_endpoints: Vec::new(),
            local_endpoints: Vec::new(),
            health_check_node_port: None,
            local_ready: Vec::new(),
            serving: Vec::new(),
        })
    }

    /// Claims in any order leave the first in name order in front; removals hand the
    /// element to the next, and an element nobody claims is empty.
    #[test]
    fn claimants_keep_name_order_whatever_the_order_of_claims() {
        type Step = (&'static str, bool);
        let cases: [(&[Step], Option<&str>, usize); 6] = [
            (&[("b", true)], Some("b"), 1),
            (&[("b", true), ("a", true)], Some("a"), 2),
            (&[("b", true), ("a", true), ("c", true), ("a", true)], Some("a"), 3),
            (&[("b", true), ("a", true), ("a", false)], Some("b"), 1),
            (&[("b", true), ("c", true), ("a", true), ("b", false), ("a", false)], Some("c"), 1),
            (&[("a", true), ("b", false), ("a", false)], None, 0),
        ];
        for (steps, first, count) in cases {
            let mut claims = Claimants::default();
            for (service, claim) in steps {
                if *claim { claims.insert(&rules(service)) } else { claims.remove(&name(service)) }
            }
            assert_eq!(claims.first(), first.map(name).as_ref(), "{steps:?}");
            assert_eq!(claims.is_empty(), first.is_none(), "{steps:?}");
            let held = match &claims {
                Claimants::None => 0,
                Claimants::One(_) => 1,
                Claimants::Many(all) => all.len(),
            };
            assert_eq!(held, count, "{steps:?}");
            if let Claimants::Many(all) = &claims {
                assert!(all.is_sorted_by(|a, b| a.name <= b.name), "{steps:?}");
            }
        }
    }

    /// A port's renewed claim holds its newest rules, so that old rules are not kept alive
    /// by elements that did not change.
    #[test]
    fn a_renewed_claim_holds_the_newest_rules() {
        let (old, new) = (rules("a"), rules("a"));
        let mut one = Claimants::default();
        one.insert(&old);
        one.insert(&new);
        assert!(matches!(&one, Claimants::One(r) if Arc::ptr_eq(r, &new)));
        let mut many = Claimants::default();
        many.insert(&rules("b"));
        many.insert(&old);
        many.insert(&new);
        assert!(matches!(&many, Claimants::Many(all) if all.len() == 2 && Arc::ptr_eq(&all[0], &new)));
        assert_eq!(Arc::strong_count(&old), 1, "nothing holds the old rules any more");
        assert_eq!(std::mem::size_of::<Claimants>(), 16);
    }
}
