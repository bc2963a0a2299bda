//! The daemon's HTTP servers, as kube-proxy's: the proxier health server (`/healthz`,
//! `/livez`, see [`health`]), the metrics server (`/metrics`, `/healthz`, `/proxyMode`,
//! `/configz`, see [`metrics`]) and the HealthCheckNodePorts ([`service_health`]).
//!
//! Listeners bind as Go's `net.Listen("tcp", addr)`: a wildcard address (`0.0.0.0` or
//! `::`) is one dual-stack socket, so the default `0.0.0.0:10256` answers over IPv6 too.
//! A port that cannot be bound is retried every 5 s with a log line, as upstream does,
//! unless `--bind-address-hard-fail` makes it fatal.

pub mod health;
pub mod metrics;
pub mod relay_metrics;
pub mod service_health;

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Result;
use socket2::{Domain, Socket, Type};
use tracing::{info, warn};

/// How long a failed bind waits before it tries again (upstream's 5 s).
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Binds `addr` for TCP. A wildcard address gets one IPv6 socket that takes IPv4 too
/// (falling back to IPv4 where IPv6 is off); `v6only` keeps an IPv6 socket to IPv6, for a
/// server that has an IPv4 twin (HealthCheckNodePorts are per family).
pub fn listen(addr: SocketAddr, v6only: bool) -> io::Result<TcpListener> {
    let dual_stack = addr.ip().is_unspecified() && !v6only;
    if dual_stack {
        let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port());
        match bind(any6, false) {
            Ok(l) => return Ok(l),
            // No IPv6 in this kernel or namespace: IPv4 alone, as Go does.
            Err(e) if addr.is_ipv6() => return Err(e),
            Err(_) => {}
        }
    }
    bind(addr, v6only)
}

fn bind(addr: SocketAddr, v6only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6only)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A request handler.
pub type Handler = Box<dyn Fn(tiny_http::Request) + Send + 'static>;

/// Serves `handler` on `addr` ("IP:port") on a thread of its own. A port that cannot be
/// bound is fatal with `hard_fail`, else retried every 5 s with a warning.
pub fn serve(what: &'static str, addr: &str, hard_fail: bool, handler: Handler) -> Result<()> {
    let addr: SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("{what}: invalid address {addr:?}: {e}"))?;
    let first = listen(addr, false);
    if let Err(e) = &first
        && hard_fail
    {
        anyhow::bail!("{what} server failed: listening on {addr}: {e}");
    }
    std::thread::Builder::new().name(what.into()).spawn(move || {
        let mut attempt = first;
        let listener = loop {
            match attempt {
                Ok(l) => break l,
                Err(e) => {
                    warn!("{what} server failed: listening on {addr}: {e}; retrying in {BIND_RETRY:?}");
                    std::thread::sleep(BIND_RETRY);
                    attempt = listen(addr, false);
                }
            }
        };
        match tiny_http::Server::from_listener(listener, None) {
            Ok(server) => {
                info!("{what} server listening on {addr}");
                for request in server.incoming_requests() {
                    handler(request);
                }
            }
            Err(e) => warn!("{what} server failed on {addr}: {e}"),
        }
    })?;
    Ok(())
}

/// Sends a response with kube-proxy's headers (`X-Content-Type-Options: nosniff` on
/// every answer, as its servers do), plus `extra`.
pub fn respond(request: tiny_http::Request, code: u16, body: String, content_type: &str, extra: &[(&str, String)]) {
    let header = |name: &str, value: &str| tiny_http::Header::from_bytes(name, value).expect("valid header");
    let mut response = tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", content_type))
        .with_header(header("X-Content-Type-Options", "nosniff"));
    for (name, value) in extra {
        response.add_header(header(name, value));
    }
    let _ = request.respond(response);
}

/// Go's 404 for a path nobody serves.
pub fn not_found(request: tiny_http::Request) {
    respond(request, 404, "404 page not found\n".into(), "text/plain; charset=utf-8", &[]);
}

/// A time as Go's `time.Time` marshals to JSON: RFC 3339 with nanoseconds, trailing zeros
/// trimmed, in UTC.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_takes_both_families() {
        let listener = listen("0.0.0.0:0".parse().unwrap(), false).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        // Where the sandbox has IPv6 loopback, it answers there too.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            assert!(std::net::TcpStream::connect(("::1", port)).is_ok());
        }
        let v4 = listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(v4.local_addr().unwrap().is_ipv4());
    }

    #[test]
    fn times_print_as_go_marshals_them() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_120);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.12Z");
    }
}
