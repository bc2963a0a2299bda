//! kube-proxy's metrics (`pkg/proxy/metrics/metrics.go`, nftables mode): the same names,
//! types, labels (`ip_family`, `traffic_policy`, `code`), buckets and help texts, plus the
//! process metrics and kproxy's own (`kproxy_*`); and the metrics server's routes:
//! `/metrics`, `/healthz`, `/proxyMode`, `/configz`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

use super::{Handler, not_found, respond};

pub type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;

/// Upstream's sync-latency buckets: 1 ms doubling, 15 of them.
fn exp15() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Upstream's network-programming buckets: 0.25 s, 0.5 s, 1–59 s by 1, 60–115 s by 5,
/// then 120–300 s by 30.
fn network_programming() -> Histogram {
    let buckets = [0.25, 0.5]
        .into_iter()
        .chain((1..=59).map(f64::from))
        .chain((0..12).map(|i| 60.0 + 5.0 * f64::from(i)))
        .chain((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    Histogram::new(buckets)
}

/// The `ip_family` label of a family.
pub fn family(f: proxy_core::IpFamily) -> Labels {
    let name = match f {
        proxy_core::IpFamily::V4 => "IPv4",
        proxy_core::IpFamily::V6 => "IPv6",
    };
    vec![("ip_family".into(), name.into())]
}

/// kube-proxy's metrics (subsystem `kubeproxy`), the process's, and kproxy's own.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histograms,
    pub full_sync_duration: Histograms,
    pub partial_sync_duration: Histograms,
    pub last_sync_timestamp: Gauges,
    pub last_queued_timestamp: Gauges,
    pub network_programming_duration: Histograms,
    pub service_changes: Counter,
    pub service_changes_pending: Gauge,
    pub endpoint_changes: Counter,
    pub endpoint_changes_pending: Gauge,
    pub no_local_endpoints: Family<Labels, Gauge>,
    pub sync_failures: Family<Labels, Counter>,
    pub cleanup_failures: Family<Labels, Counter>,
    pub conntrack_sync_duration: Histograms,
    pub conntrack_deleted: Family<Labels, Counter>,
    pub healthz: Family<Labels, Counter>,
    pub livez: Family<Labels, Counter>,
    pub drift_repairs: Counter,
    pub transaction_bytes: Gauge,
    /// The localhost NodePort relay's counters, set when the daemon starts it.
    pub relay: super::relay_metrics::RelayStats,
}

impl Metrics {
    pub fn new() -> Metrics {
        let hist = || Histograms::new_with_constructor(exp15 as fn() -> Histogram);
        let mut m = Metrics {
            registry: Registry::default(),
            sync_duration: hist(),
            full_sync_duration: hist(),
            partial_sync_duration: hist(),
            last_sync_timestamp: Gauges::default(),
            last_queued_timestamp: Gauges::default(),
            network_programming_duration: Histograms::new_with_constructor(network_programming),
            service_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            no_local_endpoints: Family::default(),
            sync_failures: Family::default(),
            cleanup_failures: Family::default(),
            conntrack_sync_duration: hist(),
            conntrack_deleted: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            drift_repairs: Counter::default(),
            transaction_bytes: Gauge::default(),
            relay: Default::default(),
        };
        let mut registry = Registry::default();
        let kube_proxy = registry.sub_registry_with_prefix("kubeproxy");
        m.register_kube_proxys(kube_proxy);
        kube_proxy.register_collector(Box::new(super::relay_metrics::Upstream(m.relay.clone())));
        let kproxy = registry.sub_registry_with_prefix("kproxy");
        kproxy.register_collector(Box::new(super::relay_metrics::Own(m.relay.clone())));
        kproxy.register(
            "drift_repairs",
            "Full syncs run because someone else changed our tables",
            m.drift_repairs.clone(),
        );
        kproxy.register("transaction_bytes", "Size of the last nftables transaction", m.transaction_bytes.clone());
        kproxy.register_collector(Box::new(BuildInfo));
        registry.register_collector(Box::new(Process));
        // Families with labels print nothing until first used; upstream's labelled
        // series appear after the first sync, as here. The failure counters start at 0
        // for both families, so that a scrape shows them before any failure.
        for f in proxy_core::IpFamily::ALL {
            m.sync_failures.get_or_create(&family(f)).inc_by(0);
            m.cleanup_failures.get_or_create(&family(f)).inc_by(0);
        }
        m.registry = registry;
        m
    }

    /// kube-proxy's families, as `pkg/proxy/metrics` registers them in nftables mode.
    fn register_kube_proxys(&self, k: &mut Registry) {
        let alpha = |help: &str| format!("[ALPHA] {help}");
        k.register(
            "sync_proxy_rules_duration_seconds",
            alpha("SyncProxyRules latency in seconds"),
            self.sync_duration.clone(),
        );
        k.register(
            "sync_full_proxy_rules_duration_seconds",
            alpha("SyncProxyRules latency in seconds for full resyncs"),
            self.full_sync_duration.clone(),
        );
        k.register(
            "sync_partial_proxy_rules_duration_seconds",
            alpha("SyncProxyRules latency in seconds for partial resyncs"),
            self.partial_sync_duration.clone(),
        );
        k.register(
            "sync_proxy_rules_last_timestamp_seconds",
            alpha("The last time proxy rules were successfully synced"),
            self.last_sync_timestamp.clone(),
        );
        k.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            alpha("The last time a sync of proxy rules was queued"),
            self.last_queued_timestamp.clone(),
        );
        k.register(
            "network_programming_duration_seconds",
            alpha("In Cluster Network Programming Latency in seconds"),
            self.network_programming_duration.clone(),
        );
        k.register(
            "sync_proxy_rules_service_changes",
            alpha("Cumulative proxy rules Service changes"),
            self.service_changes.clone(),
        );
        k.register(
            "sync_proxy_rules_service_changes_pending",
            alpha("Pending proxy rules Service changes"),
            self.service_changes_pending.clone(),
        );
        k.register(
            "sync_proxy_rules_endpoint_changes",
            alpha("Cumulative proxy rules Endpoint changes"),
            self.endpoint_changes.clone(),
        );
        k.register(
            "sync_proxy_rules_endpoint_changes_pending",
            alpha("Pending proxy rules Endpoint changes"),
            self.endpoint_changes_pending.clone(),
        );
        k.register(
            "sync_proxy_rules_no_local_endpoints_total",
            alpha("Number of services with a Local traffic policy and no endpoints"),
            self.no_local_endpoints.clone(),
        );
        k.register(
            "sync_proxy_rules_nftables_sync_failures",
            alpha("Cumulative proxy nftables sync failures"),
            self.sync_failures.clone(),
        );
        k.register(
            "sync_proxy_rules_nftables_cleanup_failures",
            alpha("Cumulative proxy nftables cleanup failures"),
            self.cleanup_failures.clone(),
        );
        k.register(
            "conntrack_reconciler_sync_duration_seconds",
            alpha("ReconcileConntrackFlowsLatency latency in seconds"),
            self.conntrack_sync_duration.clone(),
        );
        k.register(
            "conntrack_reconciler_deleted_entries",
            alpha("Cumulative conntrack flows deleted by conntrack reconciler"),
            self.conntrack_deleted.clone(),
        );
        k.register("proxy_healthz", alpha("Cumulative proxy healthz HTTP status"), self.healthz.clone());
        k.register("proxy_livez", alpha("Cumulative proxy livez HTTP status"), self.livez.clone());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!("encoding metrics: {e}");
        }
        out
    }

    /// The metrics server's handler: `/metrics`, `/healthz` (always `ok`, as upstream's),
    /// `/proxyMode` and `/configz`.
    pub fn handler(self: Arc<Self>, mode: String, configz: String) -> Handler {
        Box::new(move |request: tiny_http::Request| {
            let text = "text/plain; charset=utf-8";
            match request.url().split('?').next().unwrap_or_default() {
                "/metrics" => respond(
                    request,
                    200,
                    self.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    &[],
                ),
                "/healthz" | "/healthz/ping" => respond(request, 200, "ok".into(), text, &[]),
                "/proxyMode" => respond(request, 200, mode.clone(), text, &[]),
                "/configz" => respond(request, 200, configz.clone(), "application/json", &[]),
                _ => not_found(request),
            }
        })
    }
}

/// `/configz`'s body: the configuration under kube-proxy's group name.
pub fn configz(file: &crate::config::v1alpha1::KubeProxyConfiguration) -> String {
    serde_json::json!({ "kubeproxy.config.k8s.io": file }).to_string()
}

/// `kproxy_build_info`, as `kubernetes_build_info`.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let labels = [("version", env!("CARGO_PKG_VERSION")), ("compatible", "kube-proxy v1.37")];
        let mut metric = encoder.encode_descriptor("build_info", "kproxy's version", None, MetricType::Gauge)?;
        ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)
    }
}

/// The `process_*` metrics Prometheus' client libraries export, from `/proc/self`.
#[derive(Debug)]
struct Process;

impl Process {
    /// (cpu seconds, virtual bytes, resident bytes, start time) from `/proc/self/stat`.
    fn stat() -> Option<(f64, f64, f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command (which may hold spaces), from field 3 on.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let num = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        use nix::unistd::{SysconfVar, sysconf};
        let var = |v| sysconf(v).ok().flatten().map(|n| n as f64);
        let (ticks, page) = (var(SysconfVar::CLK_TCK)?, var(SysconfVar::PAGE_SIZE)?);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        Some(((num(14)? + num(15)?) / ticks, num(23)?, num(24)? * page, boot + num(22)? / ticks))
    }
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some((cpu, virt, rss, start)) = Process::stat() else { return Ok(()) };
        let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0) as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| l.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok())
            .unwrap_or(0.0);
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(cpu).encode(m)?;
        let gauges = [
            ("process_open_fds", "Number of open file descriptors.", fds),
            ("process_max_fds", "Maximum number of open file descriptors.", max_fds),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", virt),
            ("process_resident_memory_bytes", "Resident memory size in bytes.", rss),
            ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", start),
        ];
        for (name, help, value) in gauges {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_buckets_as_upstreams() {
        let m = Metrics::new();
        let v4 = family(proxy_core::IpFamily::V4);
        m.sync_duration.get_or_create(&v4).observe(0.002);
        m.network_programming_duration.get_or_create(&v4).observe(1.5);
        let mut policy = v4.clone();
        policy.push(("traffic_policy".into(), "external".into()));
        m.no_local_endpoints.get_or_create(&policy).set(1);
        m.endpoint_changes.inc();
        let text = m.render();
        for line in [
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\",ip_family=\"IPv4\"} 1",
            "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds.",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"300.0\",ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 1",
            "# TYPE kubeproxy_sync_proxy_rules_endpoint_changes counter",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_resident_memory_bytes gauge",
            "kproxy_build_info{",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("le=\"32.768\""), "15 buckets, as upstream");
        assert_eq!(text.matches("kubeproxy_network_programming_duration_seconds_bucket").count(), 81, "80 + +Inf");
    }
}
