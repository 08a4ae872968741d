//! Dispatch of guest port I/O and MMIO exits to the device models. Unknown addresses read as
//! all-ones and swallow writes (as on real hardware), counted for diagnosis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::arch::layout::{ACPI_PM_PORT, COM1_PORT, I8042_PORT, PVPANIC_PORT, VIRTIO_MMIO_SIZE};
use crate::devices::legacy::{self, PlatformRequest};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::MmioTransport;

/// All devices a vCPU can reach by I/O or MMIO.
pub struct Bus {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// virtio-mmio devices and their window bases.
    pub virtio: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
    unknown_pio: AtomicU64,
    unknown_mmio: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder cannot leave device state half-written in a way that matters more
    // than stopping the VM would; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bus {
    /// A bus with COM1 and the given virtio devices.
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        virtio: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
    ) -> Bus {
        Bus {
            serial,
            virtio,
            unknown_pio: AtomicU64::new(0),
            unknown_mmio: AtomicU64::new(0),
        }
    }

    /// Port read.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_PORT..COM1_PORT + 8).contains(&p) && data.len() == 1 => {
                data[0] = lock(&self.serial).read((p - COM1_PORT) as u8);
            }
            PVPANIC_PORT if data.len() == 1 => data[0] = legacy::PVPANIC_CAPABILITIES,
            ACPI_PM_PORT | I8042_PORT => data.fill(0),
            _ => {
                self.unknown_pio.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
    }

    /// Port write; returns a platform request (poweroff, reset, panic) if the write was one.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Option<PlatformRequest> {
        let first = *data.first()?;
        match port {
            p if (COM1_PORT..COM1_PORT + 8).contains(&p) && data.len() == 1 => {
                lock(&self.serial).write((p - COM1_PORT) as u8, first);
                None
            }
            ACPI_PM_PORT => legacy::acpi_pm_write(first),
            I8042_PORT => legacy::i8042_command(first),
            PVPANIC_PORT => legacy::pvpanic_write(first),
            _ => {
                self.unknown_pio.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn virtio_at(&self, addr: u64) -> Option<(u64, &Arc<Mutex<MmioTransport>>)> {
        self.virtio
            .iter()
            .find(|(base, _)| (*base..base + VIRTIO_MMIO_SIZE).contains(&addr))
            .map(|(base, dev)| (addr - base, dev))
    }

    /// MMIO read.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.virtio_at(addr) {
            Some((offset, dev)) => lock(dev).read(offset, data),
            None => {
                self.unknown_mmio.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
    }

    /// MMIO write.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        match self.virtio_at(addr) {
            Some((offset, dev)) => lock(dev).write(offset, data),
            None => {
                self.unknown_mmio.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// (unknown port accesses, unknown MMIO accesses) so far.
    pub fn unknown_accesses(&self) -> (u64, u64) {
        (
            self.unknown_pio.load(Ordering::Relaxed),
            self.unknown_mmio.load(Ordering::Relaxed),
        )
    }
}
