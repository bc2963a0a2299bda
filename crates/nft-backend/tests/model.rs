//! Partial syncs equal full syncs, for random sequences of changes, on the model of
//! nf_tables (`nft_client::model`): after every sync, the tables a backend built up
//! through partial syncs (and in-place full refreshes) equal what a full sync of the same
//! state writes into an empty ruleset, and that equals the rendered rules. Every
//! transaction is checked as the kernel checks it (missing or busy chains, sets, rules,
//! redefinitions), so a plan the kernel would refuse fails here too.
//!
//! The real-kernel version of this check, on a fixed sequence, is `tests/partial.rs`.

mod common;
#[path = "../../proxy-core/tests/common/mod.rs"]
mod fixtures;

use fixtures::{ep, service, slice, upstream_node, with_ingress};
use k8s_openapi::api::core::v1 as core;
use nft_backend::{NftBackend, render};
use nft_client::model::Model;
use nft_client::text;
use proptest::prelude::*;
use proxy_core::{Backend, Engine, Event, IpFamily, ObjectRef, Syncer, ingest};

#[derive(Clone, Debug)]
enum Op {
    Service { svc: u8, ip: u8, ports: Vec<(u8, bool)>, shape: Shape },
    DeleteService(u8),
    Slice { svc: u8, n: u8, endpoints: Vec<(u8, bool, bool, bool)>, ports: Vec<(u8, u16)> },
    DeleteSlice { svc: u8, n: u8 },
    Sync { full: bool },
}

/// What a Service has besides its ClusterIP.
#[derive(Clone, Debug)]
struct Shape {
    node_port: bool,
    external_ip: bool,
    load_balancer: bool,
    source_ranges: bool,
    affinity: bool,
    internal_local: bool,
    external_local: bool,
    /// Maglev: none, or the hash (`source`, `connection`) with a small table (7 or 11
    /// slots, so the element-level changes stay readable in a failure).
    maglev: Option<(&'static str, u32)>,
}

const PORT_NAMES: [&str; 3] = ["a", "b", "c"];

fn shape() -> impl Strategy<Value = Shape> {
    let maglev = prop_oneof![
        2 => Just(None),
        1 => (prop_oneof![Just("source"), Just("connection")], prop_oneof![Just(7u32), Just(11)]).prop_map(Some),
    ];
    (proptest::collection::vec(any::<bool>(), 7), maglev).prop_map(|(b, maglev)| Shape {
        node_port: b[0],
        external_ip: b[1],
        load_balancer: b[2],
        source_ranges: b[3],
        affinity: b[4],
        internal_local: b[5],
        external_local: b[6],
        maglev,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let svc = 0..5u8;
    prop_oneof![
        3 => (svc.clone(), 0..4u8, proptest::collection::vec((0..3u8, any::<bool>()), 0..3), shape())
            .prop_map(|(svc, ip, ports, shape)| Op::Service { svc, ip, ports, shape }),
        1 => svc.clone().prop_map(Op::DeleteService),
        5 => (svc.clone(), 0..2u8, proptest::collection::vec((0..6u8, any::<bool>(), any::<bool>(), any::<bool>()), 0..5),
              proptest::collection::vec((0..3u8, 1..3u16), 0..3))
            .prop_map(|(svc, n, endpoints, ports)| Op::Slice { svc, n, endpoints, ports }),
        1 => (svc, 0..2u8).prop_map(|(svc, n)| Op::DeleteSlice { svc, n }),
        3 => prop_oneof![4 => Just(false), 1 => Just(true)].prop_map(|full| Op::Sync { full }),
    ]
}

/// Services 3 and 4 are IPv6, the others IPv4.
fn v6(svc: u8) -> bool {
    svc >= 3
}

fn addr(svc: u8, v4: &str, v6_prefix: &str, last: u8) -> String {
    if v6(svc) { format!("{v6_prefix}{:x}", u16::from(last) + 1) } else { format!("{v4}{last}") }
}

fn service_of(svc: u8, ip: u8, ports: &[(u8, bool)], s: &Shape) -> core::Service {
    let ports: Vec<core::ServicePort> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, udp))| core::ServicePort {
            name: Some(PORT_NAMES[*p as usize].into()),
            port: 80 + i as i32,
            protocol: Some(if *udp { "UDP" } else { "TCP" }.into()),
            node_port: (s.node_port || s.load_balancer).then_some(30000 + i32::from(svc) * 10 + i as i32),
            ..Default::default()
        })
        .collect();
    let cluster_ip = addr(svc, "172.30.0.", "fd00:10:96::", 10 + svc * 4 + ip);
    let mut out = service("ns", &format!("svc{svc}"), &cluster_ip, |spec| {
        spec.type_ = Some(
            if s.load_balancer {
                "LoadBalancer"
            } else if s.node_port {
                "NodePort"
            } else {
                "ClusterIP"
            }
            .into(),
        );
        spec.ports = Some(ports);
        spec.external_ips = s.external_ip.then(|| vec![addr(svc, "192.0.2.", "2001:db8:2::", svc)]);
        spec.load_balancer_source_ranges = (s.load_balancer && s.source_ranges)
            .then(|| vec![if v6(svc) { "2001:db8:77::/64" } else { "198.51.100.0/24" }.to_string()]);
        spec.session_affinity = s.affinity.then(|| "ClientIP".into());
        spec.internal_traffic_policy = s.internal_local.then(|| "Local".into());
        spec.external_traffic_policy = s.external_local.then(|| "Local".into());
    });
    if s.load_balancer {
        let ingress = addr(svc, "203.0.113.", "2001:db8:3::", svc);
        out = with_ingress(out, &[(ingress.as_str(), None)]);
    }
    if let Some((hash, size)) = s.maglev {
        let annotations = [
            ("kproxy.io/load-balancing", "maglev".to_string()),
            ("kproxy.io/maglev-hash", hash.to_string()),
            ("kproxy.io/maglev-table-size", size.to_string()),
        ];
        out.metadata.annotations = Some(annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    }
    out
}

fn apply(engine: &mut Engine, op: &Op) {
    let name = |svc: u8| format!("svc{svc}");
    match op {
        Op::Service { svc, ip, ports, shape } => {
            engine.apply(ingest::service_applied(&service_of(*svc, *ip, ports, shape)).event);
        }
        Op::DeleteService(svc) => {
            engine.apply(Event::ServiceDeleted(ObjectRef::new("ns", name(*svc))));
        }
        Op::Slice { svc, n, endpoints, ports } => {
            let eps: Vec<fixtures::Ep> = endpoints
                .iter()
                .map(|(ip, ready, terminating, local)| {
                    let e = ep(&addr(*svc, "10.180.0.", "fd00:10:180::", *ip)).conditions(
                        *ready,
                        *ready || *terminating,
                        *terminating,
                    );
                    if *local { e.local() } else { e.node("other") }
                })
                .collect();
            let ports: Vec<(&str, i32, &str)> =
                ports.iter().map(|(p, port)| (PORT_NAMES[*p as usize], i32::from(*port) * 1000, "TCP")).collect();
            let mut s = slice("ns", &name(*svc), u32::from(*n), &ports, &eps);
            if v6(*svc) {
                s.address_type = "IPv6".into();
            }
            engine.apply(ingest::slice_applied(&s).event);
        }
        Op::DeleteSlice { svc, n } => {
            engine.apply(Event::SliceDeleted(ObjectRef::new("ns", format!("{}-{n}", name(*svc)))));
        }
        Op::Sync { .. } => {}
    }
}

/// The table of one family as `nft` text, for readable failures.
fn listing(model: &Model, family: IpFamily) -> String {
    model.table(family, "kproxy").map(|r| text::table(family, "kproxy", &r)).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn partial_syncs_equal_a_full_sync(ops in proptest::collection::vec(op(), 1..40)) {
        let mut engine = Engine::new(upstream_node());
        let mut syncer = Syncer::new(NftBackend::with("kproxy", Model::new()));
        let plan = engine.plan();
        syncer.sync(&plan, engine.desired()).expect("the first full sync");
        for op in ops.iter().chain([&Op::Sync { full: false }]) {
            apply(&mut engine, op);
            let Op::Sync { full } = op else { continue };
            if *full {
                // An in-place refresh (tables flushed and refilled), as the periodic full
                // sync does.
                syncer.request_full();
            }
            let plan = engine.plan();
            if let Err(e) = syncer.sync(&plan, engine.desired()) {
                prop_assert!(false, "the model refused a sync: {e}\nafter {ops:#?}");
            }

            let mut fresh = NftBackend::with("kproxy", Model::new());
            fresh.sync_full(engine.desired()).expect("a full sync into an empty ruleset");
            for rules in engine.desired().families() {
                let family = rules.context.family;
                let built = listing(syncer.backend().client(), family);
                let full = listing(fresh.client(), family);
                prop_assert_eq!(&built, &full, "{:?}: partial syncs vs a full one", family);
                let rendered = render::family(&rules.context, &rules.service_ports);
                prop_assert_eq!(fresh.client().table(family, "kproxy"), Some(rendered));
            }
        }
    }
}

mod kernel_rules {
    //! The model refuses what the kernel refuses, with the same errno, and a refused batch
    //! changes neither; rules are placed and echoed by handle as the kernel does.

    use super::IpFamily;
    use crate::common::{in_netns, normalize, sh};
    use nft_client::ruleset::{Action, Data, Key, KeyType, Match, Rule, Set, Verdict};
    use nft_client::text;
    use nft_client::tx::{Op, Transaction};
    use nft_client::{Client, Error, model::Model};

    fn tx(ops: Vec<Op>) -> Transaction {
        Transaction { family: IpFamily::V4, table: "t".into(), ops }
    }

    fn base() -> Vec<Op> {
        vec![
            Op::AddTable,
            Op::AddChain("a".into(), None),
            Op::AddChain("b".into(), None),
            Op::AddSet("s".into(), Set::plain(KeyType::Addr, "")),
            Op::AddSet("m".into(), Set::vmap(KeyType::Addr, "")),
        ]
    }

    fn errno(result: Result<usize, Error>) -> Option<i32> {
        match result {
            Err(Error::Transaction { errno, .. }) => Some(errno),
            _ => None,
        }
    }

    /// (what, operations after the base ones, the errno or `None` if accepted).
    fn cases() -> Vec<(&'static str, Vec<Op>, Option<i32>)> {
        let addr = Key::Addr("10.0.0.1".parse().unwrap());
        let in_s = Rule::new([Match::SaddrInSet("s".into())], Action::Verdict(Verdict::Accept));
        let jump = |c: &str| Rule::always(Action::Verdict(Verdict::Jump(c.into())));
        let goto_b = Some(Data::Verdict(Verdict::Goto("b".into())));
        vec![
            ("rule into a missing chain", vec![Op::AddRule("x".into(), in_s.clone())], Some(libc::ENOENT)),
            ("jump to a missing chain", vec![Op::AddRule("a".into(), jump("x"))], Some(libc::ENOENT)),
            (
                "rule on a missing set",
                vec![Op::AddRule("a".into(), Rule::new([Match::DaddrInSet("x".into())], Action::Reject))],
                Some(libc::ENOENT),
            ),
            ("delete a missing chain", vec![Op::DeleteChain("x".into())], Some(libc::ENOENT)),
            (
                "delete a chain with rules: they go with it",
                vec![Op::AddRule("a".into(), in_s.clone()), Op::DeleteChain("a".into())],
                None,
            ),
            (
                "delete a chain, then a set only its rules used",
                vec![Op::AddRule("a".into(), in_s.clone()), Op::DeleteChain("a".into()), Op::DeleteSet("s".into())],
                None,
            ),
            (
                "add what exists, with the same definition and data",
                [base(), vec![Op::AddElements("m".into(), vec![(addr, goto_b.clone())])]]
                    .concat()
                    .into_iter()
                    .chain([Op::AddElements("m".into(), vec![(addr, goto_b.clone())])])
                    .collect(),
                None,
            ),
            (
                "delete the table with everything in it",
                vec![Op::AddRule("a".into(), jump("b")), Op::DeleteTable, Op::AddTable],
                None,
            ),
            (
                "delete a jumped-to chain",
                vec![Op::AddRule("a".into(), jump("b")), Op::DeleteChain("b".into())],
                Some(libc::EBUSY),
            ),
            (
                "delete a chain a verdict element points at",
                vec![Op::AddElements("m".into(), vec![(addr, goto_b.clone())]), Op::DeleteChain("b".into())],
                Some(libc::EBUSY),
            ),
            (
                "delete a set in use",
                vec![Op::AddRule("a".into(), in_s.clone()), Op::DeleteSet("s".into())],
                Some(libc::EBUSY),
            ),
            ("redefine a set", vec![Op::AddSet("s".into(), Set::plain(KeyType::AddrAddr, ""))], Some(libc::EEXIST)),
            (
                "an element with other data",
                vec![
                    Op::AddElements("m".into(), vec![(addr, goto_b.clone())]),
                    Op::AddElements("m".into(), vec![(addr, Some(Data::Verdict(Verdict::Drop)))]),
                ],
                Some(libc::EEXIST),
            ),
            ("delete a missing element", vec![Op::DeleteElements("s".into(), vec![addr])], Some(libc::ENOENT)),
            ("delete a missing rule", vec![Op::DeleteRule("a".into(), 999)], Some(libc::ENOENT)),
            (
                "a verdict element to a missing chain",
                vec![Op::AddElements("m".into(), vec![(addr, Some(Data::Verdict(Verdict::Jump("x".into()))))])],
                Some(libc::ENOENT),
            ),
        ]
    }

    #[test]
    fn the_model_refuses_what_the_kernel_refuses() {
        in_netns("kernel_rules::the_model_refuses_what_the_kernel_refuses", || {
            let mut kernel = Client::new();
            for (what, ops, want) in cases() {
                let mut model = Model::new();
                model.commit(&[tx(base())]).unwrap();
                let before = model.table(IpFamily::V4, "t");
                assert_eq!(errno(model.commit(&[tx(ops.clone())])), want, "model: {what}");

                kernel.commit(&[Transaction::delete_table(IpFamily::V4, "t"), tx(base())]).unwrap();
                let kernel_before = sh("nft list table ip t");
                assert_eq!(errno(kernel.commit(&[tx(ops)])), want, "kernel: {what}");
                if want.is_some() {
                    assert_eq!(model.table(IpFamily::V4, "t"), before, "model: {what} changed nothing");
                    assert_eq!(sh("nft list table ip t"), kernel_before, "kernel: {what} changed nothing");
                }
                // Either way, both hold the same table.
                let modelled = model.table(IpFamily::V4, "t").map(|r| text::table(IpFamily::V4, "t", &r));
                assert_eq!(
                    normalize(&sh("nft list table ip t")),
                    normalize(&modelled.unwrap_or_default()),
                    "{what}: the model holds what the kernel holds"
                );
            }
        });
    }

    /// kproxy deletes a stale chain in the transaction that drops its last reference (a
    /// `goto` element, or a `jump` rule); upstream flushes such chains and deletes them a
    /// second later (k#122604). Both kernels the tests run on (the host's and, in the VM,
    /// Debian's 6.1) accept it, as the model does.
    #[test]
    fn a_chain_goes_in_the_transaction_that_drops_its_last_reference() {
        in_netns("kernel_rules::a_chain_goes_in_the_transaction_that_drops_its_last_reference", || {
            let addr = Key::Addr("10.0.0.1".parse().unwrap());
            let goto_b = Some(Data::Verdict(Verdict::Goto("b".into())));
            let jump_b = Rule::always(Action::Verdict(Verdict::Jump("b".into())));
            let cases = [
                (
                    "a goto element",
                    vec![Op::AddElements("m".into(), vec![(addr, goto_b)])],
                    vec![Op::DeleteElements("m".into(), vec![addr]), Op::DeleteChain("b".into())],
                ),
                (
                    "a jump rule",
                    vec![Op::AddRule("a".into(), jump_b)],
                    vec![Op::FlushChain("a".into()), Op::DeleteChain("b".into())],
                ),
            ];
            let mut kernel = Client::new();
            for (what, reference, drop) in cases {
                let mut model = Model::new();
                model.commit(&[tx([base(), reference.clone()].concat())]).unwrap();
                kernel
                    .commit(&[Transaction::delete_table(IpFamily::V4, "t"), tx([base(), reference].concat())])
                    .unwrap();
                assert_eq!(errno(model.commit(&[tx(drop.clone())])), None, "model: {what}");
                assert_eq!(errno(kernel.commit(&[tx(drop)])), None, "kernel: {what}");
                assert!(!sh("nft list table ip t").contains("chain b"), "{what}: chain b is gone");
            }
        });
    }

    #[test]
    fn rules_are_placed_by_handle_and_echoed_rules_report_theirs() {
        let mut model = Model::new();
        model.commit(&[tx(base())]).unwrap();
        let pick = |n| {
            Rule::new(
                [Match::L4Proto(proxy_core::Protocol::Tcp)],
                Action::DnatMap {
                    key: nft_client::ruleset::FrontendKey::ProtoPort,
                    slot: nft_client::ruleset::Slot::Random,
                    modulus: n,
                    map: "m".into(),
                },
            )
        };
        model.commit(&[tx(vec![Op::AddRule("a".into(), pick(1)), Op::AddRule("a".into(), pick(3))])]).unwrap();
        let handles = model.last_handles().to_vec();
        assert_eq!(handles.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
        model.commit(&[tx(vec![Op::InsertRule("a".into(), pick(2), Some(handles[0].1))])]).unwrap();
        model
            .commit(&[tx(vec![Op::InsertRule(
                "a".into(),
                Rule::always(Action::Verdict(Verdict::Jump("b".into()))),
                None,
            )])])
            .unwrap();
        let rules = &model.table(IpFamily::V4, "t").unwrap().chains["a"].rules;
        assert_eq!(rules, &[Rule::always(Action::Verdict(Verdict::Jump("b".into()))), pick(1), pick(2), pick(3)]);
        model.commit(&[tx(vec![Op::DeleteRule("a".into(), handles[1].1)])]).unwrap();
        assert_eq!(model.table(IpFamily::V4, "t").unwrap().chains["a"].rules.len(), 3);
    }

    #[test]
    fn adding_what_exists_with_the_same_definition_is_a_no_op() {
        let mut model = Model::new();
        model.commit(&[tx(base())]).unwrap();
        let addr = Key::Addr("10.0.0.1".parse().unwrap());
        model.commit(&[tx(vec![Op::AddElements("s".into(), vec![(addr, None)])])]).unwrap();
        model.commit(&[tx([base(), vec![Op::AddElements("s".into(), vec![(addr, None)])]].concat())]).unwrap();
        assert_eq!(model.table(IpFamily::V4, "t").unwrap().sets["s"].elements.len(), 1);
        model.commit(&[tx(vec![Op::DeleteTable])]).unwrap();
        assert_eq!(model.table(IpFamily::V4, "t"), None);
        assert_eq!(errno(model.commit(&[tx(vec![Op::DeleteTable])])).unwrap(), libc::ENOENT);
    }
}

/// One family's table cannot be written (the model refuses ip6 as a kernel without IPv6
/// nf_tables would): the ip table is still written, full and partial, the failure names
/// the family, and once ip6 can be written again the next sync brings it in.
#[test]
fn a_family_that_cannot_be_written_fails_alone() {
    const DUAL_STACK: &str = "
apiVersion: v1
kind: Service
metadata: {namespace: ns, name: web}
spec:
  clusterIPs: [172.30.0.10, \"fd00:10:96::10\"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: p, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: ns, name: web-4, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: p, port: 80}]
endpoints: [{addresses: [10.0.1.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: ns, name: web-6, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: p, port: 80}]
endpoints: [{addresses: [\"fd00:10::1\"]}]
";
    let mut engine = common::engine(common::node(), DUAL_STACK);
    let mut model = Model::new();
    model.refuse_family(IpFamily::V6, true);
    let mut backend = NftBackend::with("kproxy", model);
    let rendered = |engine: &Engine, family: IpFamily| {
        let rules = engine.desired().family(family);
        render::family(&rules.context, &rules.service_ports)
    };

    let err = backend.sync_full(engine.desired()).unwrap_err();
    assert!(err.to_string().contains(" ip6 kproxy"), "the failure names the family: {err}");
    assert!(backend.failed(IpFamily::V6) && !backend.failed(IpFamily::V4));
    assert_eq!(backend.client().table(IpFamily::V4, "kproxy"), Some(rendered(&engine, IpFamily::V4)));
    assert_eq!(backend.client().table(IpFamily::V6, "kproxy"), None);

    // The IPv4 endpoint moves: the ip table follows though ip6 still fails.
    let moved = ingest::slice_applied(&slice("ns", "web", 4, &[("p", 80, "TCP")], &[ep("10.0.1.2")]));
    engine.apply(moved.event);
    let plan = engine.plan();
    let commits = backend.client().commits();
    assert!(backend.sync_partial(&plan.changes, engine.desired()).is_err());
    assert_eq!(backend.client().commits(), commits + 1, "the ip family committed alone");
    assert_eq!(backend.client().table(IpFamily::V4, "kproxy"), Some(rendered(&engine, IpFamily::V4)));

    // ip6 can be written again: the next sync brings it in, and ip stays as it is.
    backend.client_mut().refuse_family(IpFamily::V6, false);
    let plan = engine.plan();
    backend.sync_partial(&plan.changes, engine.desired()).expect("both families");
    assert!(!backend.failed(IpFamily::V6));
    for family in IpFamily::ALL {
        assert_eq!(backend.client().table(family, "kproxy"), Some(rendered(&engine, family)), "{family:?}");
    }

    // A partial sync of ip6 fails: the change it carried is not lost. The retry, partial
    // with nothing new, syncs ip6 in full and leaves ip alone.
    backend.client_mut().refuse_family(IpFamily::V6, true);
    let moved = ingest::slice_applied(&slice("ns", "web", 6, &[("p", 80, "TCP")], &[ep("fd00:10::2")]));
    engine.apply(moved.event);
    let plan = engine.plan();
    assert!(backend.sync_partial(&plan.changes, engine.desired()).is_err());
    assert!(backend.failed(IpFamily::V6));
    backend.client_mut().refuse_family(IpFamily::V6, false);
    let ip_before = backend.client().table(IpFamily::V4, "kproxy");
    let commits = backend.client().commits();
    let plan = engine.plan();
    assert!(plan.changes.is_empty(), "the engine has nothing new to say");
    backend.sync_partial(&plan.changes, engine.desired()).expect("the retry");
    assert_eq!(backend.client().commits(), commits + 1, "one transaction: ip6 only");
    assert_eq!(backend.client().table(IpFamily::V6, "kproxy"), Some(rendered(&engine, IpFamily::V6)));
    assert_eq!(backend.client().table(IpFamily::V4, "kproxy"), ip_before);
}
