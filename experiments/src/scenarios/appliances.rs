//! The appliances the scenarios deploy, as recipes for the default
//! appliance builder (stock Debian kernel + busybox + the programs of a few
//! Debian packages and their shared libraries).
//!
//! Inside these guests busybox's shell runs its own applets in preference
//! to programs on PATH, so scenario scripts call the packaged programs by
//! full path (`/usr/bin/ping` is iputils, `ping` is busybox's).

use std::path::PathBuf;

use anyhow::Context;
use slicenet_authority::model::Appliance;
use slicenet_vmm::appliance::build::{build_default, BuildOptions};

/// A named appliance recipe.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// Appliance name (what tickets refer to).
    pub name: &'static str,
    /// Debian packages whose programs go into the image.
    pub packages: &'static [&'static str],
    /// What it is for, for people.
    pub purpose: &'static str,
}

/// The NOC probe: ping (iputils, for `-D` timestamps and mdev), traceroute,
/// HTTP (curl) and DNS (drill from ldnsutils: dnsutils' dig would pull
/// libxml2 and 31 MB of ICU data into the image) checks, plus dnsmasq so
/// the same image serves as the measured target (busybox httpd + dnsmasq).
pub const PROBE: Recipe = Recipe {
    name: "probe",
    packages: &[
        "iputils-ping",
        "traceroute",
        "curl",
        "ldnsutils",
        "dnsmasq-base",
    ],
    purpose: "NOC probe and target: ping, traceroute, curl, drill, dnsmasq",
};

/// The security scanner: OpenBSD netcat's `-z` connect scan over port
/// ranges (nmap does not pack: its Lua module lua-lpeg is a library package
/// the appliance builder does not recognise as one) and iputils ping.
pub const SCANNER: Recipe = Recipe {
    name: "scanner",
    packages: &["netcat-openbsd", "iputils-ping"],
    purpose: "port scanner: nc -z connect scans, ping",
};

/// The protected service: the default appliance (busybox httpd and nc
/// listeners are all it needs).
pub const SERVICE: Recipe = Recipe {
    name: "default",
    packages: &[],
    purpose: "service with open TCP ports (busybox httpd, nc listeners)",
};

/// The researcher's experiment image: iperf3 and iputils ping.
pub const IPERF: Recipe = Recipe {
    name: "iperf",
    packages: &["iperf3", "iputils-ping"],
    purpose: "throughput and latency experiments: iperf3, ping",
};

/// A built appliance, ready for a slice.
#[derive(Debug, Clone)]
pub struct Built {
    /// The appliance directory.
    pub dir: PathBuf,
    /// Its parent (what nodes search).
    pub search_dir: PathBuf,
    /// What tickets name (name and content hash).
    pub appliance: Appliance,
    /// Size of the initramfs in bytes.
    pub initrd_bytes: u64,
}

/// Builds a recipe (or finds it in the cache); `progress` gets one line per step.
pub fn build(recipe: Recipe, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Built> {
    let packages: Vec<String> = recipe.packages.iter().map(|p| p.to_string()).collect();
    build_named(recipe.name, &packages, recipe.purpose, progress)
}

/// Builds the default appliance named `name` with extra Debian `packages`
/// (or finds it in the cache).
pub fn build_named(
    name: &str,
    packages: &[String],
    purpose: &str,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Built> {
    let mut options = BuildOptions::new(name);
    options.packages = packages.to_vec();
    let out = build_default(&options, progress)
        .with_context(|| format!("building the {name} appliance ({purpose})"))?;
    let hash = slicenet_node::daemon::appliances::appliance_hash(&out.dir)
        .with_context(|| format!("hashing {}", out.dir.display()))?;
    let initrd_bytes = std::fs::metadata(out.dir.join("initrd.img"))
        .map(|m| m.len())
        .unwrap_or(0);
    let search_dir = out
        .dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| out.dir.clone());
    Ok(Built {
        dir: out.dir,
        search_dir,
        appliance: Appliance {
            name: name.to_string(),
            hash,
        },
        initrd_bytes,
    })
}
