//! Slice-to-connected benchmark (issue 5): the time from `slice create` to
//! every sliver's guest answering ping through the enclave, for one
//! sliver at each of 3 sites, split into ticket delivery, VM start, guest
//! boot and enclave connectivity. Target: connected < 2 s + guest boot.
//!
//! Run as root after `cargo build --release --bin slicenet --bin slice_bench`:
//! `target/release/slice_bench [--rounds 3] [--sites 3] [--delay-scale 0]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use slicenet_experiments::catalog;
use slicenet_experiments::cluster::{default_appliance, Cluster, ClusterOptions, PlacedSliver};
use slicenet_experiments::rtt::parse_ping;
use slicenet_node::daemon::slivers::SliverPhase;

#[derive(Debug, Parser)]
struct Args {
    /// Slices created (and deleted) one after another.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sites (one sliver each).
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// WAN delay scale between sites (0 = plain veth links).
    #[arg(long, default_value_t = 0.0)]
    delay_scale: f64,
    /// The slicenet executable (default: beside this one).
    #[arg(long)]
    slicenet: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
struct Round {
    tickets_ms: f64,
    vms_started_ms: f64,
    boot_s: f64,
    connected_s: f64,
}

fn phase_of(cluster: &Cluster, s: &PlacedSliver) -> Option<SliverPhase> {
    cluster.sliver_status(s).map(|st| st.phase)
}

fn measure_round(
    cluster: &Cluster,
    round: usize,
    appliance: slicenet_authority::model::Appliance,
) -> anyhow::Result<Round> {
    let name = format!("{}_bench{round}", cluster.sites[0].name);
    let t0 = Instant::now();
    let slivers = cluster.create_slice(&name, appliance, "slice_bench")?;
    let mut r = Round::default();
    // Tickets delivered = the node reports the sliver (booting) at all.
    while slivers.iter().any(|s| phase_of(cluster, s).is_none()) {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "tickets not delivered in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    r.tickets_ms = t0.elapsed().as_secs_f64() * 1e3;
    while slivers
        .iter()
        .any(|s| cluster.sliver_status(s).and_then(|st| st.pid).is_none())
    {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "VMs not started in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    r.vms_started_ms = t0.elapsed().as_secs_f64() * 1e3;
    let boots = cluster.wait_ready(&slivers, Duration::from_secs(300), &mut |_| {})?;
    r.boot_s = boots.iter().cloned().fold(0.0, f64::max);
    for to in &slivers[1..] {
        loop {
            let out = cluster
                .guest_exec(
                    &slivers[0],
                    &format!("ping -c 1 -W 1 -q {}", to.address),
                    Duration::from_secs(10),
                )
                .unwrap_or_default();
            if parse_ping(&out).is_some_and(|p| p.received > 0) {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(330),
                "guests never connected"
            );
        }
    }
    r.connected_s = t0.elapsed().as_secs_f64();
    let admin = cluster.admin();
    cluster.run(async move { admin.delete_slice(&name).await })?;
    // Wait until every node stopped its sliver.
    while slivers.iter().any(|s| phase_of(cluster, s).is_some()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let slicenet = match args.slicenet {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("slicenet"),
    };
    let (appliance_dir, appliance) = default_appliance(&mut |l| eprintln!("  {l}"))?;
    let work = tempfile::tempdir()?;
    let cluster = Cluster::start(
        ClusterOptions {
            sites: catalog::sites(args.sites)?.to_vec(),
            delay_scale: args.delay_scale,
            shapeable: false,
            slicenet_bin: slicenet,
            work_dir: work.path().to_path_buf(),
            appliance_dirs: vec![appliance_dir],
            runtime: None,
        },
        &mut |l| eprintln!("{l}"),
    )?;
    let mut rounds = Vec::new();
    for i in 0..args.rounds {
        let r = measure_round(&cluster, i, appliance.clone())?;
        eprintln!("round {i}: {r:?}");
        rounds.push(r);
    }
    drop(cluster);
    println!(
        "\nslice create -> connected guests, {} slivers at {} sites, {} rounds (QEMU runtime on this host)",
        args.sites, args.sites, args.rounds
    );
    println!(
        "{:>5} {:>12} {:>14} {:>12} {:>14} {:>22}",
        "round",
        "tickets ms",
        "VMs started ms",
        "boot s (max)",
        "connected s",
        "connected - boot s"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:>5} {:>12.1} {:>14.1} {:>12.2} {:>14.2} {:>22.2}",
            i,
            r.tickets_ms,
            r.vms_started_ms,
            r.boot_s,
            r.connected_s,
            r.connected_s - r.boot_s
        );
    }
    let mut overhead: Vec<f64> = rounds.iter().map(|r| r.connected_s - r.boot_s).collect();
    overhead.sort_by(f64::total_cmp);
    let median = overhead[overhead.len() / 2];
    println!(
        "median connected - boot: {median:.2} s; target < 2 s: {:.2}x of the budget",
        median / 2.0
    );
    Ok(())
}
