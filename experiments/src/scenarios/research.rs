//! Scenario `research`: a researcher's slice at chosen locations.
//!
//! Rita, PI at the first site, asks the authority for "one sliver in each
//! region" (one placement group per region, anti-affinity by site) running
//! an iperf3 appliance, joins them in an enclave, and runs an experiment
//! inside it: a ping matrix between all slivers and iperf3 between every
//! pair. The results are saved together with the slice description (the
//! placement request, appliance recipe, lease and experiment parameters) in
//! `research.json`, which `--repeat research.json` takes back to run the
//! same experiment again and compare. The lease is renewed twice — once
//! asking for a year (the authority caps it and says so), once for a short
//! wrap-up period — and then left to expire; the scenario shows the slice
//! and its slivers reclaimed and the nodes' capacity returned.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use slicenet_authority::api::{
    AntiAffinity, NewEnclave, NewPrincipal, NewSlice, PlacementGroup, PlacementRequest, RenewReply,
    Role, SiteRole,
};
use slicenet_authority::client::Client;
use slicenet_authority::keys::{self, PublicKey};
use slicenet_authority::model::Resources;

use super::appliances::{self, IPERF};
use super::guest;
use super::noc::split_checks;
use super::plot::{self, HeatMap};
use super::{
    drive, ensure_running, median, unix_now, Outcome, Outputs, Phase, PhaseTimes, ScenarioFailure,
    Settings, TeardownReport,
};
use crate::catalog;
use crate::cluster::{Cluster, PlacedSliver};
use crate::rtt::parse_ping;

const PING_SCRIPT_PATH: &str = "/run/slicenet-pings.sh";

/// Pings every address given at once: `pings.sh COUNT ADDR...`; each
/// result between `#CHECK <addr>` and `#END`.
const PING_SCRIPT: &str = r##"#!/bin/sh
# slicenet research ping matrix row (see experiments/src/scenarios/research.rs).
n=$1; shift
dir=/run/pings; rm -rf $dir; mkdir -p $dir
for a in "$@"; do /usr/bin/ping -n -q -c "$n" -i 0.2 -W 1 "$a" >"$dir/$a" 2>&1 & done
wait
for f in $dir/*; do echo "#CHECK ${f##*/}"; cat "$f"; echo "#END"; done
"##;

/// The appliance of a research run, by recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplianceRecipe {
    /// Appliance name.
    pub name: String,
    /// Extra Debian packages.
    pub packages: Vec<String>,
}

/// Everything needed to run the experiment again: the slice description
/// and the experiment's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResearchSpec {
    /// Testbed size (sites, in catalog order).
    pub sites: usize,
    /// WAN delay scale of the testbed.
    pub delay_scale: f64,
    /// Slice name.
    pub slice: String,
    /// Slice description.
    pub description: String,
    /// Where the slivers go (the authority's placement request).
    pub placement: PlacementRequest,
    /// What they run.
    pub appliance: ApplianceRecipe,
    /// Lease asked for at creation, in seconds.
    pub lease_secs: u64,
    /// The short renewal after the experiment, in seconds; the slice expires then.
    pub wrap_up_secs: u64,
    /// Pings per pair.
    pub pings: u32,
    /// Seconds of each iperf3 run.
    pub iperf_seconds: u32,
}

impl ResearchSpec {
    /// "One sliver per region" over the testbed's sites.
    pub fn one_per_region(settings: &Settings) -> ResearchSpec {
        let mut regions: Vec<&str> = Vec::new();
        for s in &settings.sites {
            if !regions.contains(&s.region) {
                regions.push(s.region);
            }
        }
        ResearchSpec {
            sites: settings.sites.len(),
            delay_scale: settings.delay_scale,
            slice: format!("{}_study", settings.sites[0].name),
            description: "latency and throughput between regions, one sliver per region".into(),
            placement: PlacementRequest {
                groups: regions
                    .iter()
                    .map(|r| PlacementGroup {
                        count: 1,
                        regions: vec![r.to_string()],
                        ..Default::default()
                    })
                    .collect(),
                resources: Some(Resources {
                    vcpus: 1,
                    memory_mib: 256,
                    disk_gib: 1,
                    bandwidth_mbps: 100,
                }),
                anti_affinity: AntiAffinity::Site,
                appliance: None,
            },
            appliance: ApplianceRecipe {
                name: IPERF.name.to_string(),
                packages: IPERF.packages.iter().map(|p| p.to_string()).collect(),
            },
            lease_secs: if settings.quick { 600 } else { 3600 },
            wrap_up_secs: if settings.quick { 5 } else { 20 },
            pings: if settings.quick { 5 } else { 10 },
            iperf_seconds: if settings.quick { 2 } else { 5 },
        }
    }
}

/// What the research scenario runs.
#[derive(Debug, Clone)]
pub struct ResearchConfig {
    /// Where and how (sites and delay scale follow the spec).
    pub settings: Settings,
    /// The slice and experiment.
    pub spec: ResearchSpec,
    /// The run being repeated, when repeating one.
    pub previous: Option<(PathBuf, ResearchRecord)>,
}

impl ResearchConfig {
    /// A first run: one sliver per region of the testbed.
    pub fn new(settings: Settings) -> ResearchConfig {
        let spec = ResearchSpec::one_per_region(&settings);
        ResearchConfig {
            settings,
            spec,
            previous: None,
        }
    }

    /// A repeat of the run recorded in `path` (a `research.json`): same
    /// testbed, slice description and experiment.
    pub fn repeat(mut settings: Settings, path: &Path) -> anyhow::Result<ResearchConfig> {
        let record = ResearchRecord::load(path)?;
        settings.sites = catalog::sites(record.spec.sites)?.to_vec();
        settings.delay_scale = record.spec.delay_scale;
        Ok(ResearchConfig {
            settings,
            spec: record.spec.clone(),
            previous: Some((path.to_path_buf(), record)),
        })
    }
}

/// Where one sliver landed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacedInfo {
    /// Sliver id.
    pub sliver: u64,
    /// Node.
    pub node: String,
    /// Site.
    pub site: String,
    /// Region.
    pub region: String,
    /// Enclave address.
    pub address: Ipv4Addr,
}

/// One cell of the ping matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingCell {
    /// From (site).
    pub from: String,
    /// To (site).
    pub to: String,
    /// Sent.
    pub sent: u32,
    /// Received.
    pub received: u32,
    /// Average RTT (ms).
    pub avg_ms: Option<f64>,
    /// Minimum RTT (ms).
    pub min_ms: Option<f64>,
    /// Maximum RTT (ms).
    pub max_ms: Option<f64>,
}

/// One iperf3 run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IperfResult {
    /// Client (site).
    pub from: String,
    /// Server (site).
    pub to: String,
    /// Received throughput (Mbit/s).
    pub mbps: Option<f64>,
    /// TCP retransmissions the sender counted.
    pub retransmits: Option<u64>,
    /// Why there is no figure.
    pub error: Option<String>,
}

/// The lease's story.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Expiry granted at creation (unix seconds).
    pub created_expires_at: i64,
    /// The authority's note at creation.
    pub created_note: Option<String>,
    /// Replies to the renewals, in order.
    pub renewals: Vec<RenewReply>,
    /// Seconds from the granted expiry until the authority no longer knew the slice.
    pub slice_gone_after_s: Option<f64>,
    /// Seconds from the granted expiry until no node ran any of its slivers.
    pub slivers_stopped_after_s: Option<f64>,
    /// Every node's allocation back to zero afterwards.
    pub capacity_returned: bool,
    /// The audit entry of the expiry (actor action target).
    pub audit: Option<String>,
}

/// A research run as saved in `research.json`: the spec to repeat it and what it measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResearchRecord {
    /// File format version.
    pub format: u32,
    /// The slice description and experiment parameters (input of `--repeat`).
    pub spec: ResearchSpec,
    /// Unix seconds when the run started.
    pub started_at: f64,
    /// The results file this run repeated.
    #[serde(default)]
    pub repeat_of: Option<String>,
    /// Where the slivers landed.
    pub placement: Vec<PlacedInfo>,
    /// Seconds from VM start to ready, per guest.
    pub boot_seconds: Vec<f64>,
    /// The ping matrix (ordered pairs).
    pub pings: Vec<PingCell>,
    /// iperf3 between every pair.
    pub throughput: Vec<IperfResult>,
    /// Each node's data-plane drop counters by reason after the experiment
    /// (where packets were lost, when they were).
    #[serde(default)]
    pub overlay_drops: BTreeMap<String, BTreeMap<String, u64>>,
    /// Creation, renewals and expiry.
    pub lease: LeaseRecord,
    /// Wall time per phase.
    #[serde(default)]
    pub phases: PhaseTimes,
    /// What teardown left behind.
    #[serde(default)]
    pub teardown: TeardownReport,
}

/// The current format of `research.json`.
pub const RECORD_FORMAT: u32 = 1;

impl ResearchRecord {
    /// Reads a `research.json`.
    pub fn load(path: &Path) -> anyhow::Result<ResearchRecord> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let record: ResearchRecord = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a research.json written by `slicenet-experiments research`",
                path.display()
            )
        })?;
        anyhow::ensure!(
            record.format == RECORD_FORMAT,
            "{} has format {}, this program reads format {RECORD_FORMAT}",
            path.display(),
            record.format
        );
        Ok(record)
    }
}

/// Parses iperf3's text summary: received Mbit/s and the sender's retransmissions.
pub fn parse_iperf(text: &str) -> Option<(f64, Option<u64>)> {
    let rate = |line: &str| -> Option<(f64, Vec<String>)> {
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        let i = words.iter().position(|w| w.ends_with("bits/sec"))?;
        let value: f64 = words.get(i.checked_sub(1)?)?.parse().ok()?;
        let scale = match words[i].chars().next()? {
            'G' => 1000.0,
            'M' => 1.0,
            'K' => 0.001,
            _ => 0.000_001,
        };
        Some((value * scale, words[i + 1..].to_vec()))
    };
    let received = text
        .lines()
        .filter(|l| l.trim_end().ends_with("receiver"))
        .find_map(rate)?
        .0;
    let retransmits = text
        .lines()
        .filter(|l| l.trim_end().ends_with("sender"))
        .find_map(rate)
        .and_then(|(_, rest)| rest.first()?.parse().ok());
    Some((received, retransmits))
}

fn place(
    cluster: &Cluster,
    settings: &Settings,
    spec: &ResearchSpec,
    appliance: slicenet_authority::model::Appliance,
    progress: &super::Progress,
) -> anyhow::Result<(Client, Vec<PlacedSliver>, LeaseRecord)> {
    let rita_key = keys::generate();
    let rita = Client::new(&cluster.authority_url, rita_key.clone());
    let principal = NewPrincipal {
        name: "rita".into(),
        public_key: PublicKey::of(&rita_key),
        admin: false,
        sites: vec![SiteRole {
            site: spec
                .slice
                .split('_')
                .next()
                .unwrap_or(settings.sites[0].name)
                .to_string(),
            role: Role::Pi,
        }],
    };
    let mut placement = spec.placement.clone();
    placement.appliance = Some(appliance);
    let request = NewSlice {
        name: spec.slice.clone(),
        description: spec.description.clone(),
        lease_secs: Some(spec.lease_secs),
        members: vec![],
        placement: Some(placement),
        dry_run: false,
    };
    let admin = cluster.admin();
    let client = rita.clone();
    let slice_name = spec.slice.clone();
    let (reply, enclave) = cluster.run(async move {
        admin.create_principal(&principal).await?;
        let reply = client.create_slice(&request).await?;
        let ids = reply
            .slice
            .as_ref()
            .context("no slice in the reply")?
            .slivers
            .iter()
            .map(|s| s.id)
            .collect();
        let enclave = client
            .create_enclave(
                &slice_name,
                &NewEnclave {
                    name: "lab".into(),
                    slivers: ids,
                    subnet: None,
                },
            )
            .await?;
        anyhow::Ok((reply, enclave))
    })?;
    let slivers = reply.slice.context("no slice in the reply")?.slivers;
    let placed = guest::placed(&slivers, &enclave);
    for s in &placed {
        let region = settings
            .site(&s.site)
            .map(|(_, info)| info.region)
            .unwrap_or("?");
        progress.note(&format!(
            "  sliver {} on {} at {} (region {region}), enclave address {}",
            s.id, s.node, s.site, s.address
        ));
    }
    let lease = LeaseRecord {
        created_expires_at: reply.lease_expires_at.unwrap_or_default(),
        created_note: reply.note.clone(),
        ..Default::default()
    };
    Ok((rita, placed, lease))
}

fn ping_matrix(cluster: &Cluster, slivers: &[PlacedSliver], count: u32) -> Vec<PingCell> {
    let jobs: Vec<_> = slivers
        .iter()
        .map(|s| {
            let others: Vec<String> = slivers
                .iter()
                .filter(|o| o.id != s.id)
                .map(|o| o.address.to_string())
                .collect();
            (
                s.clone(),
                format!("sh {PING_SCRIPT_PATH} {count} {}", others.join(" ")),
            )
        })
        .collect();
    let outs = guest::exec_all(cluster, &jobs, Duration::from_secs(60));
    let mut cells = Vec::new();
    for (s, out) in slivers.iter().zip(outs) {
        let sections = out.as_deref().map(split_checks).unwrap_or_default();
        for o in slivers.iter().filter(|o| o.id != s.id) {
            let summary = sections
                .get(&o.address.to_string())
                .and_then(|t| parse_ping(t));
            cells.push(PingCell {
                from: s.site.clone(),
                to: o.site.clone(),
                sent: summary.map(|p| p.transmitted).unwrap_or(0),
                received: summary.map(|p| p.received).unwrap_or(0),
                avg_ms: summary.and_then(|p| p.avg_ms),
                min_ms: summary.and_then(|p| p.min_ms),
                max_ms: summary.and_then(|p| p.max_ms),
            });
        }
    }
    cells
}

fn iperf_all(
    cluster: &Cluster,
    slivers: &[PlacedSliver],
    seconds: u32,
    progress: &super::Progress,
) -> anyhow::Result<Vec<IperfResult>> {
    let servers: Vec<_> = slivers
        .iter()
        .map(|s| {
            (
                s.clone(),
                "/usr/bin/iperf3 -s -D && echo STARTED".to_string(),
            )
        })
        .collect();
    for (s, out) in slivers
        .iter()
        .zip(guest::exec_all(cluster, &servers, Duration::from_secs(20)))
    {
        let out = out?;
        anyhow::ensure!(
            out.contains("STARTED"),
            "iperf3 server on sliver {} did not start: {out}",
            s.id
        );
    }
    let mut results = Vec::new();
    // One pair at a time: concurrent runs would share the guests' CPUs.
    for (i, from) in slivers.iter().enumerate() {
        for to in &slivers[i + 1..] {
            ensure_running()?;
            let command = format!(
                "/usr/bin/iperf3 -c {} -t {seconds} -f m --connect-timeout 3000",
                to.address
            );
            let out = guest::exec(
                cluster,
                from,
                &command,
                Duration::from_secs(u64::from(seconds) + 30),
            );
            let parsed = out.as_deref().ok().and_then(parse_iperf);
            let error = match (&out, parsed) {
                (_, Some(_)) => None,
                (Ok(text), None) => Some(
                    text.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no output")
                        .to_string(),
                ),
                (Err(e), None) => Some(format!("{e:#}")),
            };
            let r = IperfResult {
                from: from.site.clone(),
                to: to.site.clone(),
                mbps: parsed.map(|p| p.0),
                retransmits: parsed.and_then(|p| p.1),
                error,
            };
            progress.note(&format!(
                "iperf3 {} -> {}: {}",
                r.from,
                r.to,
                r.mbps
                    .map(|m| format!("{m:.0} Mbit/s"))
                    .unwrap_or_else(|| format!("failed: {}", r.error.as_deref().unwrap_or("")))
            ));
            results.push(r);
        }
    }
    Ok(results)
}

/// Renews for a year (capped by policy) and then for the wrap-up period;
/// waits for the expiry and the reclamation.
fn renew_and_expire(
    cluster: &Cluster,
    rita: &Client,
    spec: &ResearchSpec,
    slivers: &[PlacedSliver],
    lease: &mut LeaseRecord,
    progress: &super::Progress,
) -> anyhow::Result<()> {
    for secs in [365 * 86_400, spec.wrap_up_secs] {
        let client = rita.clone();
        let slice = spec.slice.clone();
        let reply = cluster
            .run(async move { client.renew_slice(&slice, Duration::from_secs(secs)).await })?;
        progress.note(&format!(
            "renew {secs} s: requested expiry {}, granted {}{} — {}",
            reply.requested_expires_at,
            reply.granted_expires_at,
            if reply.capped {
                " (capped by policy)"
            } else {
                ""
            },
            reply.message
        ));
        lease.renewals.push(reply);
    }
    let expires_at = lease
        .renewals
        .last()
        .map(|r| r.granted_expires_at)
        .unwrap_or_default() as f64;
    progress.note(&format!(
        "waiting for the lease to expire in {:.1} s",
        expires_at - unix_now()
    ));
    let deadline = Instant::now()
        + Duration::from_secs_f64((expires_at - unix_now()).max(0.0))
        + Duration::from_secs(60);
    while lease.slice_gone_after_s.is_none() || lease.slivers_stopped_after_s.is_none() {
        ensure_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the slice was not reclaimed within 60 s of its expiry"
        );
        if lease.slice_gone_after_s.is_none() {
            let client = rita.clone();
            let slice = spec.slice.clone();
            match cluster.run(async move { client.slice(&slice).await }) {
                Err(e) if e.code() == Some("not_found") => {
                    lease.slice_gone_after_s = Some(unix_now() - expires_at);
                    progress.note("the authority reclaimed the slice");
                }
                _ => {}
            }
        }
        if lease.slivers_stopped_after_s.is_none() {
            let running = (0..cluster.nodes.len()).any(|i| {
                cluster
                    .node_status(i)
                    .map(|st| {
                        st.slivers
                            .iter()
                            .any(|s| slivers.iter().any(|p| p.id == s.sliver_id))
                    })
                    .unwrap_or(true)
            });
            if !running {
                lease.slivers_stopped_after_s = Some(unix_now() - expires_at);
                progress.note("every node stopped the slice's slivers");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let admin = cluster.admin();
    let slice = spec.slice.clone();
    let (nodes, audit) = cluster.run(async move {
        let nodes = admin.nodes(None).await?;
        let audit = admin.audit(500).await?;
        anyhow::Ok((nodes, audit))
    })?;
    lease.capacity_returned = nodes
        .iter()
        .all(|n| n.slivers == 0 && n.allocated == Resources::default());
    lease.audit = audit
        .iter()
        .find(|e| e.action == "slice.expire" && e.target.contains(&slice))
        .map(|e| format!("{} {} {}", e.actor, e.action, e.target));
    Ok(())
}

/// Runs the research scenario; see the module documentation.
pub fn run(config: &ResearchConfig) -> Result<Outcome<ResearchRecord>, Box<ScenarioFailure>> {
    let settings = &config.settings;
    let spec = &config.spec;
    drive("research", settings, |progress, deployment| {
        let started_at = unix_now();
        if let Some((path, _)) = &config.previous {
            progress.note(&format!("repeating the run recorded in {}", path.display()));
        }
        progress.note(&format!(
            "building the {} appliance ({:?})",
            spec.appliance.name, spec.appliance.packages
        ));
        let built = appliances::build_named(
            &spec.appliance.name,
            &spec.appliance.packages,
            "research experiment",
            &mut |l| progress.note(&format!("  {l}")),
        )?;
        let cluster =
            deployment.start(settings, false, vec![built.search_dir.clone()], progress)?;

        progress.enter(
            Phase::Boot,
            &format!(
                "slice {} placed by constraint: {}",
                spec.slice,
                describe_placement(&spec.placement)
            ),
        );
        let (rita, slivers, mut lease) =
            place(cluster, settings, spec, built.appliance.clone(), progress)?;
        let boot_seconds = cluster.wait_ready(&slivers, Duration::from_secs(300), &mut |l| {
            progress.note(l)
        })?;
        guest::wait_connected(cluster, &slivers, Duration::from_secs(60))?;
        guest::write_file_all(cluster, &slivers, PING_SCRIPT_PATH, PING_SCRIPT)?;
        // Resolve every neighbour (ARP) before measuring.
        ping_matrix(cluster, &slivers, 1);

        progress.enter(
            Phase::Measure,
            "ping matrix and iperf3 between every pair, then renewals and expiry",
        );
        let pings = ping_matrix(cluster, &slivers, spec.pings);
        let throughput = iperf_all(cluster, &slivers, spec.iperf_seconds, progress)?;
        let overlay_drops = (0..cluster.nodes.len())
            .filter_map(|i| cluster.node_status(i).ok())
            .map(|st| (st.node, st.overlay.drops))
            .collect();
        let placement: Vec<PlacedInfo> = slivers
            .iter()
            .map(|s| PlacedInfo {
                sliver: s.id,
                node: s.node.clone(),
                site: s.site.clone(),
                region: settings
                    .site(&s.site)
                    .map(|(_, info)| info.region.to_string())
                    .unwrap_or_default(),
                address: s.address,
            })
            .collect();
        let mut record = ResearchRecord {
            format: RECORD_FORMAT,
            spec: spec.clone(),
            started_at,
            repeat_of: config
                .previous
                .as_ref()
                .map(|(p, _)| p.display().to_string()),
            placement,
            boot_seconds,
            pings,
            throughput,
            overlay_drops,
            lease: LeaseRecord::default(),
            phases: PhaseTimes::default(),
            teardown: TeardownReport::default(),
        };
        // Save the results as soon as they exist; write_results adds the
        // lease story and the phase times at the end.
        let outputs = Outputs::create(&settings.out_dir)?;
        outputs.json("research.json", &record)?;
        plot_results(&outputs, &record)?;
        renew_and_expire(cluster, &rita, spec, &slivers, &mut lease, progress)?;
        record.lease = lease;
        Ok(record)
    })
}

fn describe_placement(p: &PlacementRequest) -> String {
    let groups: Vec<String> = p
        .groups
        .iter()
        .map(|g| {
            let mut filters = Vec::new();
            if !g.regions.is_empty() {
                filters.push(format!("region {}", g.regions.join("|")));
            }
            if !g.sites.is_empty() {
                filters.push(format!("site {}", g.sites.join("|")));
            }
            if !g.countries.is_empty() {
                filters.push(format!("country {}", g.countries.join("|")));
            }
            if filters.is_empty() {
                filters.push("anywhere".into());
            }
            format!("{} in {}", g.count, filters.join(", "))
        })
        .collect();
    format!(
        "{} (anti-affinity {:?})",
        groups.join("; "),
        p.anti_affinity
    )
}

fn plot_results(outputs: &Outputs, record: &ResearchRecord) -> anyhow::Result<Vec<PathBuf>> {
    let sites: Vec<String> = record.placement.iter().map(|p| p.site.clone()).collect();
    let values: Vec<Vec<Option<f64>>> = sites
        .iter()
        .map(|from| {
            sites
                .iter()
                .map(|to| {
                    record
                        .pings
                        .iter()
                        .find(|c| &c.from == from && &c.to == to)
                        .and_then(|c| c.avg_ms)
                })
                .collect()
        })
        .collect();
    let rtt = outputs.path("research-rtt.png");
    plot::heat_maps(
        &rtt,
        &format!(
            "{}: RTT between slivers (ms, from row to column)",
            record.spec.slice
        ),
        &[HeatMap {
            title: "ping inside the enclave".into(),
            rows: sites.clone(),
            cols: sites.clone(),
            values,
            unit: "ms".into(),
            marked: Vec::new(),
            missing: "-".into(),
            integers: false,
        }],
    )?;
    let bars = outputs.path("research-throughput.png");
    let labels: Vec<String> = record
        .throughput
        .iter()
        .map(|t| format!("{}->{}", t.from, t.to))
        .collect();
    let values: Vec<Option<f64>> = record.throughput.iter().map(|t| t.mbps).collect();
    plot::bar_chart(
        &bars,
        &format!(
            "{}: iperf3 TCP throughput inside the enclave",
            record.spec.slice
        ),
        &labels,
        &values,
        "Mbit/s",
    )?;
    Ok(vec![rtt, bars])
}

/// Writes `research.json` (with the phase times) and prints the tables,
/// compared with the repeated run when there is one.
pub fn write_results(
    outcome: &Outcome<ResearchRecord>,
    config: &ResearchConfig,
) -> anyhow::Result<PathBuf> {
    let mut record = outcome.result.clone();
    record.phases = outcome.phases.clone();
    record.teardown = outcome.teardown.clone();
    let outputs = Outputs::create(&config.settings.out_dir)?;
    let path = outputs.json("research.json", &record)?;
    print_record(&record, config.previous.as_ref().map(|(_, r)| r));
    println!("wrote {}", path.display());
    for f in ["research-rtt.png", "research-throughput.png"] {
        println!("wrote {}", outputs.path(f).display());
    }
    println!(
        "repeat with: slicenet-experiments research --repeat {}",
        path.display()
    );
    Ok(path)
}

/// Prints placement, matrices, throughput and lease, side by side with a previous run.
pub fn print_record(record: &ResearchRecord, previous: Option<&ResearchRecord>) {
    println!(
        "\nslice {}: {}",
        record.spec.slice,
        describe_placement(&record.spec.placement)
    );
    for p in &record.placement {
        println!(
            "  sliver {:<4} {:<8} site {:<5} region {:<5} {}",
            p.sliver, p.node, p.site, p.region, p.address
        );
    }
    let prev_ping = |c: &PingCell| {
        previous.and_then(|r| {
            r.pings
                .iter()
                .find(|p| p.from == c.from && p.to == c.to)
                .and_then(|p| p.avg_ms)
        })
    };
    println!("\nping matrix ({} pings per pair)", record.spec.pings);
    println!(
        "{:<12} {:>10} {:>8}{}",
        "pair",
        "RTT ms",
        "loss",
        if previous.is_some() {
            "   previous RTT ms"
        } else {
            ""
        }
    );
    for c in &record.pings {
        let loss = if c.sent > 0 {
            format!(
                "{:.0}%",
                100.0 * f64::from(c.sent - c.received.min(c.sent)) / f64::from(c.sent)
            )
        } else {
            "-".into()
        };
        let prev = match (previous, prev_ping(c)) {
            (None, _) => String::new(),
            (Some(_), Some(ms)) => format!("   {ms:>15.1}"),
            (Some(_), None) => format!("   {:>15}", "-"),
        };
        println!(
            "{:<12} {:>10} {:>8}{prev}",
            format!("{}->{}", c.from, c.to),
            c.avg_ms
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "lost".into()),
            loss
        );
    }
    println!("\niperf3 ({} s per pair)", record.spec.iperf_seconds);
    println!(
        "{:<12} {:>10} {:>8}{}",
        "pair",
        "Mbit/s",
        "retrans",
        if previous.is_some() {
            "   previous Mbit/s"
        } else {
            ""
        }
    );
    for t in &record.throughput {
        let prev = previous.map(|r| {
            r.throughput
                .iter()
                .find(|p| p.from == t.from && p.to == t.to)
                .and_then(|p| p.mbps)
                .map(|m| format!("   {m:>15.0}"))
                .unwrap_or_else(|| format!("   {:>15}", "-"))
        });
        println!(
            "{:<12} {:>10} {:>8}{}",
            format!("{}->{}", t.from, t.to),
            t.mbps
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "failed".into()),
            t.retransmits
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            prev.unwrap_or_default()
        );
    }
    let mbps: Vec<f64> = record.throughput.iter().filter_map(|t| t.mbps).collect();
    if let Some(m) = median(&mbps) {
        println!("median {m:.0} Mbit/s");
    }
    for (node, drops) in &record.overlay_drops {
        let list: Vec<String> = drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "  data-plane drops on {node}: {}",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        );
    }
    let l = &record.lease;
    println!(
        "\nlease: created expiring at {}{}",
        l.created_expires_at,
        l.created_note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    for r in &l.renewals {
        println!(
            "  renew: requested {} granted {}{} (max lease {} s) — {}",
            r.requested_expires_at,
            r.granted_expires_at,
            if r.capped { " capped" } else { "" },
            r.max_lease_secs,
            r.message
        );
    }
    println!(
        "  expiry: slice gone {} s after it, slivers stopped on every node {} s after it, capacity returned: {}; audit: {}",
        l.slice_gone_after_s
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "?".into()),
        l.slivers_stopped_after_s
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "?".into()),
        if l.capacity_returned { "yes" } else { "NO" },
        l.audit.as_deref().unwrap_or("none")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPERF_OUT: &str = "Connecting to host 198.19.3.3, port 5201\n\
[  5] local 198.19.3.2 port 40000 connected to 198.19.3.3 port 5201\n\
[ ID] Interval           Transfer     Bitrate         Retr  Cwnd\n\
[  5]   0.00-1.00   sec  11.2 MBytes  94.1 Mbits/sec    0    300 KBytes\n\
- - - - - - - - - - - - - - - - - - - - - - - - -\n\
[ ID] Interval           Transfer     Bitrate         Retr\n\
[  5]   0.00-2.00   sec  22.5 MBytes  94.3 Mbits/sec    3             sender\n\
[  5]   0.00-2.04   sec  22.2 MBytes  91.4 Mbits/sec                  receiver\n\
\n\
iperf Done.\n";

    #[test]
    fn iperf_summary_gives_received_rate_and_retransmissions() {
        assert_eq!(parse_iperf(IPERF_OUT), Some((91.4, Some(3))));
        let gbit = IPERF_OUT.replace("91.4 Mbits/sec", "1.25 Gbits/sec");
        assert_eq!(parse_iperf(&gbit).map(|p| p.0), Some(1250.0));
        assert_eq!(
            parse_iperf("iperf3: error - unable to connect to server: Connection refused"),
            None
        );
    }

    fn settings(sites: usize) -> Settings {
        Settings {
            sites: catalog::sites(sites).unwrap().to_vec(),
            delay_scale: 0.2,
            quick: true,
            out_dir: PathBuf::from("unused"),
            slicenet_bin: PathBuf::from("unused"),
            keep_work_dir: false,
        }
    }

    #[test]
    fn one_per_region_asks_for_each_region_once_on_different_sites() {
        let spec = ResearchSpec::one_per_region(&settings(5));
        let regions: Vec<&str> = spec
            .placement
            .groups
            .iter()
            .map(|g| g.regions[0].as_str())
            .collect();
        assert_eq!(regions, vec!["eu", "na", "asia"]);
        assert!(spec.placement.groups.iter().all(|g| g.count == 1));
        assert_eq!(spec.placement.anti_affinity, AntiAffinity::Site);
        assert_eq!(spec.slice, "ams_study");
    }

    #[test]
    fn a_saved_record_is_taken_back_as_the_spec_of_a_repeat() {
        let spec = ResearchSpec::one_per_region(&settings(3));
        let record = ResearchRecord {
            format: RECORD_FORMAT,
            spec: spec.clone(),
            started_at: 1.0,
            repeat_of: None,
            placement: vec![],
            boot_seconds: vec![],
            pings: vec![],
            throughput: vec![],
            overlay_drops: BTreeMap::new(),
            lease: LeaseRecord::default(),
            phases: PhaseTimes::default(),
            teardown: TeardownReport::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = Outputs::create(dir.path())
            .unwrap()
            .json("research.json", &record)
            .unwrap();
        let mut other = settings(5);
        other.delay_scale = 1.0;
        let config = ResearchConfig::repeat(other, &path).unwrap();
        assert_eq!(config.settings.sites.len(), 3);
        assert_eq!(config.settings.delay_scale, 0.2);
        assert_eq!(
            serde_json::to_value(&config.spec).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
        std::fs::write(&path, "{\"format\": 1}").unwrap();
        let err = ResearchRecord::load(&path).unwrap_err().to_string();
        assert!(err.contains("is not a research.json"), "{err}");
    }
}
