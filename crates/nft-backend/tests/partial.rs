//! Partial syncs against the kernel: each incremental change lands as a small transaction
//! and leaves exactly the ruleset a full sync of the same state writes; a transaction the
//! kernel rejects changes nothing.

mod common;

use common::*;
use nft_backend::NftBackend;
use nft_client::netlink::{self, socket::Socket};
use nft_client::tx::{Op, Transaction};
use proxy_core::{Backend, Event, IpFamily, ObjectRef, Syncer, ingest};

fn list() -> String {
    sh("nft list ruleset")
}

fn normalized() -> String {
    normalize(&list())
}

fn apply_yaml(engine: &mut proxy_core::Engine, yaml: &str) {
    for object in proxy_core::manifest::parse(yaml) {
        let ingested = match object.unwrap() {
            proxy_core::manifest::Object::Service(s) => ingest::service_applied(&s),
            proxy_core::manifest::Object::EndpointSlice(s) => ingest::slice_applied(&s),
            _ => continue,
        };
        engine.apply(ingested.event);
    }
}

/// The fixture's Maglev Service ns8/mag: table size, hash, with its `dns` port (the first
/// in name order, which names its tables) and its `metrics` port.
fn maglev_service(size: &str, hash: &str, dns: bool, metrics: bool) -> String {
    let mut ports = vec!["{name: http, port: 80, nodePort: 3004}"];
    if dns {
        ports.push("{name: dns, port: 53, protocol: UDP, nodePort: 3005}");
    }
    if metrics {
        ports.push("{name: metrics, port: 9090, nodePort: 3006}");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: ns8\n  name: mag\n  annotations: {{kproxy.io/load-balancing: maglev, \
         kproxy.io/maglev-table-size: \"{size}\", kproxy.io/maglev-hash: {hash}}}\nspec:\n  type: NodePort\n  \
         clusterIPs: [172.30.0.58, \"fd00:10:96::58\"]\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30008\n  \
         ports: [{}]\n",
        ports.join(", ")
    )
}

/// The IPv4 slice of ns8/mag: these pods, the first on this node.
fn maglev_slice(ips: &[&str], metrics: bool) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{{addresses: [{ip}], nodeName: {}}}", if i == 0 { "test-node" } else { "other-node" }))
        .collect();
    let metrics = if metrics { ", {name: metrics, port: 9100}" } else { "" };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: ns8, name: mag-v4, labels: \
         {{kubernetes.io/service-name: mag}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}, \
         {{name: dns, port: 5353, protocol: UDP}}{metrics}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

#[test]
fn partial_syncs_equal_full_syncs() {
    in_netns("partial_syncs_equal_full_syncs", || {
        let mut engine = engine(node(), include_str!("fixtures/cluster.yaml"));
        let mut syncer = Syncer::new(NftBackend::new("kproxy"));
        let plan = proxy_core::Plan { full: true, ..Default::default() };
        syncer.sync(&plan, engine.desired()).expect("full sync");

        type Step = (&'static str, Box<dyn Fn(&mut proxy_core::Engine)>);
        let steps: Vec<Step> = vec![
            (
                "endpoint added",
                Box::new(|e| {
                    apply_yaml(
                        e,
                        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: ns1, name: svc1-1, labels: {kubernetes.io/service-name: svc1}}\naddressType: IPv4\nports: [{name: p80, port: 80}]\nendpoints: [{addresses: [10.180.0.1]}, {addresses: [10.180.0.9]}, {addresses: [10.180.0.10]}]\n",
                    )
                }),
            ),
            (
                "endpoint removed",
                Box::new(|e| {
                    apply_yaml(
                        e,
                        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: ns1, name: svc1-1, labels: {kubernetes.io/service-name: svc1}}\naddressType: IPv4\nports: [{name: p80, port: 80}]\nendpoints: [{addresses: [10.180.0.9]}, {addresses: [10.180.0.10]}]\n",
                    )
                }),
            ),
            (
                "service added",
                Box::new(|e| {
                    apply_yaml(
                        e,
                        "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns8, name: new}\nspec: {clusterIP: 172.30.0.48, type: NodePort, ports: [{name: p, port: 8080, nodePort: 3008}]}\n",
                    )
                }),
            ),
            (
                "endpoints of the new service",
                Box::new(|e| {
                    apply_yaml(
                        e,
                        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: ns8, name: new-1, labels: {kubernetes.io/service-name: new}}\naddressType: IPv4\nports: [{name: p, port: 80}]\nendpoints: [{addresses: [10.180.8.1], nodeName: test-node}, {addresses: [10.180.8.2]}]\n",
                    )
                }),
            ),
            (
                "policy flipped to Local",
                Box::new(|e| {
                    apply_yaml(
                        e,
                        "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns8, name: new}\nspec: {clusterIP: 172.30.0.48, type: NodePort, externalTrafficPolicy: Local, ports: [{name: p, port: 8080, nodePort: 3008}]}\n",
                    )
                }),
            ),
            (
                "affinity timeout changed",
                Box::new(|e| {
                    apply_yaml(
                        e,
                        "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns5, name: svc5}\n\
                         spec: {type: LoadBalancer, clusterIP: 172.30.0.45, sessionAffinity: ClientIP,\n\
                         sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}},\n\
                         loadBalancerSourceRanges: [203.0.113.0/25], ports: [{name: p80, port: 80, nodePort: 3002}]}\n\
                         status: {loadBalancer: {ingress: [{ip: 5.6.7.8}]}}\n",
                    )
                }),
            ),
            (
                "affinity service loses its endpoints",
                Box::new(|e| {
                    e.apply(Event::SliceDeleted(ObjectRef::new("ns5", "svc5-1")));
                }),
            ),
            (
                "a second Service claims svc3's ClusterIP and port",
                Box::new(|e| {
                    apply_yaml(
                        e,
                        "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns0, name: dup}\n\
                         spec: {clusterIP: 172.30.0.43, ports: [{name: p80, port: 80}]}\n---\n\
                         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                         metadata: {namespace: ns0, name: dup-1, labels: {kubernetes.io/service-name: dup}}\n\
                         addressType: IPv4\nports: [{name: p80, port: 80}]\nendpoints: [{addresses: [10.180.0.99]}]\n",
                    )
                }),
            ),
            (
                "the claimant leaves and svc3 gets its frontend back",
                Box::new(|e| {
                    e.apply(Event::ServiceDeleted(ObjectRef::new("ns0", "dup")));
                }),
            ),
            (
                "service removed",
                Box::new(|e| {
                    e.apply(Event::ServiceDeleted(ObjectRef::new("ns4", "svc4")));
                }),
            ),
            (
                "dual-stack service removed",
                Box::new(|e| {
                    e.apply(Event::ServiceDeleted(ObjectRef::new("ns7", "dual")));
                }),
            ),
            (
                "Maglev: an endpoint added (the shared table's slots move)",
                Box::new(|e| apply_yaml(e, &maglev_slice(&["10.180.0.9", "10.180.0.10", "10.180.0.13"], false))),
            ),
            (
                "Maglev: a port added to the Service and its pods",
                Box::new(|e| {
                    apply_yaml(e, &maglev_service("7", "source", true, true));
                    apply_yaml(e, &maglev_slice(&["10.180.0.9", "10.180.0.10", "10.180.0.13"], true));
                }),
            ),
            (
                "Maglev: the table size changed",
                Box::new(|e| apply_yaml(e, &maglev_service("11", "source", true, true))),
            ),
            (
                "Maglev: the port the tables are named after removed",
                Box::new(|e| apply_yaml(e, &maglev_service("11", "source", false, true))),
            ),
            (
                "Maglev: hashing the connection",
                Box::new(|e| apply_yaml(e, &maglev_service("11", "connection", false, true))),
            ),
            (
                "Maglev: the Service removed",
                Box::new(|e| {
                    e.apply(Event::ServiceDeleted(ObjectRef::new("ns8", "mag")));
                }),
            ),
        ];
        for (name, step) in steps {
            step(&mut engine);
            let plan = engine.plan();
            assert!(!plan.full && !plan.changes.is_empty(), "{name}: expected a partial plan");
            let stats = syncer.sync(&plan, engine.desired()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!stats.full, "{name}");
            let after_partial = normalized();
            // A full sync must write the same.
            syncer.backend_mut().sync_full(engine.desired()).expect("full sync");
            assert!(normalized() == after_partial, "{name}: partial sync left a different ruleset:\n{after_partial}");
            eprintln!("{name}: {} operations", stats.operations);
        }
        assert!(!list().contains("svc4"), "the removed service left objects behind");
        assert!(!list().contains("ns8/mag/"), "the removed Maglev service left tables behind");
        assert!(!list().contains("affinity-"), "affinity sets of a service without endpoints remain");
    });
}

/// Endpoint changes and new Services are data: their transactions hold map elements and
/// no rule or chain, so the kernel has no chain to re-validate. Only an endpoint count
/// seen for the first time adds a rule, in its place in a shared `pick-…` chain, and an
/// endpoint map for that count; the last user of a count takes both away.
#[test]
fn endpoint_changes_and_new_services_write_only_elements() {
    in_netns("endpoint_changes_and_new_services_write_only_elements", || {
        let mut engine = engine(node(), include_str!("fixtures/cluster.yaml"));
        let mut syncer = Syncer::new(NftBackend::new("kproxy"));
        syncer.sync(&proxy_core::Plan { full: true, ..Default::default() }, engine.desired()).expect("full sync");
        let slice = |eps: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: ns1, name: svc1-1, labels: {{kubernetes.io/service-name: svc1}}}}\naddressType: IPv4\nports: [{{name: p80, port: 80}}]\nendpoints: [{eps}]\n"
            )
        };
        let mut step = |name: &str, yaml: &str| {
            apply_yaml(&mut engine, yaml);
            let plan = engine.plan();
            syncer.sync(&plan, engine.desired()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let counts = syncer.backend().client().last_counts();
            eprintln!("{name}: {counts:?}");
            counts
        };
        // svc1 has one endpoint; svc4 has two, so a second endpoint needs no new rule.
        let moved = step("endpoint moved", &slice("{addresses: [10.180.0.9]}"));
        assert_eq!((moved.rules, moved.chains, moved.sets), (0, 0, 0), "{moved:?}");
        assert!(moved.elements > 0);
        let added = step("endpoint added", &slice("{addresses: [10.180.0.9]}, {addresses: [10.180.0.10]}"));
        assert_eq!((added.rules, added.chains), (0, 0), "{added:?}");
        let new_count = step(
            "a third endpoint: a count no Service had",
            &slice("{addresses: [10.180.0.9]}, {addresses: [10.180.0.10]}, {addresses: [10.180.0.11]}"),
        );
        assert_eq!(
            (new_count.rules, new_count.chains, new_count.sets),
            (1, 0, 1),
            "one rule inserted, with its map: {new_count:?}"
        );
        let listing = list();
        let pick = &listing[listing.find("chain pick-cluster-endpoint {").unwrap()..];
        let pick = &pick[..pick.find('}').unwrap()];
        let counts: Vec<&str> = pick.lines().filter_map(|l| l.split("numgen random mod ").nth(1)).collect();
        assert_eq!(counts.len(), 3, "{pick}");
        assert!(counts[0].starts_with("1 ") && counts[1].starts_with("2 ") && counts[2].starts_with("3 "), "{pick}");
        let dropped = step("back to two endpoints", &slice("{addresses: [10.180.0.9]}, {addresses: [10.180.0.10]}"));
        assert_eq!(
            (dropped.rules, dropped.chains, dropped.sets),
            (1, 0, 1),
            "one rule deleted, with its map: {dropped:?}"
        );
        assert!(!list().contains("mod 3"), "{}", list());
        let service = step(
            "a Service added",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns8, name: new}\nspec: {clusterIP: 172.30.0.48, ports: [{name: p, port: 80}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: ns8, name: new-1, labels: {kubernetes.io/service-name: new}}\n\
             addressType: IPv4\nports: [{name: p, port: 80}]\nendpoints: [{addresses: [10.180.8.1]}, {addresses: [10.180.8.2]}]\n",
        );
        assert_eq!((service.rules, service.chains, service.sets), (0, 0, 0), "{service:?}");
        assert!(list().contains("172.30.0.48 . tcp . 80 . 0 : 10.180.8.1 . 80"), "{}", list());
        // A Maglev Service's ports share one table per policy: a pod added moves slots in
        // it, and a new port adds its frontends to it, as elements only.
        let three = ["10.180.0.9", "10.180.0.10", "10.180.0.13"];
        let pod = step("a Maglev pod added", &maglev_slice(&three, false));
        assert_eq!((pod.rules, pod.chains, pod.sets), (0, 0, 0), "{pod:?}");
        // Of 7 slots over 3 pods, the new pod takes 2 or 3: each a deletion and an
        // addition, in the Cluster table only (the node's own pod did not change).
        assert!(pod.elements <= 2 * 3 + 1, "only the moved slots and the hairpin pair: {pod:?}");
        let both = format!("{}---\n{}", maglev_service("7", "source", true, true), maglev_slice(&three, true));
        let port = step("a Maglev port added", &both);
        assert_eq!((port.rules, port.chains, port.sets), (0, 0, 0), "{port:?}");
        let listing = list();
        let table = listing.lines().filter(|l| l.contains("map maglev-cluster-") && l.contains("ns8/mag")).count();
        assert_eq!(table, 2, "one Cluster table per family for the Service's three ports: {listing}");
    });
}

#[test]
fn a_rejected_transaction_changes_nothing() {
    in_netns("a_rejected_transaction_changes_nothing", || {
        let desired = fixture();
        let mut backend = NftBackend::new("kproxy");
        backend.sync_full(&desired).expect("sync");
        let before = list();

        // A valid chain plus a rule jumping to a chain that does not exist.
        let mut tx = Transaction::new(IpFamily::V4, "kproxy");
        tx.push(Op::AddChain("new-chain".into(), None));
        tx.push(Op::AddElements(
            "cluster-ips".into(),
            vec![(nft_client::ruleset::Key::Addr("172.30.9.9".parse().unwrap()), None)],
        ));
        tx.push(Op::AddRule(
            "new-chain".into(),
            nft_client::ruleset::Rule::always(nft_client::ruleset::Action::Verdict(
                nft_client::ruleset::Verdict::Goto("no-such-chain".into()),
            )),
        ));
        let outcome = Socket::open().unwrap().send(&netlink::encode(std::slice::from_ref(&tx))).unwrap();
        assert!(!outcome.errors.is_empty(), "the kernel accepted a jump to a missing chain");
        assert_eq!(list(), before, "a rejected transaction changed the ruleset");

        // Through the backend: a partial sync that has to delete an element someone else
        // already removed fails whole, says which operation failed, and leaves the kernel
        // as it was; the next sync, partial as far as the syncer knows, rewrites the
        // family that failed in full and repairs everything.
        let mut engine = engine(node(), include_str!("fixtures/cluster.yaml"));
        let mut syncer = Syncer::new(NftBackend::new("kproxy"));
        syncer.sync(&proxy_core::Plan { full: true, ..Default::default() }, engine.desired()).unwrap();
        sh("nft delete element ip kproxy to-cluster-endpoints '{ 172.30.0.41 . tcp . 80 }'");
        let tampered = list();
        engine.apply(Event::ServiceDeleted(ObjectRef::new("ns1", "svc1")));
        let plan = engine.plan();
        let err = syncer.sync(&plan, engine.desired()).expect_err("deleting a missing element must fail");
        assert!(err.to_string().contains("attribute at byte"), "the kernel's extended ack names the attribute: {err}");
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("to-cluster-endpoints"), "{err}");
        assert_eq!(list(), tampered, "a failed partial sync changed the ruleset");
        assert!(!syncer.needs_full(), "the backend recovers the failed family itself");
        let plan = engine.plan();
        assert!(plan.changes.is_empty() && !plan.full);
        let stats = syncer.sync(&plan, engine.desired()).expect("repair");
        assert!(stats.full, "the failed family was synced in full");
        assert!(!list().contains("ns1/svc1"));
    });
}

#[test]
fn full_resync_keeps_affinity_and_removes_stale_objects() {
    in_netns("full_resync_keeps_affinity_and_removes_stale_objects", || {
        let mut engine = engine(node(), include_str!("fixtures/cluster.yaml"));
        let mut backend = NftBackend::new("kproxy");
        backend.sync_full(engine.desired()).expect("first full sync (replace)");
        let affinity = "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80";
        sh(&format!("nft add element ip kproxy {affinity} '{{ 203.0.113.9 }}'"));
        sh("nft flush chain ip kproxy services"); // drift, repaired by the refresh

        // A change applied by a full resync (not a partial sync): svc1 goes away.
        engine.apply(Event::ServiceDeleted(ObjectRef::new("ns1", "svc1")));
        engine.plan();
        backend.sync_full(engine.desired()).expect("refresh");
        let refreshed = list();
        assert!(refreshed.contains("203.0.113.9"), "the periodic resync dropped affinity state");
        assert!(!refreshed.contains("ns1/svc1"), "stale objects survived the resync");

        // Same content as a from-scratch replace (apart from the affinity entry).
        let mut fresh = NftBackend::new("kproxy");
        fresh.sync_full(engine.desired()).expect("replace");
        assert!(!list().contains("203.0.113.9"), "a replace starts affinity afresh");
        let normalized = normalize(&refreshed);
        let without_entry: Vec<&str> = normalized.lines().filter(|l| !l.contains("203.0.113.9")).collect();
        assert_eq!(without_entry.join("\n"), normalize(&list()));
    });
}

/// Element operations are encoded in lists of at most 8192 elements (libnftnl's objects
/// cost memory): a map of 9000 endpoint slots is written whole by a full sync, and taken
/// away whole by a partial one.
#[test]
fn maps_longer_than_one_element_list_are_written_and_deleted_whole() {
    in_netns("maps_longer_than_one_element_list_are_written_and_deleted_whole", || {
        let services = 3000;
        let slice = |i: usize, eps: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: big, name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: p, port: 80}}]\nendpoints: [{eps}]\n---\n"
            )
        };
        let mut yaml = String::new();
        for i in 0..services {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{namespace: big, name: s{i}}}\nspec: {{clusterIP: 172.30.{}.{}, ports: [{{name: p, port: 80}}]}}\n---\n",
                10 + i / 250,
                1 + i % 250
            ));
            let ep = |n: usize| format!("{{addresses: [10.{}.{}.{n}]}}", 100 + i / 250, i % 250);
            yaml.push_str(&slice(i, &format!("{}, {}, {}", ep(1), ep(2), ep(3))));
        }
        let mut engine = engine(node(), &yaml);
        let mut syncer = Syncer::new(NftBackend::new("kproxy"));
        syncer.sync(&proxy_core::Plan { full: true, ..Default::default() }, engine.desired()).expect("full sync");
        let slots = || {
            let map = sh("nft list map ip kproxy cluster-endpoints-3 2>/dev/null || true");
            map.matches(" . 80 . ").count()
        };
        assert_eq!(slots(), 3 * services, "every slot of every Service");
        let mut emptied = String::new();
        for i in 0..services {
            emptied.push_str(&slice(i, ""));
        }
        apply_yaml(&mut engine, &emptied);
        let plan = engine.plan();
        let stats = syncer.sync(&plan, engine.desired()).expect("partial sync");
        assert!(!stats.full);
        assert_eq!(slots(), 0, "no slot left");
        let after_partial = normalized();
        syncer.backend_mut().sync_full(engine.desired()).expect("full sync");
        assert!(normalized() == after_partial, "the partial sync left a different ruleset");
    });
}
