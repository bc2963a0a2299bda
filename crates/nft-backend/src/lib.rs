//! # nft-backend
//!
//! kproxy's nftables backend. It renders proxy-core's [`Desired`](proxy_core::Desired)
//! rules into one table per IP family (default name `kproxy`) and writes them to the
//! kernel over netlink, one atomic transaction per sync.
//!
//! | module | what it does |
//! |---|---|
//! | [`ruleset`] | the objects: chains, rules from a closed vocabulary, sets and maps |
//! | [`names`] | upstream's chain names (`service-HASH-ns/svc/proto/port`, …) |
//! | [`render`] | `Desired` → `Ruleset` (pure): Services as elements of shared maps |
//! | [`text`] | `Ruleset` → nft syntax (`kproxy plan`, golden tests) |
//! | [`tx`] | a transaction: the operations of one sync, as data |
//! | [`netlink`] | transactions → one netlink batch, sent in one `sendmsg`; set userdata |
//! | [`NftBackend`] | proxy-core's `Backend`: full and partial syncs, committed-state record |
//! | `partial` | a partial sync's plan: operations from the committed record to the new objects |
#![deny(missing_docs)]

mod backend;
mod committed;
mod error;
pub mod names;
pub mod netlink;
mod partial;
pub mod render;
pub mod ruleset;
pub mod text;
pub mod tx;

pub use backend::{DEFAULT_TABLE, NftBackend};
pub use error::Error;
