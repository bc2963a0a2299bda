//! Object names: upstream kube-proxy's scheme, so admins can grep the same names.
//!
//! A service port's base name is `HASH-ns/svc/proto/port`, an endpoint's is
//! `HASH-ns/svc/proto/port__ip/port` (IPv6 colons become dots), where HASH is the first 8
//! characters of base32(sha256(name)). Names longer than 240 characters are cut to 237 plus
//! `...`; the hash is of the whole name, so cut names stay distinct. 240 leaves room for
//! the longest prefix (`external-`) within nftables' 256-byte name limit.

use std::net::SocketAddr;

use data_encoding::BASE32;
use proxy_core::ServicePortName;
use sha2::{Digest, Sha256};

/// The mark bit that asks `masquerading` to masquerade a packet (upstream's default,
/// `--masquerade-bit` 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

// Upstream's fixed chain and set names, written by both backends.
/// The chain the NAT hooks jump to: dispatch to the Services.
pub const SERVICES: &str = "services";
/// The chain that masquerades marked connections.
pub const MASQUERADING: &str = "masquerading";
/// The chain that marks a connection for masquerade.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// The chain that rejects.
pub const REJECT_CHAIN: &str = "reject-chain";
/// The set of the node's addresses that take NodePort traffic.
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// The verdict map of Service frontends (address . protocol . port).
pub const SERVICE_IPS: &str = "service-ips";
/// The verdict map that drops or rejects frontends without endpoints.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// The verdict map that drops or rejects NodePorts without endpoints.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// The verdict map of load-balancer frontends with `loadBalancerSourceRanges`.
pub const FIREWALL_IPS: &str = "firewall-ips";
/// The set of endpoint . endpoint pairs: a pod reaching itself is masqueraded.
pub const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";

/// The longest base name kept whole.
const MAX_BASE: usize = 240;

fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let encoded = BASE32.encode(&digest);
    let mut out = format!("{}-{name}", &encoded[..8]);
    if out.len() > MAX_BASE {
        let mut cut = MAX_BASE - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

fn service_base(name: &ServicePortName) -> String {
    format!("{}/{}/{}/{}", name.service.namespace, name.service.name, name.protocol, name.port)
}

/// The name of a service port's `loadBalancerSourceRanges` chain: `firewall-HASH-…`.
pub fn firewall(name: &ServicePortName) -> String {
    format!("firewall-{}", service_port(name))
}

/// The base name of a service port's chains: `HASH-ns/svc/proto/port`.
pub fn service_port(name: &ServicePortName) -> String {
    hash_and_truncate(&service_base(name))
}

/// The base name of an endpoint's chain and affinity set: `HASH-ns/svc/proto/port__ip/port`.
pub fn endpoint(name: &ServicePortName, endpoint: SocketAddr) -> String {
    let ip = endpoint.ip().to_string().replace(':', ".");
    hash_and_truncate(&format!("{}__{ip}/{}", service_base(name), endpoint.port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_core::Protocol;

    fn port(ns: &str, svc: &str, proto: Protocol, port: &str) -> ServicePortName {
        ServicePortName::new(ns, svc, port, proto)
    }

    /// Names from upstream's tests (pkg/proxy/nftables/proxier_test.go).
    #[test]
    fn upstream_names() {
        let p80 = port("ns1", "svc1", Protocol::Tcp, "p80");
        assert_eq!(service_port(&p80), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(endpoint(&p80, "10.180.0.1:80".parse().unwrap()), "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
        assert_eq!(service_port(&port("ns2", "svc2", Protocol::Tcp, "p80")), "42NFTM6N-ns2/svc2/tcp/p80");
        assert_eq!(
            endpoint(&port("ns5", "svc5", Protocol::Tcp, "p80"), "10.180.0.3:80".parse().unwrap()),
            "GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
        );
        // IPv6 colons become dots (upstream's IPv6 NodePort test).
        assert_eq!(
            endpoint(&p80, "[fd00:10:180::1]:80".parse().unwrap()),
            "ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80"
        );
        assert_eq!(
            endpoint(&p80, "[fd00:10:180::2:1]:80".parse().unwrap()),
            "2CRNCTTE-ns1/svc1/tcp/p80__fd00.10.180..2.1/80"
        );
    }

    #[test]
    fn long_names_are_truncated_but_distinct() {
        let long = port(
            "very-long-namespace-name-abcdefghijklmnopqrstuvwxyz0123456789xx",
            "very-long-service-name-why-would-you-even-do-this-i-mean-really",
            Protocol::Sctp,
            "port-443-providing-the-hypertext-transmission-protocol-with-tls",
        );
        let base = service_port(&long);
        assert!(base.starts_with("KR6NACJP-") && base.len() == 205);
        // Upstream's long-name cases pass raw strings; parsed addresses print a lone zero
        // group as `0` (as Go does), so the visible tails differ but the rule is the same.
        let a = endpoint(&long, "[1234:5678:9abc:def0::abcd:1234:5678]:443".parse().unwrap());
        let b = endpoint(&long, "[1234:5678:9abc:def0::abcd:1234:8765]:443".parse().unwrap());
        assert_eq!((a.len(), b.len()), (240, 240));
        assert!(a.ends_with("...") && b.ends_with("..."));
        assert_ne!(a[..8], b[..8], "the hash covers the whole name");
        assert_eq!(a[8..], b[8..], "the visible part is the same");
    }
}
