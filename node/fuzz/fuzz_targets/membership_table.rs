//! Arbitrary bytes offered to a membership table as a record and as a suspicion.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slicenet_node::membership::fuzzing::offer_to_table(data);
});
