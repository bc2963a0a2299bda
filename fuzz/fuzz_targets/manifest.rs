//! Manifest files (`kproxy sync --manifests`, `plan`, `trace`): YAML documents and
//! `List`s, each object ingested and computed, as `bin/src/manifests.rs` does.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use proxy_core::ingest;
use proxy_core::manifest::{self, Object};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let events = manifest::parse(text).into_iter().filter_map(|object| match object.ok()? {
        Object::Service(s) => Some(ingest::service_applied(&s).event),
        Object::EndpointSlice(s) => Some(ingest::slice_applied(&s).event),
        _ => None,
    });
    common::apply_and_plan(events.collect::<Vec<_>>());
});
