//! Scenario `enclave`: a security team's virtual enclave.
//!
//! Alice (PI at the first site) creates a slice with a service appliance
//! (busybox httpd and nc listeners: some open TCP ports) at the first site;
//! Bob, a member of her slice, adds a scanner appliance at every site and
//! joins them all in enclave `sec`. Carol, PI at another site, runs her own
//! slice with one sliver per site. The scenario shows that Carol's slivers
//! cannot reach the service even with an address inside the enclave's
//! subnet (ARP, ping, HTTP), that every scanner finds exactly the ports the
//! service listens on, that removing a scanner from the enclave cuts its
//! access within a second (measured from a 20-per-second ping stream inside
//! the revoked guest), and prints the audit log of who did what.
//!
//! The scanner is OpenBSD netcat's `-z` connect scan, split into parallel
//! port ranges (nmap does not pack into an appliance with the current
//! builder; see [`super::appliances::SCANNER`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use slicenet_authority::api::{
    AddSlivers, AuditEntry, NewEnclave, NewPrincipal, NewSlice, PlacementGroup, PlacementRequest,
    Role, SiteRole,
};
use slicenet_authority::client::Client;
use slicenet_authority::keys::{self, PublicKey};
use slicenet_authority::model::{Appliance, Resources};
use slicenet_node::daemon::control;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::appliances::{self, SCANNER, SERVICE};
use super::guest;
use super::plot::{self, HeatMap, Marker};
use super::{drive, ensure_running, unix_now, Outcome, Outputs, Phase, ScenarioFailure, Settings};
use crate::cluster::{Cluster, PlacedSliver};
use crate::rtt::parse_ping;

const SCAN_SCRIPT_PATH: &str = "/run/slicenet-scan.sh";
const ISOLATION_SCRIPT_PATH: &str = "/run/slicenet-isolation.sh";

/// A connect scan of `FIRST-LAST` split over `WORKERS` parallel netcats:
/// `scan.sh TARGET FIRST LAST WORKERS`; prints `OPEN <port>` per open port
/// and `SCANNED <count>`.
const SCAN_SCRIPT: &str = r##"#!/bin/sh
# slicenet enclave scanner (see experiments/src/scenarios/enclave.rs).
t=$1; first=$2; last=$3; n=$4
span=$(( (last - first + n) / n ))
dir=/run/scan; rm -rf $dir; mkdir -p $dir
i=0; lo=$first
while [ $lo -le $last ]; do
  hi=$((lo + span - 1)); [ $hi -gt $last ] && hi=$last
  /usr/bin/nc.openbsd -z -n -v -w 1 $t $lo-$hi >$dir/part.$i 2>&1 &
  i=$((i + 1)); lo=$((hi + 1))
done
wait
cat $dir/part.* | sed -n 's/^Connection to [0-9.]* \([0-9]*\) port.*succeeded.*/OPEN \1/p' | sort -n
echo SCANNED $((last - first + 1))
"##;

/// Tries to reach `SERVICE` from a sliver of another slice, using an
/// address of the enclave's own subnet: `isolation.sh SERVICE ALIAS/PREFIX PEER`.
/// Prints `PEER=`, `ARP=`, `HTTP=` exit statuses and the ping summary.
const ISOLATION_SCRIPT: &str = r##"#!/bin/sh
# slicenet enclave isolation check (see experiments/src/scenarios/enclave.rs).
svc=$1; alias=$2; peer=$3
dev=$(ip -o -4 addr show | awk '/198\.19\./ {print $2; exit}')
ping -c 2 -W 1 -q $peer >/dev/null 2>&1; echo PEER=$?
ip addr add $alias dev $dev
arping -c 2 -w 3 -I $dev $svc >/dev/null 2>&1; echo ARP=$?
ping -c 3 -W 1 -q $svc
wget -q -T 2 -O /dev/null http://$svc/ >/dev/null 2>&1; echo HTTP=$?
ip addr del $alias dev $dev
"##;

/// What the enclave scenario does.
#[derive(Debug, Clone)]
pub struct EnclaveConfig {
    /// Where and how.
    pub settings: Settings,
    /// TCP ports the service opens.
    pub open_ports: Vec<u16>,
    /// Ports scanned (inclusive).
    pub scan_range: (u16, u16),
    /// Parallel netcats per scan.
    pub scan_workers: u16,
    /// Interval of the revocation ping stream, in ms.
    pub stream_interval_ms: u32,
    /// Replies before the member is removed.
    pub stream_warmup: u32,
    /// Length of the ping stream, in seconds.
    pub stream_seconds: u32,
}

impl EnclaveConfig {
    /// Defaults: ports 22, 80, 443 open; scans of 1-1024 with 16 workers; a
    /// 50 ms ping stream of 4 s with the removal after 1 s.
    pub fn new(settings: Settings) -> EnclaveConfig {
        EnclaveConfig {
            settings,
            open_ports: vec![22, 80, 443],
            scan_range: (1, 1024),
            scan_workers: 16,
            stream_interval_ms: 50,
            stream_warmup: 20,
            stream_seconds: 4,
        }
    }
}

/// The protected service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Site.
    pub site: String,
    /// Sliver.
    pub sliver: u64,
    /// Enclave address.
    pub address: Ipv4Addr,
    /// Ports it listens on (from `netstat -ltn` inside it).
    pub listening: Vec<u16>,
}

/// One scan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanResult {
    /// The scanner's site.
    pub site: String,
    /// The scanner's sliver.
    pub sliver: u64,
    /// Ports found open.
    pub open: Vec<u16>,
    /// Ports scanned.
    pub scanned: u32,
    /// Wall time of the scan (console round trip included), in seconds.
    pub seconds: f64,
    /// Found exactly the service's listening ports.
    pub exact: bool,
}

/// One attempt of another slice's sliver to reach the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IsolationResult {
    /// The outsider's site.
    pub site: String,
    /// The outsider's sliver (of the other slice).
    pub sliver: u64,
    /// It reached a peer of its own enclave (the control: its network works).
    pub own_enclave_reachable: bool,
    /// ARP for the service's address was answered.
    pub arp_answered: bool,
    /// Ping replies from the service.
    pub ping_replies: u32,
    /// The service's web page was fetched.
    pub http_reached: bool,
}

impl IsolationResult {
    /// True when nothing of the service was reachable.
    pub fn isolated(&self) -> bool {
        !self.arp_answered && self.ping_replies == 0 && !self.http_reached
    }
}

/// The revocation measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked scanner's site.
    pub site: String,
    /// Its sliver.
    pub sliver: u64,
    /// Duration of the API call that removed it, in ms.
    pub api_call_ms: f64,
    /// Replies received before the removal was requested.
    pub replies_before: u32,
    /// Replies received after the removal was requested.
    pub replies_after: u32,
    /// Guest time from the reply that triggered the removal to the last
    /// reply (includes the host's reaction to that reply), in ms.
    pub last_reply_after_ms: f64,
    /// Upper bound of the time to cut access: last reply + one stream interval, in ms.
    pub cut_within_ms: f64,
    /// (ms relative to the removal request, RTT ms) of every reply.
    pub replies: Vec<(f64, f64)>,
    /// Ports the revoked scanner still finds afterwards.
    pub rescan_revoked: Vec<u16>,
    /// Ports another scanner finds afterwards.
    pub rescan_member: Vec<u16>,
    /// When the node restarted the revoked sliver without its enclave NIC
    /// (its VM description changed), ending the stream: ms after the
    /// removal request, on the host's clock.
    pub restarted_after_ms: Option<f64>,
}

/// One audit log entry as printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditLine {
    /// Unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
}

/// What the enclave scenario measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnclaveReport {
    /// Testbed sites.
    pub sites: Vec<String>,
    /// The enclave's slice and name.
    pub enclave: String,
    /// The enclave's subnet.
    pub subnet: String,
    /// The service.
    pub service: ServiceInfo,
    /// One scan per scanner.
    pub scans: Vec<ScanResult>,
    /// One isolation check per outsider.
    pub isolation: Vec<IsolationResult>,
    /// The revocation.
    pub revocation: Revocation,
    /// The audit log (oldest first).
    pub audit: Vec<AuditEntry>,
    /// Seconds from VM start to ready, per guest.
    pub boot_seconds: Vec<f64>,
    /// Files written.
    pub files: Vec<String>,
}

/// Parses the scan script's output.
pub fn parse_scan(text: &str) -> (Vec<u16>, u32) {
    let mut open: Vec<u16> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("OPEN ")?.trim().parse().ok())
        .collect();
    open.sort();
    open.dedup();
    let scanned = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("SCANNED ")?.trim().parse().ok())
        .unwrap_or(0);
    (open, scanned)
}

/// Listening TCP ports in busybox `netstat -ltn` output.
pub fn parse_listening(text: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = text
        .lines()
        .filter(|l| l.starts_with("tcp") && l.contains("LISTEN"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

fn status_of(text: &str, key: &str) -> Option<i32> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
}

/// Parses one `ping -D` reply line: (unix time, icmp_seq, RTT ms).
pub fn parse_stamped_reply(line: &str) -> Option<(f64, u32, f64)> {
    let rest = line.trim().strip_prefix('[')?;
    let (stamp, rest) = rest.split_once(']')?;
    if !rest.contains("bytes from") {
        return None;
    }
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    Some((
        stamp.parse().ok()?,
        field("icmp_seq=")?.parse().ok()?,
        field("time=")?.parse().ok()?,
    ))
}

fn resources() -> Resources {
    Resources {
        vcpus: 1,
        memory_mib: 256,
        disk_gib: 1,
        bandwidth_mbps: 100,
    }
}

fn one_per_site(settings: &Settings, appliance: &Appliance) -> PlacementRequest {
    PlacementRequest {
        groups: settings
            .sites
            .iter()
            .map(|s| PlacementGroup {
                count: 1,
                sites: vec![s.name.to_string()],
                ..Default::default()
            })
            .collect(),
        resources: Some(resources()),
        appliance: Some(appliance.clone()),
        ..Default::default()
    }
}

/// The people of the scenario, with their clients.
struct People {
    alice: Client,
    bob: Client,
    carol: Client,
}

fn create_people(cluster: &Cluster, settings: &Settings) -> anyhow::Result<People> {
    let url = cluster.authority_url.clone();
    let (alice, bob, carol) = (keys::generate(), keys::generate(), keys::generate());
    let site1 = settings.sites[0].name.to_string();
    let site2 = settings.sites[1].name.to_string();
    let requests = vec![
        NewPrincipal {
            name: "alice".into(),
            public_key: PublicKey::of(&alice),
            admin: false,
            sites: vec![SiteRole {
                site: site1.clone(),
                role: Role::Pi,
            }],
        },
        NewPrincipal {
            name: "bob".into(),
            public_key: PublicKey::of(&bob),
            admin: false,
            sites: vec![SiteRole {
                site: site1,
                role: Role::User,
            }],
        },
        NewPrincipal {
            name: "carol".into(),
            public_key: PublicKey::of(&carol),
            admin: false,
            sites: vec![SiteRole {
                site: site2,
                role: Role::Pi,
            }],
        },
    ];
    let admin = cluster.admin();
    cluster.run(async move {
        for p in &requests {
            admin.create_principal(p).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(People {
        alice: Client::new(&url, alice),
        bob: Client::new(&url, bob),
        carol: Client::new(&url, carol),
    })
}

/// Everything the boot phase creates.
struct Layout {
    slice: String,
    subnet: String,
    service: PlacedSliver,
    scanners: Vec<PlacedSliver>,
    outsiders: Vec<PlacedSliver>,
}

fn create_slices(
    cluster: &Cluster,
    settings: &Settings,
    people: &People,
    service_app: &Appliance,
    scanner_app: &Appliance,
) -> anyhow::Result<Layout> {
    let slice = format!("{}_secops", settings.sites[0].name);
    let tenant = format!("{}_tenant", settings.sites[1].name);
    let service_request = NewSlice {
        name: slice.clone(),
        description: "security enclave: a protected service and scanners at every site".into(),
        lease_secs: None,
        members: vec!["bob".into()],
        placement: Some(PlacementRequest {
            groups: vec![PlacementGroup {
                count: 1,
                sites: vec![settings.sites[0].name.to_string()],
                ..Default::default()
            }],
            resources: Some(resources()),
            appliance: Some(service_app.clone()),
            ..Default::default()
        }),
        dry_run: false,
    };
    let scanners_request = AddSlivers {
        placement: one_per_site(settings, scanner_app),
        dry_run: false,
    };
    let tenant_request = NewSlice {
        name: tenant.clone(),
        description: "another tenant at the same sites".into(),
        lease_secs: None,
        members: vec![],
        placement: Some(one_per_site(settings, service_app)),
        dry_run: false,
    };
    let (alice, bob, carol) = (
        people.alice.clone(),
        people.bob.clone(),
        people.carol.clone(),
    );
    let slice_name = slice.clone();
    let (sec_slivers, service_id, sec, tenant_slivers, lan) = cluster.run(async move {
        let created = alice.create_slice(&service_request).await?;
        let service_id = created
            .slice
            .context("no slice in the reply")?
            .slivers
            .first()
            .context("no service sliver")?
            .id;
        let added = bob.add_slivers(&slice_name, &scanners_request).await?;
        let sec_slivers = added.slice.context("no slice in the reply")?.slivers;
        let sec = bob
            .create_enclave(
                &slice_name,
                &NewEnclave {
                    name: "sec".into(),
                    slivers: sec_slivers.iter().map(|s| s.id).collect(),
                    subnet: None,
                },
            )
            .await?;
        let tenant_slivers = carol
            .create_slice(&tenant_request)
            .await?
            .slice
            .context("no slice in the reply")?
            .slivers;
        let lan = carol
            .create_enclave(
                &tenant,
                &NewEnclave {
                    name: "lan".into(),
                    slivers: tenant_slivers.iter().map(|s| s.id).collect(),
                    subnet: None,
                },
            )
            .await?;
        anyhow::Ok((sec_slivers, service_id, sec, tenant_slivers, lan))
    })?;
    let sec_placed = guest::placed(&sec_slivers, &sec);
    let service = sec_placed
        .iter()
        .find(|s| s.id == service_id)
        .cloned()
        .context("the service is not on the enclave")?;
    let in_site_order = |placed: &[PlacedSliver]| -> Vec<PlacedSliver> {
        settings
            .sites
            .iter()
            .filter_map(|site| {
                placed
                    .iter()
                    .find(|s| s.site == site.name && s.id != service_id)
                    .cloned()
            })
            .collect()
    };
    let scanners = in_site_order(&sec_placed);
    let outsiders = in_site_order(&guest::placed(&tenant_slivers, &lan));
    anyhow::ensure!(
        scanners.len() == settings.sites.len() && outsiders.len() == settings.sites.len(),
        "expected a scanner and an outsider at every site, got {scanners:?} and {outsiders:?}"
    );
    Ok(Layout {
        slice,
        subnet: sec.subnet,
        service,
        scanners,
        outsiders,
    })
}

/// Opens the service's ports and reads back what it listens on.
fn start_service(
    cluster: &Cluster,
    service: &PlacedSliver,
    ports: &[u16],
) -> anyhow::Result<Vec<u16>> {
    let mut parts = vec!["mkdir -p /www && echo 'protected service' >/www/index.html".to_string()];
    for &port in ports {
        parts.push(if port == 80 {
            "httpd -p 80 -h /www".to_string()
        } else {
            format!("(nc -ll -p {port} -e /bin/cat </dev/null >/dev/null 2>&1 &)")
        });
    }
    parts.push("sleep 1; netstat -ltn".into());
    let out = guest::exec(cluster, service, &parts.join("; "), Duration::from_secs(30))?;
    Ok(parse_listening(&out))
}

fn scan(
    cluster: &Cluster,
    scanners: &[PlacedSliver],
    target: Ipv4Addr,
    range: (u16, u16),
    workers: u16,
    expected: &[u16],
) -> Vec<ScanResult> {
    let jobs: Vec<_> = scanners
        .iter()
        .map(|s| {
            (
                s.clone(),
                format!(
                    "sh {SCAN_SCRIPT_PATH} {target} {} {} {workers}",
                    range.0, range.1
                ),
            )
        })
        .collect();
    let started = Instant::now();
    let outs = guest::exec_all(cluster, &jobs, Duration::from_secs(300));
    let seconds = started.elapsed().as_secs_f64();
    scanners
        .iter()
        .zip(outs)
        .map(|(s, out)| {
            let (open, scanned) = out.as_deref().map(parse_scan).unwrap_or_default();
            ScanResult {
                site: s.site.clone(),
                sliver: s.id,
                exact: open == expected && scanned > 0,
                open,
                scanned,
                seconds,
            }
        })
        .collect()
}

/// Ports of `ports` the scanner reaches (a short scan of just those).
fn probe_ports(
    cluster: &Cluster,
    scanner: &PlacedSliver,
    target: Ipv4Addr,
    ports: &[u16],
) -> Vec<u16> {
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let command = format!(
        "for p in {}; do (/usr/bin/nc.openbsd -z -n -w 1 {target} $p && echo OPEN $p) & done; wait",
        list.join(" ")
    );
    guest::exec(cluster, scanner, &command, Duration::from_secs(30))
        .map(|out| parse_scan(&out).0)
        .unwrap_or_default()
}

fn isolation(
    cluster: &Cluster,
    outsiders: &[PlacedSliver],
    service: &PlacedSliver,
    subnet: &str,
) -> anyhow::Result<Vec<IsolationResult>> {
    let (net, prefix) = subnet
        .split_once('/')
        .with_context(|| format!("enclave subnet {subnet:?} has no prefix"))?;
    let net: Ipv4Addr = net.parse().context("enclave subnet")?;
    let o = net.octets();
    // An address of the enclave's subnet that no member uses.
    let alias = format!("{}.{}.{}.250/{prefix}", o[0], o[1], o[2]);
    guest::write_file_all(cluster, outsiders, ISOLATION_SCRIPT_PATH, ISOLATION_SCRIPT)?;
    let jobs: Vec<_> = outsiders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let peer = &outsiders[(i + 1) % outsiders.len()];
            (
                s.clone(),
                format!(
                    "sh {ISOLATION_SCRIPT_PATH} {} {alias} {}",
                    service.address, peer.address
                ),
            )
        })
        .collect();
    let outs = guest::exec_all(cluster, &jobs, Duration::from_secs(60));
    outsiders
        .iter()
        .zip(outs)
        .map(|(s, out)| {
            let out = out?;
            Ok(IsolationResult {
                site: s.site.clone(),
                sliver: s.id,
                own_enclave_reachable: status_of(&out, "PEER") == Some(0),
                arp_answered: status_of(&out, "ARP") == Some(0),
                ping_replies: parse_ping(&out).map(|p| p.received).unwrap_or(0),
                http_reached: status_of(&out, "HTTP") == Some(0),
            })
        })
        .collect()
}

/// Streams pings from `scanner` to the service and removes the scanner from
/// the enclave once `warmup` replies arrived; returns the stream's replies
/// relative to the removal request.
#[allow(clippy::too_many_arguments)]
async fn revocation_stream(
    console: PathBuf,
    scanner: u64,
    service: Ipv4Addr,
    alice: Client,
    slice: String,
    config: (u32, u32, u32),
) -> anyhow::Result<StreamTrace> {
    let (interval_ms, warmup, seconds) = config;
    let mut stream = control::open_console(&console, scanner).await?;
    let nonce = format!("{:x}", (unix_now() * 1e6) as u64);
    let line = format!(
        "\n/usr/bin/ping -D -n -i {} -w {seconds} -W 1 {service}; echo \"STREAM-\"'DONE-{nonce}'\n",
        f64::from(interval_ms) / 1000.0
    );
    stream.get_mut().write_all(line.as_bytes()).await?;
    let marker = format!("STREAM-DONE-{nonce}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(seconds) + 30);
    let mut replies = Vec::new();
    // (guest time of the triggering reply, API call duration in ms)
    let mut removal: Option<(f64, f64)> = None;
    let mut requested: Option<Instant> = None;
    let mut console_closed_after_ms = None;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = tokio::select! {
            n = stream.read_line(&mut buf) => n?,
            _ = tokio::time::sleep_until(deadline) => anyhow::bail!("the ping stream did not finish"),
        };
        if n == 0 {
            // The node restarts a sliver whose NICs changed: the VM (and its
            // console) went away with its enclave membership.
            anyhow::ensure!(
                removal.is_some(),
                "the console closed before the member was removed"
            );
            console_closed_after_ms = requested.map(|t| t.elapsed().as_secs_f64() * 1e3);
            break;
        }
        if buf.contains(&marker) {
            break;
        }
        if let Some(reply) = parse_stamped_reply(&buf) {
            replies.push(reply);
            if removal.is_none() && replies.len() as u32 >= warmup {
                let started = Instant::now();
                requested = Some(started);
                alice.remove_enclave_member(&slice, "sec", scanner).await?;
                removal = Some((reply.0, started.elapsed().as_secs_f64() * 1e3));
            }
        }
    }
    Ok(StreamTrace {
        replies,
        removal,
        console_closed_after_ms,
    })
}

/// What the revocation ping stream saw.
struct StreamTrace {
    /// (guest unix time, icmp_seq, RTT ms) of every reply.
    replies: Vec<(f64, u32, f64)>,
    /// Guest time of the reply that triggered the removal, and the API call's duration (ms).
    removal: Option<(f64, f64)>,
    /// Host time from the removal request until the guest's console went
    /// away (the node restarted the VM without the NIC), in ms.
    console_closed_after_ms: Option<f64>,
}

fn revoke(
    cluster: &Cluster,
    config: &EnclaveConfig,
    layout: &Layout,
    people: &People,
    expected: &[u16],
) -> anyhow::Result<Revocation> {
    let scanner = layout
        .scanners
        .last()
        .context("no scanner to revoke")?
        .clone();
    let console = guest::control_socket(cluster, &scanner)?;
    let trace = cluster.run(revocation_stream(
        console,
        scanner.id,
        layout.service.address,
        people.alice.clone(),
        layout.slice.clone(),
        (
            config.stream_interval_ms,
            config.stream_warmup,
            config.stream_seconds,
        ),
    ))?;
    let replies = trace.replies;
    let (armed_at, api_call_ms) = trace.removal.with_context(|| {
        format!(
            "only {} replies came back before the removal was due; the enclave was not healthy",
            replies.len()
        )
    })?;
    let last = replies.last().map(|r| r.0).unwrap_or(armed_at);
    let last_reply_after_ms = ((last - armed_at) * 1e3).max(0.0);
    let member = layout
        .scanners
        .iter()
        .find(|s| s.id != scanner.id)
        .cloned()
        .context("no second scanner")?;
    if trace.console_closed_after_ms.is_some() {
        // Wait for the node to bring the revoked sliver back, NIC-less.
        cluster.wait_ready(
            std::slice::from_ref(&scanner),
            Duration::from_secs(180),
            &mut |_| {},
        )?;
    }
    let rescan_revoked = probe_ports(cluster, &scanner, layout.service.address, expected);
    let rescan_member = probe_ports(cluster, &member, layout.service.address, expected);
    Ok(Revocation {
        site: scanner.site.clone(),
        sliver: scanner.id,
        api_call_ms,
        replies_before: replies.iter().filter(|r| r.0 <= armed_at).count() as u32,
        replies_after: replies.iter().filter(|r| r.0 > armed_at).count() as u32,
        last_reply_after_ms,
        cut_within_ms: last_reply_after_ms + f64::from(config.stream_interval_ms),
        replies: replies
            .iter()
            .map(|r| ((r.0 - armed_at) * 1e3, r.2))
            .collect(),
        rescan_revoked,
        rescan_member,
        restarted_after_ms: trace.console_closed_after_ms,
    })
}

/// Runs the enclave scenario; see the module documentation.
pub fn run(config: &EnclaveConfig) -> Result<Outcome<EnclaveReport>, Box<ScenarioFailure>> {
    let settings = &config.settings;
    drive("enclave", settings, |progress, deployment| {
        anyhow::ensure!(
            settings.sites.len() >= 2,
            "the enclave scenario needs at least 2 sites (3 by default)"
        );
        let outputs = Outputs::create(&settings.out_dir)?;
        let mut built = Vec::new();
        for recipe in [SERVICE, SCANNER] {
            progress.note(&format!(
                "building the {} appliance ({})",
                recipe.name, recipe.purpose
            ));
            built.push(appliances::build(recipe, &mut |l| {
                progress.note(&format!("  {l}"))
            })?);
        }
        let dirs = built.iter().map(|b| b.search_dir.clone()).collect();
        let cluster = deployment.start(settings, false, dirs, progress)?;
        let people = create_people(cluster, settings)?;
        progress.note(
            "principals: alice (PI) and bob (user) at the first site, carol (PI) at the second",
        );

        progress.enter(
            Phase::Boot,
            "alice's service, bob's scanners at every site on enclave sec; carol's slice at the same sites",
        );
        let layout = create_slices(
            cluster,
            settings,
            &people,
            &built[0].appliance,
            &built[1].appliance,
        )?;
        let mut all = vec![layout.service.clone()];
        all.extend(layout.scanners.iter().cloned());
        all.extend(layout.outsiders.iter().cloned());
        let boot_seconds =
            cluster.wait_ready(&all, Duration::from_secs(300), &mut |l| progress.note(l))?;
        let mut sec = vec![layout.service.clone()];
        sec.extend(layout.scanners.iter().cloned());
        guest::wait_connected(cluster, &sec, Duration::from_secs(60))?;
        guest::wait_connected(cluster, &layout.outsiders, Duration::from_secs(60))?;
        let listening = start_service(cluster, &layout.service, &config.open_ports)?;
        let expected: Vec<u16> = listening
            .iter()
            .copied()
            .filter(|p| (config.scan_range.0..=config.scan_range.1).contains(p))
            .collect();
        guest::write_file_all(cluster, &layout.scanners, SCAN_SCRIPT_PATH, SCAN_SCRIPT)?;
        progress.note(&format!(
            "enclave {} ({}) connected; service {} listens on {:?}",
            "sec", layout.subnet, layout.service.address, listening
        ));

        progress.enter(
            Phase::Measure,
            "isolation from the other slice, scans from every site, revocation, audit log",
        );
        let isolation = isolation(cluster, &layout.outsiders, &layout.service, &layout.subnet)?;
        for r in &isolation {
            progress.note(&format!(
                "outsider at {}: own enclave {}, service ARP {}, ping replies {}, HTTP {}",
                r.site,
                if r.own_enclave_reachable {
                    "reachable"
                } else {
                    "UNREACHABLE"
                },
                if r.arp_answered {
                    "ANSWERED"
                } else {
                    "unanswered"
                },
                r.ping_replies,
                if r.http_reached {
                    "REACHED"
                } else {
                    "unreachable"
                }
            ));
        }
        ensure_running()?;
        let scans = scan(
            cluster,
            &layout.scanners,
            layout.service.address,
            config.scan_range,
            config.scan_workers,
            &expected,
        );
        for s in &scans {
            progress.note(&format!(
                "scanner at {}: open {:?} of {} ports scanned ({})",
                s.site,
                s.open,
                s.scanned,
                if s.exact {
                    "exactly the service's ports"
                } else {
                    "MISMATCH"
                }
            ));
        }
        ensure_running()?;
        let revocation = revoke(cluster, config, &layout, &people, &expected)?;
        progress.note(&format!(
            "revocation of the scanner at {}: last reply {:.0} ms after the removal request (access cut within {:.0} ms), API call {:.0} ms",
            revocation.site, revocation.last_reply_after_ms, revocation.cut_within_ms, revocation.api_call_ms
        ));
        let admin = cluster.admin();
        let mut audit = cluster.run(async move { admin.audit(500).await })?;
        audit.sort_by_key(|e| e.id);

        let mut files = Vec::new();
        let timeline = outputs.path("enclave-revocation.png");
        let mut markers = vec![
            Marker {
                x: 0.0,
                label: "removal requested".into(),
            },
            Marker {
                x: revocation.last_reply_after_ms,
                label: "last reply".into(),
            },
        ];
        if let Some(ms) = revocation.restarted_after_ms {
            markers.push(Marker {
                x: ms,
                label: "VM restarted without the NIC".into(),
            });
        }
        plot::timeline(
            &timeline,
            &format!(
                "ping from the scanner at {} to the service; member removed at 0 — access cut within {:.0} ms",
                revocation.site, revocation.cut_within_ms
            ),
            &revocation.replies,
            &markers,
            "ms since the removal request (guest clock)",
            "RTT (ms)",
        )?;
        files.push(timeline);
        let reach = outputs.path("enclave-reach.png");
        plot::heat_maps(
            &reach,
            "who reaches the service: open ports found (1) or not (0)",
            &[reach_panel(&scans, &isolation, &revocation, &expected)],
        )?;
        files.push(reach);
        let report = EnclaveReport {
            sites: settings.sites.iter().map(|s| s.name.to_string()).collect(),
            enclave: format!("{}/sec", layout.slice),
            subnet: layout.subnet.clone(),
            service: ServiceInfo {
                site: layout.service.site.clone(),
                sliver: layout.service.id,
                address: layout.service.address,
                listening,
            },
            scans,
            isolation,
            revocation,
            audit,
            boot_seconds,
            files: files.iter().map(|f| f.display().to_string()).collect(),
        };
        print_report(&report);
        Ok(report)
    })
}

fn reach_panel(
    scans: &[ScanResult],
    isolation: &[IsolationResult],
    revocation: &Revocation,
    expected: &[u16],
) -> HeatMap {
    let cols: Vec<String> = expected.iter().map(|p| format!("tcp/{p}")).collect();
    let mut rows = Vec::new();
    let mut values = Vec::new();
    let row = |found: &[u16]| -> Vec<Option<f64>> {
        expected
            .iter()
            .map(|p| Some(if found.contains(p) { 1.0 } else { 0.0 }))
            .collect()
    };
    for s in scans {
        rows.push(format!("scanner {}", s.site));
        values.push(row(&s.open));
    }
    rows.push(format!("revoked {}", revocation.site));
    values.push(row(&revocation.rescan_revoked));
    for o in isolation {
        rows.push(format!("tenant {}", o.site));
        // The outsider tried HTTP (port 80) only; it reached none of it.
        values.push(row(if o.http_reached { &[80] } else { &[] }));
    }
    HeatMap {
        title: "rows: who; columns: the service's open ports".into(),
        rows,
        cols,
        values,
        unit: String::new(),
        marked: Vec::new(),
        missing: "-".into(),
        integers: true,
    }
}

/// Prints the scenario's tables.
pub fn print_report(report: &EnclaveReport) {
    println!(
        "\nEnclave {} ({}) over {}; service {} at {} listens on {:?}",
        report.enclave,
        report.subnet,
        report.sites.join(", "),
        report.service.address,
        report.service.site,
        report.service.listening
    );
    println!("\nscans (netcat -z connect scan, parallel ranges)");
    println!(
        "{:<8} {:>7} {:>9} {:>8}  open ports",
        "site", "sliver", "scanned", "seconds"
    );
    for s in &report.scans {
        println!(
            "{:<8} {:>7} {:>9} {:>8.1}  {:?}{}",
            s.site,
            s.sliver,
            s.scanned,
            s.seconds,
            s.open,
            if s.exact { "" } else { "  (MISMATCH)" }
        );
    }
    println!("\nanother slice's slivers, with an address inside the enclave's subnet");
    println!(
        "{:<8} {:>7} {:>12} {:>10} {:>11} {:>6}  verdict",
        "site", "sliver", "own enclave", "ARP", "ping reply", "HTTP"
    );
    for r in &report.isolation {
        println!(
            "{:<8} {:>7} {:>12} {:>10} {:>11} {:>6}  {}",
            r.site,
            r.sliver,
            if r.own_enclave_reachable {
                "ok"
            } else {
                "FAILED"
            },
            if r.arp_answered { "answered" } else { "none" },
            r.ping_replies,
            if r.http_reached { "yes" } else { "no" },
            if r.isolated() { "isolated" } else { "LEAK" }
        );
    }
    let r = &report.revocation;
    println!(
        "\nrevocation: scanner {} at {} removed from the enclave; API call {:.0} ms; \
         {} replies before, {} after the request; last reply +{:.0} ms => access cut within {:.0} ms",
        r.sliver, r.site, r.api_call_ms, r.replies_before, r.replies_after, r.last_reply_after_ms, r.cut_within_ms
    );
    if let Some(ms) = r.restarted_after_ms {
        println!(
            "  the node restarted the revoked sliver without its enclave NIC ({ms:.0} ms after the request)"
        );
    }
    println!(
        "  afterwards the revoked scanner reaches {:?}; a remaining member reaches {:?}",
        r.rescan_revoked, r.rescan_member
    );
    println!("\naudit log (who did what)");
    let first = report.audit.first().map(|e| e.at).unwrap_or(0);
    for e in &report.audit {
        let detail = e.detail.to_string();
        let detail: String = detail.chars().take(70).collect();
        println!(
            "  +{:>4}s  {:<10} {:<18} {:<22} {}",
            e.at - first,
            e.actor,
            e.action,
            e.target,
            if detail == "null" {
                String::new()
            } else {
                detail
            }
        );
    }
    for f in &report.files {
        println!("wrote {f}");
    }
}

/// Writes `enclave.json`: the report, phase times and teardown check.
pub fn write_summary(
    outcome: &Outcome<EnclaveReport>,
    out_dir: &std::path::Path,
) -> anyhow::Result<()> {
    outcome.write_summary("enclave", out_dir, "enclave.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_output_lists_open_ports_once_in_order() {
        let out = "sh /run/slicenet-scan.sh 198.19.2.2 1 1024 16\nOPEN 443\nOPEN 22\nOPEN 80\nOPEN 22\nSCANNED 1024\n";
        assert_eq!(parse_scan(out), (vec![22, 80, 443], 1024));
        assert_eq!(parse_scan("nothing"), (vec![], 0));
    }

    #[test]
    fn netstat_listening_ports_include_ipv6_wildcards() {
        let out = "Active Internet connections (only servers)\n\
Proto Recv-Q Send-Q Local Address           Foreign Address         State\n\
tcp        0      0 0.0.0.0:22              0.0.0.0:*               LISTEN\n\
tcp        0      0 0.0.0.0:443             0.0.0.0:*               LISTEN\n\
tcp        0      0 :::80                   :::*                    LISTEN\n\
udp        0      0 0.0.0.0:53              0.0.0.0:*\n";
        assert_eq!(parse_listening(out), vec![22, 80, 443]);
    }

    #[test]
    fn stamped_ping_replies_are_parsed() {
        let line =
            "[1795313261.772855] 64 bytes from 198.19.2.2: icmp_seq=17 ttl=64 time=5.92 ms\r\n";
        assert_eq!(
            parse_stamped_reply(line),
            Some((1795313261.772855, 17, 5.92))
        );
        assert_eq!(
            parse_stamped_reply("PING 198.19.2.2 (198.19.2.2) 56(84) bytes of data."),
            None
        );
        assert_eq!(
            parse_stamped_reply(
                "[1795313261.772855] From 198.19.2.9 icmp_seq=3 Destination Host Unreachable"
            ),
            None
        );
    }

    #[test]
    fn isolation_is_judged_on_every_layer() {
        let r = IsolationResult {
            site: "ams".into(),
            sliver: 7,
            own_enclave_reachable: true,
            arp_answered: false,
            ping_replies: 0,
            http_reached: false,
        };
        assert!(r.isolated());
        assert!(!IsolationResult {
            arp_answered: true,
            ..r.clone()
        }
        .isolated());
        assert!(!IsolationResult {
            ping_replies: 1,
            ..r.clone()
        }
        .isolated());
        assert!(!IsolationResult {
            http_reached: true,
            ..r
        }
        .isolated());
        assert_eq!(status_of("PEER=0\nARP=1\n", "ARP"), Some(1));
    }
}
