//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), and the kernel's `jhash` that
//! picks a slot of the table for a client.
//!
//! A Maglev table has a prime number M of slots; each endpoint owns about M/N of them.
//! The kernel picks a new connection's slot with `jhash ip saddr mod M seed S` (nftables'
//! `hash` expression), and the slot names the endpoint. Three properties follow, and the
//! tests here hold the table to them:
//! - **The same table on every node.** It depends only on the endpoint addresses (sorted)
//!   and M, never on the order objects arrived in, and the seed is configured, so every
//!   node sends a client to the same endpoint.
//! - **Little disruption.** Adding or removing one endpoint moves about 1/N of the slots;
//!   the other endpoints keep theirs.
//! - **Balance.** Every endpoint owns ⌊M/N⌋ or ⌈M/N⌉ slots.
//!
//! M comes from a few fixed size classes ([`SIZE_CLASSES`]) by endpoint count, so it rarely
//! changes: a new M reshuffles nearly every client.

use std::net::{IpAddr, SocketAddr};

/// The table sizes kproxy picks from: primes, each about four times the last.
pub const SIZE_CLASSES: [u32; 5] = [251, 1021, 4093, 16381, 65521];

/// The default largest table (Cilium's default size too).
pub const DEFAULT_MAX_SIZE: u32 = 16381;

/// Slots per endpoint below which the next size class is taken. Maglev moves a few
/// clients between endpoints that did not change when one endpoint comes or goes, fewer
/// the more slots each endpoint owns: measured over 10,000 clients, 5% at 25 slots per
/// endpoint, 2.5% at 100, 1.4% at 400 (`tests/maglev.rs`). 300 keeps it under 2% up to the
/// largest class, and puts no class boundary at common small counts: 1 endpoint gets 251
/// slots (see [`size_for`]), 2–3 get 1,021, 4–13 get 4,093, 14–54 get 16,381.
pub const MIN_SLOTS_PER_ENDPOINT: u32 = 300;

/// The seed kproxy uses for the kernel's `jhash` when none is configured. Any fixed value
/// works; it must only be the same on every node (nftables draws a random one per rule
/// when none is given).
pub const DEFAULT_SEED: u32 = 0x6b70_726f; // "kpro"

/// Seeds of the two hashes that place an endpoint's permutation (its first slot and its
/// stride). Fixed forever: changing them reshuffles every client in every cluster.
const OFFSET_SEED: u32 = 0x4d61_676c; // "Magl"
const SKIP_SEED: u32 = 0x6576_3031; // "ev01"

/// The table size for `endpoints` endpoints: the smallest class that gives each endpoint at
/// least [`MIN_SLOTS_PER_ENDPOINT`] slots, at most `cap` (and at least the smallest class).
/// A lone endpoint gets the smallest class: every client is on it whatever the size, so
/// growing from one endpoint moves nobody who was elsewhere.
pub fn size_for(endpoints: usize, cap: u32) -> u32 {
    if endpoints <= 1 {
        return SIZE_CLASSES[0];
    }
    let wanted = (endpoints as u64).saturating_mul(MIN_SLOTS_PER_ENDPOINT as u64);
    let mut allowed = SIZE_CLASSES.iter().copied().filter(|m| *m <= cap.max(SIZE_CLASSES[0]));
    allowed.clone().find(|m| u64::from(*m) >= wanted).or_else(|| allowed.next_back()).unwrap_or(SIZE_CLASSES[0])
}

/// Whether `n` is prime (table sizes given in annotations are checked with it).
pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| d.saturating_mul(*d) <= n).all(|d| !n.is_multiple_of(d))
}

/// The lookup table: for each of `size` slots, the index into `endpoints` of the endpoint
/// that owns it. Empty when there are no endpoints.
///
/// `endpoints` must be sorted (ServicePortRules' endpoint lists are): the table is filled
/// in their order, so the same set gives the same table everywhere. `size` must be prime
/// for every endpoint's permutation to visit every slot.
///
/// Endpoints are named by their address alone when the addresses are distinct (nearly
/// always), so the ports of a Service that reach the same pods on different ports get the
/// same table: one table serves them all, and a client lands on the same pod through each
/// port. Only a list that holds an address twice (two target ports of one pod) names
/// endpoints by address and port.
pub fn table(endpoints: &[SocketAddr], size: u32) -> Vec<u32> {
    if addresses_distinct(endpoints) {
        fill(endpoints.iter().map(|ep| address_name(&ep.ip())).collect(), size)
    } else {
        fill(endpoints.iter().map(endpoint_name).collect(), size)
    }
}

/// The lookup table of distinct, sorted endpoint addresses: what [`table`] gives for
/// endpoints at these addresses, whatever their ports.
pub fn address_table(addresses: &[IpAddr], size: u32) -> Vec<u32> {
    fill(addresses.iter().map(address_name).collect(), size)
}

/// Whether no address appears twice in a sorted endpoint list.
pub fn addresses_distinct(endpoints: &[SocketAddr]) -> bool {
    endpoints.windows(2).all(|w| w[0].ip() != w[1].ip())
}

/// Fills a table of `size` slots for endpoints with these names (in order).
fn fill(names: Vec<Vec<u8>>, size: u32) -> Vec<u32> {
    let n = names.len();
    if n == 0 || size == 0 {
        return Vec::new();
    }
    let m = u64::from(size);
    // Each endpoint walks its own permutation of the slots: offset, offset + skip, …
    let walks: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let offset = u64::from(jhash(name, OFFSET_SEED)) % m;
            let skip = if size > 1 { u64::from(jhash(name, SKIP_SEED)) % (m - 1) + 1 } else { 1 };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut owner = vec![u32::MAX; size as usize];
    let mut filled = 0usize;
    // Round-robin: each endpoint in turn takes the next slot of its permutation that is
    // still free, until every slot is owned.
    'fill: loop {
        for (i, (offset, skip)) in walks.iter().enumerate() {
            let mut slot;
            loop {
                slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if owner[slot] == u32::MAX {
                    break;
                }
            }
            owner[slot] = i as u32;
            filled += 1;
            if filled == size as usize {
                break 'fill;
            }
        }
    }
    owner
}

/// The bytes that name an endpoint by address in the permutation hashes.
fn address_name(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// The bytes that name an endpoint by address and port: its address, then its port in
/// network order.
fn endpoint_name(ep: &SocketAddr) -> Vec<u8> {
    let mut name = address_name(&ep.ip());
    name.extend_from_slice(&ep.port().to_be_bytes());
    name
}

/// What the kernel hashes to pick a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Hash {
    /// The client's address (`jhash ip saddr`): every connection of a client lands on one
    /// endpoint.
    #[default]
    Source,
    /// The client's address and source port (`jhash ip saddr . th sport`; the destination
    /// and protocol are the frontend's, fixed within its table): each connection on its
    /// own, the same on every node, so a connection that a load balancer moves to another
    /// node keeps its endpoint.
    Connection,
}

/// A service port's Maglev table: its size and what picks a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Table {
    /// The number of slots, a prime.
    pub size: u32,
    /// What the kernel hashes.
    pub hash: Hash,
}

/// The slot the kernel picks for a client: `jhash ip saddr mod size seed seed`, that is
/// the kernel's `reciprocal_scale(jhash(saddr, len, seed), size)` over the address bytes.
pub fn slot(client: IpAddr, size: u32, seed: u32) -> u32 {
    let hash = match client {
        IpAddr::V4(ip) => jhash(&ip.octets(), seed),
        IpAddr::V6(ip) => jhash(&ip.octets(), seed),
    };
    ((u64::from(hash) * u64::from(size)) >> 32) as u32
}

/// The slot the kernel picks for one connection: `jhash ip saddr . th sport mod size seed
/// seed`. The kernel hashes the registers the concatenation fills: the address, then the
/// port in network order padded with zeros to 32 bits.
pub fn connection_slot(client: IpAddr, source_port: u16, size: u32, seed: u32) -> u32 {
    let mut key = match client {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    key.extend_from_slice(&source_port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    ((u64::from(jhash(&key, seed)) * u64::from(size)) >> 32) as u32
}

/// Linux's `jhash()` (Bob Jenkins' lookup3, `include/linux/jhash.h`), bit for bit, for a
/// little-endian machine: the kernel reads whole 12-byte blocks as native-endian words and
/// the tail byte by byte.
pub fn jhash(key: &[u8], initval: u32) -> u32 {
    let init = 0xdead_beef_u32.wrapping_add(key.len() as u32).wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(u32::from_le_bytes([k[0], k[1], k[2], k[3]]));
        b = b.wrapping_add(u32::from_le_bytes([k[4], k[5], k[6], k[7]]));
        c = c.wrapping_add(u32::from_le_bytes([k[8], k[9], k[10], k[11]]));
        (a, b, c) = mix(a, b, c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    let word = |bytes: &[u8]| bytes.iter().enumerate().fold(0u32, |w, (i, b)| w | (u32::from(*b) << (8 * i)));
    a = a.wrapping_add(word(&k[..k.len().min(4)]));
    if k.len() > 4 {
        b = b.wrapping_add(word(&k[4..k.len().min(8)]));
    }
    if k.len() > 8 {
        c = c.wrapping_add(word(&k[8..]));
    }
    final_mix(a, b, c)
}

/// `__jhash_mix`.
fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(4);
    b = b.wrapping_add(a);
    (a, b, c)
}

/// `__jhash_final`.
fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}
