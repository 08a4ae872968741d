//! The data plane under hostile input and runtime change: bad datagrams are
//! counted and dropped while traffic flows; peers, ports and enclaves come
//! and go without disturbing others; a removed peer passes nothing more;
//! endpoints roam; sessions rekey; a handshake flood gets cookies.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use common::*;
use slicenet_overlay::{DropReason, PeerConfig, PortConfig, PublicKey};
use slicenet_testbed::require_privileged;

fn vm(vni: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, vni, host)
}

/// A handshake initiation from a fresh key, addressed to `responder`.
fn initiation(responder: &PublicKey) -> Vec<u8> {
    let secret = x25519::StaticSecret::from(rand::random::<[u8; 32]>());
    let mut tunn = Tunn::new(
        secret,
        x25519::PublicKey::from(responder.0),
        None,
        None,
        rand::random::<u32>() >> 8,
        None,
    );
    let mut buf = [0u8; 148];
    match tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

/// The UDP payload of a WireGuard data message from site 1 to site 2,
/// captured on site 2's link.
fn capture_data_message(nodes: &[Node]) -> Vec<u8> {
    let tap = RawSocket::open(nodes[1].site.ns(), "to1");
    let pinger = ping_in_background(&nodes[0], vm(10, 2), 5, 0.1);
    let frame = tap
        .recv_matching(Duration::from_secs(5), |f| {
            f.len() > 42 + 64
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && f[26..30] == [198, 18, 0, 1]
                && u16::from_be_bytes([f[36], f[37]]) == PORT
                && f[42] == 4
        })
        .expect("a data message on the wire");
    assert_eq!(pinger.join().unwrap(), 0.0);
    frame[42..].to_vec()
}

#[test]
fn hostile_datagrams_are_counted_and_dropped_while_traffic_flows() {
    if !require_privileged("hostile_datagrams_are_counted_and_dropped_while_traffic_flows") {
        return;
    }
    let (bed, nodes) = mesh_in(3, 2);
    enclave(10, &[&nodes[0], &nodes[1]]);
    tap_ports(&[&nodes[0], &nodes[1]], 10, "vm10");
    let captured = capture_data_message(&nodes);
    let target: SocketAddr = (bed.site(2).addr(), PORT).into();
    let victim_key = nodes[1].public();
    let ping = ping_in_background(&nodes[0], vm(10, 2), 40, 0.05);
    let attacker = bed
        .site(3)
        .ns()
        .spawn_thread(|| UdpSocket::bind("198.18.0.3:0").unwrap())
        .join()
        .unwrap()
        .unwrap();
    let with_counter = |mut p: Vec<u8>, bump: u64| {
        let c = u64::from_le_bytes(p[8..16].try_into().unwrap()) + bump;
        p[8..16].copy_from_slice(&c.to_le_bytes());
        p
    };
    for i in 0..20u64 {
        let send = |p: &[u8]| {
            attacker.send_to(p, target).unwrap();
        };
        send(&[0xff; 100]); // garbage
        send(&captured[..20]); // truncated below the data header
        send(&with_counter(captured[..60].to_vec(), 1_000_000 + i)); // truncated
        let mut flipped = with_counter(captured.clone(), 2_000_000 + i);
        let last = flipped.len() - 1;
        flipped[last] ^= 0x80;
        send(&flipped); // corrupted ciphertext
        send(&captured); // replayed verbatim
        if i < 5 {
            send(&initiation(&victim_key)); // a key the node does not know
            let stranger = slicenet_overlay::PrivateKey::generate().public_key();
            send(&initiation(&stranger)); // meant for someone else: bad MAC
            let mut lost = captured.clone();
            lost[4..8].copy_from_slice(&0x00ab_cdefu32.to_le_bytes());
            send(&lost); // unknown session index
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(ping.join().unwrap(), 0.0, "traffic kept flowing");
    let s = nodes[1].status();
    let count = |r| s.drop_count(r);
    assert!(count(DropReason::MalformedDatagram) >= 40, "{:?}", s.drops);
    assert!(count(DropReason::DecryptFailed) >= 40, "{:?}", s.drops);
    assert!(count(DropReason::Replayed) >= 20, "{:?}", s.drops);
    assert!(count(DropReason::UnknownPeer) >= 10, "{:?}", s.drops);
    assert!(count(DropReason::HandshakeInvalid) >= 5, "{:?}", s.drops);
    let peer = s.peer(&nodes[0].public()).unwrap();
    assert_eq!(
        peer.endpoint,
        Some((bed.site(1).addr(), PORT).into()),
        "forged datagrams did not move the peer's endpoint"
    );
    assert_eq!(s.port("vm10").unwrap().drops.len(), 0);
}

#[test]
fn a_removed_peer_passes_not_one_more_frame() {
    if !require_privileged("a_removed_peer_passes_not_one_more_frame") {
        return;
    }
    let (_bed, nodes) = mesh(2);
    enclave(10, &[&nodes[0], &nodes[1]]);
    tap_ports(&[&nodes[0], &nodes[1]], 10, "vm10");
    assert!(ping(&nodes[0], vm(10, 2), 2));
    nodes[1].overlay.remove_peer(&nodes[0].public()).unwrap();
    let delivered = nodes[1].status().port("vm10").unwrap().tx_frames;
    let sent = nodes[0]
        .status()
        .peer(&nodes[1].public())
        .unwrap()
        .tx_frames;
    assert_eq!(
        ping_in_background(&nodes[0], vm(10, 2), 10, 0.05)
            .join()
            .unwrap(),
        100.0
    );
    let after = nodes[1].status();
    assert_eq!(
        after.port("vm10").unwrap().tx_frames,
        delivered,
        "a frame of the removed peer reached the port"
    );
    assert!(
        nodes[0]
            .status()
            .peer(&nodes[1].public())
            .unwrap()
            .tx_frames
            > sent
    );
    assert!(after.drop_count(DropReason::UnknownPeer) >= 10);
    // Adding it back restores the enclave.
    nodes[1].overlay.add_peer(nodes[0].as_peer()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || ping(
        &nodes[0],
        vm(10, 2),
        1
    )));
}

#[test]
fn runtime_changes_do_not_disturb_other_traffic() {
    if !require_privileged("runtime_changes_do_not_disturb_other_traffic") {
        return;
    }
    let (_bed, nodes) = mesh(3);
    enclave(10, &[&nodes[0], &nodes[1]]);
    tap_ports(&[&nodes[0], &nodes[1]], 10, "vm10");
    assert!(ping(&nodes[0], vm(10, 2), 1));
    let steady = ping_in_background(&nodes[0], vm(10, 2), 80, 0.025);
    let started = Instant::now();
    // A second enclave comes, carries traffic and goes.
    enclave(20, &[&nodes[0], &nodes[1], &nodes[2]]);
    tap_ports(&[&nodes[0], &nodes[1], &nodes[2]], 20, "vm20");
    assert!(ping(&nodes[0], vm(20, 3), 2), "the new enclave works");
    nodes[2].overlay.remove_port("vm20").unwrap();
    for n in &nodes {
        n.overlay.remove_enclave(20).unwrap();
    }
    // Peers come and go and change.
    nodes[0].overlay.remove_peer(&nodes[2].public()).unwrap();
    nodes[0].overlay.add_peer(nodes[2].as_peer()).unwrap();
    nodes[0].overlay.update_peer(nodes[1].as_peer()).unwrap();
    let members = [nodes[1].public(), nodes[2].public()];
    nodes[0].overlay.set_enclave_members(10, members).unwrap();
    nodes[0]
        .overlay
        .set_enclave_members(10, [nodes[1].public()])
        .unwrap();
    // A port is added to the busy enclave and removed again.
    nodes[1]
        .in_site(|ov| ov.add_port(PortConfig::tap("extra", 10, "extra")))
        .unwrap();
    nodes[1].overlay.remove_port("extra").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "changes happened while pinging"
    );
    assert_eq!(
        steady.join().unwrap(),
        0.0,
        "no packet of the steady flow was lost"
    );
}

#[test]
fn a_roaming_peer_is_followed_to_its_new_address() {
    if !require_privileged("a_roaming_peer_is_followed_to_its_new_address") {
        return;
    }
    let bed = slicenet_testbed::Testbed::builder(2).build().unwrap();
    let n1 = Node::start(bed.site(1), Ipv4Addr::new(198, 19, 255, 1));
    // Node 2 listens on every address, so its source follows the routes.
    let n2 = Node::start_with(
        bed.site(2),
        Ipv4Addr::new(198, 19, 255, 2),
        (Ipv4Addr::UNSPECIFIED, PORT).into(),
        |_| {},
    );
    // Node 1 does not know where node 2 is: it learns from node 2's traffic.
    n1.overlay
        .add_peer(PeerConfig::new(n2.public(), n2.tunnel).name("site2"))
        .unwrap();
    n2.overlay.add_peer(n1.as_peer()).unwrap();
    enclave(10, &[&n1, &n2]);
    tap_ports(&[&n1, &n2], 10, "vm10");
    assert!(ping(&n2, vm(10, 1), 2));
    let endpoint = |n: &Node| n.status().peer(&n2.public()).unwrap().endpoint;
    assert_eq!(endpoint(&n1), Some((bed.site(2).addr(), PORT).into()));
    // Node 2 moves: its datagrams now leave from its link address.
    let link_addr = String::from_utf8(
        n2.run("ip", &["-4", "-o", "addr", "show", "dev", "to1"])
            .stdout,
    )
    .unwrap();
    let new_ip: Ipv4Addr = link_addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("link address");
    let route = String::from_utf8(
        n2.run("ip", &["-4", "route", "show", "198.18.0.1/32"])
            .stdout,
    )
    .unwrap();
    let via = route
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .unwrap()
        .to_string();
    ip(&[
        "-n",
        n2.site.ns().name(),
        "route",
        "change",
        "198.18.0.1/32",
        "via",
        &via,
        "src",
        &new_ip.to_string(),
    ]);
    assert!(ping(&n2, vm(10, 1), 3), "traffic follows the move");
    assert_eq!(endpoint(&n1), Some((new_ip, PORT).into()));
    assert!(ping(&n1, vm(10, 2), 2), "and the other way round");
}

#[test]
fn a_rekey_replaces_the_session_without_losing_traffic() {
    if !require_privileged("a_rekey_replaces_the_session_without_losing_traffic") {
        return;
    }
    let (_bed, nodes) = mesh(2);
    enclave(10, &[&nodes[0], &nodes[1]]);
    tap_ports(&[&nodes[0], &nodes[1]], 10, "vm10");
    assert!(ping(&nodes[0], vm(10, 2), 1));
    let age = || {
        nodes[0]
            .status()
            .peer(&nodes[1].public())
            .unwrap()
            .last_handshake_secs
            .unwrap_or(f64::MAX)
    };
    assert!(wait_until(Duration::from_secs(5), || age() >= 1.0));
    let steady = ping_in_background(&nodes[0], vm(10, 2), 40, 0.025);
    nodes[0].overlay.rekey_peer(&nodes[1].public()).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || age() < 0.9),
        "a new handshake completed"
    );
    assert_eq!(steady.join().unwrap(), 0.0);
}

#[test]
fn a_handshake_flood_is_answered_with_cookies_and_sessions_survive() {
    if !require_privileged("a_handshake_flood_is_answered_with_cookies_and_sessions_survive") {
        return;
    }
    let bed = slicenet_testbed::Testbed::builder(3).build().unwrap();
    let n1 = Node::start(bed.site(1), Ipv4Addr::new(198, 19, 255, 1));
    let n2 = Node::start_with(
        bed.site(2),
        Ipv4Addr::new(198, 19, 255, 2),
        (bed.site(2).addr(), PORT).into(),
        |c| c.handshake_rate_limit = 20,
    );
    n1.overlay.add_peer(n2.as_peer()).unwrap();
    n2.overlay.add_peer(n1.as_peer()).unwrap();
    enclave(10, &[&n1, &n2]);
    tap_ports(&[&n1, &n2], 10, "vm10");
    assert!(ping(&n1, vm(10, 2), 1));
    let victim: SocketAddr = (bed.site(2).addr(), PORT).into();
    let key = n2.public();
    let flood = bed.site(3).ns().spawn_thread(move || {
        let sock = UdpSocket::bind("198.18.0.3:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let inits: Vec<Vec<u8>> = (0..64).map(|_| initiation(&key)).collect();
        let (mut sent, mut cookies) = (0u64, 0u64);
        let end = Instant::now() + Duration::from_secs(8);
        let mut buf = [0u8; 256];
        while Instant::now() < end {
            // About 400 initiations a second, 20 times the limit.
            for p in &inits[..8] {
                let _ = sock.send_to(p, victim);
                sent += 1;
            }
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n == 64 && buf[0] == 3 {
                    cookies += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (sent, cookies)
    });
    std::thread::sleep(Duration::from_millis(300));
    let steady = ping_in_background(&n1, vm(10, 2), 40, 0.05);
    // A legitimate new handshake must get through the flood: boringtun
    // stores the cookie and its retransmission carries a valid MAC2.
    let age = || {
        n1.status()
            .peer(&n2.public())
            .unwrap()
            .last_handshake_secs
            .unwrap_or(f64::MAX)
    };
    let before = age();
    n1.overlay.rekey_peer(&n2.public()).unwrap();
    assert_eq!(
        steady.join().unwrap(),
        0.0,
        "established traffic is not disturbed"
    );
    assert!(
        wait_until(Duration::from_secs(8), || age() < before.min(1.0)),
        "the rekey completed under the flood"
    );
    let (sent, cookies) = flood.join().unwrap().unwrap();
    let s = n2.status();
    assert!(
        cookies > sent / 2,
        "most of {sent} initiations got cookies, not {cookies}"
    );
    assert!(s.underlay.cookie_replies_sent >= cookies);
    assert!(s.drop_count(DropReason::HandshakeUnderLoad) >= cookies);
    // Without cookies the victim would have spent a DH on each; it did
    // so only for the few within the limit.
    assert!(
        s.drop_count(DropReason::UnknownPeer) < sent / 4,
        "{} unknown-peer handshakes processed of {sent}",
        s.drop_count(DropReason::UnknownPeer)
    );
}
