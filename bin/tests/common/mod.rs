//! A throwaway node with pods and a client, in namespaces each test creates, and a way to
//! send real packets through it.
//!
//! Every test re-runs itself under `unshare -rnm`: a new user, network and mount namespace
//! in which the test process is root. Its network namespace is the *node*. Pods and the
//! client are named network namespaces created inside it (on a private tmpfs /run), wired
//! with veth pairs and a bridge. Nothing touches the host's namespaces; everything is gone
//! when the test process exits. Servers are socat processes we start and kill by PID.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IN_SANDBOX: &str = "KPROXY_TEST_SANDBOX";

/// Runs `body` as root of fresh user, network and mount namespaces.
#[track_caller]
pub fn in_sandbox(test: &str, body: impl FnOnce()) {
    sandbox(test, "-rnm", body)
}

/// Runs `body` in fresh network and mount namespaces of the initial user namespace: for
/// IPVS, which answers only to `CAP_NET_ADMIN` there and shows its sysctls only there.
/// Needs root.
#[track_caller]
pub fn in_root_sandbox(test: &str, body: impl FnOnce()) {
    sandbox(test, "-nm", body)
}

#[track_caller]
fn sandbox(test: &str, flags: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_SANDBOX).is_some() {
        sh("mount -t tmpfs tmpfs /run && mkdir -p /run/netns && ip link set lo up");
        body();
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args([flags, "--"])
        .arg(exe)
        // `--include-ignored`: the tests that need IPVS are ignored unless asked for, and
        // were asked for if they got here.
        .args(["--exact", test, "--nocapture", "--test-threads=1", "--include-ignored"])
        .env(IN_SANDBOX, "1")
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("1 passed"), "{test} failed in its sandbox:\n{stdout}\n{stderr}");
}

/// Runs a shell command; panics with its stderr on failure.
#[track_caller]
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node: pods 10.244.0.11 and .12 on bridge br0 (10.244.0.1), a client 10.200.0.2
/// reaching the node at 10.200.0.1.
pub struct Node {
    servers: Vec<Child>,
    pub dir: PathBuf,
}

pub const NODE_IP: &str = "10.200.0.1";
pub const CLIENT_IP: &str = "10.200.0.2";
pub const BRIDGE_IP: &str = "10.244.0.1";
pub const PODS: [(&str, &str); 2] = [("pod1", "10.244.0.11"), ("pod2", "10.244.0.12")];

impl Node {
    pub fn new() -> Node {
        sh("sysctl -qw net.ipv4.ip_forward=1");
        // The client is also the node's default gateway, so forwarded packets to unknown
        // destinations leave by the interface they came in on: no ICMP redirects (they
        // would use up the per-host ICMP budget that REJECT answers need), and no ICMP
        // rate limit, so several REJECTs in a row all get through.
        sh(
            "sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 net.ipv4.icmp_ratelimit=0",
        );
        sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
        sh("ip link add br0 type bridge && ip addr add 10.244.0.1/24 dev br0 && \
            ip addr add fd00:244::1/64 dev br0 nodad && ip link set br0 up");
        for (i, (pod, ip)) in PODS.into_iter().enumerate() {
            let ip6 = format!("fd00:244::1{}", i + 1);
            sh(&format!(
                "ip netns add {pod} && ip -n {pod} link set lo up && \
                 ip link add veth-{pod} type veth peer name eth0 netns {pod} && \
                 ip link set veth-{pod} master br0 up && ip link set veth-{pod} type bridge_slave hairpin on && \
                 ip -n {pod} addr add {ip}/24 dev eth0 && ip -n {pod} addr add {ip6}/64 dev eth0 nodad && \
                 ip -n {pod} link set eth0 up && \
                 ip -n {pod} route add default via {BRIDGE_IP} && ip -n {pod} -6 route add default via fd00:244::1"
            ));
        }
        sh(&format!(
            "ip netns add client && ip -n client link set lo up && \
             ip link add eth0 type veth peer name eth0 netns client && \
             sysctl -qw net.ipv4.conf.eth0.send_redirects=0 && \
             ip addr add {NODE_IP}/24 dev eth0 && ip link set eth0 up && \
             ip -n client addr add {CLIENT_IP}/24 dev eth0 && ip -n client addr add 10.200.0.3/24 dev eth0 && \
             ip addr add fd00:200::1/64 dev eth0 nodad && ip -n client addr add fd00:200::2/64 dev eth0 nodad && \
             ip -n client link set eth0 up && ip -n client route add default via {NODE_IP} && \
             ip -n client -6 route add default via fd00:200::1 && \
             ip route add default via {CLIENT_IP} && ip -6 route add default via fd00:200::2"
        ));
        let dir = std::env::temp_dir().join(format!("kproxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut node = Node { servers: Vec::new(), dir };
        for (pod, _) in PODS {
            // Each answer names the pod and the source address it saw.
            let reply = format!("SYSTEM:echo {pod} $SOCAT_PEERADDR");
            node.serve(pod, &["TCP-LISTEN:8080,fork,reuseaddr", &reply]);
            node.serve(pod, &["UDP-RECVFROM:5353,fork", &reply]);
            node.serve(pod, &["TCP6-LISTEN:8080,ipv6only=1,fork,reuseaddr", &reply]);
        }
        // Wait until every listener is bound: a UDP datagram sent earlier is answered
        // with port-unreachable, and a loaded machine (CI, parallel tests) can take more
        // than a fixed pause to start them.
        for (pod, _) in PODS {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let out = Command::new("ip").args(["netns", "exec", pod, "ss", "-Hlntu"]).output().expect("ss");
                let listening = String::from_utf8_lossy(&out.stdout);
                let bound = |proto: &str, port: &str| {
                    listening.lines().any(|l| l.starts_with(proto) && l.contains(&format!(":{port} ")))
                };
                // Two TCP listeners on 8080, IPv4 and IPv6 (listed as `[::]:8080` or, by
                // older kernels, `*:8080`).
                let tcp8080 = listening.lines().filter(|l| l.starts_with("tcp") && l.contains(":8080 ")).count();
                if bound("udp", "5353") && tcp8080 >= 2 {
                    break;
                }
                assert!(Instant::now() < deadline, "the servers in {pod} did not start:\n{listening}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        node
    }

    /// Starts a server (socat with `args`) in `netns`; it is killed when the node is dropped.
    pub fn serve(&mut self, netns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "socat"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed");
        self.servers.push(child);
    }

    /// Writes the manifests and runs `kproxy sync` with this node's flags.
    pub fn sync(&self, yaml: &str, extra: &[&str]) -> String {
        let dir = self.dir.join("manifests");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
        kproxy_sync(&dir, extra)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `kproxy sync --manifests DIR` with the node flags of these tests.
pub fn kproxy_sync(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .arg("sync")
        .arg("--manifests")
        .arg(dir)
        .args(["--hostname-override", "node-a", "--cluster-cidr", "10.244.0.0/16"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kproxy sync failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout + &String::from_utf8_lossy(&out.stderr)
}

/// What a request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A pod answered, having seen this source address.
    From { pod: String, peer: String },
    /// The connection was refused (an ICMP port unreachable: REJECT).
    Refused,
    /// Nothing came back in time (DROP, or a blackhole).
    Timeout,
}

/// Sends one request from `netns` (`None`: the node itself) to `target` (`ip:port`), TCP
/// or UDP, optionally from a given source address.
pub fn request(netns: Option<&str>, target: &str, udp: bool, bind: Option<&str>) -> Reply {
    let bind = bind.map(|b| format!(",bind={b}")).unwrap_or_default();
    let addr = if udp { format!("UDP:{target}{bind}") } else { format!("TCP:{target},connect-timeout=3{bind}") };
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "socat"]);
            c
        }
        None => Command::new("socat"),
    };
    let start = Instant::now();
    // Generous timeouts: servers fork a shell per request, and tests run in parallel on
    // small machines. A REJECT still shows as an immediate "Connection refused".
    // TCP sends nothing: the server does not read, and closing a socket with unread data
    // resets the connection, which can destroy the reply. UDP needs a datagram to answer.
    let input: &[u8] = if udp { b"hello\n" } else { b"" };
    let out = cmd.args(["-T3", "-", &addr]).stdin(Stdio::piped()).output_with_input(input);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(pod), Some(peer)) => Reply::From { pod: pod.to_string(), peer: peer.to_string() },
        _ if err.contains("Connection refused") && start.elapsed() < Duration::from_millis(2500) => Reply::Refused,
        _ => Reply::Timeout,
    }
}

/// One UDP request with a fixed source (`bind`), so the same conntrack entry each time.
/// A datagram that reaches a pod while its server's previous fork still holds the socket
/// goes unanswered: it is asked again, same 5-tuple, after a pause (up to three times).
pub fn udp_flow(netns: Option<&str>, target: &str, bind: &str) -> Reply {
    let mut reply = Reply::Timeout;
    for _ in 0..3 {
        reply = request(netns, target, true, Some(bind));
        if !matches!(reply, Reply::Timeout) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    reply
}

trait OutputWithInput {
    fn output_with_input(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithInput for Command {
    fn output_with_input(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("socat");
        let _ = child.stdin.take().expect("stdin").write_all(input);
        child.wait_with_output().expect("socat")
    }
}

/// Sends `n` requests and returns the replies.
pub fn requests(n: usize, netns: Option<&str>, target: &str, udp: bool) -> Vec<Reply> {
    (0..n).map(|_| request(netns, target, udp, None)).collect()
}

/// Asserts that requests to `target` reach exactly the pods in `expected`: it asks until
/// each of them has answered (random load balancing over two pods leaves one out of a fixed
/// dozen about once in 2,000 runs), up to 40 times, and every reply must come from one of
/// them (over UDP a timeout is forgiven: a datagram that reaches a pod while its server's
/// previous fork holds the socket goes unanswered). On failure it prints every reply.
pub fn assert_reaches(netns: Option<&str>, target: &str, udp: bool, expected: &std::collections::BTreeSet<String>) {
    let mut replies = Vec::new();
    while replies.len() < 40 && pods(&replies) != *expected {
        replies.push(request(netns, target, udp, None));
    }
    let strays: Vec<_> = replies
        .iter()
        .filter(|r| !(udp && **r == Reply::Timeout))
        .filter(|r| !matches!(r, Reply::From { pod, .. } if expected.contains(pod)))
        .collect();
    assert!(
        pods(&replies) == *expected && strays.is_empty(),
        "{target} from {netns:?}: expected answers from {expected:?}, got {replies:?}"
    );
}

/// The set of pods that answered.
pub fn pods(replies: &[Reply]) -> std::collections::BTreeSet<String> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::From { pod, .. } => Some(pod.clone()),
            _ => None,
        })
        .collect()
}

/// Both pods.
pub fn both() -> std::collections::BTreeSet<String> {
    PODS.iter().map(|(pod, _)| pod.to_string()).collect()
}

/// The set of source addresses the pods saw.
pub fn peers(replies: &[Reply]) -> std::collections::BTreeSet<String> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::From { peer, .. } => Some(peer.clone()),
            _ => None,
        })
        .collect()
}

/// `kproxy run --manifests DIR` with the node flags of these tests, killed when dropped.
pub struct Daemon(Child);

impl Daemon {
    pub fn start(dir: &std::path::Path) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    pub fn start_with(dir: &std::path::Path, extra: &[&str]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .args(["run", "--manifests"])
            .arg(dir)
            .args(["--hostname-override", "node-a", "--cluster-cidr", "10.244.0.0/16"])
            .args(["--min-sync-period", "100ms", "--poll-interval", "100ms"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kproxy run");
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP GET over loopback (the daemon's metrics and health servers): the raw
/// response.
pub fn get_raw(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A plain HTTP GET: status code and body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let response = get_raw(addr, path);
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Polls `ok` every 20 ms until it holds; panics after `limit`. Returns the time taken.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// The cluster most tests sync: web (TCP), dns (UDP), a NodePort and a Service without
/// endpoints, all on pods 10.244.0.11 and .12.
pub const CLUSTER: &str = r#"
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16]}
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: dns}
spec:
  clusterIP: 10.96.0.53
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: np}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: empty}
spec:
  clusterIP: 10.96.0.99
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {namespace: default, name: web-1, labels: {kubernetes.io/service-name: web}}
    addressType: IPv4
    ports: [{name: http, port: 8080}]
    endpoints:
      - {addresses: [10.244.0.11], nodeName: node-a}
      - {addresses: [10.244.0.12], nodeName: node-a}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {namespace: default, name: dns-1, labels: {kubernetes.io/service-name: dns}}
    addressType: IPv4
    ports: [{name: dns, port: 5353, protocol: UDP}]
    endpoints:
      - {addresses: [10.244.0.11], nodeName: node-a}
      - {addresses: [10.244.0.12], nodeName: node-a}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {namespace: default, name: np-1, labels: {kubernetes.io/service-name: np}}
    addressType: IPv4
    ports: [{name: http, port: 8080}]
    endpoints:
      - {addresses: [10.244.0.11], nodeName: node-a}
      - {addresses: [10.244.0.12], nodeName: node-a}
"#;
