//! Slice authority benchmark: a simulated PlanetLab-scale registry (≥ 1,000
//! nodes at ≥ 300 sites), then
//! - time to place a 300-sliver slice with region constraints (target < 1 s):
//!   the placement algorithm alone, a dry run through the API, and a real
//!   creation (placement + 300 signed tickets + durable commit);
//! - API read throughput (target ≥ 1,000 reads/s);
//! - slice create and delete throughput (target ≥ 100 creations/s).
//!
//! Everything runs on 127.0.0.1 in one process (client signing shares the
//! machine's cores with the server, so the figures are a lower bound), with
//! the authority's default durability (`synchronous = full`; `--synchronous normal`
//! shows what an fsync per commit costs).
//! Run: `cargo run --release -p slicenet-experiments --bin authority_bench`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use slicenet_authority::api::*;
use slicenet_authority::client::Client;
use slicenet_authority::config::Config;
use slicenet_authority::keys::{self, PublicKey};
use slicenet_authority::model::Resources;
use slicenet_authority::placement;
use slicenet_authority::server::Authority;
use slicenet_experiments::catalog::CATALOG;

#[derive(Debug, Parser)]
#[command(about = "Benchmark the slice authority at PlanetLab scale")]
struct Args {
    /// Sites in the simulated registry.
    #[arg(long, default_value_t = 320)]
    sites: usize,
    /// Nodes, spread over the sites.
    #[arg(long, default_value_t = 1040)]
    nodes: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Concurrent client tasks for throughput.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Repetitions of the 300-sliver placement.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// SQLite durability: "full" (survives power loss) or "normal" (survives process crashes).
    #[arg(long, default_value = "full")]
    synchronous: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn big_request() -> PlacementRequest {
    let group = |count, region: &str| PlacementGroup {
        count,
        regions: vec![region.into()],
        ..Default::default()
    };
    PlacementRequest {
        groups: vec![
            group(100, "eu"),
            group(100, "na"),
            group(60, "asia"),
            group(20, "sa"),
            group(20, "oc"),
        ],
        resources: Some(Resources {
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 2,
            bandwidth_mbps: 10,
        }),
        anti_affinity: AntiAffinity::Node,
        appliance: None,
    }
}

fn new_slice(name: String, placement: PlacementRequest, dry_run: bool) -> NewSlice {
    NewSlice {
        name,
        description: String::new(),
        lease_secs: Some(3600),
        members: vec![],
        placement: Some(placement),
        dry_run,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile_dir()?;
    let authority = Authority::open(
        &dir,
        Some(Config {
            max_body_bytes: 1 << 20,
            synchronous: args.synchronous.clone(),
            ..Config::default()
        }),
    )
    .await?;
    let admin_key = keys::read_secret_key(&authority.admin_key_path())?;
    let running = authority.serve("127.0.0.1:0".parse()?).await?;
    let admin = Client::new(&running.url(), admin_key);

    // The registry: sites around the catalog's cities, nodes spread evenly.
    let t = Instant::now();
    let site_names: Vec<String> = (0..args.sites)
        .map(|i| format!("{}{}", CATALOG[i % CATALOG.len()].name, i / CATALOG.len()))
        .collect();
    run_concurrently(&admin, args.clients, site_names.len(), |admin, i| {
        let c = &CATALOG[i % CATALOG.len()];
        let jitter = (i / CATALOG.len()) as f64 * 0.05;
        let site = NewSite {
            name: site_names[i].clone(),
            region: c.region.into(),
            country: c.country.into(),
            latitude: (c.latitude + jitter).clamp(-90.0, 90.0),
            longitude: (c.longitude + jitter).clamp(-180.0, 180.0),
            description: String::new(),
        };
        async move { admin.create_site(&site).await.map(drop) }
    })
    .await?;
    run_concurrently(&admin, args.clients, args.nodes, |admin, i| {
        let node = NewNode {
            name: format!(
                "{}-n{}",
                site_names[i % site_names.len()],
                i / site_names.len()
            ),
            site: site_names[i % site_names.len()].clone(),
            public_key: PublicKey::of(&keys::generate()),
            capacity: Resources {
                vcpus: 8,
                memory_mib: 16384,
                disk_gib: 200,
                bandwidth_mbps: 1000,
            },
        };
        async move { admin.create_node(&node).await.map(drop) }
    })
    .await?;
    eprintln!(
        "registry: {} sites, {} nodes, built through the API in {:.1} s",
        args.sites,
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    // 300 slivers across five regions, one per node.
    let nodes = admin.nodes(None).await?;
    let views: Vec<placement::NodeView> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| placement::NodeView {
            id: i as i64,
            name: n.name.clone(),
            site: n.site.clone(),
            region: n.region.clone(),
            country: n.country.clone(),
            latitude: 0.0,
            longitude: 0.0,
            free: n.capacity.minus(&n.allocated),
            state: n.state,
        })
        .collect();
    let mut algo = Vec::new();
    let mut dry = Vec::new();
    let mut real = Vec::new();
    for round in 0..args.rounds {
        let t = Instant::now();
        let placed = placement::place(&big_request(), &views, &HashSet::new())
            .map_err(|e| anyhow::anyhow!(e.message))?;
        algo.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(placed.len() == 300);
        let t = Instant::now();
        admin
            .create_slice(&new_slice(format!("ams0_dry{round}"), big_request(), true))
            .await?;
        dry.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let reply = admin
            .create_slice(&new_slice(format!("ams0_big{round}"), big_request(), false))
            .await?;
        real.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(reply.slice.map(|s| s.slivers.len()) == Some(300));
        admin.delete_slice(&format!("ams0_big{round}")).await?;
    }

    // Reads: a slice with a few slivers, fetched whole, by many clients.
    admin
        .create_slice(&new_slice(
            "ams0_read".into(),
            PlacementRequest {
                groups: vec![PlacementGroup {
                    count: 5,
                    ..Default::default()
                }],
                ..Default::default()
            },
            false,
        ))
        .await?;
    let reads = throughput(
        &admin,
        args.clients,
        Duration::from_secs(args.seconds),
        200_000,
        |admin, _| async move { admin.slice("ams0_read").await.map(drop) },
    )
    .await?;
    let node_names: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.name.clone()).collect());
    let node_reads = throughput(
        &admin,
        args.clients,
        Duration::from_secs(args.seconds),
        200_000,
        move |admin, i| {
            let name = node_names[i as usize % node_names.len()].clone();
            async move { admin.node(&name).await.map(drop) }
        },
    )
    .await?;

    // Create + delete pairs: one sliver each, durable commits.
    let creates = throughput(
        &admin,
        args.clients,
        Duration::from_secs(args.seconds),
        20_000,
        |admin, i| async move {
            let name = format!("ams0_cd{i}");
            admin
                .create_slice(&new_slice(
                    name.clone(),
                    PlacementRequest {
                        groups: vec![PlacementGroup {
                            count: 1,
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    false,
                ))
                .await?;
            admin.delete_slice(&name).await.map(drop)
        },
    )
    .await?;

    let ms = |s: f64| format!("{:.1} ms", s * 1000.0);
    println!();
    println!(
        "slicenet authority benchmark: {} sites, {} nodes, {} client tasks, loopback HTTP, synchronous={}",
        args.sites, args.nodes, args.clients, args.synchronous
    );
    println!(
        "{:<52} {:>14} {:>12} {:>12}",
        "figure", "measured", "target", "ratio"
    );
    let row = |name: &str, measured: String, target: String, ratio: f64| {
        println!("{name:<52} {measured:>14} {target:>12} {ratio:>11.1}x");
    };
    row(
        "place 300 slivers, 5 regions, anti-affinity (algorithm)",
        ms(median(algo.clone())),
        "< 1000 ms".into(),
        1.0 / median(algo),
    );
    row(
        "place 300 slivers via API dry run",
        ms(median(dry.clone())),
        "< 1000 ms".into(),
        1.0 / median(dry),
    );
    row(
        "create 300-sliver slice (placement+tickets+commit)",
        ms(median(real.clone())),
        "< 1000 ms".into(),
        1.0 / median(real),
    );
    row(
        "reads/s: GET slice (5 slivers)",
        format!("{reads:.0}/s"),
        ">= 1000/s".into(),
        reads / 1000.0,
    );
    row(
        "reads/s: GET node",
        format!("{node_reads:.0}/s"),
        ">= 1000/s".into(),
        node_reads / 1000.0,
    );
    row(
        "slice creations/s (each also deleted)",
        format!("{creates:.0}/s"),
        ">= 100/s".into(),
        creates / 100.0,
    );
    println!("(ratio = how many times better than the target; > 1 meets it)");
    running.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("slicenet-authority-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs `count` operations, `clients` at a time, failing on the first error.
async fn run_concurrently<F, Fut>(
    admin: &Client,
    clients: usize,
    count: usize,
    op: F,
) -> anyhow::Result<()>
where
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), slicenet_authority::client::ClientError>>
        + Send
        + 'static,
{
    let mut i = 0;
    while i < count {
        let batch: Vec<_> = (i..(i + clients).min(count))
            .map(|j| tokio::spawn(op(admin.clone(), j)))
            .collect();
        for task in batch {
            task.await??;
        }
        i += clients;
    }
    Ok(())
}

/// Operations per second with `clients` concurrent tasks, bounded in time and count.
async fn throughput<F, Fut>(
    admin: &Client,
    clients: usize,
    duration: Duration,
    max_ops: u64,
    op: F,
) -> anyhow::Result<f64>
where
    F: Fn(Client, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), slicenet_authority::client::ClientError>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, next, admin) = (op.clone(), next.clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while start.elapsed() < duration {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_ops {
                    break;
                }
                op(admin.clone(), i).await?;
                done += 1;
            }
            Ok::<u64, slicenet_authority::client::ClientError>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
