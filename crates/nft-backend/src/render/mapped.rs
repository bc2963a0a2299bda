//! A service port without affinity, as data: its frontends in the dispatch sets, its
//! endpoints in the endpoint maps for its endpoint count.

use nft_client::names::HAIRPIN_ENDPOINTS;
use nft_client::ruleset::{Data, Key, SetName};
use proxy_core::{Policy, ServicePortRules};

use super::PortObjects;
use super::layout::{ADDRESSES, Frontend, Frontends, Pick};

/// A service port as data: frontends in the dispatch sets, endpoints in the endpoint maps.
pub(super) fn mapped_port(r: &ServicePortRules, out: &mut PortObjects) {
    let proto = r.name.protocol;
    let mut add = |frontend: Frontend, set: &'static &'static str, policies: &[Policy]| {
        out.elements.insert((SetName::fixed(set), frontend.key()), None);
        for policy in policies {
            let eps = r.endpoints(*policy);
            if eps.is_empty() {
                continue;
            }
            let (prefix, pick) = frontend.kind().endpoints(*policy);
            let n = eps.len() as u32;
            let map = SetName::numbered(prefix, n);
            for (i, ep) in eps.iter().enumerate() {
                out.elements.insert((map, frontend.slot(i as u32)), Some(Data::Endpoint(ep.addr)));
            }
            out.picks.insert(Pick { chain: pick, protocol: proto, endpoints: n });
        }
    };
    if let proxy_core::Route::Endpoints(policy) = r.internal_route() {
        let addresses: &'static Frontends = &ADDRESSES;
        let set = match policy {
            Policy::Cluster => addresses.to_cluster.as_ref(),
            Policy::Local => addresses.to_local.as_ref(),
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
            let set = if r.external_policy_local { &kind.external_local } else { &kind.external_cluster };
            add(frontend, set, policies);
        }
    }
    for ep in r.reachable_endpoints() {
        out.elements.insert((SetName::fixed(&HAIRPIN_ENDPOINTS), Key::AddrAddr(ep.addr.ip(), ep.addr.ip())), None);
    }
}
