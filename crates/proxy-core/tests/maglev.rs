//! Maglev tables held to the paper's promises: the same table from the same endpoint set,
//! balance, little disruption, and the kernel's `jhash` bit for bit.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::{Cluster, ep, port, service, slice, upstream_node};
use k8s_openapi::api::core::v1 as core;
use proxy_core::maglev::{self, Hash, SIZE_CLASSES, jhash, size_for, slot, table};
use proxy_core::model::LoadBalancing;
use proxy_core::trace::{Packet, Source, Verdict, trace};
use proxy_core::{IpFamily, Protocol, ingest, translate};

fn endpoints(n: u8) -> Vec<SocketAddr> {
    let mut eps: Vec<SocketAddr> = (1..=n).map(|i| SocketAddr::from(([10, 244, i / 8, i], 8080))).collect();
    eps.sort();
    eps
}

/// 10,000 client addresses, spread as real clients are: over many networks.
fn clients(n: u32) -> Vec<IpAddr> {
    (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919))).collect()
}

/// Which endpoint each client gets.
fn assignment(eps: &[SocketAddr], size: u32, clients: &[IpAddr]) -> Vec<SocketAddr> {
    let t = table(eps, size);
    clients.iter().map(|c| eps[t[slot(*c, size, maglev::DEFAULT_SEED) as usize] as usize]).collect()
}

fn moved(a: &[SocketAddr], b: &[SocketAddr]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

/// Known answers of Linux's jhash (computed by the kernel: the nft-backend kernel test
/// `maglev_slots_match_the_kernel` checks `slot` against real packets).
#[test]
fn jhash_known_answers() {
    // lookup3's published test vectors for hashlittle(), which jhash equals on
    // little-endian machines: "" with seed 0 and seed 0xdeadbeef, and the sentence.
    assert_eq!(jhash(b"", 0), 0xdeadbeef);
    assert_eq!(jhash(b"", 0xdeadbeef), 0xbd5b7dde);
    assert_eq!(jhash(b"Four score and seven years ago", 0), 0x17770551);
    assert_eq!(jhash(b"Four score and seven years ago", 1), 0xcd628161);
}

#[test]
fn every_slot_is_owned_and_each_endpoint_gets_its_share() {
    for n in [1u8, 2, 3, 10, 11, 50, 200] {
        let eps = endpoints(n);
        let size = size_for(eps.len(), 16381);
        let t = table(&eps, size);
        assert_eq!(t.len(), size as usize);
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for owner in &t {
            *counts.entry(*owner).or_default() += 1;
        }
        assert_eq!(counts.len(), n as usize, "every endpoint owns slots");
        let (lo, hi) = (size / n as u32, size.div_ceil(n as u32));
        assert!(counts.values().all(|c| (lo..=hi).contains(c)), "n={n} size={size}: {counts:?}");
    }
}

#[test]
fn the_same_endpoints_give_the_same_table() {
    let eps = endpoints(10);
    assert_eq!(table(&eps, 1021), table(&eps.clone(), 1021));
    // Known cells pin the permutation hashes: changing them would move every client of
    // every cluster on upgrade. (They changed once, on 2026-12-08, when endpoints came to
    // be named by address alone so that a Service's ports share one table.)
    let t = table(&eps, 251);
    let fingerprint: u64 = t.iter().enumerate().map(|(i, o)| (i as u64 + 1) * (*o as u64 + 1)).sum();
    assert_eq!(fingerprint, 178_271, "the table for 10 endpoints changed");
}

/// Endpoints at the same addresses give the same table whatever their ports, so the ports
/// of a Service share one; a list that holds an address twice is told apart by port.
#[test]
fn the_table_depends_on_addresses_not_ports() {
    let eps = endpoints(10);
    let on_9090: Vec<SocketAddr> = eps.iter().map(|e| SocketAddr::new(e.ip(), 9090)).collect();
    let addrs: Vec<IpAddr> = eps.iter().map(|e| e.ip()).collect();
    assert_eq!(table(&eps, 1021), table(&on_9090, 1021));
    assert_eq!(table(&eps, 1021), maglev::address_table(&addrs, 1021));
    // One pod on two target ports: two endpoints, each with its share of the slots.
    let mut twice = eps.clone();
    twice.push(SocketAddr::new(eps[0].ip(), 9090));
    twice.sort();
    assert!(!maglev::addresses_distinct(&twice));
    let t = table(&twice, 1021);
    let owners: std::collections::BTreeSet<u32> = t.iter().copied().collect();
    assert_eq!(owners.len(), 11, "both endpoints at one address own slots");
}

#[test]
fn size_classes_follow_the_endpoint_count_and_the_cap() {
    assert_eq!(size_for(0, 16381), 251);
    assert_eq!(size_for(1, 16381), 251);
    assert_eq!(size_for(2, 16381), 1021);
    assert_eq!(size_for(3, 16381), 1021);
    assert_eq!(size_for(4, 16381), 4093);
    assert_eq!(size_for(13, 16381), 4093);
    assert_eq!(size_for(14, 16381), 16381);
    assert_eq!(size_for(54, 16381), 16381);
    assert_eq!(size_for(55, 16381), 16381, "the cap");
    assert_eq!(size_for(55, 65521), 65521);
    assert_eq!(size_for(5000, 65521), 65521);
    assert_eq!(size_for(250, 4093), 4093);
    assert_eq!(size_for(250, 1), 251, "the cap never goes below the smallest class");
    assert!(SIZE_CLASSES.iter().all(|m| maglev::is_prime(*m)));
    assert!(!maglev::is_prime(1) && maglev::is_prime(2) && !maglev::is_prime(1023));
}

#[test]
fn balance_over_ten_thousand_clients_is_within_ten_percent() {
    let eps = endpoints(10);
    let clients = clients(10_000);
    let got = assignment(&eps, size_for(10, 16381), &clients);
    let mut counts: HashMap<SocketAddr, u32> = HashMap::new();
    for ep in got {
        *counts.entry(ep).or_default() += 1;
    }
    assert!(counts.values().all(|c| (900..=1100).contains(c)), "{counts:?}");
}

#[test]
fn one_more_endpoint_moves_about_one_in_n() {
    let clients = clients(10_000);
    for n in [5u8, 10, 20] {
        let (before, after) = (endpoints(n), endpoints(n + 1));
        let size = size_for(before.len(), 16381);
        assert_eq!(size, size_for(after.len(), 16381), "no class boundary here");
        let (a, b) = (assignment(&before, size, &clients), assignment(&after, size, &clients));
        let share = 1.0 / f64::from(n + 1);
        let m = moved(&a, &b);
        assert!(m <= share + 0.02, "{n}→{}: {m:.3} moved, share {share:.3}", n + 1);
        // Those that moved went to the new endpoint, bar the few Maglev reshuffles.
        let new = after.iter().find(|e| !before.contains(e)).unwrap();
        let elsewhere = a.iter().zip(&b).filter(|(x, y)| x != y && *y != new).count();
        assert!(elsewhere as f64 / clients.len() as f64 <= 0.02, "{elsewhere} moved between old endpoints");
    }
}

#[test]
fn removing_an_endpoint_moves_only_its_clients() {
    let clients = clients(10_000);
    let before = endpoints(10);
    let size = size_for(10, 16381);
    for gone in [0usize, 4, 9] {
        let mut after = before.clone();
        let removed = after.remove(gone);
        let (a, b) = (assignment(&before, size, &clients), assignment(&after, size, &clients));
        let others = a.iter().zip(&b).filter(|(x, y)| x != y && **x != removed).count();
        assert!(others as f64 / clients.len() as f64 <= 0.02, "{others} clients of other endpoints moved");
        assert!(b.iter().all(|e| *e != removed));
    }
}

#[test]
fn ipv6_clients_hash_over_sixteen_bytes() {
    let eps = endpoints(4);
    let t = table(&eps, 251);
    let c: IpAddr = "fd00:200::2".parse().unwrap();
    let s = slot(c, 251, 1);
    assert!(s < 251);
    assert!((t[s as usize] as usize) < eps.len());
    // The slot is the kernel's reduction of the 16-byte jhash.
    let ip = match c {
        IpAddr::V6(ip) => ip.octets(),
        _ => unreachable!(),
    };
    assert_eq!(s, ((u64::from(jhash(&ip, 1)) * 251) >> 32) as u32);
}

#[test]
fn no_endpoints_no_table() {
    assert!(table(&[], 251).is_empty());
}

/// At the largest endpoint count of each size class (the fewest slots per endpoint),
/// removing an endpoint still moves under 2% of the other endpoints' clients.
#[test]
fn each_class_keeps_extra_disruption_under_two_percent() {
    let clients = clients(10_000);
    for n in [3u8, 13, 54] {
        let before = endpoints(n);
        let size = size_for(before.len(), 16381);
        let mut after = before.clone();
        let removed = after.remove(n as usize / 2);
        let (a, b) = (assignment(&before, size, &clients), assignment(&after, size, &clients));
        let others = a.iter().zip(&b).filter(|(x, y)| x != y && **x != removed).count();
        assert!(others as f64 / 1e4 <= 0.02, "n={n} M={size}: {others} of 10,000 moved needlessly");
    }
}

// === From the annotation to the tracer ===

fn annotated(annotations: &[(&str, &str)], affinity: bool) -> core::Service {
    let mut svc = service("ns", "web", "172.30.0.41", |s| {
        s.ports = Some(vec![port("http", 80, "TCP")]);
        if affinity {
            s.session_affinity = Some("ClientIP".into());
        }
    });
    let map: BTreeMap<String, String> = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    svc.metadata.annotations = Some(map);
    svc
}

#[test]
fn the_annotation_is_read_and_a_bad_value_is_a_warning() {
    let lb = |annotations: &[(&str, &str)]| {
        let t = translate::service(&annotated(annotations, false)).unwrap();
        (t.value.load_balancing, t.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(lb(&[]), (LoadBalancing::NodeDefault, vec![]));
    assert_eq!(
        lb(&[("kproxy.io/load-balancing", "maglev")]),
        (LoadBalancing::Maglev { table_size: None, hash: Hash::Source }, vec![])
    );
    assert_eq!(lb(&[("kproxy.io/load-balancing", "Random")]), (LoadBalancing::Random, vec![]));
    assert_eq!(
        lb(&[("kproxy.io/load-balancing", "maglev"), ("kproxy.io/maglev-table-size", "1009")]),
        (LoadBalancing::Maglev { table_size: std::num::NonZeroU32::new(1009), hash: Hash::Source }, vec![])
    );
    assert_eq!(
        lb(&[("kproxy.io/load-balancing", "maglev"), ("kproxy.io/maglev-hash", "connection")]),
        (LoadBalancing::Maglev { table_size: None, hash: Hash::Connection }, vec![])
    );
    let (got, problems) = lb(&[("kproxy.io/load-balancing", "maglev"), ("kproxy.io/maglev-hash", "5-tuple")]);
    assert_eq!(got, LoadBalancing::Maglev { table_size: None, hash: Hash::Source });
    assert_eq!(problems.len(), 1, "{problems:?}");
    let (got, problems) = lb(&[("kproxy.io/load-balancing", "hash")]);
    assert_eq!(got, LoadBalancing::NodeDefault);
    assert_eq!(problems, ["Service ns/web: metadata.annotations[kproxy.io/load-balancing]: unknown value \"hash\""]);
    for bad in ["1000", "0", "65537", "big"] {
        let (got, problems) = lb(&[("kproxy.io/load-balancing", "maglev"), ("kproxy.io/maglev-table-size", bad)]);
        assert_eq!(got, LoadBalancing::Maglev { table_size: None, hash: Hash::Source }, "{bad}");
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
    }
}

/// A cluster with the web Service (annotated as given) and ten endpoints.
fn cluster(annotations: &[(&str, &str)], affinity: bool, maglev_by_default: bool) -> Cluster {
    let mut node = upstream_node();
    node.maglev.by_default = maglev_by_default;
    let mut c = Cluster::new(node);
    let eps: Vec<_> = (1..=10).map(|i| ep(&format!("10.180.0.{i}"))).collect();
    c.add_service(annotated(annotations, affinity));
    c.add_slice(slice("ns", "web", 1, &[("http", 8080, "TCP")], &eps));
    c
}

fn table_size(c: &mut Cluster) -> Option<u32> {
    let desired = c.sync();
    desired.family(IpFamily::V4).service_ports.values().next().unwrap().maglev.as_ref().map(|m| m.table.size)
}

#[test]
fn compute_gives_maglev_by_annotation_or_node_default_but_never_under_affinity() {
    let maglev = [("kproxy.io/load-balancing", "maglev")];
    let random = [("kproxy.io/load-balancing", "random")];
    assert_eq!(table_size(&mut cluster(&[], false, false)), None);
    assert_eq!(table_size(&mut cluster(&maglev, false, false)), Some(4093), "10 endpoints: the 4093 class");
    assert_eq!(table_size(&mut cluster(&[], false, true)), Some(4093), "the node's default");
    assert_eq!(table_size(&mut cluster(&random, false, true)), None, "the annotation beats the default");
    assert_eq!(table_size(&mut cluster(&maglev, true, false)), None, "sessionAffinity: ClientIP wins");
    let sized = [("kproxy.io/load-balancing", "maglev"), ("kproxy.io/maglev-table-size", "65521")];
    assert_eq!(table_size(&mut cluster(&sized, false, false)), Some(65521));
}

#[test]
fn the_tracer_names_the_one_endpoint_a_client_gets() {
    let mut c = cluster(&[("kproxy.io/load-balancing", "maglev")], false, false);
    let desired = c.sync().clone();
    let eps: Vec<SocketAddr> = (1..=10).map(|i| format!("10.180.0.{i}:8080").parse().unwrap()).collect();
    let mut sorted = eps.clone();
    sorted.sort();
    let t = table(&sorted, 4093);
    let mut seen = std::collections::BTreeSet::new();
    for client in clients(200) {
        let packet = Packet {
            source: Source::external(client),
            protocol: Protocol::Tcp,
            destination: "172.30.0.41".parse().unwrap(),
            port: 80,
        };
        let want = sorted[t[slot(client, 4093, maglev::DEFAULT_SEED) as usize] as usize];
        assert_eq!(trace(&desired, &packet).verdict, Verdict::Endpoints([want].into()), "{client}");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 10, "200 clients reach every endpoint");
}

#[test]
fn a_maglev_service_reaches_the_engine_through_ingest() {
    let i = ingest::service_applied(&annotated(&[("kproxy.io/load-balancing", "maglev")], false));
    assert!(i.problems.is_empty());
    let proxy_core::Event::ServiceApplied(svc) = i.event else { panic!("not an apply") };
    assert_eq!(svc.load_balancing, LoadBalancing::Maglev { table_size: None, hash: Hash::Source });
}

/// The connection hash reads the address, then the source port padded to 32 bits, as the
/// kernel's registers hold them; the source port changes the slot.
#[test]
fn connection_slots_hash_the_padded_source_port() {
    let client: IpAddr = "10.1.2.3".parse().unwrap();
    let key = [10, 1, 2, 3, 0x9c, 0x40, 0, 0]; // port 40000
    assert_eq!(maglev::connection_slot(client, 40000, 4093, 7), ((u64::from(jhash(&key, 7)) * 4093) >> 32) as u32);
    let slots: std::collections::BTreeSet<u32> =
        (40000..40100).map(|port| maglev::connection_slot(client, port, 4093, 7)).collect();
    assert!(slots.len() > 90, "ports spread over slots: {}", slots.len());
}

#[test]
fn the_tracer_cannot_name_one_endpoint_for_a_connection_hash() {
    let mut c =
        cluster(&[("kproxy.io/load-balancing", "maglev"), ("kproxy.io/maglev-hash", "connection")], false, false);
    let desired = c.sync().clone();
    let packet = Packet {
        source: Source::external("203.0.113.7".parse().unwrap()),
        protocol: Protocol::Tcp,
        destination: "172.30.0.41".parse().unwrap(),
        port: 80,
    };
    let Verdict::Endpoints(eps) = trace(&desired, &packet).verdict else { panic!("no endpoints") };
    assert_eq!(eps.len(), 10, "without a source port, every endpoint is possible");
}

/// The ports of a Service share one table per policy when their endpoints are at the same
/// addresses, each port on one target port; otherwise a port keeps a table of its own.
#[test]
fn a_services_ports_share_one_table_when_they_reach_the_same_pods() {
    type Ports<'a> = &'a [(&'a str, i32, &'a str)];
    type Slices<'a> = Vec<(Ports<'a>, Vec<&'a str>)>;
    // (case, the slices' ports and endpoints, port names expected to share one table)
    let cases: [(&str, Slices, Vec<Vec<&str>>); 4] = [
        (
            "three ports, TCP and UDP, one slice",
            vec![(
                &[("http", 8080, "TCP"), ("metrics", 9090, "TCP"), ("dns", 5353, "UDP")],
                vec!["10.180.0.1", "10.180.0.2"],
            )],
            vec![vec!["dns", "http", "metrics"]],
        ),
        (
            "a port another pod lacks",
            vec![
                (&[("http", 8080, "TCP"), ("metrics", 9090, "TCP")], vec!["10.180.0.1"]),
                (&[("http", 8080, "TCP")], vec!["10.180.0.2"]),
            ],
            vec![vec!["http"], vec!["metrics"]],
        ),
        (
            "a named target port that differs between pods",
            vec![
                (&[("http", 8080, "TCP"), ("metrics", 9090, "TCP")], vec!["10.180.0.1"]),
                (&[("http", 8081, "TCP"), ("metrics", 9090, "TCP")], vec!["10.180.0.2"]),
            ],
            vec![vec!["metrics"]],
        ),
        ("no endpoints", vec![], vec![]),
    ];
    for (case, slices, want) in cases {
        let mut c = Cluster::new(upstream_node());
        let mut svc = annotated(&[("kproxy.io/load-balancing", "maglev")], false);
        svc.spec.as_mut().unwrap().ports =
            Some(vec![port("http", 80, "TCP"), port("metrics", 9090, "TCP"), port("dns", 53, "UDP")]);
        c.add_service(svc);
        for (i, (ports, ips)) in slices.iter().enumerate() {
            let eps: Vec<_> = ips.iter().map(|ip| ep(ip)).collect();
            c.add_slice(slice("ns", "web", i as u32 + 1, ports, &eps));
        }
        let desired = c.sync().clone();
        let rules: Vec<_> = desired.family(IpFamily::V4).service_ports.values().cloned().collect();
        let mut groups: Vec<Vec<&str>> = Vec::new();
        for r in &rules {
            let Some(t) = r.maglev.as_ref().unwrap().shared(proxy_core::Policy::Cluster) else { continue };
            let sharers: Vec<&str> = rules
                .iter()
                .filter(|o| {
                    o.maglev
                        .as_ref()
                        .unwrap()
                        .shared(proxy_core::Policy::Cluster)
                        .is_some_and(|u| std::sync::Arc::ptr_eq(t, u))
                })
                .map(|o| &*o.name.port)
                .collect();
            assert_eq!(&*t.owner.port, sharers[0], "{case}: named after the first port that uses it");
            assert_eq!(t.slots.len(), t.table.size as usize, "{case}");
            if !groups.contains(&sharers) {
                groups.push(sharers);
            }
        }
        assert_eq!(groups, want, "{case}");
        assert!(
            rules.iter().all(|r| r.maglev.as_ref().unwrap().shared(proxy_core::Policy::Local).is_none()),
            "{case}: Local policy is unused"
        );
    }
}
