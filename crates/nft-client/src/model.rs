//! [`Model`]: nf_tables as data, for tests. It applies [`Transaction`]s with the kernel's
//! rules for what may be added, flushed and deleted, all or nothing, so that a backend's
//! plans can be checked without a kernel (as knftables' fake does for upstream).
//!
//! What it checks, each with the errno the kernel returns:
//! - a chain, set or table that an operation names exists (`ENOENT`), rule handles too;
//! - a rule's `jump`/`goto` target and its sets exist (`ENOENT`), and so do the chains
//!   that verdict elements point at;
//! - an object is added again only with the same definition (`EEXIST`), an element only
//!   with the same data (`EEXIST`);
//! - a chain is deleted, with its rules, only when no other rule or verdict element sends
//!   packets to it, a set only when no rule uses it (`EBUSY`).
//!
//! A failed batch leaves the model as it was, as the kernel does.

use std::collections::BTreeMap;

use proxy_core::IpFamily;

use crate::Error;
use crate::ruleset::{BaseChain, Chain, Data, Rule, Ruleset, Set, Verdict};
use crate::tx::{Op, Transaction};

/// One chain in the model: its definition and its rules with their handles.
#[derive(Clone, Debug, Default)]
struct ModelChain {
    base: Option<BaseChain>,
    rules: Vec<(u64, Rule)>,
}

/// One table.
#[derive(Clone, Debug, Default)]
struct Table {
    chains: BTreeMap<String, ModelChain>,
    sets: BTreeMap<String, Set>,
}

/// nf_tables as data: tables by family and name.
#[derive(Clone, Debug, Default)]
pub struct Model {
    tables: BTreeMap<(IpFamily, String), Table>,
    next_handle: u64,
    commits: u64,
    last_handles: Vec<(usize, u64)>,
    /// Families whose every operation is refused with `EAFNOSUPPORT`, as by a kernel
    /// without that family's nf_tables: a fault for tests to inject.
    refused: Vec<IpFamily>,
}

/// Why one operation failed: the errno and a detail.
type Refused = (i32, String);

impl Model {
    /// An empty ruleset.
    pub fn new() -> Model {
        Model::default()
    }

    /// The table, as a [`Ruleset`] (rules in order, without handles); `None` if absent.
    pub fn table(&self, family: IpFamily, name: &str) -> Option<Ruleset> {
        let table = self.tables.get(&(family, name.to_string()))?;
        let chains = table
            .chains
            .iter()
            .map(|(n, c)| (n.clone(), Chain { base: c.base, rules: c.rules.iter().map(|(_, r)| r.clone()).collect() }))
            .collect();
        Some(Ruleset { chains, sets: table.sets.clone() })
    }

    /// Refuses every operation on `family` from now on (`EAFNOSUPPORT`), or accepts them
    /// again: a family that cannot be written, for failure-isolation tests.
    pub fn refuse_family(&mut self, family: IpFamily, refuse: bool) {
        self.refused.retain(|f| *f != family);
        if refuse {
            self.refused.push(family);
        }
    }

    /// How many batches were committed.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Applies the transactions as one batch: all of them, or (with the first refusal's
    /// errno) none. Returns the operations applied.
    pub fn commit(&mut self, txs: &[Transaction]) -> Result<usize, Error> {
        let mut next = self.clone();
        next.last_handles.clear();
        let mut index = 0;
        for tx in txs {
            for op in &tx.ops {
                let applied = if self.refused.contains(&tx.family) {
                    Err((libc::EAFNOSUPPORT, "the family is refused (an injected fault)".to_string()))
                } else {
                    next.apply(tx.family, &tx.table, op, index)
                };
                if let Err((errno, detail)) = applied {
                    let single = Transaction { family: tx.family, table: tx.table.clone(), ops: vec![op.clone()] };
                    return Err(Error::Transaction {
                        errno,
                        detail: Some(detail),
                        op: single.to_string().lines().next().unwrap_or_default().to_string(),
                        errors: 1,
                    });
                }
                index += 1;
            }
        }
        if index > 0 {
            next.commits += 1;
        }
        *self = next;
        Ok(index)
    }

    /// The rules the last batch added that the kernel would echo (see [`Rule::echoed`]):
    /// (index of the operation over the batch, handle).
    pub fn last_handles(&self) -> &[(usize, u64)] {
        &self.last_handles
    }

    fn apply(&mut self, family: IpFamily, table: &str, op: &Op, index: usize) -> Result<(), Refused> {
        let key = (family, table.to_string());
        match op {
            Op::AddTable => {
                self.tables.entry(key).or_default();
                return Ok(());
            }
            Op::DeleteTable => {
                return self.tables.remove(&key).map(drop).ok_or((libc::ENOENT, format!("no table {table}")));
            }
            _ => {}
        }
        let handle = self.next_handle + 1;
        let t = self.tables.get_mut(&key).ok_or((libc::ENOENT, format!("no table {table}")))?;
        match op {
            Op::AddTable | Op::DeleteTable => unreachable!("handled above"),
            Op::AddChain(name, base) => match t.chains.get(name) {
                Some(c) if c.base != *base => return Err((libc::EEXIST, format!("chain {name} redefined"))),
                Some(_) => {}
                None => {
                    t.chains.insert(name.clone(), ModelChain { base: *base, rules: Vec::new() });
                }
            },
            Op::FlushChain(name) => t.chain(name)?.rules.clear(),
            Op::DeleteChain(name) => t.delete_chain(name)?,
            Op::AddRule(chain, rule) => {
                t.check_rule(rule)?;
                t.chain(chain)?.rules.push((handle, rule.clone()));
                self.added_rule(rule, index, handle);
            }
            Op::InsertRule(chain, rule, after) => {
                t.check_rule(rule)?;
                let rules = &mut t.chain(chain)?.rules;
                let at = match after {
                    None => 0,
                    Some(h) => {
                        1 + rules.iter().position(|(x, _)| x == h).ok_or((libc::ENOENT, format!("no rule {h}")))?
                    }
                };
                rules.insert(at, (handle, rule.clone()));
                self.added_rule(rule, index, handle);
            }
            Op::DeleteRule(chain, h) => {
                let rules = &mut t.chain(chain)?.rules;
                let at = rules.iter().position(|(x, _)| x == h).ok_or((libc::ENOENT, format!("no rule {h}")))?;
                rules.remove(at);
            }
            Op::AddSet(name, set) => match t.sets.get(name) {
                Some(s) if !s.same_definition(set) => return Err((libc::EEXIST, format!("set {name} redefined"))),
                Some(_) => {}
                None => {
                    t.sets.insert(name.clone(), Set { elements: BTreeMap::new(), ..set.clone() });
                }
            },
            Op::FlushSet(name) => t.set(name)?.elements.clear(),
            Op::DeleteSet(name) => t.delete_set(name)?,
            Op::AddElements(name, elements) => t.add_elements(name, elements)?,
            Op::DeleteElements(name, keys) => {
                let set = t.set(name)?;
                for k in keys {
                    set.elements.remove(k).ok_or((libc::ENOENT, format!("no element {k:?} in {name}")))?;
                }
            }
        }
        Ok(())
    }

    fn added_rule(&mut self, rule: &Rule, index: usize, handle: u64) {
        self.next_handle = handle;
        if rule.echoed() {
            self.last_handles.push((index, handle));
        }
    }
}

impl Table {
    fn chain(&mut self, name: &str) -> Result<&mut ModelChain, Refused> {
        self.chains.get_mut(name).ok_or((libc::ENOENT, format!("no chain {name}")))
    }

    fn set(&mut self, name: &str) -> Result<&mut Set, Refused> {
        self.sets.get_mut(name).ok_or((libc::ENOENT, format!("no set {name}")))
    }

    fn check_rule(&self, rule: &Rule) -> Result<(), Refused> {
        if let Some(target) = rule.target()
            && !self.chains.contains_key(target)
        {
            return Err((libc::ENOENT, format!("no chain {target}")));
        }
        match rule.sets().find(|s| !self.sets.contains_key(*s)) {
            Some(missing) => Err((libc::ENOENT, format!("no set {missing}"))),
            None => Ok(()),
        }
    }

    /// Whether a rule of another chain or a verdict element sends packets to `chain`.
    fn chain_in_use(&self, chain: &str) -> bool {
        let by_rule = self
            .chains
            .iter()
            .filter(|(name, _)| name.as_str() != chain)
            .flat_map(|(_, c)| &c.rules)
            .any(|(_, r)| r.target() == Some(chain));
        let by_element = self
            .sets
            .values()
            .flat_map(|s| s.elements.values())
            .any(|d| matches!(d, Some(Data::Verdict(Verdict::Jump(c) | Verdict::Goto(c))) if c == chain));
        by_rule || by_element
    }

    fn delete_chain(&mut self, name: &str) -> Result<(), Refused> {
        self.chains.get(name).ok_or((libc::ENOENT, format!("no chain {name}")))?;
        // Its own rules go with it (the kernel deletes them first, without `NLM_F_NONREC`).
        if self.chain_in_use(name) {
            return Err((libc::EBUSY, format!("chain {name} is in use")));
        }
        self.chains.remove(name);
        Ok(())
    }

    fn delete_set(&mut self, name: &str) -> Result<(), Refused> {
        self.set(name)?;
        if self.chains.values().flat_map(|c| &c.rules).any(|(_, r)| r.sets().any(|s| s == name)) {
            return Err((libc::EBUSY, format!("set {name} is in use")));
        }
        self.sets.remove(name);
        Ok(())
    }

    fn add_elements(&mut self, name: &str, elements: &[(crate::ruleset::Key, Option<Data>)]) -> Result<(), Refused> {
        for (_, data) in elements {
            if let Some(Data::Verdict(Verdict::Jump(c) | Verdict::Goto(c))) = data
                && !self.chains.contains_key(c)
            {
                return Err((libc::ENOENT, format!("no chain {c}")));
            }
        }
        let set = self.set(name)?;
        for (key, data) in elements {
            match set.elements.get(key) {
                Some(existing) if existing != data => {
                    return Err((libc::EEXIST, format!("element {key:?} of {name} holds other data")));
                }
                Some(_) => {}
                None => {
                    set.elements.insert(*key, data.clone());
                }
            }
        }
        Ok(())
    }
}
