//! Device-model tests: a test driver plays the guest against real guest memory, real unix
//! sockets and real image files; no KVM involved.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use super::blk::{Block, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use super::mmio::{reg, MmioTransport};
use super::net::{Net, NET_HDR_LEN, VIRTIO_NET_F_MAC};
use super::test_driver::{read32, write32, Buf, TestDriver};
use super::{INT_CONFIG, INT_USED_RING, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1};
use crate::appliance::parse_mac;
use crate::devices::IrqLine;

struct NetRig {
    _dir: tempfile::TempDir,
    switch: UnixDatagram,
    vm_sock: PathBuf,
    transport: MmioTransport,
    driver: TestDriver,
}

fn net_rig() -> NetRig {
    let dir = tempfile::tempdir().unwrap();
    let vm_sock = dir.path().join("n0.vm.sock");
    let switch_sock = dir.path().join("n0.switch.sock");
    let switch = UnixDatagram::bind(&switch_sock).unwrap();
    switch.set_nonblocking(true).unwrap();
    let net = Net::new(
        parse_mac("02:00:00:00:00:01").unwrap(),
        &vm_sock,
        &switch_sock,
    )
    .unwrap();
    let driver = TestDriver::new();
    let transport = MmioTransport::new(Box::new(net), driver.mem.clone(), IrqLine::new().unwrap());
    NetRig {
        _dir: dir,
        switch,
        vm_sock,
        transport,
        driver,
    }
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f
}

fn tx_chain(payload: &[u8]) -> Vec<Buf> {
    vec![Buf::Out(vec![0u8; NET_HDR_LEN]), Buf::Out(payload.to_vec())]
}

#[test]
fn net_identifies_itself_and_offers_mac_and_version_1() {
    let mut rig = net_rig();
    let t = &mut rig.transport;
    assert_eq!(read32(t, reg::MAGIC), 0x7472_6976);
    assert_eq!(read32(t, reg::VERSION), 2);
    assert_eq!(read32(t, reg::DEVICE_ID), 1);
    let features = rig.driver.init(t, 16);
    assert_eq!(features, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    let mut mac = [0u8; 6];
    t.read(reg::CONFIG, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
    let mut beyond = [0xaau8; 4];
    t.read(reg::CONFIG + 100, &mut beyond);
    assert_eq!(beyond, [0; 4]);
}

#[test]
fn guest_frames_reach_the_switch_socket() {
    let mut rig = net_rig();
    rig.driver.init(&mut rig.transport, 16);
    let sent = frame(98, 0x5a);
    let (head, _) = rig.driver.add_chain(1, &tx_chain(&sent));
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 1);
    let mut buf = [0u8; 2048];
    let n = rig.switch.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &sent[..]);
    assert_eq!(rig.driver.take_used(1), vec![(head as u32, 0)]);
    assert_eq!(rig.transport.irq().take_count(), 1);
    assert_eq!(
        read32(&mut rig.transport, reg::INTERRUPT_STATUS),
        INT_USED_RING
    );
    write32(&mut rig.transport, reg::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(read32(&mut rig.transport, reg::INTERRUPT_STATUS), 0);
    let m = rig.transport.metrics();
    assert_eq!((m.tx_packets, m.tx_bytes), (1, 98));
}

#[test]
fn switch_frames_fill_guest_receive_buffers() {
    let mut rig = net_rig();
    rig.driver.init(&mut rig.transport, 16);
    let (head, addrs) = rig.driver.add_chain(0, &[Buf::In(2048)]);
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 0);
    let sent = frame(60, 0x11);
    rig.switch.send_to(&sent, &rig.vm_sock).unwrap();
    rig.transport.process_backend();
    assert_eq!(
        rig.driver.take_used(0),
        vec![(head as u32, (NET_HDR_LEN + 60) as u32)]
    );
    let got = rig.driver.read(addrs[0], NET_HDR_LEN + 60);
    assert_eq!(got[10], 1, "num_buffers");
    assert_eq!(&got[NET_HDR_LEN..], &sent[..]);
    assert!(rig.transport.irq().take_count() >= 1);
}

#[test]
fn receive_waits_for_buffers_and_resumes_on_refill() {
    let mut rig = net_rig();
    rig.driver.init(&mut rig.transport, 16);
    let sent = frame(64, 0x22);
    rig.switch.send_to(&sent, &rig.vm_sock).unwrap();
    rig.transport.process_backend();
    assert!(rig.driver.take_used(0).is_empty());
    let (head, addrs) = rig.driver.add_chain(0, &[Buf::In(256), Buf::In(1800)]);
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 0);
    assert_eq!(
        rig.driver.take_used(0),
        vec![(head as u32, (NET_HDR_LEN + 64) as u32)]
    );
    // The frame spans the two descriptors of the chain.
    let mut got = rig.driver.read(addrs[0], 256);
    got.truncate(NET_HDR_LEN + 64);
    assert_eq!(&got[NET_HDR_LEN..], &sent[..]);
}

#[test]
fn sending_without_a_switch_is_a_counted_drop() {
    let mut rig = net_rig();
    rig.driver.init(&mut rig.transport, 16);
    drop(std::mem::replace(
        &mut rig.switch,
        UnixDatagram::unbound().unwrap(),
    ));
    std::fs::remove_file(rig.vm_sock.with_file_name("n0.switch.sock")).unwrap();
    let (head, _) = rig.driver.add_chain(1, &tx_chain(&frame(60, 1)));
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 1);
    assert_eq!(rig.driver.take_used(1), vec![(head as u32, 0)]);
    assert_eq!(rig.transport.metrics().drop_no_peer, 1);
}

#[test]
fn malformed_chains_are_dropped_and_counted() {
    let mut rig = net_rig();
    rig.driver.init(&mut rig.transport, 16);
    // A descriptor pointing outside guest memory.
    rig.driver.add_chain(1, &[Buf::Raw(1 << 40, 100, false)]);
    // A frame claiming 1 MiB.
    rig.driver
        .add_chain(1, &[Buf::Raw(0x200000, 1 << 20, false)]);
    // A runt: header only.
    rig.driver.add_chain(1, &[Buf::Out(vec![0u8; NET_HDR_LEN])]);
    // A receive buffer too small for the frame, and a write-protected one.
    rig.driver.add_chain(0, &[Buf::In(20)]);
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 1);
    rig.switch.send_to(&frame(100, 3), &rig.vm_sock).unwrap();
    rig.transport.process_backend();
    assert_eq!(rig.driver.take_used(1).len(), 3);
    assert_eq!(rig.driver.take_used(0), vec![(0, 0)]);
    let m = rig.transport.metrics();
    assert_eq!(m.bad_descriptors, 1);
    assert_eq!(m.drop_bad_size, 3);
    assert_eq!(m.tx_packets, 0);
    // The device still works afterwards.
    let sent = frame(60, 9);
    rig.driver.add_chain(1, &tx_chain(&sent));
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 1);
    let mut buf = [0u8; 128];
    assert_eq!(rig.switch.recv(&mut buf).unwrap(), 60);
}

#[test]
fn a_lying_avail_index_stops_the_device_and_requests_reset() {
    let mut rig = net_rig();
    rig.driver.init(&mut rig.transport, 16);
    rig.driver.set_avail_idx(1, 1000);
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 1);
    assert_ne!(
        read32(&mut rig.transport, reg::STATUS) & STATUS_NEEDS_RESET,
        0
    );
    assert_ne!(
        read32(&mut rig.transport, reg::INTERRUPT_STATUS) & INT_CONFIG,
        0
    );
    assert!(rig.transport.last_error().is_some());
    // A reset brings it back.
    rig.driver.init(&mut rig.transport, 16);
    assert_eq!(
        read32(&mut rig.transport, reg::STATUS) & STATUS_NEEDS_RESET,
        0
    );
    rig.driver.add_chain(1, &tx_chain(&frame(60, 4)));
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 1);
    let mut buf = [0u8; 128];
    assert_eq!(rig.switch.recv(&mut buf).unwrap(), 60);
}

#[test]
fn malformed_register_accesses_are_ignored_and_counted() {
    let mut rig = net_rig();
    let t = &mut rig.transport;
    let mut two = [0u8; 2];
    t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    t.write(0x0ff0 - 0xf00 + 0x02, &[1, 2, 3, 4]);
    write32(t, 0x0c0, 7);
    write32(t, reg::QUEUE_SEL, 99);
    write32(t, reg::QUEUE_NUM, 8);
    write32(t, reg::QUEUE_NOTIFY, 42);
    t.write(reg::CONFIG, &[1]);
    assert!(t.bad_accesses() >= 5, "{}", t.bad_accesses());
    // A queue whose rings lie outside guest memory never becomes ready.
    write32(t, reg::QUEUE_SEL, 0);
    write32(t, reg::QUEUE_NUM, 3);
    write32(t, reg::QUEUE_DESC_HIGH, 0x100);
    write32(t, reg::QUEUE_READY, 1);
    assert_eq!(read32(t, reg::QUEUE_READY), 0);
}

#[test]
fn transport_state_round_trips_through_a_snapshot() {
    let mut rig = net_rig();
    rig.driver.init(&mut rig.transport, 16);
    rig.driver.add_chain(1, &tx_chain(&frame(60, 5)));
    write32(&mut rig.transport, reg::QUEUE_NOTIFY, 1);
    let state = rig.transport.state();
    let json = serde_json::to_string(&state).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new(
        parse_mac("02:00:00:00:00:01").unwrap(),
        &dir.path().join("vm"),
        &dir.path().join("sw"),
    )
    .unwrap();
    let mut restored = MmioTransport::new(
        Box::new(net),
        rig.driver.mem.clone(),
        IrqLine::new().unwrap(),
    );
    restored
        .restore(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(restored.state(), state);
    assert_eq!(state.queues[1].next_avail, 1);
    assert_eq!(state.queues[1].next_used, 1);
}

fn block_rig(read_only: bool) -> (tempfile::NamedTempFile, MmioTransport, TestDriver) {
    let image = tempfile::NamedTempFile::new().unwrap();
    let mut data = vec![0u8; 8 * 512];
    data[512..1024].fill(0xab);
    std::fs::write(image.path(), &data).unwrap();
    let block = Block::new(image.path(), read_only).unwrap();
    let driver = TestDriver::new();
    let transport =
        MmioTransport::new(Box::new(block), driver.mem.clone(), IrqLine::new().unwrap());
    (image, transport, driver)
}

fn request(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

#[test]
fn block_reads_writes_flushes_and_reports_capacity() {
    let (image, mut t, mut d) = block_rig(false);
    let features = d.init(&mut t, 16);
    assert_eq!(features, VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
    let mut cap = [0u8; 8];
    t.read(reg::CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);

    let (_, a) = d.add_chain(0, &[Buf::Out(request(0, 1)), Buf::In(512), Buf::In(1)]);
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(d.take_used(0), vec![(0, 513)]);
    assert_eq!(d.read(a[1], 512), vec![0xab; 512]);
    assert_eq!(d.read(a[2], 1), vec![0], "status OK");

    let (_, a) = d.add_chain(
        0,
        &[
            Buf::Out(request(1, 7)),
            Buf::Out(vec![0x77; 512]),
            Buf::In(1),
        ],
    );
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(d.read(a[2], 1), vec![0]);
    assert_eq!(
        &std::fs::read(image.path()).unwrap()[7 * 512..],
        &[0x77; 512][..]
    );

    let (_, a) = d.add_chain(0, &[Buf::Out(request(4, 0)), Buf::In(1)]);
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(d.read(a[1], 1), vec![0]);

    let (_, a) = d.add_chain(0, &[Buf::Out(request(8, 0)), Buf::In(20), Buf::In(1)]);
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(d.read(a[2], 1), vec![0]);
    assert!(d
        .read(a[1], 20)
        .starts_with(&image.path().file_name().unwrap().as_encoded_bytes()[..5]));
    assert_eq!(t.metrics().tx_packets, 1);
}

#[test]
fn block_refuses_out_of_range_writes_to_read_only_and_unknown_requests() {
    let (image, mut t, mut d) = block_rig(true);
    let features = d.init(&mut t, 16);
    assert_ne!(features & VIRTIO_BLK_F_RO, 0);
    let before = std::fs::read(image.path()).unwrap();
    let (_, a) = d.add_chain(
        0,
        &[Buf::Out(request(1, 0)), Buf::Out(vec![1; 512]), Buf::In(1)],
    );
    let (_, b) = d.add_chain(0, &[Buf::Out(request(0, 8)), Buf::In(512), Buf::In(1)]);
    let (_, c) = d.add_chain(
        0,
        &[Buf::Out(request(0, u64::MAX / 2)), Buf::In(512), Buf::In(1)],
    );
    let (_, e) = d.add_chain(0, &[Buf::Out(request(99, 0)), Buf::In(1)]);
    // No status byte at all: completed with length 0, nothing written.
    d.add_chain(0, &[Buf::Out(request(0, 0))]);
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(d.take_used(0).len(), 5);
    assert_eq!(d.read(a[2], 1), vec![1], "write to read-only: IOERR");
    assert_eq!(d.read(b[2], 1), vec![1], "past the end: IOERR");
    assert_eq!(d.read(c[2], 1), vec![1], "overflowing sector: IOERR");
    assert_eq!(d.read(e[1], 1), vec![2], "unknown type: UNSUPP");
    assert_eq!(std::fs::read(image.path()).unwrap(), before);
    assert_eq!(t.metrics().bad_descriptors, 1);
}
