//! A watch stream from the API server: length-prefixed frames, each a `WatchEvent` whose
//! object is an enveloped Service (first byte even) or EndpointSlice (odd), applied or
//! deleted and computed, as `bin/src/listwatch.rs` does.

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

/// The frames of a stream: a 4-byte big-endian length, then that many bytes.
fn frames(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = stream.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let Some((frame, rest)) = rest.split_at_checked(len) else { break };
        out.push(frame);
        stream = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, stream)) = data.split_first() else { return };
    let mut events = Vec::new();
    for frame in frames(stream) {
        let Ok(event) = proto::WatchEvent::decode(frame) else { continue };
        let raw = event.object.and_then(|o| o.raw).unwrap_or_default();
        let Ok(inner) = proto::unwrap_envelope(&raw) else { continue };
        let deleted = event.r#type.as_deref() == Some("DELETED");
        if event.r#type.as_deref() == Some("ERROR") {
            let _ = proto::Status::decode(inner);
            continue;
        }
        if kind % 2 == 0 {
            let Ok(m) = proto::Service::decode(inner) else { continue };
            let svc = core::Service::from_message(m);
            events.push(if deleted { ingest::service_deleted(&svc) } else { ingest::service_applied(&svc).event });
        } else {
            let Ok(m) = proto::EndpointSlice::decode(inner) else { continue };
            let slice = discovery::EndpointSlice::from_message(m);
            events.push(if deleted { ingest::slice_deleted(&slice) } else { ingest::slice_applied(&slice).event });
        }
    }
    common::apply_and_plan(events);
});
