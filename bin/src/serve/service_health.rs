//! HealthCheckNodePorts: one server per Service with `externalTrafficPolicy: Local`, which
//! load balancers ask whether this node has local endpoints (kube-proxy's service health
//! server, `pkg/proxy/healthcheck/service_health.go`).
//!
//! As upstream: per family, listeners on the NodePort addresses (the family's wildcard
//! when NodePorts match every address); any path and method; 200 only with local
//! endpoints *and* a healthy proxy; upstream's tab-indented body and its
//! `X-Load-Balancing-Endpoint-Weight` header.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proxy_core::{IpFamily, NodeContext, NodePortIps, ObjectRef};
use tracing::warn;

use super::health::Health;
use super::respond;

/// The servers, by Service.
pub struct ServiceHealth {
    servers: HashMap<ObjectRef, Server>,
    proxy: Arc<Health>,
    timeout: Duration,
}

struct Server {
    port: u16,
    addrs: Vec<IpAddr>,
    local_endpoints: Arc<AtomicU64>,
    listeners: Vec<Arc<tiny_http::Server>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.unblock();
        }
    }
}

/// Where HealthCheckNodePorts listen: each family's NodePort addresses, or its wildcard.
pub fn addresses(node: &NodeContext) -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    for family in IpFamily::ALL {
        match node.family(family).nodeport_ips {
            NodePortIps::All => addrs.push(match family {
                IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            }),
            NodePortIps::Only(ips) => addrs.extend(ips),
        }
    }
    addrs
}

/// Upstream's body, tab-indented, without a trailing newline.
fn body(svc: &ObjectRef, count: u64, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        svc.namespace, svc.name
    )
}

impl ServiceHealth {
    /// No servers yet; `proxy` is the proxier's health, stale after `timeout`.
    pub fn new(proxy: Arc<Health>, timeout: Duration) -> ServiceHealth {
        ServiceHealth { servers: HashMap::new(), proxy, timeout }
    }

    /// Brings the servers in line with `checks` (Service → (port, local ready endpoints)),
    /// listening on `addrs`.
    pub fn sync(&mut self, checks: &BTreeMap<ObjectRef, (u16, usize)>, addrs: &[IpAddr]) {
        self.servers
            .retain(|svc, s| checks.get(svc).is_some_and(|(port, _)| *port == s.port) && s.addrs.as_slice() == addrs);
        for (svc, (port, count)) in checks {
            if let Some(server) = self.servers.get(svc) {
                server.local_endpoints.store(*count as u64, Ordering::Relaxed);
                continue;
            }
            let local_endpoints = Arc::new(AtomicU64::new(*count as u64));
            let mut listeners = Vec::new();
            for ip in addrs {
                let addr = SocketAddr::new(*ip, *port);
                // One family per socket: the IPv6 wildcard must not take IPv4 too.
                let listener = super::listen(addr, addr.is_ipv6())
                    .map_err(|e| e.to_string())
                    .and_then(|l| tiny_http::Server::from_listener(l, None).map_err(|e| e.to_string()));
                match listener {
                    Ok(server) => listeners.push(self.start(Arc::new(server), svc.clone(), local_endpoints.clone())),
                    Err(e) => warn!(service = %svc, "FailedToStartServiceHealthcheck: listening on {addr}: {e}"),
                }
            }
            // With no listener (the port still held by a Service just removed, say), try
            // again at the next sync.
            if !listeners.is_empty() {
                let server = Server { port: *port, addrs: addrs.to_vec(), local_endpoints, listeners };
                self.servers.insert(svc.clone(), server);
            }
        }
    }

    fn start(&self, server: Arc<tiny_http::Server>, svc: ObjectRef, count: Arc<AtomicU64>) -> Arc<tiny_http::Server> {
        let (s, proxy, timeout) = (server.clone(), self.proxy.clone(), self.timeout);
        std::thread::spawn(move || {
            for request in s.incoming_requests() {
                let n = count.load(Ordering::Relaxed);
                let healthy = proxy.healthy(timeout);
                let code = if n > 0 && healthy { 200 } else { 503 };
                let weight = [("X-Load-Balancing-Endpoint-Weight", n.to_string())];
                respond(request, code, body(&svc, n, healthy), "application/json", &weight);
            }
        });
        server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_upstreams() {
        let text = body(&ObjectRef::new("ns", "web"), 2, true);
        assert_eq!(
            text,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["localEndpoints"], 2);
    }
}
