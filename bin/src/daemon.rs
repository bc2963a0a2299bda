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
use nft_client::netlink::monitor::{Monitor, Quiet};
use proxy_core::manifest::Object;
use proxy_core::{Backend, Desired, Event, IpFamily, Plan, Syncer};
use relay_backend::RelayBackend;
use tracing::{info, warn};

use crate::cluster;
use crate::config::{Config, DetectLocal, ProxyFlags, parse_duration};
use crate::dataplane::{Dataplane, DataplaneError};
use crate::manifest_watch;
use crate::node;
use crate::serve;
use crate::serve::health::Health;
use crate::serve::metrics::{Metrics, family as family_label};
use crate::serve::service_health::{self, ServiceHealth};
use crate::source::Update;
use crate::syncloop::{Decision, Input, Periods, SyncLoop};

/// The daemon's command line: kube-proxy's flags, and kproxy's own below.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// kproxy: watch this directory (or files) of manifests instead of the Kubernetes API.
    #[arg(long, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// kproxy: the shortest time between two syncs, over the configuration's.
    #[arg(long)]
    min_sync_period: Option<String>,
    /// kproxy: how often to sync even without changes, over the configuration's. The
    /// nftables table is rewritten whole on these syncs only without drift detection;
    /// with it, hourly, as upstream's nftables mode does.
    #[arg(long)]
    sync_period: Option<String>,
    /// kproxy: how often to poll the manifests where inotify is not available.
    #[arg(long, default_value = "200ms")]
    poll_interval: String,
    #[command(flatten)]
    node: ProxyFlags,
}

#[cfg(test)]
impl RunArgs {
    /// kube-proxy's flags among them.
    pub fn flags(&self) -> &ProxyFlags {
        &self.node
    }
}

/// What wakes the sync loop.
enum Trigger {
    /// A source (the API or the manifests) has news.
    Source(Update),
    /// Someone else changed our tables.
    Drift,
    /// Drift detection stopped.
    DriftUnwatched,
    /// The `--config` file changed: exit, as kube-proxy does, to be restarted with it.
    ConfigChanged,
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

/// Exits promptly on SIGTERM and SIGINT, leaving the rules in place. kube-proxy installs
/// no handler and dies of the signal; kproxy needs one because, as a container's PID 1,
/// signals without a handler are ignored and the pod would wait out its grace period.
/// Must run before any thread is spawned, so that every thread blocks the signals and
/// only the waiter sees them.
fn exit_on_signals() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM and SIGINT")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(signal) = signals.wait() {
            info!("{signal} received: exiting; the rules stay in place");
            std::process::exit(0);
        }
    })?;
    Ok(())
}

/// The daemon's settings: the configuration, with kproxy's own period flags over it.
struct Settings {
    config: Config,
    min_sync_period: Duration,
    sync_period: Duration,
    poll: Duration,
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
        config,
    })
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    if args.node.version.is_some() {
        crate::print_version();
        return Ok(ExitCode::SUCCESS);
    }
    let s = settings(args)?;
    crate::init_logging(&s.config, 2);
    if let Some(path) = &args.node.write_config_to {
        let file = s.config.with_periods(s.sync_period, s.min_sync_period);
        std::fs::write(path, file.to_yaml()).with_context(|| format!("writing {}", path.display()))?;
        info!(file = %path.display(), "Wrote configuration");
        return Ok(ExitCode::SUCCESS);
    }
    if args.node.cleanup == Some(true) {
        return crate::cleanup::everything(&s.config.table);
    }
    exit_on_signals()?;
    crate::sysctls::set_oom_score_adj(s.config.oom_score_adj);
    set_conntrack_sysctls(&s.config);
    if args.node.init_only == Some(true) {
        info!("System initialized and --init-only specified");
        return Ok(ExitCode::SUCCESS);
    }
    start(args, s)?.run()
}

/// Starts the servers, drift detection and the sources, and returns the daemon ready to
/// run its loop.
fn start(args: &RunArgs, s: Settings) -> Result<Daemon> {
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::new());
    let timeout = 2 * s.sync_period;
    let hard_fail = s.config.bind_address_hard_fail;
    if let Some(addr) = &s.config.healthz_bind_address {
        serve::serve("healthz", addr, hard_fail, health.clone().handler(metrics.clone(), timeout))?;
    }
    let configz = serve::metrics::configz(&s.config.with_periods(s.sync_period, s.min_sync_period));
    let handler = metrics.clone().handler(s.config.proxy_mode.clone(), configz);
    serve::serve("metrics", &s.config.metrics_bind_address, hard_fail, handler)?;

    let mut backend = Dataplane::new(&s.config);
    let (tx, rx) = mpsc::channel();
    let drift = start_drift_detection(&mut backend, &s.config.table, &tx)?;
    let engine = proxy_core::Engine::new(node::context_of(&s.config, &[], &mut Vec::new())?);
    info!(node = %engine.node_context().node_name, table = %s.config.table, mode = %s.config.proxy_mode, "kproxy started");
    if let Some(path) = &s.config.config_path {
        crate::config::watch::spawn(path, tx.clone(), Trigger::ConfigChanged)?;
    }
    // The sources send their first read before anything is synced: nothing is programmed
    // until it completes (for the API, until Services, EndpointSlices and this Node have
    // been listed).
    let relay = start_relay(&s.config, &metrics)?;
    if args.manifests.is_empty() {
        let connection =
            cluster::Connection { kubeconfig: s.config.kubeconfig.clone(), master: s.config.master.clone() };
        let relay_stats = relay.as_ref().map(|r| r.stats().clone());
        cluster::spawn(&connection, crate::node::node_name(&s.config), relay_stats, tx, Trigger::Source)?;
    } else {
        manifest_watch::spawn(&args.manifests, s.poll, tx, Trigger::Source)?;
    }
    let periods = Periods {
        min_sync: s.min_sync_period,
        sync: s.sync_period,
        drift_watched: drift.running,
        retry_full: backend.full_after_failure(),
    };
    Ok(Daemon {
        sync_loop: SyncLoop::new(Instant::now(), periods),
        syncer: Syncer::new(backend),
        relay,
        engine,
        context_objects: Vec::new(),
        service_health: ServiceHealth::new(health.clone(), timeout),
        drift,
        drift_repairs: 0,
        leftovers_removed: false,
        pod_cidrs: (s.config.detect_local == DetectLocal::NodeCidr)
            .then(|| PodCidrWait::Waiting { listed: false, deadline: Instant::now() + POD_CIDR_WAIT }),
        pending: (0, 0),
        gone_udp: Default::default(),
        last_queued: IpFamily::ALL.map(|f| metrics.last_queued_timestamp.get_or_create(&family_label(f)).clone()),
        config: s.config,
        health,
        metrics,
        rx,
    })
}

/// Starts the localhost NodePort relay when the configuration asks for it.
fn start_relay(config: &Config, metrics: &Metrics) -> Result<Option<RelayBackend>> {
    if !config.localhost_nodeports() {
        return Ok(None);
    }
    let relay = RelayBackend::start(relay_backend::Limits::default())?;
    let _ = metrics.relay.set(relay.stats().clone());
    info!("serving NodePorts on 127.0.0.1 and ::1 (TCP and UDP) through the localhost relay");
    Ok(Some(relay))
}

/// How long NodeCIDR mode waits for the Node's `spec.podCIDRs` before giving up, as
/// upstream's NodeManager.
const POD_CIDR_WAIT: Duration = Duration::from_secs(300);

/// NodeCIDR mode's wait for the Node's pod CIDRs: nothing is synced before them, as in
/// upstream, whose local-traffic detector needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodCidrWait {
    /// Not yet; `listed` once the sources were read.
    Waiting {
        listed: bool,
        deadline: Instant,
    },
    Done,
}

/// The sync side of the daemon: the engine, the backend and the loop's timing.
struct Daemon {
    config: Config,
    sync_loop: SyncLoop,
    syncer: Syncer<Dataplane>,
    /// The localhost NodePort relay, beside the kernel backend (`--nodeport-addresses`
    /// with `localhost`): fed the same plans, it never fails a sync.
    relay: Option<RelayBackend>,
    engine: proxy_core::Engine,
    /// The Node and ServiceCIDRs, re-read with the interfaces' addresses before every sync
    /// (addresses come and go; kube-proxy re-reads them too).
    context_objects: Vec<Object>,
    service_health: ServiceHealth,
    drift: DriftWatch,
    drift_repairs: u64,
    /// Whether kube-proxy's leftovers were removed (once, after the first commit).
    leftovers_removed: bool,
    /// NodeCIDR mode's wait for pod CIDRs; `None` in other modes.
    pod_cidrs: Option<PodCidrWait>,
    /// Service and endpoint changes since the last sync (`*_changes_pending`).
    pending: (i64, i64),
    /// UDP frontends removed since the last conntrack cleanup, per family: their DNATed
    /// flows are cleared too.
    gone_udp: [proxy_core::conntrack::GoneFrontends; 2],
    /// `sync_proxy_rules_last_queued_timestamp_seconds` per family, looked up once: it is
    /// set for every change, 88k times during a 44k-Service list.
    last_queued: [prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>; 2],
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    rx: Receiver<Trigger>,
}

impl Daemon {
    fn run(mut self) -> Result<ExitCode> {
        self.health.publish(self.sync_loop.health());
        loop {
            let now = Instant::now();
            let mut wake = match self.sync_loop.decide(now) {
                Decision::Sync { full } => {
                    self.sync(full);
                    continue;
                }
                Decision::Wait { until } => until,
            };
            if let Some(PodCidrWait::Waiting { deadline, .. }) = self.pod_cidrs {
                anyhow::ensure!(
                    now < deadline,
                    "timeout waiting for PodCIDR allocation on node {:?}",
                    self.engine.node_context().node_name
                );
                wake = wake.min(deadline);
            }
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Trigger::ConfigChanged) => {
                    anyhow::bail!("content of the proxy server's configuration file was updated")
                }
                Ok(trigger) => self.handle(trigger),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(ExitCode::FAILURE),
            }
        }
    }

    fn handle(&mut self, trigger: Trigger) {
        let input = match trigger {
            Trigger::Source(Update::Event(event)) => {
                let service = matches!(event, Event::ServiceApplied(_) | Event::ServiceDeleted(_));
                if service { &self.metrics.service_changes } else { &self.metrics.endpoint_changes }.inc();
                if !self.engine.apply(event) {
                    return;
                }
                if service {
                    self.pending.0 += 1
                } else {
                    self.pending.1 += 1
                }
                self.metrics.service_changes_pending.set(self.pending.0);
                self.metrics.endpoint_changes_pending.set(self.pending.1);
                Input::Changed
            }
            Trigger::Source(Update::Context(objects)) => {
                self.health.set_node_eligible(node::node_eligible(&self.config, &objects));
                self.context_objects = objects;
                if self.pod_cidrs_arrived() {
                    self.sync_loop.input(Instant::now(), Input::Listed);
                }
                Input::Changed
            }
            Trigger::Source(Update::Listed) => match &mut self.pod_cidrs {
                Some(PodCidrWait::Waiting { listed, .. }) => {
                    *listed = true;
                    if !self.pod_cidrs_arrived() {
                        info!("waiting for this Node's spec.podCIDRs (--detect-local-mode=NodeCIDR)");
                        return;
                    }
                    Input::Listed
                }
                _ => Input::Listed,
            },
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
            Trigger::ConfigChanged => return,
        };
        if self.sync_loop.input(Instant::now(), input) {
            self.health.publish(self.sync_loop.health());
            if input != Input::Drift {
                let now = unix_now();
                for gauge in &self.last_queued {
                    gauge.set(now);
                }
            }
        }
    }

    /// In NodeCIDR mode, whether the wait for pod CIDRs just ended with the sources read
    /// (then they are listed now).
    fn pod_cidrs_arrived(&mut self) -> bool {
        let Some(PodCidrWait::Waiting { listed, .. }) = self.pod_cidrs else { return false };
        let has = match node::context_of(&self.config, &self.context_objects, &mut Vec::new()) {
            Ok(ctx) => matches!(ctx.local_detect, proxy_core::LocalDetectMode::NodeCidr(ref c) if !c.is_empty()),
            Err(_) => false,
        };
        if has {
            self.pod_cidrs = Some(PodCidrWait::Done);
        }
        has && listed
    }

    /// Runs one sync and records its outcome.
    fn sync(&mut self, full: bool) {
        match node::context_of(&self.config, &self.context_objects, &mut Vec::new()) {
            Ok(context) => self.engine.set_node_context(context),
            Err(e) => warn!("node context: {e:#}"),
        }
        if full {
            self.syncer.request_full();
        }
        let plan = self.engine.plan();
        for family in IpFamily::ALL {
            self.gone_udp[family.index()].add(plan.changes.family(family));
        }
        let full = self.syncer.needs_full() || plan.full;
        let start = Instant::now();
        self.pending = (0, 0);
        self.metrics.service_changes_pending.set(0);
        self.metrics.endpoint_changes_pending.set(0);
        let (result, drifted) = self.transact(&plan);
        self.relay(&plan, full);
        self.sync_loop.synced(Instant::now(), result.is_ok(), full);
        self.health.publish(self.sync_loop.health());
        if drifted {
            self.handle(Trigger::Drift);
        }
        match result {
            Ok(stats) => self.after_sync(&plan, full, start, stats),
            Err(e) => {
                // With nftables each family commits alone: only the one that failed counts,
                // and the other's sync is recorded as the success it is.
                let nft = self.syncer.backend().nft();
                let (failed, synced): (Vec<IpFamily>, Vec<IpFamily>) =
                    IpFamily::ALL.into_iter().partition(|f| nft.is_none_or(|nft| nft.failed(*f)));
                for family in failed {
                    self.metrics.sync_failures.get_or_create(&family_label(family)).inc();
                    observe_duration(&self.metrics, family, full, start.elapsed());
                }
                record_sync(&self.metrics, &plan, self.engine.desired(), start.elapsed(), full, &synced);
                let retry = self.sync_loop.retry_at().map(|at| at.saturating_duration_since(Instant::now()));
                let how = if self.syncer.backend().full_after_failure() {
                    "a full sync"
                } else {
                    "the failed family in full"
                };
                warn!("sync failed, retrying in {retry:?} with {how}: {e}");
            }
        }
        if let Some(port) = self.syncer.backend().nft().and_then(|nft| nft.client().port_id()) {
            self.drift.own_port.store(port, Ordering::Relaxed);
        }
    }

    /// Hands the plan to the localhost relay, which binds in the background; listeners
    /// that could not be opened earlier are logged and counted there, and retried here.
    fn relay(&mut self, plan: &Plan, full: bool) {
        let Some(relay) = self.relay.as_mut() else { return };
        let desired = self.engine.desired();
        let result = if full { relay.sync_full(desired) } else { relay.sync_partial(&plan.changes, desired) };
        if let Err(e) = result {
            warn!("localhost NodePorts: {e}");
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
        record_sync(&self.metrics, plan, desired, start.elapsed(), full, &IpFamily::ALL);
        if let Some(nft) = self.syncer.backend().nft() {
            self.metrics.transaction_bytes.set(nft.client().last_transaction_bytes() as i64);
        }
        self.service_health.sync(&desired.health_checks(), &service_health::addresses(self.engine.node_context()));
        info!(
            full,
            operations = stats.operations,
            service_ports = desired.service_port_count(),
            ms = start.elapsed().as_secs_f64() * 1e3,
            "synced"
        );
        let conntrack_start = Instant::now();
        match crate::conntrack::clear_stale(desired, &self.gone_udp, &self.engine.node_context().node_ips) {
            Ok(n) => {
                self.gone_udp = Default::default();
                for family in IpFamily::ALL {
                    let labels = family_label(family);
                    self.metrics
                        .conntrack_sync_duration
                        .get_or_create(&labels)
                        .observe(conntrack_start.elapsed().as_secs_f64());
                    self.metrics.conntrack_deleted.get_or_create(&labels).inc_by(0);
                }
                if n > 0 {
                    // The reconciler does not tell the families apart: counted as IPv4.
                    self.metrics.conntrack_deleted.get_or_create(&family_label(IpFamily::V4)).inc_by(n as u64);
                    info!(flows = n, "cleared stale UDP conntrack entries");
                }
            }
            Err(e) => warn!("could not clear stale UDP conntrack entries: {e}"),
        }
        let ipvs_mode = self.config.proxy_mode == "ipvs";
        if full && ipvs_mode {
            set_ipvs_sysctls(self.config.ipvs_strict_arp);
        }
        // Commit first, delete second: kube-proxy's rules go only once ours are in.
        if !self.leftovers_removed {
            self.leftovers_removed = true;
            let failures = crate::cleanup::kube_proxy_leftovers(!ipvs_mode);
            if failures > 0 {
                self.metrics.cleanup_failures.get_or_create(&family_label(IpFamily::V4)).inc_by(failures as u64);
            }
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Observes a sync's duration for one family: overall, and full or partial.
fn observe_duration(metrics: &Metrics, family: IpFamily, full: bool, took: Duration) {
    let labels = family_label(family);
    let seconds = took.as_secs_f64();
    metrics.sync_duration.get_or_create(&labels).observe(seconds);
    if full { &metrics.full_sync_duration } else { &metrics.partial_sync_duration }
        .get_or_create(&labels)
        .observe(seconds);
}

/// Records a successful sync in kube-proxy's metrics, for each family (one transaction
/// syncs both).
/// Records a sync of `families` (both, unless one failed).
fn record_sync(metrics: &Metrics, plan: &Plan, desired: &Desired, took: Duration, full: bool, families: &[IpFamily]) {
    let now = unix_now();
    for &family in families {
        let labels = family_label(family);
        observe_duration(metrics, family, full, took);
        metrics.last_sync_timestamp.get_or_create(&labels).set(now);
        let (mut internal, mut external) = (0, 0);
        for rules in desired.family(family).service_ports.values() {
            let no_local = rules.has_endpoints && rules.local_endpoints.is_empty();
            internal += i64::from(no_local && rules.internal_policy_local);
            external += i64::from(no_local && rules.external_policy_local);
        }
        for (policy, count) in [("internal", internal), ("external", external)] {
            let mut l = labels.clone();
            l.push(("traffic_policy".into(), policy.into()));
            metrics.no_local_endpoints.get_or_create(&l).set(count);
        }
    }
    for (service, triggers) in &plan.trigger_times {
        let family = service_family(desired, service);
        if !families.contains(&family) {
            continue;
        }
        for trigger in triggers {
            let at = trigger.as_second() as f64 + f64::from(trigger.subsec_nanosecond()) / 1e9;
            metrics.network_programming_duration.get_or_create(&family_label(family)).observe((now - at).max(0.0));
        }
    }
}

/// The family of a Service's rules, for `network_programming_duration_seconds`: IPv6 when
/// it has IPv6 rules only.
fn service_family(desired: &Desired, service: &proxy_core::ObjectRef) -> IpFamily {
    let has = |f: IpFamily| desired.family(f).service_ports.keys().any(|n| &n.service == service);
    if !has(IpFamily::V4) && has(IpFamily::V6) { IpFamily::V6 } else { IpFamily::V4 }
}
