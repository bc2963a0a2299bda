//! `kproxy sync` against real packets: a node namespace with two pods on a bridge and an
//! external client, traffic sent with socat, answers checked for which pod replied and
//! which source address it saw (masquerade or not).

mod common;

use common::*;

#[test]
fn cluster_ips_node_ports_and_verdicts() {
    in_sandbox("cluster_ips_node_ports_and_verdicts", || {
        let node = Node::new();
        let summary = node.sync(CLUSTER, &[]);
        assert!(summary.contains("synced 4 service ports"), "{summary}");

        // External client to a ClusterIP: both pods, masqueraded (off-cluster source).
        let replies = requests(16, Some("client"), "10.96.0.10:80", false);
        assert!(replies.iter().all(|r| matches!(r, Reply::From { .. })), "{replies:?}");
        assert_eq!(pods(&replies), both());
        assert_eq!(peers(&replies), [BRIDGE_IP.to_string()].into());

        // A pod to the ClusterIP: the other pod sees the pod's own address; reaching itself
        // (hairpin) is masqueraded.
        let replies = requests(16, Some("pod1"), "10.96.0.10:80", false);
        assert_eq!(pods(&replies), both(), "{replies:?}");
        for r in &replies {
            match r {
                Reply::From { pod, peer } if pod == "pod2" => assert_eq!(peer, "10.244.0.11"),
                Reply::From { pod, peer } if pod == "pod1" => assert_eq!(peer, BRIDGE_IP),
                other => panic!("{other:?}"),
            }
        }

        // The node itself to the ClusterIP (output hook).
        assert_reaches(None, "10.96.0.10:80", false, &both());

        // UDP.
        let replies = requests(16, Some("client"), "10.96.0.53:53", true);
        assert_eq!(pods(&replies), both(), "{replies:?}");

        // NodePort on the node's primary IP: both pods, masqueraded (Cluster policy).
        let replies = requests(16, Some("client"), &format!("{NODE_IP}:30080"), false);
        assert_eq!(pods(&replies), both(), "{replies:?}");
        assert_eq!(peers(&replies), [BRIDGE_IP.to_string()].into());

        // No endpoints: REJECT. A wrong port on a ClusterIP: REJECT. An unallocated IP in
        // the service CIDR: DROP.
        assert_eq!(request(Some("client"), "10.96.0.99:80", false, None), Reply::Refused);
        assert_eq!(request(Some("client"), "10.96.0.10:81", false, None), Reply::Refused);
        assert_eq!(request(Some("client"), "10.96.0.77:80", false, None), Reply::Timeout);
    });
}

const LOCAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: local}
spec:
  type: NodePort
  clusterIP: 10.96.0.30
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30030}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: local-1, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.244.0.11], nodeName: node-a}
  - {addresses: [10.244.9.9], nodeName: node-b}
"#;

#[test]
fn external_traffic_policy_local_keeps_the_source() {
    in_sandbox("external_traffic_policy_local_keeps_the_source", || {
        let node = Node::new();
        node.sync(LOCAL, &[]);
        // Only the local endpoint (the remote one is unreachable here, so any request sent
        // there would time out), and the client's address is preserved.
        let replies = requests(12, Some("client"), &format!("{NODE_IP}:30030"), false);
        assert!(
            replies.iter().all(|r| matches!(r, Reply::From { pod, peer } if pod == "pod1" && peer == CLIENT_IP)),
            "{replies:?}"
        );
    });
}

const RANGES: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  loadBalancerSourceRanges: [10.200.0.2/32]
  ports: [{name: http, port: 80, nodePort: 30040}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: lb-1, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.0.12], nodeName: node-a}]
"#;

#[test]
fn load_balancer_source_ranges() {
    in_sandbox("load_balancer_source_ranges", || {
        let node = Node::new();
        node.sync(RANGES, &[]);
        let allowed = request(Some("client"), "192.0.2.10:80", false, Some("10.200.0.2"));
        assert!(matches!(&allowed, Reply::From { pod, .. } if pod == "pod2"), "{allowed:?}");
        assert_eq!(request(Some("client"), "192.0.2.10:80", false, Some("10.200.0.3")), Reply::Timeout);
        // NodePorts are not subject to the ranges.
        let np = request(Some("client"), &format!("{NODE_IP}:30040"), false, Some("10.200.0.3"));
        assert!(matches!(&np, Reply::From { .. }), "{np:?}");
    });
}

#[test]
fn resync_converges_and_removed_endpoints_never_answer() {
    in_sandbox("resync_converges_and_removed_endpoints_never_answer", || {
        let node = Node::new();
        node.sync(CLUSTER, &[]);
        assert_reaches(Some("client"), "10.96.0.10:80", false, &both());

        let only_pod2 = CLUSTER.replacen("      - {addresses: [10.244.0.11], nodeName: node-a}\n", "", 1);
        node.sync(&only_pod2, &[]);
        let replies = requests(16, Some("client"), "10.96.0.10:80", false);
        assert!(replies.iter().all(|r| matches!(r, Reply::From { pod, .. } if pod == "pod2")), "{replies:?}");

        // The Service handed to another proxy, or labelled headless (upstream's informers
        // skip both labels): its ClusterIP is now unallocated within the service CIDR.
        for label in ["service.kubernetes.io/service-proxy-name: other", "service.kubernetes.io/headless: \"\""] {
            node.sync(&only_pod2, &[]);
            let reply = request(Some("client"), "10.96.0.10:80", false, None);
            assert!(matches!(reply, Reply::From { .. }), "{reply:?}");
            let without_web = only_pod2.replace("name: web}", &format!("name: web, labels: {{{label}}}}}"));
            node.sync(&without_web, &[]);
            assert_eq!(request(Some("client"), "10.96.0.10:80", false, None), Reply::Timeout, "{label}");
        }

        // A bad object is reported by file and name, and the rest still applies.
        let broken = format!(
            "{CLUSTER}\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: default, name: bad}}\nspec: {{clusterIP: 10.96.0.300, ports: [{{port: 80}}]}}\n"
        );
        let out = node.sync(&broken, &[]);
        assert!(out.contains("Service default/bad: spec.clusterIP: invalid IP address"), "{out}");
        assert_reaches(Some("client"), "10.96.0.10:80", false, &both());
    });
}

/// A cluster bigger than a user namespace's socket send buffer lets one batch be: kproxy
/// falls back to sending it in parts (with a warning), and it works.
#[test]
fn large_cluster_in_a_user_namespace() {
    in_sandbox("large_cluster_in_a_user_namespace", || {
        let node = Node::new();
        let mut yaml = String::from(CLUSTER);
        for i in 0..1500 {
            yaml.push_str(&format!(
                "\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: bulk, name: s{i}}}\nspec: {{clusterIP: 10.97.{}.{}, ports: [{{name: p, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: bulk, name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: p, port: 8080}}]\nendpoints: [{{addresses: [10.244.0.11]}}, {{addresses: [10.244.0.12]}}]\n",
                i / 256,
                i % 256
            ));
        }
        let out = node.sync(&yaml, &[]);
        assert!(out.contains("synced 1504 service ports"), "{out}");
        assert_reaches(Some("client"), "10.97.5.7:80", false, &both());
        assert_reaches(Some("client"), "10.96.0.10:80", false, &both());
    });
}

const POLICIES: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: sticky}
spec:
  clusterIP: 10.96.0.60
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: internal-local}
spec:
  clusterIP: 10.96.0.61
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {namespace: default, name: v6}
spec:
  ipFamilies: [IPv6]
  clusterIPs: ["fd00:96::10"]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: List
items:
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
    metadata: {namespace: default, name: internal-local-1, labels: {kubernetes.io/service-name: internal-local}}
    addressType: IPv4
    ports: [{name: http, port: 8080}]
    endpoints:
      - {addresses: [10.244.0.11], nodeName: node-a}
      - {addresses: [10.244.9.9], nodeName: node-b}
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {namespace: default, name: v6-1, labels: {kubernetes.io/service-name: v6}}
    addressType: IPv6
    ports: [{name: http, port: 8080}]
    endpoints:
      - {addresses: ["fd00:244::11"], nodeName: node-a}
      - {addresses: ["fd00:244::12"], nodeName: node-a}
"#;

#[test]
fn affinity_internal_policy_ipv6_and_masquerade_all() {
    in_sandbox("affinity_internal_policy_ipv6_and_masquerade_all", || {
        let node = Node::new();
        node.sync(POLICIES, &["--cluster-cidr", "fd00:244::/64"]);

        // ClientIP affinity: one client sticks to one pod.
        let replies = requests(10, Some("client"), "10.96.0.60:80", false);
        assert_eq!(pods(&replies).len(), 1, "{replies:?}");

        // internalTrafficPolicy: Local: only the local endpoint (the remote one is
        // unreachable, so a request sent there would time out).
        let replies = requests(10, Some("pod2"), "10.96.0.61:80", false);
        assert!(replies.iter().all(|r| matches!(r, Reply::From { pod, .. } if pod == "pod1")), "{replies:?}");

        // IPv6: a separate ip6 table, both pods.
        let replies = requests(12, Some("client"), "[fd00:96::10]:80", false);
        assert_eq!(pods(&replies), both(), "{replies:?}");

        // Without --masquerade-all, pod2 reaching pod1 keeps its address; with it, the
        // node masquerades.
        let peer = |r: &Reply| match r {
            Reply::From { peer, .. } => peer.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(peer(&request(Some("pod2"), "10.96.0.61:80", false, None)), "10.244.0.12");
        node.sync(POLICIES, &["--cluster-cidr", "fd00:244::/64", "--masquerade-all"]);
        assert_eq!(peer(&request(Some("pod2"), "10.96.0.61:80", false, None)), BRIDGE_IP);
    });
}

/// A UDP flow pinned by conntrack to an endpoint that goes away moves to a remaining one
/// after the next sync: kproxy clears stale UDP entries, as upstream's reconciler does.
#[test]
fn stale_udp_flows_are_cleared() {
    in_sandbox("stale_udp_flows_are_cleared", || {
        let node = Node::new();
        node.sync(CLUSTER, &[]);
        let same_flow = || udp_flow(Some("client"), "10.96.0.53:53", "10.200.0.2:40053");
        let Reply::From { pod: first, .. } = same_flow() else { panic!("no answer") };
        // The same 5-tuple keeps its endpoint while nothing changes.
        assert!(matches!(same_flow(), Reply::From { pod, .. } if pod == first));

        let ip = if first == "pod1" { "10.244.0.11" } else { "10.244.0.12" };
        let dns_slice = "name: dns-1, labels: {kubernetes.io/service-name: dns}}";
        let (head, tail) = CLUSTER.split_once(dns_slice).unwrap();
        let tail = tail.replacen(&format!("      - {{addresses: [{ip}], nodeName: node-a}}\n"), "", 1);
        let out = node.sync(&format!("{head}{dns_slice}{tail}"), &[]);
        assert!(out.contains("1 stale UDP flow(s) cleared"), "{out}");
        let after = same_flow();
        assert!(matches!(&after, Reply::From { pod, .. } if *pod != first), "{after:?}");
    });
}

/// `kproxy trace --conntrack`: a client's flows, read back from the node's conntrack
/// table, name the endpoint each one was really DNATed to.
#[test]
fn trace_conntrack_names_the_endpoint_each_flow_went_to() {
    in_sandbox("trace_conntrack_names_the_endpoint_each_flow_went_to", || {
        let node = Node::new();
        node.sync(CLUSTER, &[]);
        let pod_ip = |pod: &str| PODS.iter().find(|(p, _)| *p == pod).map(|(_, ip)| ip.to_string()).unwrap();
        let Reply::From { pod: udp_pod, .. } = udp_flow(Some("client"), "10.96.0.53:53", "10.200.0.2:40053") else {
            panic!("no UDP answer")
        };
        let Reply::From { pod: tcp_pod, .. } =
            request(Some("client"), "10.96.0.10:80", false, Some("10.200.0.2:40080"))
        else {
            panic!("no TCP answer")
        };
        let trace = |extra: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_kproxy"))
                .args(["trace", "--conntrack"])
                .args(extra)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let all = trace(&["--from", "10.200.0.2"]);
        let udp_line = format!("udp 10.200.0.2:40053 -> 10.96.0.53:53 => {}:5353", pod_ip(&udp_pod));
        let tcp_line = format!("tcp 10.200.0.2:40080 -> 10.96.0.10:80 => {}:8080", pod_ip(&tcp_pod));
        assert!(all.lines().any(|l| l == udp_line) && all.lines().any(|l| l == tcp_line), "{all}");
        let only_udp = trace(&["--from", "10.200.0.2", "--to", "10.96.0.53:53/udp"]);
        assert_eq!(only_udp.trim(), udp_line);
        let nobody = trace(&["--from", "external:10.200.0.3"]);
        assert_eq!(nobody.trim(), "no DNATed flows from 10.200.0.3 in this node's conntrack table");
    });
}

const EXTERNAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: lb-local}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.80
  externalTrafficPolicy: Local
  externalIPs: [192.0.2.81]
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.80}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: lb-local-1, labels: {kubernetes.io/service-name: lb-local}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.244.0.11], nodeName: node-a}
  - {addresses: [10.244.0.12], nodeName: node-a}
"#;

/// externalTrafficPolicy: Local from every kind of source, over LB IP, external IP and
/// NodePort: external clients keep their address; pods short-circuit unmasqueraded; the
/// node itself is masqueraded.
#[test]
fn external_frontends_from_every_source() {
    in_sandbox("external_frontends_from_every_source", || {
        let node = Node::new();
        node.sync(EXTERNAL, &[]);
        let np = format!("{NODE_IP}:30080");
        for target in ["192.0.2.80:80", "192.0.2.81:80", np.as_str()] {
            let from_client = requests(10, Some("client"), target, false);
            assert_eq!(pods(&from_client), both(), "client -> {target}: {from_client:?}");
            assert_eq!(peers(&from_client), [CLIENT_IP.to_string()].into(), "client -> {target}");

            let from_pod = requests(10, Some("pod1"), target, false);
            assert_eq!(pods(&from_pod), both(), "pod -> {target}: {from_pod:?}");
            // pod1 reaching pod2 keeps its address; reaching itself is hairpin-masqueraded.
            for r in &from_pod {
                match r {
                    Reply::From { pod, peer } if pod == "pod2" => assert_eq!(peer, "10.244.0.11", "pod -> {target}"),
                    Reply::From { peer, .. } => assert_eq!(peer, BRIDGE_IP, "pod -> {target}"),
                    other => panic!("pod -> {target}: {other:?}"),
                }
            }

            let from_node = requests(6, None, target, false);
            assert!(!pods(&from_node).is_empty(), "node -> {target}: {from_node:?}");
            assert_eq!(peers(&from_node), [BRIDGE_IP.to_string()].into(), "node -> {target}: masqueraded");
        }
    });
}

/// The Node of these tests, with the node's uplink address as its InternalIP.
const NODE_OBJECT: &str = r#"
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 10.200.0.1}]}
"#;

/// `--nodeport-addresses` keywords and CIDRs, `--bind-address`, and upstream's node-IP
/// fallback, each checked with real connections to the node's two addresses (its uplink
/// 10.200.0.1 and its bridge 10.244.0.1).
#[test]
fn nodeport_addresses_keywords_and_bind_address() {
    in_sandbox("nodeport_addresses_keywords_and_bind_address", || {
        let node = Node::new();
        let with_node = format!("{CLUSTER}{NODE_OBJECT}");
        let answers =
            |ip: &str| matches!(request(Some("client"), &format!("{ip}:30080"), false, None), Reply::From { .. });
        let cases: [(&str, &str, &[&str], [bool; 2]); 7] = [
            ("primary (the default): the Node's InternalIP only", &with_node, &[], [true, false]),
            ("all", &with_node, &["--nodeport-addresses", "all"], [true, true]),
            ("primary,localhost", &with_node, &["--nodeport-addresses=primary,localhost"], [true, false]),
            ("a CIDR", &with_node, &["--nodeport-addresses", "10.244.0.0/24"], [false, true]),
            ("--bind-address overrides the primary IP", &with_node, &["--bind-address", BRIDGE_IP], [false, true]),
            ("no Node: no node IP, so primary matches none and every address accepts", CLUSTER, &[], [true, true]),
            ("primary,10.244.0.0/24", &with_node, &["--nodeport-addresses=primary,10.244.0.0/24"], [true, true]),
        ];
        for (what, yaml, flags, expected) in cases {
            node.sync(yaml, flags);
            assert_eq!([answers(NODE_IP), answers(BRIDGE_IP)], expected, "{what}");
        }
    });
}
