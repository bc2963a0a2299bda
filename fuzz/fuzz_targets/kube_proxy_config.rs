//! kube-proxy's configuration file (`--config`): YAML or JSON, decoded with upstream's
//! defaults by `bin/src/config/v1alpha1.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

// `v1alpha1` finds `duration` as its sibling (`super::duration`), as in bin/src/config/.
#[allow(dead_code)]
#[path = "../../bin/src/config/duration.rs"]
mod duration;
#[allow(dead_code)]
#[path = "../../bin/src/config/v1alpha1.rs"]
mod v1alpha1;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = v1alpha1::decode(text);
    }
});
