//! Property tests: translation never panics on arbitrary objects; diff obeys its laws;
//! incremental recompute always equals a full compute; the syncer converges through
//! injected backend failures.

mod common;

use std::collections::BTreeMap;

use common::upstream_node;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;
use proxy_core::trace::{Packet, Source, trace};
use proxy_core::{Engine, Event, ModelBackend, Syncer, compute, diff, ingest};

// === Arbitrary k8s objects: anything goes ===

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9.:a-fA-F/ ]{0,24}",
        "(10|172|192|fd00|2001)[.:][0-9]{1,3}[.:][0-9]{0,4}[.:]{0,2}[0-9]{0,3}(/[0-9]{1,3})?",
        any::<String>(),
    ]
}

fn any_opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(any_text())
}

fn any_port() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), Just(80), -70000..140000i32, any::<i32>()]
}

prop_compose! {
    fn any_service_port()(name in any_opt_text(), port in any_port(), node_port in proptest::option::of(any_port()),
                          protocol in proptest::option::of(prop_oneof![Just("TCP".to_string()), Just("UDP".to_string()), any_text()]))
                          -> core::ServicePort {
        core::ServicePort { name, port, node_port, protocol, ..Default::default() }
    }
}

prop_compose! {
    fn any_service()(name in any_opt_text(), cluster_ip in any_opt_text(), cluster_ips in proptest::option::of(proptest::collection::vec(any_text(), 0..3)),
                     type_ in proptest::option::of(prop_oneof![Just("ClusterIP"), Just("NodePort"), Just("LoadBalancer"), Just("ExternalName"), Just("Weird")].prop_map(String::from)),
                     ports in proptest::option::of(proptest::collection::vec(any_service_port(), 0..4)),
                     external_ips in proptest::option::of(proptest::collection::vec(any_text(), 0..3)),
                     ranges in proptest::option::of(proptest::collection::vec(any_text(), 0..3)),
                     affinity in any_opt_text(), timeout in proptest::option::of(any::<i32>()),
                     etp in any_opt_text(), hc in proptest::option::of(any_port()),
                     ingress in proptest::collection::vec((any_opt_text(), any_opt_text()), 0..3))
                     -> core::Service {
        core::Service {
            metadata: ObjectMeta { namespace: Some("ns".into()), name, ..Default::default() },
            spec: Some(core::ServiceSpec {
                cluster_ip, cluster_ips, type_, ports, external_ips, load_balancer_source_ranges: ranges,
                session_affinity: affinity,
                session_affinity_config: Some(core::SessionAffinityConfig { client_ip: Some(core::ClientIPConfig { timeout_seconds: timeout }) }),
                external_traffic_policy: etp, health_check_node_port: hc, ..Default::default()
            }),
            status: Some(core::ServiceStatus {
                load_balancer: Some(core::LoadBalancerStatus { ingress: Some(ingress.into_iter().map(|(ip, ip_mode)| core::LoadBalancerIngress { ip, ip_mode, ..Default::default() }).collect()) }),
                ..Default::default()
            }),
        }
    }
}

prop_compose! {
    fn any_endpoint()(addresses in proptest::collection::vec(any_text(), 0..2), ready in proptest::option::of(any::<bool>()),
                      serving in proptest::option::of(any::<bool>()), terminating in proptest::option::of(any::<bool>()),
                      node in any_opt_text()) -> discovery::Endpoint {
        discovery::Endpoint {
            addresses, node_name: node,
            conditions: Some(discovery::EndpointConditions { ready, serving, terminating }),
            ..Default::default()
        }
    }
}

prop_compose! {
    fn any_slice()(name in any_opt_text(), label in any_opt_text(), address_type in prop_oneof![Just("IPv4"), Just("IPv6"), Just("FQDN"), Just("")],
                   ports in proptest::collection::vec((any_opt_text(), proptest::option::of(any_port()), any_opt_text()), 0..3),
                   endpoints in proptest::collection::vec(any_endpoint(), 0..4)) -> discovery::EndpointSlice {
        #[allow(clippy::needless_update)]
        discovery::EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("ns".into()), name,
                labels: label.map(|l| [("kubernetes.io/service-name".to_string(), l)].into()),
                ..Default::default()
            },
            address_type: address_type.into(),
            ports: Some(ports.into_iter().map(|(name, port, protocol)| discovery::EndpointPort { name, port, protocol, ..Default::default() }).collect()),
            endpoints: endpoints.into(),
            ..Default::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary objects never panic anywhere in the pipeline, and every accepted value is
    /// valid (ports non-zero).
    #[test]
    fn arbitrary_objects_never_panic(services in proptest::collection::vec(any_service(), 0..4),
                                     slices in proptest::collection::vec(any_slice(), 0..4)) {
        let mut engine = Engine::new(upstream_node());
        for svc in &services {
            let i = ingest::service_applied(svc);
            if let Event::ServiceApplied(s) = &i.event {
                prop_assert!(s.ports.iter().all(|p| p.port != 0));
            }
            engine.apply(i.event);
        }
        for slice in &slices {
            engine.apply(ingest::slice_applied(slice).event);
        }
        engine.plan();
        let desired = engine.desired();
        prop_assert_eq!(desired, &compute(engine.snapshot(), engine.node_context()));
        for rules in desired.families().flat_map(|f| f.service_ports.values()) {
            let packet = Packet { source: Source::external(rules.cluster_ip), protocol: rules.name.protocol, destination: rules.cluster_ip, port: rules.port };
            let _ = trace(desired, &packet);
        }
    }
}

// === A small, valid universe for the laws ===

#[derive(Clone, Debug)]
enum Op {
    Service { svc: u8, ip: u8, ports: Vec<(u8, bool)>, local_policy: (bool, bool), node_port: bool },
    DeleteService(u8),
    Slice { svc: u8, n: u8, endpoints: Vec<(u8, bool, bool, bool)>, ports: Vec<(u8, u16)> },
    DeleteSlice { svc: u8, n: u8 },
    Plan { fail: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let svc = 0..4u8;
    prop_oneof![
        3 => (svc.clone(), 0..6u8, proptest::collection::vec((0..3u8, any::<bool>()), 0..3), any::<(bool, bool)>(), any::<bool>())
            .prop_map(|(svc, ip, ports, local_policy, node_port)| Op::Service { svc, ip, ports, local_policy, node_port }),
        1 => svc.clone().prop_map(Op::DeleteService),
        4 => (svc.clone(), 0..2u8, proptest::collection::vec((0..8u8, any::<bool>(), any::<bool>(), any::<bool>()), 0..4), proptest::collection::vec((0..3u8, 1..4u16), 0..3))
            .prop_map(|(svc, n, endpoints, ports)| Op::Slice { svc, n, endpoints, ports }),
        1 => (svc, 0..2u8).prop_map(|(svc, n)| Op::DeleteSlice { svc, n }),
        2 => any::<bool>().prop_map(|fail| Op::Plan { fail }),
    ]
}

const PORT_NAMES: [&str; 3] = ["a", "b", "c"];

fn apply_op(engine: &mut Engine, op: &Op) {
    let name = |svc: u8| format!("svc{svc}");
    match op {
        Op::Service { svc, ip, ports, local_policy, node_port } => {
            let ports = ports
                .iter()
                .enumerate()
                .map(|(i, (p, udp))| core::ServicePort {
                    name: Some(PORT_NAMES[*p as usize].into()),
                    port: 80 + i as i32,
                    protocol: Some(if *udp { "UDP" } else { "TCP" }.into()),
                    node_port: node_port.then_some(30000 + i32::from(*svc) * 10 + i as i32),
                    ..Default::default()
                })
                .collect();
            let s = common::service("ns", &name(*svc), &format!("172.30.0.{}", 10 + ip), |s| {
                s.type_ = Some(if *node_port { "NodePort" } else { "ClusterIP" }.into());
                s.ports = Some(ports);
                s.internal_traffic_policy = local_policy.0.then(|| "Local".into());
                s.external_traffic_policy = local_policy.1.then(|| "Local".into());
            });
            engine.apply(ingest::service_applied(&s).event);
        }
        Op::DeleteService(svc) => {
            engine.apply(Event::ServiceDeleted(proxy_core::ObjectRef::new("ns", name(*svc))));
        }
        Op::Slice { svc, n, endpoints, ports } => {
            let eps: Vec<common::Ep> = endpoints
                .iter()
                .map(|(ip, r, t, local)| {
                    let e = common::ep(&format!("10.180.0.{ip}")).conditions(*r, *r || *t, *t);
                    if *local { e.local() } else { e.node("other") }
                })
                .collect();
            let ports: Vec<(&str, i32, &str)> =
                ports.iter().map(|(p, port)| (PORT_NAMES[*p as usize], i32::from(*port) * 1000, "TCP")).collect();
            engine.apply(ingest::slice_applied(&common::slice("ns", &name(*svc), u32::from(*n), &ports, &eps)).event);
        }
        Op::DeleteSlice { svc, n } => {
            engine.apply(Event::SliceDeleted(proxy_core::ObjectRef::new("ns", format!("{}-{n}", name(*svc)))));
        }
        Op::Plan { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// `a.apply(diff(a, b)) == b` and `diff(a, a)` is empty, for states reached by random
    /// event sequences.
    #[test]
    fn diff_laws(ops_a in proptest::collection::vec(op(), 0..12), ops_b in proptest::collection::vec(op(), 0..12)) {
        let state = |ops: &[Op]| {
            let mut engine = Engine::new(upstream_node());
            for op in ops {
                apply_op(&mut engine, op);
            }
            engine.plan();
            engine.desired().clone()
        };
        let (a, b) = (state(&ops_a), state(&ops_b));
        prop_assert!(diff(&a, &a).is_empty());
        let changes = diff(&a, &b);
        let mut patched = a.clone();
        patched.apply(&changes);
        prop_assert_eq!(&patched, &b);
        prop_assert_eq!(changes.is_empty(), a == b);
    }

    /// Incremental plans always equal a full compute, and a syncer driving a backend that
    /// fails at random converges to the desired state on the next successful sync.
    #[test]
    fn incremental_equals_full_and_syncer_converges(ops in proptest::collection::vec(op(), 0..40)) {
        let mut engine = Engine::new(upstream_node());
        let mut syncer = Syncer::new(ModelBackend::default());
        let mut previous = engine.desired().clone();
        for op in &ops {
            apply_op(&mut engine, op);
            if let Op::Plan { fail } = op {
                let plan = engine.plan();
                prop_assert_eq!(engine.desired(), &compute(engine.snapshot(), engine.node_context()));
                let mut replayed = previous.clone();
                replayed.apply(&plan.changes);
                prop_assert_eq!(&replayed, engine.desired());
                previous = engine.desired().clone();
                // An empty partial plan never reaches the backend.
                let reaches_backend = syncer.needs_full() || plan.full || !plan.changes.is_empty();
                let fails = *fail && reaches_backend;
                syncer.backend_mut().fail_next = usize::from(fails);
                let result = syncer.sync(&plan, engine.desired());
                prop_assert_eq!(result.is_err(), fails);
                prop_assert_eq!(syncer.needs_full(), fails);
                if !fails {
                    prop_assert_eq!(syncer.backend().applied.as_ref(), Some(engine.desired()));
                }
            }
        }
    }
}

#[test]
fn a_failed_partial_sync_is_followed_by_a_full_one() {
    let mut engine = Engine::new(upstream_node());
    let mut syncer = Syncer::new(ModelBackend::default());
    let plan = engine.plan();
    syncer.sync(&plan, engine.desired()).unwrap();
    apply_op(
        &mut engine,
        &Op::Service { svc: 0, ip: 0, ports: vec![(0, false)], local_policy: (false, false), node_port: false },
    );
    let plan = engine.plan();
    assert!(!plan.full);
    syncer.backend_mut().fail_next = 1;
    assert!(syncer.sync(&plan, engine.desired()).is_err());
    // Nothing new happened, but the retry must still be a full sync that lands everything.
    let plan = engine.plan();
    assert!(plan.changes.is_empty());
    let stats = syncer.sync(&plan, engine.desired()).unwrap();
    assert!(stats.full);
    assert_eq!(syncer.backend().full_syncs, 2);
    assert_eq!(syncer.backend().applied.as_ref(), Some(engine.desired()));
    // And an empty partial plan does nothing.
    let stats = syncer.sync(&engine.plan(), engine.desired()).unwrap();
    assert_eq!((stats.full, stats.operations, syncer.backend().partial_syncs), (false, 0, 0));
}

#[test]
fn plans_touch_only_changed_services() {
    let mut engine = Engine::new(upstream_node());
    for svc in 0..4 {
        apply_op(
            &mut engine,
            &Op::Service {
                svc,
                ip: svc,
                ports: vec![(0, false), (1, true)],
                local_policy: (false, false),
                node_port: false,
            },
        );
    }
    engine.plan();
    apply_op(&mut engine, &Op::Slice { svc: 2, n: 0, endpoints: vec![(1, true, false, false)], ports: vec![(0, 1)] });
    let plan = engine.plan();
    let changed: BTreeMap<String, bool> = plan
        .changes
        .family(proxy_core::IpFamily::V4)
        .service_ports
        .iter()
        .map(|(name, change)| (name.to_string(), matches!(change, proxy_core::Change::Updated { .. })))
        .collect();
    assert_eq!(changed, BTreeMap::from([("ns/svc2:a".to_string(), true)]));
    assert_eq!((plan.service_changes, plan.endpoint_changes), (0, 1));
    // A relist that delivers the same objects again changes nothing.
    apply_op(&mut engine, &Op::Slice { svc: 2, n: 0, endpoints: vec![(1, true, false, false)], ports: vec![(0, 1)] });
    assert!(engine.plan().changes.is_empty());
}

/// A backend that recovers what failed by itself (as the nftables backend does, family by
/// family) is retried with a partial sync, even when nothing changed meanwhile.
#[test]
fn a_backend_that_recovers_per_part_is_retried_partial() {
    /// The model, and whether its last sync failed.
    struct Recovering(ModelBackend, bool);
    impl proxy_core::Backend for Recovering {
        type Error = <ModelBackend as proxy_core::Backend>::Error;
        fn sync_full(&mut self, desired: &proxy_core::Desired) -> Result<proxy_core::SyncStats, Self::Error> {
            let result = self.0.sync_full(desired);
            self.1 = result.is_err();
            result
        }
        fn sync_partial(
            &mut self,
            changes: &proxy_core::Changes,
            desired: &proxy_core::Desired,
        ) -> Result<proxy_core::SyncStats, Self::Error> {
            // Recovers what failed: the model has no parts, so it takes the state whole.
            if self.1 {
                return self.sync_full(desired);
            }
            let result = self.0.sync_partial(changes, desired);
            self.1 = result.is_err();
            result
        }
        fn cleanup(&mut self) -> Result<(), Self::Error> {
            self.0.cleanup()
        }
        fn full_after_failure(&self) -> bool {
            false
        }
    }
    let mut engine = Engine::new(upstream_node());
    let mut syncer = Syncer::new(Recovering(ModelBackend::default(), false));
    syncer.sync(&engine.plan(), engine.desired()).unwrap();
    apply_op(
        &mut engine,
        &Op::Service { svc: 0, ip: 0, ports: vec![(0, false)], local_policy: (false, false), node_port: false },
    );
    syncer.backend_mut().0.fail_next = 1;
    assert!(syncer.sync(&engine.plan(), engine.desired()).is_err());
    assert!(!syncer.needs_full(), "no full sync is asked for");
    let plan = engine.plan();
    assert!(plan.changes.is_empty());
    syncer.sync(&plan, engine.desired()).unwrap();
    assert_eq!(syncer.backend().0.applied.as_ref(), Some(engine.desired()), "the retry reached the backend");
    // Once it succeeded, an empty plan is nothing again.
    let partials = syncer.backend().0.partial_syncs;
    syncer.sync(&engine.plan(), engine.desired()).unwrap();
    assert_eq!(syncer.backend().0.partial_syncs, partials);
}
