//! Address parsing with upstream's leniency.
//!
//! Kubernetes once accepted IPv4 octets with leading zeros (`172.30.0.041`), and objects
//! written then still exist. Go's old parser read them as decimal; upstream kube-proxy
//! keeps doing so through `netutils.ParseIPSloppy` (pinned by its `TestBadIPs`). Rust's
//! parser rejects them, so we normalise them the same way Go does.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Parses an IP address, accepting IPv4 octets with leading zeros as decimal.
///
/// Returns `None` for anything else that is not an address.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    parse_v4_leading_zeros(s).map(IpAddr::V4)
}

/// Parses a CIDR (`addr/len`), accepting IPv4 octets with leading zeros, and returns the
/// network with its host bits as written (like Go's `ParseCIDR` returns the network).
///
/// The result is truncated to its network address: `10.0.0.1/8` becomes `10.0.0.0/8`.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (addr, len) = s.trim().split_once('/')?;
    let ip = parse_ip_sloppy(addr)?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    IpNet::new(ip, len).ok().map(|n| n.trunc())
}

fn parse_v4_leading_zeros(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_ips() {
        let cases: &[(&str, Option<&str>)] = &[
            ("172.30.0.41", Some("172.30.0.41")),
            ("172.30.0.041", Some("172.30.0.41")),
            ("010.001.000.001", Some("10.1.0.1")),
            (" 10.0.0.1 ", Some("10.0.0.1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("2001:db8::0001", Some("2001:db8::1")),
            ("256.0.0.1", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("1.2.3.0004", None),
            ("", None),
            ("foo", None),
            ("1..2.3", None),
        ];
        for (input, want) in cases {
            let got = parse_ip_sloppy(input).map(|ip| ip.to_string());
            assert_eq!(got.as_deref(), *want, "input {input:?}");
        }
    }

    #[test]
    fn sloppy_cidrs() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.0.0.1/8", Some("10.0.0.0/8")),
            ("203.0.113.0/025", Some("203.0.113.0/25")),
            ("192.168.000.000/16", Some("192.168.0.0/16")),
            ("2001:db8::/64", Some("2001:db8::/64")),
            ("10.0.0.0/33", None),
            ("10.0.0.0/", None),
            ("10.0.0.0", None),
            ("10.0.0.0/-1", None),
        ];
        for (input, want) in cases {
            let got = parse_cidr_sloppy(input).map(|n| n.to_string());
            assert_eq!(got.as_deref(), *want, "input {input:?}");
        }
    }
}
