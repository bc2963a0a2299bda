//! Rules as nf_tables expressions: the same bytecode `nft` generates for the same syntax,
//! so `nft list ruleset` prints our rules back as [`crate::text`] renders them.

use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;
use proxy_core::IpFamily;

use crate::ruleset::{Action, AddrMatch, FrontendKey, Match, Rule, Slot, Verdict};

// Registers (linux/netfilter/nf_tables.h): the verdict register, the 128-bit register 1,
// and the 32-bit registers that follow it for concatenations.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG_3: u32 = 3;
const REG32_00: u32 = 8;
const REG32_11: u32 = 19;
/// `NFT_HASH_JENKINS`.
const HASH_JENKINS: u32 = 0;

const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_L4PROTO: u32 = 16;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const LOOKUP_F_INV: u32 = 1;
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;
/// `IPS_DST_NAT`.
const CT_STATUS_DNAT: u32 = 1 << 5;
/// `NF_CT_STATE_BIT(IP_CT_NEW)`.
const CT_STATE_NEW: u32 = 1 << 3;
const NG_RANDOM: u32 = 1;
const DYNSET_OP_UPDATE: u32 = 1;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const FIB_F_SADDR: u32 = 1;
const FIB_F_DADDR: u32 = 2;
/// `RTN_LOCAL`.
const RTN_LOCAL: u32 = 2;
const NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const REJECT_ICMP_UNREACH: u32 = 0;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
const IFNAMSIZ: usize = 16;

/// An expression being built; owned until handed to a rule.
pub(crate) struct Expr(NonNull<sys::nftnl_expr>);

impl Expr {
    fn new(name: &CStr) -> Expr {
        // SAFETY: nftnl_expr_alloc takes a NUL-terminated name and returns an owned object
        // or NULL on allocation failure.
        let raw = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        Expr(NonNull::new(raw).expect("nftnl_expr_alloc: out of memory"))
    }

    fn u32(self, attr: u32, value: u32) -> Expr {
        // SAFETY: the expression is valid and owned; the attribute id comes from nftnl.
        unsafe { sys::nftnl_expr_set_u32(self.0.as_ptr(), attr as u16, value) };
        self
    }

    fn data(self, attr: u32, value: &[u8]) -> Expr {
        // SAFETY: nftnl copies `value.len()` bytes from the pointer.
        unsafe { sys::nftnl_expr_set(self.0.as_ptr(), attr as u16, value.as_ptr().cast(), value.len() as u32) };
        self
    }

    fn str(self, attr: u32, value: &str) -> Expr {
        let value = CString::new(value).expect("object names contain no NUL");
        // SAFETY: nftnl copies the NUL-terminated string.
        unsafe { sys::nftnl_expr_set_str(self.0.as_ptr(), attr as u16, value.as_ptr()) };
        self
    }

    /// Hands ownership to the caller (a rule).
    pub(crate) fn into_raw(self) -> *mut sys::nftnl_expr {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }
}

impl Drop for Expr {
    fn drop(&mut self) {
        // SAFETY: still owned (into_raw forgets self).
        unsafe { sys::nftnl_expr_free(self.0.as_ptr()) };
    }
}

fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, dreg)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base)
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
}

fn meta(key: u32, dreg: u32) -> Expr {
    Expr::new(c"meta").u32(sys::NFTNL_EXPR_META_KEY, key).u32(sys::NFTNL_EXPR_META_DREG, dreg)
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    Expr::new(c"cmp")
        .u32(sys::NFTNL_EXPR_CMP_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_CMP_OP, op)
        .data(sys::NFTNL_EXPR_CMP_DATA, data)
}

fn bitwise(mask: &[u8], xor: &[u8]) -> Expr {
    Expr::new(c"bitwise")
        .u32(sys::NFTNL_EXPR_BITWISE_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32)
        .data(sys::NFTNL_EXPR_BITWISE_MASK, mask)
        .data(sys::NFTNL_EXPR_BITWISE_XOR, xor)
}

fn lookup(set: &str, dreg: Option<u32>, inverted: bool) -> Expr {
    lookup_from(set, REG_1, dreg, inverted)
}

/// A lookup of the key in `sreg` on.
fn lookup_from(set: &str, sreg: u32, dreg: Option<u32>, inverted: bool) -> Expr {
    let mut e = Expr::new(c"lookup").u32(sys::NFTNL_EXPR_LOOKUP_SREG, sreg).str(sys::NFTNL_EXPR_LOOKUP_SET, set);
    if let Some(dreg) = dreg {
        e = e.u32(sys::NFTNL_EXPR_LOOKUP_DREG, dreg);
    }
    if inverted {
        e = e.u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, LOOKUP_F_INV);
    }
    e
}

fn verdict(v: &Verdict) -> Expr {
    let (code, chain) = match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c)),
        Verdict::Goto(c) => (NFT_GOTO, Some(c)),
    };
    let mut e = Expr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, REG_VERDICT)
        .u32(sys::NFTNL_EXPR_IMM_VERDICT, code as u32);
    if let Some(chain) = chain {
        e = e.str(sys::NFTNL_EXPR_IMM_CHAIN, chain);
    }
    e
}

fn immediate(dreg: u32, data: &[u8]) -> Expr {
    Expr::new(c"immediate").u32(sys::NFTNL_EXPR_IMM_DREG, dreg).data(sys::NFTNL_EXPR_IMM_DATA, data)
}

fn fib(flags: u32) -> Expr {
    Expr::new(c"fib")
        .u32(sys::NFTNL_EXPR_FIB_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_FIB_RESULT, FIB_RESULT_ADDRTYPE)
        .u32(sys::NFTNL_EXPR_FIB_FLAGS, flags)
}

/// Where an IP header field lives, and how long it is.
fn addr_field(family: IpFamily, daddr: bool) -> (u32, u32) {
    match (family, daddr) {
        (IpFamily::V4, false) => (12, 4),
        (IpFamily::V4, true) => (16, 4),
        (IpFamily::V6, false) => (8, 16),
        (IpFamily::V6, true) => (24, 16),
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn prefix_mask(len: usize, prefix: u8) -> Vec<u8> {
    let mut mask = vec![0u8; len];
    for (i, byte) in mask.iter_mut().enumerate() {
        let bits = (prefix as usize).saturating_sub(i * 8).min(8);
        *byte = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    mask
}

fn addr_match(family: IpFamily, daddr: bool, m: &AddrMatch, out: &mut Vec<Expr>) {
    let (offset, len) = addr_field(family, daddr);
    out.push(payload(PAYLOAD_NETWORK, offset, len, REG_1));
    match m {
        AddrMatch::Is(ip) => out.push(cmp(CMP_EQ, &octets(*ip))),
        AddrMatch::In(net) | AddrMatch::NotIn(net) => {
            let op = if matches!(m, AddrMatch::In(_)) { CMP_EQ } else { CMP_NEQ };
            let full = net.prefix_len() as usize == len as usize * 8;
            if !full {
                out.push(bitwise(&prefix_mask(len as usize, net.prefix_len()), &vec![0u8; len as usize]));
            }
            out.push(cmp(op, &octets(net.network())));
        }
    }
}

fn iifname(name: &str, prefix: bool, op: u32, out: &mut Vec<Expr>) {
    out.push(meta(META_IIFNAME, REG_1));
    let mut data = name.as_bytes().to_vec();
    if !prefix {
        data.resize(IFNAMSIZ, 0);
    }
    out.push(cmp(op, &data));
}

fn matcher(family: IpFamily, m: &Match, out: &mut Vec<Expr>) {
    match m {
        Match::CtStateNew => {
            out.push(Expr::new(c"ct").u32(sys::NFTNL_EXPR_CT_KEY, CT_STATE).u32(sys::NFTNL_EXPR_CT_DREG, REG_1));
            out.push(bitwise(&CT_STATE_NEW.to_ne_bytes(), &[0; 4]));
            out.push(cmp(CMP_NEQ, &[0; 4]));
        }
        Match::Daddr(a) => addr_match(family, true, a, out),
        Match::Saddr(a) => addr_match(family, false, a, out),
        Match::DaddrInSet(set) | Match::SaddrInSet(set) => {
            let (offset, len) = addr_field(family, matches!(m, Match::DaddrInSet(_)));
            out.push(payload(PAYLOAD_NETWORK, offset, len, REG_1));
            out.push(lookup(set, None, false));
        }
        Match::FibDaddrLocal | Match::FibSaddrLocal => {
            out.push(fib(if matches!(m, Match::FibDaddrLocal) { FIB_F_DADDR } else { FIB_F_SADDR }));
            out.push(cmp(CMP_EQ, &RTN_LOCAL.to_ne_bytes()));
        }
        Match::L4Proto(p) => {
            out.push(meta(META_L4PROTO, REG_1));
            out.push(cmp(CMP_EQ, &[p.number()]));
        }
        Match::Iifname(n) => iifname(n, false, CMP_EQ, out),
        Match::IifnamePrefix(p) => iifname(p, true, CMP_EQ, out),
        Match::NotIifname(n) => iifname(n, false, CMP_NEQ, out),
        Match::NotIifnamePrefix(p) => iifname(p, true, CMP_NEQ, out),
        Match::NumgenZero(modulus) => {
            out.push(
                Expr::new(c"numgen")
                    .u32(sys::NFTNL_EXPR_NG_DREG, REG_1)
                    .u32(sys::NFTNL_EXPR_NG_MODULUS, *modulus)
                    .u32(sys::NFTNL_EXPR_NG_TYPE, NG_RANDOM),
            );
            out.push(cmp(CMP_EQ, &[0; 4]));
        }
        Match::MarkBitClear(bit) => {
            out.push(meta(META_MARK, REG_1));
            out.push(bitwise(&bit.to_ne_bytes(), &[0; 4]));
            out.push(cmp(CMP_EQ, &[0; 4]));
        }
        Match::CtStatusDnat => {
            out.push(Expr::new(c"ct").u32(sys::NFTNL_EXPR_CT_KEY, CT_STATUS).u32(sys::NFTNL_EXPR_CT_DREG, REG_1));
            out.push(bitwise(&CT_STATUS_DNAT.to_ne_bytes(), &[0; 4]));
            out.push(cmp(CMP_NEQ, &[0; 4]));
        }
        Match::KeyInSet(key, set) => {
            frontend_key(family, *key, REG_1, out);
            out.push(lookup(set, None, false));
        }
        Match::SaddrDaddrInSet(set) => {
            let (saddr, len) = addr_field(family, false);
            let (daddr, _) = addr_field(family, true);
            out.push(payload(PAYLOAD_NETWORK, saddr, len, REG_1));
            out.push(payload(PAYLOAD_NETWORK, daddr, len, REG32_00 + len / 4));
            out.push(lookup(set, None, false));
        }
    }
}

/// Loads a frontend key into the registers from the 128-bit register `first` on, as nft
/// lays out concatenations: the address fills `len` bytes, each further field takes the
/// next 32-bit register. Returns the first register after the key.
fn frontend_key(family: IpFamily, key: FrontendKey, first: u32, out: &mut Vec<Expr>) -> u32 {
    let base = reg32(first);
    match key {
        FrontendKey::DaddrProtoPort => {
            let (offset, len) = addr_field(family, true);
            let next = base + len / 4;
            out.push(payload(PAYLOAD_NETWORK, offset, len, first));
            out.push(meta(META_L4PROTO, next));
            out.push(payload(PAYLOAD_TRANSPORT, 2, 2, next + 1));
            next + 2
        }
        FrontendKey::ProtoPort => {
            out.push(meta(META_L4PROTO, first));
            out.push(payload(PAYLOAD_TRANSPORT, 2, 2, base + 1));
            base + 2
        }
    }
}

/// `jhash ip saddr [. th sport] mod modulus seed seed` into `dreg`, hashing from the
/// 128-bit register `source` on (where nft puts it: the port in the 32-bit register after
/// the address).
fn source_hash(family: IpFamily, seed: u32, with_port: bool, modulus: u32, source: u32, dreg: u32) -> Vec<Expr> {
    let (offset, len) = addr_field(family, false);
    let mut out = vec![payload(PAYLOAD_NETWORK, offset, len, source)];
    let len = if with_port {
        out.push(payload(PAYLOAD_TRANSPORT, 0, 2, reg32(source) + len / 4));
        len + 4
    } else {
        len
    };
    out.push(
        Expr::new(c"hash")
            .u32(sys::NFTNL_EXPR_HASH_TYPE, HASH_JENKINS)
            .u32(sys::NFTNL_EXPR_HASH_SREG, source)
            .u32(sys::NFTNL_EXPR_HASH_DREG, dreg)
            .u32(sys::NFTNL_EXPR_HASH_LEN, len)
            .u32(sys::NFTNL_EXPR_HASH_MODULUS, modulus)
            .u32(sys::NFTNL_EXPR_HASH_SEED, seed)
            .u32(sys::NFTNL_EXPR_HASH_OFFSET, 0),
    );
    out
}

/// The 32-bit register a register starts at (128-bit register n is 32-bit 4(n-1)).
fn reg32(reg: u32) -> u32 {
    if reg >= REG32_00 { reg } else { REG32_00 + (reg - REG_1) * 4 }
}

fn numgen(modulus: u32, dreg: u32) -> Expr {
    Expr::new(c"numgen")
        .u32(sys::NFTNL_EXPR_NG_DREG, dreg)
        .u32(sys::NFTNL_EXPR_NG_MODULUS, modulus)
        .u32(sys::NFTNL_EXPR_NG_TYPE, NG_RANDOM)
        .u32(sys::NFTNL_EXPR_NG_OFFSET, 0)
}

/// `meta mark set meta mark & mask ^ xor`.
fn mark_set(mask: u32, xor: u32, out: &mut Vec<Expr>) {
    out.push(meta(META_MARK, REG_1));
    out.push(bitwise(&mask.to_ne_bytes(), &xor.to_ne_bytes()));
    out.push(Expr::new(c"meta").u32(sys::NFTNL_EXPR_META_KEY, META_MARK).u32(sys::NFTNL_EXPR_META_SREG, REG_1));
}

fn action(family: IpFamily, a: &Action, out: &mut Vec<Expr>) {
    match a {
        Action::Verdict(v) => out.push(verdict(v)),
        Action::Vmap { key, map } => {
            frontend_key(family, *key, REG_1, out);
            out.push(lookup(map, Some(REG_VERDICT), false));
        }
        Action::DnatMap { key, slot: how, modulus, map } => {
            let slot = frontend_key(family, *key, REG_1, out);
            match how {
                Slot::Random => out.push(numgen(*modulus, slot)),
                Slot::SourceHash { seed, with_port } => {
                    // The source goes past the key's registers: 128-bit register 3 for
                    // IPv4, the 32-bit one after the key for IPv6.
                    let source = if addr_field(family, false).1 == 4 { REG_3 } else { REG32_11 };
                    out.extend(source_hash(family, *seed, *with_port, *modulus, source, slot));
                }
            }
            out.push(lookup(map, Some(REG_1), false));
            // The map's data is the address, then the port in the next 32-bit register.
            let (_, len) = addr_field(family, true);
            out.push(nat_dnat(family, REG_1, REG32_00 + len / 4));
        }
        Action::DnatTable { slot: how, modulus, table, key, ports } => {
            // As nft does: the slot in register 1, looked up to the address in register
            // 1; the frontend key from register 2, looked up to the port in register 2.
            match how {
                Slot::Random => out.push(numgen(*modulus, REG_1)),
                Slot::SourceHash { seed, with_port } => {
                    out.extend(source_hash(family, *seed, *with_port, *modulus, REG_2, REG_1))
                }
            }
            out.push(lookup(table, Some(REG_1), false));
            frontend_key(family, *key, REG_2, out);
            out.push(lookup_from(ports, REG_2, Some(REG_2), false));
            out.push(nat_dnat(family, REG_1, REG_2));
        }
        Action::MarkOr(bit) => mark_set(!bit, *bit, out),
        Action::MarkXor(bit) => mark_set(u32::MAX, *bit, out),
        Action::MasqueradeFullyRandom => {
            out.push(Expr::new(c"masq").u32(sys::NFTNL_EXPR_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY))
        }
        Action::Dnat(addr) => {
            out.push(immediate(REG_1, &octets(addr.ip())));
            out.push(immediate(REG_2, &addr.port().to_be_bytes()));
            out.push(nat_dnat(family, REG_1, REG_2));
        }
        Action::UpdateSaddr(set) => {
            let (offset, len) = addr_field(family, false);
            out.push(payload(PAYLOAD_NETWORK, offset, len, REG_1));
            out.push(
                Expr::new(c"dynset")
                    .u32(sys::NFTNL_EXPR_DYNSET_SREG_KEY, REG_1)
                    .u32(sys::NFTNL_EXPR_DYNSET_OP, DYNSET_OP_UPDATE)
                    .str(sys::NFTNL_EXPR_DYNSET_SET_NAME, set),
            );
        }
        Action::Reject => {
            // The port-unreachable code of the table's own ICMP (nftnl's helper writes
            // the inet-table ICMPX code, which reads as host-unreachable here).
            let code = match family {
                IpFamily::V4 => ICMP_PORT_UNREACH,
                IpFamily::V6 => ICMPV6_PORT_UNREACH,
            };
            // SAFETY: plain attribute setters on an owned expression.
            let e = Expr::new(c"reject").u32(sys::NFTNL_EXPR_REJECT_TYPE, REJECT_ICMP_UNREACH);
            unsafe { sys::nftnl_expr_set_u8(e.0.as_ptr(), sys::NFTNL_EXPR_REJECT_CODE as u16, code) };
            out.push(e);
        }
    }
}

/// `dnat` to the address in `addr_reg` and the port in `port_reg`.
fn nat_dnat(family: IpFamily, addr_reg: u32, port_reg: u32) -> Expr {
    let nfproto = match family {
        IpFamily::V4 => libc::NFPROTO_IPV4,
        IpFamily::V6 => libc::NFPROTO_IPV6,
    };
    Expr::new(c"nat")
        .u32(sys::NFTNL_EXPR_NAT_TYPE, NAT_DNAT)
        .u32(sys::NFTNL_EXPR_NAT_FAMILY, nfproto as u32)
        .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, addr_reg)
        .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, port_reg)
}

/// The expressions of a rule, in order.
pub(crate) fn rule(family: IpFamily, r: &Rule) -> Vec<Expr> {
    let mut out = Vec::new();
    for m in &r.matches {
        matcher(family, m, &mut out);
    }
    action(family, &r.action, &mut out);
    out
}
