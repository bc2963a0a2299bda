//! Crash consistency: `kill -9` of the daemon during its cold start and during bursts of
//! partial syncs, then a start that must converge to exactly the desired state: the tables
//! a one-shot `kproxy sync` of the same manifests writes in a fresh namespace, element for
//! element, with no stale element, chain or map left.
//!
//! Every nftables commit is one atomic batch, so a kill leaves the kernel with the last
//! committed state; the next start's full sync replaces it.
//!
//! `KPROXY_CRASH_SERVICES=44000 cargo test -p kproxy --test crash -- --nocapture` runs it at
//! 44k Services (minutes, in a debug build; docs/reliability.md has the figures).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, in_sandbox, sh, wait_for};

/// The cluster's size: 1,500 Services, or `KPROXY_CRASH_SERVICES` (44000 for the run in
/// docs/reliability.md).
fn services() -> usize {
    std::env::var("KPROXY_CRASH_SERVICES").ok().and_then(|n| n.parse().ok()).unwrap_or(1500)
}

/// A cluster of [`services()`] Services in generation `g`: every seventh (shifted by `g`) is
/// missing, every third has endpoints that move with `g`, every fifth has ClientIP
/// affinity (chains and sets of its own), every tenth is a NodePort, every fourth is UDP.
fn cluster(g: usize) -> String {
    let mut out = String::new();
    for i in (0..services()).filter(|i| !(i + g).is_multiple_of(7)) {
        let (a, b) = (i / 250, i % 250);
        let proto = if i.is_multiple_of(4) { "UDP" } else { "TCP" };
        let kind = if i.is_multiple_of(10) { "NodePort" } else { "ClusterIP" };
        let node_port = if i.is_multiple_of(10) { format!(", nodePort: {}", 30000 + i / 10) } else { String::new() };
        let affinity = if i.is_multiple_of(5) { "\n  sessionAffinity: ClientIP" } else { "" };
        let shift = if i.is_multiple_of(3) { g % 4 } else { 0 };
        out += &format!(
            "---
apiVersion: v1
kind: Service
metadata: {{namespace: ns{}, name: svc{i}}}
spec:
  type: {kind}
  clusterIP: 10.96.{a}.{b}{affinity}
  ports: [{{name: p, port: 80, protocol: {proto}{node_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{namespace: ns{}, name: svc{i}-1, labels: {{kubernetes.io/service-name: svc{i}}}}}
addressType: IPv4
ports: [{{name: p, port: 8080, protocol: {proto}}}]
endpoints:
  - {{addresses: [10.244.{a}.{}], nodeName: node-a}}
  - {{addresses: [10.244.{a}.{}], nodeName: node-b}}
",
            i % 10,
            i % 10,
            b % 120 + shift,
            b % 120 + 125 + shift,
        );
    }
    out
}

/// The table of a family as JSON with what may differ between two equal tables removed:
/// handles, the metainfo, and the order of objects and set elements.
fn canonical(netns: Option<&str>, family: &str) -> Option<serde_json::Value> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    };
    let out = cmd.args(["-j", "list", "table", family, "kproxy"]).stderr(Stdio::null()).output().unwrap();
    if !out.status.success() {
        return None;
    }
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    strip(&mut json);
    let objects = json["nftables"].as_array_mut().unwrap();
    objects.retain(|o| o.get("metainfo").is_none());
    objects.sort_by_cached_key(|o| o.to_string());
    Some(json)
}

fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("handle");
            for (key, inner) in map.iter_mut() {
                strip(inner);
                if key == "elem"
                    && let Some(list) = inner.as_array_mut()
                {
                    list.sort_by_cached_key(|e| e.to_string());
                }
            }
        }
        serde_json::Value::Array(list) => list.iter_mut().for_each(strip),
        _ => {}
    }
}

fn table_exists() -> bool {
    Command::new("nft").args(["list", "table", "ip", "kproxy"]).output().is_ok_and(|o| o.status.success())
}

fn write(dir: &std::path::Path, g: usize) {
    // Written whole and renamed, as a ConfigMap's files are swapped: the watcher never
    // reads half a file.
    let tmp = dir.with_extension("tmp");
    std::fs::write(&tmp, cluster(g)).unwrap();
    std::fs::rename(&tmp, dir.join("cluster.yaml")).unwrap();
}

fn kill_after(daemon: Daemon, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    drop(daemon); // SIGKILL, then wait
}

#[test]
fn kill_dash_nine_anywhere_then_a_start_converges_exactly() {
    in_sandbox("kill_dash_nine_anywhere_then_a_start_converges_exactly", || {
        let root = std::env::temp_dir().join(format!("kproxy-crash-{}", std::process::id()));
        let dir = root.join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, 0);

        // One cold start, timed to its first commit; then kills at points spread over a
        // cold start (reading the manifests, then the first full sync), from scratch
        // (no table) and over the tables a killed run left.
        let start = Instant::now();
        let daemon = Daemon::start(&dir);
        wait_for("a first sync", Duration::from_secs(600), table_exists);
        let cold = start.elapsed();
        drop(daemon);
        for (i, tenths) in [0, 2, 4, 6, 7, 8, 9, 10, 12].into_iter().enumerate() {
            if i % 2 == 0 {
                sh("nft delete table ip kproxy 2>/dev/null; nft delete table ip6 kproxy 2>/dev/null; true");
            }
            kill_after(Daemon::start(&dir), (cold * tenths / 10).as_millis() as u64);
        }
        // Killed during bursts of partial syncs: the manifests change every 40 ms.
        let mut g = 0;
        for ms in [90, 170, 330] {
            let daemon = Daemon::start(&dir);
            wait_for("a table", Duration::from_secs(600), table_exists);
            for _ in 0..ms / 40 {
                g += 1;
                write(&dir, g);
                std::thread::sleep(Duration::from_millis(40));
            }
            kill_after(daemon, ms % 40);
        }

        // What the manifests ask for, from scratch, in a namespace of its own.
        sh("ip netns add reference");
        let out = Command::new("ip")
            .args(["netns", "exec", "reference", env!("CARGO_BIN_EXE_kproxy"), "sync", "--manifests"])
            .arg(&dir)
            .args(["--hostname-override", "node-a", "--cluster-cidr", "10.244.0.0/16"])
            .output()
            .unwrap();
        assert!(out.status.success(), "reference sync: {}", String::from_utf8_lossy(&out.stderr));
        let want = ["ip", "ip6"].map(|f| canonical(Some("reference"), f).expect("reference table"));

        let _daemon = Daemon::start(&dir);
        let converged = || ["ip", "ip6"].map(|f| canonical(None, f)) == want.clone().map(Some);
        let took =
            wait_for("the restarted daemon converges to the reference", cold * 4 + Duration::from_secs(30), converged);
        eprintln!("{} Services: cold start {cold:?}; converged {took:?} after the last start", services());
        let _ = std::fs::remove_dir_all(&root);
    });
}
