//! Membership benchmark: convergence and failure-detection time for N nodes.
//!
//! What it runs: N complete membership nodes (libp2p swarms with noise, yamux,
//! identify, ping, Kademlia, gossipsub and the sync protocol, real ed25519
//! records) in this one process, over libp2p's in-memory transport. Nothing is
//! simulated except the wire: every node does all the work a real node does.
//!
//! What that means on a 2-core machine: N nodes share 2 cores, so every figure
//! includes N-fold CPU contention that a real deployment (one node per host)
//! does not have. Each row therefore also reports the CPU the whole process
//! burned and the CPU per node; wall-clock time here is an upper bound for a
//! real overlay on a low-latency network.
//!
//! Phases per N:
//! - convergence: all N nodes start at once, each given only one bootstrap
//!   address (one of the first three nodes); done when every node has seen
//!   N-1 peers come up;
//! - crash detection: one node's runtime is dropped (its connections reset, as
//!   when a process dies); time until every other node reports it down;
//! - hang detection: another node's only worker thread is blocked (it keeps its
//!   connections but answers nothing, as a frozen host or a partition would);
//!   time until every other node reports it down.
//!
//! Run: `cargo bench -p slicenet-experiments --bench membership_bench -- [--nodes 10,100,1000] [--json]`

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slicenet_node::membership::{
    Capacity, GeoLocation, Membership, MembershipConfig, MembershipEvent, MembershipHandle, NodeId,
    NodeIdentity, NodeInfo, PeerAddr, Timing, WgPublicKey,
};

/// Targets from issue 5.
const CONVERGENCE_TARGET: Duration = Duration::from_secs(10);
const DETECTION_TARGET: Duration = Duration::from_secs(3);

fn info(i: usize) -> NodeInfo {
    NodeInfo {
        site: format!("site-{i}"),
        region: ["eu", "na", "asia"][i % 3].into(),
        location: GeoLocation::from_degrees((i % 180) as f64 - 89.0, (i % 360) as f64 - 179.0)
            .expect("on the globe"),
        capacity: Capacity {
            vcpus: 16,
            memory_mib: 65536,
            disk_gib: 500,
        },
        wireguard_key: WgPublicKey::from_bytes({
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            k[31] = 1;
            k
        }),
        tunnel_addr: Ipv4Addr::new(198, 19, 255 - (i / 250) as u8, (i % 250) as u8 + 1),
        underlay: vec![format!("198.18.{}.{}:51820", i / 250, i % 250 + 1)
            .parse()
            .expect("valid")],
        software_version: "bench".into(),
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass it.
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One node with its own runtime, so it can be crashed or frozen independently.
struct Node {
    id: NodeId,
    addr: PeerAddr,
    handle: MembershipHandle,
    live: Arc<AtomicUsize>,
    /// Instant at which this node saw the current victim go down.
    down_seen: Arc<std::sync::Mutex<Vec<(NodeId, Instant)>>>,
    membership: Option<Membership>,
    runtime: Option<NodeRuntime>,
}

/// Where a node's task runs.
enum NodeRuntime {
    Shared(Arc<tokio::runtime::Runtime>),
    Own(tokio::runtime::Runtime),
}

impl NodeRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        match self {
            Self::Shared(rt) => rt.handle().clone(),
            Self::Own(rt) => rt.handle().clone(),
        }
    }
}

async fn start_node(
    i: usize,
    bootstrap: Vec<PeerAddr>,
    timing: Timing,
) -> (Membership, tokio::sync::mpsc::Receiver<MembershipEvent>) {
    let mut config = MembershipConfig::new(NodeIdentity::generate(), info(i));
    config.timing = timing;
    config.listen = vec![PeerAddr::Memory(0)];
    config.bootstrap = bootstrap;
    Membership::start(config).await.expect("node starts")
}

/// Counts live peers from the event stream (and drains it, so nothing is dropped).
fn spawn_counter(
    rt: &tokio::runtime::Handle,
    mut events: tokio::sync::mpsc::Receiver<MembershipEvent>,
    live: Arc<AtomicUsize>,
    down_seen: Arc<std::sync::Mutex<Vec<(NodeId, Instant)>>>,
) {
    rt.spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                MembershipEvent::PeerUp(_) => {
                    live.fetch_add(1, Ordering::Relaxed);
                }
                MembershipEvent::PeerDown { node, .. } => {
                    live.fetch_sub(1, Ordering::Relaxed);
                    down_seen.lock().unwrap().push((node, Instant::now()));
                }
                MembershipEvent::PeerUpdated(_) => {}
            }
        }
    });
}

struct Row {
    nodes: usize,
    converge: Option<Duration>,
    converge_cpu: f64,
    crash_median: Option<Duration>,
    crash_max: Option<Duration>,
    hang_median: Option<Duration>,
    hang_max: Option<Duration>,
    idle_cpu_per_node_pct: f64,
    rss_mib: f64,
    records_refused: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

/// Waits until every observer (all nodes but `victim`) saw `victim` go down, or `limit`.
fn detection(
    nodes: &[Node],
    victim: NodeId,
    since: Instant,
    limit: Duration,
) -> (Option<Duration>, Option<Duration>) {
    let deadline = Instant::now() + limit;
    loop {
        let mut times = Vec::new();
        for n in nodes
            .iter()
            .filter(|n| n.id != victim && n.runtime.is_some())
        {
            let seen = n.down_seen.lock().unwrap();
            if let Some((_, t)) = seen.iter().find(|(id, _)| *id == victim) {
                times.push(t.duration_since(since));
            }
        }
        let observers = nodes
            .iter()
            .filter(|n| n.id != victim && n.runtime.is_some())
            .count();
        if times.len() == observers || Instant::now() > deadline {
            times.sort();
            if times.len() < observers {
                eprintln!(
                    "  only {}/{observers} nodes detected the failure within {limit:?}",
                    times.len()
                );
                return (percentile(&times, 0.5), None);
            }
            return (percentile(&times, 0.5), times.last().copied());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(n: usize, timing: &Timing) -> Row {
    eprintln!("membership bench: {n} nodes");
    // Observers share one runtime (2 workers, as many as cores); the two victims get a
    // runtime of their own each, so one can be crashed and the other frozen alone.
    let shared = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let victims = [n - 1, n.saturating_sub(2)];
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let bootstraps: usize = n.min(3);
    for i in 0..n {
        let rt = if victims.contains(&i) {
            NodeRuntime::Own(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("victim-{i}"))
                    .enable_all()
                    .build()
                    .expect("runtime"),
            )
        } else {
            NodeRuntime::Shared(shared.clone())
        };
        let boot = if i == 0 {
            vec![]
        } else {
            vec![nodes[i % bootstraps.min(i)].addr]
        };
        let (membership, events) = rt.handle().block_on(start_node(i, boot, timing.clone()));
        let live = Arc::new(AtomicUsize::new(0));
        let down_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        spawn_counter(&rt.handle(), events, live.clone(), down_seen.clone());
        nodes.push(Node {
            id: membership.node_id(),
            addr: membership.listen_addrs()[0],
            handle: membership.handle(),
            live,
            down_seen,
            membership: Some(membership),
            runtime: Some(rt),
        });
    }
    let started = t0.elapsed();
    eprintln!("  all {n} started in {started:.2?}");
    let limit = Duration::from_secs(120);
    let converge = loop {
        let done = nodes
            .iter()
            .filter(|x| x.live.load(Ordering::Relaxed) == n - 1)
            .count();
        if done == n {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            eprintln!("  not converged after {limit:?}: {done}/{n} nodes complete");
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let converge_cpu = cpu_seconds() - cpu0;
    eprintln!("  converged in {converge:.2?} using {converge_cpu:.1} CPU-s");
    let (mut connections, mut accepted, mut refutations, mut suspicions, mut deferred) =
        (0, 0, 0, 0, 0);
    for node in &nodes {
        let rt = node.runtime.as_ref().expect("running").handle();
        if let Ok(status) = rt.block_on(node.handle.status()) {
            connections += status.connected_peers;
            accepted += status.counters.records_accepted;
            refutations += status.counters.refutations_sent;
            suspicions += status.counters.suspicions_sent;
            deferred += status.counters.verdicts_deferred;
            if node.live.load(Ordering::Relaxed) != n - 1 {
                eprintln!(
                    "  incomplete node: {} live by events, {} by table; {:?}",
                    node.live.load(Ordering::Relaxed),
                    status.live_members,
                    status.counters
                );
            }
        }
    }
    eprintln!(
        "  per node: {:.1} connections, {:.1} records accepted; total suspicions {suspicions}, refutations {refutations}, deferred verdicts {deferred}",
        connections as f64 / n as f64,
        accepted as f64 / n as f64
    );

    // Steady state: CPU per node per second while nothing changes.
    std::thread::sleep(Duration::from_secs(1));
    let (c1, w1) = (cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let idle_cpu_per_node_pct =
        (cpu_seconds() - c1) / w1.elapsed().as_secs_f64() / n as f64 * 100.0;
    let rss = rss_mib();

    // Crash: drop the victim's runtime (its connections reset).
    let crash_victim = n - 1;
    let victim_id = nodes[crash_victim].id;
    let crash_at = Instant::now();
    if let Some(NodeRuntime::Own(rt)) = nodes[crash_victim].runtime.take() {
        rt.shutdown_background();
    }
    // Its task is gone already: this only drops the owner, nothing is announced.
    drop(nodes[crash_victim].membership.take());
    let (crash_median, crash_max) = detection(&nodes, victim_id, crash_at, Duration::from_secs(30));
    eprintln!("  crash detected: median {crash_median:.2?}, last {crash_max:.2?}");

    // Hang: block the victim's only worker thread; its connections stay open.
    let (hang_median, hang_max) = if n >= 3 {
        let hang_victim = n - 2;
        let victim_id = nodes[hang_victim].id;
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let hang_at = Instant::now();
        nodes[hang_victim]
            .runtime
            .as_ref()
            .expect("running")
            .handle()
            .spawn(async move {
                // Freezes this node's whole runtime until released.
                let _ = release_rx.recv_timeout(Duration::from_secs(60));
            });
        let result = detection(&nodes, victim_id, hang_at, Duration::from_secs(30));
        let _ = release_tx.send(());
        eprintln!(
            "  hang detected: median {:.2?}, last {:.2?}",
            result.0, result.1
        );
        result
    } else {
        (None, None)
    };

    let mut records_refused = 0;
    for node in nodes.iter().filter(|x| x.runtime.is_some()) {
        let rt = node.runtime.as_ref().expect("running").handle();
        if let Ok(Ok(status)) = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), node.handle.status()).await
        }) {
            let c = status.counters;
            records_refused += c.dropped_total() - c.dropped_stale;
        }
    }
    // Tear down: drop memberships inside their runtimes, then the runtimes.
    for mut node in nodes {
        if let (Some(rt), Some(m)) = (node.runtime.take(), node.membership.take()) {
            rt.handle().block_on(async { drop(m) });
            if let NodeRuntime::Own(rt) = rt {
                rt.shutdown_background();
            }
        }
    }
    if let Ok(rt) = Arc::try_unwrap(shared) {
        rt.shutdown_background();
    }
    Row {
        nodes: n,
        converge,
        converge_cpu,
        crash_median,
        crash_max,
        hang_median,
        hang_max,
        idle_cpu_per_node_pct,
        rss_mib: rss,
        records_refused,
    }
}

fn fmt(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64()))
}

fn ratio(d: Option<Duration>, target: Duration) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.2}x", d.as_secs_f64() / target.as_secs_f64())
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.split(',')
                .map(|x| x.parse().expect("--nodes takes N,N,..."))
                .collect()
        })
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let ping_ms: Option<u64> = args
        .iter()
        .position(|a| a == "--ping-ms")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse().expect("--ping-ms takes milliseconds"));
    let mut timing = Timing::default();
    if let Some(ms) = ping_ms {
        timing.ping_interval = Duration::from_millis(ms);
        timing.ping_timeout = Duration::from_millis(ms.max(1000));
    }
    let rows: Vec<Row> = sizes.into_iter().map(|n| run(n, &timing)).collect();
    if json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({
                    "nodes": r.nodes,
                    "converge_s": r.converge.map(|d| d.as_secs_f64()),
                    "converge_cpu_s": r.converge_cpu,
                    "crash_detect_median_s": r.crash_median.map(|d| d.as_secs_f64()),
                    "crash_detect_max_s": r.crash_max.map(|d| d.as_secs_f64()),
                    "hang_detect_median_s": r.hang_median.map(|d| d.as_secs_f64()),
                    "hang_detect_max_s": r.hang_max.map(|d| d.as_secs_f64()),
                    "idle_cpu_per_node_pct": r.idle_cpu_per_node_pct,
                    "rss_mib": r.rss_mib,
                    "records_refused": r.records_refused,
                })
            );
        }
        return;
    }
    println!();
    println!(
        "membership: N in-process nodes on {} cores (memory transport, full libp2p stack)",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("times in seconds; 'vs target' = measured / target (<1 meets it); crash/hang = until the LAST node saw it");
    println!(
        "{:>6} | {:>9} {:>9} {:>10} {:>9} | {:>8} {:>8} {:>9} | {:>8} {:>8} {:>9} | {:>10} {:>8} {:>7}",
        "nodes", "converge", "vs 10s", "CPU-s", "CPU/node", "crash p50", "crash", "vs 3s", "hang p50", "hang", "vs 3s", "idle %CPU/n", "RSS MiB", "refused"
    );
    for r in &rows {
        println!(
            "{:>6} | {:>9} {:>9} {:>10.1} {:>9.3} | {:>8} {:>8} {:>9} | {:>8} {:>8} {:>9} | {:>10.3} {:>8.0} {:>7}",
            r.nodes,
            fmt(r.converge),
            ratio(r.converge, CONVERGENCE_TARGET),
            r.converge_cpu,
            r.converge_cpu / r.nodes as f64,
            fmt(r.crash_median),
            fmt(r.crash_max),
            ratio(r.crash_max, DETECTION_TARGET),
            fmt(r.hang_median),
            fmt(r.hang_max),
            ratio(r.hang_max, DETECTION_TARGET),
            r.idle_cpu_per_node_pct,
            r.rss_mib,
            r.records_refused,
        );
    }
}
