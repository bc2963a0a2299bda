//! Drift: a change to our table by anyone else is noticed at once (not at the next
//! periodic resync), our own transactions are not mistaken for it, and a full sync
//! repairs it; also while notifications are paused around our own syncs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nft_backend::NftBackend;
use nft_client::netlink::monitor::Monitor;
use proxy_core::Backend;

#[test]
fn foreign_changes_are_detected_and_repaired() {
    in_netns("foreign_changes_are_detected_and_repaired", || {
        let desired = fixture();
        let mut backend = NftBackend::new("kproxy");
        let mut monitor = Monitor::open("kproxy").expect("monitor");
        backend.sync_full(&desired).expect("sync");
        let own = [backend.client().port_id().unwrap()];
        assert!(!monitor.wait(Duration::from_millis(300), &own).unwrap(), "our own sync counted as drift");
        let good = sh("nft list ruleset");

        // Someone else's table is none of our business.
        sh("nft add table ip other && nft add chain ip other c");
        assert!(!monitor.wait(Duration::from_millis(300), &own).unwrap(), "another table counted as drift");

        for (what, cmd) in [
            ("flush ruleset", "nft flush ruleset"),
            ("deleted element", "nft delete element ip kproxy cluster-ips '{ 172.30.0.41 }'"),
            ("flushed chain", "nft flush chain ip6 kproxy services"),
        ] {
            sh(cmd);
            let start = Instant::now();
            assert!(monitor.wait(Duration::from_secs(1), &own).unwrap(), "{what}: not detected");
            backend.sync_full(&desired).expect("repair");
            assert!(start.elapsed() < Duration::from_secs(1), "{what}: repair took {:?}", start.elapsed());
            let repaired = sh("nft list ruleset");
            assert!(repaired.contains(&good), "{what}: not repaired");
            assert!(!monitor.wait(Duration::from_millis(200), &own).unwrap(), "{what}: the repair counted as drift");
        }
    });
}

#[test]
fn a_foreign_commit_while_paused_shows_in_the_generation() {
    in_netns("a_foreign_commit_while_paused_shows_in_the_generation", || {
        let desired = fixture();
        let mut backend = NftBackend::new("kproxy");
        let mut monitor = Monitor::open("kproxy").expect("monitor");
        let quiet = monitor.quiet().expect("quiet");
        let own = [backend.connect().expect("connect")];

        // Our own syncs while paused: no notifications at all, and no drift.
        let paused = quiet.pause(&mut backend).expect("pause");
        backend.sync_full(&desired).expect("sync");
        backend.sync_full(&desired).expect("resync");
        assert!(quiet.resume(&mut backend, paused), "our own commits counted as drift");
        assert!(!monitor.wait(Duration::from_millis(300), &own).unwrap(), "notified while paused");

        // Someone flushes our chain during our sync: the monitor cannot see it, the
        // generation does.
        let paused = quiet.pause(&mut backend).expect("pause");
        sh("nft flush chain ip kproxy services");
        backend.sync_full(&desired).expect("sync");
        assert!(!quiet.resume(&mut backend, paused), "a foreign commit during the pause went unnoticed");
        assert!(!monitor.wait(Duration::from_millis(300), &own).unwrap());

        // Resumed: foreign changes are notified again.
        sh("nft flush chain ip kproxy services");
        assert!(monitor.wait(Duration::from_secs(1), &own).unwrap(), "not resubscribed");
    });
}
