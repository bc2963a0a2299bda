//! [`NftBackend`]: proxy-core's [`Backend`] over nftables.
//!
//! A full sync replaces each family's table atomically: `add table`, `delete table`,
//! then everything, in one batch with both families. A partial sync touches only the
//! changed service ports. It diffs their rendered objects against those of an in-memory
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
use proxy_core::{Backend, Changes, Desired, IpFamily, SyncStats};

use crate::committed::{Claimants, Committed, owned_part};
use crate::partial::PortPlan;
use crate::render::{self, Pick};

#[derive(Debug, Default)]
struct FamilyState {
    committed: Option<Committed>,
}

/// The nftables backend. It commits to the kernel through a [`Client`], or to any other
/// [`Commit`] (the [`Model`](nft_client::model::Model) in tests).
pub struct NftBackend<K: Commit = Client> {
    table: String,
    client: K,
    families: [FamilyState; 2],
    /// Whether the next full sync must replace the tables (their contents unknown: at
    /// start, and after any failed transaction) rather than refresh them in place.
    replace_next: bool,
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
        NftBackend { table: table.to_string(), client, families: Default::default(), replace_next: true }
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

    /// Commits the transactions; after a failure the kernel's contents are unknown to us,
    /// so the next full sync replaces the tables.
    fn commit(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        self.replace_next = true;
        let result = self.client.commit(txs);
        self.replace_next = result.is_err();
        result
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

/// Whether a set of `previous` has another definition in `next`.
fn redefines_sets(previous: &Committed, next: &Committed) -> bool {
    let before: HashMap<&String, &Set> = previous.owned.values().flat_map(|p| p.sets.iter()).collect();
    next.owned
        .values()
        .flat_map(|p| p.sets.iter())
        .any(|(name, set)| before.get(name).is_some_and(|b| !b.same_definition(set)))
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

impl<K: Commit> Backend for NftBackend<K> {
    type Error = Error;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, Error> {
        let mut txs = Vec::new();
        let mut records = Vec::new();
        for rules in desired.families() {
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
            let skeleton = render::skeleton(&rules.context, &picks);
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
                None => Transaction::replace(family, &self.table, &skeleton, gathered),
                Some((chains, sets)) => Transaction::refresh(family, &self.table, &skeleton, gathered, &chains, &sets),
            });
            records.push((family, committed));
        }
        let operations = self.commit(&txs)?;
        for (family, pick, handle) in echoed_picks(&txs, self.client.last_handles()) {
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
            let committed = self.families[family.index()].committed.as_ref().expect("checked above");
            let mut plan = PortPlan::new(committed);
            for (name, change) in &fc.service_ports {
                plan.port(name, change.new_rules());
            }
            let mut tx = Transaction::new(family, &self.table);
            let update = plan.emit(&mut tx);
            txs.push(tx);
            updates.push((family, update));
        }
        let operations = self.commit(&txs)?;
        let echoed = echoed_picks(&txs, self.client.last_handles());
        for (family, mut update) in updates {
            for (_, pick, handle) in echoed.iter().filter(|(f, ..)| *f == family) {
                if let Some(rule) = update.picks.get_mut(pick) {
                    rule.handle = Some(*handle);
                }
            }
            let committed = self.families[family.index()].committed.as_mut().expect("checked above");
            committed.picks = update.picks;
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
        }
        Ok(SyncStats { full: false, operations })
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        for family in IpFamily::ALL {
            self.commit(&[Transaction::delete_table(family, &self.table)])?;
            self.families[family.index()] = FamilyState::default();
            self.replace_next = true;
        }
        Ok(())
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
