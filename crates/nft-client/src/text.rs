//! nft syntax for a [`Ruleset`]: what `kproxy plan` prints, and a script `nft -f` accepts.
//!
//! The netlink encoder and this renderer describe the same objects; a kernel test loads
//! this text with `nft -f` into one namespace and the netlink batch into another, and
//! checks that `nft list ruleset` prints the same thing for both.

use std::fmt::{self, Write};
use std::net::{IpAddr, SocketAddr};

use proxy_core::IpFamily;

use crate::ruleset::{
    Action, AddrMatch, Chain, ChainType, Data, DataType, FrontendKey, Hook, Key, KeyType, Match, Rule, Ruleset, Set,
    Slot, Verdict, nft_family,
};

/// Renders a whole table as an nft script.
pub fn table(family: IpFamily, name: &str, ruleset: &Ruleset) -> String {
    let mut out = String::new();
    let _ = write_table(&mut out, family, name, ruleset);
    out
}

fn write_table(out: &mut String, family: IpFamily, name: &str, ruleset: &Ruleset) -> fmt::Result {
    writeln!(out, "table {} {name} {{", nft_family(family))?;
    writeln!(out, "\tcomment \"rules for kproxy\"")?;
    for (name, set) in &ruleset.sets {
        write_set(out, family, name, set)?;
    }
    for (name, chain) in &ruleset.chains {
        write_chain(out, family, name, chain)?;
    }
    writeln!(out, "}}")
}

/// A set's key and data declaration: `type …` or, for endpoint maps, `typeof …`.
fn declaration(family: IpFamily, set: &Set) -> String {
    let kw = ip_kw(family);
    let addr = match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    };
    let key = match set.key {
        KeyType::Addr => format!("type {addr}"),
        KeyType::AddrProtoPort => format!("type {addr} . inet_proto . inet_service"),
        KeyType::ProtoPort => "type inet_proto . inet_service".to_string(),
        KeyType::AddrAddr => format!("type {addr} . {addr}"),
        KeyType::AddrProtoPortSlot(n) => format!("typeof {kw} daddr . meta l4proto . th dport . numgen random mod {n}"),
        KeyType::ProtoPortSlot(n) => format!("typeof meta l4proto . th dport . numgen random mod {n}"),
        KeyType::Slot(n) => format!("typeof numgen random mod {n}"),
    };
    match set.data {
        None => key,
        Some(DataType::Verdict) => format!("{key} : verdict"),
        Some(DataType::Endpoint) => format!("{key} : {kw} daddr . th dport"),
        Some(DataType::Addr) => format!("{key} : {kw} daddr"),
        Some(DataType::Port) => format!("{key} : inet_service"),
    }
}

fn write_set(out: &mut String, family: IpFamily, name: &str, set: &Set) -> fmt::Result {
    let kind = if set.is_map() { "map" } else { "set" };
    writeln!(out, "\t{kind} {name} {{")?;
    writeln!(out, "\t\t{}", declaration(family, set))?;
    if let Some(timeout) = set.timeout {
        writeln!(out, "\t\tflags dynamic,timeout")?;
        writeln!(out, "\t\ttimeout {timeout}s")?;
    }
    if !set.comment.is_empty() {
        writeln!(out, "\t\tcomment \"{}\"", set.comment)?;
    }
    if !set.elements.is_empty() {
        out.push_str("\t\telements = { ");
        for (i, (k, v)) in set.elements.iter().enumerate() {
            if i > 0 {
                out.push_str(",\n\t\t\t     ");
            }
            write!(out, "{}", key(k))?;
            if let Some(v) = v {
                write!(out, " : {}", data(v))?;
            }
        }
        writeln!(out, " }}")?;
    }
    writeln!(out, "\t}}")
}

/// An element key in nft syntax.
pub fn key(k: &Key) -> String {
    match k {
        Key::Addr(ip) => ip.to_string(),
        Key::AddrProtoPort(ip, proto, port) => format!("{ip} . {proto} . {port}"),
        Key::ProtoPort(proto, port) => format!("{proto} . {port}"),
        Key::AddrAddr(a, b) => format!("{a} . {b}"),
        Key::AddrProtoPortSlot(ip, proto, port, slot) => format!("{ip} . {proto} . {port} . {slot}"),
        Key::ProtoPortSlot(proto, port, slot) => format!("{proto} . {port} . {slot}"),
        Key::Slot(slot) => slot.to_string(),
    }
}

/// Map element data in nft syntax.
pub fn data(d: &Data) -> String {
    match d {
        Data::Verdict(v) => verdict(v),
        Data::Endpoint(addr) => format!("{} . {}", addr.ip(), addr.port()),
        Data::Addr(ip) => ip.to_string(),
        Data::Port(port) => port.to_string(),
    }
}

/// A verdict in nft syntax.
pub fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn hook(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

fn write_chain(out: &mut String, family: IpFamily, name: &str, chain: &Chain) -> fmt::Result {
    writeln!(out, "\tchain {name} {{")?;
    if let Some(b) = chain.base {
        let kind = match b.kind {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        };
        writeln!(out, "\t\ttype {kind} hook {} priority {}; policy accept;", hook(b.hook), b.priority)?;
    }
    for r in &chain.rules {
        writeln!(out, "\t\t{}", rule(family, r))?;
    }
    writeln!(out, "\t}}")
}

fn ip_kw(family: IpFamily) -> &'static str {
    nft_family(family)
}

fn addr_match(family: IpFamily, field: &str, m: &AddrMatch) -> String {
    let kw = ip_kw(family);
    match m {
        AddrMatch::Is(ip) => format!("{kw} {field} {ip}"),
        AddrMatch::In(net) => format!("{kw} {field} {net}"),
        AddrMatch::NotIn(net) => format!("{kw} {field} != {net}"),
    }
}

fn matcher(family: IpFamily, m: &Match) -> String {
    let kw = ip_kw(family);
    match m {
        Match::CtStateNew => "ct state new".into(),
        Match::Daddr(a) => addr_match(family, "daddr", a),
        Match::Saddr(a) => addr_match(family, "saddr", a),
        Match::DaddrInSet(s) => format!("{kw} daddr @{s}"),
        Match::SaddrInSet(s) => format!("{kw} saddr @{s}"),
        Match::FibDaddrLocal => "fib daddr type local".into(),
        Match::FibSaddrLocal => "fib saddr type local".into(),
        Match::L4Proto(p) => format!("meta l4proto {p}"),
        Match::Iifname(n) => format!("iifname \"{n}\""),
        Match::IifnamePrefix(p) => format!("iifname \"{p}*\""),
        Match::NotIifname(n) => format!("iifname != \"{n}\""),
        Match::NotIifnamePrefix(p) => format!("iifname != \"{p}*\""),
        Match::MarkBitClear(bit) => format!("meta mark & 0x{bit:08x} == 0x00000000"),
        Match::NumgenZero(modulus) => format!("numgen random mod {modulus} 0"),
        Match::CtStatusDnat => "ct status dnat".into(),
        Match::KeyInSet(key, set) => format!("{} @{set}", frontend_key(family, *key)),
        Match::SaddrDaddrInSet(set) => format!("{kw} saddr . {kw} daddr @{set}"),
    }
}

fn frontend_key(family: IpFamily, key: FrontendKey) -> String {
    match key {
        FrontendKey::DaddrProtoPort => format!("{} daddr . meta l4proto . th dport", ip_kw(family)),
        FrontendKey::ProtoPort => "meta l4proto . th dport".into(),
    }
}

fn socket(addr: &SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

fn action(family: IpFamily, a: &Action) -> String {
    let kw = ip_kw(family);
    match a {
        Action::Verdict(v) => verdict(v),
        Action::Vmap { key, map } => format!("{} vmap @{map}", frontend_key(family, *key)),
        Action::DnatMap { key, slot: Slot::Random, modulus, map } => {
            format!("dnat {kw} to {} . numgen random mod {modulus} map @{map}", frontend_key(family, *key))
        }
        Action::DnatMap { key, slot: Slot::SourceHash { seed, with_port }, modulus, map } => {
            let key = frontend_key(family, *key);
            let port = if *with_port { " . th sport" } else { "" };
            format!("dnat {kw} to {key} . jhash {kw} saddr{port} mod {modulus} seed 0x{seed:x} map @{map}")
        }
        Action::DnatTable { slot, modulus, table, key, ports } => {
            let hash = match slot {
                Slot::SourceHash { seed, with_port } => {
                    let port = if *with_port { " . th sport" } else { "" };
                    format!("jhash {kw} saddr{port} mod {modulus} seed 0x{seed:x}")
                }
                Slot::Random => format!("numgen random mod {modulus}"),
            };
            format!("dnat {kw} to {hash} map @{table} : {} map @{ports}", frontend_key(family, *key))
        }
        Action::MarkOr(bit) => format!("meta mark set meta mark | 0x{bit:08x}"),
        Action::MarkXor(bit) => format!("meta mark set meta mark ^ 0x{bit:08x}"),
        Action::MasqueradeFullyRandom => "masquerade fully-random".into(),
        Action::Dnat(addr) => format!("dnat to {}", socket(addr)),
        Action::UpdateSaddr(set) => format!("update @{set} {{ {kw} saddr }}"),
        Action::Reject => "reject".into(),
    }
}

/// One rule in nft syntax.
pub fn rule(family: IpFamily, r: &Rule) -> String {
    let mut parts: Vec<String> = r.matches.iter().map(|m| matcher(family, m)).collect();
    parts.push(action(family, &r.action));
    parts.join(" ")
}
