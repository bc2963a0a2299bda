//! The file format: upstream's defaulting, lenient unknown fields, the round trip that
//! `--write-config-to` and `/configz` rely on.

use super::*;

/// What kubeadm writes (`kubeadm config print init-defaults --component-configs
/// KubeProxyConfiguration`, v1.37): every field present, zero values included.
pub const KUBEADM: &str = include_str!("../../testdata/kubeadm-kube-proxy-config.yaml");

#[test]
fn kubeadms_zero_values_get_upstreams_defaults() {
    let d = decode(KUBEADM).unwrap();
    assert!(d.unknown_fields.is_empty(), "{:?}", d.unknown_fields);
    let c = d.config;
    assert_eq!(c.healthz_bind_address, "0.0.0.0:10256");
    assert_eq!(c.metrics_bind_address, "127.0.0.1:10249");
    assert_eq!(c.oom_score_adj, Some(-999));
    assert_eq!(c.iptables.sync_period.to_string(), "30s");
    assert_eq!(c.iptables.min_sync_period.to_string(), "1s");
    assert_eq!(c.nftables.sync_period.to_string(), "30s");
    assert_eq!(c.ipvs.sync_period.to_string(), "30s");
    assert_eq!(c.ipvs.min_sync_period.to_string(), "0s", "upstream leaves ipvs.minSyncPeriod alone");
    assert_eq!(c.conntrack.max_per_core, Some(32768));
    assert_eq!(c.conntrack.min, Some(131072));
    assert_eq!(c.conntrack.tcp_established_timeout.unwrap().to_string(), "24h0m0s");
    assert_eq!(c.conntrack.tcp_close_wait_timeout.unwrap().to_string(), "1h0m0s");
    assert_eq!(c.config_sync_period.to_string(), "15m0s");
    assert_eq!(c.client_connection.content_type, "application/vnd.kubernetes.protobuf");
    assert_eq!((c.client_connection.qps, c.client_connection.burst), (5.0, 10));
    assert_eq!(c.client_connection.kubeconfig, "/var/lib/kube-proxy/kubeconfig.conf");
    assert_eq!(c.logging.format, "text");
    assert_eq!(c.logging.flush_frequency.to_string(), "5s");
    assert_eq!(c.iptables.masquerade_bit, Some(14));
    assert_eq!(c.iptables.localhost_node_ports, Some(true));
}

#[test]
fn explicit_zeros_that_mean_something_stay() {
    let c = decode("conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s}\noomScoreAdj: 0\n").unwrap().config;
    assert_eq!(c.conntrack.max_per_core, Some(0), "0 leaves the table size alone");
    assert_eq!(c.conntrack.tcp_established_timeout, Some(GoDuration::default()));
    assert_eq!(c.oom_score_adj, Some(0));
}

#[test]
fn ipv6_bind_address_moves_the_default_listeners() {
    let c = decode("bindAddress: \"::\"\n").unwrap().config;
    assert_eq!(c.healthz_bind_address, "[::]:10256");
    assert_eq!(c.metrics_bind_address, "[::1]:10249");
    let c = decode("healthzBindAddress: 10.0.0.1\nmetricsBindAddress: \"::1\"\n").unwrap().config;
    assert_eq!(c.healthz_bind_address, "10.0.0.1:10256", "a bare IP takes the default port");
    assert_eq!(c.metrics_bind_address, "[::1]:10249");
}

#[test]
fn unknown_fields_are_reported_not_fatal() {
    let d = decode("kind: KubeProxyConfiguration\nclusterCIDRs: 10.0.0.0/8\nnftables: {bogus: 1}\n").unwrap();
    assert_eq!(d.unknown_fields, ["clusterCIDRs", "nftables.bogus"]);
}

#[test]
fn another_kind_or_version_is_refused() {
    let e = decode("apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n").err().unwrap();
    assert!(e.to_string().contains("v1beta1"), "{e}");
    let e = decode("kind: KubeletConfiguration\n").err().unwrap();
    assert!(e.to_string().contains("KubeletConfiguration"), "{e}");
    let e = decode("mode: [\n").err().unwrap();
    assert!(matches!(e, DecodeError::Syntax(_)), "{e}");
    let e = decode("syncPeriod: 5 minutes\nnftables: {syncPeriod: 5 minutes}\n").err().unwrap();
    assert!(e.to_string().contains("5 minutes"), "{e}");
}

#[test]
fn what_is_written_reads_back_the_same() {
    let c = decode(KUBEADM).unwrap().config;
    let yaml = c.to_yaml();
    assert!(yaml.contains("apiVersion: kubeproxy.config.k8s.io/v1alpha1"), "{yaml}");
    assert!(yaml.contains("syncPeriod: 30s"), "{yaml}");
    let again = decode(&yaml).unwrap();
    assert!(again.unknown_fields.is_empty(), "{:?}", again.unknown_fields);
    assert_eq!(again.config, c);
}

#[test]
fn periods_live_in_the_active_modes_section() {
    let mut c = decode("mode: nftables\n").unwrap().config;
    c.set_periods(GoDuration(Duration::from_secs(10)), GoDuration(Duration::from_secs(2)));
    assert_eq!(c.periods(), (GoDuration(Duration::from_secs(10)), GoDuration(Duration::from_secs(2))));
    assert!(c.iptables.sync_period.is_zero() && c.ipvs.sync_period.is_zero());
}
