//! A service port with ClientIP affinity, laid out as upstream does: chains of its own,
//! and one dynamic affinity set per endpoint that its endpoint chain updates.

use nft_client::names::{self, MARK_FOR_MASQUERADE, SERVICE_IPS};
use nft_client::ruleset::{Action, AddrMatch, Chain, Key, Match, Rule, Set, SetName, Verdict};
use proxy_core::{FamilyContext, ServicePortRules, Target};

use super::skeleton::local_policy_rules;
use super::{PortObjects, SERVICE_NODEPORTS, goto, goto_data};

/// A service port with chains of its own, as upstream lays it out: the ClientIP affinity
/// of each endpoint lives in a dynamic set that its endpoint chain updates.
pub(super) fn chained_port(r: &ServicePortRules, ctx: &FamilyContext, out: &mut PortObjects) {
    let base = names::service_port(&r.name);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let proto = r.name.protocol;
    let internal_chain = if r.internal_policy_local { &local_chain } else { &cluster_chain };

    let mut masquerade_rule = None;
    if r.has_internal_endpoints() {
        out.elements.insert(
            (SetName::fixed(&SERVICE_IPS), Key::AddrProtoPort(r.cluster_ip, proto, r.port)),
            goto_data(internal_chain),
        );
        let to_cluster_ip = Match::Daddr(AddrMatch::Is(r.cluster_ip));
        let mark = Action::Verdict(Verdict::Jump(MARK_FOR_MASQUERADE.into()));
        masquerade_rule = if ctx.masquerade_all {
            Some(Rule::new([to_cluster_ip], mark))
        } else {
            Match::not_local_pod_source(&ctx.local_detector).map(|mut m| {
                m.insert(0, to_cluster_ip);
                Rule::new(m, mark)
            })
        };
    }

    if r.uses_external_chain() {
        for ip in r.external_ips.iter().chain(&r.load_balancer_ips) {
            out.elements.insert(
                (SetName::fixed(&SERVICE_IPS), Key::AddrProtoPort(*ip, proto, r.port)),
                goto_data(&external_chain),
            );
        }
        if let Some(np) = r.node_port {
            out.elements
                .insert((SetName::fixed(&SERVICE_NODEPORTS), Key::ProtoPort(proto, np)), goto_data(&external_chain));
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
        out.chains.insert(external_chain, Chain::regular(rules));
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
        out.chains.insert(chain.clone(), Chain::regular(rules));
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
        out.chains.insert(format!("endpoint-{ep_base}"), Chain::regular(rules));
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
