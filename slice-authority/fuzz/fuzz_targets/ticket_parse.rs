//! Fuzzes ticket decoding: envelope checks, body parsing, canonical
//! re-encoding and signature verification must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    slicenet_authority::ticket::fuzz_parse(data);
});
