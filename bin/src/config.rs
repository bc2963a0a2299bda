//! kube-proxy's configuration: the node flags and the `--config` file
//! (`KubeProxyConfiguration`, `kubeproxy.config.k8s.io/v1alpha1`).
//!
//! Flags override the file, as in kube-proxy. Unknown or invalid fields in the file are
//! errors naming the field; fields kube-proxy has but kproxy does not act on (iptables,
//! IPVS, Windows, logging options) are accepted and ignored.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The node flags every subcommand that computes rules takes (`run`, `sync`, `plan`,
/// `trace`). Names and defaults follow kube-proxy.
#[derive(Args, Debug, Clone, Default)]
pub struct NodeFlags {
    /// A KubeProxyConfiguration file; flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The name of this node (default: the host name).
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The cluster's pod CIDRs (comma-separated, one per family), for local-traffic
    /// detection in ClusterCIDR mode.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// CIDRs (comma-separated) whose node addresses accept NodePorts, or `primary` (the
    /// default): the node's primary IP of each family.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub masquerade_all: Option<bool>,
    /// How to tell pod traffic: ClusterCIDR, NodeCIDR, BridgeInterface or
    /// InterfaceNamePrefix.
    #[arg(long)]
    pub detect_local_mode: Option<String>,
    /// The pod bridge, with --detect-local-mode=BridgeInterface.
    #[arg(long)]
    pub pod_bridge_interface: Option<String>,
    /// The pod interface name prefix, with --detect-local-mode=InterfaceNamePrefix.
    #[arg(long)]
    pub pod_interface_name_prefix: Option<String>,
    /// The proxy mode: nftables (default) or ipvs.
    #[arg(long)]
    pub proxy_mode: Option<String>,
    /// The nftables table kproxy owns (in families ip and ip6).
    #[arg(long, default_value = nft_backend::DEFAULT_TABLE)]
    pub table: String,
    /// The IPVS scheduler, with --proxy-mode=ipvs: rr (default), lc, dh, sh, mh, sed, nq, …
    #[arg(long)]
    pub ipvs_scheduler: Option<String>,
    /// With --proxy-mode=ipvs: answer ARP only for addresses on the receiving interface
    /// (arp_ignore=1, arp_announce=2), so that the Service addresses kproxy binds to its
    /// dummy interface are not announced (what MetalLB's L2 mode needs).
    #[arg(long)]
    pub ipvs_strict_arp: bool,
    /// Log verbosity, as kube-proxy's `-v`.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
    /// Log format: text or json (kube-proxy's `--logging-format`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub logging_format: String,
    /// Conntrack table entries per CPU (0: leave the table size alone). Default 32768.
    #[arg(long)]
    pub conntrack_max_per_core: Option<u64>,
    /// The smallest conntrack table size to set. Default 131072.
    #[arg(long)]
    pub conntrack_min: Option<u64>,
    /// The conntrack timeout of established TCP connections (0: leave it). Default 24h.
    #[arg(long)]
    pub conntrack_tcp_timeout_established: Option<String>,
    /// The conntrack timeout of TCP connections in CLOSE_WAIT (0: leave it). Default 1h.
    #[arg(long)]
    pub conntrack_tcp_timeout_close_wait: Option<String>,
    /// Make conntrack accept TCP packets outside the window instead of marking them invalid.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// The conntrack timeout of UDP flows (0: leave it).
    #[arg(long)]
    pub conntrack_udp_timeout: Option<String>,
    /// The conntrack timeout of UDP streams (0: leave it).
    #[arg(long)]
    pub conntrack_udp_timeout_stream: Option<String>,
}

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

/// The effective configuration: file, then flags.
#[derive(Clone, Debug)]
pub struct Config {
    pub hostname_override: Option<String>,
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// `None` means `primary`.
    pub nodeport_cidrs: Option<Vec<ipnet::IpNet>>,
    pub masquerade_all: bool,
    pub detect_local: DetectLocal,
    pub proxy_mode: String,
    pub table: String,
    /// The IPVS scheduler (`--ipvs-scheduler`, `ipvs.scheduler`).
    pub ipvs_scheduler: String,
    /// Set `net.ipv4.conf.all.arp_ignore=1` and `arp_announce=2` in IPVS mode
    /// (`--ipvs-strict-arp`, `ipvs.strictARP`).
    pub ipvs_strict_arp: bool,
    /// How often the daemon runs a full resync.
    pub sync_period: Duration,
    /// The shortest time between two syncs.
    pub min_sync_period: Duration,
    /// Where `/healthz` and `/livez` are served.
    pub healthz_bind_address: String,
    /// Where `/metrics` is served.
    pub metrics_bind_address: String,
    /// `clientConnection.kubeconfig` from the file.
    pub kubeconfig: Option<PathBuf>,
    /// The conntrack sysctls `run` sets.
    pub conntrack: crate::sysctls::Conntrack,
}

/// The subset of `KubeProxyConfiguration` kproxy reads, with every other known field
/// accepted as opaque (declared only so that `deny_unknown_fields` lets them through).
#[derive(Deserialize, Default)]
#[allow(dead_code)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    hostname_override: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    node_port_addresses: Option<Vec<String>>,
    masquerade_all: Option<bool>,
    detect_local_mode: Option<String>,
    detect_local: Option<FileDetectLocal>,
    mode: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    nftables: Option<FileNftables>,
    // Known to kube-proxy, not acted on by kproxy.
    bind_address: Option<Value>,
    bind_address_hard_fail: Option<Value>,
    client_connection: Option<FileClientConnection>,
    config_sync_period: Option<Value>,
    conntrack: Option<FileConntrack>,
    enable_profiling: Option<Value>,
    feature_gates: Option<Value>,
    iptables: Option<Value>,
    ipvs: Option<FileIpvs>,
    linux: Option<Value>,
    logging: Option<Value>,
    oom_score_adj: Option<Value>,
    port_range: Option<Value>,
    show_hidden_metrics_for_version: Option<Value>,
    windows: Option<Value>,
    winkernel: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileDetectLocal {
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileConntrack {
    max_per_core: Option<u64>,
    min: Option<u64>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct FileClientConnection {
    kubeconfig: Option<String>,
    accept_content_types: Option<Value>,
    content_type: Option<Value>,
    qps: Option<Value>,
    burst: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct FileNftables {
    masquerade_all: Option<bool>,
    masquerade_bit: Option<i32>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

/// `ipvs:` (KubeProxyIPVSConfiguration): the scheduler and periods kproxy reads in IPVS
/// mode; the other fields are accepted and not acted on.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct FileIpvs {
    scheduler: Option<String>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    exclude_cidrs: Option<Value>,
    #[serde(rename = "strictARP")]
    strict_arp: Option<bool>,
    tcp_timeout: Option<Value>,
    tcp_fin_timeout: Option<Value>,
    udp_timeout: Option<Value>,
}

/// Parses a Go duration (`1h0m0s`, `30s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().with_context(|| format!("invalid duration {s:?}"))?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => bail!("invalid duration {s:?}: unknown unit {unit:?}"),
        };
        total +=
            Duration::try_from_secs_f64(number * seconds).with_context(|| format!("duration {s:?} is out of range"))?;
        rest = tail;
    }
    Ok(total)
}

fn parse_cidrs(values: &[String], what: &str) -> Result<Vec<ipnet::IpNet>> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| proxy_core::ip::parse_cidr_sloppy(v).with_context(|| format!("{what}: invalid CIDR {v:?}")))
        .collect()
}

impl NodeFlags {
    /// The effective configuration.
    pub fn resolve(&self) -> Result<Config> {
        let file: File = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let file: File = serde_yaml_ng::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?;
                if let Some(kind) = file.kind.as_deref().filter(|k| *k != "KubeProxyConfiguration") {
                    bail!("{}: kind is {kind:?}, expected KubeProxyConfiguration", path.display());
                }
                if let Some(v) = file.api_version.as_deref().filter(|v| *v != "kubeproxy.config.k8s.io/v1alpha1") {
                    bail!("{}: apiVersion is {v:?}, expected kubeproxy.config.k8s.io/v1alpha1", path.display());
                }
                file
            }
            None => File::default(),
        };
        let mut nft = file.nftables.unwrap_or_default();
        let ipvs = file.ipvs.unwrap_or_default();
        let strict_arp = ipvs.strict_arp.unwrap_or(false);
        if let Some(bit) = nft.masquerade_bit
            && bit != 14
        {
            bail!("nftables.masqueradeBit: kproxy uses bit 14 (0x4000), got {bit}");
        }
        let cluster_cidr: Vec<String> = if self.cluster_cidr.is_empty() {
            file.cluster_cidr.iter().flat_map(|c| c.split(',')).map(str::to_string).collect()
        } else {
            self.cluster_cidr.clone()
        };
        let nodeport: Vec<String> = if self.nodeport_addresses.is_empty() {
            file.node_port_addresses.unwrap_or_default()
        } else {
            self.nodeport_addresses.clone()
        };
        let nodeport_cidrs = if nodeport.is_empty() || nodeport.iter().any(|v| v == "primary") {
            if nodeport.len() > 1 {
                bail!("--nodeport-addresses: 'primary' cannot be combined with CIDRs");
            }
            None
        } else {
            Some(parse_cidrs(&nodeport, "--nodeport-addresses")?)
        };
        let mode = self.detect_local_mode.clone().or(file.detect_local_mode).unwrap_or_else(|| "ClusterCIDR".into());
        let detect = file.detect_local.unwrap_or_default();
        let detect_local = match mode.as_str() {
            "ClusterCIDR" | "" => DetectLocal::ClusterCidr,
            "NodeCIDR" => DetectLocal::NodeCidr,
            "BridgeInterface" => DetectLocal::BridgeInterface(
                self.pod_bridge_interface
                    .clone()
                    .or(detect.bridge_interface)
                    .context("--detect-local-mode=BridgeInterface needs --pod-bridge-interface")?,
            ),
            "InterfaceNamePrefix" => DetectLocal::InterfaceNamePrefix(
                self.pod_interface_name_prefix
                    .clone()
                    .or(detect.interface_name_prefix)
                    .context("--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefix")?,
            ),
            other => bail!("--detect-local-mode: unknown mode {other:?}"),
        };
        let proxy_mode =
            self.proxy_mode.clone().or(file.mode).filter(|m| !m.is_empty()).unwrap_or_else(|| "nftables".into());
        if proxy_mode != "nftables" && proxy_mode != "ipvs" {
            bail!("--proxy-mode: kproxy supports nftables and ipvs, not {proxy_mode:?}");
        }
        // Each mode reads its own section's periods, as kube-proxy does.
        if proxy_mode == "ipvs" {
            nft.sync_period = ipvs.sync_period.clone();
            nft.min_sync_period = ipvs.min_sync_period.clone();
        }
        let duration = |v: Option<String>, default: Duration, what: &str| -> Result<Duration> {
            v.map(|v| parse_duration(&v).with_context(|| what.to_string())).transpose().map(|d| d.unwrap_or(default))
        };
        let sync_period = duration(nft.sync_period.or(file.sync_period), Duration::from_secs(30), "syncPeriod")?;
        anyhow::ensure!(!sync_period.is_zero(), "syncPeriod: must be greater than zero");
        let min_sync_period =
            duration(nft.min_sync_period.or(file.min_sync_period), Duration::from_secs(1), "minSyncPeriod")?;
        let ct = file.conntrack.unwrap_or_default();
        let defaults = crate::sysctls::Conntrack::default();
        let conntrack = crate::sysctls::Conntrack {
            max_per_core: self.conntrack_max_per_core.or(ct.max_per_core).unwrap_or(defaults.max_per_core),
            min: self.conntrack_min.or(ct.min).unwrap_or(defaults.min),
            tcp_established: duration(
                self.conntrack_tcp_timeout_established.clone().or(ct.tcp_established_timeout),
                defaults.tcp_established,
                "--conntrack-tcp-timeout-established",
            )?,
            tcp_close_wait: duration(
                self.conntrack_tcp_timeout_close_wait.clone().or(ct.tcp_close_wait_timeout),
                defaults.tcp_close_wait,
                "--conntrack-tcp-timeout-close-wait",
            )?,
            tcp_be_liberal: self.conntrack_tcp_be_liberal.or(ct.tcp_be_liberal).unwrap_or(defaults.tcp_be_liberal),
            udp: duration(
                self.conntrack_udp_timeout.clone().or(ct.udp_timeout),
                defaults.udp,
                "--conntrack-udp-timeout",
            )?,
            udp_stream: duration(
                self.conntrack_udp_timeout_stream.clone().or(ct.udp_stream_timeout),
                defaults.udp_stream,
                "--conntrack-udp-timeout-stream",
            )?,
        };
        Ok(Config {
            hostname_override: self.hostname_override.clone().or(file.hostname_override).filter(|h| !h.is_empty()),
            cluster_cidrs: parse_cidrs(&cluster_cidr, "--cluster-cidr")?,
            nodeport_cidrs,
            masquerade_all: self.masquerade_all.or(file.masquerade_all).or(nft.masquerade_all).unwrap_or(false),
            detect_local,
            proxy_mode,
            table: self.table.clone(),
            ipvs_scheduler: self
                .ipvs_scheduler
                .clone()
                .or(ipvs.scheduler)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| ipvs_backend::render::DEFAULT_SCHEDULER.into()),
            ipvs_strict_arp: self.ipvs_strict_arp || strict_arp,
            sync_period,
            min_sync_period,
            healthz_bind_address: file.healthz_bind_address.unwrap_or_else(|| "0.0.0.0:10256".into()),
            metrics_bind_address: file.metrics_bind_address.unwrap_or_else(|| "127.0.0.1:10249".into()),
            kubeconfig: file.client_connection.and_then(|c| c.kubeconfig).filter(|k| !k.is_empty()).map(PathBuf::from),
            conntrack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h0m0s").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("999999999999999999999h").is_err());
    }

    fn with_file(yaml: &str) -> Result<Config> {
        let path = std::env::temp_dir().join(format!("kproxy-config-test-{}-{}.yaml", std::process::id(), yaml.len()));
        std::fs::write(&path, yaml).unwrap();
        let flags = NodeFlags { config: Some(path.clone()), table: "kproxy".into(), ..NodeFlags::default() };
        let result = flags.resolve();
        std::fs::remove_file(path).ok();
        result
    }

    #[test]
    fn ipvs_mode_reads_its_own_section() {
        let yaml = "kind: KubeProxyConfiguration\nmode: ipvs\nnftables: {syncPeriod: 1m0s}\n\
                    ipvs: {scheduler: lc, syncPeriod: 45s, minSyncPeriod: 2s, strictARP: true, excludeCIDRs: []}\n";
        let c = with_file(yaml).unwrap();
        assert_eq!(c.proxy_mode, "ipvs");
        assert_eq!(c.ipvs_scheduler, "lc");
        assert!(c.ipvs_strict_arp);
        assert!(!with_file("mode: ipvs\nipvs: {strictARP: false}\n").unwrap().ipvs_strict_arp);
        let err = with_file("mode: ipvs\nipvs: {strictARP: yes please}\n").unwrap_err();
        assert!(format!("{err:#}").contains("strictARP"), "{err:#}");
        assert_eq!((c.sync_period, c.min_sync_period), (Duration::from_secs(45), Duration::from_secs(2)));
        // Without a scheduler: upstream's rr. An unknown field is an error naming it.
        assert_eq!(with_file("mode: ipvs\n").unwrap().ipvs_scheduler, "rr");
        let err = with_file("mode: ipvs\nipvs: {schedular: lc}\n").unwrap_err();
        assert!(format!("{err:#}").contains("schedular"), "{err:#}");
    }

    #[test]
    fn config_file() {
        let c = with_file(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.244.0.0/16\n\
             mode: nftables\nnodePortAddresses: [192.168.0.0/24]\nnftables: {masqueradeAll: true, syncPeriod: 1m0s}\n\
             iptables: {masqueradeBit: 14}\nconntrack: {maxPerCore: 0, tcpEstablishedTimeout: 2h0m0s}\n\
             clientConnection: {kubeconfig: /var/lib/kproxy/kubeconfig, qps: 5}\n",
        )
        .unwrap();
        assert_eq!(c.conntrack.max_per_core, 0);
        assert_eq!(c.conntrack.tcp_established, Duration::from_secs(7200));
        assert_eq!(c.conntrack.tcp_close_wait, Duration::from_secs(3600), "kube-proxy's default");
        assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/kproxy/kubeconfig")));
        assert_eq!(c.cluster_cidrs, ["10.244.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
        assert!(c.masquerade_all);
        assert_eq!(c.nodeport_cidrs.unwrap().len(), 1);
        assert_eq!(c.sync_period, Duration::from_secs(60));
    }

    #[test]
    fn unknown_and_invalid_fields_name_the_field() {
        let err = format!("{:#}", with_file("clusterCIDR: 10.0.0.0/8\nbogusField: 1\n").unwrap_err());
        assert!(err.contains("bogusField"), "{err}");
        let err = format!("{:#}", with_file("masqueradeAll: sometimes\n").unwrap_err());
        assert!(err.contains("masqueradeAll"), "{err}");
        let err = format!("{:#}", with_file("clusterCIDR: 10.0.0.0/88\n").unwrap_err());
        assert!(err.contains("--cluster-cidr"), "{err}");
    }
}
