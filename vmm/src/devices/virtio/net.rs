//! virtio-net whose backend is a unix datagram socket carrying one raw Ethernet frame per
//! datagram (workspace contract 1): the VM side binds `VM_SOCK` and sends to `SWITCH_SOCK`.
//! A send to an absent or full peer is a counted drop, never an error.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, DeviceError, DeviceMetrics, VirtioDevice};
use crate::appliance::MacAddr;

/// Virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Feature: the device has a fixed MAC in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Size of `struct virtio_net_hdr_v1` that precedes every frame with VERSION_1.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame accepted from the guest or the socket (64 KiB IP packet + Ethernet header).
pub const MAX_FRAME: usize = 65535 + 14;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

/// Serializable state of a net device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSnapshot {
    /// The MAC in config space.
    pub mac: MacAddr,
    /// The socket the device is bound to.
    pub vm_sock: PathBuf,
    /// The switch socket frames are sent to.
    pub switch_sock: PathBuf,
    /// Counters.
    pub metrics: DeviceMetrics,
}

/// A virtio-net device with a unix-datagram backend.
pub struct Net {
    mac: MacAddr,
    socket: UnixDatagram,
    vm_sock: PathBuf,
    switch_sock: PathBuf,
    /// A frame read from the socket while the guest had no receive buffer.
    pending_rx: Option<Vec<u8>>,
    rx_blocked: bool,
    buf: Vec<u8>,
    metrics: DeviceMetrics,
}

impl Net {
    /// Binds `vm_sock` (replacing a stale socket file) and sends frames to `switch_sock`.
    pub fn new(mac: MacAddr, vm_sock: &Path, switch_sock: &Path) -> io::Result<Net> {
        match std::fs::remove_file(vm_sock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = UnixDatagram::bind(vm_sock)?;
        socket.set_nonblocking(true)?;
        Ok(Net {
            mac,
            socket,
            vm_sock: vm_sock.to_path_buf(),
            switch_sock: switch_sock.to_path_buf(),
            pending_rx: None,
            rx_blocked: false,
            buf: vec![0u8; MAX_FRAME + 1],
            metrics: DeviceMetrics::default(),
        })
    }

    /// The backend socket (to poll for readability).
    pub fn socket(&self) -> &UnixDatagram {
        &self.socket
    }

    /// The bound socket path (removed by the VMM on exit).
    pub fn vm_sock(&self) -> &Path {
        &self.vm_sock
    }

    /// True while a frame waits for a guest receive buffer: stop polling the socket until
    /// the guest refills the receive queue.
    pub fn rx_blocked(&self) -> bool {
        self.rx_blocked
    }

    fn process_rx(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        let queue = &mut queues[RX];
        // Bounded: at most one queue's worth per call so TX and other devices get their turn.
        for _ in 0..QUEUE_SIZE {
            let frame = match self.pending_rx.take() {
                Some(frame) => frame,
                None => match self.socket.recv(&mut self.buf) {
                    Ok(n) if !(14..=MAX_FRAME).contains(&n) => {
                        self.metrics.drop_bad_size += 1;
                        continue;
                    }
                    Ok(n) => self.buf[..n].to_vec(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                },
            };
            let chain = match queue.pop_descriptor_chain(mem) {
                Some(chain) => chain,
                None => {
                    self.pending_rx = Some(frame);
                    break;
                }
            };
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut writer) if writer.available_bytes() >= NET_HDR_LEN + frame.len() => {
                    let mut header = [0u8; NET_HDR_LEN];
                    header[10] = 1; // num_buffers
                    writer
                        .write_all(&header)
                        .and_then(|_| writer.write_all(&frame))
                        .map(|_| (NET_HDR_LEN + frame.len()) as u32)
                        .unwrap_or_else(|_| {
                            self.metrics.bad_descriptors += 1;
                            0
                        })
                }
                Ok(_) => {
                    self.metrics.drop_bad_size += 1;
                    0
                }
                Err(_) => {
                    self.metrics.bad_descriptors += 1;
                    0
                }
            };
            if written > 0 {
                self.metrics.rx_packets += 1;
                self.metrics.rx_bytes += frame.len() as u64;
            }
            queue
                .add_used(mem, head, written)
                .map_err(|e| DeviceError::Queue {
                    queue: RX,
                    reason: e.to_string(),
                })?;
            used = true;
        }
        self.rx_blocked = self.pending_rx.is_some();
        Ok(used)
    }

    fn process_tx(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        let queue = &mut queues[TX];
        // Bounded so a guest refilling the ring from another vCPU cannot pin this thread.
        for _ in 0..(QUEUE_SIZE as usize * 2) {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => match iter.next() {
                    Some(chain) => chain,
                    None => break,
                },
                Err(e) => {
                    return Err(DeviceError::Queue {
                        queue: TX,
                        reason: e.to_string(),
                    })
                }
            };
            let head = chain.head_index();
            match chain.reader(mem) {
                Ok(mut reader) => {
                    let total = reader.available_bytes();
                    if !(NET_HDR_LEN + 14..=NET_HDR_LEN + MAX_FRAME).contains(&total) {
                        self.metrics.drop_bad_size += 1;
                    } else {
                        let mut frame = vec![0u8; total];
                        if reader.read_exact(&mut frame).is_ok() {
                            self.send(&frame[NET_HDR_LEN..]);
                        } else {
                            self.metrics.bad_descriptors += 1;
                        }
                    }
                }
                Err(_) => self.metrics.bad_descriptors += 1,
            }
            queue
                .add_used(mem, head, 0)
                .map_err(|e| DeviceError::Queue {
                    queue: TX,
                    reason: e.to_string(),
                })?;
            used = true;
        }
        Ok(used)
    }

    fn send(&mut self, frame: &[u8]) {
        match self.socket.send_to(frame, &self.switch_sock) {
            Ok(_) => {
                self.metrics.tx_packets += 1;
                self.metrics.tx_bytes += frame.len() as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.metrics.drop_peer_busy += 1,
            Err(_) => self.metrics.drop_no_peer += 1,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac.bytes(), offset, data);
    }

    fn activate(&mut self, _acked_features: u64) {}

    fn reset(&mut self) {
        self.pending_rx = None;
        self.rx_blocked = false;
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        match index {
            RX => self.process_rx(queues, mem),
            TX => self.process_tx(queues, mem),
            _ => Ok(false),
        }
    }

    fn process_backend(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        if !queues[RX].ready() {
            self.discard_backend_input();
            return Ok(false);
        }
        self.process_rx(queues, mem)
    }

    fn discard_backend_input(&mut self) {
        // A driver that has not set up its receive queue cannot take frames: drop them (a
        // real NIC with its link down would too) rather than let them pile up.
        while self.socket.recv(&mut self.buf).is_ok() {
            self.metrics.drop_rx_not_ready += 1;
        }
    }

    fn backend_fd(&self) -> Option<std::os::unix::io::RawFd> {
        use std::os::unix::io::AsRawFd;
        Some(self.socket.as_raw_fd())
    }

    fn backend_blocked(&self) -> bool {
        self.rx_blocked
    }

    fn metrics(&self) -> DeviceMetrics {
        self.metrics.clone()
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(NetSnapshot {
            mac: self.mac,
            vm_sock: self.vm_sock.clone(),
            switch_sock: self.switch_sock.clone(),
            metrics: self.metrics.clone(),
        })
        .expect("net snapshot serializes")
    }
}
