//! Running `peerbench.sh` for the peer systems and reading its results.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use super::SystemResult;

/// One row of peerbench's `results.tsv`.
#[derive(Debug, Clone)]
pub struct PeerRow {
    /// peerbench's system id (wgvx, tinc, ...).
    pub sys: String,
    /// Streams.
    pub streams: u32,
    /// Gbit/s.
    pub gbps: f64,
    /// Tunnel daemons' CPU seconds.
    pub daemon_cpu_s: f64,
    /// RTT average, ms.
    pub rtt_avg_ms: Option<f64>,
    /// RTT median, ms.
    pub rtt_p50_ms: Option<f64>,
    /// RTT p99, ms.
    pub rtt_p99_ms: Option<f64>,
    /// Retransmissions.
    pub retransmits: Option<u64>,
}

/// Runs the script for `tests` and parses its results.
pub fn run_peerbench(
    script: &Path,
    tests: &str,
    args: &super::BenchArgs,
    nice: i32,
) -> anyhow::Result<Vec<PeerRow>> {
    let (duration, parallel, pings) = (args.duration, args.parallel, args.pings);
    if !script.exists() {
        bail!(
            "peer benchmark script {} not found; pass --peerbench PATH (or SLICENET_PEERBENCH), or --no-peers",
            script.display()
        );
    }
    let out_root = tempfile::tempdir()?;
    let status = Command::new("bash")
        .arg(script)
        .env("TESTS", tests)
        .env("DUR", duration.to_string())
        .env("PAR", parallel.to_string())
        .env("PINGS", pings.to_string())
        .env("OUTROOT", out_root.path())
        .env("NICE", nice.to_string())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed with {status}", script.display());
    }
    let run_dir = std::fs::read_dir(out_root.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("results.tsv").exists())
        .context("peerbench wrote no results.tsv")?;
    parse_results(&std::fs::read_to_string(run_dir.join("results.tsv"))?)
}

/// Parses `results.tsv` (header line, then one row per system and stream count).
pub fn parse_results(text: &str) -> anyhow::Result<Vec<PeerRow>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty results.tsv")?
        .split('\t')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (sys, p, gbps, cpu) = (
        col("sys").context("no sys column")?,
        col("P").context("no P column")?,
        col("Gbps").context("no Gbps column")?,
        col("daemon_cpu_s").context("no daemon_cpu_s column")?,
    );
    let (avg, p50, p99, retr) = (
        col("rtt_avg_ms"),
        col("rtt_p50_ms"),
        col("rtt_p99_ms"),
        col("retr"),
    );
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let (Ok(streams), Ok(g), Ok(c)) = (get(p).parse(), get(gbps).parse(), get(cpu).parse())
        else {
            continue; // FAIL rows
        };
        rows.push(PeerRow {
            sys: get(sys).to_string(),
            streams,
            gbps: g,
            daemon_cpu_s: c,
            rtt_avg_ms: avg.and_then(|i| get(i).parse().ok()),
            rtt_p50_ms: p50.and_then(|i| get(i).parse().ok()),
            rtt_p99_ms: p99.and_then(|i| get(i).parse().ok()),
            retransmits: retr.and_then(|i| get(i).parse().ok()),
        });
    }
    Ok(rows)
}

fn display_name(sys: &str) -> String {
    match sys {
        "raw" => "raw veth (no tunnel)".into(),
        "wg" => "wireguard-go (L3)".into(),
        "wgvx" => "wireguard-go + VXLAN + bridge".into(),
        "tinc" => "tinc switch mode".into(),
        "n2n" => "n2n".into(),
        "ovpn" => "OpenVPN tap".into(),
        "bt" => "boringtun-cli (L3)".into(),
        "btvx" => "boringtun-cli + VXLAN + bridge".into(),
        other => other.into(),
    }
}

/// One [`SystemResult`] per peer system.
pub fn to_results(rows: &[PeerRow], parallel: u32, duration: u32) -> Vec<SystemResult> {
    let secs = f64::from(duration);
    let mut systems: Vec<&str> = Vec::new();
    for r in rows {
        if !systems.contains(&r.sys.as_str()) {
            systems.push(&r.sys);
        }
    }
    systems
        .into_iter()
        .map(|sys| {
            let find = |p: u32| rows.iter().find(|r| r.sys == sys && r.streams == p);
            let per_gbit = |r: &PeerRow, secs: f64| {
                let gbit = r.gbps * secs;
                (gbit > 0.0).then(|| r.daemon_cpu_s / gbit)
            };
            let one = find(1);
            let n = find(parallel);
            SystemResult {
                system: display_name(sys),
                gbps_1: one.map(|r| r.gbps),
                gbps_n: n.map(|r| r.gbps),
                cpu_s_per_gbit_1: one.and_then(|r| per_gbit(r, secs)),
                cpu_s_per_gbit_n: n.and_then(|r| per_gbit(r, secs)),
                rtt_avg_ms: one.and_then(|r| r.rtt_avg_ms),
                rtt_p50_ms: one.and_then(|r| r.rtt_p50_ms),
                rtt_p99_ms: one.and_then(|r| r.rtt_p99_ms),
                retransmits_1: one.and_then(|r| r.retransmits),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peerbench_results() {
        let text = "run\tsys\tP\tGbps\tretr\tmss\tmtu\tdaemon_cpu_s\tiperf_cpu_s\tksoftirq_s\ttotal_cpu_s\tGbit_per_daemon_cpu_s\tGbit_per_total_cpu_s\tsys_busy_s\tsteal_s\tload1\trtt_avg_ms\trtt_p50_ms\trtt_p99_ms\trtt_max_ms\tloss_pct\n\
1\twgvx\t1\t0.45\t12\t1318\t1370\t6.4\t1\t0\t7.4\t0.35\t0.3\t9\t0\t0.5\t0.620\t0.600\t0.900\t1.2\t0\n\
1\twgvx\t4\t0.5\t30\t1318\t1370\t7.1\t1\t0\t8.1\t0.35\t0.3\t9\t0\t0.5\t0.620\t0.600\t0.900\t1.2\t0\n\
1\ttinc\t-\tFAIL(setup rc=1)\n";
        let rows = parse_results(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].sys, "wgvx");
        assert_eq!(rows[1].streams, 4);
        assert_eq!(rows[0].rtt_p99_ms, Some(0.9));
        let r = to_results(&rows, 4, 5);
        assert_eq!(r.len(), 1);
        assert!((r[0].cpu_s_per_gbit_1.unwrap() - 6.4 / (0.45 * 5.0)).abs() < 1e-9);
    }
}
