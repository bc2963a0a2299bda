//! # relay-backend
//!
//! NodePorts on `127.0.0.1` and `::1`, TCP and UDP, for processes on the node, served by
//! a userspace relay: what iptables mode did with `route_localnet` (which exposed
//! localhost services to neighbours, CVE-2020-8558) and what upstream's nftables mode
//! brings back only for TCP (KEP-6032). Loopback addresses never leave the host, so
//! nothing here is reachable from other hosts.
//!
//! It is a proxy-core [`Backend`](proxy_core::Backend): the daemon runs it beside the
//! nftables (or IPVS) backend and feeds both the same [`Desired`](proxy_core::Desired).
//!
//! | module | what it does |
//! |---|---|
//! | [`plan`] | `Desired` → the listeners wanted and where each sends traffic (pure) |
//! | [`pick`] | a connection's endpoint: random, ClientIP affinity, Maglev (clock injected) |
//! | [`sessions`] | the UDP session table and its conntrack-like timeouts (pure) |
//! | `relay` | the relay's own thread and runtime: opens, updates and closes listeners |
//! | `tcp`, `splice`, `udp` | relaying one connection (with `splice(2)`) or datagram session |
//! | `backend` | [`RelayBackend`], the `Backend` implementation |
//!
//! Relayed connections belong to the process: when kproxy stops or restarts, they end.
//! The endpoint sees the node's address as the source (the relay connects from the node),
//! so NetworkPolicy on the pod's side sees node traffic.
#![deny(missing_docs)]

mod backend;
mod error;
pub mod pick;
pub mod plan;
mod relay;
pub mod sessions;
mod splice;
mod tcp;
mod udp;

pub use backend::RelayBackend;
pub use error::Error;
pub use plan::{Listener, Route};
pub use relay::{BindFailure, Limits, Relay, Stats};
