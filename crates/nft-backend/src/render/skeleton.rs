//! The fixed part of a family's table: base chains, dispatch chains, the `pick-…` rules
//! in use, and the shared sets and maps.

use std::collections::{BTreeMap, BTreeSet};

use nft_client::names::{
    FIREWALL_IPS, HAIRPIN_ENDPOINTS, MARK_FOR_MASQUERADE, MASQUERADE_MARK, MASQUERADING, NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES, NODEPORT_IPS, REJECT_CHAIN, SERVICE_IPS, SERVICES,
};
use nft_client::ruleset::{
    Action, AddrMatch, Chain, ChainType, DataType, FrontendKey, Hook, Key, KeyType, Match, Rule, Ruleset, Set, Verdict,
};
use proxy_core::{FamilyContext, NodePortIps};

use super::layout::{ADDRESSES, Frontends, NODEPORT_FRONTENDS, NODEPORTS, Pick};
use super::{CLUSTER_IPS, SERVICE_NODEPORTS, ct_new_jump, goto, jump};

const FIREWALL_CHECK: &str = "firewall-check";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";

/// The fixed part of the table: base chains, dispatch chains, the `pick-…` rules for
/// `picks`, and shared sets and maps.
pub fn skeleton(ctx: &FamilyContext, picks: &BTreeSet<Pick>) -> Ruleset {
    let mut chains = BTreeMap::new();
    base_chains(&mut chains);
    dispatch_chains(ctx, picks, &mut chains);
    check_chains(ctx, &mut chains);
    Ruleset { chains, sets: sets(ctx, picks) }
}

/// The chains hooked into the packet path, each jumping to the regular chains below.
fn base_chains(chains: &mut BTreeMap<String, Chain>) {
    use ChainType::{Filter, Nat};
    let mut add = |name: &str, chain: Chain| {
        chains.insert(name.to_string(), chain);
    };
    add("filter-prerouting-pre-dnat", Chain::base(Filter, Hook::Prerouting, -110, vec![ct_new_jump(FIREWALL_CHECK)]));
    add("filter-output-pre-dnat", Chain::base(Filter, Hook::Output, -110, vec![ct_new_jump(FIREWALL_CHECK)]));
    add(
        "filter-forward",
        Chain::base(
            Filter,
            Hook::Forward,
            0,
            vec![ct_new_jump(SERVICE_ENDPOINTS_CHECK), ct_new_jump(CLUSTER_IPS_CHECK)],
        ),
    );
    add(
        "filter-input",
        Chain::base(
            Filter,
            Hook::Input,
            0,
            vec![ct_new_jump(NODEPORT_ENDPOINTS_CHECK), ct_new_jump(SERVICE_ENDPOINTS_CHECK)],
        ),
    );
    add(
        "filter-output",
        Chain::base(
            Filter,
            Hook::Output,
            0,
            vec![ct_new_jump(SERVICE_ENDPOINTS_CHECK), ct_new_jump(CLUSTER_IPS_CHECK)],
        ),
    );
    add("nat-prerouting", Chain::base(Nat, Hook::Prerouting, -100, vec![jump(SERVICES)]));
    add("nat-output", Chain::base(Nat, Hook::Output, -100, vec![jump(SERVICES)]));
    add("nat-postrouting", Chain::base(Nat, Hook::Postrouting, 100, vec![jump(MASQUERADING)]));
}

/// The NodePort matches: for the `services` dispatch (a local destination) and for the
/// `nodeport-endpoints-check` filter.
fn nodeport_matches(ctx: &FamilyContext) -> (Vec<Match>, Vec<Match>) {
    match ctx.nodeport_ips {
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
    }
}

fn vmap(key: FrontendKey, map: &str) -> Rule {
    Rule::always(Action::Vmap { key, map: map.to_string() })
}

/// Dispatch: `services` and `nodeports` send each frontend to its policy or pick chain;
/// the policy chains; the `pick-…` chains with a rule per pick in use.
fn dispatch_chains(ctx: &FamilyContext, picks: &BTreeSet<Pick>, chains: &mut BTreeMap<String, Chain>) {
    let mut add = |name: &str, chain: Chain| {
        chains.insert(name.to_string(), chain);
    };
    let mark = Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()));
    // Dispatch. ClusterIP traffic from outside the pod network is masqueraded (upstream
    // does this in each service chain, matching the ClusterIP); then each frontend set
    // sends its traffic to a shared chain; service ports with chains of their own (ClientIP
    // affinity) are found in the verdict maps.
    let mut services = Vec::new();
    let to_cluster_ip = Match::DaddrInSet(CLUSTER_IPS.into());
    if ctx.masquerade_all {
        services.push(Rule::new([to_cluster_ip], mark.clone()));
    } else if let Some(mut m) = Match::not_local_pod_source(&ctx.local_detector) {
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
        Rule::new(nodeport_matches(ctx).0, Action::Verdict(goto(NODEPORTS))),
    ]);
    add(SERVICES, Chain::regular(services));
    add(
        NODEPORTS,
        Chain::regular(vec![
            in_set(&NODEPORT_FRONTENDS, NODEPORT_FRONTENDS.external_cluster, NODEPORT_FRONTENDS.cluster_policy),
            in_set(&NODEPORT_FRONTENDS, NODEPORT_FRONTENDS.external_local, NODEPORT_FRONTENDS.local_policy),
            vmap(FrontendKey::ProtoPort, SERVICE_NODEPORTS),
        ]),
    );
    for f in [&ADDRESSES, &NODEPORT_FRONTENDS] {
        // Cluster policy may cross nodes: masquerade everything.
        add(
            f.cluster_policy,
            Chain::regular(vec![Rule::always(mark.clone()), Rule::always(Action::Verdict(goto(f.pick_cluster)))]),
        );
        add(f.local_policy, Chain::regular(local_policy_rules(ctx, f.pick_cluster, Some(f.pick_local))));
        for chain in [f.pick_cluster, f.pick_local] {
            add(chain, Chain::regular(f.pick_rules(chain, picks)));
        }
    }
}

/// Filters and verdicts: source-range firewalls, no-endpoint verdicts, the ClusterIP
/// catch-all, reject, and masquerading.
fn check_chains(ctx: &FamilyContext, chains: &mut BTreeMap<String, Chain>) {
    let mut add = |name: &str, chain: Chain| {
        chains.insert(name.to_string(), chain);
    };
    let mark = Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()));
    add(FIREWALL_CHECK, Chain::regular(vec![vmap(FrontendKey::DaddrProtoPort, FIREWALL_IPS)]));
    add(SERVICE_ENDPOINTS_CHECK, Chain::regular(vec![vmap(FrontendKey::DaddrProtoPort, NO_ENDPOINT_SERVICES)]));
    add(
        NODEPORT_ENDPOINTS_CHECK,
        Chain::regular(vec![Rule::new(
            nodeport_matches(ctx).1,
            Action::Vmap { key: FrontendKey::ProtoPort, map: NO_ENDPOINT_NODEPORTS.to_string() },
        )]),
    );
    let mut cluster_ips_check = vec![Rule::new([Match::DaddrInSet(CLUSTER_IPS.into())], Action::Reject)];
    for net in &ctx.service_cidrs {
        cluster_ips_check.push(Rule::new([Match::Daddr(AddrMatch::In(*net))], Action::Verdict(Verdict::Drop)));
    }
    add(CLUSTER_IPS_CHECK, Chain::regular(cluster_ips_check));
    add(REJECT_CHAIN, Chain::regular(vec![Rule::always(Action::Reject)]));
    add(MARK_FOR_MASQUERADE, Chain::regular(vec![Rule::always(Action::MarkOr(MASQUERADE_MARK))]));
    add(
        MASQUERADING,
        Chain::regular(vec![
            // Hairpin: a pod that reached itself through a Service must see the reply come
            // from elsewhere (upstream matches the endpoint's address in its endpoint chain).
            Rule::new([Match::CtStatusDnat, Match::SaddrDaddrInSet(HAIRPIN_ENDPOINTS.into())], mark.clone()),
            Rule::new([Match::MarkBitClear(MASQUERADE_MARK)], Action::Verdict(Verdict::Return)),
            Rule::always(Action::MarkXor(MASQUERADE_MARK)),
            Rule::always(Action::MasqueradeFullyRandom),
        ]),
    );
}

/// The shared sets and maps, and the endpoint maps of the picks in use.
fn sets(ctx: &FamilyContext, picks: &BTreeSet<Pick>) -> BTreeMap<String, Set> {
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
    for f in [&ADDRESSES, &NODEPORT_FRONTENDS] {
        let what = if f.key == FrontendKey::ProtoPort { "NodePorts" } else { "Frontends" };
        for (map, policy) in [(f.shared_cluster, "Cluster"), (f.shared_local, "Local")] {
            let comment = format!("{what} to the Maglev tables their Service's ports share ({policy} policy)");
            sets.insert(map.to_string(), Set::vmap(f.key_type(), &comment));
        }
        let comment = format!("{what} of shared Maglev tables: their target port");
        sets.insert(f.target_ports.to_string(), Set::map(f.key_type(), DataType::Port, &comment));
    }
    for pick in picks {
        sets.insert(pick.map().to_string(), pick.map_definition());
    }
    sets
}

/// The rules of an external chain under Local policy, in upstream's order: pod traffic
/// short-circuits to Cluster policy; the node's own traffic is masqueraded (its source is
/// a local address) and short-circuits too; everything else goes to `local`, if given.
pub(super) fn local_policy_rules(ctx: &FamilyContext, cluster: &str, local: Option<&str>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for pod in Match::local_pod_source(&ctx.local_detector) {
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
