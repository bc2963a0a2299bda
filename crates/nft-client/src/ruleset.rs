//! The nftables objects kproxy writes, as plain data: one table with chains, rules, sets
//! and maps, per IP family.
//!
//! Rules are built from a closed vocabulary ([`Match`] and [`Action`]): every shape kproxy
//! emits is listed here, rendered to nft syntax by [`crate::text`] and to netlink by
//! [`crate::netlink`]. Nothing else can be written, and a kernel test checks that `nft`
//! lists every shape back as [`crate::text`] prints it, so the kernel never holds a rule
//! the tools cannot show.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use ipnet::IpNet;
use proxy_core::{IpFamily, LocalDetector, Protocol};

/// A chain's type (for base chains).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainType {
    /// `type filter`.
    Filter,
    /// `type nat`.
    Nat,
}

/// A netfilter hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

/// What makes a chain a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BaseChain {
    /// The chain type.
    pub kind: ChainType,
    /// The hook.
    pub hook: Hook,
    /// The priority.
    pub priority: i32,
}

/// A comparison of an address against a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrMatch {
    /// Equal to this address.
    Is(IpAddr),
    /// Inside this network.
    In(IpNet),
    /// Outside this network.
    NotIn(IpNet),
}

/// One condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Match {
    /// `ct state new`.
    CtStateNew,
    /// `ip daddr …`.
    Daddr(AddrMatch),
    /// `ip saddr …`.
    Saddr(AddrMatch),
    /// `ip daddr @set`.
    DaddrInSet(String),
    /// `ip saddr @set`.
    SaddrInSet(String),
    /// `fib daddr type local`.
    FibDaddrLocal,
    /// `fib saddr type local`.
    FibSaddrLocal,
    /// `meta l4proto tcp`.
    L4Proto(Protocol),
    /// `iifname "br0"`.
    Iifname(String),
    /// `iifname "veth*"`.
    IifnamePrefix(String),
    /// `iifname != "br0"`.
    NotIifname(String),
    /// `iifname != "veth*"`.
    NotIifnamePrefix(String),
    /// `meta mark & BIT == 0`.
    MarkBitClear(u32),
    /// `numgen random mod N 0`: true with probability 1/N.
    NumgenZero(u32),
    /// `ct status dnat`: the connection's destination was translated.
    CtStatusDnat,
    /// `KEY @set`, e.g. `ip daddr . meta l4proto . th dport @set`.
    KeyInSet(FrontendKey, String),
    /// `ip saddr . ip daddr @set`.
    SaddrDaddrInSet(String),
}

impl Match {
    /// Alternatives for "the source is a local pod", one rule each, as the detector
    /// (`--detect-local-mode`) defines it; none without a detector.
    pub fn local_pod_source(detector: &LocalDetector) -> Vec<Match> {
        match detector {
            LocalDetector::Cidrs(nets) => nets.iter().map(|n| Match::Saddr(AddrMatch::In(*n))).collect(),
            LocalDetector::Bridge(name) => vec![Match::Iifname(name.clone())],
            LocalDetector::InterfacePrefix(prefix) => vec![Match::IifnamePrefix(prefix.clone())],
            LocalDetector::None => Vec::new(),
        }
    }

    /// The conditions, all in one rule, for "the source is not a local pod"; `None`
    /// without a detector.
    pub fn not_local_pod_source(detector: &LocalDetector) -> Option<Vec<Match>> {
        match detector {
            LocalDetector::Cidrs(nets) => Some(nets.iter().map(|n| Match::Saddr(AddrMatch::NotIn(*n))).collect()),
            LocalDetector::Bridge(name) => Some(vec![Match::NotIifname(name.clone())]),
            LocalDetector::InterfacePrefix(prefix) => Some(vec![Match::NotIifnamePrefix(prefix.clone())]),
            LocalDetector::None => None,
        }
    }
}

/// The packet fields a frontend is looked up by, in a set, a verdict map or an endpoint map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontendKey {
    /// `ip daddr . meta l4proto . th dport`.
    DaddrProtoPort,
    /// `meta l4proto . th dport`.
    ProtoPort,
}

/// A verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

/// How an [`Action::DnatMap`] picks a frontend's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// `numgen random mod N`: a random slot per connection.
    Random,
    /// `jhash ip saddr mod N seed S` (or `jhash ip saddr . th sport …` with the source
    /// port): the slot of the client's address, or of the connection, the same on every
    /// node with the same seed (Maglev tables).
    SourceHash {
        /// The `jhash` seed.
        seed: u32,
        /// Whether the source port is hashed too.
        with_port: bool,
    },
}

/// What a rule does when its matches hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A verdict.
    Verdict(Verdict),
    /// `KEY vmap @MAP`.
    Vmap {
        /// How the key is built.
        key: FrontendKey,
        /// The map.
        map: String,
    },
    /// `dnat ip to KEY . numgen random mod N map @MAP` (needs a preceding
    /// [`Match::L4Proto`]): picks one of a frontend's N slots, stored in the endpoint map
    /// under slots 0 to N-1 (one per endpoint, or a Maglev table).
    DnatMap {
        /// The frontend part of the key.
        key: FrontendKey,
        /// How the slot is picked.
        slot: Slot,
        /// The number of slots.
        modulus: u32,
        /// The endpoint map.
        map: String,
    },
    /// `dnat ip to jhash ip saddr mod N seed S map @TABLE : KEY map @PORTS` (needs a
    /// preceding [`Match::L4Proto`]): the address from a Maglev table of N slots that a
    /// Service's ports share (slot → address), the port by frontend.
    DnatTable {
        /// How the slot is picked ([`Slot::SourceHash`]).
        slot: Slot,
        /// The number of slots.
        modulus: u32,
        /// The table: slot → endpoint address.
        table: String,
        /// How the frontend is found in `ports`.
        key: FrontendKey,
        /// The map from frontend to target port.
        ports: String,
    },
    /// `meta mark set meta mark | BIT`.
    MarkOr(u32),
    /// `meta mark set meta mark ^ BIT`.
    MarkXor(u32),
    /// `masquerade fully-random`.
    MasqueradeFullyRandom,
    /// `dnat to ADDR:PORT` (needs a preceding [`Match::L4Proto`]).
    Dnat(SocketAddr),
    /// `update @SET { ip saddr }`.
    UpdateSaddr(String),
    /// `reject` (ICMP port unreachable).
    Reject,
}

/// A rule: all matches, then the action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// What happens then.
    pub action: Action,
}

impl Rule {
    /// A rule with these matches and action.
    pub fn new(matches: impl Into<Vec<Match>>, action: Action) -> Rule {
        Rule { matches: matches.into(), action }
    }

    /// An unconditional action.
    pub fn always(action: Action) -> Rule {
        Rule { matches: Vec::new(), action }
    }

    /// Whether the kernel is asked to echo this rule back with its handle when it is
    /// added: endpoint-picking rules, so that a later partial sync can insert next to them
    /// or delete them.
    pub fn echoed(&self) -> bool {
        matches!(self.action, Action::DnatMap { .. })
    }

    /// The chains this rule jumps or goes to.
    pub fn target(&self) -> Option<&str> {
        match &self.action {
            Action::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => Some(c),
            _ => None,
        }
    }

    /// The sets and maps this rule looks up or updates.
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        let in_matches = self.matches.iter().filter_map(|m| match m {
            Match::DaddrInSet(s) | Match::SaddrInSet(s) | Match::KeyInSet(_, s) | Match::SaddrDaddrInSet(s) => {
                Some(s.as_str())
            }
            _ => None,
        });
        let in_action = match &self.action {
            Action::Vmap { map, .. } | Action::DnatMap { map, .. } => Some(map.as_str()),
            Action::DnatTable { table, .. } => Some(table.as_str()),
            Action::UpdateSaddr(set) => Some(set.as_str()),
            _ => None,
        };
        let ports = match &self.action {
            Action::DnatTable { ports, .. } => Some(ports.as_str()),
            _ => None,
        };
        in_matches.chain(in_action).chain(ports)
    }
}

/// A chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Set for base chains.
    pub base: Option<BaseChain>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A base chain: hooked into the packet path at `hook` with `priority`.
    pub fn base(kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
        Chain { base: Some(BaseChain { kind, hook, priority }), rules }
    }

    /// A regular chain, reached by `jump` or `goto`.
    pub fn regular(rules: Vec<Rule>) -> Chain {
        Chain { base: None, rules }
    }

    /// A source-range firewall (`loadBalancerSourceRanges`): `return` for sources in
    /// `allowed`, drop the rest.
    pub fn firewall<'a>(allowed: impl IntoIterator<Item = &'a IpNet>) -> Chain {
        let mut rules: Vec<Rule> = allowed
            .into_iter()
            .map(|net| Rule::new([Match::Saddr(AddrMatch::In(*net))], Action::Verdict(Verdict::Return)))
            .collect();
        rules.push(Rule::always(Action::Verdict(Verdict::Drop)));
        Chain::regular(rules)
    }
}

/// The name of a set or map, made without allocating: fixed (`cluster-ips`) or a fixed
/// prefix and a count (`cluster-endpoints-3`). Elements are keyed by the set they belong
/// to, hundreds of thousands of them in a big cluster, so the name is a 16-byte `Copy`
/// value (a `&'static str` would be as big, without room for the count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetName {
    prefix: &'static &'static str,
    count: Option<NonZeroU32>,
}

impl SetName {
    /// A fixed name: `SetName::fixed(&NAME)` for a `const NAME: &str`.
    pub const fn fixed(name: &'static &'static str) -> SetName {
        SetName { prefix: name, count: None }
    }

    /// `PREFIX-COUNT`, for a count of at least 1 (0 gives the bare prefix).
    pub const fn numbered(prefix: &'static &'static str, count: u32) -> SetName {
        SetName { prefix, count: NonZeroU32::new(count) }
    }
}

impl std::fmt::Display for SetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.count {
            None => f.write_str(self.prefix),
            Some(n) => write!(f, "{}-{n}", self.prefix),
        }
    }
}

/// The key type of a set or map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr,
    /// `ipv4_addr . inet_proto . inet_service`.
    AddrProtoPort,
    /// `inet_proto . inet_service`.
    ProtoPort,
    /// `ipv4_addr . ipv4_addr` (hairpin pairs).
    AddrAddr,
    /// `typeof ip daddr . meta l4proto . th dport . numgen random mod N`: an endpoint slot
    /// of an address frontend with N endpoints.
    AddrProtoPortSlot(u32),
    /// `typeof meta l4proto . th dport . numgen random mod N`: an endpoint slot of a NodePort
    /// with N endpoints.
    ProtoPortSlot(u32),
    /// `typeof numgen random mod N`: a slot of a Maglev table of N slots.
    Slot(u32),
}

/// A set or map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// An address.
    Addr(IpAddr),
    /// Address, protocol, port.
    AddrProtoPort(IpAddr, Protocol, u16),
    /// Protocol, port.
    ProtoPort(Protocol, u16),
    /// Two addresses.
    AddrAddr(IpAddr, IpAddr),
    /// Address, protocol, port, endpoint slot.
    AddrProtoPortSlot(IpAddr, Protocol, u16, u32),
    /// Protocol, port, endpoint slot.
    ProtoPortSlot(Protocol, u16, u32),
    /// A slot of a Maglev table.
    Slot(u32),
}

/// What the elements of a map hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A verdict.
    Verdict,
    /// An endpoint: address and port (`ip daddr . th dport`).
    Endpoint,
    /// An endpoint's address (`ip daddr`).
    Addr,
    /// An endpoint's port (`inet_service`).
    Port,
}

/// The data of one map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    /// A verdict.
    Verdict(Verdict),
    /// An endpoint.
    Endpoint(SocketAddr),
    /// An endpoint's address.
    Addr(IpAddr),
    /// An endpoint's port.
    Port(u16),
}

/// A set (no data) or a map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Set {
    /// The key type.
    pub key: KeyType,
    /// For a map, what its elements hold.
    pub data: Option<DataType>,
    /// `flags dynamic,timeout` with this default timeout in seconds (affinity sets).
    pub timeout: Option<u32>,
    /// A comment shown by `nft list`.
    pub comment: String,
    /// Elements; for a map, each with its data.
    pub elements: BTreeMap<Key, Option<Data>>,
}

impl Set {
    /// An empty set.
    pub fn plain(key: KeyType, comment: &str) -> Set {
        Set { key, data: None, timeout: None, comment: comment.to_string(), elements: BTreeMap::new() }
    }

    /// An empty verdict map.
    pub fn vmap(key: KeyType, comment: &str) -> Set {
        Set { data: Some(DataType::Verdict), ..Set::plain(key, comment) }
    }

    /// An empty map from endpoint slots to endpoints.
    pub fn endpoint_map(key: KeyType, comment: &str) -> Set {
        Set { data: Some(DataType::Endpoint), ..Set::plain(key, comment) }
    }

    /// An empty map of `key` to `data`.
    pub fn map(key: KeyType, data: DataType, comment: &str) -> Set {
        Set { data: Some(data), ..Set::plain(key, comment) }
    }

    /// Whether this is a map.
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }

    /// A dynamic set with timeout, for ClientIP affinity.
    pub fn affinity(timeout: u32) -> Set {
        Set { timeout: Some(timeout), ..Set::plain(KeyType::Addr, "") }
    }

    /// The definition without elements (what `add set` creates).
    pub fn same_definition(&self, other: &Set) -> bool {
        self.key == other.key
            && self.data == other.data
            && self.timeout == other.timeout
            && self.comment == other.comment
    }
}

/// Everything kproxy owns in one family: one table.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

/// The nftables family of an IP family's table.
pub fn nft_family(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}
