//! The virtio-mmio transport (virtio 1.x, register layout version 2): feature negotiation,
//! queue setup, notifications and interrupt status, around any [`VirtioDevice`].

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{
    DeviceError, DeviceMetrics, VirtioDevice, INT_CONFIG, INT_USED_RING, STATUS_DRIVER_OK,
    STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use crate::devices::IrqLine;

/// Register offsets of the virtio-mmio window.
pub mod reg {
    /// "virt".
    pub const MAGIC: u64 = 0x000;
    /// Layout version (2).
    pub const VERSION: u64 = 0x004;
    /// Device id.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features (32 bits selected by DEVICE_FEATURES_SEL).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features word select.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features word select.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue select.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Selected queue ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notify (value = queue index).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available ring address, high.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used ring address, low.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used ring address, high.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of device configuration space.
    pub const CONFIG: u64 = 0x100;
}

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x534c_4e54; // "SLNT"

/// Serializable state of one virtqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Maximum size offered.
    pub max_size: u16,
    /// Size chosen by the driver.
    pub size: u16,
    /// Ready flag.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available index the device will read.
    pub next_avail: u16,
    /// Next used index the device will write.
    pub next_used: u16,
}

/// Serializable state of the transport (the device model's own state is separate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// Virtio device id.
    pub device_type: u32,
    /// Selected queue.
    pub queue_select: u32,
    /// Selected device feature word.
    pub device_features_select: u32,
    /// Selected driver feature word.
    pub driver_features_select: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Device status register.
    pub status: u32,
    /// Pending interrupt bits.
    pub interrupt_status: u32,
    /// Configuration generation counter.
    pub config_generation: u32,
    /// Whether the device was activated (DRIVER_OK seen).
    pub activated: bool,
    /// The queues.
    pub queues: Vec<QueueSnapshot>,
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    irq: IrqLine,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    activated: bool,
    /// The last guest error that stopped the device, for status reports.
    last_error: Option<String>,
    /// Register accesses that were malformed (bad width, bad offset, bad queue index).
    bad_accesses: u64,
}

impl MmioTransport {
    /// Wraps `device`, raising interrupts on `irq`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: IrqLine) -> Self {
        let queues = device
            .queue_max_sizes()
            .into_iter()
            .map(|max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            activated: false,
            last_error: None,
            bad_accesses: 0,
        }
    }

    /// The interrupt line (for irqfd registration).
    pub fn irq(&self) -> &IrqLine {
        &self.irq
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device model.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Counters of the device model.
    pub fn metrics(&self) -> DeviceMetrics {
        self.device.metrics()
    }

    /// The guest error that stopped the device, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Malformed register accesses seen.
    pub fn bad_accesses(&self) -> u64 {
        self.bad_accesses
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.bad_accesses += 1;
            data.fill(0);
            return;
        }
        let value = match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size() as u32),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready() as u32),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.bad_accesses += 1;
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Guest write of `data` at `offset` in the window. A queue notification processes the
    /// queue at once (the path without ioeventfd).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // Net and block config spaces are read-only for the driver.
            self.bad_accesses += 1;
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.bad_accesses += 1;
            return;
        }
        let value = u32::from_le_bytes(data.try_into().expect("length checked"));
        // Queue layout may only change before the device runs (spec 4.2.2.2).
        let configuring = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES if configuring => {
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => {
                        self.bad_accesses += 1;
                        return;
                    }
                };
                let mask = 0xffff_ffffu64 << shift;
                let offered = self.offered_features();
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(value) << shift) & offered);
            }
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM if configuring => self.with_queue(|q| q.set_size(value as u16)),
            reg::QUEUE_READY if configuring => {
                let mem = self.mem.clone();
                self.with_queue(|q| {
                    // An invalid layout (size not a power of two, rings outside memory) leaves
                    // the queue not ready, which the driver can see.
                    q.set_ready(value == 1);
                    if q.ready() && !q.is_valid(&mem) {
                        q.set_ready(false);
                    }
                })
            }
            reg::QUEUE_DESC_LOW if configuring => {
                self.with_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH if configuring => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_AVAIL_LOW if configuring => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_AVAIL_HIGH if configuring => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_USED_LOW if configuring => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_USED_HIGH if configuring => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            reg::QUEUE_NOTIFY => self.notify(value as usize),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.set_status(value),
            _ => self.bad_accesses += 1,
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        match self.selected_queue() {
            Some(q) => f(q),
            None => self.bad_accesses += 1,
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        self.status = value;
        if value & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activated = true;
            self.device.activate(self.acked_features);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked_features = 0;
        self.interrupt_status = 0;
        self.queue_select = 0;
        self.activated = false;
        self.last_error = None;
    }

    /// Handles a notification for queue `index` (from the register or an ioeventfd).
    pub fn notify(&mut self, index: usize) {
        if !self.running() || index >= self.queues.len() || !self.queues[index].ready() {
            if index >= self.queues.len() {
                self.bad_accesses += 1;
            }
            return;
        }
        let result = self
            .device
            .process_queue(index, &mut self.queues, &self.mem);
        self.after_processing(result);
    }

    /// Lets the device consume backend input (e.g. a readable socket).
    pub fn process_backend(&mut self) {
        if !self.running() {
            self.device.discard_backend_input();
            return;
        }
        let result = self.device.process_backend(&mut self.queues, &self.mem);
        self.after_processing(result);
    }

    fn running(&self) -> bool {
        self.activated && self.status & STATUS_NEEDS_RESET == 0
    }

    fn after_processing(&mut self, result: Result<bool, DeviceError>) {
        match result {
            Ok(true) => self.signal(INT_USED_RING),
            Ok(false) => {}
            Err(e) => {
                // Contain a misbehaving driver: stop the device and tell it to reset.
                self.last_error = Some(e.to_string());
                self.status |= STATUS_NEEDS_RESET;
                self.signal(INT_CONFIG);
            }
        }
    }

    fn signal(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        self.irq.trigger();
    }

    /// Serializable transport state.
    pub fn state(&self) -> MmioTransportState {
        MmioTransportState {
            device_type: self.device.device_type(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            acked_features: self.acked_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            activated: self.activated,
            queues: self
                .queues
                .iter()
                .map(|q| QueueSnapshot {
                    max_size: q.max_size(),
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail: q.next_avail(),
                    next_used: q.next_used(),
                })
                .collect(),
        }
    }

    /// Restores transport state saved by [`MmioTransport::state`] (device model restored
    /// separately); refuses state for another device type or queue count.
    pub fn restore(&mut self, state: &MmioTransportState) -> Result<(), String> {
        if state.device_type != self.device.device_type() || state.queues.len() != self.queues.len()
        {
            return Err(format!(
                "snapshot is for device type {} with {} queues; this device is type {} with {}",
                state.device_type,
                state.queues.len(),
                self.device.device_type(),
                self.queues.len()
            ));
        }
        for (q, s) in self.queues.iter_mut().zip(&state.queues) {
            let mut restored = Queue::new(s.max_size).map_err(|e| e.to_string())?;
            restored.set_size(s.size);
            let addr = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = addr(s.desc_table);
            restored.set_desc_table_address(lo, hi);
            let (lo, hi) = addr(s.avail_ring);
            restored.set_avail_ring_address(lo, hi);
            let (lo, hi) = addr(s.used_ring);
            restored.set_used_ring_address(lo, hi);
            restored.set_next_avail(s.next_avail);
            restored.set_next_used(s.next_used);
            restored.set_ready(s.ready);
            *q = restored;
        }
        self.queue_select = state.queue_select;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.acked_features = state.acked_features;
        self.status = state.status;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        self.activated = state.activated;
        if self.activated {
            self.device.activate(self.acked_features);
        }
        Ok(())
    }

    /// Guest memory the transport works on.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Address helper for tests and snapshots.
    pub fn queue_desc_table(&self, index: usize) -> Option<GuestAddress> {
        self.queues.get(index).map(|q| GuestAddress(q.desc_table()))
    }
}
