//! kube-proxy's configuration: its flags ([`flags`]) and its `--config` file
//! ([`v1alpha1`]), combined as kube-proxy v1.37 combines them, defaulted and validated as
//! upstream ([`validate`]), into the effective [`Config`]. This is the one place where
//! flags and file meet.
//!
//! Precedence, as upstream's `Options.Complete`: without `--config`, the flags fill a
//! defaulted configuration; with it, the file is the configuration and only the logging
//! flags, `--hostname-override` and `--master` still apply. kproxy warns about every
//! other flag given beside `--config` (upstream ignores them silently).

pub mod duration;
mod feature_gates;
pub mod flags;
pub mod v1alpha1;
mod validate;
pub mod watch;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

pub use flags::ProxyFlags;
use v1alpha1::{GoDuration, KubeProxyConfiguration};

/// How pod traffic is recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectLocal {
    /// By `--cluster-cidr`.
    ClusterCidr,
    /// By the Node's `spec.podCIDRs`.
    NodeCidr,
    /// By arrival on this bridge.
    BridgeInterface(String),
    /// By arrival on interfaces with this prefix.
    InterfaceNamePrefix(String),
}

/// `--nodeport-addresses`, keywords kept apart: they expand against the node's addresses,
/// which are known only later (see `node::context`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePortAddresses {
    /// `primary`: the node's IP of each family (not when it fell back to loopback).
    pub primary: bool,
    /// `localhost`: 127.0.0.0/8 and ::1/128.
    pub localhost: bool,
    /// `all`, and the CIDRs given.
    pub cidrs: Vec<IpNet>,
}

impl NodePortAddresses {
    /// Parses the list as upstream's validation reads it.
    fn parse(values: &[String]) -> NodePortAddresses {
        let mut out = NodePortAddresses::default();
        for v in values {
            match v.as_str() {
                "primary" => out.primary = true,
                "localhost" => out.localhost = true,
                "all" => out.cidrs.extend(["0.0.0.0/0", "::/0"].map(|c| c.parse::<IpNet>().expect("static CIDR"))),
                cidr => out.cidrs.extend(proxy_core::ip::parse_cidr_sloppy(cidr)),
            }
        }
        out
    }

    /// The CIDRs, with the keywords expanded against the node's IPs (`primary` takes
    /// those that are not loopback). An empty list means "every address" to the backend.
    pub fn expand(&self, node_ips: &[IpAddr]) -> Vec<IpNet> {
        let mut out = Vec::new();
        if self.primary {
            out.extend(node_ips.iter().filter(|ip| !ip.is_loopback()).map(|ip| IpNet::from(*ip)));
        }
        if self.localhost {
            out.extend(["127.0.0.0/8", "::1/128"].map(|c| c.parse::<IpNet>().expect("static CIDR")));
        }
        out.extend(self.cidrs.iter().copied());
        out
    }
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The configuration as kube-proxy would report it (`/configz`, `--write-config-to`).
    pub file: KubeProxyConfiguration,
    /// `--config`, watched by the daemon (kube-proxy exits when it changes).
    pub config_path: Option<PathBuf>,
    pub hostname_override: Option<String>,
    /// `bindAddress` when it is not unspecified: the node's primary IP.
    pub bind_address: Option<IpAddr>,
    pub cluster_cidrs: Vec<IpNet>,
    pub nodeport: NodePortAddresses,
    pub masquerade_all: bool,
    pub detect_local: DetectLocal,
    /// `nftables` or `ipvs`: the mode that runs.
    pub proxy_mode: String,
    pub table: String,
    /// kproxy's Maglev settings (`--load-balancing`, `--maglev-*`).
    pub maglev: proxy_core::MaglevSettings,
    /// The IPVS scheduler (`--ipvs-scheduler`, `ipvs.scheduler`).
    pub ipvs_scheduler: String,
    /// Set `net.ipv4.conf.all.arp_ignore=1` and `arp_announce=2` in IPVS mode
    /// (`--ipvs-strict-arp`, `ipvs.strictARP`).
    pub ipvs_strict_arp: bool,
    /// How often the daemon runs a periodic sync.
    pub sync_period: Duration,
    /// The shortest time between two syncs.
    pub min_sync_period: Duration,
    /// Where `/healthz` and `/livez` are served; `None` disables them.
    pub healthz_bind_address: Option<String>,
    /// Where `/metrics` is served.
    pub metrics_bind_address: String,
    /// Whether a health or metrics port that cannot be bound is fatal.
    pub bind_address_hard_fail: bool,
    /// The kubeconfig (`--kubeconfig`, `clientConnection.kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// `--master`.
    pub master: Option<String>,
    /// The conntrack sysctls the daemon sets.
    pub conntrack: crate::sysctls::Conntrack,
    /// The process's `oom_score_adj`.
    pub oom_score_adj: i32,
    /// Log verbosity and format.
    pub verbosity: u32,
    pub logging_format: String,
    /// Warnings to log once logging is set up.
    pub warnings: Vec<String>,
}

impl ProxyFlags {
    /// The effective configuration.
    pub fn resolve(&self) -> Result<Config> {
        let mut warnings = Vec::new();
        let mut file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let decoded =
                    v1alpha1::decode(&text).with_context(|| format!("invalid config file {}", path.display()))?;
                for field in decoded.unknown_fields {
                    warnings.push(format!("{}: unknown field {field:?} ignored", path.display()));
                }
                let mut file = decoded.config;
                self.apply_logging(&mut file);
                warnings.extend(self.ignored_beside_config().into_iter().map(|flag| {
                    format!("--{flag} is ignored because --config is given (as kube-proxy does); set it in the file")
                }));
                file
            }
            None => {
                let mut file = KubeProxyConfiguration::default();
                file.set_defaults();
                self.apply_flags(&mut file)?;
                warnings.extend(self.without_effect(&file.mode).into_iter().map(|(flag, why)| {
                    format!("--{flag} has no effect in kproxy: {why} (see docs/kube-proxy-compatibility.md)")
                }));
                file
            }
        };
        if let Some(name) = &self.hostname_override {
            let name = name.trim().to_lowercase();
            anyhow::ensure!(!name.is_empty(), "empty hostname-override is invalid");
            file.hostname_override = name;
        }
        feature_gates::check(&file.feature_gates, &mut warnings).map_err(|e| match &self.config {
            Some(path) => e.context(format!("invalid featureGates in {}", path.display())),
            None => e.context("invalid --feature-gates"),
        })?;
        // kproxy's own default needs no warning: only a mode someone wrote down (a file, or
        // --proxy-mode) that kproxy runs as nftables is worth one.
        let written = self.config.is_some() || self.proxy_mode.is_some();
        let mode = platform_defaults(&mut file, written.then_some(&mut warnings));
        validate::validate(&file).map_err(|errors| match &self.config {
            Some(path) => anyhow::anyhow!("invalid configuration in {}: {errors}", path.display()),
            None => anyhow::anyhow!("invalid configuration: {errors}"),
        })?;
        self.effective(file, mode, warnings)
    }

    /// The logging flags given, which apply over the file too.
    fn apply_logging(&self, file: &mut KubeProxyConfiguration) {
        if let Some(v) = self.verbosity {
            file.logging.verbosity = u32::from(v);
        }
        if let Some(f) = &self.logging_format {
            file.logging.format.clone_from(f);
        }
        if let Some(f) = self.log_flush_frequency {
            file.logging.flush_frequency = f;
        }
    }

    /// Flags kube-proxy ignores beside `--config` that were given anyway.
    fn ignored_beside_config(&self) -> Vec<&'static str> {
        let given = [
            ("feature-gates", self.feature_gates.is_some()),
            ("kubeconfig", self.kubeconfig.is_some()),
            ("kube-api-content-type", self.kube_api_content_type.is_some()),
            ("kube-api-burst", self.kube_api_burst.is_some()),
            ("kube-api-qps", self.kube_api_qps.is_some()),
            ("bind-address", self.bind_address.is_some()),
            ("healthz-bind-address", self.healthz_bind_address.is_some()),
            ("metrics-bind-address", self.metrics_bind_address.is_some()),
            ("bind-address-hard-fail", self.bind_address_hard_fail.is_some()),
            ("profiling", self.profiling.is_some()),
            ("show-hidden-metrics-for-version", self.show_hidden_metrics_for_version.is_some()),
            ("proxy-mode", self.proxy_mode.is_some()),
            ("iptables-masquerade-bit", self.iptables_masquerade_bit.is_some()),
            ("masquerade-all", self.masquerade_all.is_some()),
            ("iptables-localhost-nodeports", self.iptables_localhost_nodeports.is_some()),
            ("iptables-sync-period", self.iptables_sync_period.is_some()),
            ("iptables-min-sync-period", self.iptables_min_sync_period.is_some()),
            ("ipvs-sync-period", self.ipvs_sync_period.is_some()),
            ("ipvs-min-sync-period", self.ipvs_min_sync_period.is_some()),
            ("ipvs-scheduler", self.ipvs_scheduler.is_some()),
            ("ipvs-exclude-cidrs", self.ipvs_exclude_cidrs.is_some()),
            ("ipvs-strict-arp", self.ipvs_strict_arp.is_some()),
            ("ipvs-tcp-timeout", self.ipvs_tcp_timeout.is_some()),
            ("ipvs-tcpfin-timeout", self.ipvs_tcpfin_timeout.is_some()),
            ("ipvs-udp-timeout", self.ipvs_udp_timeout.is_some()),
            ("detect-local-mode", self.detect_local_mode.is_some()),
            ("pod-bridge-interface", self.pod_bridge_interface.is_some()),
            ("pod-interface-name-prefix", self.pod_interface_name_prefix.is_some()),
            ("cluster-cidr", self.cluster_cidr.is_some()),
            ("nodeport-addresses", self.nodeport_addresses.is_some()),
            ("oom-score-adj", self.oom_score_adj.is_some()),
            ("conntrack-max-per-core", self.conntrack_max_per_core.is_some()),
            ("conntrack-min", self.conntrack_min.is_some()),
            ("conntrack-tcp-timeout-established", self.conntrack_tcp_timeout_established.is_some()),
            ("conntrack-tcp-timeout-close-wait", self.conntrack_tcp_timeout_close_wait.is_some()),
            ("conntrack-tcp-be-liberal", self.conntrack_tcp_be_liberal.is_some()),
            ("conntrack-udp-timeout", self.conntrack_udp_timeout.is_some()),
            ("conntrack-udp-timeout-stream", self.conntrack_udp_timeout_stream.is_some()),
            ("config-sync-period", self.config_sync_period.is_some()),
            ("healthz-port", self.healthz_port.is_some()),
            ("metrics-port", self.metrics_port.is_some()),
        ];
        given.into_iter().filter(|(_, g)| *g).map(|(name, _)| name).collect()
    }

    /// Flags given that kproxy accepts without acting on them, with the reason, as
    /// docs/kube-proxy-compatibility.md lists them.
    fn without_effect(&self, mode: &str) -> Vec<(&'static str, &'static str)> {
        let ipvs = mode == "ipvs";
        let given = [
            ("iptables-localhost-nodeports", self.iptables_localhost_nodeports.is_some(), "iptables mode only"),
            ("iptables-masquerade-bit", self.iptables_masquerade_bit.is_some(), "kproxy's table marks with bit 14"),
            ("ipvs-exclude-cidrs", self.ipvs_exclude_cidrs.is_some(), "kproxy only removes its own virtual services"),
            ("ipvs-tcp-timeout", self.ipvs_tcp_timeout.is_some(), "not applied yet"),
            ("ipvs-tcpfin-timeout", self.ipvs_tcpfin_timeout.is_some(), "not applied yet"),
            ("ipvs-udp-timeout", self.ipvs_udp_timeout.is_some(), "not applied yet"),
            ("ipvs-scheduler", self.ipvs_scheduler.is_some() && !ipvs, "IPVS mode only"),
            ("ipvs-strict-arp", self.ipvs_strict_arp.is_some() && !ipvs, "IPVS mode only"),
            ("ipvs-sync-period", self.ipvs_sync_period.is_some() && !ipvs, "IPVS mode only"),
            ("ipvs-min-sync-period", self.ipvs_min_sync_period.is_some() && !ipvs, "IPVS mode only"),
            ("kube-api-burst", self.kube_api_burst.is_some(), "one list and one watch per resource"),
            ("kube-api-qps", self.kube_api_qps.is_some(), "one list and one watch per resource"),
            ("kube-api-content-type", self.kube_api_content_type.is_some(), "Services and EndpointSlices are protobuf"),
            ("config-sync-period", self.config_sync_period.is_some(), "the watches have no periodic resync"),
            ("profiling", self.profiling.is_some(), "no profiling endpoints"),
            ("show-hidden-metrics-for-version", self.show_hidden_metrics_for_version.is_some(), "no hidden metrics"),
            ("vmodule", self.vmodule.is_some(), "Go files only"),
            ("log-flush-frequency", self.log_flush_frequency.is_some(), "logs are written at once"),
            ("log-text-split-stream", self.log_text_split_stream.is_some(), "logs go to stderr"),
            ("log-json-split-stream", self.log_json_split_stream.is_some(), "logs go to stderr"),
            ("log-text-info-buffer-size", self.log_text_info_buffer_size.is_some(), "logs are written at once"),
            ("log-json-info-buffer-size", self.log_json_info_buffer_size.is_some(), "logs are written at once"),
        ];
        given.into_iter().filter(|(_, g, _)| *g).map(|(flag, _, why)| (flag, why)).collect()
    }

    /// Fills a defaulted configuration from the flags (no `--config`).
    fn apply_flags(&self, f: &mut KubeProxyConfiguration) -> Result<()> {
        self.apply_logging(f);
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        };
        if let Some(gates) = &self.feature_gates {
            f.feature_gates = parse_gates(gates)?;
        }
        if let Some(k) = &self.kubeconfig {
            f.client_connection.kubeconfig = k.display().to_string();
        }
        set(&mut f.client_connection.content_type, &self.kube_api_content_type);
        f.client_connection.burst = self.kube_api_burst.unwrap_or(f.client_connection.burst);
        f.client_connection.qps = self.kube_api_qps.unwrap_or(f.client_connection.qps);
        if let Some(b) = self.bind_address.as_deref().filter(|b| !b.is_empty()) {
            anyhow::ensure!(
                proxy_core::ip::parse_ip_sloppy(b).is_some(),
                "--bind-address: {b:?} is not a valid IP address"
            );
            f.bind_address = b.to_string();
        }
        // IPPortVar: an empty value leaves the default; a bare IP takes the port.
        let ip_port = |v: &Option<String>, port: u16, dst: &mut String, flag: &str| -> Result<()> {
            let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else { return Ok(()) };
            if let Some(ip) = proxy_core::ip::parse_ip_sloppy(v) {
                *dst = std::net::SocketAddr::new(ip, port).to_string();
            } else if v.parse::<std::net::SocketAddr>().is_ok() {
                *dst = v.to_string();
            } else {
                bail!("--{flag}: {v:?} is not in a valid format (ip or ip:port)");
            }
            Ok(())
        };
        ip_port(&self.healthz_bind_address, 10256, &mut f.healthz_bind_address, "healthz-bind-address")?;
        ip_port(&self.metrics_bind_address, 10249, &mut f.metrics_bind_address, "metrics-bind-address")?;
        // The deprecated port flags (upstream applies them without --config only).
        if let Some(port) = self.healthz_port {
            f.healthz_bind_address = with_deprecated_port(&f.healthz_bind_address, port);
        }
        if let Some(port) = self.metrics_port {
            f.metrics_bind_address = with_deprecated_port(&f.metrics_bind_address, port);
        }
        f.bind_address_hard_fail = self.bind_address_hard_fail.unwrap_or(false);
        f.enable_profiling = self.profiling.unwrap_or(false);
        set(&mut f.show_hidden_metrics_for_version, &self.show_hidden_metrics_for_version);
        set(&mut f.mode, &self.proxy_mode);
        f.iptables.masquerade_bit = self.iptables_masquerade_bit.or(f.iptables.masquerade_bit);
        // Flags fill the internal MasqueradeAll, which the mode's section shows.
        let masquerade_all = self.masquerade_all.unwrap_or(false);
        f.iptables.masquerade_all = masquerade_all;
        f.nftables.masquerade_all = masquerade_all;
        f.iptables.localhost_node_ports = self.iptables_localhost_nodeports.or(f.iptables.localhost_node_ports);
        // The period flags: --ipvs-* in IPVS mode, --iptables-* in every other mode.
        let (sync, min_sync) = if f.mode == "ipvs" {
            (self.ipvs_sync_period, self.ipvs_min_sync_period)
        } else {
            (self.iptables_sync_period, self.iptables_min_sync_period)
        };
        let (mut s, mut m) = (f.iptables.sync_period, f.iptables.min_sync_period);
        s = sync.unwrap_or(s);
        m = min_sync.unwrap_or(m);
        for section in [&mut f.ipvs.sync_period, &mut f.nftables.sync_period, &mut f.iptables.sync_period] {
            *section = s;
        }
        for section in [&mut f.ipvs.min_sync_period, &mut f.nftables.min_sync_period, &mut f.iptables.min_sync_period] {
            *section = m;
        }
        set(&mut f.ipvs.scheduler, &self.ipvs_scheduler);
        if let Some(c) = &self.ipvs_exclude_cidrs {
            f.ipvs.exclude_cidrs = Some(c.clone());
        }
        f.ipvs.strict_arp = self.ipvs_strict_arp.unwrap_or(false);
        f.ipvs.tcp_timeout = self.ipvs_tcp_timeout.unwrap_or_default();
        f.ipvs.tcp_fin_timeout = self.ipvs_tcpfin_timeout.unwrap_or_default();
        f.ipvs.udp_timeout = self.ipvs_udp_timeout.unwrap_or_default();
        set(&mut f.detect_local_mode, &self.detect_local_mode);
        set(&mut f.detect_local.bridge_interface, &self.pod_bridge_interface);
        set(&mut f.detect_local.interface_name_prefix, &self.pod_interface_name_prefix);
        if let Some(cidrs) = &self.cluster_cidr {
            f.cluster_cidr = cidrs.join(",");
        }
        if let Some(n) = &self.nodeport_addresses {
            f.node_port_addresses = Some(n.clone());
        }
        f.oom_score_adj = self.oom_score_adj.or(f.oom_score_adj);
        let ct = &mut f.conntrack;
        ct.max_per_core = self.conntrack_max_per_core.or(ct.max_per_core);
        ct.min = self.conntrack_min.or(ct.min);
        ct.tcp_established_timeout = self.conntrack_tcp_timeout_established.or(ct.tcp_established_timeout);
        ct.tcp_close_wait_timeout = self.conntrack_tcp_timeout_close_wait.or(ct.tcp_close_wait_timeout);
        ct.tcp_be_liberal = self.conntrack_tcp_be_liberal.unwrap_or(false);
        ct.udp_timeout = self.conntrack_udp_timeout.unwrap_or_default();
        ct.udp_stream_timeout = self.conntrack_udp_timeout_stream.unwrap_or_default();
        f.config_sync_period = self.config_sync_period.unwrap_or(f.config_sync_period);
        Ok(())
    }

    /// kproxy's Maglev settings, from its own flags (they apply with `--config` too).
    /// Flags not given take [`proxy_core::MaglevSettings`]'s defaults.
    fn maglev(&self) -> Result<proxy_core::MaglevSettings> {
        let defaults = proxy_core::MaglevSettings::default();
        let classes = proxy_core::maglev::SIZE_CLASSES;
        let max_table_size = self.maglev_max_table_size.unwrap_or(defaults.max_table_size);
        anyhow::ensure!(
            classes.contains(&max_table_size),
            "--maglev-max-table-size: {max_table_size} is not one of {classes:?}"
        );
        Ok(proxy_core::MaglevSettings {
            by_default: self.load_balancing.as_deref() == Some("maglev"),
            max_table_size,
            seed: self.maglev_seed.unwrap_or(defaults.seed),
        })
    }

    /// The effective configuration from a defaulted, validated file.
    fn effective(&self, file: KubeProxyConfiguration, mode: String, warnings: Vec<String>) -> Result<Config> {
        let (sync, min_sync) = file.periods();
        let cluster_cidrs = file
            .cluster_cidr
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| proxy_core::ip::parse_cidr_sloppy(c).with_context(|| format!("clusterCIDR: invalid CIDR {c:?}")))
            .collect::<Result<Vec<_>>>()?;
        let detect_local = match file.detect_local_mode.as_str() {
            "NodeCIDR" => DetectLocal::NodeCidr,
            "BridgeInterface" => DetectLocal::BridgeInterface(file.detect_local.bridge_interface.clone()),
            "InterfaceNamePrefix" => DetectLocal::InterfaceNamePrefix(file.detect_local.interface_name_prefix.clone()),
            _ => DetectLocal::ClusterCidr,
        };
        let ct = &file.conntrack;
        let conntrack = crate::sysctls::Conntrack {
            max_per_core: ct.max_per_core.unwrap_or_default().max(0) as u64,
            min: ct.min.unwrap_or_default().max(0) as u64,
            tcp_established: ct.tcp_established_timeout.unwrap_or_default().0,
            tcp_close_wait: ct.tcp_close_wait_timeout.unwrap_or_default().0,
            tcp_be_liberal: ct.tcp_be_liberal,
            udp: ct.udp_timeout.0,
            udp_stream: ct.udp_stream_timeout.0,
        };
        Ok(Config {
            config_path: self.config.clone(),
            hostname_override: Some(file.hostname_override.clone()).filter(|h| !h.is_empty()),
            bind_address: proxy_core::ip::parse_ip_sloppy(&file.bind_address).filter(|ip| !ip.is_unspecified()),
            cluster_cidrs,
            nodeport: NodePortAddresses::parse(file.node_port_addresses.as_deref().unwrap_or_default()),
            masquerade_all: file.masquerade_all(),
            detect_local,
            table: self.table.clone(),
            maglev: self.maglev()?,
            ipvs_scheduler: Some(file.ipvs.scheduler.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| ipvs_backend::render::DEFAULT_SCHEDULER.into()),
            ipvs_strict_arp: file.ipvs.strict_arp,
            sync_period: sync.0,
            min_sync_period: min_sync.0,
            healthz_bind_address: Some(file.healthz_bind_address.clone()).filter(|a| !a.is_empty()),
            metrics_bind_address: file.metrics_bind_address.clone(),
            bind_address_hard_fail: file.bind_address_hard_fail,
            kubeconfig: Some(PathBuf::from(&file.client_connection.kubeconfig)).filter(|k| !k.as_os_str().is_empty()),
            master: self.master.clone().filter(|m| !m.is_empty()),
            conntrack,
            oom_score_adj: file.oom_score_adj.unwrap_or(-999),
            verbosity: file.logging.verbosity,
            logging_format: file.logging.format.clone(),
            proxy_mode: mode,
            file,
            warnings,
        })
    }
}

/// `key=bool,...` (`--feature-gates`).
fn parse_gates(text: &str) -> Result<std::collections::BTreeMap<String, bool>> {
    text.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').with_context(|| format!("--feature-gates: missing bool value for {kv}"))?;
            let v: bool = v.trim().parse().with_context(|| format!("--feature-gates: invalid value of {k}={v}"))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

/// Upstream's `addressFromDeprecatedFlags`: port 0 disables, a bare IP takes the port.
fn with_deprecated_port(addr: &str, port: i32) -> String {
    if port == 0 {
        return String::new();
    }
    match addr.parse::<std::net::SocketAddr>() {
        Ok(_) => addr.to_string(),
        Err(_) => format!("{addr}:{port}"),
    }
}

/// Upstream's `platformApplyDefaults`, with kproxy's modes: returns the mode that runs.
/// kproxy has no iptables mode: `mode: ""` (iptables upstream, and what kubeadm writes)
/// and `iptables` run nftables, whose Service semantics are the same, with a warning.
fn platform_defaults(file: &mut KubeProxyConfiguration, warnings: Option<&mut Vec<String>>) -> String {
    // The periods and masqueradeAll come from the section of the mode as written (the
    // iptables one for ""), as upstream's conversion reads them.
    let (sync, min_sync) = file.periods();
    let masquerade_all = file.masquerade_all();
    let mode = match file.mode.as_str() {
        "" | "iptables" => {
            if let Some(warnings) = warnings {
                warnings.push(format!(
                    "proxy mode {:?} {}: kproxy runs nftables, with the same Service semantics (see docs/kube-proxy-compatibility.md)",
                    file.mode,
                    if file.mode.is_empty() { "(iptables in kube-proxy)" } else { "is not implemented" }
                ));
            }
            "nftables".to_string()
        }
        other => other.to_string(),
    };
    file.mode.clone_from(&mode);
    file.set_periods(sync, min_sync);
    file.nftables.masquerade_all = masquerade_all && mode == "nftables";
    file.iptables.masquerade_all = masquerade_all && mode != "nftables";
    if mode == "nftables" && file.node_port_addresses.as_ref().is_none_or(Vec::is_empty) {
        file.node_port_addresses = Some(vec!["primary".into()]);
    }
    if file.detect_local_mode.is_empty() {
        file.detect_local_mode = "ClusterCIDR".into();
    }
    mode
}

/// Reads `KPROXY`-style periods from a kproxy flag (`--sync-period 30s`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    duration::parse_go(s).map_err(|e| anyhow::anyhow!(e))
}

impl Config {
    /// Whether NodePorts are served on `127.0.0.1` and `::1` by the relay
    /// (`relay-backend`): in nftables mode, when `--nodeport-addresses` covers loopback
    /// (`localhost`, `all`, or a loopback CIDR), unless the
    /// `KubeProxyNFTablesLocalhostNodePorts` gate is explicitly off. Upstream also needs
    /// the (alpha) gate on and serves TCP only; kproxy takes the address list as the
    /// operator's intent and serves TCP and UDP (docs/localhost.md).
    pub fn localhost_nodeports(&self) -> bool {
        let loopback: [IpAddr; 2] = [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
        let covered =
            self.nodeport.localhost || self.nodeport.cidrs.iter().any(|net| loopback.iter().any(|ip| net.contains(ip)));
        let gate_off = self.file.feature_gates.get("KubeProxyNFTablesLocalhostNodePorts") == Some(&false);
        self.proxy_mode == "nftables" && covered && !gate_off
    }

    /// The v1alpha1 file with the effective periods, for `/configz` and
    /// `--write-config-to`.
    pub fn with_periods(&self, sync: Duration, min_sync: Duration) -> KubeProxyConfiguration {
        let mut file = self.file.clone();
        file.set_periods(GoDuration(sync), GoDuration(min_sync));
        file
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
