//! The IPVS operations that bring the kernel from one state to another, in an order that
//! never breaks a working service (pure).
//!
//! IPVS has no transactions: every operation lands on its own, so the order is the safety.
//! New virtual services and new real servers come first, so a service gains its new
//! endpoints before it loses old ones; then weights change; removals come last.
//! A removed real server of a TCP service that still carries connections is not deleted
//! but set to weight 0: it takes no new connections while the old ones drain, and a later
//! sync deletes it once the kernel counts none (upstream's graceful termination). UDP and
//! SCTP servers go at once, as upstream's: with `expire_nodest_conn` the kernel drops their
//! flows on the next packet.

use std::net::SocketAddr;

use proxy_core::Protocol;

use crate::kernel::{IpvsState, ServiceKey, VirtualService};

/// One IPVS operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a virtual service.
    AddService(ServiceKey, VirtualService),
    /// Change a virtual service's scheduler or persistence.
    UpdateService(ServiceKey, VirtualService),
    /// Delete a virtual service with its real servers.
    DeleteService(ServiceKey),
    /// Add a real server with this weight.
    AddServer(ServiceKey, SocketAddr, u32),
    /// Change a real server's weight (0: drain it).
    UpdateServer(ServiceKey, SocketAddr, u32),
    /// Delete a real server.
    DeleteServer(ServiceKey, SocketAddr),
}

impl std::fmt::Display for Op {
    /// As `ipvsadm` commands, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = |k: &ServiceKey| match k.protocol {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
            Protocol::Sctp => "--sctp-service",
        };
        let vs = |k: &ServiceKey| format!("{} {}", flag(k), SocketAddr::new(k.addr, k.port));
        let svc = |s: &VirtualService| match s.persistence {
            Some(t) => format!("-s {} -p {t}", s.scheduler),
            None => format!("-s {}", s.scheduler),
        };
        match self {
            Op::AddService(k, s) => write!(f, "ipvsadm -A {} {}", vs(k), svc(s)),
            Op::UpdateService(k, s) => write!(f, "ipvsadm -E {} {}", vs(k), svc(s)),
            Op::DeleteService(k) => write!(f, "ipvsadm -D {}", vs(k)),
            Op::AddServer(k, r, w) => write!(f, "ipvsadm -a {} -r {r} -m -w {w}", vs(k)),
            Op::UpdateServer(k, r, w) => write!(f, "ipvsadm -e {} -r {r} -m -w {w}", vs(k)),
            Op::DeleteServer(k, r) => write!(f, "ipvsadm -d {} -r {r}", vs(k)),
        }
    }
}

/// Whether removed servers of this service drain (TCP) or go at once (UDP, SCTP).
fn drains(key: &ServiceKey) -> bool {
    key.protocol == Protocol::Tcp
}

/// The operations from `current` (what the kernel holds of ours) to `desired`.
pub fn plan(current: &IpvsState, desired: &IpvsState) -> Vec<Op> {
    let mut adds = Vec::new();
    let mut updates = Vec::new();
    let mut removals = Vec::new();
    for (key, want) in desired {
        let Some(have) = current.get(key) else {
            adds.push(Op::AddService(*key, want.service.clone()));
            adds.extend(want.servers.iter().map(|(addr, s)| Op::AddServer(*key, *addr, s.weight)));
            continue;
        };
        if have.service != want.service {
            updates.push(Op::UpdateService(*key, want.service.clone()));
        }
        for (addr, s) in &want.servers {
            match have.servers.get(addr) {
                None => adds.push(Op::AddServer(*key, *addr, s.weight)),
                Some(h) if h.weight != s.weight => updates.push(Op::UpdateServer(*key, *addr, s.weight)),
                Some(_) => {}
            }
        }
        for (addr, h) in have.servers.iter().filter(|(a, _)| !want.servers.contains_key(a)) {
            if !drains(key) || !h.has_connections() {
                removals.push(Op::DeleteServer(*key, *addr));
            } else if h.weight != 0 {
                updates.push(Op::UpdateServer(*key, *addr, 0));
            }
        }
    }
    for key in current.keys().filter(|k| !desired.contains_key(k)) {
        removals.push(Op::DeleteService(*key));
    }
    adds.extend(updates);
    adds.extend(removals);
    adds
}

/// What the kernel holds of ours once [`plan`]'s operations are applied: `desired`, plus
/// the servers left draining at weight 0.
pub fn settled(current: &IpvsState, desired: &IpvsState) -> IpvsState {
    let mut out = desired.clone();
    for (key, want) in out.iter_mut() {
        let Some(have) = current.get(key) else { continue };
        for (addr, h) in &have.servers {
            if !want.servers.contains_key(addr) && drains(key) && h.has_connections() {
                want.servers.insert(*addr, crate::kernel::RealServer { weight: 0, ..*h });
            }
        }
    }
    out
}
