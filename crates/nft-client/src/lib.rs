//! # nft-client
//!
//! kproxy's nftables client: what both of kproxy's backends need to write nftables
//! tables, and nothing about how Services are laid out in them (that is
//! `nft-backend`'s job; `ipvs-backend` writes its small filter table with this alone).
//!
//! | module | what it does |
//! |---|---|
//! | [`ruleset`] | the objects: chains, rules from a closed vocabulary, sets and maps |
//! | [`names`] | upstream's object names (`service-HASH-ns/svc/proto/port`, …) |
//! | [`text`] | `Ruleset` → nft syntax (`kproxy plan`, golden tests) |
//! | [`tx`] | a transaction: the operations of one sync, as data |
//! | [`Client`] | one socket to nf_tables: commits transactions, remembers the generation |
//! | [`model`] | nf_tables as data: applies transactions with the kernel's refusals, for tests |
//! | [`netlink`] | transactions → one netlink batch, sent in one `sendmsg`; set userdata; the commit monitor |
#![deny(missing_docs)]

mod client;
mod error;
pub mod model;
pub mod names;
pub mod netlink;
pub mod ruleset;
pub mod text;
pub mod tx;

pub use client::{Client, Commit, DEFAULT_TABLE};
pub use error::Error;
