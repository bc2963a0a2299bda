//! Relaying TCP: accept on the loopback NodePort, connect to the picked endpoint, splice
//! both ways until both sides close, either fails, or the listener goes away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use crate::relay::Port;

/// How long connecting to an endpoint may take (upstream's relay: 5 s).
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until the port is shut down; each one is relayed on a task of its
/// own, within the port's and the relay's connection caps (over a cap, the connection is
/// closed at once and counted).
pub(crate) async fn serve(listener: TcpListener, port: Arc<Port>) {
    let mut shutdown = port.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = crate::relay::stopped(&mut shutdown) => return,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or a transient error: back off briefly.
                debug!(listener = %port.listener, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(permits) = port.admit() else {
            port.stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(endpoint) = port.pick(peer, Instant::now()) else { continue };
        let shutdown = port.shutdown.clone();
        tokio::spawn(async move {
            let _permits = permits;
            relay(client, endpoint, shutdown).await;
        });
    }
}

async fn relay(client: TcpStream, endpoint: SocketAddr, mut shutdown: watch::Receiver<bool>) {
    let upstream = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(endpoint)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!(%endpoint, error = %e, "connecting to the endpoint failed"),
        Err(_) => return debug!(%endpoint, "connecting to the endpoint timed out"),
    };
    // The relay must not add Nagle's delay to what the client already sent.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        r = crate::splice::both_ways(&client, &upstream) => {
            if let Err(e) = r {
                debug!(%endpoint, error = %e, "relayed connection ended with an error");
            }
        }
        _ = crate::relay::stopped(&mut shutdown) => {}
    }
}
