//! The receive path of a node with an established WireGuard session:
//! raw datagrams, encrypted inner packets, well-formed VXLAN around
//! arbitrary frames (through the switch to a port), and local port frames
//! with arbitrary offload headers.
#![no_main]
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use slicenet_overlay::fuzzing::ReceiveHarness;

static HARNESS: Mutex<Option<ReceiveHarness>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut h = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    h.get_or_insert_with(ReceiveHarness::new).fuzz(data);
});
