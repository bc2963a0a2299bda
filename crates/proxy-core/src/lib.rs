//! # proxy-core
//!
//! kube-proxy's Service semantics (its nftables mode) as a pure, embeddable library. No
//! I/O, no async, no clock: the same inputs always give the same rules.
//!
//! The data path, in module order:
//!
//! | module | what it does |
//! |---|---|
//! | [`model`] | typed Services, EndpointSlices and Nodes |
//! | [`translate`], [`ingest`] | `k8s-openapi` objects → model, skipping bad parts with a [`Problem`] |
//! | [`snapshot`] | the current objects, and which Services changed since the last sync |
//! | [`context`] | this node: name, zone, IPs, NodePort addresses, local-traffic detection |
//! | [`endpoints`] | readiness, terminating fallback, topology hints, traffic policy |
//! | [`compute`] | `compute(&Snapshot, &NodeContext) -> Desired` |
//! | [`desired`] | the desired rules per IP family and service port: plain data for backends |
//! | [`diff`] | `diff(&applied, &desired) -> Changes`, per service port and endpoint |
//! | [`engine`] | incremental recompute: O(changed Services) per sync |
//! | [`backend`] | the [`Backend`] trait, the [`Syncer`] recovery contract, a model backend |
//! | [`trace`] | a packet tracer over [`Desired`] |
//! | [`conntrack`] | which UDP conntrack entries a sync made stale |
//! | [`maglev`] | Maglev lookup tables and the kernel's `jhash`, for stable per-client endpoints |
//! | `manifest` | (feature `manifests`) YAML/JSON manifests → objects, for file-fed embedders |
//!
//! ```
//! use proxy_core::{Engine, Event, NodeContext, ModelBackend, Syncer, trace};
//! use proxy_core::model::*;
//!
//! let mut engine = Engine::new(NodeContext::new("node-a"));
//! let svc = ObjectRef::new("default", "web");
//! engine.apply(Event::ServiceApplied(Service {
//!     ports: vec![ServicePort { name: "http".into(), protocol: Protocol::Tcp, port: 80, node_port: None, target_port: None }],
//!     ..Service::new(svc.clone(), vec!["10.96.0.10".parse().unwrap()])
//! }));
//! let mut syncer = Syncer::new(ModelBackend::default());
//! let plan = engine.plan();
//! syncer.sync(&plan, engine.desired()).unwrap();
//!
//! // No EndpointSlice yet: traffic to the ClusterIP is rejected.
//! let t = trace::trace(engine.desired(), &trace::Packet {
//!     source: trace::Source::pod("10.244.0.5".parse().unwrap()),
//!     protocol: Protocol::Tcp, destination: "10.96.0.10".parse().unwrap(), port: 80,
//! });
//! assert_eq!(t.verdict, trace::Verdict::Reject);
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod compute;
pub mod conntrack;
pub mod context;
pub mod desired;
pub mod diff;
pub mod endpoints;
pub mod engine;
mod error;
pub mod ingest;
pub mod ip;
pub mod maglev;
#[cfg(feature = "manifests")]
pub mod manifest;
pub mod model;
pub mod snapshot;
pub mod trace;
pub mod translate;

pub use backend::{Backend, ModelBackend, SyncStats, Syncer};
pub use compute::compute;
pub use context::{FamilyContext, LocalDetectMode, LocalDetector, MaglevSettings, NodeContext, NodePortIps};
pub use desired::{Desired, FamilyRules, Maglev, NoEndpoints, Policy, Route, ServicePortRules, SharedTable, Target};
pub use diff::{Change, Changes, diff};
pub use engine::{Engine, Plan};
pub use error::{Error, ObjectKind, Problem};
pub use model::{IpFamily, ObjectRef, Protocol, ServicePortName};
pub use snapshot::{Event, Snapshot};
