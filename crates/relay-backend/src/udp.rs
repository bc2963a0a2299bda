//! Relaying UDP: one upstream socket per client session, connected to the endpoint the
//! session picked; replies go back from the NodePort's socket. Sessions end as conntrack
//! would end the same flow ([`crate::sessions`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tracing::debug;

use crate::relay::Port;
use crate::sessions::Sessions;

/// How often idle sessions are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// A session's upstream socket, and the task that relays its replies.
struct Upstream {
    socket: Arc<UdpSocket>,
    replies: AbortHandle,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

type Table = Arc<Mutex<Sessions<Upstream>>>;

/// Relays datagrams until the port is shut down.
pub(crate) async fn serve(socket: UdpSocket, port: Arc<Port>) {
    let socket = Arc::new(socket);
    let sessions: Table = Arc::new(Mutex::new(Sessions::new(port.limits.udp_sessions_per_port)));
    let mut shutdown = port.shutdown.clone();
    let mut sweep = tokio::time::interval(SWEEP);
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, client)) => datagram(&socket, &port, &sessions, client, &buf[..n]).await,
                Err(e) => debug!(listener = %port.listener, error = %e, "receive failed"),
            },
            _ = sweep.tick() => {
                let endpoints = port.endpoints();
                let gone = lock(&sessions).expire(Instant::now(), |ep| endpoints.contains(ep));
                drop(gone);
            }
            _ = crate::relay::stopped(&mut shutdown) => break,
        }
    }
    let all = lock(&sessions).clear();
    drop(all);
}

fn lock(t: &Table) -> std::sync::MutexGuard<'_, Sessions<Upstream>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

async fn datagram(socket: &Arc<UdpSocket>, port: &Arc<Port>, sessions: &Table, client: SocketAddr, data: &[u8]) {
    let now = Instant::now();
    let existing = lock(sessions).outbound(client, now).map(|s| s.handle.socket.clone());
    let upstream = match existing {
        Some(u) => u,
        None => match open(socket, port, sessions, client, now).await {
            Some(u) => u,
            None => return,
        },
    };
    if let Err(e) = upstream.send(data).await {
        debug!(%client, error = %e, "sending to the endpoint failed");
    }
}

/// Starts a session: picks the endpoint, connects a socket to it, and relays its replies.
async fn open(
    socket: &Arc<UdpSocket>,
    port: &Arc<Port>,
    sessions: &Table,
    client: SocketAddr,
    now: Instant,
) -> Option<Arc<UdpSocket>> {
    let endpoint = port.pick(client, now)?;
    let any = match endpoint.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let upstream = match UdpSocket::bind((any, 0)).await {
        Ok(u) => u,
        Err(e) => {
            debug!(%endpoint, error = %e, "no socket for a UDP session");
            return None;
        }
    };
    if let Err(e) = upstream.connect(endpoint).await {
        debug!(%endpoint, error = %e, "connecting a UDP session failed");
        return None;
    }
    let upstream = Arc::new(upstream);
    let replies = tokio::spawn(replies(upstream.clone(), socket.clone(), sessions.clone(), client)).abort_handle();
    let handle = Upstream { socket: upstream.clone(), replies };
    if lock(sessions).insert(client, endpoint, handle, now).is_err() {
        port.stats.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(upstream)
}

/// Sends the endpoint's datagrams back to the client from the NodePort's address.
async fn replies(upstream: Arc<UdpSocket>, socket: Arc<UdpSocket>, sessions: Table, client: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match upstream.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP errors (the endpoint's port is closed) surface here: keep the session
            // until it times out, as conntrack would.
            Err(_) => continue,
        };
        lock(&sessions).reply(client, Instant::now());
        if let Err(e) = socket.send_to(&buf[..n], client).await {
            debug!(%client, error = %e, "sending a reply to the client failed");
        }
    }
}
