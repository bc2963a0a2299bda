//! The daemon's HTTP endpoints: `/healthz` and `/livez` (kube-proxy's health server) and
//! Prometheus `/metrics` with kube-proxy's metric names.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::syncloop::Freshness;

type Labels = Vec<(String, String)>;

/// kube-proxy's metrics (subsystem `kubeproxy`) plus kproxy's own.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub full_sync_duration: Histogram,
    pub partial_sync_duration: Histogram,
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    pub last_queued_timestamp: Gauge<f64, AtomicU64>,
    pub network_programming_duration: Histogram,
    pub service_changes: Counter,
    pub endpoint_changes: Counter,
    pub no_local_endpoints: Family<Labels, Gauge>,
    pub sync_failures: Counter,
    pub conntrack_deleted: Counter,
    pub healthz: Family<Labels, Counter>,
    pub livez: Family<Labels, Counter>,
    pub drift_repairs: Counter,
    pub transaction_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kubeproxy");
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let m = Metrics {
            sync_duration: seconds(),
            full_sync_duration: seconds(),
            partial_sync_duration: seconds(),
            last_sync_timestamp: Gauge::default(),
            last_queued_timestamp: Gauge::default(),
            network_programming_duration: Histogram::new(exponential_buckets(0.25, 2.0, 11)),
            service_changes: Counter::default(),
            endpoint_changes: Counter::default(),
            no_local_endpoints: Family::default(),
            sync_failures: Counter::default(),
            conntrack_deleted: Counter::default(),
            healthz: Family::default(),
            livez: Family::default(),
            drift_repairs: Counter::default(),
            transaction_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("sync_proxy_rules_duration_seconds", "Sync latency", m.sync_duration.clone());
        registry.register("sync_full_proxy_rules_duration_seconds", "Full sync latency", m.full_sync_duration.clone());
        registry.register(
            "sync_partial_proxy_rules_duration_seconds",
            "Partial sync latency",
            m.partial_sync_duration.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time rules were synced",
            m.last_sync_timestamp.clone(),
        );
        registry.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync was queued",
            m.last_queued_timestamp.clone(),
        );
        registry.register(
            "network_programming_duration_seconds",
            "From an EndpointSlice change to its rules in the kernel",
            m.network_programming_duration.clone(),
        );
        registry.register("sync_proxy_rules_service_changes", "Service changes", m.service_changes.clone());
        registry.register("sync_proxy_rules_endpoint_changes", "EndpointSlice changes", m.endpoint_changes.clone());
        registry.register(
            "sync_proxy_rules_no_local_endpoints",
            "Services with a Local traffic policy and no local endpoints",
            m.no_local_endpoints.clone(),
        );
        registry.register(
            "sync_proxy_rules_nftables_sync_failures",
            "Failed nftables transactions",
            m.sync_failures.clone(),
        );
        registry.register(
            "conntrack_reconciler_deleted_entries",
            "Stale UDP conntrack entries deleted",
            m.conntrack_deleted.clone(),
        );
        registry.register("proxy_healthz", "/healthz responses by code", m.healthz.clone());
        registry.register("proxy_livez", "/livez responses by code", m.livez.clone());
        let kproxy = registry.sub_registry_with_prefix("kproxy");
        kproxy.register(
            "drift_repairs",
            "Full syncs run because someone else changed our tables",
            m.drift_repairs.clone(),
        );
        kproxy.register("transaction_bytes", "Size of the last nftables transaction", m.transaction_bytes.clone());
        Metrics { registry, ..m }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!("encoding metrics: {e}");
        }
        out
    }
}

/// The state `/healthz` reports, as kube-proxy's proxier health server keeps it: the sync
/// loop's [`Freshness`], published after every change to it, and the node's eligibility.
#[derive(Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    freshness: Freshness,
    node_eligible: bool,
}

impl Health {
    /// Publishes the sync loop's view.
    pub fn publish(&self, freshness: Freshness) {
        self.state.lock().unwrap().freshness = freshness;
    }

    /// Whether the node may receive traffic (not being deleted).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.state.lock().unwrap().node_eligible = eligible;
    }

    /// (status code, JSON body) for `/healthz` (`check_node`) or `/livez`.
    fn report(&self, timeout: Duration, check_node: bool) -> (u16, String) {
        let s = self.state.lock().unwrap();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let healthy = s.freshness.healthy(now, timeout) && (!check_node || s.node_eligible);
        let rfc3339 = |t: SystemTime| {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            k8s_openapi::jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
        };
        let last =
            s.freshness.last_synced.map(|at| rfc3339(wall - now.saturating_duration_since(at))).unwrap_or_default();
        let mut body = format!(r#"{{"lastUpdated": "{last}","currentTime": "{}""#, rfc3339(wall));
        if check_node {
            body.push_str(&format!(r#","nodeEligible": {}"#, s.node_eligible));
        }
        body.push('}');
        (if healthy { 200 } else { 503 }, body)
    }
}

fn respond(request: tiny_http::Request, code: u16, body: String, content_type: &str) {
    let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("static header");
    let response = tiny_http::Response::from_string(body).with_status_code(code).with_header(header);
    let _ = request.respond(response);
}

/// Serves `/healthz` and `/livez` on `addr`.
pub fn health_server(addr: &str, health: Arc<Health>, metrics: Arc<Metrics>, timeout: Duration) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("--healthz-bind-address {addr}: {e}"))?;
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or_default().to_string();
            let (check_node, counter) = match path.as_str() {
                "/healthz" => (true, &metrics.healthz),
                "/livez" => (false, &metrics.livez),
                _ => {
                    respond(request, 404, "404 page not found\n".into(), "text/plain");
                    continue;
                }
            };
            let (code, body) = health.report(timeout, check_node);
            counter.get_or_create(&vec![("code".to_string(), code.to_string())]).inc();
            respond(request, code, body, "application/json");
        }
    });
    Ok(())
}

/// Serves Prometheus `/metrics` on `addr`.
pub fn metrics_server(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("--metrics-bind-address {addr}: {e}"))?;
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            if request.url().starts_with("/metrics") {
                respond(request, 200, metrics.render(), "application/openmetrics-text; version=1.0.0; charset=utf-8");
            } else {
                respond(request, 404, "404 page not found\n".into(), "text/plain");
            }
        }
    });
    Ok(())
}

/// One HealthCheckNodePort server per Service with `externalTrafficPolicy: Local`: load
/// balancers ask it whether this node has local endpoints (kube-proxy's service health
/// server). 200 with local endpoints, 503 without, and upstream's JSON body.
#[derive(Default)]
pub struct ServiceHealth {
    servers: std::collections::HashMap<proxy_core::ObjectRef, ServiceHealthServer>,
}

struct ServiceHealthServer {
    port: u16,
    local_endpoints: Arc<AtomicU64>,
    listeners: Vec<Arc<tiny_http::Server>>,
}

impl Drop for ServiceHealthServer {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.unblock();
        }
    }
}

impl ServiceHealth {
    /// Brings the servers in line with `checks` (Service → (port, local ready endpoints)),
    /// listening on `addrs` (empty: every address).
    pub fn sync(
        &mut self,
        checks: &std::collections::BTreeMap<proxy_core::ObjectRef, (u16, usize)>,
        addrs: &[std::net::IpAddr],
    ) {
        use std::sync::atomic::Ordering;
        self.servers.retain(|svc, server| checks.get(svc).is_some_and(|(port, _)| *port == server.port));
        for (svc, (port, count)) in checks {
            if let Some(server) = self.servers.get(svc) {
                server.local_endpoints.store(*count as u64, Ordering::Relaxed);
                continue;
            }
            let local_endpoints = Arc::new(AtomicU64::new(*count as u64));
            let binds: Vec<String> = if addrs.is_empty() {
                vec![format!("0.0.0.0:{port}")]
            } else {
                addrs.iter().map(|ip| std::net::SocketAddr::new(*ip, *port).to_string()).collect()
            };
            let mut listeners = Vec::new();
            for bind in binds {
                match tiny_http::Server::http(&bind) {
                    Ok(server) => {
                        let server = Arc::new(server);
                        let (svc, count, s) = (svc.clone(), local_endpoints.clone(), server.clone());
                        std::thread::spawn(move || {
                            for request in s.incoming_requests() {
                                let n = count.load(Ordering::Relaxed);
                                let body = format!(
                                    r#"{{"service": {{"namespace": "{}","name": "{}"}},"localEndpoints": {n},"serviceProxyHealthy": true}}"#,
                                    svc.namespace, svc.name
                                );
                                respond(request, if n > 0 { 200 } else { 503 }, body, "application/json");
                            }
                        });
                        listeners.push(server);
                    }
                    Err(e) => warn!(service = %svc, "FailedToStartServiceHealthcheck: listening on {bind}: {e}"),
                }
            }
            // With no listener (the port still held by a Service just removed, say), try
            // again at the next sync.
            if !listeners.is_empty() {
                self.servers.insert(svc.clone(), ServiceHealthServer { port: *port, local_endpoints, listeners });
            }
        }
    }
}
