//! Which localhost listeners a [`Desired`] state asks for, and where each sends its
//! traffic (pure).
//!
//! KEP-6032's semantics: every NodePort of a Service with endpoints for external traffic
//! gets a listener on the loopback address of each family the Service has (`127.0.0.1`
//! for IPv4, `::1` for IPv6). `externalTrafficPolicy: Local` uses the node's local
//! endpoints only, as upstream's relay does (no listener when there are none, so the
//! client is refused, as traffic from outside would be dropped); otherwise every
//! endpoint. ClientIP affinity pins, and Maglev hashes the loopback client.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proxy_core::{Changes, Desired, IpFamily, Protocol, ServicePortName, ServicePortRules, maglev};

/// One listener: a NodePort on one family's loopback address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Listener {
    /// `127.0.0.1` or `::1`.
    pub family: IpFamily,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The NodePort.
    pub port: u16,
}

impl Listener {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        let ip = match self.family {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, self.port)
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.protocol.as_str(), self.addr())
    }
}

/// Where a listener's connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The service port it serves (for logs, events and metrics).
    pub name: ServicePortName,
    /// The endpoints, sorted.
    pub endpoints: Vec<SocketAddr>,
    /// How a connection picks its endpoint.
    pub pick: Pick,
}

/// How a new connection (or UDP session) picks its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// At random.
    Random,
    /// ClientIP affinity: every loopback client shares one address, so one endpoint is
    /// pinned for all of them while connections keep coming within the timeout.
    Affinity(Duration),
    /// Maglev: the slot of the client's address (or connection) in the Maglev table,
    /// with the node's seed, as the kernel's `jhash` computes it.
    Maglev {
        /// The table.
        table: maglev::Table,
        /// The node's seed.
        seed: u32,
    },
}

/// The listeners `desired` asks for. SCTP NodePorts are left to the kernel (no userspace
/// SCTP here); two service ports claiming one NodePort (which the API server prevents)
/// resolve to the first in name order.
pub fn plan(desired: &Desired) -> BTreeMap<Listener, Route> {
    let mut out = BTreeMap::new();
    for family in IpFamily::ALL {
        let rules = desired.family(family);
        for r in rules.service_ports.values() {
            if let Some((listener, route)) = listener(family, r, rules.context.maglev_seed) {
                out.entry(listener).or_insert(route);
            }
        }
    }
    out
}

/// The listener one service port asks for in one family, if any.
pub fn listener(family: IpFamily, r: &ServicePortRules, seed: u32) -> Option<(Listener, Route)> {
    let port = r.node_port?;
    let protocol = r.name.protocol;
    if !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
        return None;
    }
    let endpoints: Vec<SocketAddr> = r.endpoints(r.external_policy()).iter().map(|t| t.addr).collect();
    if endpoints.is_empty() {
        return None;
    }
    let pick = match (r.affinity_timeout, &r.maglev) {
        (Some(secs), _) => Pick::Affinity(Duration::from_secs(secs.into())),
        (None, Some(m)) => Pick::Maglev { table: m.table, seed },
        (None, None) => Pick::Random,
    };
    Some((Listener { family, protocol, port }, Route { name: r.name.clone(), endpoints, pick }))
}

/// The listeners wanted, kept up to date from full states or from changes: O(changes) per
/// partial sync, like the nftables backend's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listeners {
    wanted: BTreeMap<Listener, Route>,
    /// Which listener each service port holds.
    held: HashMap<(IpFamily, ServicePortName), Listener>,
}

impl Listeners {
    /// The listeners wanted.
    pub fn wanted(&self) -> &BTreeMap<Listener, Route> {
        &self.wanted
    }

    /// Replaces everything with what `desired` asks for.
    pub fn full(&mut self, desired: &Desired) {
        self.wanted = plan(desired);
        self.held = self.wanted.iter().map(|(l, r)| ((l.family, r.name.clone()), *l)).collect();
    }

    /// Applies the changes of a partial sync; returns whether any listener or route
    /// changed. A listener stays with the service port that holds it; another port asking
    /// for it (a conflict the API server prevents) gets it at the next full sync, if it is
    /// first in name order.
    pub fn partial(&mut self, changes: &Changes, desired: &Desired) -> bool {
        let mut changed = false;
        for family in IpFamily::ALL {
            let seed = desired.family(family).context.maglev_seed;
            for (name, change) in &changes.family(family).service_ports {
                let key = (family, name.clone());
                let removed = self.held.remove(&key).and_then(|old| Some((old, self.wanted.remove(&old)?)));
                let added = change
                    .new_rules()
                    .and_then(|r| listener(family, r, seed))
                    .filter(|(l, _)| self.wanted.get(l).is_none_or(|r| r.name == *name));
                changed |= removed != added;
                if let Some((listener, route)) = added {
                    self.held.insert(key, listener);
                    self.wanted.insert(listener, route);
                }
            }
        }
        changed
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.wanted.clear();
        self.held.clear();
    }
}
