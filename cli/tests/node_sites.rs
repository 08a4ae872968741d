//! Issue 5 end to end: an authority and three node daemons on three
//! namespaced sites; a slice with one sliver per site boots real guests
//! (QEMU here), which reach each other through their enclave; a slice
//! member runs a command on a remote sliver's console (a non-member cannot);
//! revocation, node failure, node restart and forged tickets behave.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use slicenet_authority::api::MemberChange;
use slicenet_experiments::catalog;
use slicenet_experiments::cluster::{default_appliance, Cluster, ClusterOptions, PlacedSliver};
use slicenet_experiments::scenarios::require_qemu;
use slicenet_testbed::require_privileged;

fn progress(line: &str) {
    eprintln!(
        "[{:>6.1}s] {line}",
        START.with(|s| s.elapsed().as_secs_f64())
    );
}

thread_local! {
    static START: Instant = Instant::now();
}

/// `ping` from one guest to another; returns the replies received.
fn guest_ping(cluster: &Cluster, from: &PlacedSliver, to: &PlacedSliver, count: u32) -> u32 {
    let out = cluster
        .guest_exec(
            from,
            &format!("ping -c {count} -W 1 -i 0.2 {}", to.address),
            Duration::from_secs(30),
        )
        .unwrap_or_default();
    slicenet_experiments::rtt::parse_ping(&out)
        .map(|s| s.received)
        .unwrap_or(0)
}

#[test]
fn slivers_at_three_sites_form_an_enclave_that_survives_failures_and_revocation() {
    let name = "slivers_at_three_sites_form_an_enclave_that_survives_failures_and_revocation";
    if !require_privileged(name) || !require_qemu(name) {
        return;
    }
    let (appliance_dir, appliance) =
        default_appliance(&mut |l| progress(l)).expect("default appliance");
    let work = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(
        ClusterOptions {
            sites: catalog::sites(3).unwrap().to_vec(),
            delay_scale: 0.0,
            shapeable: false,
            slicenet_bin: PathBuf::from(env!("CARGO_BIN_EXE_slicenet")),
            work_dir: work.path().to_path_buf(),
            appliance_dirs: vec![appliance_dir],
            runtime: Some("qemu".into()),
        },
        &mut |l| progress(l),
    )
    .expect("cluster starts; nodes discover each other with only a bootstrap address");

    // A slice with one sliver per site, joined by an enclave.
    let slivers = cluster
        .create_slice("ams_e2e", appliance, "end-to-end test")
        .expect("slice and enclave");
    assert_eq!(slivers.len(), 3);
    cluster
        .wait_ready(&slivers, Duration::from_secs(240), &mut |l| progress(l))
        .expect("every guest boots to its ready marker");

    // Guests at two different sites reach each other through the enclave.
    assert_eq!(
        guest_ping(&cluster, &slivers[0], &slivers[1], 3),
        3,
        "ams -> iad"
    );
    assert_eq!(
        guest_ping(&cluster, &slivers[2], &slivers[0], 3),
        3,
        "nrt -> ams"
    );
    progress("guests ping each other across sites");

    // A slice member reaches a sliver's console at another site through its
    // node, with a grant from the authority; a non-member is refused.
    let alice = cluster.add_user("alice").expect("principal alice");
    let mallory = cluster.add_user("mallory").expect("principal mallory");
    let admin = cluster.admin();
    cluster
        .run(async move {
            admin
                .change_members(
                    "ams_e2e",
                    &MemberChange {
                        add: vec!["alice".into()],
                        remove: vec![],
                    },
                )
                .await
        })
        .expect("alice joins the slice");
    let remote = slivers[1].id.to_string();
    assert_ne!(
        slivers[1].site, cluster.sites[0].name,
        "the console is remote"
    );
    let console = |key: &std::path::Path| {
        cluster
            .slicenet_as(
                1,
                key,
                &["console", "ams_e2e", &remote, "--exec", "echo hi-$((1+1))"],
            )
            .expect("slicenet console runs")
    };
    let out = console(&alice);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "alice's console failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "hi-2", "the command's output, and only it");
    let node_log = &cluster.nodes[cluster.node_index(&slivers[1].node).unwrap()].log_path;
    let log = std::fs::read_to_string(node_log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("console session accepted") && l.contains("principal=alice")),
        "the node logs who attached; {}: {:?}",
        node_log.display(),
        log.lines()
            .filter(|l| l.contains("console"))
            .collect::<Vec<_>>()
    );
    let out = console(&mallory);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a non-member got a console: {stderr}"
    );
    assert!(
        stderr.contains("may not open sliver consoles"),
        "the refusal says why: {stderr}"
    );
    progress("a member ran a command on a remote sliver's console; a non-member was refused");

    // Revoking a sliver from the enclave cuts its traffic within 1 s.
    let admin = cluster.admin();
    let revoked = slivers[2].clone();
    let revoked_at = Instant::now();
    cluster
        .run(async move {
            admin
                .remove_enclave_member("ams_e2e", "lan", revoked.id)
                .await
        })
        .expect("enclave member removed");
    let nrt_node = cluster.node_index(&slivers[2].node).unwrap();
    let nrt_tunnel = cluster.node_status(nrt_node).unwrap().tunnel_address;
    let ams_node = cluster.node_index(&slivers[0].node).unwrap();
    loop {
        let status = cluster.node_status(ams_node).unwrap();
        let still_peer = status
            .overlay
            .peers
            .iter()
            .any(|p| p.tunnel_address == nrt_tunnel);
        if !still_peer {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "ams still has the revoked sliver's node as a peer after 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    progress(&format!(
        "revocation took effect after {:?}",
        revoked_at.elapsed()
    ));
    assert_eq!(
        guest_ping(&cluster, &slivers[0], &slivers[2], 3),
        0,
        "revoked sliver still reachable"
    );
    assert_eq!(
        guest_ping(&cluster, &slivers[0], &slivers[1], 2),
        2,
        "other members unaffected"
    );

    // An authority outage stops neither the slivers nor their enclave.
    cluster.kill_authority();
    let outage = Instant::now();
    while cluster.node_status(ams_node).unwrap().authority_reachable {
        assert!(
            outage.elapsed() < Duration::from_secs(20),
            "outage not noticed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        guest_ping(&cluster, &slivers[1], &slivers[0], 2),
        2,
        "enclave down during the outage"
    );
    cluster.start_authority().unwrap();
    cluster.wait_for_authority(Duration::from_secs(30)).unwrap();
    progress("an authority outage left the enclave working");

    // Killing a node is detected by the others within seconds.
    let iad_node = cluster.node_index(&slivers[1].node).unwrap();
    let killed_at = Instant::now();
    cluster.kill_node(iad_node);
    let iad_id_seen_down = || {
        cluster
            .node_status(ams_node)
            .map(|s| s.members.iter().any(|m| !m.up && m.site == "iad"))
            .unwrap_or(false)
    };
    while !iad_id_seen_down() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "node failure not detected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    progress(&format!(
        "node failure detected after {:?}",
        killed_at.elapsed()
    ));

    // A forged ticket left in the node's state directory is refused on restart.
    let forged = cluster.nodes[iad_node]
        .data_dir
        .join("tickets/999999.ticket");
    std::fs::write(&forged, b"SNTK forged ticket bytes").unwrap();

    // Restarting the node brings its sliver back with no operator action.
    cluster.start_node(iad_node).unwrap();
    cluster
        .wait_ready(&slivers[1..2], Duration::from_secs(180), &mut |l| {
            progress(l)
        })
        .expect("the restarted node boots its sliver again");
    assert!(!forged.exists(), "the forged ticket was kept");
    let status = cluster.node_status(iad_node).unwrap();
    assert_eq!(status.slivers.len(), 1, "only the authority's sliver runs");
    assert!(status.tickets_refused >= 1, "forged ticket not counted");
    let mut replies = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while replies == 0 && Instant::now() < deadline {
        replies = guest_ping(&cluster, &slivers[0], &slivers[1], 3);
    }
    assert!(
        replies > 0,
        "enclave connectivity did not come back after the node restart"
    );
    progress("restarted node's sliver reachable again");
}
