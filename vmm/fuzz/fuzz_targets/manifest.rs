#![no_main]
//! Fuzz target: see `slicenet_vmm::fuzzing::manifest`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| slicenet_vmm::fuzzing::manifest(data));
