//! A transaction: the list of operations one sync sends, as plain data.
//!
//! Building a transaction cannot fail; [`crate::netlink`] turns it into one netlink batch.
//! Its `Display` is the same operations as `nft` commands, for logs and `kproxy plan`.

use std::collections::BTreeMap;
use std::fmt;

use proxy_core::IpFamily;

use crate::ruleset::{BaseChain, Chain, ChainType, Data, Key, Rule, Ruleset, Set, SetName, nft_family};
use crate::text;

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `add table` (a no-op if it exists).
    AddTable,
    /// `delete table`.
    DeleteTable,
    /// `add chain` (a no-op if it exists with the same definition).
    AddChain(String, Option<BaseChain>),
    /// `flush chain`: delete every rule of the chain.
    FlushChain(String),
    /// `delete chain`.
    DeleteChain(String),
    /// `add rule`: append to the chain.
    AddRule(String, Rule),
    /// `add rule … position HANDLE` (after that rule), or `insert rule` (at the head) when
    /// there is no handle.
    InsertRule(String, Rule, Option<u64>),
    /// `delete rule … handle HANDLE`.
    DeleteRule(String, u64),
    /// `add set` / `add map` (a no-op if it exists with the same definition).
    AddSet(String, Set),
    /// `flush set`: delete every element.
    FlushSet(String),
    /// `delete set`.
    DeleteSet(String),
    /// `add element`.
    AddElements(String, Vec<(Key, Option<Data>)>),
    /// `delete element`.
    DeleteElements(String, Vec<Key>),
}

/// What a transaction does, counted by kind: the kernel validates the table's chains only
/// when rules or `goto` elements are added, so `rules` tells how costly a commit is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Chains added, flushed or deleted.
    pub chains: usize,
    /// Rules added or deleted.
    pub rules: usize,
    /// Sets and maps added, flushed or deleted.
    pub sets: usize,
    /// Elements added or deleted.
    pub elements: usize,
}

impl std::ops::AddAssign for OpCounts {
    fn add_assign(&mut self, other: OpCounts) {
        self.chains += other.chains;
        self.rules += other.rules;
        self.sets += other.sets;
        self.elements += other.elements;
    }
}

/// The operations of one sync on one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The table's family.
    pub family: IpFamily,
    /// The table's name.
    pub table: String,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new(family: IpFamily, table: &str) -> Transaction {
        Transaction { family, table: table.to_string(), ops: Vec::new() }
    }

    /// Appends an operation.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, counted by kind (table operations are not counted).
    pub fn counts(&self) -> OpCounts {
        let mut c = OpCounts::default();
        for op in &self.ops {
            match op {
                Op::AddTable | Op::DeleteTable => {}
                Op::AddChain(..) | Op::FlushChain(_) | Op::DeleteChain(_) => c.chains += 1,
                Op::AddRule(..) | Op::InsertRule(..) | Op::DeleteRule(..) => c.rules += 1,
                Op::AddSet(..) | Op::FlushSet(_) | Op::DeleteSet(_) => c.sets += 1,
                Op::AddElements(_, e) => c.elements += e.len(),
                Op::DeleteElements(_, k) => c.elements += k.len(),
            }
        }
        c
    }

    /// A transaction that atomically replaces the table with the skeleton plus every
    /// service port's objects: the table is created if missing, deleted, and created again
    /// with sets first, then chains, then rules and elements (which refer to both).
    /// Everything is rewritten, including ClientIP affinity state: used when the table's
    /// Removes the table whether or not it exists: `add table`, then `delete table`.
    pub fn delete_table(family: IpFamily, table: &str) -> Transaction {
        Transaction { family, table: table.to_string(), ops: vec![Op::AddTable, Op::DeleteTable] }
    }

    /// contents are unknown.
    pub fn replace(family: IpFamily, table: &str, skeleton: &Ruleset, ports: Gathered) -> Transaction {
        let mut tx = Transaction::new(family, table);
        tx.push(Op::AddTable);
        tx.push(Op::DeleteTable);
        tx.push(Op::AddTable);
        tx.fill(skeleton, ports, false);
        tx
    }

    /// A transaction that rewrites the table in place, for a full resync when its objects
    /// are known: every chain is flushed and refilled, the shared sets and maps are flushed
    /// and refilled, and `stale_chains` and `stale_sets` (known objects no longer desired)
    /// are removed. Affinity sets that are still desired keep their entries, so a periodic
    /// resync does not break ClientIP affinity. Anything someone else changed in our chains
    /// and shared maps is repaired; anything they added beside them is not.
    pub fn refresh(
        family: IpFamily,
        table: &str,
        skeleton: &Ruleset,
        ports: Gathered,
        stale_chains: &[String],
        stale_sets: &[String],
    ) -> Transaction {
        let mut tx = Transaction::new(family, table);
        tx.push(Op::AddTable);
        for name in stale_chains {
            tx.push(Op::FlushChain(name.clone()));
        }
        tx.fill(skeleton, ports, true);
        for name in stale_chains {
            tx.push(Op::DeleteChain(name.clone()));
        }
        for name in stale_sets {
            tx.push(Op::DeleteSet(name.clone()));
        }
        tx
    }

    /// Sets, chains, rules and elements of a full sync; with `flush`, existing chains and
    /// shared sets are emptied first (affinity sets are kept).
    fn fill(&mut self, skeleton: &Ruleset, ports: Gathered, flush: bool) {
        for (name, set) in &skeleton.sets {
            let definition = Set { elements: Default::default(), ..set.clone() };
            self.push(Op::AddSet(name.clone(), definition));
        }
        for (name, set) in ports.sets {
            self.push(Op::AddSet(name, Set { elements: Default::default(), ..set }));
        }
        if flush {
            for name in skeleton.sets.keys() {
                self.push(Op::FlushSet(name.clone()));
            }
        }
        let chains = || skeleton.chains.iter().chain(ports.chains.iter().map(|(n, c)| (n, c)));
        for (name, chain) in chains() {
            self.push(Op::AddChain(name.clone(), chain.base));
            if flush {
                self.push(Op::FlushChain(name.clone()));
            }
        }
        for (name, chain) in chains() {
            for rule in &chain.rules {
                self.push(Op::AddRule(name.clone(), rule.clone()));
            }
        }
        let mut elements: BTreeMap<String, Vec<(Key, Option<Data>)>> = BTreeMap::new();
        for (name, set) in &skeleton.sets {
            elements.entry(name.clone()).or_default().extend(set.elements.iter().map(|(k, v)| (*k, v.clone())));
        }
        for (name, list) in ports.elements {
            elements.entry(name.to_string()).or_default().extend(list);
        }
        for (name, list) in elements.into_iter().filter(|(_, l)| !l.is_empty()) {
            self.push(Op::AddElements(name, list));
        }
    }
}

/// The service ports' objects of a full sync, gathered port by port so that each port's
/// rendering is dropped once gathered (at 5k Services × 50 endpoints, keeping them all
/// cost 190 MB). Which claim of a shared element wins is the caller's decision: it adds
/// each element once.
#[derive(Debug, Default)]
pub struct Gathered {
    sets: Vec<(String, Set)>,
    chains: Vec<(String, Chain)>,
    elements: BTreeMap<SetName, Vec<(Key, Option<Data>)>>,
}

impl Gathered {
    /// Adds a service port's own chains and sets.
    pub fn own(&mut self, chains: BTreeMap<String, Chain>, sets: BTreeMap<String, Set>) {
        self.chains.extend(chains);
        self.sets.extend(sets);
    }

    /// Adds an element to a shared set or map.
    pub fn element(&mut self, set: SetName, key: Key, data: Option<Data>) {
        self.elements.entry(set).or_default().push((key, data));
    }
}

impl fmt::Display for Transaction {
    /// The operations as `nft` commands, one per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = format!("{} {}", nft_family(self.family), self.table);
        for op in &self.ops {
            match op {
                Op::AddTable => writeln!(f, "add table {t} {{ comment \"rules for kproxy\" ; }}")?,
                Op::DeleteTable => writeln!(f, "delete table {t}")?,
                Op::AddChain(name, None) => writeln!(f, "add chain {t} {name}")?,
                Op::AddChain(name, Some(b)) => {
                    let kind = match b.kind {
                        ChainType::Filter => "filter",
                        ChainType::Nat => "nat",
                    };
                    let hook = format!("{:?}", b.hook).to_lowercase();
                    writeln!(f, "add chain {t} {name} {{ type {kind} hook {hook} priority {} ; }}", b.priority)?
                }
                Op::FlushChain(name) => writeln!(f, "flush chain {t} {name}")?,
                Op::DeleteChain(name) => writeln!(f, "delete chain {t} {name}")?,
                Op::AddRule(chain, rule) => writeln!(f, "add rule {t} {chain} {}", text::rule(self.family, rule))?,
                Op::InsertRule(chain, rule, Some(after)) => {
                    writeln!(f, "add rule {t} {chain} position {after} {}", text::rule(self.family, rule))?
                }
                Op::InsertRule(chain, rule, None) => {
                    writeln!(f, "insert rule {t} {chain} {}", text::rule(self.family, rule))?
                }
                Op::DeleteRule(chain, handle) => writeln!(f, "delete rule {t} {chain} handle {handle}")?,
                Op::AddSet(name, set) => {
                    let kind = if set.is_map() { "map" } else { "set" };
                    writeln!(f, "add {kind} {t} {name}")?
                }
                Op::FlushSet(name) => writeln!(f, "flush set {t} {name}")?,
                Op::DeleteSet(name) => writeln!(f, "delete set {t} {name}")?,
                Op::AddElements(set, elements) => {
                    for (k, v) in elements {
                        match v {
                            Some(v) => writeln!(f, "add element {t} {set} {{ {} : {} }}", text::key(k), text::data(v))?,
                            None => writeln!(f, "add element {t} {set} {{ {} }}", text::key(k))?,
                        }
                    }
                }
                Op::DeleteElements(set, keys) => {
                    for k in keys {
                        writeln!(f, "delete element {t} {set} {{ {} }}", text::key(k))?;
                    }
                }
            }
        }
        Ok(())
    }
}
