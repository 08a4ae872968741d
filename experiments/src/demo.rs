//! `slicenet demo`: a real multi-site deployment on one machine.
//!
//! Each site is a network namespace; links between sites carry WAN delays
//! derived from the distance between the cities the sites stand for. The
//! demo starts the slice authority and one node daemon per site, creates a
//! slice with one sliver per site and an enclave joining them, waits for
//! the guests, measures the RTT matrix from inside the guests, prints where
//! everything is, and tears it all down on exit or Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use slicenet_testbed::privilege_report;

use crate::catalog::{self, SiteInfo};
use crate::cluster::{
    cancelled, default_appliance, request_cancel, Cluster, ClusterOptions, PlacedSliver,
};
use crate::rtt::parse_ping;

/// Options of `slicenet demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Number of sites (each its own network namespace with one node).
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Scale of the WAN delays (1.0 = realistic for the sites' cities, 0 = none).
    #[arg(long, default_value_t = 1.0)]
    pub delay_scale: f64,
    /// Tear down right after the demo instead of waiting for Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
    /// Keep the working directory (daemon logs, keys, consoles) after teardown.
    #[arg(long)]
    pub keep: bool,
}

/// Wall time of each phase.
#[derive(Debug, Default)]
struct Phases {
    setup: Duration,
    boot: Duration,
    measure: Duration,
    teardown: Duration,
}

fn step(started: Instant, msg: &str) {
    eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
}

/// Measures the RTT (ms) between every pair of guests with `ping` run
/// inside the guests.
pub fn guest_rtt_matrix(cluster: &Cluster, slivers: &[PlacedSliver]) -> Vec<Vec<Option<f64>>> {
    let n = slivers.len();
    let mut matrix = vec![vec![None; n]; n];
    for (i, from) in slivers.iter().enumerate() {
        for (j, to) in slivers.iter().enumerate() {
            if i == j {
                continue;
            }
            let out = cluster
                .guest_exec(
                    from,
                    // The first ping also resolves the neighbour (ARP) across
                    // the WAN; it is not part of the measurement.
                    &format!(
                        "ping -c 1 -W 2 -q {0} >/dev/null; ping -c 3 -i 0.2 -W 2 -q {0}",
                        to.address
                    ),
                    Duration::from_secs(30),
                )
                .unwrap_or_default();
            matrix[i][j] = parse_ping(&out).and_then(|s| s.avg_ms);
        }
    }
    matrix
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

/// Waits until every guest answers a ping from the first one.
fn wait_connected(
    cluster: &Cluster,
    slivers: &[PlacedSliver],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for to in &slivers[1..] {
        loop {
            let out = cluster
                .guest_exec(
                    &slivers[0],
                    &format!("ping -c 1 -W 2 -q {}", to.address),
                    Duration::from_secs(10),
                )
                .unwrap_or_default();
            if parse_ping(&out).is_some_and(|s| s.received > 0) {
                break;
            }
            anyhow::ensure!(!cancelled(), "interrupted");
            anyhow::ensure!(
                Instant::now() < deadline,
                "guest {} never answered guest {} through the enclave",
                to.address,
                slivers[0].address
            );
        }
    }
    Ok(())
}

fn print_guide(cluster: &Cluster, slivers: &[PlacedSliver], slice: &str, sites: &[SiteInfo]) {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "slicenet".into());
    let site1 = cluster.bed.site(1).ns().name().to_string();
    println!("\nWhere everything is");
    println!(
        "  authority   {} (in namespace {site1}), data {}",
        cluster.authority_url,
        cluster.authority_dir.display()
    );
    for (node, info) in cluster.nodes.iter().zip(sites) {
        println!(
            "  node        {:<8} {:<10} namespace {:<14} data {}",
            node.name,
            info.city,
            cluster.bed.site(node.site).ns().name(),
            node.data_dir.display()
        );
    }
    for s in slivers {
        println!(
            "  sliver {:<4} on {:<8} enclave address {}",
            s.id, s.node, s.address
        );
    }
    let first = &cluster.nodes[0];
    println!("\nPoke at it (as root, in another terminal)");
    println!(
        "  {exe} node status --data-dir {}",
        first.data_dir.display()
    );
    println!(
        "  {exe} console --data-dir {} {}          # Ctrl-] detaches",
        first.data_dir.display(),
        slivers[0].id
    );
    let as_admin = format!(
        "ip netns exec {site1} env SLICENET_AUTHORITY={} SLICENET_KEY={} {exe}",
        cluster.authority_url,
        cluster.admin_key_path.display()
    );
    println!("  {as_admin} slice show {slice}");
    if let Some(remote) = slivers.last() {
        println!(
            "  {as_admin} console {slice} {} --exec 'uname -r'   # from site 1 through the node, with a console grant",
            remote.id
        );
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if let Some(missing) = privilege_report().missing() {
        anyhow::bail!(
            "the demo builds network namespaces, TAP devices and VMs, so it {missing}. \
             Run it as root, after ./scripts/setup.sh"
        );
    }
    // Ctrl-C at any point: waiting steps give up, and everything built so
    // far is torn down by the drops below.
    std::thread::spawn(|| {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                eprintln!("\ninterrupted: tearing down");
                request_cancel();
            }
        }
    });
    let started = Instant::now();
    let mut phases = Phases::default();
    let sites = catalog::sites(args.sites)?.to_vec();
    let work = tempfile::Builder::new()
        .prefix("slicenet-demo-")
        .tempdir()
        .context("creating the demo's working directory")?;
    let work_dir = work.path().to_path_buf();
    if args.keep {
        let _ = work.keep();
    }

    step(
        started,
        "phase setup: the default appliance (stock Debian cloud kernel + busybox)",
    );
    let (appliance_dir, appliance) = default_appliance(&mut |l| step(started, &format!("  {l}")))
        .context("phase setup failed")?;
    let cluster = Cluster::start(
        ClusterOptions {
            sites: sites.clone(),
            delay_scale: args.delay_scale,
            shapeable: false,
            slicenet_bin: std::env::current_exe().context("finding the slicenet executable")?,
            work_dir: work_dir.clone(),
            appliance_dirs: vec![appliance_dir],
            runtime: None,
        },
        &mut |l| step(started, l),
    )
    .context("phase setup failed")?;
    phases.setup = started.elapsed();

    let boot_started = Instant::now();
    let slice = format!("{}_demo", sites[0].name);
    step(
        started,
        &format!("phase boot: creating slice {slice} (one sliver per site) and enclave lan"),
    );
    let slivers = cluster
        .create_slice(
            &slice,
            appliance,
            "slicenet demo: one sliver per site on one enclave",
        )
        .context("phase boot failed")?;
    cluster
        .wait_ready(&slivers, Duration::from_secs(300), &mut |l| {
            step(started, l)
        })
        .context("phase boot failed")?;
    wait_connected(&cluster, &slivers, Duration::from_secs(60)).context("phase boot failed")?;
    phases.boot = boot_started.elapsed();
    step(
        started,
        &format!(
            "enclave connected: every guest reachable {:.1} s after slice create",
            phases.boot.as_secs_f64()
        ),
    );

    let measure_started = Instant::now();
    step(
        started,
        "phase measure: RTT matrix from inside the guests, across the enclave (ms)",
    );
    let names: Vec<&str> = sites.iter().map(|s| s.name).collect();
    let matrix = guest_rtt_matrix(&cluster, &slivers);
    print!("{}", format_matrix(&names, &matrix));
    phases.measure = measure_started.elapsed();
    print_guide(&cluster, &slivers, &slice, &sites);

    if !args.no_wait {
        eprintln!("\nCtrl-C tears everything down.");
        while !cancelled() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let teardown_started = Instant::now();
    step(started, "phase teardown");
    drop(cluster);
    phases.teardown = teardown_started.elapsed();
    if args.keep {
        eprintln!("kept {}", work_dir.display());
    }
    println!(
        "\nphases: setup {:.1} s, boot {:.1} s (slice create -> enclave connected), measure {:.1} s, teardown {:.1} s",
        phases.setup.as_secs_f64(),
        phases.boot.as_secs_f64(),
        phases.measure.as_secs_f64(),
        phases.teardown.as_secs_f64()
    );
    Ok(())
}
