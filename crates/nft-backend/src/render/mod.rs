//! Rendering proxy-core's [`FamilyRules`] into a [`Ruleset`] (pure).
//!
//! The semantics and most names are upstream kube-proxy's; the layout is built so that a
//! change costs the same at 44 000 Services as at 10.
//!
//! **Why not upstream's layout.** Upstream gives every service port its own chains
//! (`service-…`, `external-…`, one `endpoint-…` per endpoint) reached through `goto`
//! elements of verdict maps, and one anonymous verdict map per policy chain for load
//! balancing. Two kernel costs follow. The anonymous maps make big syncs quadratic
//! (k#139513, k#140723). And on every commit that adds a rule or a `goto` element, the
//! kernel re-validates every chain reachable from the base chains: with a chain per
//! service port and per endpoint, even a one-endpoint change costs time in proportion to
//! the whole table (about 60 ms at 10 000 Services here).
//!
//! **kproxy's layout: data, not chains.** A service port without ClientIP affinity owns
//! no chain and no rule. It is only elements in shared sets and maps:
//! - its frontends in sets that say which shared chain handles them
//!   (`to-cluster-endpoints`, `external-ips-local-policy`, `nodeports-cluster-policy`, …);
//! - its N endpoints in the endpoint maps for N (`cluster-endpoints-N`, …), keyed by
//!   frontend and slot 0 to N-1;
//! - its endpoints' addresses in `hairpin-endpoints`, for the hairpin masquerade.
//!
//! The shared `pick-…` chains hold one rule per protocol and endpoint count in use:
//! `meta l4proto tcp dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N
//! map @cluster-endpoints-N`. Only frontends with N endpoints are in that map, so only the
//! rule for N finds them. Adding, removing or moving endpoints, or adding a Service,
//! changes map elements only, and data elements make the kernel validate nothing. A rule
//! (and its map) is added or removed only when an endpoint count appears for the first
//! time or disappears for the last time; then the kernel validates a handful of shared
//! chains, and binds the rule to a map that is new, so it has no elements to check.
//!
//! Maglev Services are the exception that proves the rule: a table of M slots, shared by
//! every port and frontend of the Service, is a map and a chain of its own (`shared`), so
//! that a Service with many ports costs M elements, not M per port and frontend.
//!
//! Service ports with ClientIP affinity keep upstream's chains (`service-…`,
//! `endpoint-…`, one dynamic `affinity-…` set per endpoint): the affinity must point at
//! an endpoint chain that goes away with the endpoint. So do `loadBalancerSourceRanges`
//! firewalls (`firewall-…`). Only those chains are re-validated on a commit.

//!
//! | file | what it renders |
//! |---|---|
//! | `layout` | the shared sets, maps and `pick-…` chains of the data layout, and their names |
//! | `skeleton` | the fixed part of the table: base, dispatch and policy chains, shared sets |
//! | `mapped` | a service port without affinity, as elements |
//! | `shared` | the Maglev tables a Service's ports share: a chain and a map each |
//! | `chained` | a service port with ClientIP affinity, as upstream's chains |
//! | here | one service port's objects (either way, plus firewalls and no-endpoint verdicts), a whole family |

mod chained;
mod layout;
mod mapped;
pub(crate) mod shared;
mod skeleton;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nft_client::names::{self, FIREWALL_IPS, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, REJECT_CHAIN};
use nft_client::ruleset::{Action, Chain, Data, Key, Match, Rule, Ruleset, Set, SetName, Verdict};
use proxy_core::{FamilyContext, NoEndpoints, ServicePortRules, SharedTable};

pub use layout::Pick;
pub(crate) use shared::add as shared_tables;
pub use skeleton::skeleton;

use chained::chained_port;
use mapped::mapped_port;

/// Active ClusterIPs.
const CLUSTER_IPS: &str = "cluster-ips";
/// The verdict map of NodePorts with chains of their own.
const SERVICE_NODEPORTS: &str = "service-nodeports";

/// The objects one service port contributes: its own chains and sets (affinity and
/// firewalls only), its elements in the shared sets and maps, and the `pick-…` rules it
/// needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains owned by the service port, by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets owned by the service port (affinity), by name.
    pub sets: BTreeMap<String, Set>,
    /// Elements in shared sets and maps: (set, key) → data.
    pub elements: BTreeMap<(SetName, Key), Option<Data>>,
    /// The `pick-…` rules this port's endpoints are picked by.
    pub picks: BTreeSet<Pick>,
    /// The Maglev tables this port shares with others of its Service, by name (each a
    /// chain and a map, with the table's slots as elements; see `shared`).
    pub tables: BTreeMap<String, Arc<SharedTable>>,
}

pub(super) fn ct_new_jump(chain: &str) -> Rule {
    Rule::new([Match::CtStateNew], Action::Verdict(Verdict::Jump(chain.into())))
}

pub(super) fn jump(chain: &str) -> Rule {
    Rule::always(Action::Verdict(Verdict::Jump(chain.into())))
}

pub(super) fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.to_string())
}

fn no_endpoints(v: NoEndpoints) -> Option<Data> {
    Some(Data::Verdict(match v {
        NoEndpoints::Reject => goto(REJECT_CHAIN),
        NoEndpoints::Drop => Verdict::Drop,
    }))
}

pub(super) fn goto_data(chain: &str) -> Option<Data> {
    Some(Data::Verdict(goto(chain)))
}

/// Renders one service port: as data in the shared sets and maps, or with chains of its
/// own when it has ClientIP affinity.
pub fn service_port(r: &ServicePortRules, ctx: &FamilyContext) -> PortObjects {
    let mut out = PortObjects::default();
    out.elements.insert((SetName::fixed(&CLUSTER_IPS), Key::Addr(r.cluster_ip)), None);
    if r.affinity_timeout.is_some() {
        chained_port(r, ctx, &mut out);
    } else {
        mapped_port(r, ctx.maglev_seed, &mut out);
    }
    let external_verdict = r.external_verdict().and_then(no_endpoints);
    if let Some(v) = &external_verdict {
        for ip in r.external_ips.iter().chain(&r.load_balancer_ips) {
            out.elements.insert(
                (SetName::fixed(&NO_ENDPOINT_SERVICES), Key::AddrProtoPort(*ip, r.name.protocol, r.port)),
                Some(v.clone()),
            );
        }
        if let Some(np) = r.node_port {
            out.elements
                .insert((SetName::fixed(&NO_ENDPOINT_NODEPORTS), Key::ProtoPort(r.name.protocol, np)), Some(v.clone()));
        }
    }
    if let proxy_core::Route::NoEndpoints(v) = r.internal_route() {
        out.elements.insert(
            (SetName::fixed(&NO_ENDPOINT_SERVICES), Key::AddrProtoPort(r.cluster_ip, r.name.protocol, r.port)),
            no_endpoints(v),
        );
    }
    if let Some(fw) = &r.firewall {
        let firewall_chain = names::firewall(&r.name);
        for ip in &r.load_balancer_ips {
            let key = Key::AddrProtoPort(*ip, r.name.protocol, r.port);
            out.elements.insert((SetName::fixed(&FIREWALL_IPS), key), goto_data(&firewall_chain));
        }
        out.chains.insert(firewall_chain, Chain::firewall(&fw.allowed));
    }
    out
}

/// Renders a whole family: the skeleton plus every service port. Element conflicts (two
/// service ports claiming one key, which the API server normally prevents) are resolved in
/// favour of the first in name order.
pub fn family(ctx: &FamilyContext, ports: &BTreeMap<proxy_core::ServicePortName, Arc<ServicePortRules>>) -> Ruleset {
    let objects: Vec<PortObjects> = ports.values().map(|r| service_port(r, ctx)).collect();
    let picks = objects.iter().flat_map(|o| o.picks.iter().copied()).collect();
    let tables: BTreeMap<String, Arc<SharedTable>> =
        objects.iter().flat_map(|o| o.tables.iter().map(|(n, t)| (n.clone(), t.clone()))).collect();
    let mut ruleset = skeleton(ctx, &picks);
    shared_tables(&mut ruleset, &tables, ctx.maglev_seed);
    for o in objects {
        merge(&mut ruleset, o);
    }
    ruleset
}

/// The rules of a `pick-…` chain for the picks in use (a partial sync rewrites one
/// whole when it cannot place a rule by handle).
pub(crate) fn pick_chain_rules<'p>(chain: &str, picks: impl IntoIterator<Item = &'p Pick>) -> Vec<Rule> {
    layout::pick_chain_kind(chain).pick_rules(chain, picks)
}

/// Adds one service port's objects to a ruleset (its `pick-…` rules are the skeleton's,
/// its shared tables [`shared_tables`]'s).
pub fn merge(ruleset: &mut Ruleset, objects: PortObjects) {
    ruleset.chains.extend(objects.chains);
    ruleset.sets.extend(objects.sets);
    let mut current: Option<(SetName, String)> = None;
    for ((set, key), data) in objects.elements {
        // Elements come sorted by set: one name per set, not per element.
        if current.as_ref().is_none_or(|(name, _)| *name != set) {
            current = Some((set, set.to_string()));
        }
        let name = &current.as_ref().expect("just set").1;
        if let Some(set) = ruleset.sets.get_mut(name) {
            set.elements.entry(key).or_insert(data);
        }
    }
}
