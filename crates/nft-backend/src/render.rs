//! Rendering proxy-core's [`FamilyRules`] into a [`Ruleset`] (pure).
//!
//! The layout is upstream kube-proxy's, with one change that matters at scale: load
//! balancing uses no sets at all. Upstream writes one anonymous verdict map per policy
//! chain (`numgen random mod N vmap { 0 : goto …, … }`), so the number of sets grows with
//! the number of Services and the kernel's by-name and by-id set lookups make big syncs
//! quadratic (k#139513, k#140723). A map shared by all Services does not help: each rule
//! that looks it up is a binding, and the kernel checks every new `goto` element against
//! every binding. kproxy instead writes a short ladder per policy chain:
//! `numgen random mod N 0 goto ep0`, `numgen random mod N-1 0 goto ep1`, …, `goto epN-1`,
//! which picks each endpoint with probability 1/N, and a plain `goto` for one endpoint.
//! The number of sets and maps is constant (affinity sets, one per endpoint of a
//! ClientIP-affinity Service as upstream has them, are the exception).

use std::collections::BTreeMap;
use std::sync::Arc;

use proxy_core::{FamilyContext, LocalDetector, NoEndpoints, NodePortIps, ServicePortRules, Target};

use crate::names;
use crate::ruleset::{
    Action, AddrMatch, BaseChain, Chain, ChainType, Hook, Key, KeyType, Match, Rule, Ruleset, Set, Verdict, VmapKey,
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

/// The objects one service port contributes: its own chains and sets, and its elements in
/// the shared sets and maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    /// Chains owned by the service port, by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets owned by the service port (affinity), by name.
    pub sets: BTreeMap<String, Set>,
    /// Elements in shared sets and maps: (set, key) → verdict.
    pub elements: BTreeMap<(&'static str, Key), Option<Verdict>>,
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

/// The fixed part of the table: base chains, dispatch chains and shared sets and maps.
pub fn skeleton(ctx: &FamilyContext) -> Ruleset {
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
    add(FIREWALL_CHECK, regular(vec![vmap(VmapKey::DaddrProtoPort, FIREWALL_IPS)]));
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
    let nodeport_vmap =
        |matches| Rule::new(matches, Action::Vmap { key: VmapKey::ProtoPort, map: SERVICE_NODEPORTS.to_string() });
    add(SERVICES, regular(vec![vmap(VmapKey::DaddrProtoPort, SERVICE_IPS), nodeport_vmap(nodeport_match)]));
    add(SERVICE_ENDPOINTS_CHECK, regular(vec![vmap(VmapKey::DaddrProtoPort, NO_ENDPOINT_SERVICES)]));
    add(
        NODEPORT_ENDPOINTS_CHECK,
        regular(vec![Rule::new(
            nodeport_check_match,
            Action::Vmap { key: VmapKey::ProtoPort, map: NO_ENDPOINT_NODEPORTS.to_string() },
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
        (SERVICE_IPS, KeyType::AddrProtoPort, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        (SERVICE_NODEPORTS, KeyType::ProtoPort, "NodePort traffic"),
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
    Ruleset { chains, sets }
}

fn loopback_net(ctx: &FamilyContext) -> ipnet::IpNet {
    match ctx.family {
        proxy_core::IpFamily::V4 => "127.0.0.0/8".parse().unwrap(),
        proxy_core::IpFamily::V6 => "::1/128".parse().unwrap(),
    }
}

/// Matches for "the source is not a local pod" (one rule); `None` without a detector.
fn if_not_local(detector: &LocalDetector) -> Option<Vec<Match>> {
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

fn no_endpoints(v: NoEndpoints) -> Option<Verdict> {
    Some(match v {
        NoEndpoints::Reject => goto(REJECT_CHAIN),
        NoEndpoints::Drop => Verdict::Drop,
    })
}

/// Renders one service port.
pub fn service_port(r: &ServicePortRules, ctx: &FamilyContext) -> PortObjects {
    let mut out = PortObjects::default();
    let base = names::service_port(&r.name);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let firewall_chain = format!("firewall-{base}");
    let proto = r.name.protocol;
    let internal_chain = if r.internal_policy_local { &local_chain } else { &cluster_chain };

    out.elements.insert((CLUSTER_IPS, Key::Addr(r.cluster_ip)), None);
    let cip_key = Key::AddrProtoPort(r.cluster_ip, proto, r.port);
    let mut masquerade_rule = None;
    if r.has_internal_endpoints() {
        out.elements.insert((SERVICE_IPS, cip_key), Some(goto(internal_chain)));
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
    } else if let proxy_core::Route::NoEndpoints(v) = r.internal_route() {
        out.elements.insert((NO_ENDPOINT_SERVICES, cip_key), no_endpoints(v));
    }

    let external_verdict = r.external_verdict().and_then(no_endpoints);
    let uses_external = r.uses_external_chain();
    for ip in r.external_ips.iter().chain(&r.load_balancer_ips) {
        let key = Key::AddrProtoPort(*ip, proto, r.port);
        if uses_external {
            out.elements.insert((SERVICE_IPS, key), Some(goto(&external_chain)));
        }
        if let Some(v) = &external_verdict {
            out.elements.insert((NO_ENDPOINT_SERVICES, key), Some(v.clone()));
        }
    }
    if let Some(fw) = &r.firewall {
        for ip in &r.load_balancer_ips {
            out.elements.insert((FIREWALL_IPS, Key::AddrProtoPort(*ip, proto, r.port)), Some(goto(&firewall_chain)));
        }
        let mut rules: Vec<Rule> = fw
            .allowed
            .iter()
            .map(|net| Rule::new([Match::Saddr(AddrMatch::In(*net))], Action::Verdict(Verdict::Return)))
            .collect();
        rules.push(Rule::always(Action::Verdict(Verdict::Drop)));
        out.chains.insert(firewall_chain.clone(), regular(rules));
    }
    if let Some(np) = r.node_port {
        let key = Key::ProtoPort(proto, np);
        if uses_external {
            out.elements.insert((SERVICE_NODEPORTS, key), Some(goto(&external_chain)));
        }
        if let Some(v) = &external_verdict {
            out.elements.insert((NO_ENDPOINT_NODEPORTS, key), Some(v.clone()));
        }
    }

    if uses_external {
        let mut rules = Vec::new();
        let mark = || Rule::always(Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into())));
        if !r.external_policy_local {
            // Cluster policy may cross nodes: masquerade everything.
            rules.push(mark());
        } else {
            for local in if_local(&ctx.local_detector) {
                // Pod traffic to an external frontend short-circuits to Cluster policy.
                rules.push(Rule::new([local], Action::Verdict(goto(&cluster_chain))));
            }
            // The node's own traffic: masquerade (its source is a local address) and
            // short-circuit to Cluster policy.
            rules.push(Rule::new([Match::FibSaddrLocal], Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()))));
            rules.push(Rule::new([Match::FibSaddrLocal], Action::Verdict(goto(&cluster_chain))));
        }
        if r.has_external_endpoints() {
            let policy = if r.external_policy_local { &local_chain } else { &cluster_chain };
            rules.push(Rule::always(Action::Verdict(goto(policy))));
        }
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
        if r.affinity_timeout.is_some() {
            for ep in eps.iter() {
                let ep_base = names::endpoint(&r.name, ep.addr);
                rules.push(Rule::new(
                    [Match::SaddrInSet(format!("affinity-{ep_base}"))],
                    Action::Verdict(goto(&format!("endpoint-{ep_base}"))),
                ));
            }
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
    out
}

/// The load-balancing rules of a policy chain: a `goto` for one endpoint; otherwise a
/// ladder in which rule `i` takes the packet with probability 1/(N-i), which gives each of
/// the N endpoints probability 1/N.
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
    let mut ruleset = skeleton(ctx);
    for r in ports.values() {
        merge(&mut ruleset, service_port(r, ctx));
    }
    ruleset
}

/// Adds one service port's objects to a ruleset.
pub fn merge(ruleset: &mut Ruleset, objects: PortObjects) {
    ruleset.chains.extend(objects.chains);
    ruleset.sets.extend(objects.sets);
    for ((set, key), verdict) in objects.elements {
        if let Some(set) = ruleset.sets.get_mut(set) {
            set.elements.entry(key).or_insert(verdict);
        }
    }
}
