//! Membership between in-process nodes: discovery from one bootstrap address,
//! failure detection (crash and freeze), updates, graceful leave, and convergence at
//! 100 nodes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use slicenet_node::membership::{
    Capacity, DownReason, GeoLocation, Membership, MembershipConfig, MembershipEvent,
    MembershipHandle, NodeId, NodeIdentity, NodeInfo, PeerAddr, Timing, WgPublicKey,
};
use tokio::sync::mpsc;

fn info(i: usize) -> NodeInfo {
    NodeInfo {
        site: format!("site{i}"),
        region: if i.is_multiple_of(2) { "eu" } else { "asia" }.into(),
        location: GeoLocation::from_degrees(48.0 + i as f64 / 100.0, 2.0).unwrap(),
        capacity: Capacity {
            vcpus: 4,
            memory_mib: 8192,
            disk_gib: 50,
        },
        wireguard_key: WgPublicKey::from_bytes([(i % 251) as u8 + 1; 32]),
        tunnel_addr: Ipv4Addr::new(198, 19, 255, (i % 250) as u8 + 1),
        underlay: vec![format!("198.18.0.{}:51820", i % 250 + 1).parse().unwrap()],
        software_version: "test".into(),
    }
}

struct TestNode {
    membership: Membership,
    events: mpsc::Receiver<MembershipEvent>,
}

async fn start(i: usize, listen: PeerAddr, bootstrap: &[PeerAddr], timing: Timing) -> TestNode {
    let mut config = MembershipConfig::new(NodeIdentity::generate(), info(i)).listen(listen);
    config.bootstrap = bootstrap.to_vec();
    config.timing = timing;
    let (membership, events) = Membership::start(config).await.expect("membership starts");
    TestNode { membership, events }
}

fn loopback() -> PeerAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Polls `live_members` of every handle until each sees `expected`, or panics at `deadline`.
async fn wait_for_live(handles: &[MembershipHandle], expected: usize, deadline: Duration) {
    let start = Instant::now();
    loop {
        let mut counts = Vec::new();
        for h in handles {
            counts.push(h.status().await.unwrap().live_members);
        }
        if counts.iter().all(|&c| c == expected) {
            return;
        }
        if start.elapsed() > deadline / 2 && std::env::var("MB_DEBUG").is_ok() {
            let worst = counts
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| **c)
                .unwrap()
                .0;
            eprintln!("{:#?}", handles[worst].status().await.unwrap());
        }
        assert!(
            start.elapsed() < deadline,
            "membership did not converge to {expected} live peers in {deadline:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the first event matching `want` on `events`, or panics at `deadline`.
async fn wait_event(
    events: &mut mpsc::Receiver<MembershipEvent>,
    deadline: Duration,
    mut want: impl FnMut(&MembershipEvent) -> bool,
) -> MembershipEvent {
    tokio::time::timeout(deadline, async {
        loop {
            let event = events.recv().await.expect("event channel open");
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("expected membership event did not arrive in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_discover_each_other_from_one_bootstrap_address() {
    let first = start(0, loopback(), &[], Timing::default()).await;
    let bootstrap = first.membership.listen_addrs().to_vec();
    let mut nodes = vec![first];
    for i in 1..5 {
        nodes.push(start(i, loopback(), &bootstrap, Timing::default()).await);
    }
    let handles: Vec<_> = nodes.iter().map(|n| n.membership.handle()).collect();
    wait_for_live(&handles, 4, Duration::from_secs(20)).await;

    // Every record arrived verified and intact.
    let members = handles[4].members().await.unwrap();
    let sites: Vec<_> = members
        .iter()
        .map(|m| m.record.info().site.clone())
        .collect();
    for i in 0..4 {
        assert!(sites.contains(&format!("site{i}")), "{sites:?}");
    }
    let node0 = members
        .iter()
        .find(|m| m.record.node_id() == nodes[0].membership.node_id())
        .unwrap();
    assert_eq!(node0.record.info(), &info(0));
    futures::future::join_all(nodes.into_iter().map(|n| n.membership.shutdown())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_record_reaches_every_member() {
    let a = start(0, loopback(), &[], Timing::default()).await;
    let boot = a.membership.listen_addrs().to_vec();
    let mut b = start(1, loopback(), &boot, Timing::default()).await;
    let c = start(2, loopback(), &boot, Timing::default()).await;
    let handles = [
        a.membership.handle(),
        b.membership.handle(),
        c.membership.handle(),
    ];
    wait_for_live(&handles, 2, Duration::from_secs(20)).await;

    let mut new_info = info(0);
    new_info.capacity.vcpus = 64;
    handles[0].update_record(new_info.clone()).await.unwrap();
    let a_id = a.membership.node_id();
    let event = wait_event(
        &mut b.events,
        Duration::from_secs(10),
        |e| matches!(e, MembershipEvent::PeerUpdated(r) if r.node_id() == a_id),
    )
    .await;
    let MembershipEvent::PeerUpdated(record) = event else {
        unreachable!()
    };
    assert_eq!(record.info().capacity.vcpus, 64);
    a.membership.shutdown().await;
    b.membership.shutdown().await;
    c.membership.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_is_seen_as_leaving() {
    let a = start(0, loopback(), &[], Timing::default()).await;
    let boot = a.membership.listen_addrs().to_vec();
    let mut b = start(1, loopback(), &boot, Timing::default()).await;
    let handles = [a.membership.handle(), b.membership.handle()];
    wait_for_live(&handles, 1, Duration::from_secs(20)).await;
    let a_id = a.membership.node_id();
    a.membership.shutdown().await;
    let event = wait_event(
        &mut b.events,
        Duration::from_secs(10),
        |e| matches!(e, MembershipEvent::PeerDown { node, .. } if *node == a_id),
    )
    .await;
    assert!(matches!(
        event,
        MembershipEvent::PeerDown {
            reason: DownReason::Left | DownReason::Unreachable,
            ..
        }
    ));
    assert!(
        handles[0].status().await.is_err(),
        "a stopped membership answers no more queries"
    );
    b.membership.shutdown().await;
}

/// Runs one node on its own runtime thread so it can be killed like a crashed process:
/// dropping the runtime drops its sockets without any leave announcement.
struct CrashableNode {
    node_id: NodeId,
    addrs: Vec<PeerAddr>,
    runtime: Option<tokio::runtime::Runtime>,
    _membership: Membership,
}

fn start_crashable(i: usize, bootstrap: &[PeerAddr]) -> CrashableNode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bootstrap = bootstrap.to_vec();
    let node = runtime.block_on(start(i, loopback(), &bootstrap, Timing::default()));
    CrashableNode {
        node_id: node.membership.node_id(),
        addrs: node.membership.listen_addrs().to_vec(),
        runtime: Some(runtime),
        _membership: node.membership,
    }
}

impl CrashableNode {
    /// Blocks the node's only worker thread for `how_long`: its connections stay open
    /// but it answers nothing, like a hung host.
    fn freeze(&self, how_long: Duration) {
        if let Some(rt) = &self.runtime {
            rt.spawn(async move { std::thread::sleep(how_long) });
        }
    }

    fn crash(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Two observers and a victim on its own runtime, all live members of each other.
async fn two_observers_and_a_victim() -> (TestNode, TestNode, CrashableNode) {
    let first = start(0, loopback(), &[], Timing::default()).await;
    let boot = first.membership.listen_addrs().to_vec();
    let second = start(1, loopback(), &boot, Timing::default()).await;
    let victim = tokio::task::spawn_blocking(move || start_crashable(2, &boot))
        .await
        .unwrap();
    assert!(!victim.addrs.is_empty());
    let handles = [first.membership.handle(), second.membership.handle()];
    wait_for_live(&handles, 2, Duration::from_secs(20)).await;
    (first, second, victim)
}

/// Waits until both observers report `victim` down (each within `deadline`), then
/// checks that each counts one live member left, and shuts them down.
async fn observers_see_it_down(
    mut observers: [TestNode; 2],
    victim: NodeId,
    since: Instant,
    deadline: Duration,
    what: &str,
) {
    for node in &mut observers {
        let event = wait_event(
            &mut node.events,
            deadline,
            |e| matches!(e, MembershipEvent::PeerDown { node, .. } if *node == victim),
        )
        .await;
        println!("{what} detected after {:?}: {event:?}", since.elapsed());
    }
    for node in &observers {
        let status = node.membership.handle().status().await.unwrap();
        assert_eq!(status.live_members, 1);
    }
    for node in observers {
        node.membership.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_node_is_detected_by_every_other_node() {
    let (first, second, mut victim) = two_observers_and_a_victim().await;
    let victim_id = victim.node_id;
    let crashed_at = Instant::now();
    tokio::task::spawn_blocking(move || {
        victim.crash();
        victim
    })
    .await
    .unwrap();
    observers_see_it_down(
        [first, second],
        victim_id,
        crashed_at,
        Duration::from_secs(15),
        "crash",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_is_declared_down_when_its_heartbeats_stop() {
    let (first, second, mut victim) = two_observers_and_a_victim().await;
    // Healthy subjects echo every heartbeat: several periods pass without a silence.
    tokio::time::sleep(Timing::default().ping_interval * 4).await;
    for node in [&first, &second] {
        let counters = node.membership.handle().status().await.unwrap().counters;
        assert_eq!(counters.silences_detected, 0, "{counters:?}");
    }

    // Its connections stay open: only the missing heartbeat echoes can tell.
    let victim_id = victim.node_id;
    let frozen_at = Instant::now();
    victim.freeze(Duration::from_secs(12));
    observers_see_it_down(
        [first, second],
        victim_id,
        frozen_at,
        Duration::from_secs(10),
        "freeze",
    )
    .await;
    tokio::task::spawn_blocking(move || victim.crash())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_in_process_nodes_converge() {
    const N: usize = 100;
    if std::env::var("MB_DEBUG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("slicenet_node=debug")
            .try_init();
    }
    let started = Instant::now();
    // 100 nodes share this test's 2 cores: slower pings keep their combined
    // background load small; convergence does not depend on them.
    let timing = Timing {
        ping_interval: Duration::from_secs(2),
        ping_timeout: Duration::from_secs(2),
        ..Timing::default()
    };
    let first = start(0, PeerAddr::Memory(0), &[], timing.clone()).await;
    let boot = first.membership.listen_addrs().to_vec();
    let mut nodes = vec![first];
    for i in 1..N {
        nodes.push(start(i, PeerAddr::Memory(0), &boot, timing.clone()).await);
    }
    let handles: Vec<_> = nodes.iter().map(|n| n.membership.handle()).collect();
    wait_for_live(&handles, N - 1, Duration::from_secs(90)).await;
    println!("{N} nodes converged in {:?}", started.elapsed());
    let bootstrap_id = nodes[0].membership.node_id();
    let mut connections = 0;
    for h in &handles {
        let status = h.status().await.unwrap();
        // Node 0 is everyone's bootstrap address; its inbound connections close when idle.
        if status.node_id != bootstrap_id {
            connections += status.connected_peers;
        }
        let c = status.counters;
        // Stale copies are normal in gossip; anything else would mean honest nodes
        // produce records that others refuse.
        assert_eq!(
            c.dropped_total(),
            c.dropped_stale,
            "honest nodes refused each other's records: {c:?}"
        );
    }
    // Knowing a node does not need a connection to it: each node holds its monitoring
    // neighbours (a few per ring) and its gossip mesh, not a full mesh of N - 1 = 99.
    let mean = connections as f64 / (N - 1) as f64;
    println!("{mean:.1} connections per node");
    assert!(
        mean < 25.0,
        "{mean:.1} connections per node: the overlay is close to a full mesh"
    );
    futures::future::join_all(nodes.into_iter().map(|n| n.membership.shutdown())).await;
}
