//! The Maglev tables a Service's ports share: one chain and one map per table, however
//! many ports and frontends use it.
//!
//! Ports of a Service usually reach the same pods, each on its own target port. Their
//! frontends (ClusterIP, external and LB IPs, NodePorts, every port) then share one table
//! of M slots: a frontend is found in the `maglev-…-tables` verdict map at the end of its
//! `pick-…` chain and goes to its table's chain, whose rule picks the address from the
//! table and the port from the frontend:
//!
//! ```text
//! meta l4proto tcp dnat ip to jhash ip saddr mod 4093 seed 0x6b70726f map @maglev-cluster-HASH-ns/svc/tcp/http : ip daddr . meta l4proto . th dport map @maglev-target-ports
//! ```
//!
//! So a Service with P ports and F frontends holds M + P·F elements, not M·P·F; an
//! endpoint change rewrites only the slots that move in the one map, and a new port or
//! frontend adds two elements. The chain and map are named after the first port that
//! uses the table ([`SharedTable::owner`]), a name that stays while endpoints change.

use std::collections::BTreeMap;
use std::sync::Arc;

use nft_client::names;
use nft_client::ruleset::{Action, Chain, Data, DataType, Key, KeyType, Match, Rule, Ruleset, Set, Slot};
use proxy_core::{Policy, SharedTable, maglev};

use super::layout::{ADDRESSES, NODEPORT_FRONTENDS};

/// The name of a shared table's chain and map: `maglev-cluster-HASH-ns/svc/proto/port`.
pub(crate) fn name(t: &SharedTable) -> String {
    let policy = match t.policy {
        Policy::Cluster => "cluster",
        Policy::Local => "local",
    };
    format!("maglev-{policy}-{}", names::service_port(&t.owner))
}

/// How the kernel picks a slot of the table.
fn slot(t: &SharedTable, seed: u32) -> Slot {
    Slot::SourceHash { seed, with_port: t.table.hash == maglev::Hash::Connection }
}

/// The table's chain: per protocol of the ports that use it, a rule for address frontends
/// and one for NodePorts (each finds the target port by its own key).
pub(crate) fn chain(t: &SharedTable, seed: u32) -> Chain {
    let table = name(t);
    let mut rules = Vec::new();
    for protocol in &t.protocols {
        for kind in [&ADDRESSES, &NODEPORT_FRONTENDS] {
            rules.push(Rule::new(
                [Match::L4Proto(*protocol)],
                Action::DnatTable {
                    slot: slot(t, seed),
                    modulus: t.table.size,
                    table: table.clone(),
                    key: kind.key,
                    ports: kind.target_ports.to_string(),
                },
            ));
        }
    }
    Chain::regular(rules)
}

/// The table's map, without elements.
pub(crate) fn map_definition(t: &SharedTable) -> Set {
    let which = match t.policy {
        Policy::Cluster => "Cluster-policy",
        Policy::Local => "node-local",
    };
    let hash = match t.table.hash {
        maglev::Hash::Source => "jhash saddr",
        maglev::Hash::Connection => "saddr . sport",
    };
    Set::map(KeyType::Slot(t.table.size), DataType::Addr, &format!("Maglev table of {which} endpoints ({hash})"))
}

/// The table's elements: slot → the address that owns it.
pub(crate) fn elements(t: &SharedTable) -> impl Iterator<Item = (Key, Option<Data>)> + '_ {
    t.owners().enumerate().map(|(slot, ip)| (Key::Slot(slot as u32), Some(Data::Addr(ip))))
}

/// Adds the tables' chains and maps, with their elements, to a family's ruleset.
pub(crate) fn add(ruleset: &mut Ruleset, tables: &BTreeMap<String, Arc<SharedTable>>, seed: u32) {
    for (name, t) in tables {
        ruleset.chains.insert(name.clone(), chain(t, seed));
        let mut map = map_definition(t);
        map.elements = elements(t).collect();
        ruleset.sets.insert(name.clone(), map);
    }
}
