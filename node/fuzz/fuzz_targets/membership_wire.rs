//! Node records, gossip messages and sync messages over arbitrary bytes: no
//! panic, and whatever parses re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slicenet_node::membership::fuzzing::parse_everything(data);
});
