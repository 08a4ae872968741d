//! Three sites (network namespaces), one `slicenet membership run` process each:
//! they find each other from one bootstrap address, notice a killed node, and
//! notice (and forgive) a node cut off by a partition.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use slicenet_node::membership::ring::MonitorRings;
use slicenet_node::membership::{NodeIdentity, DEFAULT_WATCHERS};
use slicenet_testbed::{require_privileged, LinkShape, Testbed};

const PORT: u16 = 7946;

/// One membership process and the JSON events it prints.
struct SiteNode {
    child: Child,
    node_id: String,
    events: mpsc::Receiver<Value>,
}

impl Drop for SiteNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_site_node(
    bed: &Testbed,
    site: usize,
    identity: &NodeIdentity,
    dir: &std::path::Path,
) -> SiteNode {
    let key = dir.join(format!("node{site}.key"));
    identity.save_new(&key).unwrap();
    let s = bed.site(site);
    let mut cmd = s.command(env!("CARGO_BIN_EXE_slicenet"));
    cmd.args(["membership", "run", "--json", "--key"])
        .arg(&key)
        .args(["--listen", &format!("{}:{PORT}", s.addr())])
        .args(["--site", &format!("site{site}"), "--region", "eu"])
        .args(["--lat", "48.85", "--lon", "2.35", "--vcpus", "2"])
        .args(["--wg-pubkey", &base64_of([site as u8; 32])])
        .args(["--tunnel-addr", &format!("198.19.255.{site}")])
        .args(["--underlay", &format!("{}:51820", s.addr())])
        .env("RUST_LOG", std::env::var("MB_LOG").unwrap_or("warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if site != 1 {
        cmd.args(["--bootstrap", &format!("{}:{PORT}", bed.site(1).addr())]);
    }
    let mut child = cmd.spawn().expect("slicenet membership run starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                if tx.send(value).is_err() {
                    break;
                }
            }
        }
    });
    SiteNode {
        child,
        node_id: identity.node_id().to_string(),
        events,
    }
}

fn base64_of(bytes: [u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Waits for an event with `"event": kind` about `node` (any node if None).
fn wait_event(site: &SiteNode, kind: &str, node: Option<&str>, deadline: Duration) -> Value {
    let start = Instant::now();
    loop {
        let left = deadline
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("no `{kind}` event for {node:?} within {deadline:?}"));
        let event = site
            .events
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no `{kind}` event for {node:?} within {deadline:?}"));
        if event["event"] == kind && node.is_none_or(|n| event["node"] == n) {
            return event;
        }
    }
}

/// Identities for sites 1-3 in the layout that is hardest for failure detection:
/// site 3's node is watched only by site 2's node (see [`MonitorRings`]), which has
/// no other reason to connect to it (site 3 bootstraps through site 1 and watches
/// only site 1). So nothing but its watcher's own dial tells whether site 3 is alive.
fn identities_with_lone_watcher() -> Vec<NodeIdentity> {
    loop {
        let ids: Vec<NodeIdentity> = (0..3).map(|_| NodeIdentity::generate()).collect();
        let mut rings = MonitorRings::new(ids[2].node_id(), DEFAULT_WATCHERS);
        rings.insert(ids[0].node_id());
        rings.insert(ids[1].node_id());
        if rings.watchers() == [ids[1].node_id()] {
            return ids;
        }
    }
}

/// Starts one node per site and waits until every node has seen both others come up.
fn converged_sites(bed: &Testbed, dir: &std::path::Path) -> Vec<SiteNode> {
    let ids = identities_with_lone_watcher();
    let nodes: Vec<SiteNode> = (1..=3)
        .map(|s| start_site_node(bed, s, &ids[s - 1], dir))
        .collect();
    for node in &nodes {
        wait_event(node, "listening", None, Duration::from_secs(20));
    }
    for (i, node) in nodes.iter().enumerate() {
        // Events about different peers arrive in any order: collect until all are in.
        let mut seen = std::collections::HashMap::new();
        while seen.len() < 2 {
            let up = wait_event(node, "up", None, Duration::from_secs(30));
            seen.insert(up["node"].as_str().unwrap().to_owned(), up);
        }
        for (j, other) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let up = &seen[&other.node_id];
            assert_eq!(up["site"], format!("site{}", j + 1));
            assert_eq!(up["tunnel_addr"], format!("198.19.255.{}", j + 1));
            assert_eq!(up["wg_pubkey"], base64_of([(j + 1) as u8; 32]));
        }
    }
    nodes
}

#[test]
fn sites_discover_each_other_and_detect_a_killed_node() {
    if !require_privileged("sites_discover_each_other_and_detect_a_killed_node") {
        return;
    }
    let bed = Testbed::builder(3)
        .shapeable()
        .default_shape(LinkShape::delay(10.0))
        .build()
        .expect("testbed builds");
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = converged_sites(&bed, dir.path());

    let victim = nodes.pop().unwrap();
    let victim_id = victim.node_id.clone();
    let killed_at = Instant::now();
    drop(victim); // SIGKILL: no leave announcement
    for (i, node) in nodes.iter().enumerate() {
        let down = wait_event(node, "down", Some(&victim_id), Duration::from_secs(15));
        println!(
            "site{} reported the killed node {} by {:?}",
            i + 1,
            down["reason"],
            killed_at.elapsed()
        );
    }
}

#[test]
fn partitioned_node_is_declared_down_and_returns_when_healed() {
    if !require_privileged("partitioned_node_is_declared_down_and_returns_when_healed") {
        return;
    }
    let bed = Testbed::builder(3)
        .shapeable()
        .default_shape(LinkShape::delay(10.0))
        .build()
        .expect("testbed builds");
    let dir = tempfile::tempdir().unwrap();
    let nodes = converged_sites(&bed, dir.path());

    // Cut site 3 off: its connections stay open but nothing gets through.
    let cut = LinkShape {
        delay_ms: 10.0,
        loss_percent: 100.0,
        ..LinkShape::default()
    };
    let cut_at = Instant::now();
    bed.set_link_shape(1, 3, cut).unwrap();
    bed.set_link_shape(2, 3, cut).unwrap();
    for (i, node) in nodes[..2].iter().enumerate() {
        let down = wait_event(
            node,
            "down",
            Some(&nodes[2].node_id),
            Duration::from_secs(15),
        );
        println!(
            "site{} reported the partitioned node {} by {:?}",
            i + 1,
            down["reason"],
            cut_at.elapsed()
        );
    }
    // Site 3 sees the others go down too.
    wait_event(&nodes[2], "down", None, Duration::from_secs(15));

    let healed_at = Instant::now();
    bed.set_link_shape(1, 3, LinkShape::delay(10.0)).unwrap();
    bed.set_link_shape(2, 3, LinkShape::delay(10.0)).unwrap();
    for node in &nodes[..2] {
        wait_event(node, "up", Some(&nodes[2].node_id), Duration::from_secs(30));
    }
    println!("healed node back up after {:?}", healed_at.elapsed());
}
