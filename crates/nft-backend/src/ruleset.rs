//! The nftables objects kproxy writes, as plain data: one table with chains, rules, sets
//! and maps, per IP family.
//!
//! Rules are built from a closed vocabulary ([`Match`] and [`Action`]): every shape kproxy
//! emits is listed here, rendered to nft syntax by [`crate::text`] and to netlink by
//! [`crate::netlink`], and interpreted by the ruleset tracer in tests. Nothing else can be
//! written, so the kernel never holds a rule the tools cannot show or the tests cannot
//! trace.

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
}

/// The key a verdict map is looked up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmapKey {
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
        key: VmapKey,
        /// The map.
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
}

/// A set (no data) or a verdict map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Set {
    /// The key type.
    pub key: KeyType,
    /// Whether elements map to verdicts.
    pub map: bool,
    /// `flags dynamic,timeout` with this default timeout in seconds (affinity sets).
    pub timeout: Option<u32>,
    /// A comment shown by `nft list`.
    pub comment: String,
    /// Elements; for a map, each with its verdict.
    pub elements: BTreeMap<Key, Option<Verdict>>,
}

impl Set {
    /// An empty set.
    pub fn plain(key: KeyType, comment: &str) -> Set {
        Set { key, map: false, timeout: None, comment: comment.to_string(), elements: BTreeMap::new() }
    }

    /// An empty verdict map.
    pub fn vmap(key: KeyType, comment: &str) -> Set {
        Set { map: true, ..Set::plain(key, comment) }
    }

    /// A dynamic set with timeout, for ClientIP affinity.
    pub fn affinity(timeout: u32) -> Set {
        Set { timeout: Some(timeout), ..Set::plain(KeyType::Addr, "") }
    }

    /// The definition without elements (what `add set` creates).
    pub fn same_definition(&self, other: &Set) -> bool {
        self.key == other.key && self.map == other.map && self.timeout == other.timeout && self.comment == other.comment
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
