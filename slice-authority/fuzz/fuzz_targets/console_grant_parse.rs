//! Fuzzes console grant decoding and the console handshake parsers:
//! envelope checks, body parsing, canonical re-encoding, signature and
//! proof verification must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slicenet_authority::grant::fuzz_parse(data);
});
