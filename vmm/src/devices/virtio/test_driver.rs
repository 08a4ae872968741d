//! A test driver that plays the guest: it negotiates through the MMIO registers, lays out
//! split virtqueues in guest memory, posts descriptor chains and reads the used rings.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{reg, MmioTransport};
use super::STATUS_DRIVER_OK;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const QUEUE_AREA: u64 = 0x10000;
const BUFFER_AREA: u64 = 0x100000;

/// One buffer of a chain: device-readable bytes, or a device-writable buffer of some length.
pub enum Buf {
    /// Device-readable contents.
    Out(Vec<u8>),
    /// Device-writable length.
    In(u32),
    /// A raw descriptor (address, length, writable) the device must survive.
    Raw(u64, u32, bool),
}

pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

pub struct TestDriver {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<DriverQueue>,
    next_buf: u64,
}

pub fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

pub fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

impl TestDriver {
    pub fn new() -> TestDriver {
        TestDriver {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap(),
            queues: Vec::new(),
            next_buf: BUFFER_AREA,
        }
    }

    /// Resets, negotiates all offered features and sets up every queue with `size` entries.
    pub fn init(&mut self, t: &mut MmioTransport, size: u16) -> u64 {
        write32(t, reg::STATUS, 0);
        write32(t, reg::STATUS, 1);
        write32(t, reg::STATUS, 1 | 2);
        write32(t, reg::DEVICE_FEATURES_SEL, 0);
        let low = read32(t, reg::DEVICE_FEATURES);
        write32(t, reg::DEVICE_FEATURES_SEL, 1);
        let high = read32(t, reg::DEVICE_FEATURES);
        let features = (u64::from(high) << 32) | u64::from(low);
        write32(t, reg::DRIVER_FEATURES_SEL, 0);
        write32(t, reg::DRIVER_FEATURES, low);
        write32(t, reg::DRIVER_FEATURES_SEL, 1);
        write32(t, reg::DRIVER_FEATURES, high);
        write32(t, reg::STATUS, 1 | 2 | 8);
        self.queues.clear();
        for i in 0..t.queue_count() {
            write32(t, reg::QUEUE_SEL, i as u32);
            let max = read32(t, reg::QUEUE_NUM_MAX) as u16;
            let size = size.min(max);
            let base = QUEUE_AREA + i as u64 * 0x4000;
            let q = DriverQueue {
                size,
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            };
            write32(t, reg::QUEUE_NUM, size as u32);
            write32(t, reg::QUEUE_DESC_LOW, q.desc as u32);
            write32(t, reg::QUEUE_DESC_HIGH, 0);
            write32(t, reg::QUEUE_AVAIL_LOW, q.avail as u32);
            write32(t, reg::QUEUE_AVAIL_HIGH, 0);
            write32(t, reg::QUEUE_USED_LOW, q.used as u32);
            write32(t, reg::QUEUE_USED_HIGH, 0);
            write32(t, reg::QUEUE_READY, 1);
            assert_eq!(read32(t, reg::QUEUE_READY), 1, "queue {i} ready");
            self.queues.push(q);
        }
        write32(t, reg::STATUS, 1 | 2 | 8 | STATUS_DRIVER_OK);
        features
    }

    /// Posts a chain on queue `q` and returns (head, buffer addresses).
    pub fn add_chain(&mut self, q: usize, bufs: &[Buf]) -> (u16, Vec<u64>) {
        let mut addrs = Vec::new();
        let queue = &mut self.queues[q];
        let head = queue.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let (addr, len, write) = match buf {
                Buf::Out(data) => {
                    let addr = self.next_buf;
                    self.mem.write_slice(data, GuestAddress(addr)).unwrap();
                    self.next_buf += (data.len() as u64 + 15) & !15;
                    (addr, data.len() as u32, false)
                }
                Buf::In(len) => {
                    let addr = self.next_buf;
                    self.next_buf += (*len as u64 + 15) & !15;
                    (addr, *len, true)
                }
                Buf::Raw(addr, len, write) => (*addr, *len, *write),
            };
            addrs.push(addr);
            let index = queue.next_desc;
            queue.next_desc = (queue.next_desc + 1) % queue.size;
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            let d = queue.desc + index as u64 * 16;
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem
                .write_obj(queue.next_desc, GuestAddress(d + 14))
                .unwrap();
        }
        let slot = queue.avail + 4 + (queue.avail_idx % queue.size) as u64 * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(queue.avail_idx, GuestAddress(queue.avail + 2))
            .unwrap();
        (head, addrs)
    }

    /// Writes the avail index directly (to play a driver that lies about it).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let queue = &mut self.queues[q];
        queue.avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(queue.avail + 2))
            .unwrap();
    }

    /// Used elements (id, len) published since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let queue = &mut self.queues[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(queue.used + 2)).unwrap();
        let mut out = Vec::new();
        while queue.used_seen != idx {
            let e = queue.used + 4 + (queue.used_seen % queue.size) as u64 * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id, len));
            queue.used_seen = queue.used_seen.wrapping_add(1);
        }
        out
    }

    /// Reads guest memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
        data
    }
}
