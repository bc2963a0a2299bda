//! Port of upstream's `TestCategorizeEndpoints` (`pkg/proxy/topology_test.go`): readiness,
//! the serving-terminating fallback, topology hints and traffic policy.
//!
//! Upstream case 11 ("PreferSameNode falls back to same-zone when feature gate disabled")
//! is not ported: kproxy always honours node hints, as upstream does with the
//! `PreferSameTrafficDistribution` gate on (its default since v1.34).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use proxy_core::endpoints::{Candidate, Uses, categorize};
use proxy_core::model::Endpoint;

/// `conds`: "R" ready only; "-" nothing; "F/T/T" ready/serving/terminating.
fn e(ip: &str, conds: &str, zones: &[&str], nodes: &[&str], local: bool) -> (Endpoint, bool) {
    let (ready, serving, terminating) = match conds {
        "R" => (true, false, false),
        "-" => (false, false, false),
        s => {
            let f: Vec<bool> = s.split('/').map(|x| x == "T").collect();
            (f[0], f[1], f[2])
        }
    };
    let set = |v: &[&str]| v.iter().map(|s| Arc::from(*s)).collect::<BTreeSet<Arc<str>>>();
    let endpoint = Endpoint {
        ip: ip.parse().unwrap(),
        ready,
        serving,
        terminating,
        node_name: None,
        zone: None,
        zone_hints: set(zones),
        node_hints: set(nodes),
    };
    (endpoint, local)
}

struct Case {
    name: &'static str,
    node_name: &'static str,
    zone: Option<&'static str>,
    /// (internal policy Local, external policy Local, has a NodePort)
    flags: (bool, bool, bool),
    endpoints: Vec<(Endpoint, bool)>,
    cluster: &'static [&'static str],
    local: &'static [&'static str],
    only_remote: bool,
}

fn run(case: &Case) {
    let (internal_local, external_local, node_port) = case.flags;
    // Upstream: ExternalPolicyLocal only counts for externally accessible ports.
    let uses = Uses { cluster: !internal_local || node_port, local: internal_local || (external_local && node_port) };
    let candidates: Vec<Candidate<'_>> =
        case.endpoints.iter().map(|(ep, local)| Candidate { endpoint: ep, port: 80, local: *local }).collect();
    let got = categorize(&candidates, uses, case.node_name, case.zone);
    let addrs = |t: &[proxy_core::Target]| t.iter().map(|t| t.addr.to_string()).collect::<HashSet<_>>();
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    assert_eq!(addrs(&got.cluster), want(case.cluster), "{}: cluster endpoints", case.name);
    assert_eq!(addrs(&got.local), want(case.local), "{}: local endpoints", case.name);
    let any = !case.cluster.is_empty() || !case.local.is_empty() || case.only_remote;
    assert_eq!(got.has_any, any, "{}: has any endpoints", case.name);
}

const A: &[&str] = &["zone-a"];
const B: &[&str] = &["zone-b"];
const C: &[&str] = &["zone-c"];
const NONE: &[&str] = &[];

fn cases() -> Vec<Case> {
    let plain = |name, zone, endpoints, cluster| Case {
        name,
        node_name: "",
        zone,
        flags: (false, false, false),
        endpoints,
        cluster,
        local: &[],
        only_remote: false,
    };
    vec![
        plain(
            "should use topology since all endpoints have hints, node has a zone label and there are endpoints for the node's zone",
            Some("zone-a"),
            vec![
                e("10.1.2.3", "R", A, NONE, false),
                e("10.1.2.4", "R", B, NONE, false),
                e("10.1.2.5", "R", C, NONE, false),
                e("10.1.2.6", "R", A, NONE, false),
            ],
            &["10.1.2.3:80", "10.1.2.6:80"],
        ),
        Case {
            name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            node_name: "",
            zone: Some("zone-a"),
            flags: (false, true, true),
            endpoints: vec![
                e("10.1.2.3", "R", A, NONE, true),
                e("10.1.2.4", "R", B, NONE, true),
                e("10.1.2.5", "R", C, NONE, false),
                e("10.1.2.6", "R", A, NONE, false),
            ],
            cluster: &["10.1.2.3:80", "10.1.2.6:80"],
            local: &["10.1.2.3:80", "10.1.2.4:80"],
            only_remote: false,
        },
        Case {
            name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            node_name: "",
            zone: Some("zone-a"),
            flags: (true, false, true),
            endpoints: vec![
                e("10.1.2.3", "R", A, NONE, true),
                e("10.1.2.4", "R", B, NONE, true),
                e("10.1.2.5", "R", C, NONE, false),
                e("10.1.2.6", "R", A, NONE, false),
            ],
            cluster: &["10.1.2.3:80", "10.1.2.6:80"],
            local: &["10.1.2.3:80", "10.1.2.4:80"],
            only_remote: false,
        },
        plain("empty node labels", None, vec![e("10.1.2.3", "R", A, NONE, false)], &["10.1.2.3:80"]),
        plain("empty zone label", Some(""), vec![e("10.1.2.3", "R", A, NONE, false)], &["10.1.2.3:80"]),
        plain(
            "node in different zone, no endpoint filtering",
            Some("zone-b"),
            vec![e("10.1.2.3", "R", A, NONE, false)],
            &["10.1.2.3:80"],
        ),
        plain(
            "unready endpoint",
            Some("zone-a"),
            vec![
                e("10.1.2.3", "R", A, NONE, false),
                e("10.1.2.4", "R", B, NONE, false),
                e("10.1.2.5", "R", C, NONE, false),
                e("10.1.2.6", "-", A, NONE, false),
            ],
            &["10.1.2.3:80"],
        ),
        plain(
            "only unready endpoints in same zone (should not filter)",
            Some("zone-a"),
            vec![
                e("10.1.2.3", "-", A, NONE, false),
                e("10.1.2.4", "R", B, NONE, false),
                e("10.1.2.5", "R", C, NONE, false),
                e("10.1.2.6", "-", A, NONE, false),
            ],
            &["10.1.2.4:80", "10.1.2.5:80"],
        ),
        plain(
            "missing hints, no filtering applied",
            Some("zone-a"),
            vec![
                e("10.1.2.3", "R", A, NONE, false),
                e("10.1.2.4", "R", B, NONE, false),
                e("10.1.2.5", "R", NONE, NONE, false),
                e("10.1.2.6", "R", A, NONE, false),
            ],
            &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"],
        ),
        plain(
            "multiple hints per endpoint, filtering includes any endpoint with zone included",
            Some("zone-c"),
            vec![
                e("10.1.2.3", "R", &["zone-a", "zone-b", "zone-c"], NONE, false),
                e("10.1.2.4", "R", &["zone-b", "zone-c"], NONE, false),
                e("10.1.2.5", "R", &["zone-b", "zone-d"], NONE, false),
                e("10.1.2.6", "R", C, NONE, false),
            ],
            &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
        ),
        Case {
            name: "PreferSameNode available",
            node_name: "node-1",
            ..plain(
                "",
                Some("zone-a"),
                vec![
                    e("10.1.2.3", "R", A, &["node-1"], false),
                    e("10.1.2.4", "R", B, &["node-2"], false),
                    e("10.1.2.5", "R", C, &["node-3"], false),
                    e("10.1.2.6", "R", A, &["node-4"], false),
                ],
                &["10.1.2.3:80"],
            )
        },
        Case {
            name: "PreferSameNode ignored if some endpoints unhinted",
            node_name: "node-1",
            ..plain(
                "",
                Some("zone-a"),
                vec![
                    e("10.1.2.3", "R", A, &["node-1"], false),
                    e("10.1.2.4", "R", NONE, NONE, false),
                    e("10.1.2.5", "R", C, &["node-3"], false),
                    e("10.1.2.6", "R", A, &["node-4"], false),
                ],
                &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"],
            )
        },
        Case {
            name: "PreferSameNode falls back to PreferSameZone if no endpoint for node",
            node_name: "node-0",
            ..plain(
                "",
                Some("zone-a"),
                vec![
                    e("10.1.2.3", "R", A, &["node-1"], false),
                    e("10.1.2.4", "R", B, &["node-2"], false),
                    e("10.1.2.5", "R", C, &["node-3"], false),
                    e("10.1.2.6", "R", A, &["node-4"], false),
                ],
                &["10.1.2.3:80", "10.1.2.6:80"],
            )
        },
        Case {
            name: "conflicting topology and localness require merging allEndpoints",
            node_name: "",
            zone: Some("zone-a"),
            flags: (false, true, true),
            endpoints: vec![
                e("10.0.0.0", "R", A, NONE, true),
                e("10.0.0.1", "R", B, NONE, true),
                e("10.0.0.2", "R", A, NONE, false),
                e("10.0.0.3", "R", B, NONE, false),
            ],
            cluster: &["10.0.0.0:80", "10.0.0.2:80"],
            local: &["10.0.0.0:80", "10.0.0.1:80"],
            only_remote: false,
        },
        policy("internalTrafficPolicy: Local, with empty endpoints", (true, false, false), vec![], &[], &[], false),
        policy(
            "internalTrafficPolicy: Local, but all endpoints are remote",
            (true, false, false),
            vec![e("10.0.0.0", "R", NONE, NONE, false), e("10.0.0.1", "R", NONE, NONE, false)],
            &[],
            &[],
            true,
        ),
        policy(
            "internalTrafficPolicy: Local, all endpoints are local",
            (true, false, false),
            vec![e("10.0.0.0", "R", NONE, NONE, true), e("10.0.0.1", "R", NONE, NONE, true)],
            &[],
            &["10.0.0.0:80", "10.0.0.1:80"],
            false,
        ),
        policy(
            "internalTrafficPolicy: Local, some endpoints are local",
            (true, false, false),
            vec![e("10.0.0.0", "R", NONE, NONE, true), e("10.0.0.1", "R", NONE, NONE, false)],
            &[],
            &["10.0.0.0:80"],
            false,
        ),
        policy(
            "Cluster traffic policy, endpoints not Ready",
            (false, false, false),
            vec![e("10.0.0.0", "-", NONE, NONE, false), e("10.0.0.1", "-", NONE, NONE, false)],
            &[],
            &[],
            false,
        ),
        policy(
            "Cluster traffic policy, some endpoints are Ready",
            (false, false, false),
            vec![e("10.0.0.0", "-", NONE, NONE, false), e("10.0.0.1", "R", NONE, NONE, false)],
            &["10.0.0.1:80"],
            &[],
            false,
        ),
        policy(
            "Cluster traffic policy, all endpoints are terminating",
            (false, false, false),
            vec![e("10.0.0.0", "F/T/T", NONE, NONE, true), e("10.0.0.1", "F/T/T", NONE, NONE, false)],
            &["10.0.0.0:80", "10.0.0.1:80"],
            &[],
            false,
        ),
        policy(
            "iTP: Local, eTP: Cluster, some endpoints local",
            (true, false, true),
            vec![e("10.0.0.0", "R", NONE, NONE, true), e("10.0.0.1", "R", NONE, NONE, false)],
            &["10.0.0.0:80", "10.0.0.1:80"],
            &["10.0.0.0:80"],
            false,
        ),
        policy(
            "iTP: Cluster, eTP: Local, some endpoints local",
            (false, true, true),
            vec![e("10.0.0.0", "R", NONE, NONE, true), e("10.0.0.1", "R", NONE, NONE, false)],
            &["10.0.0.0:80", "10.0.0.1:80"],
            &["10.0.0.0:80"],
            false,
        ),
        policy(
            "iTP: Local, eTP: Local, some endpoints local",
            (true, true, true),
            vec![e("10.0.0.0", "R", NONE, NONE, true), e("10.0.0.1", "R", NONE, NONE, false)],
            &["10.0.0.0:80", "10.0.0.1:80"],
            &["10.0.0.0:80"],
            false,
        ),
        policy(
            "iTP: Local, eTP: Local, all endpoints remote",
            (true, true, true),
            vec![e("10.0.0.0", "R", NONE, NONE, false), e("10.0.0.1", "R", NONE, NONE, false)],
            &["10.0.0.0:80", "10.0.0.1:80"],
            &[],
            false,
        ),
        policy(
            "iTP: Local, eTP: Local, all endpoints remote and terminating",
            (true, true, true),
            vec![e("10.0.0.0", "F/T/T", NONE, NONE, false), e("10.0.0.1", "F/T/T", NONE, NONE, false)],
            &["10.0.0.0:80", "10.0.0.1:80"],
            &[],
            true,
        ),
        policy(
            "iTP: Cluster, eTP: Local, with terminating endpoints",
            (false, true, true),
            vec![
                e("10.0.0.0", "R", NONE, NONE, false),
                e("10.0.0.1", "F/F/F", NONE, NONE, true),
                e("10.0.0.2", "F/T/T", NONE, NONE, true),
                e("10.0.0.3", "F/T/T", NONE, NONE, false),
            ],
            &["10.0.0.0:80"],
            &["10.0.0.2:80"],
            false,
        ),
        policy(
            "externalTrafficPolicy ignored if not externally accessible",
            (false, true, false),
            vec![e("10.0.0.0", "R", NONE, NONE, false), e("10.0.0.1", "R", NONE, NONE, true)],
            &["10.0.0.0:80", "10.0.0.1:80"],
            &[],
            false,
        ),
        policy(
            "no cluster endpoints for iTP:Local internal-only service",
            (true, false, false),
            vec![e("10.0.0.0", "R", NONE, NONE, false), e("10.0.0.1", "R", NONE, NONE, true)],
            &[],
            &["10.0.0.1:80"],
            false,
        ),
        policy("empty endpoints when no service endpoints exist", (false, false, false), vec![], &[], &[], false),
        Case {
            name: "single endpoint not ready, not serving, not terminating",
            zone: Some("zone-a"),
            ..policy("", (false, false, false), vec![e("10.0.0.0", "F/F/F", NONE, NONE, false)], &[], &[], false)
        },
    ]
}

fn policy(
    name: &'static str,
    flags: (bool, bool, bool),
    endpoints: Vec<(Endpoint, bool)>,
    cluster: &'static [&'static str],
    local: &'static [&'static str],
    only_remote: bool,
) -> Case {
    Case { name, node_name: "", zone: None, flags, endpoints, cluster, local, only_remote }
}

#[test]
fn categorize_endpoints() {
    let cases = cases();
    assert_eq!(cases.len(), 31, "every upstream case but the gate-off one");
    for case in &cases {
        run(case);
    }
}
