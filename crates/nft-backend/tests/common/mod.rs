//! Kernel-test helpers: run a test body inside a fresh network namespace, and load the
//! fixture cluster.
#![allow(dead_code, missing_docs)]

use std::process::Command;

use proxy_core::manifest::{self, Object};
use proxy_core::{Desired, Engine, LocalDetectMode, NodeContext, ingest};

const IN_NETNS: &str = "KPROXY_TEST_IN_NETNS";

/// Runs `body` in a new user + network namespace, by re-running this test binary (only
/// this test) under `unshare -rn`: a multi-threaded test harness cannot `unshare` itself.
/// Works as root and as a plain user; the host's own namespace is never touched.
#[track_caller]
pub fn in_netns(test: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_NETNS).is_some() {
        Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
        body();
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    // As root, a plain network namespace keeps CAP_NET_ADMIN over the initial user
    // namespace, which large batches need (SO_SNDBUFFORCE); otherwise map ourselves to
    // root in a new user namespace.
    let flags = if nix_is_root() { "-n" } else { "-rn" };
    let out = Command::new("unshare")
        .args([flags, "--"])
        .arg(exe)
        // `--include-ignored`: tests that need what this kernel lacks are ignored unless
        // asked for (in the VM of testbed/vm/), and were asked for if they got here.
        .args(["--exact", test, "--nocapture", "--test-threads=1", "--include-ignored"])
        .env(IN_NETNS, "1")
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in its network namespace:\n{stdout}\n{stderr}"
    );
}

fn nix_is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a shell command (in the current namespace), returning stdout; panics on failure.
#[track_caller]
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node of the fixture: upstream's test node.
pub fn node() -> NodeContext {
    let mut node = NodeContext::new("test-node");
    node.node_ips = ["192.168.0.2", "192.168.1.2", "2001:db8::1"].iter().map(|s| s.parse().unwrap()).collect();
    node.nodeport_addresses = vec!["192.168.0.2/32".parse().unwrap(), "2001:db8::1/128".parse().unwrap()];
    node.local_detect =
        LocalDetectMode::ClusterCidr(vec!["10.0.0.0/8".parse().unwrap(), "fd00:10::/64".parse().unwrap()]);
    node.service_cidrs = vec!["172.30.0.0/16".parse().unwrap(), "fd00:10:96::/112".parse().unwrap()];
    node
}

/// An engine loaded with a manifest text, planned once.
pub fn engine(node: NodeContext, yaml: &str) -> Engine {
    let mut engine = Engine::new(node);
    for object in manifest::parse(yaml) {
        let ingested = match object.expect("fixture parses") {
            Object::Service(s) => ingest::service_applied(&s),
            Object::EndpointSlice(s) => ingest::slice_applied(&s),
            Object::Node(n) => {
                let mut context = engine.node_context().clone();
                context.update_from_node(&proxy_core::translate::node(&n).expect("fixture node").value);
                engine.set_node_context(context);
                continue;
            }
            Object::ServiceCidr(_) => continue,
        };
        assert!(ingested.problems.is_empty(), "{:?}", ingested.problems);
        engine.apply(ingested.event);
    }
    engine.plan();
    engine
}

pub fn fixture() -> Desired {
    engine(node(), include_str!("../fixtures/cluster.yaml")).desired().clone()
}

/// The listing with each table's sets and chains sorted: the kernel lists chains in
/// creation order, so chains a partial sync added come last until the next full sync.
pub fn normalize(listing: &str) -> String {
    let mut out = Vec::new();
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let flush = |blocks: &mut Vec<Vec<&str>>, out: &mut Vec<String>| {
        let mut sorted: Vec<String> = blocks.drain(..).map(|b| b.join("\n")).collect();
        sorted.sort();
        out.extend(sorted);
    };
    // Blank lines and the tables' closing braces carry no content.
    for line in listing.lines().filter(|l| !l.trim().is_empty() && *l != "}") {
        if line.starts_with("table ") {
            flush(&mut blocks, &mut out);
            out.push(line.to_string());
        } else if ["\tset ", "\tmap ", "\tchain "].iter().any(|p| line.starts_with(p)) {
            blocks.push(vec![line]);
        } else if let Some(block) = blocks.last_mut() {
            block.push(line);
        } else {
            out.push(line.to_string());
        }
    }
    flush(&mut blocks, &mut out);
    out.join("\n")
}
