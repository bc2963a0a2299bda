//! # nft-backend
//!
//! kproxy's nftables backend. It renders proxy-core's [`Desired`](proxy_core::Desired)
//! rules into one table per IP family (default name `kproxy`) and writes them to the
//! kernel through [`nft_client`], one atomic transaction per sync.
//!
//! | module | what it does |
//! |---|---|
//! | [`render`] | `Desired` → `Ruleset` (pure): Services as elements of shared maps |
//! | [`NftBackend`] | proxy-core's `Backend`: full and partial syncs, committed-state record |
//! | `committed` | what the last commits wrote, per service port: the record a partial sync starts from |
//! | `partial` | a partial sync's plan: operations from the committed record to the new objects |
//!
//! The objects, their text, transactions and netlink are [`nft_client`]'s.
#![deny(missing_docs)]

mod backend;
mod committed;
mod partial;
pub mod render;

pub use backend::NftBackend;
pub use nft_client::{DEFAULT_TABLE, Error};
