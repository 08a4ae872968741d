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

/// The probe appliance's extra Debian packages.
pub const PROBE_PACKAGES: &[&str] = &["iperf3", "iputils-ping", "curl", "dnsutils", "traceroute"];

/// The default appliance from the per-user cache (built on first use, then cached).
pub fn default_appliance(test: &str) -> Option<(Appliance, PathBuf)> {
    build(test, BuildOptions::new("default"))
}

/// The probe appliance (default recipe plus [`PROBE_PACKAGES`]).
pub fn probe_appliance(test: &str) -> Option<(Appliance, PathBuf)> {
    let mut options = BuildOptions::new("probe");
    options.packages = PROBE_PACKAGES.iter().map(|p| p.to_string()).collect();
    build(test, options)
}

fn build(test: &str, options: BuildOptions) -> Option<(Appliance, PathBuf)> {
    let cache = default_cache_dir();
    match build_default(&options, &mut |line| eprintln!("[appliance] {line}")) {
        Ok(out) => Some((
            Appliance::load(&out.dir).expect("fresh build verifies"),
            cache,
        )),
        Err(e) => {
            skip(
                test,
                &format!("cannot build appliance {:?}: {e}", options.name),
            );
            None
        }
    }
}
