//! The learning switch, end to end over real WireGuard on loopback: which
//! frames reach which ports, and which are dropped under which reason.
//! Needs no privileges (memory and unix ports, UDP on 127.0.0.1).

use std::net::Ipv4Addr;
use std::time::Duration;

use slicenet_overlay::{
    DropReason, MacAddr, MemoryPort, Overlay, OverlayConfig, PeerConfig, PortConfig, PrivateKey,
    PublicKey,
};

/// How long to wait for a frame that must not come.
const QUIET: Duration = Duration::from_millis(300);
/// How long to wait for a frame that must come.
const ARRIVE: Duration = Duration::from_secs(5);

struct LoNode {
    overlay: Overlay,
    _rt: tokio::runtime::Runtime,
}

impl LoNode {
    fn start(n: u8) -> LoNode {
        Self::start_with(n, |_| {})
    }

    fn start_with(n: u8, tweak: impl FnOnce(&mut OverlayConfig)) -> LoNode {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = OverlayConfig::new(
            PrivateKey::generate(),
            "127.0.0.1:0".parse().unwrap(),
            Ipv4Addr::new(198, 19, 255, n),
        );
        tweak(&mut cfg);
        let overlay = rt.block_on(async { Overlay::start(cfg) }).unwrap();
        LoNode { overlay, _rt: rt }
    }

    fn key(&self) -> PublicKey {
        self.overlay.public_key()
    }

    fn as_peer(&self, name: &str) -> PeerConfig {
        PeerConfig::new(self.key(), self.overlay.tunnel_address())
            .endpoint(self.overlay.local_addr())
            .name(name)
    }

    fn port(&self, name: &str, vni: u32, mac: MacAddr) -> MemoryPort {
        self.overlay
            .add_memory_port(name, vni, Some(mac), None)
            .unwrap()
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.overlay.status().drop_count(reason)
    }
}

/// Nodes 1..=n, each a peer of every other.
fn nodes(n: u8) -> Vec<LoNode> {
    let nodes: Vec<LoNode> = (1..=n).map(LoNode::start).collect();
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if i != j {
                a.overlay
                    .add_peer(b.as_peer(&format!("n{}", j + 1)))
                    .unwrap();
            }
        }
    }
    nodes
}

/// Enclave `vni` on every node of `nodes`, all the others as members.
fn enclave(vni: u32, nodes: &[&LoNode]) {
    for a in nodes {
        let members: Vec<PublicKey> = nodes
            .iter()
            .map(|b| b.key())
            .filter(|k| *k != a.key())
            .collect();
        a.overlay.add_enclave(vni, members).unwrap();
    }
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, last])
}

/// An Ethernet frame with a recognisable payload.
fn frame(dst: MacAddr, src: MacAddr, marker: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.resize(len.max(15), marker);
    f
}

#[track_caller]
fn expect_frame(port: &MemoryPort, want: &[u8]) {
    let deadline = std::time::Instant::now() + ARRIVE;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match port.recv_timeout(left) {
            Some(f) if f == want => return,
            Some(_) => continue,
            None => break,
        }
    }
    panic!("the frame did not arrive");
}

#[track_caller]
fn expect_nothing(port: &MemoryPort) {
    if let Some(f) = port.recv_timeout(QUIET) {
        panic!(
            "unexpected frame of {} bytes: {:02x?}",
            f.len(),
            &f[..f.len().min(20)]
        );
    }
}

#[test]
fn broadcasts_reach_every_port_of_their_enclave_and_no_other() {
    let n = nodes(2);
    enclave(1, &[&n[0], &n[1]]);
    enclave(2, &[&n[0], &n[1]]);
    let a1 = n[0].port("a1", 1, mac(0xa1));
    let a1x = n[0].port("a1x", 1, mac(0xa3));
    let b1 = n[0].port("b1", 2, mac(0xb1));
    let a2 = n[1].port("a2", 1, mac(0xa2));
    let a2x = n[1].port("a2x", 1, mac(0xa4));
    let b2 = n[1].port("b2", 2, mac(0xb2));
    let f = frame(MacAddr::BROADCAST, mac(0xa1), 1, 100);
    a1.send(&f);
    expect_frame(&a2, &f);
    expect_frame(&a2x, &f);
    expect_frame(&a1x, &f);
    expect_nothing(&a1);
    expect_nothing(&b1);
    expect_nothing(&b2);
    // The other enclave works too, and stays apart the other way round.
    let g = frame(MacAddr::BROADCAST, mac(0xb2), 2, 100);
    b2.send(&g);
    expect_frame(&b1, &g);
    expect_nothing(&a1);
    expect_nothing(&a2);
}

#[test]
fn unicast_goes_only_where_the_mac_was_learned() {
    let n = nodes(2);
    enclave(1, &[&n[0], &n[1]]);
    let a1 = n[0].port("a1", 1, mac(0xa1));
    let a2 = n[1].port("a2", 1, mac(0xa2));
    let a2x = n[1].port("a2x", 1, mac(0xa4));
    // a2 announces itself; everyone learns where it lives.
    let hello = frame(MacAddr::BROADCAST, mac(0xa2), 0, 60);
    a2.send(&hello);
    expect_frame(&a1, &hello);
    expect_frame(&a2x, &hello);
    let before = n[0].overlay.status().enclaves[0].flooded_frames;
    let f = frame(mac(0xa2), mac(0xa1), 3, 200);
    a1.send(&f);
    expect_frame(&a2, &f);
    expect_nothing(&a2x);
    assert_eq!(
        n[0].overlay.status().enclaves[0].flooded_frames,
        before,
        "a known unicast destination is not flooded"
    );
}

#[test]
fn frames_from_a_remote_node_are_never_relayed_to_another() {
    let n = nodes(3);
    enclave(1, &[&n[0], &n[1]]);
    // Node 3 knows only node 2 as a member, so its announcement teaches
    // node 2 (but not node 1) where c3 lives.
    n[2].overlay.add_enclave(1, [n[1].key()]).unwrap();
    n[1].overlay
        .set_enclave_members(1, [n[0].key(), n[2].key()])
        .unwrap();
    n[0].overlay
        .set_enclave_members(1, [n[1].key(), n[2].key()])
        .unwrap();
    let a1 = n[0].port("a1", 1, mac(0xa1));
    let a2 = n[1].port("a2", 1, mac(0xa2));
    let c3 = n[2].port("c3", 1, mac(0xc3));
    let hello = frame(MacAddr::BROADCAST, mac(0xc3), 0, 60);
    c3.send(&hello);
    expect_frame(&a2, &hello);
    expect_nothing(&a1);
    // Node 1 floods a frame for c3 to nodes 2 and 3: node 2 must not relay
    // it to node 3, and node 3 does not accept node 1 in the enclave.
    let f = frame(mac(0xc3), mac(0xa1), 4, 100);
    a1.send(&f);
    assert!(wait_for(|| n[1].drops(DropReason::SplitHorizon) == 1));
    assert!(wait_for(|| n[2].drops(DropReason::PeerNotMember) == 1));
    expect_nothing(&c3);
    expect_nothing(&a2);
}

#[test]
fn oversize_frames_are_dropped_and_counted() {
    let n = nodes(2);
    enclave(1, &[&n[0], &n[1]]);
    let a1 = n[0]
        .overlay
        .add_memory_port("a1", 1, Some(mac(0xa1)), Some(1000))
        .unwrap();
    let small = n[1]
        .overlay
        .add_memory_port("small", 1, Some(mac(0xa2)), Some(500))
        .unwrap();
    let big = n[1].port("big", 1, mac(0xa4));
    // Ingress: 1000 bytes of payload + 14 of header is the most a1 sends.
    a1.send(&frame(MacAddr::BROADCAST, mac(0xa1), 5, 1015));
    assert!(wait_for(|| n[0].drops(DropReason::Oversize) == 1));
    let s = n[0].overlay.status();
    assert_eq!(s.port("a1").unwrap().drops["oversize"], 1);
    // Egress: 700 bytes reach the big port but not the small one.
    let f = frame(MacAddr::BROADCAST, mac(0xa1), 6, 714);
    a1.send(&f);
    expect_frame(&big, &f);
    expect_nothing(&small);
    assert_eq!(
        n[1].overlay.status().port("small").unwrap().drops["oversize"],
        1
    );
}

#[test]
fn vlan_tagged_frames_are_carried_unchanged() {
    let n = nodes(2);
    enclave(1, &[&n[0], &n[1]]);
    let a1 = n[0].port("a1", 1, mac(0xa1));
    let a2 = n[1].port("a2", 1, mac(0xa2));
    let mtu = usize::from(n[0].overlay.default_port_mtu());
    // A full-size 802.1Q frame: tag 0x8100, VLAN 42, priority 5.
    let mut f = Vec::new();
    f.extend_from_slice(&MacAddr::BROADCAST.0);
    f.extend_from_slice(&mac(0xa1).0);
    f.extend_from_slice(&[0x81, 0x00, 0xa0, 0x2a, 0x08, 0x00]);
    f.resize(mtu + 18, 0x77);
    a1.send(&f);
    expect_frame(&a2, &f);
    // One byte more is over the MTU even with the tag allowance.
    f.push(0);
    a1.send(&f);
    expect_nothing(&a2);
}

#[test]
fn spoofed_and_invalid_source_macs_are_dropped() {
    let n = nodes(2);
    enclave(1, &[&n[0], &n[1]]);
    let a1 = n[0].port("a1", 1, mac(0xa1));
    let a2 = n[1].port("a2", 1, mac(0xa2));
    a1.send(&frame(MacAddr::BROADCAST, mac(0x99), 7, 64));
    a1.send(&frame(
        MacAddr::BROADCAST,
        MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
        8,
        64,
    ));
    expect_nothing(&a2);
    let s = n[0].overlay.status();
    assert_eq!(s.drop_count(DropReason::SpoofedSourceMac), 1);
    assert_eq!(s.drop_count(DropReason::InvalidSourceMac), 1);
    assert_eq!(s.port("a1").unwrap().drops["spoofed_source_mac"], 1);
}

#[test]
fn a_remote_node_cannot_claim_a_mac_pinned_to_a_local_port() {
    let n = nodes(2);
    enclave(1, &[&n[0], &n[1]]);
    let a1 = n[0].port("a1", 1, mac(0xa1));
    let a1x = n[0].port("a1x", 1, mac(0xa3));
    // A bridging port on node 2 (no anti-spoofing) claims a1's address.
    let bridge = n[1].overlay.add_memory_port("br", 1, None, None).unwrap();
    bridge.send(&frame(MacAddr::BROADCAST, mac(0xa1), 9, 64));
    assert!(wait_for(|| n[0].drops(DropReason::SpoofedSourceMac) == 1));
    expect_nothing(&a1x);
    // a1 still receives its own unicast traffic from node 1's other port.
    let f = frame(mac(0xa1), mac(0xa3), 10, 64);
    a1x.send(&f);
    expect_frame(&a1, &f);
    expect_nothing(&bridge);
}

#[test]
fn frames_for_unknown_enclaves_and_from_non_members_are_dropped() {
    let n = nodes(2);
    // Node 1 thinks node 2 takes part in enclaves 5 and 6; node 2 has no
    // enclave 5 and does not count node 1 as a member of 6.
    n[0].overlay.add_enclave(5, [n[1].key()]).unwrap();
    n[0].overlay.add_enclave(6, [n[1].key()]).unwrap();
    n[1].overlay.add_enclave(6, []).unwrap();
    let p5 = n[0].port("p5", 5, mac(0x05));
    let p6 = n[0].port("p6", 6, mac(0x06));
    let victim = n[1].port("v6", 6, mac(0x66));
    p5.send(&frame(MacAddr::BROADCAST, mac(0x05), 11, 64));
    p6.send(&frame(MacAddr::BROADCAST, mac(0x06), 12, 64));
    assert!(wait_for(|| n[1].drops(DropReason::UnknownVni) == 1));
    assert!(wait_for(|| n[1].drops(DropReason::PeerNotMember) == 1));
    expect_nothing(&victim);
}

#[test]
fn learned_macs_age_out_and_unicast_floods_again() {
    let n: Vec<LoNode> = (1..=2u8)
        .map(|i| LoNode::start_with(i, |c| c.mac_aging = Duration::from_secs(1)))
        .collect();
    n[0].overlay.add_peer(n[1].as_peer("n2")).unwrap();
    n[1].overlay.add_peer(n[0].as_peer("n1")).unwrap();
    enclave(1, &[&n[0], &n[1]]);
    let a1 = n[0].port("a1", 1, mac(0xa1));
    let a1x = n[0].port("a1x", 1, mac(0xa3));
    let a2 = n[1].port("a2", 1, mac(0xa2));
    let hello = frame(MacAddr::BROADCAST, mac(0xa2), 0, 60);
    a2.send(&hello);
    expect_frame(&a1, &hello);
    expect_frame(&a1x, &hello);
    let f = frame(mac(0xa2), mac(0xa1), 13, 60);
    a1.send(&f);
    expect_frame(&a2, &f);
    expect_nothing(&a1x);
    std::thread::sleep(Duration::from_millis(2200));
    a1.send(&f);
    expect_frame(&a2, &f);
    expect_frame(&a1x, &f);
}

#[test]
fn a_unix_port_carries_frames_between_a_vm_socket_and_the_enclave() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let switch_sock = dir.path().join("vm0-net0.switch.sock");
    let vm_sock = dir.path().join("vm0-net0.vm.sock");
    let n = nodes(2);
    enclave(1, &[&n[0], &n[1]]);
    n[0].overlay
        .add_port(PortConfig::unix(
            "vm0",
            1,
            &switch_sock,
            &vm_sock,
            mac(0xa1),
        ))
        .unwrap();
    let a2 = n[1].port("a2", 1, mac(0xa2));
    // The switch may talk first: with no VM yet, a frame is a counted drop.
    let early = frame(MacAddr::BROADCAST, mac(0xa2), 14, 60);
    a2.send(&early);
    assert!(wait_for(|| n[0].drops(DropReason::PortUnreachable) == 1));
    let vm = UnixDatagram::bind(&vm_sock).unwrap();
    vm.set_read_timeout(Some(ARRIVE)).unwrap();
    let out = frame(MacAddr::BROADCAST, mac(0xa1), 15, 300);
    vm.send_to(&out, &switch_sock).unwrap();
    expect_frame(&a2, &out);
    let back = frame(mac(0xa1), mac(0xa2), 16, 300);
    a2.send(&back);
    let mut buf = [0u8; 2048];
    let len = vm.recv(&mut buf).unwrap();
    assert_eq!(&buf[..len], &back[..]);
    // Only the VM's socket may feed the port.
    let stranger = UnixDatagram::bind(dir.path().join("stranger.sock")).unwrap();
    stranger.send_to(&out, &switch_sock).unwrap();
    assert!(wait_for(|| n[0].drops(DropReason::ForeignSender) == 1));
    expect_nothing(&a2);
    // The port can be replaced at once (a restarted VM): the old port's
    // cleanup must not remove the new socket.
    n[0].overlay.remove_port("vm0").unwrap();
    n[0].overlay
        .add_port(PortConfig::unix(
            "vm0",
            1,
            &switch_sock,
            &vm_sock,
            mac(0xa1),
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(switch_sock.exists());
    vm.send_to(&out, &switch_sock).unwrap();
    expect_frame(&a2, &out);
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + ARRIVE;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
