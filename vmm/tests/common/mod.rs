//! Shared helpers of the vmm integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use slicenet_vmm::appliance::build::{build_default, default_cache_dir, BuildOptions};
use slicenet_vmm::appliance::Appliance;

/// Prints `SKIPPED: test: reason` and returns true, or panics when the environment demands
/// that privileged/virtualization tests run (SLICENET_REQUIRE_PRIVILEGED=1, as in CI).
pub fn skip(test: &str, reason: &str) -> bool {
    if std::env::var("SLICENET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: required to run but cannot: {reason}");
    }
    println!("SKIPPED: {test}: {reason}");
    true
}

/// The default appliance from the per-user cache (built on first use, then cached).
pub fn default_appliance(test: &str) -> Option<(Appliance, PathBuf)> {
    let options = BuildOptions::new("default");
    let cache = default_cache_dir();
    match build_default(&options, &mut |line| eprintln!("[appliance] {line}")) {
        Ok(out) => Some((
            Appliance::load(&out.dir).expect("fresh build verifies"),
            cache,
        )),
        Err(e) => {
            skip(test, &format!("cannot build the default appliance: {e}"));
            None
        }
    }
}
