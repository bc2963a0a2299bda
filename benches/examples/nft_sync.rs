//! Applies synthetic clusters to the kernel through `NftBackend` and times it: the bench
//! behind `benches/nft.sh`, which runs it in a throwaway network namespace.
//!
//! `nft_sync SERVICES ENDPOINTS [CHANGES [maglev] [ports=P]]` prints one `key=value` line
//! (with `maglev`, every Service picks endpoints by Maglev hashing; with `ports=P`, every
//! Service has P ports; the line also gives the elements):
//! cold full sync, full resync of an existing table, one-endpoint-change and
//! one-service-added partial syncs (median and p99 over CHANGES runs), transaction sizes,
//! drift detection (a foreign commit to the table until the monitor reports it), and
//! peak RSS.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kproxy_benches::{engine_with_ports, node_context, service, slices, slices_with_ports};
use nft_backend::NftBackend;
use nft_client::netlink::monitor::Monitor;
use nft_client::ruleset::Key;
use nft_client::tx::{Op, Transaction};
use proxy_core::{Backend, Event, IpFamily};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `SUnreclaim` of /proc/meminfo, in KiB: where nf_tables objects live.
fn unreclaimable_slab_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Times drift detection `runs` times: another netlink socket (another program) adds or
/// deletes an element of our table, and a [`Monitor`] on its own thread (as the daemon
/// runs it) reports the change. Each sample runs from just before the foreign commit to
/// the report.
fn drift_detection(backend: &NftBackend, table: &str, runs: usize) -> Vec<Duration> {
    let own = backend.client().port_id().expect("the backend's socket is open");
    let (detected_tx, detected) = mpsc::channel();
    let (round_tx, round) = mpsc::channel::<()>();
    let table_name = table.to_string();
    std::thread::spawn(move || {
        // Opened on its own thread, as the daemon does (the socket stays there).
        let mut monitor = Monitor::open(&table_name).expect("monitor");
        let _ = detected_tx.send(Instant::now());
        for () in round {
            while !monitor.wait(Duration::from_secs(10), &[own]).expect("monitor") {}
            if detected_tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    detected.recv().expect("monitor open");
    let mut other = nft_client::Client::new();
    let mut samples = Vec::new();
    for i in 0..runs {
        round_tx.send(()).expect("monitor thread");
        let ip = Key::Addr(IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i / 2) as u8)));
        let op = if i % 2 == 0 {
            Op::AddElements("cluster-ips".into(), vec![(ip, None)])
        } else {
            Op::DeleteElements("cluster-ips".into(), vec![ip])
        };
        let start = Instant::now();
        other
            .commit(&[Transaction { family: IpFamily::V4, table: table.into(), ops: vec![op] }])
            .expect("foreign commit");
        samples.push(detected.recv().expect("drift reported") - start);
    }
    samples
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let maglev = raw.iter().any(|a| a == "maglev");
    let ports: usize = raw.iter().find_map(|a| a.strip_prefix("ports=")).map_or(1, |p| p.parse().expect("ports=P"));
    let args: Vec<usize> = raw
        .iter()
        .filter(|a| *a != "maglev" && !a.starts_with("ports="))
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let (services, endpoints) = (args[0], args[1]);
    let changes = args.get(2).copied().unwrap_or(100);
    let mut node = node_context();
    node.maglev.by_default = maglev;
    let mut e = engine_with_ports(node, services, endpoints, ports);
    let mut backend = NftBackend::new("kproxy-bench");

    // The kernel memory the cold sync adds (unreclaimable slab, machine-wide: run it on an
    // idle machine).
    let slab_before = unreclaimable_slab_kib();
    // Cold: the table does not exist yet. Time includes render, encode, send and commit.
    let start = Instant::now();
    let stats = backend.sync_full(e.desired()).expect("cold full sync");
    let cold = start.elapsed();
    let (cold_bytes, cold_messages) = (backend.client().last_transaction_bytes(), stats.operations);
    let kernel_mib = unreclaimable_slab_kib().saturating_sub(slab_before) as f64 / 1024.0;

    let start = Instant::now();
    backend.sync_full(e.desired()).expect("full resync");
    let resync = start.elapsed();

    let target = services / 2;
    let mut endpoint_change = Vec::new();
    let mut endpoint_change_bytes = 0;
    for i in 0..changes {
        for slice in slices_with_ports(target, endpoints.max(2), (i % 2 == 0) as u32, ports) {
            e.apply(Event::SliceApplied(slice));
        }
        let start = Instant::now();
        let plan = e.plan();
        backend.sync_partial(&plan.changes, e.desired()).expect("partial sync");
        endpoint_change.push(start.elapsed());
        endpoint_change_bytes = backend.client().last_transaction_bytes();
    }
    let mut service_added = Vec::new();
    for i in 0..changes {
        let extra = service(services + 1);
        if i % 2 == 0 {
            e.apply(Event::ServiceApplied(extra));
            for slice in slices(services + 1, 2, 0) {
                e.apply(Event::SliceApplied(slice));
            }
        } else {
            e.apply(Event::ServiceDeleted(extra.id));
        }
        let start = Instant::now();
        let plan = e.plan();
        backend.sync_partial(&plan.changes, e.desired()).expect("partial sync");
        service_added.push(start.elapsed());
    }
    let mut drift = drift_detection(&backend, "kproxy-bench", changes.min(40));
    backend.cleanup().expect("cleanup");
    // Measured last, so that its own rendering does not count in the peak.
    let peak_rss = peak_rss_mib();
    let elements: usize = IpFamily::ALL
        .iter()
        .map(|f| {
            let rules = e.desired().family(*f);
            let ruleset = nft_backend::render::family(&rules.context, &rules.service_ports);
            ruleset.sets.values().map(|s| s.elements.len()).sum::<usize>()
        })
        .sum();
    println!(
        "services={services} endpoints={endpoints} cold_full_ms={} cold_bytes={cold_bytes} cold_messages={cold_messages} \
         resync_ms={} endpoint_change_p50_ms={} endpoint_change_p99_ms={} endpoint_change_bytes={endpoint_change_bytes} \
         service_change_p50_ms={} service_change_p99_ms={} drift_detect_p50_ms={} drift_detect_p99_ms={} \
         peak_rss_mib={:.1} elements={elements} kernel_mib={kernel_mib:.1}",
        ms(cold),
        ms(resync),
        ms(percentile(&mut endpoint_change.clone(), 0.5)),
        ms(percentile(&mut endpoint_change, 0.99)),
        ms(percentile(&mut service_added.clone(), 0.5)),
        ms(percentile(&mut service_added, 0.99)),
        ms(percentile(&mut drift.clone(), 0.5)),
        ms(percentile(&mut drift, 0.99)),
        peak_rss,
    );
}
