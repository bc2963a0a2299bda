//! Upstream's validation of a KubeProxyConfiguration (`validation.ValidateKubeProxyConfiguration`),
//! with its field paths (Go struct names, as upstream prints them) and messages, so an
//! operator sees the error kube-proxy would have printed.

use std::fmt;

use super::v1alpha1::KubeProxyConfiguration;

/// One field error, printed as upstream's `field.Error`.
struct FieldError {
    path: String,
    kind: &'static str,
    value: String,
    detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KubeProxyConfiguration.{}: {}: {}: {}", self.path, self.kind, self.value, self.detail)
    }
}

/// All errors of one configuration, printed as upstream's aggregate (`[e1, e2]`).
#[derive(Debug)]
pub struct Errors(Vec<String>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "[{}]", many.join(", ")),
        }
    }
}

struct Check(Vec<String>);

impl Check {
    fn invalid(&mut self, path: &str, value: impl fmt::Display, detail: impl Into<String>) {
        let e =
            FieldError { path: path.into(), kind: "Invalid value", value: value.to_string(), detail: detail.into() };
        self.0.push(e.to_string());
    }

    fn address(&mut self, path: &str, value: &str) {
        let quoted = format!("{value:?}");
        let Some((host, port)) = value.rsplit_once(':') else {
            return self.invalid(path, quoted, "must be IP:port");
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if proxy_core::ip::parse_ip_sloppy(host).is_none() {
            return self.invalid(path, format!("{host:?}"), "must be a valid IP");
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            self.invalid(path, format!("{port:?}"), "must be a valid port");
        }
    }
}

fn bit(c: &mut Check, path: &str, bit: Option<i32>) {
    if let Some(b) = bit.filter(|b| !(0..=31).contains(b)) {
        c.invalid(path, b, "must be within the range [0, 31]");
    }
}

/// Validates a defaulted configuration whose mode is the one that runs.
pub fn validate(f: &KubeProxyConfiguration) -> Result<(), Errors> {
    let mut c = Check(Vec::new());
    bit(&mut c, "KubeProxyIPTablesConfiguration.MasqueradeBit", f.iptables.masquerade_bit);
    if f.mode == "nftables" {
        bit(&mut c, "KubeProxyNFTablesConfiguration.MasqueradeBit", f.nftables.masquerade_bit);
        // kproxy's table marks with bit 14, as upstream's default.
        if let Some(b) = f.nftables.masquerade_bit.filter(|b| (0..=31).contains(b) && *b != 14) {
            c.invalid("KubeProxyNFTablesConfiguration.MasqueradeBit", b, "kproxy uses bit 14 (0x4000)");
        }
    }
    if f.mode == "ipvs" {
        for (i, cidr) in f.ipvs.exclude_cidrs.iter().flatten().enumerate() {
            if proxy_core::ip::parse_cidr_sloppy(cidr).is_none() {
                c.invalid(
                    &format!("KubeProxyIPVSConfiguration.ExcludeCidrs[{i}]"),
                    format!("{cidr:?}"),
                    "must be a valid CIDR",
                );
            }
        }
        if f.feature_gates.get("KubeProxyIPVS") == Some(&false) {
            c.invalid(
                "Mode.ProxyMode",
                "\"ipvs\"",
                "must be iptables, nftables or blank (blank means the best-available proxy [currently iptables])",
            );
        }
    }
    let ct = "KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration";
    for (name, v) in [("MaxPerCore", f.conntrack.max_per_core), ("Min", f.conntrack.min)] {
        if let Some(v) = v.filter(|v| *v < 0) {
            c.invalid(&format!("{ct}.{name}"), v, "must be greater than or equal to 0");
        }
    }
    if let Some(adj) = f.oom_score_adj.filter(|a| !(-1000..=1000).contains(a)) {
        c.invalid("KubeProxyLinuxConfiguration.OOMScoreAdj", adj, "must be within the range [-1000, 1000]");
    }
    if !matches!(f.mode.as_str(), "nftables" | "ipvs") {
        c.invalid(
            "Mode.ProxyMode",
            format!("{:?}", f.mode),
            "must be iptables, ipvs, nftables or blank (blank means the best-available proxy [currently iptables])",
        );
    }
    if f.client_connection.burst < 0 {
        c.invalid("ClientConnection.Burst", f.client_connection.burst, "must be greater than or equal to 0");
    }
    if f.config_sync_period.is_zero() {
        c.invalid("ConfigSyncPeriod", format!("{:?}", f.config_sync_period.to_string()), "must be greater than 0");
    }
    let (sync, min_sync) = f.periods();
    if sync.is_zero() {
        c.invalid("SyncPeriod", format!("{:?}", sync.to_string()), "must be greater than 0");
    }
    if min_sync > sync {
        c.invalid(
            "SyncPeriod",
            format!("{:?}", min_sync.to_string()),
            "must be greater than or equal to KubeProxyConfiguration.MinSyncPeriod",
        );
    }
    if proxy_core::ip::parse_ip_sloppy(&f.bind_address).is_none() {
        c.invalid(
            "BindAddress",
            format!("{:?}", f.bind_address),
            "not a valid textual representation of an IP address",
        );
    }
    if !f.healthz_bind_address.is_empty() {
        c.address("HealthzBindAddress", &f.healthz_bind_address);
    }
    c.address("MetricsBindAddress", &f.metrics_bind_address);
    node_port_addresses(&mut c, f.node_port_addresses.as_deref().unwrap_or_default());
    detect_local(&mut c, f);
    if !f.show_hidden_metrics_for_version.is_empty() && f.show_hidden_metrics_for_version != "1.36" {
        let v = format!("{:?}", f.show_hidden_metrics_for_version);
        c.invalid(
            "ShowHiddenMetricsForVersion",
            &v,
            format!("invalid showHiddenMetricsForVersion: showHiddenMetricsForVersion: Invalid value: {v}: must be omitted or have the value '1.36'; only the previous minor version is allowed"),
        );
    }
    if !matches!(f.logging.format.as_str(), "text" | "json") {
        c.invalid("logging.format", format!("{:?}", f.logging.format), "Unsupported log format");
    }
    if c.0.is_empty() { Ok(()) } else { Err(Errors(c.0)) }
}

fn node_port_addresses(c: &mut Check, values: &[String]) {
    let mut seen = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let path = format!("NodePortAddresses[{i}]");
        match v.as_str() {
            "primary" | "localhost" | "all" => {
                if seen.contains(v) {
                    c.0.push(format!("KubeProxyConfiguration.{path}: Duplicate value: {v:?}"));
                }
                seen.push(v.clone());
            }
            cidr if proxy_core::ip::parse_cidr_sloppy(cidr).is_some() && cidr.contains('/') => {}
            _ => c.invalid(
                &path,
                format!("{v:?}"),
                "must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'",
            ),
        }
    }
}

fn detect_local(c: &mut Check, f: &KubeProxyConfiguration) {
    match f.detect_local_mode.as_str() {
        "ClusterCIDR" => {
            let cidrs: Vec<&str> = f.cluster_cidr.split(',').filter(|s| !s.is_empty()).collect();
            let nets: Vec<_> = cidrs.iter().map(|s| proxy_core::ip::parse_cidr_sloppy(s)).collect();
            for (i, (s, net)) in cidrs.iter().zip(&nets).enumerate() {
                if net.is_none() {
                    c.invalid(
                        &format!("DetectLocalConfiguration.ClusterCIDRs[{i}]"),
                        format!("{s:?}"),
                        "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)",
                    );
                }
            }
            let same_family = matches!(nets.as_slice(), [Some(a), Some(b)] if a.addr().is_ipv4() == b.addr().is_ipv4());
            if cidrs.len() > 2 || same_family {
                c.invalid(
                    "DetectLocalConfiguration.ClusterCIDRs",
                    format!("{cidrs:?}"),
                    "must be a either a single CIDR or dual-stack pair of CIDRs (e.g. [10.100.0.0/16, fde4:8dba:82e1::/48]",
                );
            }
        }
        "NodeCIDR" => {}
        "BridgeInterface" if f.detect_local.bridge_interface.is_empty() => {
            c.invalid("DetectLocalConfiguration.InterfaceName", "\"\"", "must not be empty");
        }
        "InterfaceNamePrefix" if f.detect_local.interface_name_prefix.is_empty() => {
            c.invalid("DetectLocalConfiguration.InterfacePrefix", "\"\"", "must not be empty");
        }
        "BridgeInterface" | "InterfaceNamePrefix" => {}
        other => c.0.push(format!(
            "KubeProxyConfiguration.DetectLocalMode: Unsupported value: {other:?}: supported values: \"ClusterCIDR\", \"NodeCIDR\", \"BridgeInterface\", \"InterfaceNamePrefix\", \"\""
        )),
    }
}
