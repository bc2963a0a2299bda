//! Maglev hashing with real packets: two nodes (network namespaces, each with its own
//! `kproxy sync` of the same cluster) send 10,000 clients to the same endpoints, and the
//! 2,000 connections of one client, hashed by connection, too; adding or
//! removing an endpoint moves few of them; a fresh start plus `conntrack -F` moves none;
//! and the kernel's choice is the one `proxy_core::maglev` predicts, bit for bit, and the
//! one `kproxy trace` names.
//!
//! Each client is one UDP datagram from its own source address (the IPv4 client range is
//! a local route on `lo`, so any address in it can be bound; IPv6 binds with
//! `IPV6_FREEBIND`, which IPv4 output routing would refuse): the DNAT decision is read back
//! from conntrack. The
//! endpoints need not exist; the datagrams leave by an interface that leads nowhere.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;

use common::{in_sandbox, sh};
use proxy_core::maglev;

const CLIENTS: u32 = 10_000;
const SERVICE_V4: &str = "10.96.0.10";
const SERVICE_V6: &str = "fd00:96::10";
/// The same endpoints behind a Service that hashes the connection (address and port).
const CONNECTION_V4: &str = "10.96.0.11";
const CONNECTION_V6: &str = "fd00:96::11";
/// The connections of one client to it.
const FLOWS: u16 = 2000;

/// The endpoints `1..=n` of each family: 10.244.1.N and fd00:244:1::N, port 5353.
fn endpoint(family: u8, i: u8) -> SocketAddr {
    match family {
        4 => SocketAddr::from(([10, 244, 1, i], 5353)),
        _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, u16::from(i))), 5353),
    }
}

/// Two dual-stack UDP Services with the Maglev annotation and endpoints `ids`, in two
/// EndpointSlices per family, listed in the given order (a node must not care). `dns`
/// hashes the source and has a second port, `alt` (54 → 5354), on the same pods;
/// `conn` hashes the connection.
fn cluster(ids: &[u8]) -> String {
    let mut out = String::new();
    for (name, v4, v6, hash) in
        [("dns", SERVICE_V4, SERVICE_V6, "source"), ("conn", CONNECTION_V4, CONNECTION_V6, "connection")]
    {
        let (ports, target_ports) = if name == "dns" {
            (
                "{name: dns, port: 53, protocol: UDP}, {name: alt, port: 54, protocol: UDP}",
                "{name: dns, port: 5353, protocol: UDP}, {name: alt, port: 5354, protocol: UDP}",
            )
        } else {
            ("{name: dns, port: 53, protocol: UDP}", "{name: dns, port: 5353, protocol: UDP}")
        };
        out += &format!(
            "---
apiVersion: v1
kind: Service
metadata:
  namespace: default
  name: {name}
  annotations: {{kproxy.io/load-balancing: maglev, kproxy.io/maglev-hash: {hash}}}
spec:
  clusterIPs: [{v4}, \"{v6}\"]
  ipFamilies: [IPv4, IPv6]
  ports: [{ports}]
"
        );
        let halves = ids.split_at(ids.len() / 2);
        for (family, kind) in [(4, "IPv4"), (6, "IPv6")] {
            for (n, half) in [halves.0, halves.1].into_iter().enumerate() {
                let endpoints: String = half
                    .iter()
                    .map(|i| format!("  - {{addresses: [\"{}\"], nodeName: node-z}}\n", endpoint(family, *i).ip()))
                    .collect();
                out += &format!(
                    "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{namespace: default, name: {name}-v{family}-{n}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: {kind}
ports: [{target_ports}]
endpoints:
{endpoints}"
                );
            }
        }
    }
    out
}

/// A node: a network namespace whose traffic leaves by `dummy0`, one end of a veth pair
/// whose other end drops it (no forwarding). A user namespace cannot load the dummy
/// module, hence the veth.
struct Node(&'static str);

impl Node {
    fn new(name: &'static str) -> Node {
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up && \
             ip -n {name} link add dummy0 type veth peer name dummy1 && \
             ip -n {name} link set dummy0 up && ip -n {name} link set dummy1 up && \
             ip -n {name} addr add 10.244.1.254/24 dev dummy0 && \
             ip -n {name} addr add fd00:244:1::fe/64 dev dummy0 nodad && \
             ip -n {name} route add default dev dummy0 && ip -n {name} -6 route add default dev dummy0 && \
             ip -n {name} route add local 10.50.0.0/16 dev lo"
        ));
        Node(name)
    }

    /// `kproxy sync` of `ids` in this node, as a fresh process.
    fn sync(&self, ids: &[u8]) {
        let dir = std::env::temp_dir().join(format!("kproxy-maglev-{}-{}", std::process::id(), self.0));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.yaml"), cluster(ids)).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", self.0, env!("CARGO_BIN_EXE_kproxy"), "sync", "--manifests"])
            .arg(&dir)
            .args(["--hostname-override", self.0, "--cluster-cidr", "10.244.0.0/16,fd00:244::/48"])
            .output()
            .unwrap();
        assert!(out.status.success(), "kproxy sync failed: {}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Which endpoint each client gets for a new flow to the source-hashing Service.
    fn assignment(&self, family: u8) -> BTreeMap<IpAddr, SocketAddr> {
        let service = if family == 4 { SERVICE_V4 } else { SERVICE_V6 };
        let senders = clients(family).into_iter().map(|c| SocketAddr::new(c, 40000)).collect();
        self.dnat(service.parse().unwrap(), 53, senders).into_iter().map(|(c, ep)| (c.ip(), ep)).collect()
    }

    /// Which endpoint each flow gets: conntrack is flushed, each sender (address and
    /// source port) sends one datagram to `service`, and conntrack says where it went.
    fn dnat(&self, service: IpAddr, port: u16, senders: Vec<SocketAddr>) -> BTreeMap<SocketAddr, SocketAddr> {
        sh(&format!("ip netns exec {} conntrack -F 2>/dev/null", self.0));
        let netns = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        let count = senders.len();
        // setns applies to the calling thread only: a thread of its own sends.
        std::thread::spawn(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            for sender in senders {
                let domain = if sender.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
                let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None).unwrap();
                if sender.is_ipv6() {
                    s.set_freebind_v6(true).unwrap();
                }
                s.bind(&sender.into()).unwrap();
                s.send_to(b"q", &SocketAddr::new(service, port).into()).unwrap();
            }
        })
        .join()
        .unwrap();
        let table = sh(&format!(
            "ip netns exec {} conntrack -L -p udp --orig-dst {service} --orig-port-dst {port} 2>/dev/null",
            self.0
        ));
        let mut out = BTreeMap::new();
        for line in table.lines() {
            let field = |key: &str, nth: usize| line.split_whitespace().filter_map(|w| w.strip_prefix(key)).nth(nth);
            let fields = (field("src=", 0), field("sport=", 0), field("src=", 1), field("sport=", 1));
            let (Some(client), Some(sport), Some(ep), Some(port)) = fields else { continue };
            let sender = SocketAddr::new(client.parse().unwrap(), sport.parse().unwrap());
            out.insert(sender, SocketAddr::new(ep.parse().unwrap(), port.parse().unwrap()));
        }
        assert_eq!(out.len(), count, "one conntrack entry per flow:\n{table}");
        out
    }

    /// Which endpoint each of one client's connections gets on the connection-hashing
    /// Service, by source port.
    fn connections(&self, family: u8) -> BTreeMap<u16, SocketAddr> {
        let (service, client) = if family == 4 { (CONNECTION_V4, "10.50.0.1") } else { (CONNECTION_V6, "fd00:50::1") };
        let client: IpAddr = client.parse().unwrap();
        let senders = (0..FLOWS).map(|i| SocketAddr::new(client, 20000 + i)).collect();
        self.dnat(service.parse().unwrap(), 53, senders).into_iter().map(|(s, ep)| (s.port(), ep)).collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
    }
}

/// The client addresses: spread over 10.50.0.0/16 and fd00:50::/64.
fn clients(family: u8) -> Vec<IpAddr> {
    (0..CLIENTS)
        .map(|i| match family {
            4 => IpAddr::V4(Ipv4Addr::from(0x0a32_0000 + i * 3 + 1)),
            _ => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, (i >> 16) as u16, i as u16 * 3 + 1)),
        })
        .collect()
}

/// What proxy-core says each client gets with endpoints `ids`.
fn predicted(family: u8, ids: &[u8]) -> BTreeMap<IpAddr, SocketAddr> {
    let mut eps: Vec<SocketAddr> = ids.iter().map(|i| endpoint(family, *i)).collect();
    eps.sort();
    let size = maglev::size_for(eps.len(), maglev::DEFAULT_MAX_SIZE);
    let table = maglev::table(&eps, size);
    clients(family)
        .into_iter()
        .map(|c| (c, eps[table[maglev::slot(c, size, maglev::DEFAULT_SEED) as usize] as usize]))
        .collect()
}

fn moved(a: &BTreeMap<IpAddr, SocketAddr>, b: &BTreeMap<IpAddr, SocketAddr>) -> Vec<IpAddr> {
    a.iter().filter(|(c, ep)| b.get(c) != Some(ep)).map(|(c, _)| *c).collect()
}

fn share(n: usize) -> f64 {
    n as f64 / f64::from(CLIENTS)
}

#[test]
fn maglev_sends_each_client_to_the_same_endpoint_on_every_node() {
    in_sandbox("maglev_sends_each_client_to_the_same_endpoint_on_every_node", || {
        let ten: Vec<u8> = (1..=10).collect();
        let reversed: Vec<u8> = ten.iter().rev().copied().collect();
        let (a, b) = (Node::new("node-a"), Node::new("node-b"));
        a.sync(&ten);
        b.sync(&reversed);
        for family in [4, 6] {
            let (on_a, on_b) = (a.assignment(family), b.assignment(family));
            assert!(
                moved(&on_a, &on_b).is_empty(),
                "IPv{family}: {} clients differ between nodes",
                moved(&on_a, &on_b).len()
            );
            let want = predicted(family, &ten);
            let wrong = moved(&on_a, &want);
            assert!(wrong.is_empty(), "IPv{family}: the kernel and proxy-core disagree on {} clients", wrong.len());
            // Balance: every endpoint within ±10% of its share.
            let mut counts: BTreeMap<SocketAddr, u32> = BTreeMap::new();
            for ep in on_a.values() {
                *counts.entry(*ep).or_default() += 1;
            }
            assert_eq!(counts.len(), 10);
            assert!(counts.values().all(|c| (900..=1100).contains(c)), "IPv{family}: {counts:?}");
        }
        // The connection hash: one client's connections spread over the endpoints, each
        // the same on both nodes and where proxy-core puts it.
        for family in [4, 6] {
            let (on_a, on_b) = (a.connections(family), b.connections(family));
            assert_eq!(on_a, on_b, "IPv{family}: connections differ between nodes");
            let mut eps: Vec<SocketAddr> = ten.iter().map(|i| endpoint(family, *i)).collect();
            eps.sort();
            let table = maglev::table(&eps, 4093);
            let client: IpAddr = if family == 4 { "10.50.0.1".parse().unwrap() } else { "fd00:50::1".parse().unwrap() };
            for (port, ep) in &on_a {
                let slot = maglev::connection_slot(client, *port, 4093, maglev::DEFAULT_SEED);
                assert_eq!(*ep, eps[table[slot as usize] as usize], "IPv{family} port {port}");
            }
            let used: std::collections::BTreeSet<_> = on_a.values().collect();
            assert_eq!(used.len(), 10, "IPv{family}: one client's connections reach every endpoint");
        }

        // The Service's second port shares the table: each client reaches the same pod
        // through both ports, on the second port's target port; the kernel holds one
        // table per family for the two ports.
        for family in [4, 6] {
            let service: IpAddr = if family == 4 { SERVICE_V4 } else { SERVICE_V6 }.parse().unwrap();
            let senders: Vec<SocketAddr> =
                clients(family).into_iter().step_by(10).map(|c| SocketAddr::new(c, 40001)).collect();
            let on_53 = a.assignment(family);
            for (sender, ep) in a.dnat(service, 54, senders) {
                assert_eq!(ep, SocketAddr::new(on_53[&sender.ip()].ip(), 5354), "IPv{family} {sender}");
            }
            let listing =
                sh(&format!("ip netns exec node-a nft list table ip{} kproxy", if family == 4 { "" } else { "6" }));
            let tables =
                listing.lines().filter(|l| l.contains("map maglev-cluster-") && l.contains("default/dns/")).count();
            assert_eq!(tables, 1, "IPv{family}: one table for both ports");
        }

        let before = a.assignment(4);

        // `kproxy trace` names the endpoint the kernel chose, client by client.
        let dir = std::env::temp_dir().join(format!("kproxy-maglev-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.yaml"), cluster(&ten)).unwrap();
        for client in clients(4).into_iter().step_by(500) {
            let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
                .args(["trace", "--hostname-override", "node-a", "--manifests"])
                .arg(&dir)
                .args(["--from", &format!("external:{client}"), "--to", &format!("{SERVICE_V4}:53/udp")])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("endpoints: {}\n", before[&client])), "{client}: {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);

        // 10 → 11 endpoints: about 1/11 move, all of them to the new endpoint.
        let eleven: Vec<u8> = (1..=11).collect();
        a.sync(&eleven);
        let grown = a.assignment(4);
        let moved_up = moved(&before, &grown);
        assert!(share(moved_up.len()) <= 1.0 / 11.0 + 0.02, "10→11 moved {}", moved_up.len());
        let elsewhere = moved_up.iter().filter(|c| grown[*c] != endpoint(4, 11)).count();
        assert!(share(elsewhere) <= 0.02, "{elsewhere} moved between the old endpoints");
        assert_eq!(grown, predicted(4, &eleven));

        // One endpoint removed: only its clients move (plus at most 2%).
        let nine: Vec<u8> = ten.iter().copied().filter(|i| *i != 5).collect();
        a.sync(&nine);
        let shrunk = a.assignment(4);
        let others = moved(&before, &shrunk).into_iter().filter(|c| before[c] != endpoint(4, 5)).count();
        assert!(share(others) <= 0.02, "{others} clients of other endpoints moved");
        assert!(shrunk.values().all(|ep| *ep != endpoint(4, 5)));

        // A fresh start (the table gone, a new process) and a conntrack flush move nobody.
        a.sync(&ten);
        sh("ip netns exec node-a nft delete table ip kproxy");
        a.sync(&ten);
        assert!(moved(&before, &a.assignment(4)).is_empty(), "a restart moved clients");
    });
}
