//! Crash consistency: `kill -9` of the daemon during its cold start and during bursts of
//! partial syncs, then a start that must converge to exactly the desired state: the tables
//! a one-shot `kproxy sync` of the same manifests writes in a fresh namespace, element for
//! element, with no stale element, chain or map left.
//!
//! Every nftables commit is one atomic batch, so a kill leaves the kernel with the last
//! committed state; the next start's full sync replaces it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, in_sandbox, sh, wait_for};

const SERVICES: usize = 1500;

/// A cluster of `SERVICES` Services in generation `g`: every seventh (shifted by `g`) is
/// missing, every third has endpoints that move with `g`, every fifth has ClientIP
/// affinity (chains and sets of its own), every tenth is a NodePort, every fourth is UDP.
fn cluster(g: usize) -> String {
    let mut out = String::new();
    for i in (0..SERVICES).filter(|i| !(i + g).is_multiple_of(7)) {
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

        // Killed at points spread over a cold start: reading the manifests takes about
        // 0.5 s in a debug build here, the first full sync (1,285 service ports, one
        // batch) about 0.15 s after that.
        for ms in [0, 100, 300, 500, 560, 620, 680, 750] {
            kill_after(Daemon::start(&dir), ms);
        }
        // Killed during bursts of partial syncs: the manifests change every 40 ms.
        let mut g = 0;
        for ms in [90, 170, 330] {
            let daemon = Daemon::start(&dir);
            wait_for("a table", Duration::from_secs(30), table_exists);
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
        wait_for("the restarted daemon converges to the reference", Duration::from_secs(30), converged);
        let _ = std::fs::remove_dir_all(&root);
    });
}
