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

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Args;
use nft_backend::netlink::monitor::{Monitor, Quiet};
use proxy_core::manifest::Object;
use proxy_core::{Desired, Plan, Syncer};
use tracing::{info, warn};

use crate::cluster;
use crate::config::{Config, NodeFlags, parse_duration};
use crate::dataplane::{Dataplane, DataplaneError};
use crate::manifest_watch;
use crate::manifests;
use crate::serve::{self, Health, Metrics};
use crate::source::Update;
use crate::syncloop::{Decision, Input, Periods, SyncLoop};

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

/// What wakes the sync loop.
enum Trigger {
    /// A source (the API or the manifests) has news.
    Source(Update),
    /// Someone else changed our tables.
    Drift,
    /// Drift detection stopped.
    DriftUnwatched,
}

fn watch_drift(mut monitor: Monitor, own_port: Arc<AtomicU32>, tx: Sender<Trigger>) {
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
                let _ = tx.send(Trigger::DriftUnwatched);
                return;
            }
        }
    }
}

/// Drift detection's handles on the sync side: `quiet` pauses it around our own
/// transactions, `own_port` tells it which commits are ours.
#[derive(Default)]
struct DriftWatch {
    quiet: Option<Quiet>,
    own_port: Arc<AtomicU32>,
    running: bool,
}

/// Starts drift detection on its own thread (the netlink socket stays there), in nftables
/// mode. IPVS mode repairs drift by its periodic full sync, which reads the kernel.
fn start_drift_detection(backend: &mut Dataplane, table: &str, tx: &Sender<Trigger>) -> Result<DriftWatch> {
    let Some(nft) = backend.nft_mut() else { return Ok(DriftWatch::default()) };
    let own_port = Arc::new(AtomicU32::new(nft.connect().context("opening the nftables netlink socket")?));
    let (quiet_tx, quiet_rx) = mpsc::channel();
    let (table, port, tx) = (table.to_string(), own_port.clone(), tx.clone());
    std::thread::spawn(move || match Monitor::open(&table) {
        Ok(monitor) => {
            let quiet = monitor.quiet().map_err(|e| warn!("drift detection stays on during syncs: {e}")).ok();
            let _ = quiet_tx.send((true, quiet));
            watch_drift(monitor, port, tx);
        }
        Err(e) => {
            warn!("drift detection disabled: {e}");
            let _ = quiet_tx.send((false, None));
        }
    });
    let (running, quiet) = quiet_rx.recv().unwrap_or((false, None));
    Ok(DriftWatch { quiet, own_port, running })
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

/// Sets the conntrack sysctls kube-proxy sets at start, logging what changed.
fn set_conntrack_sysctls(config: &Config) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let (changed, warnings) = config.conntrack.apply(&crate::sysctls::Roots::default(), cpus);
    for sysctl in changed {
        info!("set {sysctl}");
    }
    for warning in warnings {
        warn!("could not set a conntrack sysctl: {warning}");
    }
}

/// The daemon's settings after flags and file are combined.
struct Settings {
    config: Config,
    min_sync_period: Duration,
    sync_period: Duration,
    poll: Duration,
    healthz_addr: String,
    metrics_addr: String,
}

fn settings(args: &RunArgs) -> Result<Settings> {
    let config = args.node.resolve()?;
    let period = |flag: &Option<String>, name: &str, default: Duration| -> Result<Duration> {
        flag.as_deref().map_or(Ok(default), |v| parse_duration(v).with_context(|| name.to_string()))
    };
    let sync_period = period(&args.sync_period, "--sync-period", config.sync_period)?;
    anyhow::ensure!(!sync_period.is_zero(), "--sync-period must be greater than zero");
    Ok(Settings {
        min_sync_period: period(&args.min_sync_period, "--min-sync-period", config.min_sync_period)?,
        sync_period,
        poll: parse_duration(&args.poll_interval).context("--poll-interval")?,
        healthz_addr: args.healthz_bind_address.clone().unwrap_or_else(|| config.healthz_bind_address.clone()),
        metrics_addr: args.metrics_bind_address.clone().unwrap_or_else(|| config.metrics_bind_address.clone()),
        config,
    })
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    crate::init_logging(&args.node, 2);
    let s = settings(args)?;
    set_conntrack_sysctls(&s.config);
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::new());
    serve::health_server(&s.healthz_addr, health.clone(), metrics.clone(), 2 * s.sync_period)?;
    serve::metrics_server(&s.metrics_addr, metrics.clone())?;

    let mut backend = Dataplane::new(&s.config);
    let (tx, rx) = mpsc::channel();
    let drift = start_drift_detection(&mut backend, &s.config.table, &tx)?;
    let engine = proxy_core::Engine::new(manifests::context(&s.config, &[], &mut Vec::new())?);
    info!(node = %engine.node_context().node_name, table = %s.config.table, "kproxy started");
    // The sources send their first read before anything is synced: nothing is programmed
    // until it completes (for the API, until Services, EndpointSlices and this Node have
    // been listed).
    if args.manifests.is_empty() {
        let connection = cluster::Connection {
            kubeconfig: args.kubeconfig.clone().or_else(|| s.config.kubeconfig.clone()),
            master: args.master.clone(),
        };
        cluster::spawn(&connection, crate::node::node_name(&s.config), tx, Trigger::Source)?;
    } else {
        manifest_watch::spawn(&args.manifests, s.poll, tx, Trigger::Source)?;
    }
    let periods = Periods { min_sync: s.min_sync_period, sync: s.sync_period, drift_watched: drift.running };
    let mut daemon = Daemon {
        sync_loop: SyncLoop::new(Instant::now(), periods),
        syncer: Syncer::new(backend),
        engine,
        context_objects: Vec::new(),
        service_health: serve::ServiceHealth::default(),
        ipvs_mode: s.config.proxy_mode == "ipvs",
        drift,
        drift_repairs: 0,
        config: s.config,
        health,
        metrics,
    };
    daemon.run(&rx)
}

/// The sync side of the daemon: the engine, the backend and the loop's timing.
struct Daemon {
    config: Config,
    sync_loop: SyncLoop,
    syncer: Syncer<Dataplane>,
    engine: proxy_core::Engine,
    /// The Node and ServiceCIDRs, re-read with the interfaces' addresses before every sync
    /// (addresses come and go; kube-proxy re-reads them too).
    context_objects: Vec<Object>,
    service_health: serve::ServiceHealth,
    /// IPVS mode sets its sysctls after each full sync (they appear only once ip_vs is
    /// loaded).
    ipvs_mode: bool,
    drift: DriftWatch,
    drift_repairs: u64,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Daemon {
    fn run(&mut self, rx: &Receiver<Trigger>) -> Result<ExitCode> {
        self.health.publish(self.sync_loop.health());
        loop {
            let now = Instant::now();
            match self.sync_loop.decide(now) {
                Decision::Sync { full } => self.sync(full),
                Decision::Wait { until } => match rx.recv_timeout(until.saturating_duration_since(now)) {
                    Ok(trigger) => self.handle(trigger),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(ExitCode::FAILURE),
                },
            }
        }
    }

    fn handle(&mut self, trigger: Trigger) {
        let input = match trigger {
            Trigger::Source(Update::Event(event)) => {
                if !self.engine.apply(event) {
                    return;
                }
                Input::Changed
            }
            Trigger::Source(Update::Context(objects)) => {
                self.health.set_node_eligible(manifests::node_eligible(&self.config, &objects));
                self.context_objects = objects;
                Input::Changed
            }
            Trigger::Source(Update::Listed) => Input::Listed,
            Trigger::Drift => {
                self.drift_repairs += 1;
                self.metrics.drift_repairs.inc();
                warn!(
                    drift_repairs = self.drift_repairs,
                    "table {} was changed by someone else; repairing with a full sync", self.config.table
                );
                Input::Drift
            }
            Trigger::DriftUnwatched => Input::DriftUnwatched,
        };
        if self.sync_loop.input(Instant::now(), input) {
            self.health.publish(self.sync_loop.health());
            if input != Input::Drift {
                self.metrics.last_queued_timestamp.set(unix_now());
            }
        }
    }

    /// Runs one sync and records its outcome.
    fn sync(&mut self, full: bool) {
        match manifests::context(&self.config, &self.context_objects, &mut Vec::new()) {
            Ok(context) => self.engine.set_node_context(context),
            Err(e) => warn!("node context: {e:#}"),
        }
        if full {
            self.syncer.request_full();
        }
        let plan = self.engine.plan();
        let full = self.syncer.needs_full() || plan.full;
        let start = Instant::now();
        self.metrics.service_changes.inc_by(plan.service_changes);
        self.metrics.endpoint_changes.inc_by(plan.endpoint_changes);
        let (result, drifted) = self.transact(&plan);
        self.sync_loop.synced(Instant::now(), result.is_ok(), full);
        self.health.publish(self.sync_loop.health());
        if drifted {
            self.handle(Trigger::Drift);
        }
        match result {
            Ok(stats) => self.after_sync(&plan, full, start, stats),
            Err(e) => {
                self.metrics.sync_failures.inc();
                let retry = self.sync_loop.retry_at().map(|at| at.saturating_duration_since(Instant::now()));
                warn!("sync failed, retrying in {retry:?} with a full sync: {e}");
            }
        }
        if let Some(port) = self.syncer.backend().nft().and_then(|nft| nft.port_id()) {
            self.drift.own_port.store(port, Ordering::Relaxed);
        }
    }

    /// The backend transaction, with drift detection paused around it; also returns
    /// whether a foreign commit was seen meanwhile.
    fn transact(&mut self, plan: &Plan) -> (Result<proxy_core::SyncStats, DataplaneError>, bool) {
        let quiet = self.drift.quiet.as_ref();
        let paused = quiet.zip(self.syncer.backend_mut().nft_mut()).and_then(|(q, nft)| q.pause(nft));
        let result = self.syncer.sync(plan, self.engine.desired());
        let drifted = match (quiet, paused, self.syncer.backend_mut().nft_mut()) {
            (Some(q), Some(before), Some(nft)) => !q.resume(nft, before),
            _ => false,
        };
        (result, drifted)
    }

    fn after_sync(&mut self, plan: &Plan, full: bool, start: Instant, stats: proxy_core::SyncStats) {
        let desired = self.engine.desired();
        record_sync(&self.metrics, plan, desired, start.elapsed(), full);
        if let Some(nft) = self.syncer.backend().nft() {
            self.metrics.transaction_bytes.set(nft.last_transaction_bytes() as i64);
        }
        self.service_health.sync(&desired.health_checks(), &health_check_addrs(self.engine.node_context()));
        info!(
            full,
            operations = stats.operations,
            service_ports = desired.service_port_count(),
            ms = start.elapsed().as_secs_f64() * 1e3,
            "synced"
        );
        match crate::conntrack::clear_stale(desired, &self.engine.node_context().node_ips) {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.conntrack_deleted.inc_by(n as u64);
                info!(flows = n, "cleared stale UDP conntrack entries");
            }
            Err(e) => warn!("could not clear stale UDP conntrack entries: {e}"),
        }
        if full && self.ipvs_mode {
            set_ipvs_sysctls(self.config.ipvs_strict_arp);
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
