//! `kproxy run --manifests DIR` in a throwaway node: edits converge, a foreign flush is
//! repaired within a second, a restart under continuous traffic loses nothing, and a bad
//! configuration is refused with a clear message; the conntrack sysctls are set; UDP
//! flows survive restarts and leave with their Service.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

/// kubeadm's KubeProxyConfiguration.
const KUBEADM: &str = include_str!("../testdata/kubeadm-kube-proxy-config.yaml");

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.244.0.11], nodeName: node-a}
  - {addresses: [10.244.0.12], nodeName: node-a}
"#;

fn table_exists() -> bool {
    Command::new("nft").args(["list", "table", "ip", "kproxy"]).output().is_ok_and(|o| o.status.success())
}

fn write(node: &Node, yaml: &str) -> std::path::PathBuf {
    let dir = node.dir.join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
    dir
}

#[test]
fn edits_converge_and_drift_is_repaired() {
    in_sandbox("edits_converge_and_drift_is_repaired", || {
        let node = Node::new();
        let dir = write(&node, WEB);
        let _daemon = Daemon::start(&dir);
        wait_for("first sync", Duration::from_secs(10), table_exists);
        let all = ["pod1", "pod2"].iter().map(|s| s.to_string()).collect();
        assert_reaches(Some("client"), "10.96.0.10:80", false, &all);

        // An edit: pod1 leaves. Within a couple of seconds only pod2 answers.
        write(&node, &WEB.replace("  - {addresses: [10.244.0.11], nodeName: node-a}\n", ""));
        wait_for("the edit", Duration::from_secs(5), || {
            sh("nft list ruleset").contains("10.244.0.12") && !sh("nft list ruleset").contains("10.244.0.11")
        });
        let replies = requests(12, Some("client"), "10.96.0.10:80", false);
        assert!(replies.iter().all(|r| matches!(r, Reply::From { pod, .. } if pod == "pod2")), "{replies:?}");

        // A file caught half-written keeps its previous contents: nothing is removed.
        std::fs::write(
            dir.join("cluster.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: default, name: [",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        assert!(matches!(request(Some("client"), "10.96.0.10:80", false, None), Reply::From { .. }));
        write(&node, &WEB.replace("  - {addresses: [10.244.0.11], nodeName: node-a}\n", ""));

        // Someone flushes the whole ruleset: repaired in under a second.
        sh("nft flush ruleset");
        let took = wait_for("repair after nft flush ruleset", Duration::from_secs(1), table_exists);
        eprintln!("repaired in {took:?}");
        wait_for("service reachable again", Duration::from_secs(1), || {
            matches!(request(Some("client"), "10.96.0.10:80", false, None), Reply::From { .. })
        });
    });
}

#[test]
fn restart_under_traffic_loses_no_connection() {
    in_sandbox("restart_under_traffic_loses_no_connection", || {
        let node = Node::new();
        let dir = write(&node, WEB);
        let daemon = Daemon::start(&dir);
        wait_for("first sync", Duration::from_secs(10), table_exists);

        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut replies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    replies.push(request(Some("client"), "10.96.0.10:80", false, None));
                }
                replies
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        drop(daemon); // killed: the rules stay
        std::thread::sleep(Duration::from_millis(500));
        let _restarted = Daemon::start(&dir);
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let replies = traffic.join().unwrap();
        assert!(replies.len() >= 10, "too little traffic: {}", replies.len());
        assert!(replies.iter().all(|r| matches!(r, Reply::From { .. })), "{replies:?}");
    });
}

#[test]
fn a_bad_config_exits_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("kproxy-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\nclusterCIDR: 10.0.0.0/88\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(["run", "--manifests"])
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ClusterCIDRs[0]") && stderr.contains("10.0.0.0/88") && stderr.contains("config.yaml"),
        "{stderr}"
    );
}

/// kube-proxy's own DaemonSet command line (no subcommand) with kubeadm's config file: the
/// daemon starts, serves its health port, writes `oom_score_adj` or says why it could not,
/// and exits promptly on SIGTERM, leaving the rules in place.
#[test]
fn kube_proxys_command_line_and_sigterm() {
    in_sandbox("kube_proxys_command_line_and_sigterm", || {
        let node = Node::new();
        let dir = write(&node, WEB);
        let config = node.dir.join("config.conf");
        // kubeadm's file, with the test's manifests instead of an API server.
        std::fs::write(&config, KUBEADM.replace("clusterCIDR: \"\"", "clusterCIDR: 10.244.0.0/16")).unwrap();
        let log = node.dir.join("kproxy.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .arg("--config")
            .arg(&config)
            .arg("--hostname-override=Node-A")
            .arg("--manifests")
            .arg(&dir)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for("first sync", Duration::from_secs(10), table_exists);
        wait_for("healthz", Duration::from_secs(5), || get_ok("127.0.0.1:10256", "/healthz"));
        let all = ["pod1", "pod2"].iter().map(|s| s.to_string()).collect();
        assert_reaches(Some("client"), "10.96.0.10:80", false, &all);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "no exit within 2 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{status:?}\n{log}");
        assert!(table_exists(), "the rules outlive the process");
        assert!(log.contains("kproxy runs nftables"), "mode \"\" is announced:\n{log}");
        // Root without CAP_SYS_RESOURCE cannot lower its OOM score: logged, not fatal.
        assert!(log.contains("oom_score_adj"), "{log}");
    });
}

fn get_ok(addr: &str, path: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok() && get(addr, path).0 == 200
}

/// The whole HTTP response, headers included.
/// While drift detection runs, the periodic syncs (every `--sync-period`) are partial, as
/// in upstream's nftables mode: nothing changed, so they write nothing, and the only full
/// sync is the first. (Drift itself is repaired at once: see above.)
#[test]
fn periodic_syncs_are_partial_while_drift_is_watched() {
    in_sandbox("periodic_syncs_are_partial_while_drift_is_watched", || {
        let node = Node::new();
        let dir = write(&node, WEB);
        let _daemon = Daemon::start_with(&dir, &["--sync-period", "300ms"]);
        wait_for("first sync", Duration::from_secs(10), table_exists);
        let count = |name: &str| -> u64 {
            let (_, metrics) = get("127.0.0.1:10249", "/metrics");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix("{ip_family=\"IPv4\"} ")?.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        wait_for("metrics served", Duration::from_secs(5), || std::net::TcpStream::connect("127.0.0.1:10249").is_ok());
        wait_for("four syncs", Duration::from_secs(5), || {
            count("kubeproxy_sync_proxy_rules_duration_seconds_count") >= 4
        });
        assert_eq!(count("kubeproxy_sync_full_proxy_rules_duration_seconds_count"), 1, "only the first sync is full");
    });
}

#[test]
fn health_and_metrics_endpoints() {
    in_sandbox("health_and_metrics_endpoints", || {
        let node = Node::new();
        let dir = write(&node, WEB);
        let _daemon = Daemon::start(&dir);
        wait_for("first sync", Duration::from_secs(10), table_exists);
        wait_for("healthz listening", Duration::from_secs(5), || {
            std::net::TcpStream::connect("127.0.0.1:10256").is_ok()
        });

        let (code, body) = get("127.0.0.1:10256", "/healthz");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""nodeEligible":true,"healthy":true"#) && body.contains("lastUpdated"), "{body}");
        assert_eq!(get("127.0.0.1:10256", "/livez").0, 200);
        assert_eq!(get("127.0.0.1:10256", "/nope").0, 404);
        // As Go's 0.0.0.0 listener: IPv6 too, and upstream's headers.
        assert_eq!(get("[::1]:10256", "/livez").0, 200, "the health port answers over IPv6");
        let raw = get_raw("127.0.0.1:10256", "/healthz");
        assert!(
            raw.contains("X-Content-Type-Options: nosniff") && raw.contains("Content-Type: application/json"),
            "{raw}"
        );
        // The metrics port's other routes.
        assert_eq!(get("127.0.0.1:10249", "/proxyMode"), (200, "nftables".into()));
        assert_eq!(get("127.0.0.1:10249", "/healthz"), (200, "ok".into()));
        let (code, configz) = get("127.0.0.1:10249", "/configz");
        let configz: serde_json::Value = serde_json::from_str(&configz).unwrap();
        assert_eq!(code, 200);
        let c = &configz["kubeproxy.config.k8s.io"];
        assert_eq!(
            (c["mode"].as_str(), c["clusterCIDR"].as_str()),
            (Some("nftables"), Some("10.244.0.0/16")),
            "{configz}"
        );
        assert_eq!(c["nodePortAddresses"], serde_json::json!(["primary"]));

        let (code, metrics) = get("127.0.0.1:10249", "/metrics");
        assert_eq!(code, 200);
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"}",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"}",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "kubeproxy_proxy_healthz_total{code=\"200\"}",
            "kproxy_drift_repairs_total",
            "kproxy_transaction_bytes",
        ] {
            assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
        }

        // The node is about to be deleted: /healthz says 503 so load balancers drain it;
        // /livez ignores node eligibility.
        let node_yaml = "\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}\n";
        write(&node, &format!("{WEB}{node_yaml}"));
        wait_for("healthz 503", Duration::from_secs(3), || get("127.0.0.1:10256", "/healthz").0 == 503);
        assert_eq!(get("127.0.0.1:10256", "/livez").0, 200);
    });
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}")).unwrap_or_default().trim().to_string()
}

#[test]
fn conntrack_sysctls_are_set_at_start() {
    in_sandbox("conntrack_sysctls_are_set_at_start", || {
        let node = Node::new();
        let dir = write(&node, WEB);
        std::fs::write("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established", "1000\n").unwrap();
        let flags = [
            "--conntrack-tcp-timeout-close-wait",
            "30m",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout",
            "45s",
        ];
        let _daemon = Daemon::start_with(&dir, &flags);
        wait_for("first sync", Duration::from_secs(10), table_exists);
        // kube-proxy's default for established connections, and the flags.
        assert_eq!(sysctl("nf_conntrack_tcp_timeout_established"), "86400");
        assert_eq!(sysctl("nf_conntrack_tcp_timeout_close_wait"), "1800");
        assert_eq!(sysctl("nf_conntrack_tcp_be_liberal"), "1");
        assert_eq!(sysctl("nf_conntrack_udp_timeout"), "45");
    });
}

const LOCAL_LB: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.70
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, nodePort: 30070}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.70}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: lb-1, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.0.11], nodeName: NODE}]
"#;

#[test]
fn health_check_node_port_follows_local_endpoints() {
    in_sandbox("health_check_node_port_follows_local_endpoints", || {
        let node = Node::new();
        let dir = write(&node, &LOCAL_LB.replace("NODE", "node-a"));
        let _daemon = Daemon::start(&dir);
        let hc = format!("{NODE_IP}:32000");
        wait_for("health check server", Duration::from_secs(10), || std::net::TcpStream::connect(&hc).is_ok());
        let (code, body) = get(&hc, "/");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""name": "lb""#) && body.contains(r#""localEndpoints": 1"#), "{body}");
        assert!(body.contains(r#""serviceProxyHealthy": true"#), "{body}");
        let raw = get_raw(&hc, "/any/path");
        assert!(raw.contains("X-Load-Balancing-Endpoint-Weight: 1") && raw.contains("nosniff"), "{raw}");

        // The endpoint moves to another node: this node must be drained.
        write(&node, &LOCAL_LB.replace("NODE", "node-b"));
        wait_for("health check 503", Duration::from_secs(5), || get(&hc, "/").0 == 503);
        assert!(get(&hc, "/").1.contains(r#""localEndpoints": 0"#));
    });
}

/// What kube-proxy's iptables mode leaves on a node (trimmed): its chains with a stale
/// DNAT for the web Service to a pod that is gone, and the kubelet's chains.
const KUBE_PROXY_IPTABLES: &str = "\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-GONE - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB -j KUBE-SEP-GONE
-A KUBE-SEP-GONE -p tcp -m tcp -j DNAT --to-destination 10.244.0.99:8080
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
COMMIT
";

/// An image swap on a node that ran kube-proxy in iptables mode and then nftables mode:
/// kproxy removes kube-proxy's chains and tables once its own rules are in, and keeps the
/// kubelet's chains; the stale DNAT no longer steals the Service's traffic.
#[test]
fn kube_proxys_leftovers_go_after_the_first_commit() {
    in_sandbox("kube_proxys_leftovers_go_after_the_first_commit", || {
        if Command::new("iptables-restore").arg("--version").output().is_err() {
            panic!("iptables-restore is needed (scripts/deps.sh installs iptables)");
        }
        let node = Node::new();
        let mut restore = Command::new("iptables-restore").stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        restore.stdin.take().unwrap().write_all(KUBE_PROXY_IPTABLES.as_bytes()).unwrap();
        assert!(restore.wait().unwrap().success());
        sh("nft add table ip kube-proxy && nft add table ip6 kube-proxy");
        let save = || sh("iptables-save");
        assert!(save().contains("KUBE-SEP-GONE"));
        let dir = write(&node, WEB);
        let _daemon = Daemon::start(&dir);
        wait_for("first sync", Duration::from_secs(10), table_exists);
        wait_for("kube-proxy's chains removed", Duration::from_secs(5), || !save().contains("KUBE-SERVICES"));
        let left = save();
        for gone in
            ["KUBE-SVC-WEB", "KUBE-SEP-GONE", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FORWARD", "KUBE-PROXY-CANARY"]
        {
            assert!(!left.contains(gone), "{gone} is still there:\n{left}");
        }
        for kept in ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "-A INPUT -j KUBE-FIREWALL"] {
            assert!(left.contains(kept), "the kubelet's {kept} is gone:\n{left}");
        }
        let tables = sh("nft list tables");
        assert!(!tables.contains("kube-proxy"), "{tables}");
        let all = ["pod1", "pod2"].iter().map(|s| s.to_string()).collect();
        assert_reaches(Some("client"), "10.96.0.10:80", false, &all);
    });
}

/// `kproxy --cleanup`, as kube-proxy's: kproxy's rules and every kube-proxy mode's go, the
/// kubelet's chains stay, and it exits 0.
#[test]
fn cleanup_flag_removes_every_modes_rules() {
    in_sandbox("cleanup_flag_removes_every_modes_rules", || {
        let node = Node::new();
        node.sync(WEB, &[]);
        let mut restore = Command::new("iptables-restore").stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        restore.stdin.take().unwrap().write_all(KUBE_PROXY_IPTABLES.as_bytes()).unwrap();
        assert!(restore.wait().unwrap().success());
        sh("nft add table ip kube-proxy");
        let out = Command::new(env!("CARGO_BIN_EXE_kproxy")).arg("--cleanup").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let tables = sh("nft list tables");
        assert!(!tables.contains("kproxy") && !tables.contains("kube-proxy"), "{tables}");
        let left = sh("iptables-save");
        assert!(!left.contains("KUBE-SERVICES") && left.contains("KUBE-FIREWALL"), "{left}");
    });
}

/// A port already taken does not stop the daemon: it syncs, and binds once the port is
/// free (upstream retries every 5 s too); with --bind-address-hard-fail it exits.
#[test]
fn a_taken_metrics_port_is_retried_not_fatal() {
    in_sandbox("a_taken_metrics_port_is_retried_not_fatal", || {
        let node = Node::new();
        let dir = write(&node, WEB);
        let squatter = std::net::TcpListener::bind("127.0.0.1:10249").unwrap();
        // With --bind-address-hard-fail, it is fatal, as upstream.
        let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .args(["--bind-address-hard-fail", "--hostname-override", "node-a", "--manifests"])
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("metrics server failed"), "{stderr}");
        assert!(!table_exists(), "nothing programmed");
        let _daemon = Daemon::start(&dir);
        wait_for("first sync", Duration::from_secs(10), table_exists);
        drop(squatter);
        wait_for("metrics bound on retry", Duration::from_secs(8), || get_ok("127.0.0.1:10249", "/healthz"));
    });
}

/// NodeCIDR local detection waits for the Node's podCIDRs before programming anything, as
/// upstream; a changed `--config` file makes the daemon exit (to be restarted with it).
#[test]
fn node_cidr_waits_for_pod_cidrs_and_a_config_change_exits() {
    in_sandbox("node_cidr_waits_for_pod_cidrs_and_a_config_change_exits", || {
        let node = Node::new();
        let no_cidrs = format!("{WEB}---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\n");
        let dir = write(&node, &no_cidrs);
        let config = node.dir.join("config.yaml");
        std::fs::write(&config, "kind: KubeProxyConfiguration\nmode: nftables\ndetectLocalMode: NodeCIDR\n").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .args(["run", "--hostname-override", "node-a", "--min-sync-period", "100ms", "--manifests"])
            .arg(&dir)
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!table_exists(), "nothing is programmed before the Node has podCIDRs");
        write(&node, &format!("{no_cidrs}spec: {{podCIDRs: [10.244.0.0/24]}}\n"));
        wait_for("first sync once podCIDRs are known", Duration::from_secs(5), table_exists);
        assert!(sh("nft list table ip kproxy").contains("10.244.0.0/24"), "the detector uses the podCIDR");
        std::fs::write(&config, "kind: KubeProxyConfiguration\nmode: nftables\ndetectLocalMode: ClusterCIDR\n")
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no exit after the config file changed");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "exits with an error, as kube-proxy: {status:?}");
    });
}

/// The dns Service of [`CLUSTER`].
const DNS_SERVICE: &str = "---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: dns}
spec:
  clusterIP: 10.96.0.53
  ports: [{name: dns, port: 53, protocol: UDP}]
";

/// The conntrack entries of UDP flows to `dst`, as the `conntrack` tool lists them.
fn udp_entries(dst: &str) -> usize {
    sh(&format!("conntrack -L -p udp --orig-dst {dst} 2>/dev/null")).lines().count()
}

/// Conntrack cleanups the running daemon has finished (its reconciler histogram's count).
fn cleanups() -> u64 {
    let Ok(_) = std::net::TcpStream::connect("127.0.0.1:10249") else { return 0 };
    let (_, metrics) = get("127.0.0.1:10249", "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("kubeproxy_conntrack_reconciler_sync_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// A restart clears no conntrack entry of a live UDP flow (upstream flushes every UDP
/// Service's entries at start, k#122740); a deleted UDP Service's DNATed flow is cleared
/// at the next sync (upstream leaves it going to the old endpoint, k#141371).
#[test]
fn udp_flows_survive_restarts_and_leave_with_their_service() {
    in_sandbox("udp_flows_survive_restarts_and_leave_with_their_service", || {
        let node = Node::new();
        assert!(CLUSTER.contains(DNS_SERVICE));
        let dir = write(&node, CLUSTER);
        let daemon = Daemon::start(&dir);
        wait_for("first cleanup", Duration::from_secs(10), || cleanups() >= 1);
        let flow = || udp_flow(Some("client"), "10.96.0.53:53", "10.200.0.2:40053");
        let Reply::From { pod: first, .. } = flow() else { panic!("no answer from the UDP Service") };
        assert_eq!(udp_entries("10.96.0.53"), 1);

        drop(daemon);
        let _daemon = Daemon::start(&dir);
        wait_for("the new process's first cleanup", Duration::from_secs(10), || cleanups() >= 1);
        assert_eq!(udp_entries("10.96.0.53"), 1, "a restart cleared a live flow's entry");
        let again = flow();
        assert!(
            matches!(&again, Reply::From { pod, .. } if *pod == first),
            "the flow kept its endpoint {first}: {again:?}"
        );

        write(&node, &CLUSTER.replace(DNS_SERVICE, ""));
        wait_for("the deleted Service's flow cleared", Duration::from_secs(5), || udp_entries("10.96.0.53") == 0);
    });
}

/// One family failing does not take the other down (a real fault: another process owns
/// `table ip6 kproxy`, so every write to it is refused with EPERM). IPv4 Services are
/// programmed and follow edits; the failures are counted for IPv6 only; once the owner
/// lets go, the next retry writes the ip6 table.
#[test]
fn an_ip6_table_that_cannot_be_written_leaves_ipv4_working() {
    in_sandbox("an_ip6_table_that_cannot_be_written_leaves_ipv4_working", || {
        let node = Node::new();
        // An `nft -i` session creates the table with the owner flag and holds it while its
        // stdin stays open.
        let mut owner = Command::new("nft")
            .arg("-i")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = owner.stdin.take().unwrap();
        stdin.write_all(b"add table ip6 kproxy { flags owner; }\n").unwrap();
        stdin.flush().unwrap();
        wait_for("the owned table", Duration::from_secs(5), || sh("nft list tables").contains("ip6 kproxy"));

        let dir = write(&node, WEB);
        let _daemon = Daemon::start(&dir);
        wait_for("the ip table", Duration::from_secs(10), table_exists);
        assert_reaches(Some("client"), "10.96.0.10:80", false, &both());
        let failures = |family: &str| {
            let (_, metrics) = get("127.0.0.1:10249", "/metrics");
            let series = format!("kubeproxy_sync_proxy_rules_nftables_sync_failures_total{{ip_family=\"{family}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse::<f64>().ok())
        };
        wait_for("an IPv6 failure counted", Duration::from_secs(10), || failures("IPv6").is_some_and(|n| n >= 1.0));
        assert_eq!(failures("IPv4"), Some(0.0), "IPv4 never failed");
        let last_sync = |family: &str| {
            let (_, metrics) = get("127.0.0.1:10249", "/metrics");
            let series = format!("kubeproxy_sync_proxy_rules_last_timestamp_seconds{{ip_family=\"{family}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse::<f64>().ok())
        };
        let ipv4_synced = last_sync("IPv4").expect("IPv4's syncs are recorded while IPv6 fails");
        assert!(last_sync("IPv6").is_none_or(|t| t == 0.0), "IPv6 never synced");

        // IPv4 keeps following edits while IPv6 fails: pod2 leaves the Service.
        std::fs::write(dir.join("cluster.yaml"), WEB.replace("  - {addresses: [10.244.0.12], nodeName: node-a}\n", ""))
            .unwrap();
        // The retry that carries the edit records IPv4's sync (only the failing family's
        // metrics stand still), and the edit is in the kernel.
        wait_for("IPv4's last sync advanced while IPv6 fails", Duration::from_secs(10), || {
            last_sync("IPv4").is_some_and(|t| t > ipv4_synced)
        });
        let pod1: std::collections::BTreeSet<String> = ["pod1".to_string()].into();
        wait_for("the edit applied", Duration::from_secs(10), || {
            pods(&requests(6, Some("client"), "10.96.0.10:80", false)) == pod1
        });
        assert!(!sh("nft list table ip6 kproxy").contains("chain"), "the owned table is untouched");

        // The owner lets go: the next retry (backoff of a few seconds) writes the ip6 table.
        drop(stdin);
        let _ = owner.wait();
        wait_for("the ip6 table written", Duration::from_secs(40), || {
            Command::new("nft")
                .args(["list", "table", "ip6", "kproxy"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("chain services"))
        });
        assert_eq!(failures("IPv4"), Some(0.0));
    });
}
