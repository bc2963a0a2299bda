//! Flags and file together, as kube-proxy v1.37 combines them.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    flags: ProxyFlags,
}

fn flags(args: &[&str]) -> ProxyFlags {
    let argv = std::iter::once("kproxy").chain(args.iter().copied()).map(std::ffi::OsString::from);
    Cli::try_parse_from(flags::normalize_args(argv)).unwrap_or_else(|e| panic!("{args:?}: {e}")).flags
}

fn file(yaml: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("kproxy-config-test-{}-{n}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn with_file(yaml: &str, args: &[&str]) -> Result<Config> {
    let path = file(yaml);
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let result = flags(&all).resolve();
    std::fs::remove_file(path).ok();
    result
}

fn err(r: Result<Config>) -> String {
    format!("{:#}", r.expect_err("an error"))
}

#[test]
fn kubeadms_file_and_daemonset_command_line() {
    let c = with_file(v1alpha1::tests::KUBEADM, &["--hostname-override=Node-A "]).unwrap();
    assert_eq!(c.hostname_override.as_deref(), Some("node-a"), "trimmed and lower-cased, over the file");
    assert_eq!(c.proxy_mode, "nftables");
    assert!(c.warnings.iter().any(|w| w.contains("kproxy runs nftables")), "{:?}", c.warnings);
    assert_eq!((c.sync_period, c.min_sync_period), (Duration::from_secs(30), Duration::from_secs(1)));
    assert_eq!(c.healthz_bind_address.as_deref(), Some("0.0.0.0:10256"));
    assert_eq!(c.metrics_bind_address, "127.0.0.1:10249");
    assert_eq!(c.nodeport, NodePortAddresses { primary: true, ..Default::default() }, "nftables' default");
    assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf")));
    assert_eq!(c.conntrack, crate::sysctls::Conntrack::default());
    assert_eq!(c.oom_score_adj, -999);
    assert_eq!(c.detect_local, DetectLocal::ClusterCidr);
    assert_eq!(c.file.mode, "nftables");
    assert_eq!(c.file.nftables.sync_period.to_string(), "30s");
    assert!(c.file.iptables.sync_period.is_zero());
}

#[test]
fn beside_config_only_logging_hostname_and_master_apply() {
    let c = with_file(
        "kind: KubeProxyConfiguration\nmode: nftables\nclusterCIDR: 10.244.0.0/16\n",
        &["--cluster-cidr", "10.0.0.0/8", "--masquerade-all", "-v=4", "--master", "https://10.0.0.1:6443"],
    )
    .unwrap();
    assert_eq!(c.cluster_cidrs, ["10.244.0.0/16".parse::<IpNet>().unwrap()], "the file's, not the flag's");
    assert!(!c.masquerade_all);
    assert_eq!(c.verbosity, 4);
    assert_eq!(c.master.as_deref(), Some("https://10.0.0.1:6443"));
    for flag in ["--cluster-cidr", "--masquerade-all"] {
        assert!(c.warnings.iter().any(|w| w.starts_with(flag)), "{flag}: {:?}", c.warnings);
    }
}

#[test]
fn without_config_the_flags_fill_the_defaults() {
    let c = flags(&[
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
        "--iptables-sync-period=10s",
        "--iptables-min-sync-period",
        "2s",
        "--masquerade-all",
        "--nodeport-addresses=primary,localhost",
        "--nodeport-addresses",
        "192.168.0.0/16",
        "--oom-score-adj",
        "-500",
        "--healthz-bind-address=10.1.2.3",
        "--conntrack-max-per-core=0",
        "--hostname_override=node-b",
    ])
    .resolve()
    .unwrap();
    assert_eq!(c.cluster_cidrs.len(), 2);
    assert_eq!((c.sync_period, c.min_sync_period), (Duration::from_secs(10), Duration::from_secs(2)));
    assert!(c.masquerade_all);
    assert!(c.nodeport.primary && c.nodeport.localhost);
    assert_eq!(c.nodeport.cidrs, ["192.168.0.0/16".parse::<IpNet>().unwrap()]);
    assert_eq!(c.oom_score_adj, -500);
    assert_eq!(c.healthz_bind_address.as_deref(), Some("10.1.2.3:10256"));
    assert_eq!(c.conntrack.max_per_core, 0);
    assert_eq!(c.hostname_override.as_deref(), Some("node-b"), "--hostname_override is --hostname-override");
    assert!(c.warnings.is_empty(), "kproxy's own default mode is no news: {:?}", c.warnings);
    let c = flags(&["--proxy-mode=iptables"]).resolve().unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("\"iptables\" is not implemented")), "{:?}", c.warnings);
    // IPVS mode reads --ipvs-*, not --iptables-*.
    let c = flags(&["--proxy-mode=ipvs", "--iptables-sync-period=10s", "--ipvs-sync-period=20s"]).resolve().unwrap();
    assert_eq!((c.proxy_mode.as_str(), c.sync_period), ("ipvs", Duration::from_secs(20)));
    assert_eq!(c.min_sync_period, Duration::from_secs(1), "upstream's flag default");
    assert!(c.nodeport.cidrs.is_empty() && !c.nodeport.primary, "IPVS mode's default is every address");
    // The deprecated port flags.
    let c = flags(&["--healthz-port=0", "--metrics-bind-address=0.0.0.0", "--metrics-port=9999"]).resolve().unwrap();
    assert_eq!(c.healthz_bind_address, None, "--healthz-port=0 turns the health server off");
    assert_eq!(c.metrics_bind_address, "0.0.0.0:10249", "the address already has a port");
}

#[test]
fn every_kube_proxy_flag_parses() {
    flags(&[
        "--bind-address=10.0.0.1",
        "--bind-address-hard-fail",
        "--cleanup=false",
        "--config-sync-period=1m",
        "--feature-gates=KubeProxyNFTablesLocalhostNodePorts=true",
        "--init-only=false",
        "--iptables-localhost-nodeports=false",
        "--iptables-masquerade-bit=14",
        "--ipvs-exclude-cidrs=10.0.0.0/8",
        "--ipvs-strict-arp=true",
        "--ipvs-tcp-timeout=1m",
        "--ipvs-tcpfin-timeout=1m",
        "--ipvs-udp-timeout=1m",
        "--kube-api-burst=20",
        "--kube-api-content-type=application/json",
        "--kube-api-qps=10",
        "--log-flush-frequency=5s",
        "--log-json-info-buffer-size=0",
        "--log-json-split-stream",
        "--log-text-info-buffer-size=0",
        "--log-text-split-stream",
        "--logging-format=json",
        "--profiling",
        "--show-hidden-metrics-for-version=1.36",
        "--vmodule=proxier=4",
        "--write-config-to=/dev/null",
    ])
    .resolve()
    .unwrap();
    let c = flags(&["--iptables-localhost-nodeports=false", "--ipvs-scheduler=lc", "--profiling"]).resolve().unwrap();
    for flag in
        ["--iptables-localhost-nodeports has no effect", "--ipvs-scheduler has no effect", "--profiling has no effect"]
    {
        assert!(c.warnings.iter().any(|w| w.starts_with(flag)), "{flag}: {:?}", c.warnings);
    }
    // A boolean takes no separate word, as pflag's.
    let argv = ["kproxy", "--masquerade-all", "false"].map(std::ffi::OsString::from);
    assert!(Cli::try_parse_from(argv).is_err());
}

#[test]
fn upstreams_field_errors() {
    let cases = [
        (
            "nftables: {syncPeriod: 1s, minSyncPeriod: 5s}\nmode: nftables\n",
            "KubeProxyConfiguration.SyncPeriod: Invalid value: \"5s\": must be greater than or equal to KubeProxyConfiguration.MinSyncPeriod",
        ),
        (
            "nodePortAddresses: [primary, 10.0.0.1]\n",
            "KubeProxyConfiguration.NodePortAddresses[1]: Invalid value: \"10.0.0.1\": must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'",
        ),
        (
            "nodePortAddresses: [all, primary, all]\n",
            "KubeProxyConfiguration.NodePortAddresses[2]: Duplicate value: \"all\"",
        ),
        (
            "mode: kernelspace\n",
            "KubeProxyConfiguration.Mode.ProxyMode: Invalid value: \"kernelspace\": must be iptables, ipvs, nftables or blank",
        ),
        (
            "detectLocalMode: BridgeInterface\n",
            "KubeProxyConfiguration.DetectLocalConfiguration.InterfaceName: Invalid value: \"\": must not be empty",
        ),
        ("detectLocalMode: Foo\n", "KubeProxyConfiguration.DetectLocalMode: Unsupported value: \"Foo\""),
        (
            "clusterCIDR: 10.0.0.0/88\n",
            "KubeProxyConfiguration.DetectLocalConfiguration.ClusterCIDRs[0]: Invalid value: \"10.0.0.0/88\"",
        ),
        ("clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n", "must be a either a single CIDR or dual-stack pair of CIDRs"),
        (
            "oomScoreAdj: 1001\n",
            "KubeProxyConfiguration.KubeProxyLinuxConfiguration.OOMScoreAdj: Invalid value: 1001: must be within the range [-1000, 1000]",
        ),
        (
            "metricsBindAddress: \"10.0.0.1:http\"\n",
            "KubeProxyConfiguration.MetricsBindAddress: Invalid value: \"http\": must be a valid port",
        ),
        (
            "bindAddress: nowhere\n",
            "KubeProxyConfiguration.BindAddress: Invalid value: \"nowhere\": not a valid textual representation of an IP address",
        ),
        (
            "mode: nftables\nnftables: {masqueradeBit: 32}\n",
            "KubeProxyConfiguration.KubeProxyNFTablesConfiguration.MasqueradeBit: Invalid value: 32: must be within the range [0, 31]",
        ),
        (
            "conntrack: {min: -1}\n",
            "KubeProxyConfiguration.KubeProxyLinuxConfiguration.KubeProxyConntrackConfiguration.Min: Invalid value: -1: must be greater than or equal to 0",
        ),
    ];
    for (yaml, expected) in cases {
        let e = err(with_file(yaml, &[]));
        assert!(e.contains(expected), "{yaml}:\n{e}\nexpected: {expected}");
    }
    // Two errors at once, as upstream's aggregate.
    let e = err(with_file("oomScoreAdj: 1001\nbindAddress: x\n", &[]));
    assert!(e.contains("[KubeProxyConfiguration.") && e.contains(", KubeProxyConfiguration."), "{e}");
}

#[test]
fn the_ipvs_gate_off_refuses_ipvs_mode() {
    let e = err(flags(&["--proxy-mode=ipvs", "--feature-gates=KubeProxyIPVS=false"]).resolve());
    assert!(e.contains("KubeProxyConfiguration.Mode.ProxyMode: Invalid value: \"ipvs\""), "{e}");
    assert!(flags(&["--proxy-mode=ipvs", "--feature-gates=KubeProxyIPVS=true"]).resolve().is_ok());
    let e = err(flags(&["--feature-gates=KubeProxyIPVS"]).resolve());
    assert!(e.contains("--feature-gates"), "{e}");
}

#[test]
fn modes_read_their_own_sections() {
    let yaml = "kind: KubeProxyConfiguration\nmode: ipvs\nnftables: {syncPeriod: 1m0s}\n\
                ipvs: {scheduler: lc, syncPeriod: 45s, minSyncPeriod: 2s, strictARP: true, excludeCIDRs: []}\n";
    let c = with_file(yaml, &[]).unwrap();
    assert_eq!(c.proxy_mode, "ipvs");
    assert_eq!(c.ipvs_scheduler, "lc");
    assert!(c.ipvs_strict_arp);
    assert_eq!((c.sync_period, c.min_sync_period), (Duration::from_secs(45), Duration::from_secs(2)));
    assert_eq!(with_file("mode: ipvs\n", &[]).unwrap().ipvs_scheduler, "rr");
    let e = err(with_file("mode: ipvs\nipvs: {strictARP: yes please}\n", &[]));
    assert!(e.contains("strictARP"), "{e}");
    // mode "" reads the iptables section (upstream's conversion), then runs nftables.
    let c = with_file("iptables: {syncPeriod: 20s, masqueradeAll: true}\nnftables: {syncPeriod: 50s}\n", &[]).unwrap();
    assert_eq!((c.proxy_mode.as_str(), c.sync_period), ("nftables", Duration::from_secs(20)));
    assert!(c.masquerade_all);
    assert!(c.file.nftables.masquerade_all && !c.file.iptables.masquerade_all);
}

#[test]
fn config_file() {
    let c = with_file(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.244.0.0/16\n\
         mode: nftables\nnodePortAddresses: [192.168.0.0/24]\nnftables: {masqueradeAll: true, syncPeriod: 1m0s}\n\
         iptables: {masqueradeBit: 14}\nconntrack: {maxPerCore: 0, tcpEstablishedTimeout: 2h0m0s}\n\
         clientConnection: {kubeconfig: /var/lib/kproxy/kubeconfig, qps: 5}\nbindAddress: 192.168.0.10\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.conntrack.max_per_core, 0);
    assert_eq!(c.conntrack.tcp_established, Duration::from_secs(7200));
    assert_eq!(c.conntrack.tcp_close_wait, Duration::from_secs(3600), "kube-proxy's default");
    assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/kproxy/kubeconfig")));
    assert_eq!(c.cluster_cidrs, ["10.244.0.0/16".parse::<IpNet>().unwrap()]);
    assert!(c.masquerade_all);
    assert_eq!(c.nodeport.cidrs.len(), 1);
    assert_eq!(c.sync_period, Duration::from_secs(60));
    assert_eq!(c.bind_address, Some("192.168.0.10".parse().unwrap()));
    assert_eq!(with_file("bindAddress: 0.0.0.0\n", &[]).unwrap().bind_address, None, "unspecified: no override");
}

#[test]
fn unknown_fields_warn_and_invalid_values_name_the_field() {
    let c = with_file("clusterCIDR: 10.0.0.0/8\nbogusField: 1\n", &[]).unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("bogusField")), "{:?}", c.warnings);
    let e = err(with_file("nftables: {masqueradeAll: sometimes}\n", &[]));
    assert!(e.contains("masqueradeAll") || e.contains("sometimes"), "{e}");
    let e = err(with_file("nftables: {masqueradeBit: 15}\nmode: nftables\n", &[]));
    assert!(e.contains("kproxy uses bit 14"), "{e}");
}

#[test]
fn nodeport_keywords_expand_per_family() {
    let ips: Vec<IpAddr> = ["192.168.1.5", "::1"].iter().map(|s| s.parse().unwrap()).collect();
    let n = NodePortAddresses::parse(&["primary".into(), "localhost".into()]);
    let nets: Vec<String> = n.expand(&ips).iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["192.168.1.5/32", "127.0.0.0/8", "::1/128"], "a loopback node IP is no primary");
    let all = NodePortAddresses::parse(&["all".into()]);
    assert_eq!(all.expand(&ips).len(), 2);
}

/// kproxy's Maglev flags: defaults when not given (also for a `ProxyFlags` built in code,
/// as `kproxy cleanup` builds one), kept beside `--config`, and a size off the classes is
/// refused.
#[test]
fn maglev_flags_default_apply_with_config_and_are_checked() {
    let defaults = proxy_core::MaglevSettings::default();
    assert_eq!(ProxyFlags::default().resolve().unwrap().maglev, defaults);
    assert_eq!(flags(&[]).resolve().unwrap().maglev, defaults);
    let set = flags(&["--load-balancing=maglev", "--maglev-max-table-size=65521", "--maglev-seed=7"]);
    let want = proxy_core::MaglevSettings { by_default: true, max_table_size: 65521, seed: 7 };
    assert_eq!(set.resolve().unwrap().maglev, want);
    let beside = with_file(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n",
        &["--load-balancing=maglev"],
    )
    .unwrap();
    assert!(beside.maglev.by_default, "kproxy's own flags apply with --config");
    let err = flags(&["--maglev-max-table-size=1000"]).resolve().unwrap_err();
    assert!(err.to_string().contains("--maglev-max-table-size: 1000 is not one of"), "{err}");
}
