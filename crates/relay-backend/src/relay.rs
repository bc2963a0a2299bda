//! The relay's own runtime: a thread with a small tokio runtime that owns every listener.
//! Syncs hand it the wanted listeners over a channel and return at once, so binding,
//! accepting and copying never slow a rule sync, and a port conflict is a counted,
//! reported failure of that one listener, never of the sync.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use proxy_core::{IpFamily, Protocol};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{info, warn};

use crate::error::Error;
use crate::pick::Picker;
use crate::plan::{Listener, Route};

/// Caps on what the relay holds, so a flood through one NodePort cannot exhaust the
/// process's file descriptors (each relayed TCP connection holds two).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open TCP connections per NodePort.
    pub connections_per_port: usize,
    /// Open TCP connections over all NodePorts.
    pub connections: usize,
    /// UDP sessions per NodePort.
    pub udp_sessions_per_port: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { connections_per_port: 1024, connections: 16384, udp_sessions_per_port: 1024 }
    }
}

impl Limits {
    /// File descriptors one relayed TCP connection holds: its two sockets and a pipe
    /// (two ends) per direction for `splice`.
    pub const FDS_PER_CONNECTION: u64 = 6;
    /// File descriptors left for everything else (netlink, the API, metrics, UDP).
    pub const FDS_RESERVED: u64 = 1024;

    /// The caps, with the total number of connections lowered to what `nofile` open
    /// files allow.
    pub fn fitted(self, nofile: u64) -> Limits {
        let fit = nofile.saturating_sub(Self::FDS_RESERVED) / Self::FDS_PER_CONNECTION;
        let connections = self.connections.min(usize::try_from(fit).unwrap_or(usize::MAX)).max(1);
        if connections < self.connections {
            warn!(connections, nofile, "the open-files limit caps localhost NodePort connections");
        }
        Limits { connections, ..self }
    }
}

/// Raises the soft open-files limit to the hard one (the Go runtime does the same for
/// kube-proxy) and returns it.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A listener that could not be opened (the port is taken by another process, most often).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindFailure {
    /// The listener.
    pub listener: Listener,
    /// The route it would have served.
    pub route: Route,
    /// The error, as the kernel gave it.
    pub error: String,
}

/// What the relay has done, for metrics and events.
#[derive(Debug, Default)]
pub struct Stats {
    listeners: [AtomicUsize; 2],
    bind_failures: [AtomicU64; 2],
    /// Connections and UDP sessions turned away by a cap.
    pub refused: AtomicU64,
    failing: AtomicUsize,
    failures: Mutex<Vec<BindFailure>>,
}

impl Stats {
    /// Listeners open in a family.
    pub fn listeners(&self, family: IpFamily) -> usize {
        self.listeners[family.index()].load(Ordering::Relaxed)
    }

    /// Listeners that failed to open in a family, ever.
    pub fn bind_failures(&self, family: IpFamily) -> u64 {
        self.bind_failures[family.index()].load(Ordering::Relaxed)
    }

    /// Listeners whose last attempt to open failed (as of the last plan applied).
    pub fn failing(&self) -> usize {
        self.failing.load(Ordering::Relaxed)
    }

    /// The listeners that started failing since the last call, once each until they
    /// open (the daemon turns them into Warning Events on their Services).
    pub fn take_failures(&self) -> Vec<BindFailure> {
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One open listener's shared state: its picker, its caps, and its shutdown signal.
pub(crate) struct Port {
    pub(crate) listener: Listener,
    picker: Mutex<Picker>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) limits: Limits,
    per_port: Arc<Semaphore>,
    global: Arc<Semaphore>,
    pub(crate) stats: Arc<Stats>,
}

impl Port {
    fn picker(&self) -> MutexGuard<'_, Picker> {
        self.picker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint for a new connection or session.
    pub(crate) fn pick(&self, client: SocketAddr, now: Instant) -> Option<SocketAddr> {
        self.picker().pick(client, now)
    }

    /// The current endpoints.
    pub(crate) fn endpoints(&self) -> Vec<SocketAddr> {
        self.picker().route().endpoints.clone()
    }

    /// Room for one more connection under both caps.
    pub(crate) fn admit(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let port = self.per_port.clone().try_acquire_owned().ok()?;
        let global = self.global.clone().try_acquire_owned().ok()?;
        Some((port, global))
    }
}

/// Resolves once the listener is shut down (or its runtime is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// An open listener, as the runtime keeps it.
struct Open {
    port: Arc<Port>,
    stop: watch::Sender<bool>,
}

/// The relay: a handle on its runtime thread.
pub struct Relay {
    tx: mpsc::UnboundedSender<BTreeMap<Listener, Route>>,
    stats: Arc<Stats>,
}

impl Relay {
    /// Starts the relay's thread and runtime (two worker threads of its own), with the
    /// connection cap fitted to the file descriptors the process may open.
    pub fn start(limits: Limits) -> Result<Relay, Error> {
        let limits = limits.fitted(raise_nofile());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kproxy-relay")
            .enable_io()
            .enable_time()
            .build()
            .map_err(Error::Runtime)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        std::thread::Builder::new()
            .name("kproxy-relay".into())
            .spawn(move || runtime.block_on(reconcile(rx, s, limits)))
            .map_err(Error::Runtime)?;
        Ok(Relay { tx, stats })
    }

    /// Asks for exactly these listeners. Returns at once; the runtime opens, updates and
    /// closes listeners in the background.
    pub fn apply(&self, listeners: BTreeMap<Listener, Route>) -> Result<(), Error> {
        self.tx.send(listeners).map_err(|_| Error::Stopped)
    }

    /// What it has done.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// The runtime's loop: applies each wanted set of listeners (the latest one, when several
/// queued up) and retries failed ones at every apply.
async fn reconcile(mut rx: mpsc::UnboundedReceiver<BTreeMap<Listener, Route>>, stats: Arc<Stats>, limits: Limits) {
    let global = Arc::new(Semaphore::new(limits.connections));
    let mut open: BTreeMap<Listener, Open> = BTreeMap::new();
    // Listeners whose last attempt failed: a failure is reported (for an Event) when it
    // starts, not at every retry; every attempt is counted, as upstream counts them.
    let mut failing: BTreeSet<Listener> = BTreeSet::new();
    while let Some(mut wanted) = rx.recv().await {
        while let Ok(newer) = rx.try_recv() {
            wanted = newer;
        }
        open.retain(|listener, o| {
            let keep = wanted.contains_key(listener);
            if !keep {
                info!(%listener, service = %o.port.picker().route().name, "closing localhost NodePort");
                let _ = o.stop.send(true);
            }
            keep
        });
        failing.retain(|l| wanted.contains_key(l));
        for (listener, route) in wanted {
            if let Some(o) = open.get(&listener) {
                let mut picker = o.port.picker();
                if *picker.route() != route {
                    picker.update(route);
                }
                continue;
            }
            match bind(listener, route.clone(), &stats, limits, &global).await {
                Ok(o) => {
                    info!(%listener, service = %route.name, "serving localhost NodePort");
                    failing.remove(&listener);
                    open.insert(listener, o);
                }
                Err(e) => {
                    stats.bind_failures[listener.family.index()].fetch_add(1, Ordering::Relaxed);
                    if failing.insert(listener) {
                        warn!(%listener, service = %route.name, error = %e, "cannot serve localhost NodePort");
                        let failure = BindFailure { listener, route, error: e.to_string() };
                        stats.failures.lock().unwrap_or_else(|e| e.into_inner()).push(failure);
                    }
                }
            }
        }
        for family in IpFamily::ALL {
            let n = open.keys().filter(|l| l.family == family).count();
            stats.listeners[family.index()].store(n, Ordering::Relaxed);
        }
        stats.failing.store(failing.len(), Ordering::Relaxed);
    }
    for o in open.values() {
        let _ = o.stop.send(true);
    }
}

/// Opens one listener and starts serving it.
async fn bind(
    listener: Listener,
    route: Route,
    stats: &Arc<Stats>,
    limits: Limits,
    global: &Arc<Semaphore>,
) -> std::io::Result<Open> {
    let (stop, shutdown) = watch::channel(false);
    let port = Arc::new(Port {
        listener,
        picker: Mutex::new(Picker::new(route, fastrand::Rng::new())),
        shutdown,
        limits,
        per_port: Arc::new(Semaphore::new(limits.connections_per_port)),
        global: global.clone(),
        stats: stats.clone(),
    });
    match listener.protocol {
        Protocol::Udp => {
            let socket = UdpSocket::bind(listener.addr()).await?;
            tokio::spawn(crate::udp::serve(socket, port.clone()));
        }
        _ => {
            let socket = TcpListener::bind(listener.addr()).await?;
            tokio::spawn(crate::tcp::serve(socket, port.clone()));
        }
    }
    Ok(Open { port, stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_files_limit() {
        let l = Limits::default();
        assert_eq!(l.fitted(1 << 20).connections, l.connections, "plenty of files: the cap stands");
        assert_eq!(l.fitted(1024 + 6 * 100).connections, 100);
        assert_eq!(l.fitted(64).connections, 1, "never zero");
    }
}
