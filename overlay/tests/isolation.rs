//! Enclaves on namespaced sites with TAP ports: broadcasts stay in their
//! enclave, overlapping address plans stay apart, spoofed frames die at the
//! port.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use slicenet_overlay::{DropReason, MacAddr, PortConfig};
use slicenet_testbed::require_privileged;

fn addr(enclave: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, enclave, host)
}

#[test]
fn arp_broadcasts_reach_only_ports_of_the_same_enclave() {
    if !require_privileged("arp_broadcasts_reach_only_ports_of_the_same_enclave") {
        return;
    }
    let (_bed, nodes) = mesh(2);
    enclave(10, &[&nodes[0], &nodes[1]]);
    enclave(20, &[&nodes[0], &nodes[1]]);
    for (i, n) in nodes.iter().enumerate() {
        let host = i as u8 + 1;
        n.in_site(move |ov| {
            ov.add_port(PortConfig::tap("a", 10, "ta").address(addr(10, host), 24))?;
            ov.add_port(PortConfig::tap("b", 20, "tb").address(addr(20, host), 24))
        })
        .expect("ports");
    }
    let same = RawSocket::open(nodes[1].site.ns(), "ta");
    let other_remote = RawSocket::open(nodes[1].site.ns(), "tb");
    let other_local = RawSocket::open(nodes[0].site.ns(), "tb");
    // Ask for an address nobody has, so the request is repeated.
    let target = addr(10, 77);
    let pinger = std::thread::spawn({
        let site = nodes[0].site.clone();
        move || {
            site.command("ping")
                .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "1"])
                .arg(target.to_string())
                .output()
        }
    });
    let wait = Duration::from_secs(5);
    assert!(
        same.recv_matching(wait, |f| is_arp_request_for(f, target))
            .is_some(),
        "the ARP request reached the same enclave's port on the other site"
    );
    let quiet = Duration::from_millis(700);
    assert!(other_remote
        .recv_matching(quiet, |f| is_arp_request_for(f, target))
        .is_none());
    assert!(other_local
        .recv_matching(quiet, |f| is_arp_request_for(f, target))
        .is_none());
    let _ = pinger.join();
}

#[test]
fn enclaves_with_overlapping_addresses_and_identical_macs_stay_isolated() {
    if !require_privileged("enclaves_with_overlapping_addresses_and_identical_macs_stay_isolated") {
        return;
    }
    let (bed, nodes) = mesh(2);
    enclave(10, &[&nodes[0], &nodes[1]]);
    enclave(20, &[&nodes[0], &nodes[1]]);
    let guests: Vec<Guest> = (0..4).map(|k| Guest::new(&bed, k)).collect();
    for (i, n) in nodes.iter().enumerate() {
        // Both enclaves use the same MAC and IP on each site.
        let mac = MacAddr([0x02, 0, 0, 0, 0x0e, i as u8 + 1]);
        n.in_site(move |ov| {
            ov.add_port(PortConfig::tap("a", 10, "ea").mac(mac))?;
            ov.add_port(PortConfig::tap("b", 20, "eb").mac(mac))
        })
        .expect("ports");
        let host = i as u8 + 1;
        guests[2 * i].adopt(&n.site, "ea", addr(1, host));
        guests[2 * i + 1].adopt(&n.site, "eb", addr(1, host));
    }
    // A server on 198.19.1.2:7000 in each enclave says which one it is.
    let servers: Vec<_> = [(&guests[2], "enclave 10"), (&guests[3], "enclave 20")]
        .into_iter()
        .map(|(g, answer)| {
            let listener =
                g.ns.spawn_thread(|| std::net::TcpListener::bind("198.19.1.2:7000").unwrap())
                    .join()
                    .unwrap()
                    .unwrap();
            std::thread::spawn(move || {
                use std::io::Write;
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            })
        })
        .collect();
    for (g, expected) in [(&guests[0], "enclave 10"), (&guests[1], "enclave 20")] {
        assert!(g.ping(addr(1, 2), 2), "{expected}: ping");
        let got =
            g.ns.spawn_thread(|| {
                use std::io::Read;
                let mut s = std::net::TcpStream::connect_timeout(
                    &"198.19.1.2:7000".parse().unwrap(),
                    Duration::from_secs(5),
                )
                .unwrap();
                let mut answer = String::new();
                s.read_to_string(&mut answer).unwrap();
                answer
            })
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(got, expected);
    }
    for s in servers {
        s.join().unwrap();
    }
    for n in &nodes {
        // Frames that arrived while a TAP was moving into its guest (link
        // down) are the only acceptable drops.
        let s = n.status();
        let mut drops = data_drops(&s);
        drops.remove("port_down");
        assert!(drops.is_empty(), "{:?}", s.drops);
    }
}

#[test]
fn frames_with_spoofed_source_macs_die_at_the_tap_port() {
    if !require_privileged("frames_with_spoofed_source_macs_die_at_the_tap_port") {
        return;
    }
    let (_bed, nodes) = mesh(2);
    enclave(10, &[&nodes[0], &nodes[1]]);
    let own = MacAddr([0x02, 0, 0, 0, 0x0a, 1]);
    nodes[0]
        .in_site(move |ov| ov.add_port(PortConfig::tap("a", 10, "ta").mac(own)))
        .expect("port");
    nodes[1]
        .in_site(|ov| ov.add_port(PortConfig::tap("a", 10, "ta")))
        .expect("port");
    let sender = RawSocket::open(nodes[0].site.ns(), "ta");
    let receiver = RawSocket::open(nodes[1].site.ns(), "ta");
    let frame = |src: MacAddr, marker: u8| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.resize(64, marker);
        f
    };
    let marked = |m: u8| move |f: &[u8]| f.len() >= 64 && f[12..14] == [0x88, 0xb5] && f[20] == m;
    sender.send(&frame(MacAddr([0x02, 0, 0, 0, 0x66, 0x66]), 1));
    assert!(receiver
        .recv_matching(Duration::from_millis(700), marked(1))
        .is_none());
    assert!(wait_until(Duration::from_secs(2), || nodes[0]
        .status()
        .drop_count(DropReason::SpoofedSourceMac)
        == 1));
    assert_eq!(
        nodes[0].status().port("a").unwrap().drops["spoofed_source_mac"],
        1
    );
    // The same frame from the port's own address goes through.
    sender.send(&frame(own, 2));
    assert!(receiver
        .recv_matching(Duration::from_secs(5), marked(2))
        .is_some());
}
