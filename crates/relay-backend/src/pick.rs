//! Picking a connection's endpoint: a small state machine with the clock and the random
//! source injected, so affinity expiry is tested without sleeping.

use std::net::SocketAddr;
use std::time::Instant;

use proxy_core::maglev;

use crate::plan::{Pick, Route};

/// The endpoint picker of one listener. Replaced routes keep the affinity pin while the
/// pinned endpoint remains (upstream's relay does the same).
#[derive(Debug)]
pub struct Picker {
    route: Route,
    /// The Maglev table's slots (endpoint indexes), built once per route.
    slots: Vec<u32>,
    /// The pinned endpoint and when it was last used (ClientIP affinity).
    pinned: Option<(SocketAddr, Instant)>,
    rng: fastrand::Rng,
}

impl Picker {
    /// A picker for a route, with a random source.
    pub fn new(route: Route, rng: fastrand::Rng) -> Picker {
        let mut p = Picker { route: route.clone(), slots: Vec::new(), pinned: None, rng };
        p.update(route);
        p
    }

    /// The route it picks from.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Takes a new route (endpoints changed, affinity or hashing changed).
    pub fn update(&mut self, route: Route) {
        if std::mem::discriminant(&route.pick) != std::mem::discriminant(&self.route.pick) {
            self.pinned = None;
        }
        self.slots = match route.pick {
            Pick::Maglev { table, .. } => maglev::table(&route.endpoints, table.size),
            _ => Vec::new(),
        };
        self.route = route;
    }

    /// The endpoint for a new connection from `client` at `now`; `None` without endpoints.
    pub fn pick(&mut self, client: SocketAddr, now: Instant) -> Option<SocketAddr> {
        let eps = &self.route.endpoints;
        if eps.is_empty() {
            return None;
        }
        match self.route.pick {
            Pick::Random => Some(eps[self.rng.usize(..eps.len())]),
            Pick::Affinity(timeout) => {
                if let Some((ep, last)) = self.pinned
                    && now.saturating_duration_since(last) <= timeout
                    && eps.contains(&ep)
                {
                    self.pinned = Some((ep, now));
                    return Some(ep);
                }
                let ep = eps[self.rng.usize(..eps.len())];
                self.pinned = Some((ep, now));
                Some(ep)
            }
            Pick::Maglev { table, seed } => {
                let slot = match table.hash {
                    maglev::Hash::Source => maglev::slot(client.ip(), table.size, seed),
                    maglev::Hash::Connection => maglev::connection_slot(client.ip(), client.port(), table.size, seed),
                };
                let i = *self.slots.get(slot as usize)?;
                eps.get(i as usize).copied()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proxy_core::{Protocol, ServicePortName};

    use super::*;

    fn route(eps: &[&str], pick: Pick) -> Route {
        Route {
            name: ServicePortName::new("default", "web", "http", Protocol::Tcp),
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
            pick,
        }
    }

    const CLIENT: &str = "127.0.0.1:40000";

    #[test]
    fn random_picks_spread_over_every_endpoint() {
        let mut p = Picker::new(route(&["10.0.0.1:80", "10.0.0.2:80"], Pick::Random), fastrand::Rng::with_seed(1));
        let now = Instant::now();
        let picks: std::collections::BTreeSet<_> = (0..64).map(|_| p.pick(CLIENT.parse().unwrap(), now)).collect();
        assert_eq!(picks.len(), 2, "{picks:?}");
    }

    #[test]
    fn no_endpoints_no_pick() {
        let mut p = Picker::new(route(&[], Pick::Random), fastrand::Rng::with_seed(1));
        assert_eq!(p.pick(CLIENT.parse().unwrap(), Instant::now()), None);
    }

    #[test]
    fn affinity_pins_until_the_timeout_passes_without_use() {
        let timeout = Duration::from_secs(10);
        let eps: Vec<String> = (1..=16).map(|i| format!("10.0.0.{i}:80")).collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        let mut p = Picker::new(route(&eps, Pick::Affinity(timeout)), fastrand::Rng::with_seed(7));
        let t0 = Instant::now();
        let c = CLIENT.parse().unwrap();
        let first = p.pick(c, t0).unwrap();
        // Each use renews the pin: 9 s apart, 5 times, still the same endpoint.
        for i in 1..=5 {
            assert_eq!(p.pick(c, t0 + Duration::from_secs(9 * i)), Some(first));
        }
        // 11 s idle: a fresh pick (with 16 endpoints and this seed, a different one).
        let later = t0 + Duration::from_secs(45 + 11);
        let second = p.pick(c, later).unwrap();
        assert_ne!(second, first);
        assert_eq!(p.pick(c, later + Duration::from_secs(1)), Some(second));
    }

    #[test]
    fn affinity_moves_when_the_pinned_endpoint_goes() {
        let mut p = Picker::new(
            route(&["10.0.0.1:80", "10.0.0.2:80"], Pick::Affinity(Duration::from_secs(60))),
            fastrand::Rng::with_seed(3),
        );
        let t0 = Instant::now();
        let c = CLIENT.parse().unwrap();
        let first = p.pick(c, t0).unwrap();
        let other = if first.to_string() == "10.0.0.1:80" { "10.0.0.2:80" } else { "10.0.0.1:80" };
        p.update(route(&[other], Pick::Affinity(Duration::from_secs(60))));
        assert_eq!(p.pick(c, t0), Some(other.parse().unwrap()));
    }

    #[test]
    fn maglev_picks_what_the_kernel_table_holds_for_the_client() {
        let table = maglev::Table { size: 251, hash: maglev::Hash::Source };
        let eps = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let mut p = Picker::new(route(&eps, Pick::Maglev { table, seed: 5 }), fastrand::Rng::with_seed(1));
        let addrs: Vec<SocketAddr> = eps.iter().map(|e| e.parse().unwrap()).collect();
        let slots = maglev::table(&addrs, 251);
        let c: SocketAddr = CLIENT.parse().unwrap();
        let want = addrs[slots[maglev::slot(c.ip(), 251, 5) as usize] as usize];
        // Every source port gets the same endpoint under the source hash.
        for port in [1u16, 2, 40000] {
            assert_eq!(p.pick(SocketAddr::new(c.ip(), port), Instant::now()), Some(want));
        }
    }
}
