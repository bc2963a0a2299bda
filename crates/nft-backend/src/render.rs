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
//! Service ports with ClientIP affinity keep upstream's chains (`service-…`,
//! `endpoint-…`, one dynamic `affinity-…` set per endpoint): the affinity must point at
//! an endpoint chain that goes away with the endpoint. So do `loadBalancerSourceRanges`
//! firewalls (`firewall-…`). Only those chains are re-validated on a commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use proxy_core::{FamilyContext, LocalDetector, NoEndpoints, NodePortIps, Policy, Protocol, ServicePortRules, Target};

use crate::names;
use crate::ruleset::{
    Action, AddrMatch, BaseChain, Chain, ChainType, Data, FrontendKey, Hook, Key, KeyType, Match, Rule, Ruleset, Set,
    Verdict,
};

/// The mark bit that asks `masquerading` to masquerade a packet (upstream's default).
pub const MASQUERADE_MARK: u32 = 0x4000;

// Fixed chain and set names (upstream's).
pub(crate) const SERVICES: &str = "services";
pub(crate) const MASQUERADING: &str = "masquerading";
pub(crate) const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub(crate) const FIREWALL_CHECK: &str = "firewall-check";
pub(crate) const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub(crate) const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub(crate) const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub(crate) const REJECT_CHAIN: &str = "reject-chain";
pub(crate) const CLUSTER_IPS: &str = "cluster-ips";
pub(crate) const NODEPORT_IPS: &str = "nodeport-ips";
pub(crate) const SERVICE_IPS: &str = "service-ips";
pub(crate) const SERVICE_NODEPORTS: &str = "service-nodeports";
pub(crate) const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub(crate) const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub(crate) const FIREWALL_IPS: &str = "firewall-ips";
const NODEPORTS: &str = "nodeports";
const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";

/// How one kind of frontend reaches its endpoints in the data layout: the set of frontends
/// that enter each shared chain, the policy chains, and the endpoint maps with the chains
/// that pick from them.
struct Frontends {
    key: FrontendKey,
    /// Sets of frontends: straight to Cluster / Local endpoints (ClusterIPs only), and
    /// external under Cluster / Local policy.
    to_cluster: Option<&'static str>,
    to_local: Option<&'static str>,
    external_cluster: &'static str,
    external_local: &'static str,
    /// Chains for external traffic under Cluster / Local policy.
    cluster_policy: &'static str,
    local_policy: &'static str,
    /// Endpoint maps (the prefix of their names) and the chains that pick from them, per
    /// policy.
    cluster_endpoints: &'static str,
    local_endpoints: &'static str,
    pick_cluster: &'static str,
    pick_local: &'static str,
}

/// Address frontends: ClusterIPs, external IPs and load-balancer IPs.
const ADDRESSES: Frontends = Frontends {
    key: FrontendKey::DaddrProtoPort,
    to_cluster: Some("to-cluster-endpoints"),
    to_local: Some("to-local-endpoints"),
    external_cluster: "external-ips-cluster-policy",
    external_local: "external-ips-local-policy",
    cluster_policy: "external-cluster-policy",
    local_policy: "external-local-policy",
    cluster_endpoints: "cluster-endpoints",
    local_endpoints: "local-endpoints",
    pick_cluster: "pick-cluster-endpoint",
    pick_local: "pick-local-endpoint",
};

/// NodePorts.
const NODEPORT_FRONTENDS: Frontends = Frontends {
    key: FrontendKey::ProtoPort,
    to_cluster: None,
    to_local: None,
    external_cluster: "nodeports-cluster-policy",
    external_local: "nodeports-local-policy",
    cluster_policy: "nodeport-cluster-policy",
    local_policy: "nodeport-local-policy",
    cluster_endpoints: "nodeport-cluster-endpoints",
    local_endpoints: "nodeport-local-endpoints",
    pick_cluster: "pick-nodeport-cluster-endpoint",
    pick_local: "pick-nodeport-local-endpoint",
};

impl Frontends {
    fn endpoints(&self, policy: Policy) -> (&'static str, &'static str) {
        match policy {
            Policy::Cluster => (self.cluster_endpoints, self.pick_cluster),
            Policy::Local => (self.local_endpoints, self.pick_local),
        }
    }

    fn slot_key_type(&self, endpoints: u32) -> KeyType {
        match self.key {
            FrontendKey::DaddrProtoPort => KeyType::AddrProtoPortSlot(endpoints),
            FrontendKey::ProtoPort => KeyType::ProtoPortSlot(endpoints),
        }
    }
}

/// One rule of a `pick-…` chain: the chain, and the protocol and endpoint count it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pick {
    /// The `pick-…` chain.
    pub chain: &'static str,
    /// The protocol.
    pub protocol: Protocol,
    /// The number of endpoints.
    pub endpoints: u32,
}

/// The name of the endpoint map for frontends with `n` endpoints: `PREFIX-N`.
///
/// Element keys name their set with a `&'static str`. The names of endpoint maps are made
/// once per prefix and endpoint count and kept for the life of the process: there are at
/// most four prefixes times the distinct endpoint counts ever seen.
pub fn endpoint_map(prefix: &'static str, n: u32) -> &'static str {
    static NAMES: Mutex<BTreeMap<(&'static str, u32), &'static str>> = Mutex::new(BTreeMap::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    names.entry((prefix, n)).or_insert_with(|| Box::leak(format!("{prefix}-{n}").into_boxed_str()))
}

impl Pick {
    /// The pick a rule of a `pick-…` chain serves, if it is one.
    pub fn of(chain: &str, rule: &Rule) -> Option<Pick> {
        let chain = [&ADDRESSES, &NODEPORT_FRONTENDS]
            .iter()
            .flat_map(|f| [f.pick_cluster, f.pick_local])
            .find(|c| *c == chain)?;
        match (rule.matches.as_slice(), &rule.action) {
            ([Match::L4Proto(protocol)], Action::DnatMap { modulus, .. }) => {
                Some(Pick { chain, protocol: *protocol, endpoints: *modulus })
            }
            _ => None,
        }
    }

    fn frontends(&self) -> &'static Frontends {
        let nodeport = [NODEPORT_FRONTENDS.pick_cluster, NODEPORT_FRONTENDS.pick_local].contains(&self.chain);
        if nodeport { &NODEPORT_FRONTENDS } else { &ADDRESSES }
    }

    /// The endpoint map the rule looks up: the one for this chain and endpoint count.
    pub fn map(&self) -> &'static str {
        let f = self.frontends();
        let prefix = if self.chain == f.pick_cluster { f.cluster_endpoints } else { f.local_endpoints };
        endpoint_map(prefix, self.endpoints)
    }

    /// The endpoint map's definition.
    pub fn map_definition(&self) -> Set {
        let which = if self.chain == self.frontends().pick_cluster { "Cluster-policy" } else { "node-local" };
        let n = self.endpoints;
        let comment = format!("{which} endpoints of frontends with {n} endpoint{}", if n == 1 { "" } else { "s" });
        Set::endpoint_map(self.frontends().slot_key_type(self.endpoints), &comment)
    }

    /// The rule: `meta l4proto P dnat to KEY . numgen random mod N map @MAP-N`.
    pub fn rule(&self) -> Rule {
        Rule::new(
            [Match::L4Proto(self.protocol)],
            Action::DnatMap { key: self.frontends().key, modulus: self.endpoints, map: self.map().to_string() },
        )
    }
}

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
    pub elements: BTreeMap<(&'static str, Key), Option<Data>>,
    /// The `pick-…` rules this port's endpoints are picked by.
    pub picks: BTreeSet<Pick>,
}

fn ct_new_jump(chain: &str) -> Rule {
    Rule::new([Match::CtStateNew], Action::Verdict(Verdict::Jump(chain.into())))
}

fn jump(chain: &str) -> Rule {
    Rule::always(Action::Verdict(Verdict::Jump(chain.into())))
}

fn base(kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain { base: Some(BaseChain { kind, hook, priority }), rules }
}

fn regular(rules: Vec<Rule>) -> Chain {
    Chain { base: None, rules }
}

/// The fixed part of the table: base chains, dispatch chains, the `pick-…` rules for
/// `picks`, and shared sets and maps.
pub fn skeleton(ctx: &FamilyContext, picks: &BTreeSet<Pick>) -> Ruleset {
    use ChainType::{Filter, Nat};
    let mut chains = BTreeMap::new();
    let mut add = |name: &str, chain: Chain| {
        chains.insert(name.to_string(), chain);
    };
    add("filter-prerouting-pre-dnat", base(Filter, Hook::Prerouting, -110, vec![ct_new_jump(FIREWALL_CHECK)]));
    add("filter-output-pre-dnat", base(Filter, Hook::Output, -110, vec![ct_new_jump(FIREWALL_CHECK)]));
    add(
        "filter-forward",
        base(Filter, Hook::Forward, 0, vec![ct_new_jump(SERVICE_ENDPOINTS_CHECK), ct_new_jump(CLUSTER_IPS_CHECK)]),
    );
    add(
        "filter-input",
        base(Filter, Hook::Input, 0, vec![ct_new_jump(NODEPORT_ENDPOINTS_CHECK), ct_new_jump(SERVICE_ENDPOINTS_CHECK)]),
    );
    add(
        "filter-output",
        base(Filter, Hook::Output, 0, vec![ct_new_jump(SERVICE_ENDPOINTS_CHECK), ct_new_jump(CLUSTER_IPS_CHECK)]),
    );
    add("nat-prerouting", base(Nat, Hook::Prerouting, -100, vec![jump(SERVICES)]));
    add("nat-output", base(Nat, Hook::Output, -100, vec![jump(SERVICES)]));
    add("nat-postrouting", base(Nat, Hook::Postrouting, 100, vec![jump(MASQUERADING)]));

    let vmap = |key, map: &str| Rule::always(Action::Vmap { key, map: map.to_string() });
    add(FIREWALL_CHECK, regular(vec![vmap(FrontendKey::DaddrProtoPort, FIREWALL_IPS)]));
    let (nodeport_match, nodeport_check_match) = match ctx.nodeport_ips {
        NodePortIps::All => {
            let loopback = loopback_net(ctx);
            (
                vec![Match::FibDaddrLocal, Match::Daddr(AddrMatch::NotIn(loopback))],
                vec![Match::Daddr(AddrMatch::NotIn(loopback))],
            )
        }
        NodePortIps::Only(_) => {
            (vec![Match::DaddrInSet(NODEPORT_IPS.into())], vec![Match::DaddrInSet(NODEPORT_IPS.into())])
        }
    };

    // Dispatch. ClusterIP traffic from outside the pod network is masqueraded (upstream
    // does this in each service chain, matching the ClusterIP); then each frontend set
    // sends its traffic to a shared chain; service ports with chains of their own (ClientIP
    // affinity) are found in the verdict maps.
    let mut services = Vec::new();
    let mark = Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()));
    let to_cluster_ip = Match::DaddrInSet(CLUSTER_IPS.into());
    if ctx.masquerade_all {
        services.push(Rule::new([to_cluster_ip], mark.clone()));
    } else if let Some(mut m) = if_not_local(&ctx.local_detector) {
        m.insert(0, to_cluster_ip);
        services.push(Rule::new(m, mark.clone()));
    }
    let in_set = |f: &Frontends, set: &str, chain: &str| {
        Rule::new([Match::KeyInSet(f.key, set.into())], Action::Verdict(goto(chain)))
    };
    services.extend([
        in_set(&ADDRESSES, ADDRESSES.to_cluster.expect("addresses"), ADDRESSES.pick_cluster),
        in_set(&ADDRESSES, ADDRESSES.to_local.expect("addresses"), ADDRESSES.pick_local),
        in_set(&ADDRESSES, ADDRESSES.external_cluster, ADDRESSES.cluster_policy),
        in_set(&ADDRESSES, ADDRESSES.external_local, ADDRESSES.local_policy),
        vmap(FrontendKey::DaddrProtoPort, SERVICE_IPS),
        Rule::new(nodeport_match, Action::Verdict(goto(NODEPORTS))),
    ]);
    add(SERVICES, regular(services));
    add(
        NODEPORTS,
        regular(vec![
            in_set(&NODEPORT_FRONTENDS, NODEPORT_FRONTENDS.external_cluster, NODEPORT_FRONTENDS.cluster_policy),
            in_set(&NODEPORT_FRONTENDS, NODEPORT_FRONTENDS.external_local, NODEPORT_FRONTENDS.local_policy),
            vmap(FrontendKey::ProtoPort, SERVICE_NODEPORTS),
        ]),
    );
    for f in [&ADDRESSES, &NODEPORT_FRONTENDS] {
        // Cluster policy may cross nodes: masquerade everything.
        add(
            f.cluster_policy,
            regular(vec![Rule::always(mark.clone()), Rule::always(Action::Verdict(goto(f.pick_cluster)))]),
        );
        add(f.local_policy, regular(local_policy_rules(ctx, f.pick_cluster, Some(f.pick_local))));
        for chain in [f.pick_cluster, f.pick_local] {
            let rules = picks.iter().filter(|p| p.chain == chain).map(Pick::rule).collect();
            add(chain, regular(rules));
        }
    }

    add(SERVICE_ENDPOINTS_CHECK, regular(vec![vmap(FrontendKey::DaddrProtoPort, NO_ENDPOINT_SERVICES)]));
    add(
        NODEPORT_ENDPOINTS_CHECK,
        regular(vec![Rule::new(
            nodeport_check_match,
            Action::Vmap { key: FrontendKey::ProtoPort, map: NO_ENDPOINT_NODEPORTS.to_string() },
        )]),
    );
    let mut cluster_ips_check = vec![Rule::new([Match::DaddrInSet(CLUSTER_IPS.into())], Action::Reject)];
    for net in &ctx.service_cidrs {
        cluster_ips_check.push(Rule::new([Match::Daddr(AddrMatch::In(*net))], Action::Verdict(Verdict::Drop)));
    }
    add(CLUSTER_IPS_CHECK, regular(cluster_ips_check));
    add(REJECT_CHAIN, regular(vec![Rule::always(Action::Reject)]));
    add(MARK_FOR_MASQUERADE, regular(vec![Rule::always(Action::MarkOr(MASQUERADE_MARK))]));
    add(
        MASQUERADING,
        regular(vec![
            // Hairpin: a pod that reached itself through a Service must see the reply come
            // from elsewhere (upstream matches the endpoint's address in its endpoint chain).
            Rule::new([Match::CtStatusDnat, Match::SaddrDaddrInSet(HAIRPIN_ENDPOINTS.into())], mark.clone()),
            Rule::new([Match::MarkBitClear(MASQUERADE_MARK)], Action::Verdict(Verdict::Return)),
            Rule::always(Action::MarkXor(MASQUERADE_MARK)),
            Rule::always(Action::MasqueradeFullyRandom),
        ]),
    );

    let mut sets = BTreeMap::new();
    sets.insert(CLUSTER_IPS.to_string(), Set::plain(KeyType::Addr, "Active ClusterIPs"));
    if let NodePortIps::Only(ips) = &ctx.nodeport_ips {
        let mut set = Set::plain(KeyType::Addr, "IPs that accept NodePort traffic");
        set.elements = ips.iter().map(|ip| (Key::Addr(*ip), None)).collect();
        sets.insert(NODEPORT_IPS.to_string(), set);
    }
    let maps = [
        (
            SERVICE_IPS,
            KeyType::AddrProtoPort,
            "ClusterIP, ExternalIP and LoadBalancer IP traffic with ClientIP affinity",
        ),
        (SERVICE_NODEPORTS, KeyType::ProtoPort, "NodePort traffic with ClientIP affinity"),
        (NO_ENDPOINT_SERVICES, KeyType::AddrProtoPort, "vmap to drop or reject packets to services with no endpoints"),
        (
            NO_ENDPOINT_NODEPORTS,
            KeyType::ProtoPort,
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (FIREWALL_IPS, KeyType::AddrProtoPort, "destinations that are subject to LoadBalancerSourceRanges"),
    ];
    for (name, key, comment) in maps {
        sets.insert(name.to_string(), Set::vmap(key, comment));
    }
    let frontend_sets = [
        (
            ADDRESSES.to_cluster.expect("addresses"),
            KeyType::AddrProtoPort,
            "ClusterIPs balanced over Cluster-policy endpoints",
        ),
        (
            ADDRESSES.to_local.expect("addresses"),
            KeyType::AddrProtoPort,
            "ClusterIPs balanced over node-local endpoints",
        ),
        (ADDRESSES.external_cluster, KeyType::AddrProtoPort, "ExternalIPs and LoadBalancer IPs with Cluster policy"),
        (ADDRESSES.external_local, KeyType::AddrProtoPort, "ExternalIPs and LoadBalancer IPs with Local policy"),
        (NODEPORT_FRONTENDS.external_cluster, KeyType::ProtoPort, "NodePorts with Cluster policy"),
        (NODEPORT_FRONTENDS.external_local, KeyType::ProtoPort, "NodePorts with Local policy"),
        (HAIRPIN_ENDPOINTS, KeyType::AddrAddr, "endpoint . endpoint: a pod reaching itself is masqueraded"),
    ];
    for (name, key, comment) in frontend_sets {
        sets.insert(name.to_string(), Set::plain(key, comment));
    }
    for pick in picks {
        sets.insert(pick.map().to_string(), pick.map_definition());
    }
    Ruleset { chains, sets }
}

/// The rules of an external chain under Local policy, in upstream's order: pod traffic
/// short-circuits to Cluster policy; the node's own traffic is masqueraded (its source is
/// a local address) and short-circuits too; everything else goes to `local`, if given.
fn local_policy_rules(ctx: &FamilyContext, cluster: &str, local: Option<&str>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for pod in if_local(&ctx.local_detector) {
        rules.push(Rule::new([pod], Action::Verdict(goto(cluster))));
    }
    rules.push(Rule::new([Match::FibSaddrLocal], Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()))));
    rules.push(Rule::new([Match::FibSaddrLocal], Action::Verdict(goto(cluster))));
    if let Some(local) = local {
        rules.push(Rule::always(Action::Verdict(goto(local))));
    }
    rules
}

fn loopback_net(ctx: &FamilyContext) -> ipnet::IpNet {
    match ctx.family {
        proxy_core::IpFamily::V4 => "127.0.0.0/8".parse().unwrap(),
        proxy_core::IpFamily::V6 => "::1/128".parse().unwrap(),
    }
}

/// Matches for "the source is not a local pod" (one rule); `None` without a detector.
pub fn if_not_local(detector: &LocalDetector) -> Option<Vec<Match>> {
    match detector {
        LocalDetector::Cidrs(nets) => Some(nets.iter().map(|n| Match::Saddr(AddrMatch::NotIn(*n))).collect()),
        LocalDetector::Bridge(name) => Some(vec![Match::NotIifname(name.clone())]),
        LocalDetector::InterfacePrefix(prefix) => Some(vec![Match::NotIifnamePrefix(prefix.clone())]),
        LocalDetector::None => None,
    }
}

/// Alternatives for "the source is a local pod" (one rule each).
fn if_local(detector: &LocalDetector) -> Vec<Match> {
    match detector {
        LocalDetector::Cidrs(nets) => nets.iter().map(|n| Match::Saddr(AddrMatch::In(*n))).collect(),
        LocalDetector::Bridge(name) => vec![Match::Iifname(name.clone())],
        LocalDetector::InterfacePrefix(prefix) => vec![Match::IifnamePrefix(prefix.clone())],
        LocalDetector::None => Vec::new(),
    }
}

fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.to_string())
}

fn no_endpoints(v: NoEndpoints) -> Option<Data> {
    Some(Data::Verdict(match v {
        NoEndpoints::Reject => goto(REJECT_CHAIN),
        NoEndpoints::Drop => Verdict::Drop,
    }))
}

fn goto_data(chain: &str) -> Option<Data> {
    Some(Data::Verdict(goto(chain)))
}

/// Renders one service port: as data in the shared sets and maps, or with chains of its
/// own when it has ClientIP affinity.
pub fn service_port(r: &ServicePortRules, ctx: &FamilyContext) -> PortObjects {
    let mut out = PortObjects::default();
    out.elements.insert((CLUSTER_IPS, Key::Addr(r.cluster_ip)), None);
    if r.affinity_timeout.is_some() {
        chained_port(r, ctx, &mut out);
    } else {
        mapped_port(r, &mut out);
    }
    let external_verdict = r.external_verdict().and_then(no_endpoints);
    if let Some(v) = &external_verdict {
        for ip in r.external_ips.iter().chain(&r.load_balancer_ips) {
            out.elements
                .insert((NO_ENDPOINT_SERVICES, Key::AddrProtoPort(*ip, r.name.protocol, r.port)), Some(v.clone()));
        }
        if let Some(np) = r.node_port {
            out.elements.insert((NO_ENDPOINT_NODEPORTS, Key::ProtoPort(r.name.protocol, np)), Some(v.clone()));
        }
    }
    if let proxy_core::Route::NoEndpoints(v) = r.internal_route() {
        out.elements
            .insert((NO_ENDPOINT_SERVICES, Key::AddrProtoPort(r.cluster_ip, r.name.protocol, r.port)), no_endpoints(v));
    }
    if let Some(fw) = &r.firewall {
        let firewall_chain = format!("firewall-{}", names::service_port(&r.name));
        for ip in &r.load_balancer_ips {
            let key = Key::AddrProtoPort(*ip, r.name.protocol, r.port);
            out.elements.insert((FIREWALL_IPS, key), goto_data(&firewall_chain));
        }
        let mut rules: Vec<Rule> = fw
            .allowed
            .iter()
            .map(|net| Rule::new([Match::Saddr(AddrMatch::In(*net))], Action::Verdict(Verdict::Return)))
            .collect();
        rules.push(Rule::always(Action::Verdict(Verdict::Drop)));
        out.chains.insert(firewall_chain, regular(rules));
    }
    out
}

/// One frontend of a service port in the data layout.
#[derive(Clone, Copy)]
enum Frontend {
    /// A ClusterIP, external IP or load-balancer IP, with the service port.
    Address(std::net::IpAddr, Protocol, u16),
    /// A NodePort.
    NodePort(Protocol, u16),
}

impl Frontend {
    fn kind(self) -> &'static Frontends {
        match self {
            Frontend::Address(..) => &ADDRESSES,
            Frontend::NodePort(..) => &NODEPORT_FRONTENDS,
        }
    }

    fn key(self) -> Key {
        match self {
            Frontend::Address(ip, proto, port) => Key::AddrProtoPort(ip, proto, port),
            Frontend::NodePort(proto, port) => Key::ProtoPort(proto, port),
        }
    }

    fn slot(self, slot: u32) -> Key {
        match self {
            Frontend::Address(ip, proto, port) => Key::AddrProtoPortSlot(ip, proto, port, slot),
            Frontend::NodePort(proto, port) => Key::ProtoPortSlot(proto, port, slot),
        }
    }
}

/// A service port as data: frontends in the dispatch sets, endpoints in the endpoint maps.
fn mapped_port(r: &ServicePortRules, out: &mut PortObjects) {
    let proto = r.name.protocol;
    let mut add = |frontend: Frontend, set: &'static str, policies: &[Policy]| {
        out.elements.insert((set, frontend.key()), None);
        for policy in policies {
            let eps = r.endpoints(*policy);
            if eps.is_empty() {
                continue;
            }
            let (prefix, pick) = frontend.kind().endpoints(*policy);
            let n = eps.len() as u32;
            let map = endpoint_map(prefix, n);
            for (i, ep) in eps.iter().enumerate() {
                out.elements.insert((map, frontend.slot(i as u32)), Some(Data::Endpoint(ep.addr)));
            }
            out.picks.insert(Pick { chain: pick, protocol: proto, endpoints: n });
        }
    };
    if let proxy_core::Route::Endpoints(policy) = r.internal_route() {
        let set = match policy {
            Policy::Cluster => ADDRESSES.to_cluster,
            Policy::Local => ADDRESSES.to_local,
        };
        add(Frontend::Address(r.cluster_ip, proto, r.port), set.expect("addresses"), &[policy]);
    }
    if r.uses_external_chain() {
        // Under Local policy, pod and node traffic short-circuits to Cluster policy, so
        // both endpoint lists are needed.
        let policies: &[Policy] =
            if r.external_policy_local { &[Policy::Cluster, Policy::Local] } else { &[Policy::Cluster] };
        let mut frontends: Vec<Frontend> =
            r.external_ips.iter().chain(&r.load_balancer_ips).map(|ip| Frontend::Address(*ip, proto, r.port)).collect();
        frontends.extend(r.node_port.map(|np| Frontend::NodePort(proto, np)));
        for frontend in frontends {
            let kind = frontend.kind();
            let set = if r.external_policy_local { kind.external_local } else { kind.external_cluster };
            add(frontend, set, policies);
        }
    }
    for ep in r.reachable_endpoints() {
        out.elements.insert((HAIRPIN_ENDPOINTS, Key::AddrAddr(ep.addr.ip(), ep.addr.ip())), None);
    }
}

/// A service port with chains of its own, as upstream lays it out: the ClientIP affinity
/// of each endpoint lives in a dynamic set that its endpoint chain updates.
fn chained_port(r: &ServicePortRules, ctx: &FamilyContext, out: &mut PortObjects) {
    let base = names::service_port(&r.name);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let proto = r.name.protocol;
    let internal_chain = if r.internal_policy_local { &local_chain } else { &cluster_chain };

    let mut masquerade_rule = None;
    if r.has_internal_endpoints() {
        out.elements.insert((SERVICE_IPS, Key::AddrProtoPort(r.cluster_ip, proto, r.port)), goto_data(internal_chain));
        let to_cluster_ip = Match::Daddr(AddrMatch::Is(r.cluster_ip));
        let mark = Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()));
        masquerade_rule = if ctx.masquerade_all {
            Some(Rule::new([to_cluster_ip], mark))
        } else {
            if_not_local(&ctx.local_detector).map(|mut m| {
                m.insert(0, to_cluster_ip);
                Rule::new(m, mark)
            })
        };
    }

    if r.uses_external_chain() {
        for ip in r.external_ips.iter().chain(&r.load_balancer_ips) {
            out.elements.insert((SERVICE_IPS, Key::AddrProtoPort(*ip, proto, r.port)), goto_data(&external_chain));
        }
        if let Some(np) = r.node_port {
            out.elements.insert((SERVICE_NODEPORTS, Key::ProtoPort(proto, np)), goto_data(&external_chain));
        }
        let rules = if !r.external_policy_local {
            // Cluster policy may cross nodes: masquerade everything.
            let mut rules = vec![Rule::always(Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into())))];
            rules.push(Rule::always(Action::Verdict(goto(&cluster_chain))));
            rules
        } else {
            let local = r.has_external_endpoints().then_some(local_chain.as_str());
            local_policy_rules(ctx, &cluster_chain, local)
        };
        out.chains.insert(external_chain, regular(rules));
    }

    for (chain, eps) in [(&cluster_chain, &r.cluster_endpoints), (&local_chain, &r.local_endpoints)] {
        if eps.is_empty() {
            continue;
        }
        let mut rules = Vec::new();
        if chain == internal_chain
            && let Some(rule) = &masquerade_rule
        {
            rules.push(rule.clone());
        }
        for ep in eps.iter() {
            let ep_base = names::endpoint(&r.name, ep.addr);
            rules.push(Rule::new(
                [Match::SaddrInSet(format!("affinity-{ep_base}"))],
                Action::Verdict(goto(&format!("endpoint-{ep_base}"))),
            ));
        }
        rules.extend(balance(r, eps));
        out.chains.insert(chain.clone(), regular(rules));
    }

    for ep in r.reachable_endpoints() {
        let ep_base = names::endpoint(&r.name, ep.addr);
        let mut rules = vec![Rule::new(
            [Match::Saddr(AddrMatch::Is(ep.addr.ip()))],
            Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into())),
        )];
        if let Some(timeout) = r.affinity_timeout {
            let set = format!("affinity-{ep_base}");
            rules.push(Rule::always(Action::UpdateSaddr(set.clone())));
            out.sets.insert(set, Set::affinity(timeout));
        }
        rules.push(Rule::new([Match::L4Proto(proto)], Action::Dnat(ep.addr)));
        out.chains.insert(format!("endpoint-{ep_base}"), regular(rules));
    }
}

/// The load-balancing rules of a policy chain: a `goto` for one endpoint; otherwise a
/// ladder in which rule `i` takes the packet with probability 1/(N-i), which gives each of
/// the N endpoints probability 1/N (the iptables mode's `statistic` ladder; no set).
fn balance(r: &ServicePortRules, eps: &[Target]) -> Vec<Rule> {
    let endpoint_chain = |ep: &Target| goto(&format!("endpoint-{}", names::endpoint(&r.name, ep.addr)));
    let n = eps.len();
    eps.iter()
        .enumerate()
        .map(|(i, ep)| {
            let remaining = (n - i) as u32;
            let matches = if remaining > 1 { vec![Match::NumgenZero(remaining)] } else { Vec::new() };
            Rule::new(matches, Action::Verdict(endpoint_chain(ep)))
        })
        .collect()
}

/// Renders a whole family: the skeleton plus every service port. Element conflicts (two
/// service ports claiming one key, which the API server normally prevents) are resolved in
/// favour of the first in name order.
pub fn family(ctx: &FamilyContext, ports: &BTreeMap<proxy_core::ServicePortName, Arc<ServicePortRules>>) -> Ruleset {
    let objects: Vec<PortObjects> = ports.values().map(|r| service_port(r, ctx)).collect();
    let picks = objects.iter().flat_map(|o| o.picks.iter().copied()).collect();
    let mut ruleset = skeleton(ctx, &picks);
    for o in objects {
        merge(&mut ruleset, o);
    }
    ruleset
}

/// Adds one service port's objects to a ruleset (its `pick-…` rules are the skeleton's).
pub fn merge(ruleset: &mut Ruleset, objects: PortObjects) {
    ruleset.chains.extend(objects.chains);
    ruleset.sets.extend(objects.sets);
    for ((set, key), data) in objects.elements {
        if let Some(set) = ruleset.sets.get_mut(set) {
            set.elements.entry(key).or_insert(data);
        }
    }
}
