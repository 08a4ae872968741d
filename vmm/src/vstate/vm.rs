//! The KVM VM: guest memory, in-kernel irqchip (PIC + IOAPIC) and PIT, irqfds and ioeventfds.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestRam;
use crate::arch::layout::{ram_regions, KVM_TSS_ADDR};

/// Why the VM could not be created or driven.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The kernel's error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("allocating {mib} MiB of guest memory failed: {reason}")]
    Memory {
        /// Requested size.
        mib: u64,
        /// Why.
        reason: String,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// One guest RAM region, as recorded in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionState {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// VM-wide KVM state: memory layout, interrupt controllers, PIT and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// RAM regions.
    pub memory: Vec<MemoryRegionState>,
    /// PIC master, PIC slave and IOAPIC, in that order (empty without an irqchip).
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT (absent without an irqchip).
    pub pit: Option<kvm_pit_state2>,
    /// The KVM clock.
    pub clock: kvm_clock_data,
}

/// A KVM VM with its guest memory.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    ram: GuestRam,
    irqchip: bool,
}

impl Vm {
    /// Creates a VM with `mem_bytes` of RAM laid out by [`ram_regions`]; with `irqchip`, also
    /// the in-kernel PIC/IOAPIC/LAPICs and PIT that a Linux guest needs.
    pub fn new(mem_bytes: u64, irqchip: bool) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let ranges: Vec<(GuestAddress, usize)> = ram_regions(mem_bytes)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let ram = GuestRam::new(&ranges).map_err(|e| VmError::Memory {
            mib: mem_bytes >> 20,
            reason: e.to_string(),
        })?;
        for (slot, region) in ram.memory().iter().enumerate() {
            let region_info = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the mapping belongs to `ram`, which lives as long as the VM (and beyond
            // while vCPU or device threads hold clones of its memory).
            unsafe { fd.set_user_memory_region(region_info) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        if irqchip {
            fd.set_tss_address(KVM_TSS_ADDR)
                .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
            fd.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }
        Ok(Vm {
            kvm,
            fd,
            ram,
            irqchip,
        })
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// CPUID the host KVM supports (patched per vCPU before use).
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
    }

    /// Injects `fd`'s events as edges on `gsi`.
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    /// Signals `fd` (without a VM exit) when the guest writes `value` as 32 bits to MMIO `addr`.
    pub fn register_mmio_ioevent(
        &self,
        fd: &EventFd,
        addr: u64,
        value: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), value)
            .map_err(kvm_err("KVM_IOEVENTFD"))
    }

    /// Captures the VM-wide state (consistent when the vCPUs are stopped).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let mut irqchips = Vec::new();
        let mut pit = None;
        if self.irqchip {
            for chip_id in [
                KVM_IRQCHIP_PIC_MASTER,
                KVM_IRQCHIP_PIC_SLAVE,
                KVM_IRQCHIP_IOAPIC,
            ] {
                let mut chip = kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                self.fd
                    .get_irqchip(&mut chip)
                    .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
                irqchips.push(chip);
            }
            pit = Some(self.fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?);
        }
        let clock = self.fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
        Ok(VmState {
            memory: self
                .ram
                .memory()
                .iter()
                .map(|r| MemoryRegionState {
                    guest_addr: r.start_addr().raw_value(),
                    size: r.len(),
                })
                .collect(),
            irqchips,
            pit,
            clock,
        })
    }
}
