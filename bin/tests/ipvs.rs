//! `kproxy sync --proxy-mode ipvs` against real packets, on the same throwaway node as
//! `packets.rs`: virtual services balance over real servers, affinity sticks, a removed
//! endpoint drains, a Service without endpoints rejects, and `ipvsadm -Ln` shows what
//! kproxy programmed.
//!
//! This machine's kernel has no IPVS, so these tests are ignored here and run inside a
//! qemu VM booting Debian's kernel (`testbed/vm/run.sh`, part of `scripts/test.sh`), with
//! `--ignored`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
    - {name: hold, port: 9000, targetPort: 9000, nodePort: 30900}
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
metadata: {namespace: default, name: sticky}
spec:
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: empty}
spec:
  clusterIP: 10.96.0.99
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: v6}
spec:
  ipFamilies: [IPv6]
  clusterIPs: ["fd00:96::10"]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {namespace: default, name: web-1, labels: {kubernetes.io/service-name: web}}
    addressType: IPv4
    ports: [{name: http, port: 8080}, {name: hold, port: 9000}]
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
    metadata: {namespace: default, name: sticky-1, labels: {kubernetes.io/service-name: sticky}}
    addressType: IPv4
    ports: [{name: http, port: 8080}]
    endpoints:
      - {addresses: [10.244.0.11], nodeName: node-a}
      - {addresses: [10.244.0.12], nodeName: node-a}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {namespace: default, name: v6-1, labels: {kubernetes.io/service-name: v6}}
    addressType: IPv6
    ports: [{name: http, port: 8080}]
    endpoints:
      - {addresses: ["fd00:244::11"], nodeName: node-a}
      - {addresses: ["fd00:244::12"], nodeName: node-a}
"#;

const IPVS: &[&str] = &["--proxy-mode", "ipvs"];

/// `ipvsadm -Ln` as (virtual service line, its real-server lines), whitespace-normalised.
fn ipvsadm() -> Vec<(String, Vec<String>)> {
    let listing = sh("ipvsadm -Ln");
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in listing.lines().skip(3) {
        let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(server) = words.strip_prefix("-> ") {
            out.last_mut().expect("a service line first").1.push(server.to_string());
        } else {
            out.push((words, Vec::new()));
        }
    }
    out
}

fn service<'a>(listing: &'a [(String, Vec<String>)], vs: &str) -> &'a [String] {
    let found = listing.iter().find(|(line, _)| line.starts_with(vs));
    &found.unwrap_or_else(|| panic!("no virtual service {vs} in {listing:#?}")).1
}

/// Starts servers that answer with the pod's name and then hold the connection open.
fn serve_holding(node: &mut Node) {
    for (pod, _) in PODS {
        node.serve(pod, &["TCP-LISTEN:9000,fork,reuseaddr", &format!("SYSTEM:echo {pod}; sleep 60")]);
    }
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
#[ignore = "needs IPVS: runs in the Debian VM (testbed/vm/run.sh)"]
fn ipvs_balances_cluster_ips_and_node_ports_and_rejects_without_endpoints() {
    in_root_sandbox("ipvs_balances_cluster_ips_and_node_ports_and_rejects_without_endpoints", || {
        let node = Node::new();
        let summary = node.sync(CLUSTER, IPVS);
        assert!(
            summary.contains("synced 6 service ports (IPv4 5, IPv6 1)") && summary.contains("into IPVS"),
            "{summary}"
        );

        // What kproxy programmed is what ipvsadm lists.
        let listing = ipvsadm();
        let masq = |ip: &str, port: u16, weight: u32| format!("{ip}:{port} Masq {weight} 0 0");
        for vs in ["TCP 10.96.0.10:80 rr", "TCP 10.200.0.1:30080 rr"] {
            assert_eq!(service(&listing, vs), [masq("10.244.0.11", 8080, 1), masq("10.244.0.12", 8080, 1)], "{vs}");
        }
        assert_eq!(service(&listing, "UDP 10.96.0.53:53 rr").len(), 2);
        assert!(service(&listing, "TCP 10.96.0.20:80 rr persistent 600").len() == 2, "{listing:#?}");
        assert!(service(&listing, "TCP 10.96.0.99:80 rr").is_empty());
        let bound = sh("ip -4 -o addr show dev kproxy-ipvs0");
        for ip in ["10.96.0.10", "10.96.0.53", "10.96.0.20", "10.96.0.99"] {
            assert!(bound.contains(&format!("{ip}/32")), "{ip} not bound:\n{bound}");
        }

        // An external client to the ClusterIP: both pods, masqueraded (off-cluster source).
        let replies = requests(16, Some("client"), "10.96.0.10:80", false);
        assert_eq!(pods(&replies), both(), "{replies:?}");
        assert_eq!(peers(&replies), [BRIDGE_IP.to_string()].into());
        // A pod: the other pod sees the pod's own address; reaching itself is masqueraded.
        let replies = requests(16, Some("pod1"), "10.96.0.10:80", false);
        assert_eq!(pods(&replies), both(), "{replies:?}");
        for r in &replies {
            match r {
                Reply::From { pod, peer } if pod == "pod2" => assert_eq!(peer, "10.244.0.11"),
                Reply::From { pod, peer } if pod == "pod1" => assert_eq!(peer, BRIDGE_IP),
                other => panic!("{other:?}"),
            }
        }
        // The node itself, UDP, and the NodePort (masqueraded: Cluster policy).
        assert_reaches(None, "10.96.0.10:80", false, &both());
        assert_reaches(Some("client"), "10.96.0.53:53", true, &both());
        let replies = requests(16, Some("client"), &format!("{NODE_IP}:30080"), false);
        assert_eq!(pods(&replies), both(), "{replies:?}");
        assert_eq!(peers(&replies), [BRIDGE_IP.to_string()].into());

        // No endpoints: REJECT, from outside and from the node.
        assert_eq!(request(Some("client"), "10.96.0.99:80", false, None), Reply::Refused);
        assert_eq!(request(None, "10.96.0.99:80", false, None), Reply::Refused);

        // The node's own listeners answer on its address, not on a Service IP (k#72236).
        let mut listener = Command::new("socat")
            .args(["TCP-LISTEN:2222,fork,reuseaddr", "SYSTEM:echo node $SOCAT_PEERADDR"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        std::thread::sleep(Duration::from_millis(500));
        let direct = request(Some("client"), &format!("{NODE_IP}:2222"), false, None);
        let via_service_ip = request(Some("client"), "10.96.0.10:2222", false, None);
        let _ = listener.kill();
        let _ = listener.wait();
        assert!(matches!(&direct, Reply::From { pod, .. } if pod == "node"), "{direct:?}");
        assert_eq!(via_service_ip, Reply::Refused);

        // A second sync of the same state changes nothing.
        let again = node.sync(CLUSTER, IPVS);
        assert!(again.contains(": 0 IPVS operations"), "{again}");

        // The Service gone: its virtual services and its address go too.
        let without_web =
            CLUSTER.replace("name: web}", "name: web, labels: {service.kubernetes.io/service-proxy-name: other}}");
        node.sync(&without_web, IPVS);
        let listing = ipvsadm();
        assert!(!listing.iter().any(|(vs, _)| vs.contains(":80 ") && vs.contains("10.96.0.10")), "{listing:#?}");
        assert!(!listing.iter().any(|(vs, _)| vs.contains(":30080")), "{listing:#?}");
        assert!(!sh("ip -4 -o addr show dev kproxy-ipvs0").contains("10.96.0.10/"));
        assert_reaches(Some("client"), "10.96.0.53:53", true, &both());

        // `kproxy cleanup` removes the virtual services, the dummy interface and the table.
        let out = sh(concat!(env!("CARGO_BIN_EXE_kproxy"), " cleanup"));
        assert!(out.contains("removed IPVS services"), "{out}");
        assert!(ipvsadm().is_empty(), "{:#?}", ipvsadm());
        assert!(!sh("ip -o link show").contains("kproxy-ipvs0"));
        assert!(!sh("nft list tables").contains("kproxy"));
    });
}

#[test]
#[ignore = "needs IPVS: runs in the Debian VM (testbed/vm/run.sh)"]
fn ipvs_client_ip_affinity_sticks_ipv6_and_schedulers() {
    in_root_sandbox("ipvs_client_ip_affinity_sticks_ipv6_and_schedulers", || {
        let node = Node::new();
        node.sync(CLUSTER, IPVS);
        for source in ["client", "pod1"] {
            let replies = requests(12, Some(source), "10.96.0.20:80", false);
            assert_eq!(pods(&replies).len(), 1, "from {source}: {replies:?}");
        }
        // Without affinity the same source is spread.
        assert_reaches(Some("client"), "10.96.0.10:80", false, &both());

        // IPv6: its own virtual service, address and ip6 table.
        let replies = requests(12, Some("client"), "[fd00:96::10]:80", false);
        assert_eq!(pods(&replies), both(), "{replies:?}");
        assert_eq!(service(&ipvsadm(), "TCP [fd00:96::10]:80 rr").len(), 2);

        // Another scheduler: every virtual service is updated in place, and still works.
        let out = node.sync(CLUSTER, &["--proxy-mode", "ipvs", "--ipvs-scheduler", "lc"]);
        let listing = ipvsadm();
        assert!(out.contains(&format!(": {} IPVS operations", listing.len())), "{out}");
        assert!(listing.iter().all(|(vs, _)| vs.contains(" lc")), "{listing:#?}");
        assert_eq!(service(&listing, "TCP 10.96.0.20:80 lc persistent 600").len(), 2, "{listing:#?}");
        let replies = requests(8, Some("client"), "10.96.0.20:80", false);
        assert_eq!(pods(&replies).len(), 1, "{replies:?}");
    });
}

#[test]
#[ignore = "needs IPVS: runs in the Debian VM (testbed/vm/run.sh)"]
fn ipvs_removed_endpoint_drains_then_goes() {
    in_root_sandbox("ipvs_removed_endpoint_drains_then_goes", || {
        let mut node = Node::new();
        serve_holding(&mut node);
        node.sync(CLUSTER, IPVS);

        // One connection held open through the ClusterIP; `linger=0` makes its end a reset,
        // which IPVS forgets in seconds (a FIN would leave it in TIME_WAIT for minutes).
        let mut held = Command::new("ip")
            .args(["netns", "exec", "client", "socat", "-T60", "-", "TCP:10.96.0.10:9000,linger=0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(held.stdout.take().unwrap()), &mut first).unwrap();
        let (busy, busy_ip, other) = match first.trim() {
            "pod1" => ("pod1", "10.244.0.11", "pod2"),
            "pod2" => ("pod2", "10.244.0.12", "pod1"),
            got => panic!("the held connection got {got:?}"),
        };

        // Its endpoint removed: on port 80 (no connections) it goes at once; on port 9000 it
        // stays with weight 0 while its connection lasts, and takes no new ones.
        let without = CLUSTER.replacen(&format!("      - {{addresses: [{busy_ip}], nodeName: node-a}}\n"), "", 1);
        node.sync(&without, IPVS);
        let listing = ipvsadm();
        assert_eq!(service(&listing, "TCP 10.96.0.10:80 rr").len(), 1, "{listing:#?}");
        let hold = service(&listing, "TCP 10.96.0.10:9000 rr");
        assert!(hold.contains(&format!("{busy_ip}:9000 Masq 0 1 0")), "{hold:?}");
        let replies = requests(8, Some("client"), "10.96.0.10:80", false);
        assert_eq!(pods(&replies), [other.to_string()].into(), "{replies:?}");

        // The connection ends: a later sync deletes the drained server.
        let _ = held.kill();
        let _ = held.wait();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            node.sync(&without, IPVS);
            let listing = ipvsadm();
            let hold = service(&listing, "TCP 10.96.0.10:9000 rr");
            if hold.len() == 1 {
                assert!(!hold[0].starts_with(busy_ip), "{hold:?}");
                break;
            }
            assert!(Instant::now() < deadline, "{busy} never drained: {hold:?}");
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

#[test]
#[ignore = "needs IPVS: runs in the Debian VM (testbed/vm/run.sh)"]
fn ipvs_daemon_follows_edits() {
    in_root_sandbox("ipvs_daemon_follows_edits", || {
        let node = Node::new();
        let dir = node.dir.join("watched");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.yaml"), CLUSTER).unwrap();
        let _daemon = Daemon::start_with(&dir, &[IPVS, &["--ipvs-strict-arp"]].concat());
        let servers = |vs: &str| ipvsadm().into_iter().find(|(line, _)| line.starts_with(vs)).map(|(_, s)| s.len());
        let limit = Duration::from_secs(30);
        wait_for("the first sync", limit, || servers("TCP 10.96.0.10:80 rr") == Some(2));
        assert_reaches(Some("client"), "10.96.0.10:80", false, &both());
        // The daemon set IPVS mode's sysctls, and strict ARP's (this namespace's own).
        assert_eq!(sh("cat /proc/sys/net/ipv4/vs/conntrack").trim(), "1");
        let arp = sh("cat /proc/sys/net/ipv4/conf/all/arp_ignore /proc/sys/net/ipv4/conf/all/arp_announce");
        assert_eq!(arp.split_whitespace().collect::<Vec<_>>(), ["1", "2"]);

        // An endpoint removed, a Service removed: both converge without a restart.
        let edited = CLUSTER
            .replacen("      - {addresses: [10.244.0.11], nodeName: node-a}\n", "", 1)
            .replace("name: empty}", "name: empty, labels: {service.kubernetes.io/service-proxy-name: other}}");
        std::fs::write(dir.join("cluster.yaml"), edited).unwrap();
        // The removed endpoint served the requests above, whose connections IPVS keeps
        // for minutes in TIME_WAIT: it drains at weight 0 instead of going at once.
        let weight_of_pod1 = || {
            let listing = ipvsadm();
            let servers = service(&listing, "TCP 10.96.0.10:80 rr");
            servers
                .iter()
                .find(|s| s.starts_with("10.244.0.11:8080 "))
                .map(|s| s.split(' ').nth(2).unwrap().to_string())
        };
        wait_for("the endpoint removal", limit, || matches!(weight_of_pod1().as_deref(), None | Some("0")));
        wait_for("the Service removal", limit, || servers("TCP 10.96.0.99:80 rr").is_none());
        let replies = requests(8, Some("client"), "10.96.0.10:80", false);
        assert_eq!(pods(&replies), ["pod2".to_string()].into(), "{replies:?}");
        assert!(!sh("ip -4 -o addr show dev kproxy-ipvs0").contains("10.96.0.99/"));
    });
}
