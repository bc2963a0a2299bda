//! What IPVS cannot do, done with nftables: masquerade, REJECT/DROP for frontends without
//! endpoints, and `loadBalancerSourceRanges` firewalls (pure: `Desired` → one
//! [`Ruleset`] per family, written by nft-backend's netlink code).
//!
//! Upstream's IPVS mode does this with iptables and ipsets; here the sets are nftables
//! sets and the vocabulary is nft-backend's, so `nft list ruleset` shows it:
//!
//! - `filter-input` and `filter-output` (priority -110, before IPVS sees the packet at
//!   `LOCAL_IN`/`LOCAL_OUT`) jump, for new connections only (draining ones must reach
//!   IPVS), to `services-check`, which looks the destination up in `firewall-ips`
//!   (source-range firewalls), `no-endpoint-services` and `no-endpoint-nodeports` (reject
//!   or drop). `filter-input` then rejects new connections to a Service IP on a port that
//!   is no Service's (`service-ips-filter`, upstream's `KUBE-IPVS-FILTER`, k#72236): the
//!   node's own listeners are not exposed on every ClusterIP.
//! - `nat-prerouting` and `nat-output` (priority -100, before IPVS) mark for masquerade
//!   the connections upstream masquerades: to ClusterIPs from outside the pod network,
//!   to external and LB IPs and to NodePorts with Cluster policy, and the node's own
//!   connections whose source is a Service IP (the kernel picks the ClusterIP itself as
//!   source when the node connects to it: the endpoint could not answer that).
//! - `nat-postrouting` masquerades marked connections and hairpin ones (a pod reaching
//!   itself through a Service: after IPVS's DNAT, source and destination are the same).
//!   IPVS keeps conntrack (`net.ipv4.vs.conntrack=1`) so that the NAT hooks see its flows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nft_client::names::{
    FIREWALL_IPS, HAIRPIN_ENDPOINTS as HAIRPIN, MARK_FOR_MASQUERADE, MASQUERADE_MARK, MASQUERADING,
    NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, NODEPORT_IPS, REJECT_CHAIN, SERVICE_IPS, SERVICES,
};
use nft_client::ruleset::{
    Action, Chain, ChainType, Data, FrontendKey, Hook, Key, KeyType, Match, Rule, Ruleset, Set, Verdict,
};
use proxy_core::{Desired, FamilyContext, FamilyRules, IpFamily, NoEndpoints};

// Upstream's names, as the nftables backend writes them too; the rest are this table's own.
const SERVICES_CHECK: &str = "services-check";
const SERVICE_IPS_FILTER: &str = "service-ips-filter";
const SERVICE_FRONTENDS: &str = "service-frontends";
const CLUSTER_IPS: &str = "cluster-ip-ports";
const EXTERNAL: &str = "external-masquerade";
const NODEPORTS: &str = "nodeports-masquerade";

fn verdict(v: NoEndpoints) -> Option<Data> {
    Some(Data::Verdict(match v {
        NoEndpoints::Reject => Verdict::Goto(REJECT_CHAIN.into()),
        NoEndpoints::Drop => Verdict::Drop,
    }))
}

fn jump(chain: &str) -> Action {
    Action::Verdict(Verdict::Jump(chain.into()))
}

/// The fixed chains and empty sets of one family.
fn skeleton(ctx: &FamilyContext) -> Ruleset {
    let mut rs = Ruleset::default();
    let chains = &mut rs.chains;
    let check = Rule::new([Match::CtStateNew], jump(SERVICES_CHECK));
    let filter_service_ips =
        Rule::new([Match::CtStateNew, Match::DaddrInSet(SERVICE_IPS.into())], jump(SERVICE_IPS_FILTER));
    chains.insert(
        "filter-input".into(),
        Chain::base(ChainType::Filter, Hook::Input, -110, vec![check.clone(), filter_service_ips]),
    );
    chains.insert("filter-output".into(), Chain::base(ChainType::Filter, Hook::Output, -110, vec![check]));
    let always = |chain: &str| vec![Rule::always(jump(chain))];
    chains.insert("nat-prerouting".into(), Chain::base(ChainType::Nat, Hook::Prerouting, -100, always(SERVICES)));
    chains.insert("nat-output".into(), Chain::base(ChainType::Nat, Hook::Output, -100, always(SERVICES)));
    chains.insert("nat-postrouting".into(), Chain::base(ChainType::Nat, Hook::Postrouting, 100, always(MASQUERADING)));
    let by_frontend = |map: &str| Action::Vmap { key: FrontendKey::DaddrProtoPort, map: map.into() };
    chains.insert(
        SERVICES_CHECK.into(),
        Chain::regular(vec![
            Rule::always(by_frontend(FIREWALL_IPS)),
            Rule::always(by_frontend(NO_ENDPOINT_SERVICES)),
            Rule::new(
                [Match::DaddrInSet(NODEPORT_IPS.into())],
                Action::Vmap { key: FrontendKey::ProtoPort, map: NO_ENDPOINT_NODEPORTS.into() },
            ),
        ]),
    );
    chains.insert(
        SERVICE_IPS_FILTER.into(),
        Chain::regular(vec![
            Rule::new(
                [Match::KeyInSet(FrontendKey::DaddrProtoPort, SERVICE_FRONTENDS.into())],
                Action::Verdict(Verdict::Return),
            ),
            Rule::always(Action::Reject),
        ]),
    );
    chains.insert(REJECT_CHAIN.into(), Chain::regular(vec![Rule::always(Action::Reject)]));

    let mut services = vec![Rule::new([Match::SaddrInSet(SERVICE_IPS.into())], jump(MARK_FOR_MASQUERADE))];
    let cluster_ip = Match::KeyInSet(FrontendKey::DaddrProtoPort, CLUSTER_IPS.into());
    if ctx.masquerade_all {
        services.push(Rule::new([cluster_ip], jump(MARK_FOR_MASQUERADE)));
    } else if let Some(mut not_local) = Match::not_local_pod_source(&ctx.local_detector) {
        not_local.insert(0, cluster_ip);
        services.push(Rule::new(not_local, jump(MARK_FOR_MASQUERADE)));
    }
    services
        .push(Rule::new([Match::KeyInSet(FrontendKey::DaddrProtoPort, EXTERNAL.into())], jump(MARK_FOR_MASQUERADE)));
    services.push(Rule::new(
        [Match::DaddrInSet(NODEPORT_IPS.into()), Match::KeyInSet(FrontendKey::ProtoPort, NODEPORTS.into())],
        jump(MARK_FOR_MASQUERADE),
    ));
    chains.insert(SERVICES.into(), Chain::regular(services));
    chains.insert(MARK_FOR_MASQUERADE.into(), Chain::regular(vec![Rule::always(Action::MarkOr(MASQUERADE_MARK))]));
    chains.insert(
        MASQUERADING.into(),
        Chain::regular(vec![
            Rule::new([Match::SaddrDaddrInSet(HAIRPIN.into())], jump(MARK_FOR_MASQUERADE)),
            Rule::new([Match::MarkBitClear(MASQUERADE_MARK)], Action::Verdict(Verdict::Return)),
            Rule::always(Action::MarkXor(MASQUERADE_MARK)),
            Rule::always(Action::MasqueradeFullyRandom),
        ]),
    );

    let sets = &mut rs.sets;
    sets.insert(NO_ENDPOINT_SERVICES.into(), Set::vmap(KeyType::AddrProtoPort, "frontends without usable endpoints"));
    sets.insert(NO_ENDPOINT_NODEPORTS.into(), Set::vmap(KeyType::ProtoPort, "NodePorts without usable endpoints"));
    sets.insert(FIREWALL_IPS.into(), Set::vmap(KeyType::AddrProtoPort, "LB IPs with source ranges"));
    sets.insert(CLUSTER_IPS.into(), Set::plain(KeyType::AddrProtoPort, "ClusterIP frontends"));
    sets.insert(EXTERNAL.into(), Set::plain(KeyType::AddrProtoPort, "external and LB frontends with Cluster policy"));
    sets.insert(NODEPORTS.into(), Set::plain(KeyType::ProtoPort, "NodePorts with Cluster policy"));
    sets.insert(HAIRPIN.into(), Set::plain(KeyType::AddrAddr, "endpoints that may reach themselves"));
    sets.insert(SERVICE_IPS.into(), Set::plain(KeyType::Addr, "Service IPs bound to the dummy interface"));
    sets.insert(SERVICE_FRONTENDS.into(), Set::plain(KeyType::AddrProtoPort, "the Service ports of those IPs"));
    sets.insert(NODEPORT_IPS.into(), Set::plain(KeyType::Addr, "IPs that accept NodePort traffic"));
    rs
}

fn add(rs: &mut Ruleset, set: &str, key: Key, data: Option<Data>) {
    let elements = &mut rs.sets.get_mut(set).expect("a skeleton set").elements;
    elements.entry(key).or_insert(data);
}

/// The nftables side of every family, as `NftBackend::replace_tables` writes it.
pub fn tables(desired: &Desired, node_ports: &BTreeSet<IpAddr>) -> Vec<(IpFamily, Ruleset)> {
    desired.families().map(|f| (f.context.family, family(f, node_ports))).collect()
}

/// The nftables side of one family; `node_ports` holds the addresses NodePort virtual
/// services listen on (`IpvsDesired::node_ports`, both families).
pub fn family(rules: &FamilyRules, node_ports: &BTreeSet<IpAddr>) -> Ruleset {
    let ctx = &rules.context;
    let mut rs = skeleton(ctx);
    let node_ports: Vec<IpAddr> = node_ports.iter().copied().filter(|ip| IpFamily::of(ip) == ctx.family).collect();
    for ip in &node_ports {
        add(&mut rs, NODEPORT_IPS, Key::Addr(*ip), None);
    }
    let mut firewalls: BTreeMap<String, Chain> = BTreeMap::new();
    for r in rules.service_ports.values() {
        let proto = r.name.protocol;
        let frontend = |ip| Key::AddrProtoPort(ip, proto, r.port);
        add(&mut rs, CLUSTER_IPS, frontend(r.cluster_ip), None);
        for ip in std::iter::once(&r.cluster_ip).chain(&r.external_ips).chain(&r.load_balancer_ips) {
            add(&mut rs, SERVICE_IPS, Key::Addr(*ip), None);
            add(&mut rs, SERVICE_FRONTENDS, frontend(*ip), None);
        }
        if let proxy_core::Route::NoEndpoints(v) = r.internal_route() {
            add(&mut rs, NO_ENDPOINT_SERVICES, frontend(r.cluster_ip), verdict(v));
        }
        let externals = r.external_ips.iter().chain(&r.load_balancer_ips);
        match r.external_verdict() {
            Some(v) => {
                for ip in externals {
                    add(&mut rs, NO_ENDPOINT_SERVICES, frontend(*ip), verdict(v));
                }
                if let Some(np) = r.node_port.filter(|_| !node_ports.is_empty()) {
                    add(&mut rs, NO_ENDPOINT_NODEPORTS, Key::ProtoPort(proto, np), verdict(v));
                }
            }
            None if !r.external_policy_local => {
                for ip in externals {
                    add(&mut rs, EXTERNAL, frontend(*ip), None);
                }
                if let Some(np) = r.node_port {
                    add(&mut rs, NODEPORTS, Key::ProtoPort(proto, np), None);
                }
            }
            None => {}
        }
        for ep in r.reachable_endpoints() {
            add(&mut rs, HAIRPIN, Key::AddrAddr(ep.addr.ip(), ep.addr.ip()), None);
        }
        if let Some(fw) = &r.firewall {
            let chain = nft_client::names::firewall(&r.name);
            for ip in &r.load_balancer_ips {
                add(&mut rs, FIREWALL_IPS, frontend(*ip), Some(Data::Verdict(Verdict::Jump(chain.clone()))));
            }
            firewalls.insert(chain, Chain::firewall(&fw.allowed));
        }
    }
    rs.chains.extend(firewalls);
    rs
}
