//! A service port without affinity, as data: its frontends in the dispatch sets, its
//! endpoints in the endpoint maps for its endpoint count, or in the Maglev tables of its
//! table size, or (the usual Maglev case) in a table its Service's ports share.

use nft_client::names::HAIRPIN_ENDPOINTS;
use nft_client::ruleset::{Data, Key, SetName, Slot};
use proxy_core::{Policy, ServicePortRules, maglev};

use super::layout::{ADDRESSES, Frontend, Frontends, Pick};
use super::{PortObjects, goto_data, shared};

/// A service port as data: frontends in the dispatch sets, endpoints in the endpoint maps
/// (slot i is endpoint i) or the Maglev tables (slot i is the endpoint that owns it; the
/// same endpoints give the same slots, so an endpoint change touches only the slots that
/// move). `seed` is the node's Maglev seed.
pub(super) fn mapped_port(r: &ServicePortRules, seed: u32, out: &mut PortObjects) {
    let proto = r.name.protocol;
    // Each policy's slots: endpoint i, or the Maglev owner of slot i.
    let slots = |policy: Policy| -> Vec<Data> {
        let eps = r.endpoints(policy);
        match &r.maglev {
            None => eps.iter().map(|ep| Data::Endpoint(ep.addr)).collect(),
            // A shared table holds the slots (see `shared`).
            Some(m) if m.shared(policy).is_some() => Vec::new(),
            Some(m) => {
                let addrs: Vec<_> = eps.iter().map(|ep| ep.addr).collect();
                maglev::table(&addrs, m.table.size).into_iter().map(|i| Data::Endpoint(addrs[i as usize])).collect()
            }
        }
    };
    let slot = match &r.maglev {
        None => Slot::Random,
        Some(m) => Slot::SourceHash { seed, with_port: m.table.hash == maglev::Hash::Connection },
    };
    let tables = Policy::ALL.map(slots);
    let mut add = |frontend: Frontend, set: &'static &'static str, policies: &[Policy]| {
        out.elements.insert((SetName::fixed(set), frontend.key()), None);
        for policy in policies {
            if let Some(t) = r.maglev.as_ref().and_then(|m| m.shared(*policy)) {
                let name = shared::name(t);
                let kind = frontend.kind();
                out.elements.insert((SetName::fixed(kind.shared(*policy)), frontend.key()), goto_data(&name));
                let port = r.endpoints(*policy)[0].addr.port();
                out.elements.insert((SetName::fixed(&kind.target_ports), frontend.key()), Some(Data::Port(port)));
                out.tables.insert(name, t.clone());
                continue;
            }
            let table = &tables[policy.index()];
            if table.is_empty() {
                continue;
            }
            let pick =
                Pick { chain: frontend.kind().pick(*policy), protocol: proto, endpoints: table.len() as u32, slot };
            let map = pick.map();
            for (i, data) in table.iter().enumerate() {
                out.elements.insert((map, frontend.slot(i as u32)), Some(data.clone()));
            }
            out.picks.insert(pick);
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
