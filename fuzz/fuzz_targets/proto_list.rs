//! A list response from the API server (`application/vnd.kubernetes.protobuf`): the
//! envelope, the list, each item decoded as a Service (first byte even) or an
//! EndpointSlice (odd), ingested and computed, as `bin/src/listwatch.rs` does.

#![no_main]

mod common;
#[allow(dead_code)]
#[path = "../../bin/src/proto.rs"]
mod proto;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::Wire;
use proxy_core::ingest;

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else { return };
    let Ok(list) = proto::unwrap_envelope(body) else { return };
    let Ok((_, items)) = proto::list_parts(list) else { return };
    let mut events = Vec::new();
    for item in items {
        let ingested = if kind % 2 == 0 {
            let Ok(m) = proto::Service::decode(item) else { continue };
            ingest::service_applied(&core::Service::from_message(m))
        } else {
            let Ok(m) = proto::EndpointSlice::decode(item) else { continue };
            ingest::slice_applied(&discovery::EndpointSlice::from_message(m))
        };
        events.push(ingested.event);
    }
    common::apply_and_plan(events);
});
