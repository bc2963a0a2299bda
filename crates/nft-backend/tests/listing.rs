//! What we write over netlink is exactly what `nft` writes for our text, and `nft list
//! ruleset` (Debian's nft 1.0.6) prints it back: the listing of a fixture cluster applied
//! through our netlink batch equals the listing of the same rules loaded with `nft -f`
//! from `kproxy plan`'s text, and matches the checked-in golden listing.

mod common;

use common::*;
use nft_backend::NftBackend;
use proxy_core::Backend;

fn list() -> String {
    sh("nft list ruleset")
}

#[test]
fn netlink_matches_nft_text() {
    in_netns("netlink_matches_nft_text", || {
        let desired = fixture();
        let mut backend = NftBackend::new("kproxy");
        let text = backend.plan(&desired);
        let path = std::env::temp_dir().join(format!("kproxy-plan-{}.nft", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        sh(&format!("nft -f {}", path.display()));
        let from_text = list();
        std::fs::remove_file(&path).ok();
        sh("nft delete table ip kproxy; nft delete table ip6 kproxy");

        backend.sync_full(&desired).expect("sync");
        let from_netlink = list();
        // The same objects; the kernel lists chains in creation order, which differs.
        assert_eq!(normalize(&from_netlink), normalize(&from_text), "netlink listing differs from nft's own");
        // Listing as JSON works too (nft's JSON decoder covers every expression).
        sh("nft -j list ruleset >/dev/null");

        let golden = include_str!("fixtures/cluster.nft");
        if std::env::var_os("KPROXY_BLESS").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cluster.nft"), &from_netlink).unwrap();
        } else {
            assert_eq!(
                from_netlink, golden,
                "listing differs from tests/fixtures/cluster.nft (KPROXY_BLESS=1 to update)"
            );
        }
    });
}
