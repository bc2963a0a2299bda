//! # ipvs-backend
//!
//! kproxy's IPVS backend: proxy-core's [`Desired`](proxy_core::Desired) rules as IPVS
//! virtual services and real servers, programmed over generic netlink, with the Service
//! IPs bound to a dummy interface and nftables doing what IPVS cannot (masquerade,
//! REJECT/DROP for frontends without endpoints, source-range firewalls).
//!
//! | module | what it does |
//! |---|---|
//! | [`genl`] | the IPVS generic-netlink family as typed messages (a codec) |
//! | [`kernel`] | virtual services and real servers as data; to and from attributes |
//! | [`render`] | `Desired` → the IPVS state and the bound addresses (pure) |
//! | [`plan`] | (kernel, desired) → IPVS operations in a safe order, with draining (pure) |
//! | [`filter`] | `Desired` → the nftables table: masquerade, reject, firewalls (pure) |
//! | [`socket`] | one netlink request, acknowledged or dumped |
//! | [`ipvs`] | the IPVS client: dump and apply |
//! | [`link`] | the dummy interface and its addresses, over rtnetlink |
//! | [`IpvsBackend`] | proxy-core's `Backend` |
#![deny(missing_docs)]

mod backend;
mod error;
pub mod filter;
pub mod genl;
pub mod ipvs;
pub mod kernel;
pub mod link;
pub mod plan;
pub mod render;
pub mod socket;

pub use backend::{Config, IpvsBackend};
pub use error::Error;
