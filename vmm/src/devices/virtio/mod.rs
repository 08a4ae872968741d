//! Virtio devices on the virtio-mmio transport (version 2, "modern").

pub mod blk;
pub mod mmio;
pub mod net;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use mmio::{MmioTransport, MmioTransportState};

/// VIRTIO_F_VERSION_1: the device follows the virtio 1.x specification.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device status: driver finished setting up the device.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u32 = 0x40;
/// Interrupt status bit: buffers were used.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

/// A guest-caused device error: the device stops the offending queue and asks for a reset;
/// the host side is unaffected.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The queue's rings or descriptors are invalid.
    #[error("virtqueue {queue}: {reason}")]
    Queue {
        /// Queue index.
        queue: usize,
        /// What the guest got wrong.
        reason: String,
    },
}

/// Per-device counters, cheap enough to keep always on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMetrics {
    /// Frames/requests completed from the guest.
    pub tx_packets: u64,
    /// Bytes completed from the guest.
    pub tx_bytes: u64,
    /// Frames/requests delivered to the guest.
    pub rx_packets: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Dropped: the peer socket is absent or refused the frame.
    pub drop_no_peer: u64,
    /// Dropped: the peer socket was full.
    pub drop_peer_busy: u64,
    /// Dropped: a guest buffer or frame was too small or too large.
    pub drop_bad_size: u64,
    /// Descriptor chains the guest built wrongly (bad address, wrong direction).
    pub bad_descriptors: u64,
    /// Block requests that failed with an I/O error.
    pub io_errors: u64,
    /// Dropped: a frame arrived before the driver set up its receive queue.
    pub drop_rx_not_ready: u64,
}

/// What a virtio device model implements; the transport does the rest.
pub trait VirtioDevice: Send {
    /// Virtio device id (1 = net, 2 = block).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits offered (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// Reads device configuration space at `offset`; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Called when the driver sets DRIVER_OK with the features it accepted.
    fn activate(&mut self, acked_features: u64);
    /// Called when the driver resets the device.
    fn reset(&mut self);
    /// Processes queue `index` after a notification; returns true when used buffers were
    /// added (an interrupt is due).
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError>;
    /// Processes input from the device's backend (e.g. a frame arriving on a socket).
    fn process_backend(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        Ok(false)
    }
    /// Discards backend input that arrives while the driver is not running the device.
    fn discard_backend_input(&mut self) {}
    /// The backend's file descriptor to poll for input, if the device has one.
    fn backend_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }
    /// True while backend input must wait for the guest (stop polling until a notification).
    fn backend_blocked(&self) -> bool {
        false
    }
    /// The device's counters.
    fn metrics(&self) -> DeviceMetrics;
    /// The device-specific part of a snapshot.
    fn snapshot(&self) -> serde_json::Value;
}

/// Copies `data` into `out` starting at `offset` of a config space image; out-of-range reads
/// return zeros (the guest may probe anything).
pub fn read_config_bytes(config: &[u8], offset: u64, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod test_driver;
#[cfg(test)]
mod tests;
