//! The localhost NodePort relay's metrics, read from its counters at scrape time (the
//! relay binds in the background, after the sync that asked for a listener returns):
//! upstream's `kubeproxy_nftables_localhost_nodeport_listeners` and
//! `…_listener_creation_failures_total` (label `ip_family`), and kproxy's
//! `kproxy_localhost_nodeport_refused_total` (connections and UDP sessions over a cap).

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use proxy_core::IpFamily;
use relay_backend::Stats;

/// Where the relay's counters will be, once the daemon starts it.
pub type RelayStats = Arc<OnceLock<Arc<Stats>>>;

/// Upstream's two families (subsystem `kubeproxy`): nothing is printed until the relay runs.
#[derive(Debug)]
pub struct Upstream(pub RelayStats);

/// kproxy's own.
#[derive(Debug)]
pub struct Own(pub RelayStats);

fn family(f: IpFamily) -> [(&'static str, &'static str); 1] {
    [("ip_family", if f == IpFamily::V4 { "IPv4" } else { "IPv6" })]
}

impl Collector for Upstream {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(stats) = self.0.get() else { return Ok(()) };
        let mut m = encoder.encode_descriptor(
            "nftables_localhost_nodeport_listeners",
            "[ALPHA] Number of active localhost NodePort userspace proxy listeners.",
            None,
            MetricType::Gauge,
        )?;
        for f in IpFamily::ALL {
            ConstGauge::new(stats.listeners(f) as i64).encode(m.encode_family(&family(f))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "nftables_localhost_nodeport_listener_creation_failures",
            "[ALPHA] Number of localhost NodePort userspace proxy listener creation failures.",
            None,
            MetricType::Counter,
        )?;
        for f in IpFamily::ALL {
            ConstCounter::new(stats.bind_failures(f)).encode(m.encode_family(&family(f))?)?;
        }
        Ok(())
    }
}

impl Collector for Own {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(stats) = self.0.get() else { return Ok(()) };
        let m = encoder.encode_descriptor(
            "localhost_nodeport_refused",
            "Connections and UDP sessions to localhost NodePorts refused because a cap was reached",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.refused.load(std::sync::atomic::Ordering::Relaxed)).encode(m)
    }
}
