//! Every wire parser of the data plane (Ethernet, IPv4, IPv6, TCP, UDP,
//! VXLAN, virtio_net_hdr, the inner VXLAN datagram) over arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slicenet_overlay::fuzzing::wire_parsers(data);
});
