//! Frames cross sites through an encrypted enclave: ping and TCP between
//! TAP ports in different network namespaces.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use slicenet_overlay::PortConfig;
use slicenet_testbed::require_privileged;

#[test]
fn ping_crosses_an_encrypted_enclave() {
    if !require_privileged("ping_crosses_an_encrypted_enclave") {
        return;
    }
    let (_bed, nodes) = mesh(2);
    enclave(42, &[&nodes[0], &nodes[1]]);
    for (i, n) in nodes.iter().enumerate() {
        let addr = Ipv4Addr::new(198, 19, 42, i as u8 + 1);
        n.in_site(move |ov| ov.add_port(PortConfig::tap("vm", 42, "tap42").address(addr, 24)))
            .expect("TAP port");
    }
    assert!(
        ping(&nodes[0], Ipv4Addr::new(198, 19, 42, 2), 3),
        "ping across the enclave failed:\n{}\n{}",
        nodes[0].status().render(),
        nodes[1].status().render()
    );
    let s = nodes[0].status();
    let peer = s.peer(&nodes[1].public()).expect("peer listed");
    assert!(
        peer.last_handshake_secs.is_some(),
        "a WireGuard handshake completed"
    );
    assert!(peer.tx_frames >= 3 && peer.rx_frames >= 3, "{peer:?}");
    let port = s.port("vm").expect("port listed");
    assert!(port.rx_frames >= 3 && port.tx_frames >= 3, "{port:?}");
    assert!(data_drops(&s).is_empty(), "no frame drops: {:?}", s.drops);
}

/// Deterministic test data: byte i of the stream.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[test]
fn tcp_transfer_arrives_intact_across_an_enclave() {
    if !require_privileged("tcp_transfer_arrives_intact_across_an_enclave") {
        return;
    }
    tcp_transfer([true, true]);
}

#[test]
fn tcp_transfer_arrives_intact_between_offload_and_plain_tap_ports() {
    if !require_privileged("tcp_transfer_arrives_intact_between_offload_and_plain_tap_ports") {
        return;
    }
    // The sender cuts TSO super-frames; the receiver's TAP takes plain frames.
    tcp_transfer([true, false]);
}

/// Sends 32 MB from site 1 to site 2 over TCP across an enclave, TAP
/// offloads on or off per site, and checks every byte.
fn tcp_transfer(offload: [bool; 2]) {
    const BYTES: usize = 32 << 20;
    let (_bed, nodes) = mesh(2);
    enclave(7, &[&nodes[0], &nodes[1]]);
    for (i, n) in nodes.iter().enumerate() {
        let addr = Ipv4Addr::new(198, 19, 7, i as u8 + 1);
        let mut port = PortConfig::tap("vm", 7, "tap7").address(addr, 24);
        if let slicenet_overlay::PortKind::Tap { offload: o, .. } = &mut port.kind {
            *o = offload[i];
        }
        n.in_site(move |ov| ov.add_port(port)).expect("TAP port");
    }
    assert!(ping(&nodes[0], Ipv4Addr::new(198, 19, 7, 2), 1));
    let listener = nodes[1].in_site(|_| std::net::TcpListener::bind("198.19.7.2:7000").unwrap());
    let server = std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0usize;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(at + k), "byte {} corrupted", at + k);
            }
            at += n;
        }
        at
    });
    let stream = nodes[0].in_site(|_| {
        std::net::TcpStream::connect_timeout(
            &"198.19.7.2:7000".parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap()
    });
    {
        use std::io::Write;
        let mut stream = stream;
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let data: Vec<u8> = (0..BYTES).map(pattern).collect();
        stream.write_all(&data).unwrap();
    }
    let received = server.join().expect("server thread");
    assert_eq!(received, BYTES);
    let s = nodes[1].status();
    assert!(data_drops(&s).is_empty(), "no frame drops: {:?}", s.drops);
}
