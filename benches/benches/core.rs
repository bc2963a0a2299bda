//! proxy-core benches: full compute (+ diff against an empty state), and one-change
//! incremental recompute + diff, at kube-proxy's problem sizes; Maglev table builds.
//!
//! `cargo bench -p kproxy-benches --bench core`

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kproxy_benches::{engine, node_context, service, slices, snapshot};
use proxy_core::{Desired, Event, IpFamily, compute, diff, maglev};

const FULL: &[(usize, usize)] = &[
    (1_000, 1),
    (1_000, 2),
    (1_000, 10),
    (10_000, 1),
    (10_000, 2),
    (10_000, 10),
    (44_000, 1),
    (44_000, 2),
    (44_000, 10),
    (5_000, 50),
];

fn full_compute(c: &mut Criterion) {
    let mut group = c.benchmark_group("compute_full");
    group.sample_size(10);
    let node = node_context();
    for &(services, endpoints) in FULL {
        let snap = snapshot(services, endpoints);
        let empty = Desired::empty(node.family(IpFamily::V4), node.family(IpFamily::V6));
        let id = format!("{services}x{endpoints}");
        group.bench_function(BenchmarkId::new("compute", &id), |b| b.iter(|| black_box(compute(&snap, &node))));
        group.bench_function(BenchmarkId::new("compute+diff", &id), |b| {
            b.iter(|| {
                let desired = compute(&snap, &node);
                black_box(diff(&empty, &desired))
            })
        });
    }
    group.finish();
}

fn one_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_change");
    for services in [1_000, 10_000, 44_000] {
        let mut e = engine(services, 2);
        let target = services / 2;
        let mut generation = 0;
        group.bench_function(BenchmarkId::new("endpoint_changed", services), |b| {
            b.iter(|| {
                generation = 1 - generation;
                for slice in slices(target, 2, generation) {
                    e.apply(Event::SliceApplied(slice));
                }
                black_box(e.plan())
            })
        });
        let mut added = false;
        group.bench_function(BenchmarkId::new("service_added_or_removed", services), |b| {
            b.iter(|| {
                added = !added;
                if added {
                    e.apply(Event::ServiceApplied(service(services)));
                } else {
                    e.apply(Event::ServiceDeleted(service(services).id));
                }
                black_box(e.plan())
            })
        });
    }
    group.finish();
}

/// Maglev tables: the build for 1,000 endpoints at the default cap and the largest class,
/// and a one-endpoint change as the backend sees it (the new table, compared slot by slot
/// with the old one to find the elements to replace).
fn maglev_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev");
    let endpoints = |n: u32, first: u32| -> Vec<SocketAddr> {
        let mut eps: Vec<SocketAddr> =
            (0..n).map(|i| SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + first + i), 8080))).collect();
        eps.sort();
        eps
    };
    let (before, after) = (endpoints(1000, 0), endpoints(1000, 1));
    for size in [maglev::DEFAULT_MAX_SIZE, 65521] {
        group.bench_function(BenchmarkId::new("build_1000_endpoints", size), |b| {
            b.iter(|| black_box(maglev::table(&before, size)))
        });
        let old = maglev::table(&before, size);
        group.bench_function(BenchmarkId::new("one_endpoint_changed_1000", size), |b| {
            b.iter(|| {
                let new = maglev::table(&after, size);
                let changed = old.iter().zip(&new).filter(|(o, n)| before[**o as usize] != after[**n as usize]).count();
                black_box(changed)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, full_compute, one_change, maglev_table);
criterion_main!(benches);
