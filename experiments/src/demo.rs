//! `slicenet demo`: a local multi-site testbed on one machine.
//!
//! Each site is a network namespace; links between sites carry WAN-like
//! delays derived from the distance between the cities the sites stand
//! for. The demo grows with the system: today it builds the sites and
//! measures the underlay RTT matrix.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use slicenet_testbed::{privilege_report, LinkShape, Testbed};

use crate::catalog::{self, SiteInfo};
use crate::rtt::parse_ping;

/// Options of `slicenet demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Number of sites (each its own network namespace).
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Scale of the WAN delays (1.0 = realistic for the sites' cities).
    #[arg(long, default_value_t = 1.0)]
    pub delay_scale: f64,
    /// Tear down right after the demo instead of waiting for Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Builds the testbed with one shaped link per pair of sites.
pub fn build_testbed(sites: &[SiteInfo], delay_scale: f64) -> anyhow::Result<Testbed> {
    let mut builder = Testbed::builder(sites.len())
        .labels(sites.iter().map(|s| s.name))
        .shapeable();
    for (i, a) in sites.iter().enumerate() {
        for (j, b) in sites.iter().enumerate().skip(i + 1) {
            let delay = catalog::one_way_delay_ms(a, b, delay_scale);
            builder = builder.link_shape(i + 1, j + 1, LinkShape::delay(delay));
        }
    }
    builder.build().context("building the site namespaces")
}

/// Measures the RTT (ms) from every site to every other with `ping`.
pub fn underlay_rtt_matrix(bed: &Testbed) -> anyhow::Result<Vec<Vec<Option<f64>>>> {
    let n = bed.sites().len();
    let mut matrix = vec![vec![None; n]; n];
    for a in bed.sites() {
        for b in bed.sites() {
            if a.index() == b.index() {
                continue;
            }
            let out = a
                .command("ping")
                .args(["-c", "3", "-i", "0.2", "-W", "2", "-q"])
                .arg(b.addr().to_string())
                .output()
                .context("running ping inside a site")?;
            let summary = parse_ping(&String::from_utf8_lossy(&out.stdout));
            matrix[a.index() - 1][b.index() - 1] = summary.and_then(|s| s.avg_ms);
        }
    }
    Ok(matrix)
}

/// Formats an RTT matrix as a table with site names on both axes.
pub fn format_matrix(names: &[&str], matrix: &[Vec<Option<f64>>]) -> String {
    let mut out = format!("{:>8}", "from\\to");
    for n in names {
        out.push_str(&format!("{n:>9}"));
    }
    out.push('\n');
    for (i, row) in matrix.iter().enumerate() {
        out.push_str(&format!("{:>8}", names[i]));
        for (j, cell) in row.iter().enumerate() {
            let text = match cell {
                _ if i == j => "-".to_string(),
                Some(ms) => format!("{ms:.1}"),
                None => "lost".to_string(),
            };
            out.push_str(&format!("{text:>9}"));
        }
        out.push('\n');
    }
    out
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if let Some(missing) = privilege_report().missing() {
        anyhow::bail!(
            "the demo builds network namespaces and TAP devices, so it {missing}. \
             Run it as root: sudo ./target/release/slicenet demo"
        );
    }
    let sites = catalog::sites(args.sites)?;
    let started = Instant::now();
    step(&format!(
        "building {} sites as network namespaces",
        sites.len()
    ));
    let bed = build_testbed(sites, args.delay_scale)?;
    for (site, info) in bed.sites().iter().zip(sites) {
        eprintln!(
            "    {:<5} {:<10} region {:<5} namespace {:<14} underlay {}",
            info.name,
            info.city,
            info.region,
            site.ns().name(),
            site.addr()
        );
    }
    step("measuring the underlay RTT matrix (ms)");
    let names: Vec<&str> = sites.iter().map(|s| s.name).collect();
    let matrix = underlay_rtt_matrix(&bed)?;
    print!("{}", format_matrix(&names, &matrix));
    eprintln!("testbed ready in {:.1} s", started.elapsed().as_secs_f64());
    if !args.no_wait {
        eprintln!(
            "poke at it: ip netns exec {} ping {}   (Ctrl-C tears everything down)",
            bed.site(1).ns().name(),
            bed.site(2.min(bed.sites().len())).addr()
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(tokio::signal::ctrl_c())?;
    }
    step("tearing down");
    drop(bed);
    Ok(())
}
