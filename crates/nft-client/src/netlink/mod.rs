//! A [`Transaction`] as one nf_tables netlink batch.
//!
//! Objects are built with libnftnl (through `nftnl`'s raw bindings, since its safe API
//! has no maps, verdict elements, timeouts or set comments) and written into an
//! `nftnl::Batch`. Messages carry no `NLM_F_ACK`: the kernel reports every failing message
//! anyway, so a successful 30 000-message sync produces no 30 000 acknowledgements to
//! buffer. [`socket`] sends the batch in one `sendmsg` and learns the outcome from a
//! generation request queued behind it.

mod expr;
pub mod monitor;
pub mod socket;
mod udata;

use std::cell::Cell;
use std::ffi::{CString, c_void};
use std::net::IpAddr;
use std::ptr::NonNull;
use std::rc::Rc;

use nftnl::nftnl_sys as sys;
use nftnl::{Batch, FinalizedBatch, MsgType, NlMsg};
use proxy_core::IpFamily;

use crate::ruleset::{BaseChain, ChainType, Data, DataType, Hook, Key, KeyType, Rule, Set, Verdict};
use crate::tx::{Op, Transaction};

const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
const NLM_F_APPEND: u16 = libc::NLM_F_APPEND as u16;
const NLM_F_ECHO: u16 = libc::NLM_F_ECHO as u16;

// nft's data type ids (nftables' datatype.h), used so `nft list` names the key types.
const TYPE_INTEGER: u32 = 4;
/// nft's `BYTEORDER_HOST_ENDIAN`, recorded in a set's userdata.
const BYTEORDER_HOST: u32 = 1;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;
/// `NFT_DATA_VERDICT`.
const DATA_VERDICT: u32 = 0xffff_ff00;
const SET_MAP: u32 = 0x8;
const SET_TIMEOUT: u32 = 0x10;
const SET_EVAL: u32 = 0x20;
const BYTEORDER_BIG: u32 = 2;

/// Iterates netlink attributes (`struct nlattr`, 4-byte aligned): (type without the
/// nested and byte-order flags, value). Stops at the first malformed attribute, never
/// reads past the buffer. (ctnetlink's messages are `netlink-packet-netfilter`'s.)
pub(crate) fn attrs(mut rest: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let header = rest.get(..4)?;
        let len = u16::from_ne_bytes([header[0], header[1]]) as usize;
        let kind = u16::from_ne_bytes([header[2], header[3]]) & 0x3fff;
        let value = rest.get(4..len.max(4)).filter(|_| len >= 4)?;
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// The attributes after a message's 4-byte `nfgenmsg`: (type without flags, value).
pub(crate) fn attributes(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attrs(body.get(4..).unwrap_or_default())
}

fn proto_family(family: IpFamily) -> u16 {
    match family {
        IpFamily::V4 => libc::NFPROTO_IPV4 as u16,
        IpFamily::V6 => libc::NFPROTO_IPV6 as u16,
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("object names contain no NUL")
}

/// The key bytes of an element, laid out as nft lays out (concatenated) keys: each field
/// padded to 32 bits, addresses and ports in network order.
pub(crate) fn key_bytes(key: &Key) -> Vec<u8> {
    let addr = addr_bytes;
    let proto = |p: proxy_core::Protocol| [p.number(), 0, 0, 0];
    let port = |p: u16| {
        let b = p.to_be_bytes();
        [b[0], b[1], 0, 0]
    };
    match key {
        Key::Addr(ip) => addr(ip),
        Key::AddrProtoPort(ip, p, n) => [addr(ip), proto(*p).to_vec(), port(*n).to_vec()].concat(),
        Key::ProtoPort(p, n) => [proto(*p), port(*n)].concat(),
        Key::AddrAddr(a, b) => [addr(a), addr(b)].concat(),
        // The slot is what `numgen` leaves in its register: a host-order u32.
        Key::AddrProtoPortSlot(ip, p, n, slot) => {
            [addr(ip), proto(*p).to_vec(), port(*n).to_vec(), slot.to_ne_bytes().to_vec()].concat()
        }
        Key::ProtoPortSlot(p, n, slot) => [proto(*p), port(*n), slot.to_ne_bytes()].concat(),
        Key::Slot(slot) => slot.to_ne_bytes().to_vec(),
    }
}

/// The data bytes of a map element that maps to an endpoint: address, then the port in
/// network order padded to 32 bits (the registers `dnat` reads).
fn endpoint_bytes(addr: &std::net::SocketAddr) -> Vec<u8> {
    let port = addr.port().to_be_bytes();
    [addr_bytes(&addr.ip()), vec![port[0], port[1], 0, 0]].concat()
}

/// An address in network order.
fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn key_type(family: IpFamily, key: KeyType) -> (u32, u32, u32) {
    let addr = match family {
        IpFamily::V4 => (TYPE_IPADDR, 4),
        IpFamily::V6 => (TYPE_IP6ADDR, 16),
    };
    let concat = |types: &[u32]| types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t);
    match key {
        KeyType::Addr => (addr.0, addr.1, BYTEORDER_BIG),
        // nft records no single byte order for a concatenation.
        KeyType::AddrProtoPort => (concat(&[addr.0, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]), addr.1 + 8, 0),
        KeyType::ProtoPort => (concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]), 8, 0),
        KeyType::AddrAddr => (concat(&[addr.0, addr.0]), addr.1 * 2, 0),
        KeyType::AddrProtoPortSlot(_) => {
            (concat(&[addr.0, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE, TYPE_INTEGER]), addr.1 + 12, 0)
        }
        KeyType::ProtoPortSlot(_) => (concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE, TYPE_INTEGER]), 12, 0),
        // `numgen` leaves a host-order integer.
        KeyType::Slot(_) => (TYPE_INTEGER, 4, BYTEORDER_HOST),
    }
}

/// The netlink message of one operation (or one chunk of elements), remembering the
/// sequence number the batch gave it so errors can be traced back to it.
struct Wire<'a> {
    tx: &'a Transaction,
    op: usize,
    build: Build,
    seq: Cell<u32>,
}

/// Where a new rule goes in its chain.
#[derive(Clone, Copy)]
enum Position {
    /// At the end.
    Append,
    /// After the rule with this handle.
    After(u64),
    /// At the head.
    Head,
}

enum Build {
    Table {
        delete: bool,
    },
    Chain {
        name: String,
        base: Option<BaseChain>,
        delete: bool,
    },
    FlushChain(String),
    Rule {
        chain: String,
        rule: Rule,
        position: Position,
    },
    DeleteRule {
        chain: String,
        handle: u64,
    },
    Set {
        name: String,
        set: Box<Set>,
        id: u32,
        delete: bool,
    },
    FlushSet(String),
    /// A chunk of elements: the iterator writes as many as fit in one message.
    Elements {
        iter: NonNull<sys::nftnl_set_elems_iter>,
        delete: bool,
        more: Rc<Cell<bool>>,
    },
}

fn header(buf: *mut c_void, ty: u32, family: u16, flags: u16, seq: u32) -> *mut libc::nlmsghdr {
    // SAFETY: the batch hands us a buffer of at least nft_nlmsg_maxsize() bytes.
    unsafe { sys::nftnl_nlmsg_build_hdr(buf.cast(), ty as u16, family, flags, seq) }
}

unsafe impl NlMsg for Wire<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        self.seq.set(seq);
        let family = proto_family(self.tx.family);
        let table = cstring(&self.tx.table);
        // SAFETY (whole block): every object is freshly allocated, filled with nftnl's
        // setters (which copy their inputs), serialized into `buf` and freed.
        unsafe {
            match &self.build {
                Build::Table { delete } => {
                    let t = sys::nftnl_table_alloc();
                    sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, table.as_ptr());
                    sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, u32::from(family));
                    let (ty, flags) = if *delete {
                        (libc::NFT_MSG_DELTABLE, 0)
                    } else {
                        set_udata_comment(
                            |data, len| {
                                sys::nftnl_table_set_data(t, sys::NFTNL_TABLE_USERDATA as u16, data, len);
                            },
                            sys::NFTNL_UDATA_TABLE_COMMENT as u8,
                            "rules for kproxy",
                        );
                        (libc::NFT_MSG_NEWTABLE, NLM_F_CREATE)
                    };
                    sys::nftnl_table_nlmsg_build_payload(header(buf, ty as u32, family, flags, seq), t);
                    sys::nftnl_table_free(t);
                }
                Build::Chain { name, base, delete } => {
                    let c = sys::nftnl_chain_alloc();
                    let name = cstring(name);
                    sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
                    sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_NAME as u16, name.as_ptr());
                    sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_FAMILY as u16, u32::from(family));
                    if let (Some(b), false) = (base, delete) {
                        let hook = match b.hook {
                            Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
                            Hook::Input => libc::NF_INET_LOCAL_IN,
                            Hook::Forward => libc::NF_INET_FORWARD,
                            Hook::Output => libc::NF_INET_LOCAL_OUT,
                            Hook::Postrouting => libc::NF_INET_POST_ROUTING,
                        };
                        let kind = match b.kind {
                            ChainType::Filter => c"filter",
                            ChainType::Nat => c"nat",
                        };
                        sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16, hook as u32);
                        sys::nftnl_chain_set_s32(c, sys::NFTNL_CHAIN_PRIO as u16, b.priority);
                        sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TYPE as u16, kind.as_ptr());
                        sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_POLICY as u16, libc::NF_ACCEPT as u32);
                    }
                    let (ty, flags) =
                        if *delete { (libc::NFT_MSG_DELCHAIN, 0) } else { (libc::NFT_MSG_NEWCHAIN, NLM_F_CREATE) };
                    sys::nftnl_chain_nlmsg_build_payload(header(buf, ty as u32, family, flags, seq), c);
                    sys::nftnl_chain_free(c);
                }
                Build::FlushChain(chain) | Build::Rule { chain, .. } | Build::DeleteRule { chain, .. } => {
                    let r = sys::nftnl_rule_alloc();
                    let chain = cstring(chain);
                    sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
                    sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
                    sys::nftnl_rule_set_u32(r, sys::NFTNL_RULE_FAMILY as u16, u32::from(family));
                    let (ty, flags) = match &self.build {
                        Build::Rule { rule, position, .. } => {
                            for e in expr::rule(self.tx.family, rule) {
                                sys::nftnl_rule_add_expr(r, e.into_raw());
                            }
                            let echo = if rule.echoed() { NLM_F_ECHO } else { 0 };
                            let place = match position {
                                Position::Append => NLM_F_APPEND,
                                Position::After(handle) => {
                                    sys::nftnl_rule_set_u64(r, sys::NFTNL_RULE_POSITION as u16, *handle);
                                    NLM_F_APPEND
                                }
                                Position::Head => 0,
                            };
                            (libc::NFT_MSG_NEWRULE, NLM_F_CREATE | place | echo)
                        }
                        Build::DeleteRule { handle, .. } => {
                            sys::nftnl_rule_set_u64(r, sys::NFTNL_RULE_HANDLE as u16, *handle);
                            (libc::NFT_MSG_DELRULE, 0)
                        }
                        // A rule deletion without a handle deletes every rule of the chain.
                        _ => (libc::NFT_MSG_DELRULE, 0),
                    };
                    sys::nftnl_rule_nlmsg_build_payload(header(buf, ty as u32, family, flags, seq), r);
                    sys::nftnl_rule_free(r);
                }
                Build::Set { name, set, id, delete } => {
                    let s = new_set(&table, name, family);
                    let (ty, flags) = if *delete {
                        (libc::NFT_MSG_DELSET, 0)
                    } else {
                        let (key_type, key_len, byteorder) = key_type(self.tx.family, set.key);
                        let mut flags = 0;
                        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, key_type);
                        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, key_len);
                        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, *id);
                        match set.data {
                            None => {}
                            Some(DataType::Verdict) => {
                                flags |= SET_MAP;
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, DATA_VERDICT);
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, 0);
                            }
                            Some(DataType::Endpoint) => {
                                flags |= SET_MAP;
                                let (addr_type, addr_len) = match self.tx.family {
                                    IpFamily::V4 => (TYPE_IPADDR, 4),
                                    IpFamily::V6 => (TYPE_IP6ADDR, 16),
                                };
                                let data_type = (addr_type << TYPE_BITS) | TYPE_INET_SERVICE;
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, data_type);
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, addr_len + 4);
                            }
                            Some(DataType::Addr) => {
                                flags |= SET_MAP;
                                let (addr_type, addr_len) = match self.tx.family {
                                    IpFamily::V4 => (TYPE_IPADDR, 4),
                                    IpFamily::V6 => (TYPE_IP6ADDR, 16),
                                };
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, addr_type);
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, addr_len);
                            }
                            Some(DataType::Port) => {
                                flags |= SET_MAP;
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, TYPE_INET_SERVICE);
                                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, 2);
                            }
                        }
                        if let Some(timeout) = set.timeout {
                            flags |= SET_TIMEOUT | SET_EVAL;
                            sys::nftnl_set_set_u64(s, sys::NFTNL_SET_TIMEOUT as u16, u64::from(timeout) * 1000);
                        }
                        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, flags);
                        let udata = udata::set(self.tx.family, set, byteorder);
                        sys::nftnl_set_set_data(
                            s,
                            sys::NFTNL_SET_USERDATA as u16,
                            udata.as_ptr().cast(),
                            udata.len() as u32,
                        );
                        (libc::NFT_MSG_NEWSET, NLM_F_CREATE)
                    };
                    sys::nftnl_set_nlmsg_build_payload(header(buf, ty as u32, family, flags, seq), s);
                    sys::nftnl_set_free(s);
                }
                Build::FlushSet(name) => {
                    let s = new_set(&table, name, family);
                    let h = header(buf, libc::NFT_MSG_DELSETELEM as u32, family, 0, seq);
                    sys::nftnl_set_elems_nlmsg_build_payload(h, s);
                    sys::nftnl_set_free(s);
                }
                Build::Elements { iter, delete, more } => {
                    let (ty, flags) =
                        if *delete { (libc::NFT_MSG_DELSETELEM, 0) } else { (libc::NFT_MSG_NEWSETELEM, NLM_F_CREATE) };
                    let h = header(buf, ty as u32, family, flags, seq);
                    // 1: the message is full and elements remain; 0: this was the last chunk.
                    more.set(sys::nftnl_set_elems_nlmsg_build_payload_iter(h, iter.as_ptr()) > 0);
                }
            }
        }
    }
}

/// Allocates a set object naming `name` in `table`.
unsafe fn new_set(table: &CString, name: &str, family: u16) -> *mut sys::nftnl_set {
    let name = cstring(name);
    // SAFETY: the setters copy their inputs.
    unsafe {
        let s = sys::nftnl_set_alloc();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(family));
        s
    }
}

/// Builds a userdata blob holding one comment and hands it to `apply`.
unsafe fn set_udata_comment(apply: impl FnOnce(*const c_void, u32), kind: u8, comment: &str) {
    let comment = cstring(comment);
    // SAFETY: the buffer is allocated, filled, passed to a copying setter and freed.
    unsafe {
        let buf = sys::nftnl_udata_buf_alloc(256);
        sys::nftnl_udata_put_strz(buf, kind, comment.as_ptr());
        apply(sys::nftnl_udata_buf_data(buf), sys::nftnl_udata_buf_len(buf));
        sys::nftnl_udata_buf_free(buf);
    }
}

/// How many elements one [`ElementList`] holds at most. libnftnl keeps about 280 bytes per
/// element object, so a list of all 250 000 endpoint slots at 5k Services × 50 endpoints
/// took 70 MB; lists of 8192 split them into messages just as well (a few hundred elements
/// each), leaving one part-filled message per list.
const ELEMENTS_PER_LIST: usize = 8192;

/// An element list: a set object holding the elements, and the iterator that splits them
/// into messages of at most 64 KiB.
struct ElementList {
    set: NonNull<sys::nftnl_set>,
    iter: NonNull<sys::nftnl_set_elems_iter>,
}

impl ElementList {
    fn new(tx: &Transaction, name: &str, elements: &[(Key, Option<Data>)]) -> ElementList {
        let table = cstring(&tx.table);
        // SAFETY: the set is freshly allocated; elements are allocated, filled with copying
        // setters and handed to the set, which then owns them.
        unsafe {
            let s = new_set(&table, name, proto_family(tx.family));
            for (key, verdict) in elements {
                let e = sys::nftnl_set_elem_alloc();
                let bytes = key_bytes(key);
                sys::nftnl_set_elem_set(e, sys::NFTNL_SET_ELEM_KEY as u16, bytes.as_ptr().cast(), bytes.len() as u32);
                let data = match verdict {
                    Some(Data::Endpoint(addr)) => Some(endpoint_bytes(addr)),
                    Some(Data::Addr(ip)) => Some(addr_bytes(ip)),
                    Some(Data::Port(port)) => Some(port.to_be_bytes().to_vec()),
                    _ => None,
                };
                if let Some(bytes) = data {
                    sys::nftnl_set_elem_set(
                        e,
                        sys::NFTNL_SET_ELEM_DATA as u16,
                        bytes.as_ptr().cast(),
                        bytes.len() as u32,
                    );
                }
                if let Some(Data::Verdict(v)) = verdict {
                    let (code, chain) = match v {
                        Verdict::Accept => (libc::NF_ACCEPT, None),
                        Verdict::Drop => (libc::NF_DROP, None),
                        Verdict::Return => (-5, None),
                        Verdict::Jump(c) => (-3, Some(c)),
                        Verdict::Goto(c) => (-4, Some(c)),
                    };
                    sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16, code as u32);
                    if let Some(chain) = chain {
                        let chain = cstring(chain);
                        sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16, chain.as_ptr());
                    }
                }
                sys::nftnl_set_elem_add(s, e);
            }
            let iter = sys::nftnl_set_elems_iter_create(s);
            ElementList { set: NonNull::new(s).expect("alloc"), iter: NonNull::new(iter).expect("alloc") }
        }
    }

    /// Adds one message per chunk of elements until all are written.
    fn write_all(&self, mut add: impl FnMut(Build), delete: bool) {
        // SAFETY: the iterator is valid while the list lives. (Its `cur` never becomes
        // NULL after the first pass, so the build function's return value says when to
        // stop.)
        if unsafe { sys::nftnl_set_elems_iter_cur(self.iter.as_ptr()).is_null() } {
            return;
        }
        let more = Rc::new(Cell::new(true));
        while more.get() {
            add(Build::Elements { iter: self.iter, delete, more: more.clone() });
        }
    }
}

impl Drop for ElementList {
    fn drop(&mut self) {
        // SAFETY: both were created in `new` and are freed once.
        unsafe {
            sys::nftnl_set_elems_iter_destroy(self.iter.as_ptr());
            sys::nftnl_set_free(self.set.as_ptr());
        }
    }
}

/// An encoded transaction: the finalized batch and, per message sequence number, the
/// index of the operation it came from.
pub struct Encoded {
    /// The batch.
    pub batch: FinalizedBatch,
    /// (sequence number, operation index) for every message.
    pub seqs: Vec<(u32, usize)>,
    /// The batch's total size in bytes.
    pub bytes: usize,
    /// The number of messages.
    pub messages: usize,
}

/// Batch page size: the whole batch goes out in one `sendmsg`, whose iovec may hold at
/// most 1024 pages (`UIO_MAXIOV`); 2 MiB pages allow batches up to 2 GiB.
const PAGE_SIZE: u32 = 2 << 20;

/// Encodes transactions into one batch; [`socket`] sends all its pages in one `sendmsg`.
pub fn encode(txs: &[Transaction]) -> Encoded {
    let mut batch = Batch::with_page_size(PAGE_SIZE);
    let mut seqs = Vec::new();
    let mut set_id = 0u32;
    let mut index = 0;
    for tx in txs {
        encode_one(tx, &mut batch, &mut seqs, &mut set_id, &mut index);
    }
    let batch = batch.finalize();
    let bytes = batch.iter().map(<[u8]>::len).sum();
    let messages = seqs.len();
    Encoded { batch, seqs, bytes, messages }
}

fn encode_one(tx: &Transaction, batch: &mut Batch, seqs: &mut Vec<(u32, usize)>, set_id: &mut u32, index: &mut usize) {
    let mut add = |batch: &mut Batch, op: usize, build: Build| {
        let wire = Wire { tx, op, build, seq: Cell::new(0) };
        batch.add(&wire, MsgType::Add);
        seqs.push((wire.seq.get(), wire.op));
    };
    let base = *index;
    *index += tx.ops.len();
    let batch = &mut *batch;
    for (i, op) in tx.ops.iter().enumerate() {
        let i = base + i;
        match op {
            Op::AddTable => add(batch, i, Build::Table { delete: false }),
            Op::DeleteTable => add(batch, i, Build::Table { delete: true }),
            Op::AddChain(name, base) => add(batch, i, Build::Chain { name: name.clone(), base: *base, delete: false }),
            Op::DeleteChain(name) => add(batch, i, Build::Chain { name: name.clone(), base: None, delete: true }),
            Op::FlushChain(name) => add(batch, i, Build::FlushChain(name.clone())),
            Op::AddRule(chain, rule) => {
                add(batch, i, Build::Rule { chain: chain.clone(), rule: rule.clone(), position: Position::Append })
            }
            Op::InsertRule(chain, rule, after) => {
                let position = after.map_or(Position::Head, Position::After);
                add(batch, i, Build::Rule { chain: chain.clone(), rule: rule.clone(), position })
            }
            Op::DeleteRule(chain, handle) => add(batch, i, Build::DeleteRule { chain: chain.clone(), handle: *handle }),
            Op::AddSet(name, set) => {
                *set_id += 1;
                add(batch, i, Build::Set { name: name.clone(), set: Box::new(set.clone()), id: *set_id, delete: false })
            }
            Op::DeleteSet(name) => add(
                batch,
                i,
                Build::Set { name: name.clone(), set: Box::new(Set::plain(KeyType::Addr, "")), id: 0, delete: true },
            ),
            Op::FlushSet(name) => add(batch, i, Build::FlushSet(name.clone())),
            Op::AddElements(name, elements) => {
                for chunk in elements.chunks(ELEMENTS_PER_LIST) {
                    ElementList::new(tx, name, chunk).write_all(|b| add(batch, i, b), false);
                }
            }
            Op::DeleteElements(name, keys) => {
                for chunk in keys.chunks(ELEMENTS_PER_LIST) {
                    let elements: Vec<(Key, Option<Data>)> = chunk.iter().map(|k| (*k, None)).collect();
                    ElementList::new(tx, name, &elements).write_all(|b| add(batch, i, b), true);
                }
            }
        }
    }
}
