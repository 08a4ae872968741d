//! Scenario `noc`: global network monitoring from many vantage points.
//!
//! A probe appliance runs as a slice with one sliver at every site, plus a
//! target sliver at the first site serving HTTP (busybox httpd) and DNS
//! (dnsmasq). Every round, each probe pings the target and every other
//! probe, resolves the target's name, fetches its page and traces the route
//! to it; results become JSON lines with RIPE Atlas-like fields. After the
//! baseline rounds the scenario degrades one link with the testbed's link
//! emulator (added delay and loss), measures again, and the summary — a
//! probe site × target table against the baseline — names the degraded link
//! and the site whose users suffer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use slicenet_authority::api::{AddSlivers, NewEnclave, NewSlice, PlacementGroup, PlacementRequest};
use slicenet_authority::model::Resources;
use slicenet_testbed::LinkShape;

use super::appliances::{self, PROBE};
use super::guest;
use super::plot::{self, HeatMap};
use super::{
    drive, ensure_running, median, pause, unix_now, Outcome, Outputs, Phase, ScenarioFailure,
    Settings,
};
use crate::catalog;
use crate::cluster::{Cluster, PlacedSliver};
use crate::rtt::parse_ping;

/// Where the probe script lives in the guests.
const PROBE_SCRIPT_PATH: &str = "/run/slicenet-probe.sh";
/// The name the target's DNS server answers for.
pub const SERVICE_NAME: &str = "svc.noc.slicenet.test";

/// One measurement round of a probe, run inside the guest:
/// `probe.sh COUNT SERVICE_ADDR DNS_NAME [SITE=ADDR ...]`. Pings run in
/// parallel, then DNS, HTTP and traceroute one after another; every check's
/// raw output is printed between `#CHECK <name>` and `#END` lines.
const PROBE_SCRIPT: &str = r##"#!/bin/sh
# slicenet NOC probe: one measurement round (see experiments/src/scenarios/noc.rs).
count=$1; svc=$2; name=$3; shift 3
dir=/run/probe; rm -rf $dir; mkdir -p $dir
/usr/bin/ping -n -q -c "$count" -i 0.2 -W 1 "$svc" >$dir/ping.service 2>&1 &
for t in "$@"; do
  /usr/bin/ping -n -q -c "$count" -i 0.2 -W 1 "${t#*=}" >"$dir/ping.${t%%=*}" 2>&1 &
done
wait
timeout 5 drill @"$svc" "$name" A >$dir/dns 2>&1; echo "exit=$?" >>$dir/dns
curl -s -o /dev/null -m 5 -w 'code=%{http_code} connect=%{time_connect} ttfb=%{time_starttransfer} total=%{time_total}\n' "http://$svc/" >$dir/http 2>&1; echo "exit=$?" >>$dir/http
/usr/bin/traceroute.db -n -q 1 -w 1 -m 4 "$svc" >$dir/trace 2>&1
for f in $dir/*; do echo "#CHECK ${f##*/}"; cat "$f"; echo "#END"; done
"##;

/// A link to degrade between two sites.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// One end (site name).
    pub a: String,
    /// The other end (site name).
    pub b: String,
    /// One-way delay added on top of the link's WAN delay, in ms.
    pub extra_delay_ms: f64,
    /// Random loss per direction, in percent.
    pub loss_percent: f64,
}

/// What the NOC scenario does.
#[derive(Debug, Clone)]
pub struct NocConfig {
    /// Where and how.
    pub settings: Settings,
    /// Rounds before the fault.
    pub baseline_rounds: usize,
    /// Rounds with the fault.
    pub fault_rounds: usize,
    /// Time between the starts of two rounds (rounds never overlap).
    pub interval: Duration,
    /// Pings per target per round.
    pub pings: u32,
    /// The injected fault.
    pub fault: Fault,
}

impl NocConfig {
    /// The defaults: 3 + 3 rounds every 10 s (quick: 2 + 2 back to back),
    /// the link between the first and the last site degraded by 100 ms and
    /// 10 % loss.
    pub fn new(settings: Settings) -> NocConfig {
        let quick = settings.quick;
        let a = settings.sites[0].name.to_string();
        let b = settings.sites[settings.sites.len() - 1].name.to_string();
        NocConfig {
            settings,
            baseline_rounds: if quick { 2 } else { 3 },
            fault_rounds: if quick { 2 } else { 3 },
            interval: if quick {
                Duration::ZERO
            } else {
                Duration::from_secs(10)
            },
            pings: if quick { 4 } else { 5 },
            fault: Fault {
                a,
                b,
                extra_delay_ms: 100.0,
                loss_percent: 10.0,
            },
        }
    }
}

/// Before or during the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Every link as built.
    Baseline,
    /// One link degraded.
    Fault,
}

/// One traceroute hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// Hop number (TTL).
    pub hop: u32,
    /// Who answered (`None` = `*`).
    pub from: Option<Ipv4Addr>,
    /// Round-trip time in ms.
    pub rtt: Option<f64>,
}

/// The result of one check, tagged by `type` as in RIPE Atlas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Check {
    /// ICMP echo.
    Ping {
        /// Echo requests sent.
        sent: u32,
        /// Replies received.
        rcvd: u32,
        /// Lost share in percent.
        loss: f64,
        /// RTT minimum (ms).
        min: Option<f64>,
        /// RTT average (ms).
        avg: Option<f64>,
        /// RTT maximum (ms).
        max: Option<f64>,
    },
    /// A DNS A query to the target's server.
    Dns {
        /// Name asked for.
        name: String,
        /// Response code (NOERROR, NXDOMAIN, ...).
        rcode: Option<String>,
        /// Response time (ms).
        rt: Option<f64>,
        /// A records in the answer.
        answers: Vec<Ipv4Addr>,
    },
    /// An HTTP GET of the target's page.
    Http {
        /// Status code (0 = no response).
        res: u16,
        /// TCP connect time (ms).
        connect: Option<f64>,
        /// Time to first byte (ms).
        ttfb: Option<f64>,
        /// Total time (ms).
        rt: Option<f64>,
    },
    /// The route to the target.
    Traceroute {
        /// Hops in order.
        hops: Vec<Hop>,
    },
}

/// One measurement result (one JSON line of `noc.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Unix seconds at the start of the round.
    pub timestamp: f64,
    /// Round number (from 0).
    pub round: usize,
    /// Baseline or fault.
    pub period: Period,
    /// The probe's site.
    pub probe: String,
    /// The probe's id (its sliver id).
    pub prb_id: u64,
    /// The probe's enclave address.
    pub src_addr: Ipv4Addr,
    /// "service", or the site name of the probe measured.
    pub dst_name: String,
    /// Address measured.
    pub dst_addr: Ipv4Addr,
    /// "ok", "timeout" (nothing came back) or "error: ..." (the check could not run).
    pub status: String,
    /// The check and its result.
    #[serde(flatten)]
    pub result: Check,
}

impl ProbeRecord {
    /// The check's kind: "ping", "dns", "http" or "traceroute".
    pub fn kind(&self) -> &'static str {
        match self.result {
            Check::Ping { .. } => "ping",
            Check::Dns { .. } => "dns",
            Check::Http { .. } => "http",
            Check::Traceroute { .. } => "traceroute",
        }
    }

    /// The latency figure the summary compares (ping average, DNS and HTTP response time).
    pub fn latency_ms(&self) -> Option<f64> {
        match &self.result {
            Check::Ping { avg, .. } => *avg,
            Check::Dns { rt, .. } => *rt,
            Check::Http { rt, .. } => *rt,
            Check::Traceroute { .. } => None,
        }
    }
}

/// Parses drill's output: response code, query time, A answers.
pub fn parse_drill(text: &str) -> (Option<String>, Option<f64>, Vec<Ipv4Addr>) {
    let rcode = text
        .lines()
        .find(|l| l.contains("->>HEADER<<-"))
        .and_then(|l| l.split("rcode:").nth(1))
        .and_then(|r| r.split(',').next())
        .map(|r| r.trim().to_string());
    let rt = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(";; Query time:"))
        .and_then(|v| v.trim().trim_end_matches("msec").trim().parse().ok());
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if line.starts_with(";;") {
            in_answer = false;
        }
        if in_answer {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 5 && fields[2] == "IN" && fields[3] == "A" {
                if let Ok(addr) = fields[4].parse() {
                    answers.push(addr);
                }
            }
        }
    }
    (rcode, rt, answers)
}

/// Parses the probe's `curl -w` line: status code and connect, first-byte
/// and total times in ms.
pub fn parse_curl(text: &str) -> Option<(u16, f64, f64, f64)> {
    let line = text.lines().find(|l| l.starts_with("code="))?;
    let mut fields = BTreeMap::new();
    for part in line.split_whitespace() {
        let (k, v) = part.split_once('=')?;
        fields.insert(k, v);
    }
    let secs = |k: &str| -> Option<f64> { Some(fields.get(k)?.parse::<f64>().ok()? * 1000.0) };
    Some((
        fields.get("code")?.parse().ok()?,
        secs("connect")?,
        secs("ttfb")?,
        secs("total")?,
    ))
}

/// Parses `traceroute -n -q 1` output into hops.
pub fn parse_traceroute(text: &str) -> Vec<Hop> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let hop: u32 = fields.next()?.parse().ok()?;
            let who = fields.next()?;
            if who == "*" {
                return Some(Hop {
                    hop,
                    from: None,
                    rtt: None,
                });
            }
            let from = who.parse().ok()?;
            let rtt = fields.next().and_then(|v| v.parse().ok());
            Some(Hop {
                hop,
                from: Some(from),
                rtt,
            })
        })
        .collect()
}

/// The `exit=N` line the probe script appends after a command.
fn exit_status(text: &str) -> Option<i32> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("exit="))
        .and_then(|v| v.parse().ok())
}

/// Splits the probe script's output into its `#CHECK name` sections.
pub fn split_checks(output: &str) -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("#CHECK ") {
            current = Some((name.trim().to_string(), String::new()));
        } else if line == "#END" {
            if let Some((name, text)) = current.take() {
                sections.insert(name, text);
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections
}

/// Who a probe measures in one round.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    address: Ipv4Addr,
}

/// Turns one probe's round output into records (a missing or unreadable
/// section becomes a record with an error status, so gaps show).
fn records_of_round(
    output: &anyhow::Result<String>,
    probe: &PlacedSliver,
    service: &PlacedSliver,
    targets: &[Target],
    round: usize,
    period: Period,
    timestamp: f64,
) -> Vec<ProbeRecord> {
    let sections = match output {
        Ok(text) => split_checks(text),
        Err(_) => BTreeMap::new(),
    };
    let missing = |what: &str| match output {
        Ok(_) => format!("error: no {what} result in the probe's output"),
        Err(e) => format!("error: {e:#}"),
    };
    let record = |dst_name: &str, dst_addr: Ipv4Addr, status: String, result: Check| ProbeRecord {
        timestamp,
        round,
        period,
        probe: probe.site.clone(),
        prb_id: probe.id,
        src_addr: probe.address,
        dst_name: dst_name.to_string(),
        dst_addr,
        status,
        result,
    };
    let mut out = Vec::new();
    let ping_targets = std::iter::once(Target {
        name: "service".into(),
        address: service.address,
    })
    .chain(targets.iter().cloned());
    for t in ping_targets {
        let text = sections.get(&format!("ping.{}", t.name));
        let summary = text.and_then(|t| parse_ping(t));
        let (status, result) = match summary {
            Some(p) => (
                if p.received > 0 { "ok" } else { "timeout" }.to_string(),
                Check::Ping {
                    sent: p.transmitted,
                    rcvd: p.received,
                    loss: p.loss_percent(),
                    min: p.min_ms,
                    avg: p.avg_ms,
                    max: p.max_ms,
                },
            ),
            None => (
                text.map(|t| format!("error: {}", t.lines().next().unwrap_or("no output")))
                    .unwrap_or_else(|| missing("ping")),
                Check::Ping {
                    sent: 0,
                    rcvd: 0,
                    loss: 100.0,
                    min: None,
                    avg: None,
                    max: None,
                },
            ),
        };
        out.push(record(&t.name, t.address, status, result));
    }
    // DNS: answered with the target's own address, or not.
    let dns = sections.get("dns");
    let (rcode, rt, answers) = dns.map(|t| parse_drill(t)).unwrap_or_default();
    let dns_status = match (dns, &rcode) {
        (None, _) => missing("dns"),
        (Some(_), Some(code)) if code == "NOERROR" && answers.contains(&service.address) => {
            "ok".to_string()
        }
        (Some(_), Some(code)) => format!("error: rcode {code}, answers {answers:?}"),
        (Some(t), None) => match exit_status(t) {
            Some(124) | Some(143) => "timeout".to_string(),
            _ => format!("error: {}", t.lines().next().unwrap_or("no output")),
        },
    };
    out.push(record(
        "service",
        service.address,
        dns_status,
        Check::Dns {
            name: SERVICE_NAME.to_string(),
            rcode,
            rt,
            answers,
        },
    ));
    // HTTP.
    let http = sections.get("http");
    let parsed = http.and_then(|t| parse_curl(t));
    let (status, result) = match parsed {
        Some((code, connect, ttfb, total)) if code > 0 => (
            if code == 200 {
                "ok".to_string()
            } else {
                format!("error: HTTP {code}")
            },
            Check::Http {
                res: code,
                connect: Some(connect),
                ttfb: Some(ttfb),
                rt: Some(total),
            },
        ),
        _ => (
            match http.and_then(|t| exit_status(t)) {
                Some(28) => "timeout".to_string(),
                Some(code) => format!("error: curl exit {code}"),
                None => missing("http"),
            },
            Check::Http {
                res: 0,
                connect: None,
                ttfb: None,
                rt: None,
            },
        ),
    };
    out.push(record("service", service.address, status, result));
    // Traceroute.
    let trace = sections.get("trace");
    let hops = trace.map(|t| parse_traceroute(t)).unwrap_or_default();
    let reached = hops.iter().any(|h| h.from == Some(service.address));
    let status = match trace {
        None => missing("traceroute"),
        Some(_) if reached => "ok".to_string(),
        Some(_) => "timeout".to_string(),
    };
    out.push(record(
        "service",
        service.address,
        status,
        Check::Traceroute { hops },
    ));
    out
}

/// Statistics of one cell over one period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeriodStats {
    /// Results.
    pub samples: usize,
    /// Results with status ok.
    pub ok: usize,
    /// Median latency over the period's results (ms).
    pub median_ms: Option<f64>,
    /// Lost share of all pings in the period (ping cells only).
    pub loss_percent: Option<f64>,
}

/// One cell of the probe site × target table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Probe site.
    pub probe: String,
    /// "service" or a site name.
    pub target: String,
    /// "ping", "dns" or "http".
    pub check: String,
    /// The site the target stands at.
    pub target_site: String,
    /// Before the fault.
    pub baseline: PeriodStats,
    /// With the fault.
    pub fault: PeriodStats,
    /// Worse than the baseline by the rules of [`judge`].
    pub degraded: bool,
    /// Why it counts as degraded.
    pub why: Option<String>,
}

impl Cell {
    /// The table's column name of this cell.
    pub fn column(&self) -> String {
        if self.target == "service" {
            format!("svc {}", self.check)
        } else {
            self.target.clone()
        }
    }
}

fn stats(records: &[&ProbeRecord]) -> PeriodStats {
    let latencies: Vec<f64> = records.iter().filter_map(|r| r.latency_ms()).collect();
    let (sent, rcvd) = records
        .iter()
        .fold((0u32, 0u32), |(s, r), rec| match rec.result {
            Check::Ping { sent, rcvd, .. } => (s + sent, r + rcvd),
            _ => (s, r),
        });
    let is_ping = records.iter().any(|r| r.kind() == "ping");
    PeriodStats {
        samples: records.len(),
        ok: records.iter().filter(|r| r.status == "ok").count(),
        median_ms: median(&latencies),
        loss_percent: (is_ping && sent > 0)
            .then(|| 100.0 * f64::from(sent - rcvd.min(sent)) / f64::from(sent)),
    }
}

/// Latency a cell may gain on top of 1.5 × its baseline before it counts as degraded.
/// Guests run under software emulation here, and on a loaded host a healthy path's
/// median over a few pings was seen to double (24 ms to 57 ms); an injected fault
/// adds well over 100 ms.
pub const LATENCY_SLACK_MS: f64 = 50.0;

/// Whether a cell got worse than its baseline, and why: checks that now
/// fail, ping loss up by 20 points or more, or the median latency above
/// 1.5 × baseline + [`LATENCY_SLACK_MS`].
pub fn judge(baseline: &PeriodStats, fault: &PeriodStats) -> Option<String> {
    if fault.samples == 0 || baseline.samples == 0 {
        return None;
    }
    let mut why = Vec::new();
    let share = |s: &PeriodStats| s.ok as f64 / s.samples as f64;
    if share(fault) < share(baseline) - 0.34 {
        why.push(format!(
            "{} of {} checks failed (baseline {} of {})",
            fault.samples - fault.ok,
            fault.samples,
            baseline.samples - baseline.ok,
            baseline.samples
        ));
    }
    if let (Some(b), Some(f)) = (baseline.loss_percent, fault.loss_percent) {
        if f - b >= 20.0 {
            why.push(format!("loss {f:.0} % (baseline {b:.0} %)"));
        }
    }
    if let (Some(b), Some(f)) = (baseline.median_ms, fault.median_ms) {
        if f > b * 1.5 + LATENCY_SLACK_MS {
            why.push(format!("{f:.1} ms (baseline {b:.1} ms, +{:.1})", f - b));
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Builds the table's cells from all records.
pub fn summarize(records: &[ProbeRecord], service_site: &str) -> Vec<Cell> {
    // (probe, target, check) -> (baseline records, fault records)
    type Key = (String, String, String);
    let mut groups: BTreeMap<Key, [Vec<&ProbeRecord>; 2]> = BTreeMap::new();
    for r in records.iter().filter(|r| r.kind() != "traceroute") {
        let entry = groups
            .entry((r.probe.clone(), r.dst_name.clone(), r.kind().to_string()))
            .or_default();
        match r.period {
            Period::Baseline => entry[0].push(r),
            Period::Fault => entry[1].push(r),
        }
    }
    groups
        .into_iter()
        .map(|((probe, target, check), [base, fault])| {
            let baseline = stats(&base);
            let fault = stats(&fault);
            let why = judge(&baseline, &fault);
            Cell {
                target_site: if target == "service" {
                    service_site.to_string()
                } else {
                    target.clone()
                },
                probe,
                target,
                check,
                baseline,
                fault,
                degraded: why.is_some(),
                why,
            }
        })
        .collect()
}

/// What the summary concludes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Degraded cells as "probe -> target (check): why".
    pub degraded_cells: Vec<String>,
    /// Links (site pairs, sorted) on which at least half of the cells degraded.
    pub degraded_links: Vec<(String, String)>,
    /// The site whose users suffer, when one can be named.
    pub problem_site: Option<String>,
    /// One sentence for people.
    pub verdict: String,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// Locates the problem from the cells: which site-to-site paths degraded,
/// and which site they point at.
pub fn diagnose(cells: &[Cell], service_site: &str) -> Diagnosis {
    let degraded: Vec<&Cell> = cells.iter().filter(|c| c.degraded).collect();
    let degraded_cells = degraded
        .iter()
        .map(|c| {
            format!(
                "{} -> {} ({}): {}",
                c.probe,
                c.target,
                c.check,
                c.why.as_deref().unwrap_or("")
            )
        })
        .collect();
    // Cells per path between two different sites; local cells (a probe
    // measuring the service at its own site) stay out of link evidence.
    let mut per_link: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let mut local_problem: Vec<String> = Vec::new();
    for c in cells {
        if c.probe == c.target_site {
            if c.degraded {
                local_problem.push(c.probe.clone());
            }
            continue;
        }
        let entry = per_link.entry(link(&c.probe, &c.target_site)).or_default();
        entry.1 += 1;
        if c.degraded {
            entry.0 += 1;
        }
    }
    let degraded_links: Vec<(String, String)> = per_link
        .iter()
        .filter(|(_, (bad, total))| *bad > 0 && 2 * bad >= *total)
        .map(|(l, _)| l.clone())
        .collect();
    let mut sites: Vec<&str> = degraded_links
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    sites.sort();
    sites.dedup();
    let common: Vec<&str> = sites
        .iter()
        .copied()
        .filter(|s| degraded_links.iter().all(|(a, b)| a == s || b == s))
        .collect();
    let (problem_site, verdict) = match (degraded_links.len(), common.as_slice()) {
        (0, _) if local_problem.is_empty() => (
            None,
            "every path is as healthy as in the baseline".to_string(),
        ),
        (0, _) => (
            Some(service_site.to_string()),
            format!("the service at {service_site} is degraded even from its own site: the service itself is the problem"),
        ),
        (1, _) => {
            let (a, b) = &degraded_links[0];
            if a == service_site || b == service_site {
                let other = if a == service_site { b } else { a };
                (
                    Some(other.clone()),
                    format!(
                        "problem site {other}: only the probe at {other} sees the service (at {service_site}) degraded, \
                         and {other} reaches the other sites as before, so the fault is on the {other}–{service_site} link"
                    ),
                )
            } else {
                (
                    None,
                    format!("the {a}–{b} link is degraded; the service is healthy from every probe"),
                )
            }
        }
        (_, [site]) => (
            Some(site.to_string()),
            format!(
                "problem site {site}: every degraded path ({}) involves {site}",
                degraded_links
                    .iter()
                    .map(|(a, b)| format!("{a}–{b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        _ => (
            None,
            format!(
                "several unrelated paths are degraded: {}",
                degraded_links
                    .iter()
                    .map(|(a, b)| format!("{a}–{b}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    };
    Diagnosis {
        degraded_cells,
        degraded_links,
        problem_site,
        verdict,
    }
}

/// The service the probes measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Its site.
    pub site: String,
    /// Its sliver.
    pub sliver: u64,
    /// Its enclave address.
    pub address: Ipv4Addr,
    /// The name its DNS server answers for.
    pub dns_name: String,
}

/// One probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Its site.
    pub site: String,
    /// Its sliver (the probe id in the records).
    pub sliver: u64,
    /// Its enclave address.
    pub address: Ipv4Addr,
}

/// What the NOC scenario measured and concluded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NocReport {
    /// Testbed sites in order.
    pub sites: Vec<String>,
    /// The measured service.
    pub service: ServiceInfo,
    /// The probes.
    pub probes: Vec<ProbeInfo>,
    /// The injected fault.
    pub fault: Fault,
    /// Seconds from VM start to ready, per guest.
    pub boot_seconds: Vec<f64>,
    /// Rounds run (baseline + fault).
    pub rounds: usize,
    /// The table.
    pub cells: Vec<Cell>,
    /// The conclusion.
    pub diagnosis: Diagnosis,
    /// Files written.
    pub files: Vec<String>,
    /// Every result (also in `noc.jsonl`).
    #[serde(skip)]
    pub records: Vec<ProbeRecord>,
}

/// Formats one period of the table: rows probe sites, columns targets.
pub fn format_table(cells: &[Cell], period: Period, sites: &[String]) -> String {
    let mut columns: Vec<String> = vec!["svc ping".into(), "svc dns".into(), "svc http".into()];
    columns.extend(sites.iter().cloned());
    let mut out = format!("{:<8}", "probe");
    for c in &columns {
        out.push_str(&format!("{c:>13}"));
    }
    out.push('\n');
    for probe in sites {
        out.push_str(&format!("{probe:<8}"));
        for col in &columns {
            let cell = cells
                .iter()
                .find(|c| &c.probe == probe && &c.column() == col);
            let text = match cell {
                None => "-".to_string(),
                Some(c) => {
                    let s = match period {
                        Period::Baseline => &c.baseline,
                        Period::Fault => &c.fault,
                    };
                    let mut t = match s.median_ms {
                        Some(ms) if s.ok > 0 => format!("{ms:.1}"),
                        _ if s.samples == 0 => "-".into(),
                        _ => "fail".into(),
                    };
                    if let Some(loss) = s.loss_percent.filter(|l| *l > 0.0) {
                        t.push_str(&format!("/{loss:.0}%"));
                    }
                    if period == Period::Fault && c.degraded {
                        t.push('!');
                    }
                    t
                }
            };
            out.push_str(&format!("{text:>13}"));
        }
        out.push('\n');
    }
    out
}

fn heat_panel(cells: &[Cell], period: Period, sites: &[String], title: &str) -> HeatMap {
    let mut cols: Vec<String> = vec!["svc ping".into(), "svc dns".into(), "svc http".into()];
    cols.extend(sites.iter().cloned());
    let mut values = vec![vec![None; cols.len()]; sites.len()];
    let mut marked = Vec::new();
    for (i, probe) in sites.iter().enumerate() {
        for (j, col) in cols.iter().enumerate() {
            if let Some(c) = cells
                .iter()
                .find(|c| &c.probe == probe && &c.column() == col)
            {
                let s = match period {
                    Period::Baseline => &c.baseline,
                    Period::Fault => &c.fault,
                };
                values[i][j] = s.median_ms.filter(|_| s.ok > 0);
                if period == Period::Fault && c.degraded {
                    marked.push((i, j));
                }
            }
        }
    }
    HeatMap {
        title: title.to_string(),
        rows: sites.to_vec(),
        cols,
        values,
        unit: "ms".into(),
        marked,
        missing: "-".into(),
        integers: false,
    }
}

fn create_slice(
    cluster: &Cluster,
    settings: &Settings,
    appliance: slicenet_authority::model::Appliance,
) -> anyhow::Result<(Vec<PlacedSliver>, PlacedSliver)> {
    let slice = format!("{}_noc", settings.sites[0].name);
    let resources = Resources {
        vcpus: 1,
        memory_mib: 256,
        disk_gib: 1,
        bandwidth_mbps: 100,
    };
    let probes = NewSlice {
        name: slice.clone(),
        description: "NOC probes: one per site, measuring a service and each other".into(),
        lease_secs: None,
        members: vec![],
        placement: Some(PlacementRequest {
            groups: settings
                .sites
                .iter()
                .map(|s| PlacementGroup {
                    count: 1,
                    sites: vec![s.name.to_string()],
                    ..Default::default()
                })
                .collect(),
            resources: Some(resources),
            appliance: Some(appliance.clone()),
            ..Default::default()
        }),
        dry_run: false,
    };
    let target = AddSlivers {
        placement: PlacementRequest {
            groups: vec![PlacementGroup {
                count: 1,
                sites: vec![settings.sites[0].name.to_string()],
                ..Default::default()
            }],
            resources: Some(resources),
            appliance: Some(appliance),
            ..Default::default()
        },
        dry_run: false,
    };
    let admin = cluster.admin();
    let (slivers, target_id, enclave) = cluster.run(async move {
        let reply = admin.create_slice(&probes).await?;
        let probe_ids: Vec<u64> = reply
            .slice
            .context("the authority created no slice")?
            .slivers
            .iter()
            .map(|s| s.id)
            .collect();
        let reply = admin.add_slivers(&slice, &target).await?;
        let all = reply.slice.context("no slice in the reply")?.slivers;
        let target_id = all
            .iter()
            .map(|s| s.id)
            .find(|id| !probe_ids.contains(id))
            .context("the target sliver was not placed")?;
        let enclave = admin
            .create_enclave(
                &slice,
                &NewEnclave {
                    name: "noc".into(),
                    slivers: all.iter().map(|s| s.id).collect(),
                    subnet: None,
                },
            )
            .await?;
        anyhow::Ok((all, target_id, enclave))
    })?;
    let placed = guest::placed(&slivers, &enclave);
    let service = placed
        .iter()
        .find(|s| s.id == target_id)
        .cloned()
        .context("the target is not on the enclave")?;
    // Probes in site order.
    let probes = settings
        .sites
        .iter()
        .filter_map(|site| {
            placed
                .iter()
                .find(|s| s.site == site.name && s.id != target_id)
                .cloned()
        })
        .collect::<Vec<_>>();
    anyhow::ensure!(
        probes.len() == settings.sites.len(),
        "expected one probe per site, the authority placed {probes:?}"
    );
    Ok((probes, service))
}

/// Starts the target's HTTP and DNS servers and checks both answer locally.
fn start_service(cluster: &Cluster, service: &PlacedSliver) -> anyhow::Result<()> {
    let addr = service.address;
    let command = format!(
        "mkdir -p /www && echo 'slicenet NOC target' >/www/index.html && httpd -p 80 -h /www && \
         dnsmasq --no-resolv --no-hosts --user=root --group=root --pid-file= --listen-address={addr} \
         --bind-interfaces --address=/{SERVICE_NAME}/{addr} --log-facility=/dev/null && \
         drill @{addr} {SERVICE_NAME} A | grep -c '{addr}' && curl -s http://{addr}/"
    );
    let out = guest::exec(cluster, service, &command, Duration::from_secs(30))?;
    anyhow::ensure!(
        out.contains("slicenet NOC target"),
        "the target's HTTP server did not answer: {out}"
    );
    Ok(())
}

/// Runs every probe's round at once and returns the records.
fn run_round(
    cluster: &Cluster,
    probes: &[PlacedSliver],
    service: &PlacedSliver,
    pings: u32,
    round: usize,
    period: Period,
) -> Vec<ProbeRecord> {
    let timestamp = unix_now();
    let mut jobs = Vec::new();
    let mut target_lists = Vec::new();
    for p in probes {
        let targets: Vec<Target> = probes
            .iter()
            .filter(|q| q.id != p.id)
            .map(|q| Target {
                name: q.site.clone(),
                address: q.address,
            })
            .collect();
        let args: Vec<String> = targets
            .iter()
            .map(|t| format!("{}={}", t.name, t.address))
            .collect();
        jobs.push((
            p.clone(),
            format!(
                "sh {PROBE_SCRIPT_PATH} {pings} {} {SERVICE_NAME} {}",
                service.address,
                args.join(" ")
            ),
        ));
        target_lists.push(targets);
    }
    let outputs = guest::exec_all(cluster, &jobs, Duration::from_secs(60));
    probes
        .iter()
        .zip(&outputs)
        .zip(&target_lists)
        .flat_map(|((p, out), targets)| {
            records_of_round(out, p, service, targets, round, period, timestamp)
        })
        .collect()
}

/// Runs the NOC scenario; see the module documentation.
pub fn run(config: &NocConfig) -> Result<Outcome<NocReport>, Box<ScenarioFailure>> {
    let settings = &config.settings;
    drive("noc", settings, |progress, deployment| {
        let (a, _) = settings.site(&config.fault.a)?;
        let (b, _) = settings.site(&config.fault.b)?;
        anyhow::ensure!(a != b, "the fault needs two different sites");
        let outputs = Outputs::create(&settings.out_dir)?;
        progress.note(&format!(
            "building the {} appliance ({})",
            PROBE.name, PROBE.purpose
        ));
        let probe_app = appliances::build(PROBE, &mut |l| progress.note(&format!("  {l}")))?;
        progress.note(&format!(
            "  {} ({:.1} MB initramfs)",
            probe_app.dir.display(),
            probe_app.initrd_bytes as f64 / 1e6
        ));
        let cluster =
            deployment.start(settings, true, vec![probe_app.search_dir.clone()], progress)?;

        progress.enter(
            Phase::Boot,
            "slice with a probe at every site and a target at the first; one enclave",
        );
        let (probes, service) = create_slice(cluster, settings, probe_app.appliance.clone())?;
        let mut all = probes.clone();
        all.push(service.clone());
        let boot_seconds =
            cluster.wait_ready(&all, Duration::from_secs(300), &mut |l| progress.note(l))?;
        guest::wait_connected(cluster, &all, Duration::from_secs(60))?;
        start_service(cluster, &service)?;
        guest::write_file_all(cluster, &probes, PROBE_SCRIPT_PATH, PROBE_SCRIPT)?;
        // One unrecorded round resolves every neighbour across the WAN (ARP)
        // and lets the guests finish settling, so the baseline measures paths.
        run_round(cluster, &probes, &service, 2, 0, Period::Baseline);
        progress.note(&format!(
            "enclave connected; target {} at {} serves http://{} and DNS for {SERVICE_NAME}",
            service.id, service.site, service.address
        ));

        progress.enter(
            Phase::Measure,
            &format!(
                "{} baseline rounds, then {} rounds with the {}–{} link degraded (+{} ms, {} % loss)",
                config.baseline_rounds,
                config.fault_rounds,
                config.fault.a,
                config.fault.b,
                config.fault.extra_delay_ms,
                config.fault.loss_percent
            ),
        );
        let mut records = Vec::new();
        let total = config.baseline_rounds + config.fault_rounds;
        let started = Instant::now();
        for round in 0..total {
            let period = if round < config.baseline_rounds {
                Period::Baseline
            } else {
                Period::Fault
            };
            if round == config.baseline_rounds {
                let base = if settings.delay_scale > 0.0 {
                    catalog::one_way_delay_ms(
                        &settings.sites[a - 1],
                        &settings.sites[b - 1],
                        settings.delay_scale,
                    )
                } else {
                    0.0
                };
                cluster.bed.set_link_shape(
                    a,
                    b,
                    LinkShape {
                        delay_ms: base + config.fault.extra_delay_ms,
                        loss_percent: config.fault.loss_percent,
                        ..Default::default()
                    },
                )?;
                progress.note(&format!(
                    "fault injected: {}–{} one-way delay {:.1} -> {:.1} ms, loss {} %",
                    config.fault.a,
                    config.fault.b,
                    base,
                    base + config.fault.extra_delay_ms,
                    config.fault.loss_percent
                ));
            }
            let due = started + config.interval * round as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                pause(wait)?;
            }
            ensure_running()?;
            let batch = run_round(cluster, &probes, &service, config.pings, round, period);
            let ok = batch.iter().filter(|r| r.status == "ok").count();
            progress.note(&format!(
                "round {round} ({period:?}): {ok} of {} checks ok",
                batch.len()
            ));
            records.extend(batch);
        }

        let sites: Vec<String> = settings.sites.iter().map(|s| s.name.to_string()).collect();
        let cells = summarize(&records, &service.site);
        let diagnosis = diagnose(&cells, &service.site);
        let mut files = Vec::new();
        files.push(outputs.json_lines("noc.jsonl", &records)?);
        let png = outputs.path("noc.png");
        plot::heat_maps(
            &png,
            &format!(
                "NOC probes: median latency per probe site and target ({}–{} degraded in the fault period)",
                config.fault.a, config.fault.b
            ),
            &[
                heat_panel(&cells, Period::Baseline, &sites, "baseline"),
                heat_panel(&cells, Period::Fault, &sites, "fault (red: degraded)"),
            ],
        )?;
        files.push(png);
        let report = NocReport {
            sites: sites.clone(),
            service: ServiceInfo {
                site: service.site.clone(),
                sliver: service.id,
                address: service.address,
                dns_name: SERVICE_NAME.to_string(),
            },
            probes: probes
                .iter()
                .map(|p| ProbeInfo {
                    site: p.site.clone(),
                    sliver: p.id,
                    address: p.address,
                })
                .collect(),
            fault: config.fault.clone(),
            boot_seconds,
            rounds: total,
            cells,
            diagnosis,
            files: files.iter().map(|f| f.display().to_string()).collect(),
            records,
        };
        print_report(&report);
        Ok(report)
    })
}

/// Prints the tables and the verdict.
pub fn print_report(report: &NocReport) {
    println!(
        "\nNOC probes at {}; target service {} at {} (sliver {}); median ms (/loss), ! = degraded vs baseline",
        report.sites.join(", "),
        report.service.address,
        report.service.site,
        report.service.sliver
    );
    println!("\nbaseline");
    print!(
        "{}",
        format_table(&report.cells, Period::Baseline, &report.sites)
    );
    println!(
        "\nfault: {}–{} +{} ms one way, {} % loss",
        report.fault.a, report.fault.b, report.fault.extra_delay_ms, report.fault.loss_percent
    );
    print!(
        "{}",
        format_table(&report.cells, Period::Fault, &report.sites)
    );
    println!();
    for line in &report.diagnosis.degraded_cells {
        println!("degraded: {line}");
    }
    println!("verdict: {}", report.diagnosis.verdict);
    for f in &report.files {
        println!("wrote {f}");
    }
}

/// Writes the summary (report, phase times, teardown) next to the results.
pub fn write_summary(
    outcome: &Outcome<NocReport>,
    out_dir: &std::path::Path,
) -> anyhow::Result<()> {
    outcome.write_summary("noc", out_dir, "noc-summary.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRILL_OK: &str = ";; ->>HEADER<<- opcode: QUERY, rcode: NOERROR, id: 54311\n;; flags: qr aa rd ra ; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 0 \n;; QUESTION SECTION:\n;; svc.noc.slicenet.test.\tIN\tA\n\n;; ANSWER SECTION:\nsvc.noc.slicenet.test.\t0\tIN\tA\t198.19.1.5\n\n;; AUTHORITY SECTION:\n\n;; ADDITIONAL SECTION:\n\n;; Query time: 27 msec\n;; SERVER: 198.19.1.5\n;; WHEN: Sun Nov 22 02:07:25 2026\n;; MSG SIZE  rcvd: 46\nexit=0\n";

    #[test]
    fn drill_answers_are_parsed() {
        let (rcode, rt, answers) = parse_drill(DRILL_OK);
        assert_eq!(rcode.as_deref(), Some("NOERROR"));
        assert_eq!(rt, Some(27.0));
        assert_eq!(answers, vec![Ipv4Addr::new(198, 19, 1, 5)]);
        let (rcode, rt, answers) = parse_drill(
            "Error: error sending query: Could not send or receive, because of network error\nexit=1\n",
        );
        assert_eq!((rcode, rt, answers.len()), (None, None, 0));
    }

    #[test]
    fn curl_write_out_is_parsed_in_milliseconds() {
        let out = "code=200 connect=0.031150 ttfb=0.045080 total=0.055416\nexit=0\n";
        let (code, connect, ttfb, total) = parse_curl(out).unwrap();
        assert_eq!(code, 200);
        assert!((connect - 31.15).abs() < 1e-9);
        assert!((ttfb - 45.08).abs() < 1e-9);
        assert!((total - 55.416).abs() < 1e-9);
        assert_eq!(parse_curl("curl: (28) timeout\nexit=28\n"), None);
        assert_eq!(exit_status("x\nexit=28\n"), Some(28));
    }

    #[test]
    fn traceroute_hops_and_stars_are_parsed() {
        let out = "traceroute to 198.19.1.5 (198.19.1.5), 4 hops max, 60 byte packets\n 1  198.19.1.5  0.663 ms\n 2  *\n";
        let hops = parse_traceroute(out);
        assert_eq!(
            hops,
            vec![
                Hop {
                    hop: 1,
                    from: Some(Ipv4Addr::new(198, 19, 1, 5)),
                    rtt: Some(0.663)
                },
                Hop {
                    hop: 2,
                    from: None,
                    rtt: None
                }
            ]
        );
    }

    #[test]
    fn probe_output_sections_are_split_by_check() {
        let out = "sh /run/x.sh 4 198.19.1.5\r\n#CHECK dns\r\nline one\r\n#END\r\n#CHECK ping.service\r\n3 packets transmitted, 3 received\r\n#END\r\n";
        let s = split_checks(out);
        assert_eq!(s.len(), 2);
        assert_eq!(s["dns"], "line one\n");
        assert!(s["ping.service"].contains("3 received"));
    }

    fn sliver(id: u64, site: &str, last: u8) -> PlacedSliver {
        PlacedSliver {
            id,
            node: format!("{site}-n1"),
            site: site.into(),
            address: Ipv4Addr::new(198, 19, 1, last),
        }
    }

    #[test]
    fn a_round_becomes_one_record_per_check_and_errors_stay_visible() {
        let probe = sliver(2, "iad", 3);
        let service = sliver(4, "ams", 5);
        let targets = vec![Target {
            name: "nrt".into(),
            address: Ipv4Addr::new(198, 19, 1, 4),
        }];
        let out = format!(
            "#CHECK ping.service\n4 packets transmitted, 4 received, 0% packet loss, time 600ms\nrtt min/avg/max/mdev = 80.1/80.2/80.4/0.1 ms\n#END\n\
             #CHECK ping.nrt\n4 packets transmitted, 0 received, 100% packet loss, time 3000ms\n#END\n\
             #CHECK dns\n{DRILL_OK}#END\n#CHECK http\ncode=200 connect=0.08 ttfb=0.16 total=0.17\nexit=0\n#END\n\
             #CHECK trace\n 1  198.19.1.5  80.1 ms\n#END\n"
        );
        let recs = records_of_round(&Ok(out), &probe, &service, &targets, 3, Period::Fault, 1.5);
        assert_eq!(recs.len(), 5);
        let status: Vec<(&str, &str, &str)> = recs
            .iter()
            .map(|r| (r.kind(), r.dst_name.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(
            status,
            vec![
                ("ping", "service", "ok"),
                ("ping", "nrt", "timeout"),
                ("dns", "service", "ok"),
                ("http", "service", "ok"),
                ("traceroute", "service", "ok"),
            ]
        );
        assert_eq!(recs[0].latency_ms(), Some(80.2));
        let json = serde_json::to_value(&recs[3]).unwrap();
        assert_eq!(json["type"], "http");
        assert_eq!(json["res"], 200);
        assert_eq!(json["probe"], "iad");
        assert_eq!(json["period"], "fault");
        let back: ProbeRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, recs[3]);

        let failed = records_of_round(
            &Err(anyhow::anyhow!("console timed out")),
            &probe,
            &service,
            &targets,
            0,
            Period::Baseline,
            1.0,
        );
        assert_eq!(failed.len(), 5);
        assert!(failed
            .iter()
            .all(|r| r.status.contains("console timed out")));
    }

    fn ping(probe: &str, dst: &str, period: Period, avg: f64, rcvd: u32) -> ProbeRecord {
        ProbeRecord {
            timestamp: 0.0,
            round: 0,
            period,
            probe: probe.into(),
            prb_id: 1,
            src_addr: Ipv4Addr::new(198, 19, 1, 2),
            dst_name: dst.into(),
            dst_addr: Ipv4Addr::new(198, 19, 1, 3),
            status: if rcvd > 0 { "ok" } else { "timeout" }.into(),
            result: Check::Ping {
                sent: 5,
                rcvd,
                loss: 100.0 * f64::from(5 - rcvd) / 5.0,
                min: None,
                avg: (rcvd > 0).then_some(avg),
                max: None,
            },
        }
    }

    /// Three sites, the service at ams; `bad` lists degraded (probe, target).
    fn world(bad: &[(&str, &str)]) -> Vec<ProbeRecord> {
        let sites = ["ams", "iad", "nrt"];
        let base = |a: &str, b: &str| {
            fn site(t: &str) -> &str {
                if t == "service" {
                    "ams"
                } else {
                    t
                }
            }
            match link(a, site(b)) {
                (x, y) if x == y => 0.5,
                (x, y) if (x.as_str(), y.as_str()) == ("ams", "iad") => 80.0,
                (x, y) if (x.as_str(), y.as_str()) == ("ams", "nrt") => 140.0,
                _ => 150.0,
            }
        };
        let mut out = Vec::new();
        for p in sites {
            let targets: Vec<&str> = std::iter::once("service")
                .chain(sites.iter().copied().filter(|s| *s != p))
                .collect();
            for t in targets {
                for _ in 0..2 {
                    out.push(ping(p, t, Period::Baseline, base(p, t) + 1.0, 5));
                    let extra = if bad.contains(&(p, t)) { 200.0 } else { 2.0 };
                    out.push(ping(p, t, Period::Fault, base(p, t) + extra, 5));
                }
            }
        }
        out
    }

    #[test]
    fn a_link_to_the_service_site_points_at_the_far_site() {
        let records = world(&[("nrt", "service"), ("nrt", "ams"), ("ams", "nrt")]);
        let cells = summarize(&records, "ams");
        let d = diagnose(&cells, "ams");
        assert_eq!(
            d.degraded_links,
            vec![("ams".to_string(), "nrt".to_string())]
        );
        assert_eq!(d.problem_site.as_deref(), Some("nrt"));
        assert_eq!(d.degraded_cells.len(), 3, "{:?}", d.degraded_cells);
        assert!(d.verdict.contains("nrt–ams link"), "{}", d.verdict);
    }

    #[test]
    fn a_link_between_two_probe_sites_names_no_problem_site() {
        let records = world(&[("iad", "nrt"), ("nrt", "iad")]);
        let d = diagnose(&summarize(&records, "ams"), "ams");
        assert_eq!(
            d.degraded_links,
            vec![("iad".to_string(), "nrt".to_string())]
        );
        assert_eq!(d.problem_site, None);
        assert!(d.verdict.contains("service is healthy"), "{}", d.verdict);
    }

    #[test]
    fn every_link_of_one_site_points_at_that_site() {
        let records = world(&[
            ("nrt", "service"),
            ("nrt", "ams"),
            ("ams", "nrt"),
            ("nrt", "iad"),
            ("iad", "nrt"),
        ]);
        let d = diagnose(&summarize(&records, "ams"), "ams");
        assert_eq!(d.degraded_links.len(), 2);
        assert_eq!(d.problem_site.as_deref(), Some("nrt"));
    }

    #[test]
    fn jitter_within_the_margin_is_not_a_fault() {
        let d = diagnose(&summarize(&world(&[]), "ams"), "ams");
        assert!(d.degraded_cells.is_empty());
        assert_eq!(d.problem_site, None);
        let base = PeriodStats {
            samples: 3,
            ok: 3,
            median_ms: Some(10.0),
            loss_percent: Some(0.0),
        };
        let slightly_worse = PeriodStats {
            median_ms: Some(30.0),
            loss_percent: Some(6.7),
            ..base.clone()
        };
        assert_eq!(judge(&base, &slightly_worse), None);
        let healthy_on_a_busy_host = PeriodStats {
            median_ms: Some(57.0),
            ..base.clone()
        };
        let healthy_base = PeriodStats {
            median_ms: Some(24.3),
            ..base.clone()
        };
        assert_eq!(judge(&healthy_base, &healthy_on_a_busy_host), None);
        let slower_by_a_fault = PeriodStats {
            median_ms: Some(24.3 + 150.0),
            ..base.clone()
        };
        assert!(judge(&healthy_base, &slower_by_a_fault)
            .unwrap()
            .contains("+150.0"));
        let lossy = PeriodStats {
            loss_percent: Some(40.0),
            ..base.clone()
        };
        assert!(judge(&base, &lossy).unwrap().contains("loss 40"));
        let failing = PeriodStats {
            ok: 1,
            ..base.clone()
        };
        assert!(judge(&base, &failing)
            .unwrap()
            .contains("2 of 3 checks failed"));
    }

    #[test]
    fn the_table_marks_degraded_cells() {
        let records = world(&[("nrt", "service"), ("nrt", "ams"), ("ams", "nrt")]);
        let cells = summarize(&records, "ams");
        let sites: Vec<String> = ["ams", "iad", "nrt"].map(String::from).to_vec();
        let table = format_table(&cells, Period::Fault, &sites);
        let nrt_row = table.lines().find(|l| l.starts_with("nrt")).unwrap();
        assert!(nrt_row.contains("340.0!"), "{table}");
        let iad_row = table.lines().find(|l| l.starts_with("iad")).unwrap();
        assert!(!iad_row.contains('!'), "{table}");
    }
}
