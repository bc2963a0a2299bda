//! A set's userdata: the blob nft stores beside a set to print it back.
//!
//! The kernel keeps it opaque. nft reads the key's byte order, the comment and, for sets
//! declared with `typeof`, the expressions that name the key and data types. Endpoint maps
//! need `typeof`, because their key ends in a `numgen` slot and nft has no named type for
//! it. The format is nftnl's: one-byte type, one-byte length, value, with nested lists for
//! the `typeof` expressions (nft's `*_build_udata` functions).

use nftnl::nftnl_sys as sys;
use proxy_core::IpFamily;

use crate::ruleset::{DataType, KeyType, Set};

// nft's expression type ids (`enum expr_types`) and the parts of their udata.
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;
/// nft's protocol descriptions (`enum proto_desc_id`) and header fields.
const DESC_TH: u32 = 11;
const DESC_IP: u32 = 12;
const DESC_IP6: u32 = 13;
const IP_DADDR: u32 = 12;
const IP6_DADDR: u32 = 9;
const TH_DPORT: u32 = 2;
const META_L4PROTO: u32 = 16;
const NG_RANDOM: u32 = 1;
/// nft's `BYTEORDER_BIG_ENDIAN`.
const BYTEORDER_BIG: u32 = 2;

/// A growing type-length-value list.
#[derive(Default)]
struct Tlv(Vec<u8>);

impl Tlv {
    fn put(&mut self, kind: u32, value: &[u8]) -> &mut Tlv {
        let len = u8::try_from(value.len()).expect("userdata attributes are short");
        self.0.push(kind as u8);
        self.0.push(len);
        self.0.extend_from_slice(value);
        self
    }

    fn u32(&mut self, kind: u32, value: u32) -> &mut Tlv {
        self.put(kind, &value.to_ne_bytes())
    }

    fn nest(&mut self, kind: u32, inner: Tlv) -> &mut Tlv {
        self.put(kind, &inner.0)
    }
}

/// One `typeof` expression: its type id and its own attributes.
fn expr(kind: u32, attrs: &[u32]) -> Tlv {
    let mut data = Tlv::default();
    for (i, value) in attrs.iter().enumerate() {
        data.u32(i as u32, *value);
    }
    let mut out = Tlv::default();
    out.u32(sys::NFTNL_UDATA_SET_TYPEOF_EXPR, kind).nest(sys::NFTNL_UDATA_SET_TYPEOF_DATA, data);
    out
}

/// A concatenation of expressions, as `typeof` writes it.
fn concat(parts: Vec<Tlv>) -> Tlv {
    let mut list = Tlv::default();
    for (i, part) in parts.into_iter().enumerate() {
        list.nest(i as u32, part);
    }
    let mut out = Tlv::default();
    out.u32(sys::NFTNL_UDATA_SET_TYPEOF_EXPR, EXPR_CONCAT).nest(sys::NFTNL_UDATA_SET_TYPEOF_DATA, list);
    out
}

fn daddr(family: IpFamily) -> Tlv {
    match family {
        IpFamily::V4 => expr(EXPR_PAYLOAD, &[DESC_IP, IP_DADDR]),
        IpFamily::V6 => expr(EXPR_PAYLOAD, &[DESC_IP6, IP6_DADDR]),
    }
}

fn th_dport() -> Tlv {
    expr(EXPR_PAYLOAD, &[DESC_TH, TH_DPORT])
}

/// The key of an endpoint map, as `typeof`.
fn slot_key(family: IpFamily, key: KeyType) -> Option<Tlv> {
    let l4proto = || expr(EXPR_META, &[META_L4PROTO]);
    let numgen = |n: u32| expr(EXPR_NUMGEN, &[NG_RANDOM, n, 0]);
    match key {
        KeyType::AddrProtoPortSlot(n) => Some(concat(vec![daddr(family), l4proto(), th_dport(), numgen(n)])),
        KeyType::ProtoPortSlot(n) => Some(concat(vec![l4proto(), th_dport(), numgen(n)])),
        KeyType::Slot(n) => Some(numgen(n)),
        _ => None,
    }
}

/// The userdata of a set, as nft writes it for the declaration [`crate::text`] prints.
pub(super) fn set(family: IpFamily, set: &Set, key_byteorder: u32) -> Vec<u8> {
    let mut out = Tlv::default();
    out.u32(sys::NFTNL_UDATA_SET_KEYBYTEORDER, key_byteorder);
    match set.data {
        None => {}
        // Addresses and ports are in network order.
        Some(DataType::Addr | DataType::Port) => {
            out.u32(sys::NFTNL_UDATA_SET_DATABYTEORDER, BYTEORDER_BIG);
        }
        Some(_) => {
            out.u32(sys::NFTNL_UDATA_SET_DATABYTEORDER, 0);
        }
    }
    if let Some(key) = slot_key(family, set.key) {
        out.nest(sys::NFTNL_UDATA_SET_KEY_TYPEOF, key);
        let data = match set.data {
            Some(DataType::Endpoint) => Some(concat(vec![daddr(family), th_dport()])),
            Some(DataType::Addr) => Some(daddr(family)),
            _ => None,
        };
        if let Some(data) = data {
            out.nest(sys::NFTNL_UDATA_SET_DATA_TYPEOF, data);
            out.u32(sys::NFTNL_UDATA_SET_DATA_INTERVAL, 0);
        }
    }
    if !set.comment.is_empty() {
        let mut comment = set.comment.as_bytes().to_vec();
        comment.push(0);
        out.put(sys::NFTNL_UDATA_SET_COMMENT, &comment);
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::Set;

    /// The bytes `nft -f` sends for
    /// `map m { typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport; }`
    /// (captured with `strace -e sendmsg` from nft 1.0.6).
    const NFT_IPV4_ENDPOINT_MAP: &str = "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn endpoint_map_userdata_is_what_nft_writes() {
        let set = Set::endpoint_map(KeyType::AddrProtoPortSlot(2), "");
        assert_eq!(hex(&set_bytes(IpFamily::V4, &set)), NFT_IPV4_ENDPOINT_MAP);
    }

    #[test]
    fn a_comment_ends_the_userdata() {
        let set = Set::plain(KeyType::Addr, "hello");
        assert_eq!(hex(&set_bytes(IpFamily::V4, &set)), "000402000000070668656c6c6f00");
    }

    /// The kernel refuses set userdata over 256 bytes (`NFT_USERDATA_MAXLEN`, ERANGE): the
    /// longest comments the backend writes must fit with the `typeof` of an endpoint map.
    #[test]
    fn endpoint_map_userdata_fits_the_kernel_limit() {
        let comments = [
            "Cluster-policy endpoints of frontends with 100000 endpoints",
            "Maglev tables of Cluster-policy endpoints (jhash saddr)",
        ];
        for family in [IpFamily::V4, IpFamily::V6] {
            for key in [KeyType::AddrProtoPortSlot(100_000), KeyType::ProtoPortSlot(100_000)] {
                for comment in comments {
                    let len = set_bytes(family, &Set::endpoint_map(key, comment)).len();
                    assert!(len <= 256, "{family:?} {key:?} {comment:?}: {len} bytes");
                }
            }
        }
    }

    fn set_bytes(family: IpFamily, s: &Set) -> Vec<u8> {
        let byteorder = if s.key == KeyType::Addr { 2 } else { 0 };
        set(family, s, byteorder)
    }
}
