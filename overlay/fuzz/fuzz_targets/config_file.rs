//! The daemon's configuration parser over arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ =
            slicenet_overlay::config::DaemonConfig::parse(text, std::path::Path::new("fuzz.toml"));
    }
});
