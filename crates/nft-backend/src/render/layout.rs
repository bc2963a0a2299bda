//! kproxy's data layout: the shared sets, maps and `pick-…` chains that hold every
//! service port without affinity as elements (the [module](super) docs say why).

use nft_client::ruleset::{Action, FrontendKey, Key, KeyType, Match, Rule, Set, SetName, Slot};
use proxy_core::{Policy, Protocol};

/// The chain NodePort traffic is dispatched from.
pub(super) const NODEPORTS: &str = "nodeports";

/// How one kind of frontend reaches its endpoints in the data layout: the set of frontends
/// that enter each shared chain, the policy chains, and the endpoint maps with the chains
/// that pick from them.
pub(super) struct Frontends {
    pub(super) key: FrontendKey,
    /// Sets of frontends: straight to Cluster / Local endpoints (ClusterIPs only), and
    /// external under Cluster / Local policy.
    pub(super) to_cluster: Option<&'static str>,
    pub(super) to_local: Option<&'static str>,
    pub(super) external_cluster: &'static str,
    pub(super) external_local: &'static str,
    /// Chains for external traffic under Cluster / Local policy.
    pub(super) cluster_policy: &'static str,
    pub(super) local_policy: &'static str,
    /// Endpoint maps (the prefix of their names) and the chains that pick from them, per
    /// policy.
    pub(super) cluster_endpoints: &'static str,
    pub(super) local_endpoints: &'static str,
    /// Maglev tables (the prefix of their names), per policy, hashing the source address
    /// or the connection (each in maps of its own: a frontend is found by the first rule
    /// whose map holds it).
    pub(super) maglev_cluster: &'static str,
    pub(super) maglev_local: &'static str,
    pub(super) maglev_cluster_connection: &'static str,
    pub(super) maglev_local_connection: &'static str,
    /// Verdict maps from frontends to the chains of the Maglev tables their Service's
    /// ports share, per policy: the last rule of each `pick-…` chain looks them up.
    pub(super) shared_cluster: &'static str,
    pub(super) shared_local: &'static str,
    /// The map from frontends of shared Maglev tables to their target port.
    pub(super) target_ports: &'static str,
    pub(super) pick_cluster: &'static str,
    pub(super) pick_local: &'static str,
}

/// Address frontends: ClusterIPs, external IPs and load-balancer IPs.
pub(super) const ADDRESSES: Frontends = Frontends {
    key: FrontendKey::DaddrProtoPort,
    to_cluster: Some("to-cluster-endpoints"),
    to_local: Some("to-local-endpoints"),
    external_cluster: "external-ips-cluster-policy",
    external_local: "external-ips-local-policy",
    cluster_policy: "external-cluster-policy",
    local_policy: "external-local-policy",
    cluster_endpoints: "cluster-endpoints",
    local_endpoints: "local-endpoints",
    maglev_cluster: "maglev-cluster-endpoints",
    maglev_local: "maglev-local-endpoints",
    maglev_cluster_connection: "maglev-conn-cluster-endpoints",
    maglev_local_connection: "maglev-conn-local-endpoints",
    shared_cluster: "maglev-cluster-tables",
    shared_local: "maglev-local-tables",
    target_ports: "maglev-target-ports",
    pick_cluster: "pick-cluster-endpoint",
    pick_local: "pick-local-endpoint",
};

/// NodePorts.
pub(super) const NODEPORT_FRONTENDS: Frontends = Frontends {
    key: FrontendKey::ProtoPort,
    to_cluster: None,
    to_local: None,
    external_cluster: "nodeports-cluster-policy",
    external_local: "nodeports-local-policy",
    cluster_policy: "nodeport-cluster-policy",
    local_policy: "nodeport-local-policy",
    cluster_endpoints: "nodeport-cluster-endpoints",
    local_endpoints: "nodeport-local-endpoints",
    maglev_cluster: "maglev-nodeport-cluster-endpoints",
    maglev_local: "maglev-nodeport-local-endpoints",
    maglev_cluster_connection: "maglev-conn-nodeport-cluster-endpoints",
    maglev_local_connection: "maglev-conn-nodeport-local-endpoints",
    shared_cluster: "maglev-nodeport-cluster-tables",
    shared_local: "maglev-nodeport-local-tables",
    target_ports: "maglev-nodeport-target-ports",
    pick_cluster: "pick-nodeport-cluster-endpoint",
    pick_local: "pick-nodeport-local-endpoint",
};

impl Frontends {
    /// The pick chain of a policy.
    pub(super) fn pick(&'static self, policy: Policy) -> &'static str {
        match policy {
            Policy::Cluster => self.pick_cluster,
            Policy::Local => self.pick_local,
        }
    }

    /// The verdict map of shared Maglev tables of a policy.
    pub(super) fn shared(&'static self, policy: Policy) -> &'static &'static str {
        match policy {
            Policy::Cluster => &self.shared_cluster,
            Policy::Local => &self.shared_local,
        }
    }

    /// The key type of this kind's frontends.
    pub(super) fn key_type(&self) -> KeyType {
        match self.key {
            FrontendKey::DaddrProtoPort => KeyType::AddrProtoPort,
            FrontendKey::ProtoPort => KeyType::ProtoPort,
        }
    }

    /// The rules of one of this kind's `pick-…` chains: one per pick in use, then the
    /// lookup of frontends whose Service's ports share a Maglev table.
    pub(super) fn pick_rules<'p>(&'static self, chain: &str, picks: impl IntoIterator<Item = &'p Pick>) -> Vec<Rule> {
        let policy = if chain == self.pick_cluster { Policy::Cluster } else { Policy::Local };
        let mut rules: Vec<Rule> = picks.into_iter().filter(|p| p.chain == chain).map(Pick::rule).collect();
        rules.push(Rule::always(Action::Vmap { key: self.key, map: self.shared(policy).to_string() }));
        rules
    }

    pub(super) fn slot_key_type(&self, endpoints: u32) -> KeyType {
        match self.key {
            FrontendKey::DaddrProtoPort => KeyType::AddrProtoPortSlot(endpoints),
            FrontendKey::ProtoPort => KeyType::ProtoPortSlot(endpoints),
        }
    }
}

/// The `pick-…` chains.
pub(super) const PICK_CHAINS: [&str; 4] =
    [ADDRESSES.pick_cluster, ADDRESSES.pick_local, NODEPORT_FRONTENDS.pick_cluster, NODEPORT_FRONTENDS.pick_local];

/// The frontend kind whose `pick-…` chain this is.
pub(super) fn pick_chain_kind(chain: &str) -> &'static Frontends {
    if [NODEPORT_FRONTENDS.pick_cluster, NODEPORT_FRONTENDS.pick_local].contains(&chain) {
        &NODEPORT_FRONTENDS
    } else {
        &ADDRESSES
    }
}

/// One rule of a `pick-…` chain: the chain, and the protocol and slot count it serves,
/// with random slots (one per endpoint) or Maglev tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pick {
    /// The `pick-…` chain.
    pub chain: &'static str,
    /// The protocol.
    pub protocol: Protocol,
    /// The number of slots: endpoints, or the Maglev table size.
    pub endpoints: u32,
    /// How the slot is picked.
    pub slot: Slot,
}

impl Pick {
    /// The pick a rule of a `pick-…` chain serves, if it is one.
    pub fn of(chain: &str, rule: &Rule) -> Option<Pick> {
        let chain = PICK_CHAINS.into_iter().find(|c| *c == chain)?;
        match (rule.matches.as_slice(), &rule.action) {
            ([Match::L4Proto(protocol)], Action::DnatMap { modulus, slot, .. }) => {
                Some(Pick { chain, protocol: *protocol, endpoints: *modulus, slot: *slot })
            }
            _ => None,
        }
    }

    pub(super) fn frontends(&self) -> &'static Frontends {
        pick_chain_kind(self.chain)
    }

    /// The endpoint map the rule looks up: the one for this chain, slot kind and count.
    pub fn map(&self) -> SetName {
        let f = self.frontends();
        let cluster = self.chain == f.pick_cluster;
        let prefix = match (self.slot, cluster) {
            (Slot::Random, true) => &f.cluster_endpoints,
            (Slot::Random, false) => &f.local_endpoints,
            (Slot::SourceHash { with_port: false, .. }, true) => &f.maglev_cluster,
            (Slot::SourceHash { with_port: false, .. }, false) => &f.maglev_local,
            (Slot::SourceHash { with_port: true, .. }, true) => &f.maglev_cluster_connection,
            (Slot::SourceHash { with_port: true, .. }, false) => &f.maglev_local_connection,
        };
        SetName::numbered(prefix, self.endpoints)
    }

    /// The endpoint map's definition.
    pub fn map_definition(&self) -> Set {
        let which = if self.chain == self.frontends().pick_cluster { "Cluster-policy" } else { "node-local" };
        let n = self.endpoints;
        let comment = match self.slot {
            Slot::Random => {
                format!("{which} endpoints of frontends with {n} endpoint{}", if n == 1 { "" } else { "s" })
            }
            // nft 1.0.6 crashes listing a `typeof` that ends in `jhash`: the declaration
            // says `numgen random mod N`, which has the same 32-bit slot. The rule shows
            // the hash and its seed; the userdata (typeof and comment) must fit in 256
            // bytes, which leaves the comment under 60.
            Slot::SourceHash { with_port: false, .. } => format!("Maglev tables of {which} endpoints (jhash saddr)"),
            Slot::SourceHash { with_port: true, .. } => format!("Maglev tables of {which} endpoints (saddr . sport)"),
        };
        Set::endpoint_map(self.frontends().slot_key_type(self.endpoints), &comment)
    }

    /// The rule: `meta l4proto P dnat to KEY . numgen random mod N map @MAP-N`, or with
    /// `jhash ip saddr mod N seed S` for Maglev tables.
    pub fn rule(&self) -> Rule {
        Rule::new(
            [Match::L4Proto(self.protocol)],
            Action::DnatMap {
                key: self.frontends().key,
                slot: self.slot,
                modulus: self.endpoints,
                map: self.map().to_string(),
            },
        )
    }
}

/// One frontend of a service port in the data layout.
#[derive(Clone, Copy)]
pub(super) enum Frontend {
    /// A ClusterIP, external IP or load-balancer IP, with the service port.
    Address(std::net::IpAddr, Protocol, u16),
    /// A NodePort.
    NodePort(Protocol, u16),
}

impl Frontend {
    pub(super) fn kind(self) -> &'static Frontends {
        match self {
            Frontend::Address(..) => &ADDRESSES,
            Frontend::NodePort(..) => &NODEPORT_FRONTENDS,
        }
    }

    pub(super) fn key(self) -> Key {
        match self {
            Frontend::Address(ip, proto, port) => Key::AddrProtoPort(ip, proto, port),
            Frontend::NodePort(proto, port) => Key::ProtoPort(proto, port),
        }
    }

    pub(super) fn slot(self, slot: u32) -> Key {
        match self {
            Frontend::Address(ip, proto, port) => Key::AddrProtoPortSlot(ip, proto, port, slot),
            Frontend::NodePort(proto, port) => Key::ProtoPortSlot(proto, port, slot),
        }
    }
}
