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

use proxy_core::{Backend, Changes, Desired, IpFamily, SyncStats};

use crate::committed::{Claimants, Committed, owned_part};
use crate::error::Error;
use crate::netlink::{self, socket::Socket};
use crate::partial::PortPlan;
use crate::render::{self, Pick};
use crate::ruleset::Ruleset;
use crate::tx::{Gathered, Op, OpCounts, Transaction};

/// The default table name.
pub const DEFAULT_TABLE: &str = "kproxy";

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
            .map(|(family, ruleset)| Transaction::replace(*family, &self.table, ruleset, Gathered::default()))
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
    let before: HashMap<&String, &crate::ruleset::Set> = previous.owned.values().flat_map(|p| p.sets.iter()).collect();
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
        let echoed = echoed_picks(&txs, &self.last_handles);
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

impl netlink::monitor::Committer for NftBackend {
    fn current_generation(&mut self) -> Result<u32, Error> {
        NftBackend::current_generation(self)
    }

    fn commits(&self) -> u64 {
        NftBackend::commits(self)
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
