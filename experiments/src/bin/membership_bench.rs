//! Membership benchmark: convergence and failure-detection time for N nodes,
//! side by side with HashiCorp Serf.
//!
//! What runs: N complete slicenet membership nodes (libp2p swarms with noise,
//! yamux, identify, ping, Kademlia, gossipsub and the sync protocol, real
//! ed25519 records, default timing) in this one process over libp2p's
//! in-memory transport. Nothing is simulated but the wire: every node does the
//! work a real node does, except where the verification mode says otherwise:
//! - `shared`: the nodes share one [`SignatureCache`], so each distinct record
//!   is verified once in the process instead of once per node. Real nodes each
//!   verify every record, but on their own CPU: with N hosts that is N checks
//!   per host in parallel, not N² on two cores. This mode is the one whose
//!   wall-clock times speak for a real overlay;
//! - `per-node`: every node verifies every record itself, as real nodes do, all
//!   on this machine's cores (convergence only): the CPU figure a single host
//!   pays is this run's CPU divided by N.
//!
//! On a machine with few cores every figure still includes N-fold contention a
//! real deployment does not have; each row also reports CPU seconds.
//!
//! Phases per N (shared mode):
//! - convergence: all N nodes start at once, each given one bootstrap address
//!   (one of the first three nodes); done when every node has seen N-1 peers
//!   come up, confirmed against every node's table;
//! - crash: one node's runtime is dropped (its connections reset, as when a
//!   process dies); time until every other node reports it down;
//! - freeze: another node's only worker thread is blocked (it keeps its
//!   connections but answers nothing, as a hung host or a cut path would); time
//!   until every other node reports it down.
//!
//! Serf (Debian's `serf` agent, default LAN profile) runs the same phases with
//! N agents on 127.0.0.1 (crash = SIGKILL, freeze = SIGSTOP), observed through
//! each agent's RPC event stream; its CPU is read from /proc.
//!
//! Run: `cargo run --release -p slicenet-experiments --bin membership_bench -- [--nodes 10,100,1000] [--verify both] [--serf-max 100] [--runs 1] [--json]`

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use slicenet_node::membership::{
    Capacity, GeoLocation, Membership, MembershipConfig, MembershipEvent, MembershipHandle, NodeId,
    NodeIdentity, NodeInfo, PeerAddr, SignatureCache, WgPublicKey,
};

/// A thousand nodes in one process allocate from many threads at once; glibc's
/// allocator spent a sixth of the run in `_int_malloc` here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long after convergence the steady-state (idle) CPU is measured: after the
/// transient connections made while converging closed (10 s) and after the fast
/// exchange rounds that follow the last news ended (12 s).
const SETTLE_BEFORE_IDLE: Duration = Duration::from_secs(15);
/// Targets from issue 5.
const CONVERGENCE_TARGET: Duration = Duration::from_secs(10);
const DETECTION_TARGET: Duration = Duration::from_secs(3);
/// How long a failure may take to be seen by everyone before the phase gives up.
const DETECTION_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Verify {
    /// One signature cache for the whole process.
    Shared,
    /// Every node verifies every record (convergence only).
    PerNode,
    /// Both, one after the other.
    Both,
}

#[derive(Debug, Parser)]
#[command(about = "Membership convergence and failure detection for N in-process nodes, vs Serf")]
struct Args {
    /// Overlay sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    nodes: Vec<usize>,
    /// Signature verification mode (see the module docs).
    #[arg(long, value_enum, default_value = "both")]
    verify: Verify,
    /// Also run Serf agents for sizes up to this (0 disables; needs `serf` on PATH).
    #[arg(long, default_value_t = 100)]
    serf_max: usize,
    /// First TCP port for Serf agents (each uses two: gossip and RPC).
    #[arg(long, default_value_t = 27000)]
    serf_port: u16,
    /// Seconds to wait for convergence before giving up.
    #[arg(long, default_value_t = 120)]
    converge_limit: u64,
    /// Runs per slicenet row. A single run at 1,000 nodes varies by several seconds, so
    /// with more than one, the runs after the first measure convergence only, and a
    /// summary (min / median / max) follows the table.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Print one JSON object per row instead of the table.
    #[arg(long)]
    json: bool,
}

/// One measured row.
#[derive(Debug, Default, serde::Serialize)]
struct Row {
    system: String,
    nodes: usize,
    converge_s: Option<f64>,
    converge_cpu_s: f64,
    signature_checks: u64,
    crash_p50_s: Option<f64>,
    crash_max_s: Option<f64>,
    freeze_p50_s: Option<f64>,
    freeze_max_s: Option<f64>,
    /// Nodes other than the victims that someone declared down during the failure phases.
    false_downs: usize,
    idle_cpu_pct_per_node: Option<f64>,
    connections_per_node: Option<f64>,
    rss_mib: Option<f64>,
}

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

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64())
}

/// Who saw whom go down, and when (shared by every observer of a run).
type DownLog = Arc<Mutex<Vec<(usize, String, Instant)>>>;

/// How many observers hold each node up: the progress lines name the node whose
/// record has spread least (a late joiner, a node nobody could reach), which is
/// where a slow convergence spends its tail.
struct KnownBy {
    index: RwLock<HashMap<NodeId, usize>>,
    counts: Vec<AtomicI64>,
}

impl KnownBy {
    fn new(n: usize) -> Self {
        Self {
            index: RwLock::default(),
            counts: (0..n).map(|_| AtomicI64::new(0)).collect(),
        }
    }
    fn register(&self, node: NodeId, index: usize) {
        self.index.write().expect("index lock").insert(node, index);
    }
    fn add(&self, node: &NodeId, delta: i64) {
        if let Some(&i) = self.index.read().expect("index lock").get(node) {
            self.counts[i].fetch_add(delta, Ordering::Relaxed);
        }
    }
    /// The node known by the fewest observers, and by how many.
    fn least(&self) -> Option<(usize, i64)> {
        (0..self.counts.len())
            .map(|i| (i, self.counts[i].load(Ordering::Relaxed)))
            .min_by_key(|&(_, count)| count)
    }
}

/// Waits until every observer in `observers` logged `victim` down, or the limit.
/// Returns (median, last) detection time and how many observers saw it.
fn detection(
    log: &DownLog,
    observers: &[usize],
    victim: &str,
    since: Instant,
) -> (Option<f64>, Option<f64>, usize) {
    let deadline = Instant::now() + DETECTION_LIMIT;
    loop {
        let mut times: HashMap<usize, Duration> = HashMap::new();
        for (observer, node, at) in log.lock().expect("log lock").iter() {
            if node == victim && *at >= since && observers.contains(observer) {
                times.entry(*observer).or_insert(at.duration_since(since));
            }
        }
        if times.len() == observers.len() || Instant::now() > deadline {
            let mut sorted: Vec<Duration> = times.into_values().collect();
            sorted.sort();
            let seen = sorted.len();
            let last = (seen == observers.len())
                .then(|| sorted.last().map(Duration::as_secs_f64))
                .flatten();
            return (percentile(&sorted, 0.5), last, seen);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Distinct nodes other than `victims` that anyone declared down since `since`.
fn false_downs(log: &DownLog, victims: &[&str], since: Instant) -> usize {
    let log = log.lock().expect("log lock");
    let mut wrongly: Vec<&String> = log
        .iter()
        .filter(|(_, node, at)| *at >= since && !victims.contains(&node.as_str()))
        .map(|(_, node, _)| node)
        .collect();
    wrongly.sort();
    wrongly.dedup();
    wrongly.len()
}

// ---------------------------------------------------------------------------
// slicenet

/// One node with its own runtime handle, so victims can be crashed or frozen alone.
struct Node {
    id: NodeId,
    addr: PeerAddr,
    handle: MembershipHandle,
    live: Arc<AtomicUsize>,
    membership: Option<Membership>,
    runtime: Option<NodeRuntime>,
}

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

/// Counts live peers from the event stream and logs downs (draining it, so nothing drops).
fn spawn_counter(
    rt: &tokio::runtime::Handle,
    observer: usize,
    mut events: tokio::sync::mpsc::Receiver<MembershipEvent>,
    live: Arc<AtomicUsize>,
    known: Arc<KnownBy>,
    downs: DownLog,
) {
    rt.spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                MembershipEvent::PeerUp(record) => {
                    live.fetch_add(1, Ordering::Relaxed);
                    known.add(&record.node_id(), 1);
                }
                MembershipEvent::PeerDown { node, .. } => {
                    live.fetch_sub(1, Ordering::Relaxed);
                    known.add(&node, -1);
                    let at = Instant::now();
                    downs
                        .lock()
                        .expect("log lock")
                        .push((observer, node.to_string(), at));
                }
                MembershipEvent::PeerUpdated(_) => {}
            }
        }
    });
}

fn run_slicenet(n: usize, shared: bool, detect: bool, limit: Duration) -> anyhow::Result<Row> {
    let mode = if shared { "shared" } else { "per-node" };
    eprintln!("slicenet, {n} nodes, {mode} signature checks");
    if n < 3 {
        bail!("--nodes: at least 3 nodes are needed (two victims and an observer)");
    }
    let cache = shared.then(|| Arc::new(SignatureCache::new(4 * n + 64)));
    // Observers share one runtime with as many workers as cores; the two victims get a
    // one-thread runtime each, so one can be crashed and the other frozen alone.
    let workers = std::thread::available_parallelism().map_or(2, |p| p.get());
    let shared_rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?,
    );
    let (crash_victim, freeze_victim) = (n - 1, n - 2);
    let downs: DownLog = Arc::default();
    let known = Arc::new(KnownBy::new(n));
    let known_by = known.clone();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let rt = if i == crash_victim || i == freeze_victim {
            NodeRuntime::Own(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("victim-{i}"))
                    .enable_all()
                    .build()?,
            )
        } else {
            NodeRuntime::Shared(shared_rt.clone())
        };
        let identity = NodeIdentity::generate();
        known.register(identity.node_id(), i);
        let mut config = MembershipConfig::new(identity, info(i)).listen(PeerAddr::Memory(0));
        if i > 0 {
            config = config.bootstrap(nodes[i % i.min(3)].addr);
        }
        config.signature_cache = cache.clone();
        let (membership, events) = rt.handle().block_on(Membership::start(config))?;
        let live = Arc::new(AtomicUsize::new(0));
        spawn_counter(
            &rt.handle(),
            i,
            events,
            live.clone(),
            known.clone(),
            downs.clone(),
        );
        nodes.push(Node {
            id: membership.node_id(),
            addr: membership.listen_addrs()[0],
            handle: membership.handle(),
            live,
            membership: Some(membership),
            runtime: Some(rt),
        });
    }
    eprintln!("  all {n} started in {:.2?}", t0.elapsed());
    let mut last_report = Instant::now();
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
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            let known: usize = nodes.iter().map(|x| x.live.load(Ordering::Relaxed)).sum();
            let (least, by) = known_by.least().unwrap_or_default();
            eprintln!(
                "  {:.0?}: {done}/{n} nodes complete, {:.1}% of all pairs known; least known: node #{least}, by {by} of {}",
                t0.elapsed(),
                100.0 * known as f64 / (n * (n - 1)) as f64,
                n - 1
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let converge_cpu = cpu_seconds() - cpu0;
    if let Some(converge) = converge {
        eprintln!("  converged in {converge:.2?} using {converge_cpu:.1} CPU-s");
    }

    // Confirm against every table, and gather the per-node figures.
    let (mut connections, mut subjects, mut checks, mut incomplete) = (0, 0, 0u64, 0);
    let mut totals = slicenet_node::membership::Counters::default();
    // Asked all at once under one deadline: a loaded process answers slowly, and asking
    // a thousand nodes one after the other would take as many round trips.
    let handles: Vec<MembershipHandle> = nodes.iter().map(|x| x.handle.clone()).collect();
    let answers = shared_rt.block_on(async {
        let asks = handles.iter().map(|h| async {
            tokio::time::timeout(Duration::from_secs(30), h.status())
                .await
                .ok()
                .and_then(Result::ok)
        });
        futures::future::join_all(asks).await
    });
    let unanswered = answers.iter().filter(|a| a.is_none()).count();
    for status in answers.into_iter().flatten() {
        connections += status.connected_peers;
        subjects += status.subjects;
        checks += status.counters.signatures_verified;
        let c = status.counters;
        totals.suspicions_sent += c.suspicions_sent;
        totals.silences_detected += c.silences_detected;
        totals.events_dropped += c.events_dropped;
        totals.refutations_sent += c.refutations_sent;
        totals.verdicts_deferred += c.verdicts_deferred;
        totals.dials_refused += c.dials_refused;
        totals.connections_opened += c.connections_opened;
        totals.pulls_sent += c.pulls_sent;
        totals.syncs_completed += c.syncs_completed;
        totals.records_pushed += c.records_pushed;
        totals.records_duplicate += c.records_duplicate;
        if status.live_members != n - 1 {
            incomplete += 1;
        }
    }
    eprintln!(
        "  per node: {:.1} connections, {:.1} subjects, {:.1} signature checks, {:.1} exchanges ({:.1} answered), {:.1} records pushed, {:.1} duplicates, {:.1} dials refused, {:.1} connections opened; {} suspicions ({} silences, {} events dropped), {} refutations, {} deferred verdicts in total; {incomplete} tables incomplete, {unanswered} nodes did not answer within 30 s",
        connections as f64 / n as f64,
        subjects as f64 / n as f64,
        checks as f64 / n as f64,
        totals.pulls_sent as f64 / n as f64,
        totals.syncs_completed as f64 / n as f64,
        totals.records_pushed as f64 / n as f64,
        totals.records_duplicate as f64 / n as f64,
        totals.dials_refused as f64 / n as f64,
        totals.connections_opened as f64 / n as f64,
        totals.suspicions_sent,
        totals.silences_detected,
        totals.events_dropped,
        totals.refutations_sent,
        totals.verdicts_deferred,
    );
    let mut row = Row {
        system: format!("slicenet ({mode})"),
        nodes: n,
        converge_s: converge
            .filter(|_| incomplete == 0 && unanswered == 0)
            .map(|d| d.as_secs_f64()),
        converge_cpu_s: converge_cpu,
        signature_checks: cache.as_ref().map_or(checks, |c| c.stats().verified),
        connections_per_node: Some(connections as f64 / n as f64),
        ..Row::default()
    };

    if detect && converge.is_some() {
        // Steady state: CPU per node while nothing changes, once what converging set in
        // motion has settled (transient connections closed after their lifetime, final
        // subjects dialed, fast exchange rounds over).
        std::thread::sleep(SETTLE_BEFORE_IDLE);
        let (c1, w1) = (cpu_seconds(), Instant::now());
        std::thread::sleep(Duration::from_secs(3));
        row.idle_cpu_pct_per_node =
            Some((cpu_seconds() - c1) / w1.elapsed().as_secs_f64() / n as f64 * 100.0);
        row.rss_mib = Some(rss_mib());
        let phase_start = Instant::now();

        // Crash: drop the victim's runtime (its connections reset).
        let crash_id = nodes[crash_victim].id.to_string();
        let observers: Vec<usize> = (0..n - 2).collect();
        let crash_at = Instant::now();
        if let Some(NodeRuntime::Own(rt)) = nodes[crash_victim].runtime.take() {
            rt.shutdown_background();
        }
        // Its task is gone already: this only drops the owner, nothing is announced.
        drop(nodes[crash_victim].membership.take());
        let (p50, max, seen) = detection(&downs, &observers, &crash_id, crash_at);
        eprintln!(
            "  crash seen by {seen}/{}: median {p50:.3?} s, last {max:.3?} s",
            observers.len()
        );
        (row.crash_p50_s, row.crash_max_s) = (p50, max);

        // Freeze: block the victim's only worker thread; its connections stay open.
        let freeze_id = nodes[freeze_victim].id.to_string();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let freeze_at = Instant::now();
        nodes[freeze_victim]
            .runtime
            .as_ref()
            .expect("running")
            .handle()
            .spawn(async move {
                // Freezes this node's whole runtime until released.
                let _ = release_rx.recv_timeout(DETECTION_LIMIT + Duration::from_secs(5));
            });
        let (p50, max, seen) = detection(&downs, &observers, &freeze_id, freeze_at);
        let _ = release_tx.send(());
        eprintln!(
            "  freeze seen by {seen}/{}: median {p50:.3?} s, last {max:.3?} s",
            observers.len()
        );
        (row.freeze_p50_s, row.freeze_max_s) = (p50, max);
        row.false_downs = false_downs(&downs, &[&crash_id, &freeze_id], phase_start);
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
    if let Ok(rt) = Arc::try_unwrap(shared_rt) {
        rt.shutdown_background();
    }
    Ok(row)
}

// ---------------------------------------------------------------------------
// Serf, through its msgpack RPC (only the few message shapes the benchmark needs)

/// A decoded msgpack value (the subset Serf's RPC answers with).
#[derive(Debug, Clone, PartialEq)]
enum Mp {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
}

impl Mp {
    fn get(&self, key: &str) -> Option<&Mp> {
        match self {
            Mp::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Mp::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Mp::Str(s) => Some(s),
            _ => None,
        }
    }
}

fn read_exact(r: &mut impl std::io::Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_be(r: &mut impl std::io::Read, n: usize) -> std::io::Result<u64> {
    Ok(read_exact(r, n)?
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Reads one msgpack value.
fn mp_read(r: &mut impl std::io::Read) -> std::io::Result<Mp> {
    let tag = read_exact(r, 1)?[0];
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("msgpack tag {tag:#x}"),
        )
    };
    let str_of = |b: Vec<u8>| Mp::Str(String::from_utf8_lossy(&b).into_owned());
    Ok(match tag {
        0x00..=0x7f => Mp::Int(i128::from(tag)),
        0x80..=0x8f => mp_map(r, usize::from(tag & 0x0f))?,
        0x90..=0x9f => mp_array(r, usize::from(tag & 0x0f))?,
        0xa0..=0xbf => str_of(read_exact(r, usize::from(tag & 0x1f))?),
        0xc0 => Mp::Nil,
        0xc2 => Mp::Bool(false),
        0xc3 => Mp::Bool(true),
        0xc4..=0xc6 => {
            let len = read_be(r, 1 << (tag - 0xc4))? as usize;
            Mp::Bin(read_exact(r, len)?)
        }
        0xca => Mp::Float(f64::from(f32::from_bits(read_be(r, 4)? as u32))),
        0xcb => Mp::Float(f64::from_bits(read_be(r, 8)?)),
        0xcc..=0xcf => Mp::Int(i128::from(read_be(r, 1 << (tag - 0xcc))?)),
        0xd0..=0xd3 => {
            let bytes = 1usize << (tag - 0xd0);
            let raw = read_be(r, bytes)?;
            let shift = 64 - 8 * bytes as u32;
            Mp::Int(i128::from(((raw << shift) as i64) >> shift))
        }
        0xd9..=0xdb => {
            let len = read_be(r, 1 << (tag - 0xd9))? as usize;
            str_of(read_exact(r, len)?)
        }
        0xdc | 0xdd => {
            let len = read_be(r, if tag == 0xdc { 2 } else { 4 })? as usize;
            mp_array(r, len)?
        }
        0xde | 0xdf => {
            let len = read_be(r, if tag == 0xde { 2 } else { 4 })? as usize;
            mp_map(r, len)?
        }
        0xe0..=0xff => Mp::Int(i128::from(tag as i8)),
        _ => return Err(bad()),
    })
}

fn mp_array(r: &mut impl std::io::Read, len: usize) -> std::io::Result<Mp> {
    (0..len)
        .map(|_| mp_read(r))
        .collect::<Result<_, _>>()
        .map(Mp::Array)
}

fn mp_map(r: &mut impl std::io::Read, len: usize) -> std::io::Result<Mp> {
    (0..len)
        .map(|_| Ok((mp_read(r)?, mp_read(r)?)))
        .collect::<Result<_, std::io::Error>>()
        .map(Mp::Map)
}

/// Encodes a map of short string keys to string or small unsigned values.
fn mp_encode(entries: &[(&str, MpArg)]) -> Vec<u8> {
    let mut out = vec![0x80 | entries.len() as u8];
    let put_str = |out: &mut Vec<u8>, s: &str| {
        match s.len() {
            len @ 0..=31 => out.push(0xa0 | len as u8),
            // str8: fixstr holds at most 31 bytes
            len => out.extend_from_slice(&[0xd9, u8::try_from(len).expect("short string")]),
        }
        out.extend_from_slice(s.as_bytes());
    };
    for (key, value) in entries {
        put_str(&mut out, key);
        match value {
            MpArg::Str(s) => put_str(&mut out, s),
            MpArg::Uint(v) => {
                out.push(0xcf);
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    out
}

enum MpArg<'a> {
    Str(&'a str),
    Uint(u64),
}

/// Opens an event stream on a Serf agent's RPC port; each member event is logged with
/// the time it arrived. Runs until the agent closes the connection.
fn serf_stream(
    rpc: u16,
    observer: usize,
    attached: Arc<AtomicUsize>,
    joins: Arc<Vec<AtomicUsize>>,
    downs: DownLog,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", rpc))?;
    stream.set_nodelay(true)?;
    let mut request = mp_encode(&[
        ("Command", MpArg::Str("handshake")),
        ("Seq", MpArg::Uint(0)),
    ]);
    request.extend(mp_encode(&[("Version", MpArg::Uint(1))]));
    request.extend(mp_encode(&[
        ("Command", MpArg::Str("stream")),
        ("Seq", MpArg::Uint(1)),
    ]));
    request.extend(mp_encode(&[(
        "Type",
        MpArg::Str("member-join,member-failed,member-leave"),
    )]));
    stream.write_all(&request)?;
    let mut reader = std::io::BufReader::new(stream);
    for _ in 0..2 {
        let header = mp_read(&mut reader)?;
        if let Some(Mp::Str(e)) = header.get("Error") {
            if !e.is_empty() {
                bail!("serf RPC on port {rpc}: {e}");
            }
        }
    }
    attached.fetch_add(1, Ordering::Relaxed);
    loop {
        let Ok(_header) = mp_read(&mut reader) else {
            return Ok(());
        };
        let body = mp_read(&mut reader)?;
        let at = Instant::now();
        let event = body.get("Event").and_then(Mp::as_str).unwrap_or("");
        let Some(Mp::Array(members)) = body.get("Members") else {
            continue;
        };
        for member in members {
            let Some(name) = member.get("Name").and_then(Mp::as_str) else {
                continue;
            };
            match event {
                "member-join" if name != format!("n{observer}") => {
                    joins[observer].fetch_add(1, Ordering::Relaxed);
                }
                "member-failed" | "member-leave" => {
                    downs
                        .lock()
                        .expect("log lock")
                        .push((observer, name.to_owned(), at));
                }
                _ => {}
            }
        }
    }
}

/// CPU seconds used so far by the processes in `pids`.
fn process_cpu(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// Serf agents, killed when dropped.
struct SerfAgents(Vec<Child>);

impl Drop for SerfAgents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SIGCONT first so a stopped agent can die.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_serf(n: usize, base_port: u16, limit: Duration) -> anyhow::Result<Row> {
    eprintln!("serf, {n} agents");
    let gossip = |i: usize| base_port + 2 * i as u16;
    let rpc = |i: usize| base_port + 2 * i as u16 + 1;
    let joins: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let downs: DownLog = Arc::default();
    let attached = Arc::new(AtomicUsize::new(0));
    let mut agents = SerfAgents(Vec::new());
    // Agents start alone; they join only once every event stream is attached,
    // because a stream sees only the events after it starts.
    for i in 0..n {
        agents.0.push(
            Command::new("serf")
                .arg("agent")
                .arg(format!("-node=n{i}"))
                .arg(format!("-bind=127.0.0.1:{}", gossip(i)))
                .arg(format!("-rpc-addr=127.0.0.1:{}", rpc(i)))
                .arg("-log-level=err")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start `serf agent` (install Debian's serf package)")?,
        );
    }
    let pids: Vec<u32> = agents.0.iter().map(Child::id).collect();
    for i in 0..n {
        let (attached, joins, downs) = (attached.clone(), joins.clone(), downs.clone());
        let port = rpc(i);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match serf_stream(port, i, attached.clone(), joins.clone(), downs.clone()) {
                    Ok(()) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }
    let attach_deadline = Instant::now() + Duration::from_secs(30);
    while attached.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            Instant::now() < attach_deadline,
            "only {}/{n} serf agents answered on their RPC port within 30 s",
            attached.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // As the slicenet nodes: everyone at once, each given one of the first three.
    let t0 = Instant::now();
    let mut joiners = Vec::with_capacity(n);
    for i in 1..n {
        joiners.push(
            Command::new("serf")
                .arg("join")
                .arg(format!("-rpc-addr=127.0.0.1:{}", rpc(i)))
                .arg(format!("127.0.0.1:{}", gossip(i % i.min(3))))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run `serf join`")?,
        );
    }
    for mut joiner in joiners {
        joiner.wait().context("serf join")?;
    }
    let converge = loop {
        let done = joins
            .iter()
            .filter(|j| j.load(Ordering::Relaxed) >= n - 1)
            .count();
        if done == n {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            eprintln!("  serf not converged after {limit:?}: {done}/{n} agents complete");
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let converge_cpu = process_cpu(&pids);
    if let Some(converge) = converge {
        eprintln!("  converged in {converge:.2?} using {converge_cpu:.1} CPU-s");
    }
    let mut row = Row {
        system: "serf (lan profile)".into(),
        nodes: n,
        converge_s: converge.map(|d| d.as_secs_f64()),
        converge_cpu_s: converge_cpu,
        ..Row::default()
    };
    if converge.is_none() {
        return Ok(row);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (c1, w1) = (process_cpu(&pids), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    row.idle_cpu_pct_per_node =
        Some((process_cpu(&pids) - c1) / w1.elapsed().as_secs_f64() / n as f64 * 100.0);
    let phase_start = Instant::now();
    let observers: Vec<usize> = (0..n - 2).collect();
    let (crash_victim, freeze_victim) = (n - 1, n - 2);
    let crash_at = Instant::now();
    let _ = agents.0[crash_victim].kill();
    let (p50, max, seen) = detection(&downs, &observers, &format!("n{crash_victim}"), crash_at);
    eprintln!(
        "  crash seen by {seen}/{}: median {p50:.3?} s, last {max:.3?} s",
        observers.len()
    );
    (row.crash_p50_s, row.crash_max_s) = (p50, max);
    let freeze_at = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(agents.0[freeze_victim].id() as i32, libc::SIGSTOP) };
    let (p50, max, seen) = detection(&downs, &observers, &format!("n{freeze_victim}"), freeze_at);
    eprintln!(
        "  freeze seen by {seen}/{}: median {p50:.3?} s, last {max:.3?} s",
        observers.len()
    );
    (row.freeze_p50_s, row.freeze_max_s) = (p50, max);
    row.false_downs = false_downs(
        &downs,
        &[&format!("n{crash_victim}"), &format!("n{freeze_victim}")],
        phase_start,
    );
    Ok(row)
}

// ---------------------------------------------------------------------------
// Output

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn ratio(v: Option<f64>, target: Duration) -> String {
    v.map_or("-".into(), |v| format!("{:.2}x", v / target.as_secs_f64()))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "membership: N nodes on {} cores; slicenet in one process (memory transport, full libp2p stack), serf as N agents on 127.0.0.1",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("times in seconds until the LAST node saw it; 'vs' = measured / target (< 1 meets it: converge 10 s, detect 3 s)");
    println!(
        "{:<20} {:>6} | {:>8} {:>7} {:>8} {:>10} | {:>9} {:>8} {:>7} | {:>9} {:>8} {:>7} | {:>5} {:>9} {:>6} {:>7}",
        "system", "nodes", "converge", "vs", "CPU-s", "sig.checks", "crash p50", "crash", "vs", "frz p50", "freeze", "vs", "false", "idle%/nd", "conn/n", "RSS MiB"
    );
    for r in rows {
        println!(
            "{:<20} {:>6} | {:>8} {:>7} {:>8.1} {:>10} | {:>9} {:>8} {:>7} | {:>9} {:>8} {:>7} | {:>5} {:>9} {:>6} {:>7}",
            r.system,
            r.nodes,
            secs(r.converge_s),
            ratio(r.converge_s, CONVERGENCE_TARGET),
            r.converge_cpu_s,
            if r.system.starts_with("serf") { "-".into() } else { r.signature_checks.to_string() },
            secs(r.crash_p50_s),
            secs(r.crash_max_s),
            ratio(r.crash_max_s, DETECTION_TARGET),
            secs(r.freeze_p50_s),
            secs(r.freeze_max_s),
            ratio(r.freeze_max_s, DETECTION_TARGET),
            r.false_downs,
            opt(r.idle_cpu_pct_per_node, 3),
            opt(r.connections_per_node, 1),
            opt(r.rss_mib, 0),
        );
    }
    println!("false = nodes other than the two victims that someone declared down during the failure phases");
    println!("per-node rows: every node verifies every record on these cores (convergence only); a real host pays CPU-s / N");
}

/// mimalloc's settings for a process that hosts a thousand nodes, read from the
/// environment when the allocator starts (before `main`), so they are set by running
/// ourselves again. Without them, transparent huge pages and mimalloc returning freed
/// memory to the kernel after 10 ms made the process fault in and zero fresh pages
/// over and over: starting 1,000 nodes took 3.3 s instead of 0.8 s.
const ALLOCATOR_ENV: [(&str, &str); 2] =
    [("MIMALLOC_ALLOW_THP", "0"), ("MIMALLOC_PURGE_DELAY", "-1")];

fn configure_allocator() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    if ALLOCATOR_ENV
        .iter()
        .all(|(k, _)| std::env::var_os(k).is_some())
    {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding our own executable")?;
    let error = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(ALLOCATOR_ENV)
        .exec();
    Err(error).context("re-running with the allocator settings")
}

fn main() -> anyhow::Result<()> {
    configure_allocator()?;
    let args = Args::parse();
    let limit = Duration::from_secs(args.converge_limit);
    let serf_available = Command::new("serf")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if args.serf_max > 0 && !serf_available {
        eprintln!("serf is not installed (scripts/setup.sh installs it): Serf rows skipped");
    }
    let mut rows = Vec::new();
    for &n in &args.nodes {
        for run in 0..args.runs.max(1) {
            if matches!(args.verify, Verify::Shared | Verify::Both) {
                rows.push(run_slicenet(n, true, run == 0, limit)?);
            }
            if matches!(args.verify, Verify::PerNode | Verify::Both) {
                let detect = run == 0 && args.verify == Verify::PerNode;
                rows.push(run_slicenet(n, false, detect, limit)?);
            }
        }
        if serf_available && n <= args.serf_max {
            rows.push(run_serf(n, args.serf_port, limit)?);
        }
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&rows);
        if args.runs > 1 {
            print_spread(&rows);
        }
    }
    Ok(())
}

/// Convergence over the runs of each (system, nodes) row: min / median / max, and
/// how many runs did not converge within the limit.
fn print_spread(rows: &[Row]) {
    let mut groups: Vec<(&str, usize, Vec<&Row>)> = Vec::new();
    for r in rows {
        match groups
            .iter_mut()
            .find(|(system, nodes, _)| *system == r.system && *nodes == r.nodes)
        {
            Some((_, _, runs)) => runs.push(r),
            None => groups.push((&r.system, r.nodes, vec![r])),
        }
    }
    println!("convergence over runs: min / median / max seconds (CPU-s median)");
    for (system, nodes, runs) in groups {
        let mut times: Vec<f64> = runs.iter().filter_map(|r| r.converge_s).collect();
        times.sort_by(f64::total_cmp);
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.converge_cpu_s).collect();
        cpu.sort_by(f64::total_cmp);
        let missed = runs.len() - times.len();
        let spread = match (times.first(), times.last()) {
            (Some(min), Some(max)) => {
                format!("{min:.2} / {:.2} / {max:.2}", times[times.len() / 2])
            }
            _ => "-".into(),
        };
        println!(
            "{system:<20} {nodes:>6} | {} runs: {spread} ({:.1} CPU-s){}",
            runs.len(),
            cpu[cpu.len() / 2],
            if missed > 0 {
                format!(", {missed} not converged")
            } else {
                String::new()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_reads_what_serf_sends() {
        // {"Seq": 1, "Error": ""} then {"Members": [{"Name": "n1", "Port": 7946}]}
        let mut bytes = vec![0x82, 0xa3, b'S', b'e', b'q', 0x01, 0xa5];
        bytes.extend_from_slice(b"Error");
        bytes.push(0xa0);
        bytes.extend_from_slice(&[0x81, 0xa7]);
        bytes.extend_from_slice(b"Members");
        bytes.extend_from_slice(&[0x91, 0x82, 0xa4]);
        bytes.extend_from_slice(b"Name");
        bytes.extend_from_slice(&[0xa2, b'n', b'1', 0xa4]);
        bytes.extend_from_slice(b"Port");
        bytes.extend_from_slice(&[0xcd, 0x1f, 0x0a]);
        let mut r = &bytes[..];
        let header = mp_read(&mut r).unwrap();
        assert_eq!(header.get("Seq"), Some(&Mp::Int(1)));
        let body = mp_read(&mut r).unwrap();
        let Some(Mp::Array(members)) = body.get("Members") else {
            panic!("{body:?}")
        };
        assert_eq!(members[0].get("Name").and_then(Mp::as_str), Some("n1"));
        assert_eq!(members[0].get("Port"), Some(&Mp::Int(7946)));
        assert!(r.is_empty());
    }

    #[test]
    fn msgpack_requests_are_encoded_as_serf_expects() {
        let bytes = mp_encode(&[("Command", MpArg::Str("members")), ("Seq", MpArg::Uint(2))]);
        let mut r = &bytes[..];
        let value = mp_read(&mut r).unwrap();
        assert_eq!(value.get("Command").and_then(Mp::as_str), Some("members"));
        assert_eq!(value.get("Seq"), Some(&Mp::Int(2)));
        let long = "member-join,member-failed,member-leave";
        let bytes = mp_encode(&[("Type", MpArg::Str(long))]);
        let value = mp_read(&mut &bytes[..]).unwrap();
        assert_eq!(value.get("Type").and_then(Mp::as_str), Some(long));
    }
}
