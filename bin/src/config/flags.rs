//! kube-proxy v1.37's command line, flag for flag (`kube-proxy --help`), plus kproxy's
//! own `--table`, `--load-balancing` and `--maglev-*`. Every flag is an `Option`, so the resolver can tell a flag given from a
//! default, as pflag's `Changed` does: with `--config`, upstream ignores all but the
//! logging flags and `--hostname-override` (see [`super::resolve`]).
//!
//! Boolean flags take `--flag`, `--flag=true` or `--flag=false`, never a separate word,
//! as pflag's. Durations are Go durations (`30s`, `1h0m0s`).

use std::path::PathBuf;

use clap::Args;

use super::duration::parse_go;
use super::v1alpha1::GoDuration;

fn duration(s: &str) -> Result<GoDuration, String> {
    parse_go(s).map(GoDuration)
}

/// The flags of kube-proxy v1.37 (Linux), and kproxy's own: `--table` and the Maglev
/// settings.
#[derive(Args, Debug, Clone, Default)]
pub struct ProxyFlags {
    /// The path to the configuration file (KubeProxyConfiguration). With it, only the
    /// logging flags, --hostname-override and --master still apply, as in kube-proxy.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the effective configuration to this file and exit.
    #[arg(long)]
    pub write_config_to: Option<PathBuf>,
    /// Remove the rules of every kube-proxy mode and kproxy's, then exit.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub cleanup: Option<bool>,
    /// key=value pairs for feature gates (KubeProxyIPVS, KubeProxyNFTablesLocalhostNodePorts, …).
    #[arg(long)]
    pub feature_gates: Option<String>,
    /// The kubeconfig file with the API server's address and credentials.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address, overriding the kubeconfig's.
    #[arg(long)]
    pub master: Option<String>,
    /// The content type of requests to the API server (kproxy always reads Services and
    /// EndpointSlices in protobuf).
    #[arg(long)]
    pub kube_api_content_type: Option<String>,
    /// Burst to use while talking with the API server.
    #[arg(long)]
    pub kube_api_burst: Option<i32>,
    /// QPS to use while talking with the API server.
    #[arg(long)]
    pub kube_api_qps: Option<f32>,
    /// The name of this node, instead of the host name.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// Overrides the node's primary IP (for `primary` NodePorts and source-range checks);
    /// nothing binds to it.
    #[arg(long)]
    pub bind_address: Option<String>,
    /// Where the health server (/healthz, /livez) listens (IP or IP:port); empty disables it.
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// Where the metrics server listens (IP or IP:port).
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// Exit when the health or metrics port cannot be bound, instead of retrying.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub bind_address_hard_fail: Option<bool>,
    /// Profiling handlers on the metrics server (accepted; kproxy serves none).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub profiling: Option<bool>,
    /// The previous version for which to show hidden metrics (accepted; kproxy hides none).
    #[arg(long)]
    pub show_hidden_metrics_for_version: Option<String>,
    /// Initialize the node (sysctls) and exit.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub init_only: Option<bool>,
    /// nftables (kproxy's default) or ipvs; iptables and "" run nftables, with a warning.
    #[arg(long)]
    pub proxy_mode: Option<String>,
    /// iptables and IPVS modes' masquerade bit (kproxy's nftables table uses 14).
    #[arg(long)]
    pub iptables_masquerade_bit: Option<i32>,
    /// Masquerade all traffic sent to Service IPs.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub masquerade_all: Option<bool>,
    /// iptables mode's localhost NodePorts (no effect in nftables and IPVS modes).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub iptables_localhost_nodeports: Option<bool>,
    /// How often to resync in iptables and nftables modes.
    #[arg(long, value_parser = duration)]
    pub iptables_sync_period: Option<GoDuration>,
    /// The shortest time between syncs in iptables and nftables modes.
    #[arg(long, value_parser = duration)]
    pub iptables_min_sync_period: Option<GoDuration>,
    /// How often to resync in IPVS mode.
    #[arg(long, value_parser = duration)]
    pub ipvs_sync_period: Option<GoDuration>,
    /// The shortest time between syncs in IPVS mode.
    #[arg(long, value_parser = duration)]
    pub ipvs_min_sync_period: Option<GoDuration>,
    /// The IPVS scheduler (rr when empty).
    #[arg(long)]
    pub ipvs_scheduler: Option<String>,
    /// CIDRs IPVS mode leaves alone when cleaning up (accepted; kproxy only touches its own).
    #[arg(long, value_delimiter = ',')]
    pub ipvs_exclude_cidrs: Option<Vec<String>>,
    /// Set arp_ignore=1 and arp_announce=2 in IPVS mode.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ipvs_strict_arp: Option<bool>,
    /// IPVS TCP session timeout (accepted; not yet applied).
    #[arg(long, value_parser = duration)]
    pub ipvs_tcp_timeout: Option<GoDuration>,
    /// IPVS TCP FIN timeout (accepted; not yet applied).
    #[arg(long, value_parser = duration)]
    pub ipvs_tcpfin_timeout: Option<GoDuration>,
    /// IPVS UDP timeout (accepted; not yet applied).
    #[arg(long, value_parser = duration)]
    pub ipvs_udp_timeout: Option<GoDuration>,
    /// How pod traffic is told: ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix.
    #[arg(long)]
    pub detect_local_mode: Option<String>,
    /// The pod bridge, with --detect-local-mode=BridgeInterface.
    #[arg(long)]
    pub pod_bridge_interface: Option<String>,
    /// The pod interface name prefix, with --detect-local-mode=InterfaceNamePrefix.
    #[arg(long)]
    pub pod_interface_name_prefix: Option<String>,
    /// The cluster's pod CIDRs, comma-separated (one per family). kproxy also takes the
    /// flag twice, one family each (kube-proxy keeps the last).
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Option<Vec<String>>,
    /// Where NodePorts are accepted: CIDRs and the keywords primary (the default), localhost, all.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Option<Vec<String>>,
    /// The oom_score_adj of the process, in [-1000, 1000] (default -999).
    #[arg(long, allow_hyphen_values = true)]
    pub oom_score_adj: Option<i32>,
    /// Conntrack entries per CPU (0: leave the table size alone).
    #[arg(long)]
    pub conntrack_max_per_core: Option<i32>,
    /// The smallest conntrack table size to set.
    #[arg(long)]
    pub conntrack_min: Option<i32>,
    /// The conntrack timeout of established TCP connections (0: leave it).
    #[arg(long, value_parser = duration)]
    pub conntrack_tcp_timeout_established: Option<GoDuration>,
    /// The conntrack timeout of TCP connections in CLOSE_WAIT (0: leave it).
    #[arg(long, value_parser = duration)]
    pub conntrack_tcp_timeout_close_wait: Option<GoDuration>,
    /// Accept TCP packets outside the window instead of marking them invalid.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// The conntrack timeout of UDP flows (0: leave it).
    #[arg(long, value_parser = duration)]
    pub conntrack_udp_timeout: Option<GoDuration>,
    /// The conntrack timeout of UDP streams (0: leave it).
    #[arg(long, value_parser = duration)]
    pub conntrack_udp_timeout_stream: Option<GoDuration>,
    /// How often configuration from the API server is refreshed (accepted; kproxy watches).
    #[arg(long, value_parser = duration)]
    pub config_sync_period: Option<GoDuration>,
    /// Deprecated: the health server's port (0 disables it).
    #[arg(long, hide = true)]
    pub healthz_port: Option<i32>,
    /// Deprecated: the metrics server's port.
    #[arg(long, hide = true)]
    pub metrics_port: Option<i32>,
    /// Log format: text or json.
    #[arg(long)]
    pub logging_format: Option<String>,
    /// How often logs are flushed (accepted; kproxy writes them at once).
    #[arg(long, value_parser = duration)]
    pub log_flush_frequency: Option<GoDuration>,
    /// Log verbosity.
    #[arg(short = 'v', long = "v")]
    pub verbosity: Option<u8>,
    /// Per-module verbosity (accepted; applies to kube-proxy's Go files only).
    #[arg(long)]
    pub vmodule: Option<String>,
    /// [Alpha] Split text logs between stdout and stderr (accepted; kproxy logs to stderr).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub log_text_split_stream: Option<bool>,
    /// [Alpha] Text log buffer size (accepted).
    #[arg(long)]
    pub log_text_info_buffer_size: Option<String>,
    /// [Alpha] Split JSON logs between stdout and stderr (accepted; kproxy logs to stderr).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub log_json_split_stream: Option<bool>,
    /// [Alpha] JSON log buffer size (accepted).
    #[arg(long)]
    pub log_json_info_buffer_size: Option<String>,
    /// Print the version and exit (`--version`, `--version=raw`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub version: Option<String>,
    /// kproxy: the nftables table kproxy owns (in families ip and ip6).
    #[arg(long, default_value = nft_backend::DEFAULT_TABLE)]
    pub table: String,
    /// kproxy: how Services without the kproxy.io/load-balancing annotation pick an
    /// endpoint for a new connection: at random (upstream's way), or by Maglev hashing of
    /// the client address (the same endpoint through every node). Same on every node.
    /// [default: random]
    #[arg(long, value_parser = ["random", "maglev"])]
    pub load_balancing: Option<String>,
    /// kproxy: the largest Maglev table a Service gets by its endpoint count (251, 1021,
    /// 4093, 16381 or 65521 slots). Same on every node. [default: 16381]
    #[arg(long)]
    pub maglev_max_table_size: Option<u32>,
    /// kproxy: the seed of the kernel's jhash that picks a client's Maglev slot. Same on
    /// every node. [default: 1802531439 (0x6b70726f)]
    #[arg(long)]
    pub maglev_seed: Option<u32>,
}

/// kube-proxy's flag normalisation: `--hostname_override` is `--hostname-override`.
pub fn normalize_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else { return arg };
            let Some(flag) = text.strip_prefix("--") else { return arg };
            let (name, value) = flag.split_once('=').map_or((flag, None), |(n, v)| (n, Some(v)));
            let name = name.replace('_', "-");
            match value {
                Some(v) => format!("--{name}={v}").into(),
                None => format!("--{name}").into(),
            }
        })
        .collect()
}
