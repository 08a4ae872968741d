//! Probes: ping RTT statistics, iperf3 throughput, daemon CPU time.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use slicenet_testbed::SiteHandle;

/// Ping RTT statistics in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct PingStats {
    /// Mean.
    pub avg_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Loss in percent.
    pub loss_percent: f64,
}

/// One ping with a 1 s timeout.
pub fn ping_once(site: &SiteHandle, dst: Ipv4Addr) -> bool {
    site.command("ping")
        .args(["-n", "-q", "-c", "1", "-W", "1"])
        .arg(dst.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `count` pings 10 ms apart, at scheduling priority `nice`.
pub fn ping(site: &SiteHandle, dst: Ipv4Addr, count: u32, nice: i32) -> anyhow::Result<PingStats> {
    let out = site
        .command("nice")
        .args(["-n", &nice.to_string(), "ping"])
        .args(["-n", "-c", &count.to_string(), "-i", "0.01", "-W", "1"])
        .arg(dst.to_string())
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("time="))
        .filter_map(|t| t.parse().ok())
        .collect();
    if rtts.is_empty() {
        bail!("no ping replies from {dst}: {text}");
    }
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| rtts[((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1];
    Ok(PingStats {
        avg_ms: rtts.iter().sum::<f64>() / rtts.len() as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        loss_percent: 100.0 * (1.0 - rtts.len() as f64 / f64::from(count)),
    })
}

/// An iperf3 server; killed on drop.
pub struct IperfServer(Child);

impl IperfServer {
    /// Starts `iperf3 -s` bound to `addr` inside `site` and waits until it listens.
    pub fn start(site: &SiteHandle, addr: Ipv4Addr, nice: i32) -> anyhow::Result<IperfServer> {
        let child = site
            .command("nice")
            .args(["-n", &nice.to_string(), "iperf3"])
            .args(["-s", "-B", &addr.to_string(), "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 (apt-get install iperf3)")?;
        let server = IperfServer(child);
        for _ in 0..50 {
            let out = site.command("ss").args(["-ltnH"]).output()?;
            if String::from_utf8_lossy(&out.stdout).contains(&format!("{addr}:5201")) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("iperf3 server did not start listening on {addr}:5201");
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, Copy)]
pub struct IperfResult {
    /// Received Gbit/s.
    pub gbps: f64,
    /// Seconds measured.
    pub seconds: f64,
    /// Sender retransmissions.
    pub retransmits: u64,
}

/// `iperf3 -c dst -B src -t secs -P streams` from `site` at priority `nice`.
pub fn iperf(
    site: &SiteHandle,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    secs: u32,
    streams: u32,
    nice: i32,
) -> anyhow::Result<IperfResult> {
    let out = site
        .command("nice")
        .args(["-n", &nice.to_string(), "timeout", &(secs + 20).to_string()])
        .args(["iperf3", "-J", "-p", "5201"])
        .args(["-c", &dst.to_string(), "-B", &src.to_string()])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
        .output()
        .context("running iperf3")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 failed: {}", json["error"]))?;
    Ok(IperfResult {
        gbps: bps / 1e9,
        seconds: end["sum_received"]["seconds"]
            .as_f64()
            .unwrap_or(f64::from(secs)),
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// User + system CPU seconds of the given processes (whole thread groups).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 of the whole line.
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / hz)
        })
        .sum()
}
