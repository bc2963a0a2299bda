//! One receive on the nf_tables monitor socket (drift detection): which messages are
//! foreign changes to kproxy's table (`nft_client::netlink::monitor::foreign_change`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nft_client::netlink::monitor::foreign_change;

fuzz_target!(|data: &[u8]| {
    std::hint::black_box(foreign_change(data, "kproxy", &[]));
    std::hint::black_box(foreign_change(data, "kproxy", &[0, 1]));
});
