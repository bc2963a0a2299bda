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

use ipnet::IpNet;
use proxy_core::{IpFamily, Protocol};

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
    /// [`Match::L4Proto`]): picks one of a frontend's N endpoints, stored in the endpoint
    /// map under slots 0 to N-1.
    DnatMap {
        /// The frontend part of the key.
        key: FrontendKey,
        /// The number of endpoints.
        modulus: u32,
        /// The endpoint map.
        map: String,
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
}

/// A chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Set for base chains.
    pub base: Option<BaseChain>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
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
}

/// What the elements of a map hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A verdict.
    Verdict,
    /// An endpoint: address and port (`ip daddr . th dport`).
    Endpoint,
}

/// The data of one map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    /// A verdict.
    Verdict(Verdict),
    /// An endpoint.
    Endpoint(SocketAddr),
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
