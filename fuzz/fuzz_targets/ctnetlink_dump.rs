//! One receive of a ctnetlink dump (the conntrack table, read for stale-UDP cleanup and
//! `kproxy trace --conntrack`), read by `bin/src/conntrack.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../../bin/src/conntrack.rs"]
mod conntrack;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut flows = Vec::new();
    std::hint::black_box(conntrack::read_dump(data, &mut flows));
    for flow in &flows {
        std::hint::black_box((flow.dnated(), flow.service_protocol()));
    }
});
