//! The IPVS backend's kernel parts besides IPVS itself (which `bin/tests/ipvs.rs` covers in
//! the VM): the nftables table, written over netlink and listed back by `nft`, and the
//! dummy interface with its addresses. Each test runs in its own network namespace. This
//! machine's kernel has no dummy driver, so that test is ignored here and runs in the
//! Debian VM (`testbed/vm/run.sh`).

#[path = "../../nft-backend/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::*;
use ipvs_backend::link::Dummy;
use ipvs_backend::{Config, IpvsBackend, filter};
use nft_client::Client;

#[test]
fn the_nftables_side_lists_back_as_planned() {
    in_netns("the_nftables_side_lists_back_as_planned", || {
        let desired = fixture();
        let text = IpvsBackend::new(Config::default()).plan(&desired);
        let path = std::env::temp_dir().join(format!("kproxy-ipvs-plan-{}.nft", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        sh(&format!("nft -f {}", path.display()));
        std::fs::remove_file(&path).ok();
        let from_text = sh("nft list ruleset");
        sh("nft delete table ip kproxy; nft delete table ip6 kproxy");

        let node_ports = ipvs_backend::render::render(&desired, "rr", &Default::default()).node_ports;
        let rulesets = filter::tables(&desired, &node_ports);
        let refs: Vec<_> = rulesets.iter().map(|(f, r)| (*f, r)).collect();
        Client::new().replace_tables("kproxy", &refs).expect("the kernel takes the table");
        let from_netlink = sh("nft list ruleset");
        assert_eq!(normalize(&from_netlink), normalize(&from_text));
        // What the table holds for the fixture: the no-endpoint verdicts, a firewall, and
        // masquerade sets, and none of nft mode's DNAT.
        for expected in [
            "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
            "ip daddr @nodeport-ips meta l4proto . th dport @nodeports-masquerade jump mark-for-masquerade",
            "ct state new ip daddr @service-ips jump service-ips-filter",
            "ip saddr . ip daddr @hairpin-endpoints jump mark-for-masquerade",
            "chain firewall-",
        ] {
            assert!(from_netlink.contains(expected), "{expected:?} missing:\n{from_netlink}");
        }
        assert!(!from_netlink.contains("dnat"), "{from_netlink}");
        // Writing it again replaces it whole, atomically.
        Client::new().replace_tables("kproxy", &refs).expect("again");
        assert_eq!(sh("nft list ruleset"), from_netlink);
    });
}

#[test]
#[ignore = "needs the dummy driver: runs in the Debian VM (testbed/vm/run.sh)"]
fn the_dummy_interface_holds_exactly_the_bound_addresses() {
    in_netns("the_dummy_interface_holds_exactly_the_bound_addresses", || {
        let mut dummy = Dummy::open("kproxy-ipvs0").unwrap();
        assert_eq!(dummy.index().unwrap(), None);
        let index = dummy.ensure().unwrap();
        assert_eq!(dummy.ensure().unwrap(), index, "ensure is idempotent");
        let ips: Vec<IpAddr> =
            ["10.96.0.10", "10.96.0.11", "fd00:10:96::a"].iter().map(|s| s.parse().unwrap()).collect();
        for ip in &ips {
            dummy.add(index, *ip).unwrap();
        }
        dummy.add(index, ips[0]).unwrap(); // already there: fine
        assert_eq!(dummy.addresses(index).unwrap(), ips.iter().copied().collect::<BTreeSet<_>>());
        let listed = sh("ip -o addr show dev kproxy-ipvs0");
        assert!(listed.contains("10.96.0.10/32") && listed.contains("fd00:10:96::a/128"), "{listed}");
        // Bound addresses are local: the kernel answers them (a ping to itself).
        sh("ping -c1 -W2 10.96.0.11 >/dev/null");

        dummy.remove(index, ips[1]).unwrap();
        dummy.remove(index, ips[1]).unwrap(); // already gone: fine
        assert_eq!(dummy.addresses(index).unwrap(), [ips[0], ips[2]].into_iter().collect::<BTreeSet<_>>());
        dummy.delete().unwrap();
        assert_eq!(dummy.index().unwrap(), None);
        dummy.delete().unwrap();
    });
}

#[test]
fn a_kernel_without_ipvs_gets_a_clear_error() {
    in_netns("a_kernel_without_ipvs_gets_a_clear_error", || {
        let has_ipvs = std::path::Path::new("/proc/net/ip_vs").exists();
        match ipvs_backend::ipvs::Ipvs::open() {
            Ok(_) => assert!(has_ipvs, "IPVS resolved, yet /proc/net/ip_vs is missing"),
            Err(e) => {
                assert!(!has_ipvs, "{e}");
                assert!(matches!(e, ipvs_backend::Error::NoIpvs), "{e:?}");
                assert!(e.to_string().contains("load the ip_vs module"), "{e}");
            }
        }
    });
}
