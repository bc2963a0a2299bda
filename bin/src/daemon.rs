//! `kproxy run`: the node daemon, fed from the Kubernetes API (see [`crate::cluster`]) or,
//! with `--manifests DIR`, from a directory of manifests.
//!
//! The sync loop keeps upstream kube-proxy's contract:
//!
//! - nothing is programmed until the sources have been read once;
//! - syncs are rate-limited by `--min-sync-period`;
//! - a full resync runs every `--sync-period`;
//! - a failed sync is retried with exponential backoff, as a full sync;
//! - rules are never flushed on start or exit, so they outlive the process.
//!
//! Beyond upstream, a foreign change to kproxy's tables is detected from nf_tables
//! notifications and repaired at once by a full sync, instead of at the next periodic one.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Args;
use nft_backend::netlink::monitor::Monitor;

use crate::dataplane::Dataplane;
use proxy_core::manifest::Object;
use proxy_core::{Desired, Event, ObjectRef, Plan, Syncer};
use tracing::{info, warn};

use crate::cluster;
use crate::config::{NodeFlags, parse_duration};
use crate::manifests;
use crate::serve::{self, Health, Metrics};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Watch this directory (or files) of manifests instead of the Kubernetes API.
    #[arg(long, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// The kubeconfig to reach the API server with (default: in-cluster, then
    /// $KUBECONFIG or ~/.kube/config).
    #[arg(long, conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// The API server's address, overriding the kubeconfig's.
    #[arg(long, conflicts_with = "manifests")]
    master: Option<String>,
    /// The shortest time between two syncs (kube-proxy's default: 1s).
    #[arg(long)]
    min_sync_period: Option<String>,
    /// How often to sync even without changes (kube-proxy's default: 30s). The nftables
    /// table is rewritten whole on these syncs only without drift detection; with it,
    /// hourly, as upstream's nftables mode does.
    #[arg(long)]
    sync_period: Option<String>,
    /// How often to look for manifest changes.
    #[arg(long, default_value = "200ms")]
    poll_interval: String,
    /// Where to serve /healthz and /livez (kube-proxy's default: 0.0.0.0:10256).
    #[arg(long)]
    healthz_bind_address: Option<String>,
    /// Where to serve /metrics (kube-proxy's default: 127.0.0.1:10249).
    #[arg(long)]
    metrics_bind_address: Option<String>,
    #[command(flatten)]
    node: NodeFlags,
}

fn context_objects_of(objects: &[Object]) -> Vec<Object> {
    objects.iter().filter(|o| matches!(o, Object::Node(_) | Object::ServiceCidr(_))).cloned().collect()
}

/// Reads the manifests, keeping the previous objects of any file that cannot be read whole
/// right now (caught mid-write, say), so a half-written file does not delete Services.
fn reload(paths: &[PathBuf], cache: &mut BTreeMap<PathBuf, Vec<Object>>) -> Result<manifests::Loaded> {
    let files = manifests::load_files(paths)?;
    let present: HashSet<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    cache.retain(|path, _| present.contains(path));
    let mut problems = Vec::new();
    for file in files {
        problems.extend(file.problems);
        if file.complete || !cache.contains_key(&file.path) {
            cache.insert(file.path, file.objects);
        } else {
            warn!(file = %file.path.display(), "incomplete manifest; keeping its previous contents");
        }
    }
    Ok(manifests::Loaded { objects: cache.values().flatten().cloned().collect(), problems })
}

/// kube-proxy's sync rate limit: bursts of up to two syncs, then one per
/// `--min-sync-period` (the BoundedFrequencyRunner's token bucket).
struct Burst {
    period: Duration,
    tokens: f64,
    at: Instant,
}

impl Burst {
    const SIZE: f64 = 2.0;

    fn new(period: Duration) -> Burst {
        Burst { period, tokens: Self::SIZE, at: Instant::now() }
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        if self.period.is_zero() {
            return Self::SIZE;
        }
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() / self.period.as_secs_f64();
        (self.tokens + refilled).min(Self::SIZE)
    }

    /// When the next sync may start.
    fn next_allowed(&self, now: Instant) -> Instant {
        let tokens = self.tokens_at(now);
        if tokens >= 1.0 { now } else { now + self.period.mul_f64(1.0 - tokens) }
    }

    /// Uses one token.
    fn take(&mut self, now: Instant) {
        self.tokens = (self.tokens_at(now) - 1.0).max(0.0);
        self.at = now;
    }

    /// Restores a full bucket (after drift, repair is not rate limited).
    fn refill(&mut self) {
        self.tokens = Self::SIZE;
        self.at = Instant::now();
    }
}

/// What wakes the sync loop.
enum Trigger {
    /// The manifests changed.
    Manifests,
    /// The API server reported a change.
    Cluster(cluster::Update),
    /// Someone else changed our tables.
    Drift,
}

/// A cheap fingerprint of the manifest files: names, sizes and modification times.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifests::files(paths)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (f, size, modified)
        })
        .collect()
}

fn watch_manifests(paths: Vec<PathBuf>, interval: Duration, tx: Sender<Trigger>) {
    let mut last = fingerprint(&paths);
    loop {
        std::thread::sleep(interval);
        let now = fingerprint(&paths);
        if now != last {
            last = now;
            if tx.send(Trigger::Manifests).is_err() {
                return;
            }
        }
    }
}

/// How often the nftables mode rewrites its whole table while drift detection is on.
/// Upstream's nftables proxier makes its periodic sync partial and a full one hourly; the
/// drift monitor repairs foreign changes as they happen, so this only bounds what a missed
/// notification could cost. At 5k Services × 50 endpoints a full sync takes seconds, which
/// every 30 s would be a tenth of a core. Without the monitor, and in IPVS mode (whose full
/// sync reads the kernel back), every periodic sync is full.
const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

fn watch_drift(mut monitor: Monitor, own_port: Arc<AtomicU32>, tx: Sender<Trigger>, watched: Arc<AtomicBool>) {
    loop {
        let own = [own_port.load(Ordering::Relaxed)];
        match monitor.wait(Duration::from_millis(500), &own) {
            Ok(true) => {
                if tx.send(Trigger::Drift).is_err() {
                    return;
                }
            }
            Ok(false) => {}
            Err(e) => {
                warn!("drift detection stopped: {e}; the periodic syncs are full from now on");
                watched.store(false, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// The identity of a manifest object, to notice deletions between reloads.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Service(ObjectRef),
    Slice(ObjectRef),
}

fn object_ref(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
    ObjectRef::new(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""))
}

/// Sets IPVS mode's sysctls, logging what changed.
fn set_ipvs_sysctls(strict_arp: bool) {
    let (changed, warnings) = crate::sysctls::ipvs(&crate::sysctls::Roots::default(), strict_arp);
    for sysctl in changed {
        info!("set {sysctl}");
    }
    for warning in warnings {
        warn!("could not set an IPVS sysctl: {warning}");
    }
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    crate::init_logging(&args.node, 2);
    let config = args.node.resolve()?;
    let min_sync_period = match &args.min_sync_period {
        Some(v) => parse_duration(v).context("--min-sync-period")?,
        None => config.min_sync_period,
    };
    let sync_period = match &args.sync_period {
        Some(v) => parse_duration(v).context("--sync-period")?,
        None => config.sync_period,
    };
    anyhow::ensure!(!sync_period.is_zero(), "--sync-period must be greater than zero");
    let poll = parse_duration(&args.poll_interval).context("--poll-interval")?;

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let (changed, warnings) = config.conntrack.apply(&crate::sysctls::Roots::default(), cpus);
    for sysctl in changed {
        info!("set {sysctl}");
    }
    for warning in warnings {
        warn!("could not set a conntrack sysctl: {warning}");
    }
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::new());
    let healthz_addr = args.healthz_bind_address.clone().unwrap_or_else(|| config.healthz_bind_address.clone());
    let metrics_addr = args.metrics_bind_address.clone().unwrap_or_else(|| config.metrics_bind_address.clone());
    serve::health_server(&healthz_addr, health.clone(), metrics.clone(), 2 * sync_period)?;
    serve::metrics_server(&metrics_addr, metrics.clone())?;

    let mut service_health = serve::ServiceHealth::default();
    let mut backend = Dataplane::new(&config);
    let (tx, rx) = mpsc::channel();
    let own_port = Arc::new(AtomicU32::new(0));
    let mut quiet = None;
    // Whether the drift monitor is running: it decides how often periodic syncs are full.
    let drift_watched = Arc::new(AtomicBool::new(false));
    if let Some(nft) = backend.nft_mut() {
        own_port.store(nft.connect().context("opening the nftables netlink socket")?, Ordering::Relaxed);
        // Drift detection, on its own thread (the netlink socket stays there); `quiet`
        // pauses it around our own transactions (see `Quiet`).
        let (quiet_tx, quiet_rx) = mpsc::channel();
        let (table, port, tx, watched) = (config.table.clone(), own_port.clone(), tx.clone(), drift_watched.clone());
        std::thread::spawn(move || match Monitor::open(&table) {
            Ok(monitor) => {
                watched.store(true, Ordering::Relaxed);
                let quiet = monitor.quiet().map_err(|e| warn!("drift detection stays on during syncs: {e}")).ok();
                let _ = quiet_tx.send(quiet);
                watch_drift(monitor, port, tx, watched);
            }
            Err(e) => {
                warn!("drift detection disabled: {e}");
                let _ = quiet_tx.send(None);
            }
        });
        quiet = quiet_rx.recv().ok().flatten();
    }
    // IPVS mode: drift is repaired by the periodic full sync, which reads the kernel; the
    // IPVS sysctls are set after each full sync (they appear only once ip_vs is loaded).
    let ipvs_mode = backend.nft().is_none();

    // The first read of the sources: nothing is programmed before it completes (for the
    // API, until Services, EndpointSlices and this Node have been listed).
    let from_cluster = args.manifests.is_empty();
    let mut listed = !from_cluster;
    let mut cache = BTreeMap::new();
    let mut known = HashSet::new();
    // The Node and ServiceCIDRs, re-read with the interfaces' addresses before every sync
    // (addresses come and go; kube-proxy re-reads them too).
    let mut context_objects = Vec::new();
    let mut engine;
    if from_cluster {
        engine = proxy_core::Engine::new(manifests::context(&config, &[], &mut Vec::new())?);
        let connection = cluster::Connection {
            kubeconfig: args.kubeconfig.clone().or_else(|| config.kubeconfig.clone()),
            master: args.master.clone(),
        };
        cluster::spawn(&connection, crate::node::node_name(&config), tx.clone(), Trigger::Cluster)?;
    } else {
        let loaded = reload(&args.manifests, &mut cache)?;
        let mut problems = loaded.problems;
        engine = manifests::engine(&config, &loaded.objects, &mut problems)?;
        crate::report(&problems);
        known = keys(&loaded.objects);
        context_objects = context_objects_of(&loaded.objects);
        health.set_node_eligible(manifests::node_eligible(&config, &loaded.objects));
        let (paths, tx) = (args.manifests.clone(), tx.clone());
        std::thread::spawn(move || watch_manifests(paths, poll, tx));
    }
    health.queued();
    let mut syncer = Syncer::new(backend);
    let mut limiter = Burst::new(min_sync_period);
    let full_period =
        || if drift_watched.load(Ordering::Relaxed) { FULL_SYNC_PERIOD.max(sync_period) } else { sync_period };
    let mut next_sync = Instant::now() + sync_period;
    let mut next_full = Instant::now() + full_period();
    let mut retry_at: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);
    let mut pending = true;
    let mut drift_repairs = 0u64;
    info!(node = %engine.node_context().node_name, table = %config.table, "kproxy started");

    loop {
        let now = Instant::now();
        let earliest = limiter.next_allowed(now).max(retry_at.unwrap_or(now));
        if listed && pending && now >= earliest {
            match manifests::context(&config, &context_objects, &mut Vec::new()) {
                Ok(context) => engine.set_node_context(context),
                Err(e) => warn!("node context: {e:#}"),
            }
            let plan = engine.plan();
            let full = syncer.needs_full() || plan.full;
            let start = Instant::now();
            metrics.service_changes.inc_by(plan.service_changes);
            metrics.endpoint_changes.inc_by(plan.endpoint_changes);
            let paused = quiet.as_ref().zip(syncer.backend_mut().nft_mut()).and_then(|(q, nft)| q.pause(nft));
            let result = syncer.sync(&plan, engine.desired());
            if let (Some(q), Some(before), Some(nft)) = (&quiet, paused, syncer.backend_mut().nft_mut())
                && !q.resume(nft, before)
            {
                let _ = tx.send(Trigger::Drift);
            }
            match result {
                Ok(stats) => {
                    record_sync(&metrics, &plan, engine.desired(), start.elapsed(), full);
                    if let Some(nft) = syncer.backend().nft() {
                        metrics.transaction_bytes.set(nft.last_transaction_bytes() as i64);
                    }
                    health.updated();
                    service_health.sync(&engine.desired().health_checks(), &health_check_addrs(engine.node_context()));
                    info!(
                        full,
                        operations = stats.operations,
                        service_ports = engine.desired().service_port_count(),
                        ms = start.elapsed().as_secs_f64() * 1e3,
                        "synced"
                    );
                    match crate::conntrack::clear_stale(engine.desired(), &engine.node_context().node_ips) {
                        Ok(0) => {}
                        Ok(n) => {
                            metrics.conntrack_deleted.inc_by(n as u64);
                            info!(flows = n, "cleared stale UDP conntrack entries");
                        }
                        Err(e) => warn!("could not clear stale UDP conntrack entries: {e}"),
                    }
                    pending = false;
                    next_sync = Instant::now() + sync_period;
                    retry_at = None;
                    backoff = Duration::from_secs(1);
                    if full {
                        next_full = Instant::now() + full_period();
                        if ipvs_mode {
                            set_ipvs_sysctls(config.ipvs_strict_arp);
                        }
                    }
                }
                Err(e) => {
                    metrics.sync_failures.inc();
                    warn!("sync failed, retrying in {backoff:?} with a full sync: {e}");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(sync_period.max(Duration::from_secs(1)));
                }
            }
            limiter.take(Instant::now());
            if let Some(port) = syncer.backend().nft().and_then(|nft| nft.port_id()) {
                own_port.store(port, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        if now >= next_full {
            syncer.request_full();
            pending = true;
            next_full = now + full_period();
        } else if now >= next_sync {
            pending = true;
            next_sync = now + sync_period;
        }
        let wake = if listed && pending { earliest.max(now) } else { next_full.min(next_sync) };
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Trigger::Manifests) => {
                let loaded = match reload(&args.manifests, &mut cache) {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        warn!("reading the manifests: {e:#}; keeping the current rules");
                        continue;
                    }
                };
                let mut problems = loaded.problems;
                let current = keys(&loaded.objects);
                for gone in known.difference(&current) {
                    engine.apply(match gone {
                        Key::Service(id) => Event::ServiceDeleted(id.clone()),
                        Key::Slice(id) => Event::SliceDeleted(id.clone()),
                    });
                }
                manifests::apply(&mut engine, &loaded.objects, &mut problems);
                crate::report(&problems);
                known = current;
                health.set_node_eligible(manifests::node_eligible(&config, &loaded.objects));
                health.queued();
                metrics.last_queued_timestamp.set(unix_now());
                context_objects = context_objects_of(&loaded.objects);
                pending = true;
            }
            Ok(Trigger::Cluster(update)) => {
                match update {
                    cluster::Update::Event(event) => {
                        if !engine.apply(event) {
                            continue;
                        }
                    }
                    cluster::Update::Context(objects) => {
                        health.set_node_eligible(manifests::node_eligible(&config, &objects));
                        context_objects = objects;
                    }
                    cluster::Update::Listed => listed = true,
                }
                health.queued();
                metrics.last_queued_timestamp.set(unix_now());
                pending = true;
            }
            Ok(Trigger::Drift) => {
                drift_repairs += 1;
                metrics.drift_repairs.inc();
                health.queued();
                warn!(drift_repairs, "table {} was changed by someone else; repairing with a full sync", config.table);
                syncer.request_full();
                pending = true;
                // Repair at once, without waiting for the min sync period.
                limiter.refill();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(ExitCode::FAILURE),
        }
    }
}

/// Where HealthCheckNodePorts listen: the NodePort addresses (every address when those
/// match all).
fn health_check_addrs(node: &proxy_core::NodeContext) -> Vec<std::net::IpAddr> {
    let mut addrs = Vec::new();
    for family in proxy_core::IpFamily::ALL {
        match node.family(family).nodeport_ips {
            proxy_core::NodePortIps::All => return Vec::new(),
            proxy_core::NodePortIps::Only(ips) => addrs.extend(ips),
        }
    }
    addrs
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Records a successful sync in kube-proxy's metrics.
fn record_sync(metrics: &Metrics, plan: &Plan, desired: &Desired, took: Duration, full: bool) {
    let seconds = took.as_secs_f64();
    metrics.sync_duration.observe(seconds);
    if full { &metrics.full_sync_duration } else { &metrics.partial_sync_duration }.observe(seconds);
    metrics.last_sync_timestamp.set(unix_now());
    let now = unix_now();
    for trigger in plan.trigger_times.values().flatten() {
        let at = trigger.as_second() as f64 + f64::from(trigger.subsec_nanosecond()) / 1e9;
        metrics.network_programming_duration.observe((now - at).max(0.0));
    }
    let (mut internal, mut external) = (0, 0);
    for rules in desired.families().flat_map(|f| f.service_ports.values()) {
        if rules.has_endpoints && rules.internal_policy_local && rules.local_endpoints.is_empty() {
            internal += 1;
        }
        if rules.has_endpoints && rules.external_policy_local && rules.local_endpoints.is_empty() {
            external += 1;
        }
    }
    let label = |policy: &str| vec![("traffic_policy".to_string(), policy.to_string())];
    metrics.no_local_endpoints.get_or_create(&label("internal")).set(internal);
    metrics.no_local_endpoints.get_or_create(&label("external")).set(external);
}

fn keys(objects: &[Object]) -> HashSet<Key> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(Key::Service(object_ref(&s.metadata))),
            Object::EndpointSlice(s) => Some(Key::Slice(object_ref(&s.metadata))),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_of_two_then_one_per_period() {
        let period = Duration::from_secs(1);
        let mut b = Burst::new(period);
        let t0 = b.at;
        assert_eq!(b.next_allowed(t0), t0);
        b.take(t0);
        assert_eq!(b.next_allowed(t0), t0, "a second sync right away is allowed");
        b.take(t0);
        assert_eq!(b.next_allowed(t0), t0 + period, "the third waits a full period");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(b.next_allowed(later), later);
        b.take(later);
        assert_eq!(b.next_allowed(later), later + Duration::from_millis(500));
        b.refill();
        assert!(b.next_allowed(Instant::now()) <= Instant::now());
    }
}
