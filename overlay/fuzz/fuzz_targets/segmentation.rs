//! TSO segmentation and checksum completion over an arbitrary
//! virtio_net_hdr (first 10 bytes) and frame.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slicenet_overlay::fuzzing::segmentation(data);
});
