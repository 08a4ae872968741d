//! `overlay_bench`: slicenet's data plane against the overlays people use
//! instead, measured the same way on the same kind of two-site layout.
//!
//! Two namespaced sites joined by a veth; a slicenet daemon (a child
//! process, so its CPU is accounted like the peers' daemons) on each with a
//! TAP port in one enclave; iperf3 with 1 and N streams and a ping RTT
//! probe between the TAP ports. In the same run the peers are measured by
//! `peerbench.sh` (wireguard-go + VXLAN + bridge, tinc switch mode, ...),
//! and one table prints everything side by side with ratios.

mod measure;
mod peers;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

pub use measure::{IperfResult, PingStats};
pub use peers::PeerRow;

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The peer benchmark script (default: shared/bench/peerbench.sh next to the repository).
    #[arg(long, env = "SLICENET_PEERBENCH")]
    pub peerbench: Option<PathBuf>,
    /// Peer systems to measure (peerbench TESTS names).
    #[arg(long, default_value = "wgvx tinc")]
    pub peers: String,
    /// Skip the peers (slicenet only).
    #[arg(long)]
    pub no_peers: bool,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    pub duration: u32,
    /// Streams of the parallel iperf3 run.
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
    /// Pings for the RTT probe (10 ms apart).
    #[arg(long, default_value_t = 200)]
    pub pings: u32,
    /// Worker threads of each slicenet daemon.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Scheduling priority for every measured process (tunnel daemons,
    /// iperf3, ping) of every system, e.g. -10 on a busy shared machine;
    /// passed to peerbench as NICE so all systems get the same.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub nice: i32,
    /// Print the results as JSON as well.
    #[arg(long)]
    pub json: bool,
}

/// One measured system: throughput, latency and CPU.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    /// Name for the table.
    pub system: String,
    /// Gbit/s with one stream.
    pub gbps_1: Option<f64>,
    /// Gbit/s with the parallel streams.
    pub gbps_n: Option<f64>,
    /// Daemon CPU seconds per Gbit transferred (one stream).
    pub cpu_s_per_gbit_1: Option<f64>,
    /// Daemon CPU seconds per Gbit transferred (parallel streams).
    pub cpu_s_per_gbit_n: Option<f64>,
    /// Ping RTT average, ms.
    pub rtt_avg_ms: Option<f64>,
    /// Ping RTT median, ms.
    pub rtt_p50_ms: Option<f64>,
    /// Ping RTT 99th percentile, ms.
    pub rtt_p99_ms: Option<f64>,
    /// TCP retransmissions (one stream).
    pub retransmits_1: Option<u64>,
}

/// Runs the benchmark and prints the table.
pub fn run(args: &BenchArgs, self_exe: &Path) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("overlay_bench needs root (network namespaces, TAP devices); run it with sudo");
    }
    let mut results = Vec::new();
    if !args.no_peers {
        let script = args.peerbench.clone().unwrap_or_else(default_peerbench);
        eprintln!(
            "overlay_bench: measuring peers ({}) with {}",
            args.peers,
            script.display()
        );
        let rows = peers::run_peerbench(&script, &args.peers, args, args.nice)?;
        results.extend(peers::to_results(&rows, args.parallel, args.duration));
    }
    eprintln!("overlay_bench: measuring slicenet");
    let ours = measure_slicenet(args, self_exe)?;
    results.insert(0, ours);
    print_table(&results, args);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `<repository>/../shared/bench/peerbench.sh`.
fn default_peerbench() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/peerbench.sh")
}

const PORT: u16 = 51820;
const VNI: u32 = 100;

fn tap_addr(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, VNI as u8, site)
}

/// Kills the daemons when the measurement ends, however it ends.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write_configs(dir: &Path) -> anyhow::Result<[PathBuf; 2]> {
    let keys = [
        slicenet_overlay::PrivateKey::generate(),
        slicenet_overlay::PrivateKey::generate(),
    ];
    let mut paths = Vec::new();
    for i in 0..2 {
        let me = i + 1;
        let other = 2 - i;
        let text = format!(
            r#"private_key = "{key}"
listen = "198.18.0.{me}:{PORT}"
tunnel_address = "198.19.255.{me}"
control_socket = "control-{me}.sock"

[[peer]]
name = "site{other}"
public_key = "{peer}"
endpoint = "198.18.0.{other}:{PORT}"
tunnel_address = "198.19.255.{other}"

[[enclave]]
vni = {VNI}
members = ["site{other}"]

[[enclave.port]]
name = "bench"
kind = "tap"
ifname = "snbench"
address = "{addr}/24"
"#,
            key = keys[i].to_base64(),
            peer = keys[1 - i].public_key(),
            addr = tap_addr(me as u8),
        );
        let path = dir.join(format!("site{me}.toml"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        paths.push(path);
    }
    Ok([paths[0].clone(), paths[1].clone()])
}

fn measure_slicenet(args: &BenchArgs, self_exe: &Path) -> anyhow::Result<SystemResult> {
    let bed = slicenet_testbed::Testbed::builder(2)
        .build()
        .context("building the two-site testbed")?;
    let dir = tempfile::tempdir()?;
    let configs = write_configs(dir.path())?;
    let mut daemons = Daemons(Vec::new());
    for (i, cfg) in configs.iter().enumerate() {
        let child = bed
            .site(i + 1)
            .command("nice")
            .args(["-n", &args.nice.to_string()])
            .arg(self_exe)
            .args(["daemon", "--threads", &args.threads.to_string(), "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a slicenet daemon")?;
        daemons.0.push(child);
    }
    let (src, dst) = (tap_addr(1), tap_addr(2));
    let deadline = Instant::now() + Duration::from_secs(15);
    let nice = args.nice;
    while !measure::ping_once(bed.site(1), dst) {
        if Instant::now() > deadline {
            bail!("the slicenet enclave did not come up within 15 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // `ip netns exec` and `nice` exec the daemon: the child's pid is the daemon's.
    let pids: Vec<u32> = daemons.0.iter().map(Child::id).collect();
    let ping = measure::ping(bed.site(1), dst, args.pings, nice)?;
    eprintln!(
        "overlay_bench: slicenet RTT avg {:.3} ms, p99 {:.3} ms",
        ping.avg_ms, ping.p99_ms
    );
    let _server = measure::IperfServer::start(bed.site(2), dst, nice)?;
    let mut runs = Vec::new();
    for streams in [1, args.parallel] {
        std::thread::sleep(Duration::from_secs(1));
        let before = measure::cpu_seconds(&pids);
        let r = measure::iperf(bed.site(1), src, dst, args.duration, streams, nice)?;
        let cpu = measure::cpu_seconds(&pids) - before;
        eprintln!(
            "overlay_bench: slicenet {} stream(s): {:.2} Gbit/s, daemons {:.2} CPU s",
            streams, r.gbps, cpu
        );
        runs.push((r, cpu));
    }
    let per_gbit = |(r, cpu): &(IperfResult, f64)| {
        let gbit = r.gbps * r.seconds;
        (gbit > 0.0).then(|| cpu / gbit)
    };
    Ok(SystemResult {
        system: "slicenet".into(),
        gbps_1: Some(runs[0].0.gbps),
        gbps_n: Some(runs[1].0.gbps),
        cpu_s_per_gbit_1: per_gbit(&runs[0]),
        cpu_s_per_gbit_n: per_gbit(&runs[1]),
        rtt_avg_ms: Some(ping.avg_ms),
        rtt_p50_ms: Some(ping.p50_ms),
        rtt_p99_ms: Some(ping.p99_ms),
        retransmits_1: Some(runs[0].0.retransmits),
    })
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn print_table(results: &[SystemResult], args: &BenchArgs) {
    let n = args.parallel;
    let row = |cells: [String; 8]| {
        println!(
            "{:<34} {:>9} {:>9} {:>8} {:>8} {:>8} {:>11} {:>11}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    println!();
    println!(
        "overlay_bench: two namespaced sites on a veth; iperf3 {} s, ping {} x 10 ms; CPU = tunnel daemons; nice {}",
        args.duration, args.pings, args.nice
    );
    row([
        "system".into(),
        "Gbit/s 1".into(),
        format!("Gbit/s {n}"),
        "RTT avg".into(),
        "RTT p50".into(),
        "RTT p99".into(),
        "CPU s/Gbit 1".into(),
        format!("CPU s/Gbit {n}"),
    ]);
    for r in results {
        row([
            r.system.clone(),
            fmt(r.gbps_1, 2),
            fmt(r.gbps_n, 2),
            fmt(r.rtt_avg_ms, 3),
            fmt(r.rtt_p50_ms, 3),
            fmt(r.rtt_p99_ms, 3),
            fmt(r.cpu_s_per_gbit_1, 2),
            fmt(r.cpu_s_per_gbit_n, 2),
        ]);
    }
    let ours = &results[0];
    if results.len() > 1 {
        println!();
        row([
            "slicenet / peer".into(),
            "thr 1".into(),
            format!("thr {n}"),
            "RTT avg".into(),
            "RTT p50".into(),
            "RTT p99".into(),
            "CPU/Gbit 1".into(),
            format!("CPU/Gbit {n}"),
        ]);
        for peer in &results[1..] {
            row([
                format!("vs {}", peer.system),
                ratio(ours.gbps_1, peer.gbps_1),
                ratio(ours.gbps_n, peer.gbps_n),
                ratio(ours.rtt_avg_ms, peer.rtt_avg_ms),
                ratio(ours.rtt_p50_ms, peer.rtt_p50_ms),
                ratio(ours.rtt_p99_ms, peer.rtt_p99_ms),
                ratio(ours.cpu_s_per_gbit_1, peer.cpu_s_per_gbit_1),
                ratio(ours.cpu_s_per_gbit_n, peer.cpu_s_per_gbit_n),
            ]);
        }
        println!("(throughput: higher is better; RTT and CPU per Gbit: lower is better)");
    }
}
