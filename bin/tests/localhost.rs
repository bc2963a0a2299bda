//! NodePorts on `127.0.0.1` and `[::1]` through the localhost relay (`--nodeport-addresses`
//! with `localhost`), with real pods in a throwaway node: TCP and UDP on both families,
//! `externalTrafficPolicy` Local and Cluster, a long-lived stream through endpoint churn,
//! Service deletion and port changes, a port conflict that fails one listener and nothing
//! else, and a restart with `localhost` newly added (k#142183).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// `localhost` next to the node's own network (the manifests have no Node object for
/// `primary` to read).
const LOCALHOST: &[&str] = &["--nodeport-addresses", "10.200.0.0/24,fd00:200::/64,localhost"];

/// A dual-stack Service with a NodePort (port, target port, NodePort), on both pods (or only `pods`) of this node;
/// `extra` goes into its spec.
fn service(
    name: &str,
    ip: u8,
    proto: &str,
    (port, target, node_port): (u16, u16, u16),
    extra: &str,
    pods: &[usize],
) -> String {
    let endpoints = |family: u8| -> String {
        pods.iter()
            .map(|i| {
                let addr = if family == 4 { format!("10.244.0.1{i}") } else { format!("\"fd00:244::1{i}\"") };
                // pod1 runs here, pod2 on another node.
                let node = if *i == 1 { "node-a" } else { "node-b" };
                format!("  - {{addresses: [{addr}], nodeName: {node}}}\n")
            })
            .collect()
    };
    let mut out = format!(
        "---
apiVersion: v1
kind: Service
metadata: {{namespace: default, name: {name}}}
spec:
  type: NodePort
  clusterIPs: [10.96.0.{ip}, \"fd00:96::{ip}\"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{{name: p, port: {port}, targetPort: {target}, nodePort: {node_port}, protocol: {proto}}}]
{extra}"
    );
    for (family, kind) in [(4, "IPv4"), (6, "IPv6")] {
        out += &format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{namespace: default, name: {name}-v{family}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: {kind}
ports: [{{name: p, port: {target}, protocol: {proto}}}]
endpoints:
{}",
            endpoints(family)
        );
    }
    out
}

const CIDRS: &str = "---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16, \"fd00:96::/112\"]}
";

/// web (TCP 30080), dns (UDP 30053), and local (TCP 30081, externalTrafficPolicy Local,
/// with pod1 here and pod2 elsewhere).
fn cluster() -> String {
    let both = [1, 2];
    CIDRS.to_string()
        + &service("web", 30, "TCP", (80, 8080, 30080), "", &both)
        + &service("dns", 53, "UDP", (53, 5353, 30053), "", &both)
        + &service("local", 31, "TCP", (80, 8080, 30081), "  externalTrafficPolicy: Local\n", &both)
}

fn write(node: &Node, yaml: &str) -> std::path::PathBuf {
    let dir = node.dir.join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
    dir
}

/// The node, with UDP servers on IPv6 too.
fn node() -> Node {
    let mut node = Node::new();
    for (pod, _) in PODS {
        let reply = format!("SYSTEM:echo {pod} $SOCAT_PEERADDR");
        node.serve(pod, &["UDP6-RECVFROM:5353,ipv6only=1,fork", &reply]);
    }
    node
}

/// Whether a TCP request from the node to `target` gets a pod's answer.
fn answers(target: &str) -> bool {
    matches!(request(None, target, false, None), Reply::From { .. })
}

fn refused(target: &str) -> bool {
    request(None, target, false, None) == Reply::Refused
}

fn metric(name: &str, family: &str) -> Option<f64> {
    let (_, body) = get("127.0.0.1:10249", "/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("ip_family=\"{family}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn pod1() -> BTreeSet<String> {
    ["pod1".to_string()].into()
}

#[test]
fn localhost_nodeports_answer_over_tcp_and_udp_on_both_families() {
    in_sandbox("localhost_nodeports_answer_over_tcp_and_udp_on_both_families", || {
        let node = node();
        let dir = write(&node, &cluster());
        let _daemon = Daemon::start_with(&dir, LOCALHOST);
        wait_for("the relay serves 127.0.0.1:30080", Duration::from_secs(10), || answers("127.0.0.1:30080"));
        for target in ["127.0.0.1:30080", "[::1]:30080"] {
            assert_reaches(None, target, false, &both());
        }
        for target in ["127.0.0.1:30053", "[::1]:30053"] {
            assert_reaches(None, target, true, &both());
        }
        // externalTrafficPolicy: Local goes to this node's endpoint only (KEP-6032).
        for target in ["127.0.0.1:30081", "[::1]:30081"] {
            assert_reaches(None, target, false, &pod1());
        }
        // The pods see the node (the relay connects from it), by its address on the
        // pods' bridge.
        let seen = peers(&requests(6, None, "127.0.0.1:30080", false));
        assert_eq!(seen, [BRIDGE_IP.to_string()].into(), "the source the pods saw");
        // Loopback only: the relay listens on 127.0.0.1 and ::1, nowhere else; the
        // node's own address still goes through the kernel's NodePort rules.
        let listening = sh("ss -Hltnu");
        for line in listening.lines().filter(|l| l.contains(":30080 ") || l.contains(":30053 ")) {
            assert!(line.contains("127.0.0.1:") || line.contains("[::1]:"), "a relay listener off loopback: {line}");
        }
        assert_reaches(Some("client"), &format!("{NODE_IP}:30080"), false, &both());
        // Upstream's metrics: 3 listeners per family.
        wait_for("listener gauges", Duration::from_secs(5), || {
            metric("kubeproxy_nftables_localhost_nodeport_listeners", "IPv4") == Some(3.0)
                && metric("kubeproxy_nftables_localhost_nodeport_listeners", "IPv6") == Some(3.0)
        });
        assert_eq!(metric("kubeproxy_nftables_localhost_nodeport_listener_creation_failures_total", "IPv4"), Some(0.0));
    });
}

#[test]
fn listeners_follow_services_and_a_stream_keeps_its_endpoint_through_churn() {
    in_sandbox("listeners_follow_services_and_a_stream_keeps_its_endpoint_through_churn", || {
        let mut node = node();
        // An echo server that first names its pod: a long-lived stream.
        for (pod, _) in PODS {
            node.serve(pod, &["TCP-LISTEN:9000,fork,reuseaddr", &format!("SYSTEM:echo {pod}; cat")]);
        }
        wait_for("echo servers", Duration::from_secs(10), || {
            PODS.iter().all(|(pod, _)| sh(&format!("ip netns exec {pod} ss -Hltn")).contains(":9000 "))
        });
        let stream = |pods: &[usize]| CIDRS.to_string() + &service("echo", 40, "TCP", (90, 9000, 30090), "", pods);
        let dir = write(&node, &stream(&[1]));
        let _daemon = Daemon::start_with(&dir, LOCALHOST);
        wait_for("the relay serves 127.0.0.1:30090", Duration::from_secs(10), || {
            TcpStream::connect("127.0.0.1:30090").is_ok()
        });
        let conn = TcpStream::connect("127.0.0.1:30090").unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "pod1");
        let mut echo = |conn: &TcpStream, i: usize| {
            let mut w = conn;
            writeln!(w, "ping {i}").unwrap();
            let mut back = String::new();
            reader.read_line(&mut back).unwrap();
            assert_eq!(back.trim(), format!("ping {i}"), "the stream broke after {i} endpoint changes");
        };
        echo(&conn, 0);
        // Endpoints come and go around pod1: the stream stays with pod1.
        for (i, pods) in [&[1, 2][..], &[2, 1], &[1]].into_iter().enumerate() {
            std::fs::write(dir.join("cluster.yaml"), stream(pods)).unwrap();
            std::thread::sleep(Duration::from_millis(400));
            echo(&conn, i + 1);
        }
        // New connections see the new endpoints: with pod2 only, pod2 answers.
        std::fs::write(dir.join("cluster.yaml"), stream(&[2])).unwrap();
        wait_for("new connections go to pod2", Duration::from_secs(5), || {
            let Ok(c) = TcpStream::connect("127.0.0.1:30090") else { return false };
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut first = String::new();
            BufReader::new(c).read_line(&mut first).is_ok() && first.trim() == "pod2"
        });
        // A port change moves the listener; deleting the Service closes it.
        let moved = CIDRS.to_string() + &service("echo", 40, "TCP", (90, 9000, 30091), "", &[2]);
        std::fs::write(dir.join("cluster.yaml"), moved).unwrap();
        wait_for("30091 open, 30090 closed", Duration::from_secs(5), || {
            TcpStream::connect("127.0.0.1:30091").is_ok() && TcpStream::connect("127.0.0.1:30090").is_err()
        });
        std::fs::write(dir.join("cluster.yaml"), CIDRS).unwrap();
        wait_for("30091 closed", Duration::from_secs(5), || TcpStream::connect("127.0.0.1:30091").is_err());
        assert!(refused("[::1]:30091"));
    });
}

#[test]
fn a_taken_port_fails_its_listener_alone_and_is_retried() {
    in_sandbox("a_taken_port_fails_its_listener_alone_and_is_retried", || {
        let node = node();
        // Another process on the node holds 127.0.0.1:30080.
        let squatter = std::net::TcpListener::bind("127.0.0.1:30080").unwrap();
        let dir = write(&node, &cluster());
        let _daemon = Daemon::start_with(&dir, LOCALHOST);
        wait_for("the relay serves [::1]:30080", Duration::from_secs(10), || answers("[::1]:30080"));
        // Everything else works: the other family, UDP, the kernel's NodePorts.
        assert_reaches(None, "127.0.0.1:30053", true, &both());
        assert_reaches(Some("client"), &format!("{NODE_IP}:30080"), false, &both());
        wait_for("the failure is counted", Duration::from_secs(5), || {
            metric("kubeproxy_nftables_localhost_nodeport_listener_creation_failures_total", "IPv4")
                .is_some_and(|n| n >= 1.0)
        });
        assert_eq!(metric("kubeproxy_nftables_localhost_nodeport_listeners", "IPv4"), Some(2.0));
        // Once the port is free, the next sync opens the listener.
        drop(squatter);
        std::fs::write(dir.join("cluster.yaml"), cluster() + "\n# touched\n").unwrap();
        wait_for("127.0.0.1:30080 served after the retry", Duration::from_secs(10), || answers("127.0.0.1:30080"));
    });
}

/// k#142183: upstream's relay does not start when `localhost` is added and kube-proxy
/// restarts. Here the configuration at start decides, every time.
#[test]
fn a_restart_with_localhost_newly_added_serves_it() {
    in_sandbox("a_restart_with_localhost_newly_added_serves_it", || {
        let node = node();
        let dir = write(&node, &cluster());
        let daemon = Daemon::start(&dir);
        wait_for("the kernel's NodePort", Duration::from_secs(10), || {
            matches!(request(Some("client"), &format!("{NODE_IP}:30080"), false, None), Reply::From { .. })
        });
        assert!(refused("127.0.0.1:30080"), "no relay without localhost");
        drop(daemon);
        let _daemon = Daemon::start_with(&dir, LOCALHOST);
        wait_for("the relay after the restart", Duration::from_secs(10), || answers("127.0.0.1:30080"));
        assert_reaches(None, "[::1]:30053", true, &both());
    });
}

/// The gate explicitly off turns the relay off, whatever the addresses say.
#[test]
fn the_gate_explicitly_off_keeps_loopback_closed() {
    in_sandbox("the_gate_explicitly_off_keeps_loopback_closed", || {
        let node = node();
        let dir = write(&node, &cluster());
        let mut args = LOCALHOST.to_vec();
        args.extend(["--feature-gates", "KubeProxyNFTablesLocalhostNodePorts=false"]);
        let _daemon = Daemon::start_with(&dir, &args);
        wait_for("the kernel's NodePort", Duration::from_secs(10), || {
            matches!(request(Some("client"), &format!("{NODE_IP}:30080"), false, None), Reply::From { .. })
        });
        assert!(refused("127.0.0.1:30080"));
        assert!(refused("[::1]:30080"));
    });
}

/// Whether `pod` answered.
fn from(reply: &Reply, pod: &str) -> bool {
    matches!(reply, Reply::From { pod: p, .. } if p == pod)
}

/// A UDP session keeps its endpoint while the endpoint serves, and moves as soon as it
/// leaves (within the relay's one-second sweep), as the kernel path's stale-flow cleanup
/// moves a DNATed flow.
#[test]
fn a_udp_session_moves_when_its_endpoint_leaves() {
    in_sandbox("a_udp_session_moves_when_its_endpoint_leaves", || {
        let node = node();
        let dns = |pods: &[usize]| CIDRS.to_string() + &service("dns", 53, "UDP", (53, 5353, 30053), "", pods);
        let dir = write(&node, &dns(&[1]));
        let _daemon = Daemon::start_with(&dir, LOCALHOST);
        let same_flow = || udp_flow(None, "127.0.0.1:30053", "127.0.0.1:40053");
        wait_for("the relay serves 127.0.0.1:30053", Duration::from_secs(10), || from(&same_flow(), "pod1"));
        // pod2 joins: the session stays with pod1.
        std::fs::write(dir.join("cluster.yaml"), dns(&[1, 2])).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..5 {
            let r = same_flow();
            assert!(from(&r, "pod1"), "the session left its endpoint: {r:?}");
        }
        // pod1 leaves: the same 5-tuple now reaches pod2.
        std::fs::write(dir.join("cluster.yaml"), dns(&[2])).unwrap();
        wait_for("the session moves to pod2", Duration::from_secs(5), || from(&same_flow(), "pod2"));
    });
}
