//! The relay with real sockets on loopback: an endpoint on `127.0.0.1`, a relay listener
//! on a free port, and the per-port connection cap (over it, a connection is closed at
//! once and counted).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use proxy_core::{IpFamily, Protocol, ServicePortName};
use relay_backend::plan::{Pick, Route};
use relay_backend::{Limits, Listener, Relay};

/// An echo server on a free loopback port, one thread per connection.
fn echo_server() -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn echoes(conn: &mut TcpStream, text: &[u8]) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut back = vec![0u8; text.len()];
    conn.write_all(text).is_ok() && conn.read_exact(&mut back).is_ok() && back == text
}

#[test]
fn a_listener_relays_and_caps_its_connections() {
    let endpoint = echo_server();
    let relay = Relay::start(Limits { connections_per_port: 2, ..Limits::default() }).unwrap();
    let listener = Listener { family: IpFamily::V4, protocol: Protocol::Tcp, port: free_port() };
    let route = Route {
        name: ServicePortName::new("default", "echo", "p", Protocol::Tcp),
        endpoints: vec![endpoint],
        pick: Pick::Random,
    };
    relay.apply(BTreeMap::from([(listener, route)])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut first = loop {
        if let Ok(c) = TcpStream::connect(listener.addr()) {
            break c;
        }
        assert!(Instant::now() < deadline, "the relay did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(echoes(&mut first, b"one"));
    // A bulk transfer through splice, both ways, checked byte for byte.
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = first.try_clone().unwrap();
    let sent = big.clone();
    let send = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut back = vec![0u8; big.len()];
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    first.read_exact(&mut back).unwrap();
    send.join().unwrap();
    assert!(back == big, "the relayed bytes differ");

    let mut second = TcpStream::connect(listener.addr()).unwrap();
    assert!(echoes(&mut second, b"two"));
    // The third is over the cap of 2: accepted, then closed without reaching the endpoint.
    let mut third = TcpStream::connect(listener.addr()).unwrap();
    assert!(!echoes(&mut third, b"three"), "a connection over the cap was relayed");
    assert_eq!(relay.stats().refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Closing one makes room again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fourth = TcpStream::connect(listener.addr()).unwrap();
        if echoes(&mut fourth, b"four") {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a connection closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(echoes(&mut second, b"still two"));
    // No listeners wanted: the listener closes.
    relay.apply(BTreeMap::new()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(listener.addr()).is_ok() {
        assert!(Instant::now() < deadline, "the listener stayed open");
        std::thread::sleep(Duration::from_millis(20));
    }
}
