//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`): the file kube-proxy's
//! `--config` reads, with upstream's defaulting (`SetDefaults_KubeProxyConfiguration`).
//!
//! Every field upstream has is here, so a file kubeadm or `kube-proxy --write-config-to`
//! wrote round-trips, and `/configz` and `--write-config-to` print the same shape. Fields
//! where upstream tells "unset" from zero (`oomScoreAdj`, `conntrack.maxPerCore`, …) are
//! `Option`s; durations are Go duration strings ([`GoDuration`]).
//!
//! Decoding is lenient about unknown fields, as upstream's (which retries a failed strict
//! decode leniently and logs it): they are returned so the caller can warn.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::{format_go, parse_go};

/// The only apiVersion upstream registers.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The only kind.
pub const KIND: &str = "KubeProxyConfiguration";

/// A Go `time.Duration` as a config file writes it: `30s`, `1h0m0s`, `0s`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_go(self.0))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_go(self.0))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoDuration, D::Error> {
        // metav1.Duration is a string; logging.flushFrequency may also be nanoseconds.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Nanos(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => parse_go(&s).map(GoDuration).map_err(serde::de::Error::custom),
            Raw::Nanos(n) => Ok(GoDuration(Duration::from_nanos(n))),
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeProxyConfiguration {
    pub kind: String,
    pub api_version: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_gates: BTreeMap<String, bool>,
    pub client_connection: ClientConnection,
    pub logging: Logging,
    pub hostname_override: String,
    pub bind_address: String,
    pub healthz_bind_address: String,
    pub metrics_bind_address: String,
    pub bind_address_hard_fail: bool,
    pub enable_profiling: bool,
    pub show_hidden_metrics_for_version: String,
    pub mode: String,
    pub iptables: IpTables,
    pub ipvs: Ipvs,
    pub nftables: NfTables,
    pub winkernel: WinKernel,
    pub detect_local_mode: String,
    pub detect_local: DetectLocal,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Conntrack,
    pub config_sync_period: GoDuration,
    pub port_range: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub windows_run_as_service: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientConnection {
    pub kubeconfig: String,
    pub accept_content_types: String,
    pub content_type: String,
    pub qps: f32,
    pub burst: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Logging {
    pub format: String,
    pub flush_frequency: GoDuration,
    pub verbosity: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vmodule: Vec<serde_yaml_ng::Value>,
    pub options: serde_yaml_ng::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IpTables {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: bool,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Ipvs {
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
    pub scheduler: String,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    pub tcp_timeout: GoDuration,
    pub tcp_fin_timeout: GoDuration,
    pub udp_timeout: GoDuration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NfTables {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: bool,
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WinKernel {
    pub network_name: String,
    pub source_vip: String,
    #[serde(rename = "enableDSR")]
    pub enable_dsr: bool,
    pub root_hns_endpoint_name: String,
    pub forward_health_check_vip: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DetectLocal {
    pub bridge_interface: String,
    pub interface_name_prefix: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Conntrack {
    pub max_per_core: Option<i32>,
    pub min: Option<i32>,
    pub tcp_established_timeout: Option<GoDuration>,
    pub tcp_close_wait_timeout: Option<GoDuration>,
    pub tcp_be_liberal: bool,
    pub udp_timeout: GoDuration,
    pub udp_stream_timeout: GoDuration,
}

/// A decoded file and what in it was not understood.
pub struct Decoded {
    pub config: KubeProxyConfiguration,
    /// Paths of unknown fields (`nftables.bogus`), which upstream ignores after logging.
    pub unknown_fields: Vec<String>,
}

/// Why a file could not be decoded, in upstream's words where it has some.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Syntax(String),
    #[error(
        "no kind {kind:?} is registered for version {version:?} (kproxy reads kind KubeProxyConfiguration, apiVersion {API_VERSION})"
    )]
    Unregistered { kind: String, version: String },
}

/// Decodes a file (YAML or JSON) and applies upstream's defaults. A file without `kind`
/// or `apiVersion` is read as a KubeProxyConfiguration (upstream refuses it; kproxy has
/// always read such files, and `sync` keeps that contract).
pub fn decode(text: &str) -> Result<Decoded, DecodeError> {
    let mut unknown_fields = Vec::new();
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let mut config: KubeProxyConfiguration = if text.trim().is_empty() {
        KubeProxyConfiguration::default()
    } else {
        serde_ignored::deserialize(deserializer, |path| unknown_fields.push(path.to_string()))
            .map_err(|e| DecodeError::Syntax(e.to_string()))?
    };
    let kind_ok = config.kind.is_empty() || config.kind == KIND;
    let version_ok = config.api_version.is_empty() || config.api_version == API_VERSION;
    if !kind_ok || !version_ok {
        return Err(DecodeError::Unregistered { kind: config.kind, version: config.api_version });
    }
    config.set_defaults();
    Ok(Decoded { config, unknown_fields })
}

impl KubeProxyConfiguration {
    /// Upstream's `SetDefaults_KubeProxyConfiguration`: zero values become defaults.
    pub fn set_defaults(&mut self) {
        self.kind = KIND.into();
        self.api_version = API_VERSION.into();
        if self.bind_address.is_empty() {
            self.bind_address = "0.0.0.0".into();
        }
        // IPv6 defaults when bindAddress is not IPv4 (upstream's getDefaultAddresses).
        let v4 = proxy_core::ip::parse_ip_sloppy(&self.bind_address).is_some_and(|ip| ip.is_ipv4());
        let (healthz, metrics) = if v4 { ("0.0.0.0", "127.0.0.1") } else { ("[::]", "[::1]") };
        self.healthz_bind_address = with_port(&self.healthz_bind_address, healthz, 10256);
        self.metrics_bind_address = with_port(&self.metrics_bind_address, metrics, 10249);
        self.oom_score_adj.get_or_insert(-999);
        let or = |d: &mut GoDuration, v: Duration| {
            if d.is_zero() {
                *d = GoDuration(v);
            }
        };
        or(&mut self.iptables.sync_period, Duration::from_secs(30));
        or(&mut self.iptables.min_sync_period, Duration::from_secs(1));
        self.iptables.localhost_node_ports.get_or_insert(true);
        self.iptables.masquerade_bit.get_or_insert(14);
        or(&mut self.ipvs.sync_period, Duration::from_secs(30));
        or(&mut self.nftables.sync_period, Duration::from_secs(30));
        or(&mut self.nftables.min_sync_period, Duration::from_secs(1));
        self.nftables.masquerade_bit.get_or_insert(14);
        self.conntrack.max_per_core.get_or_insert(32768);
        self.conntrack.min.get_or_insert(131072);
        self.conntrack.tcp_established_timeout.get_or_insert(GoDuration(Duration::from_secs(24 * 3600)));
        self.conntrack.tcp_close_wait_timeout.get_or_insert(GoDuration(Duration::from_secs(3600)));
        or(&mut self.config_sync_period, Duration::from_secs(15 * 60));
        let c = &mut self.client_connection;
        if c.content_type.is_empty() {
            c.content_type = "application/vnd.kubernetes.protobuf".into();
        }
        if c.qps == 0.0 {
            c.qps = 5.0;
        }
        if c.burst == 0 {
            c.burst = 10;
        }
        if self.logging.format.is_empty() {
            self.logging.format = "text".into();
        }
        or(&mut self.logging.flush_frequency, Duration::from_secs(5));
        if self.logging.options.is_null() {
            self.logging.options =
                serde_yaml_ng::from_str("{text: {infoBufferSize: \"0\"}, json: {infoBufferSize: \"0\"}}")
                    .unwrap_or_default();
        }
    }

    /// The sync periods of the mode that will run (upstream's conversion reads the
    /// mode's own section: ipvs, nftables, else iptables).
    pub fn periods(&self) -> (GoDuration, GoDuration) {
        match self.mode.as_str() {
            "ipvs" => (self.ipvs.sync_period, self.ipvs.min_sync_period),
            "nftables" => (self.nftables.sync_period, self.nftables.min_sync_period),
            _ => (self.iptables.sync_period, self.iptables.min_sync_period),
        }
    }

    /// `masqueradeAll` of the mode that will run (nftables' section in nftables mode,
    /// iptables' otherwise, as upstream's conversion).
    pub fn masquerade_all(&self) -> bool {
        if self.mode == "nftables" { self.nftables.masquerade_all } else { self.iptables.masquerade_all }
    }

    /// Sets the sync periods in the active mode's section only, as upstream's conversion
    /// back to v1alpha1 does (the other sections show `0s`).
    pub fn set_periods(&mut self, sync: GoDuration, min_sync: GoDuration) {
        let zero = GoDuration::default();
        for (s, m) in [
            (&mut self.iptables.sync_period, &mut self.iptables.min_sync_period),
            (&mut self.ipvs.sync_period, &mut self.ipvs.min_sync_period),
            (&mut self.nftables.sync_period, &mut self.nftables.min_sync_period),
        ] {
            (*s, *m) = (zero, zero);
        }
        let (s, m) = match self.mode.as_str() {
            "ipvs" => (&mut self.ipvs.sync_period, &mut self.ipvs.min_sync_period),
            "nftables" => (&mut self.nftables.sync_period, &mut self.nftables.min_sync_period),
            _ => (&mut self.iptables.sync_period, &mut self.iptables.min_sync_period),
        };
        (*s, *m) = (sync, min_sync);
    }

    /// The YAML `--write-config-to` writes.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

/// Upstream's defaulting of a bind address: empty → the default, a bare IP → with the
/// default port, anything else unchanged (validation reports it).
fn with_port(value: &str, default_ip: &str, port: u16) -> String {
    if value.is_empty() {
        return format!("{default_ip}:{port}");
    }
    match proxy_core::ip::parse_ip_sloppy(value) {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Some(std::net::IpAddr::V4(ip)) => format!("{ip}:{port}"),
        None => value.to_string(),
    }
}

#[cfg(test)]
#[path = "v1alpha1_tests.rs"]
pub(super) mod tests;
