//! A vCPU: boot configuration, the run loop that dispatches exits to the [`Bus`], and its
//! serializable state.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use super::vm::{Vm, VmError};
use crate::arch::boot::BootEntry;
use crate::arch::regs::{self, RegsError};
use crate::bus::Bus;
use crate::devices::legacy::PlatformRequest;

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VcpuExitReason {
    /// The guest asked the platform to power off, reset or report a panic.
    Platform(PlatformRequest),
    /// The guest triple-faulted (a real machine resets); the text is the vCPU's state at
    /// that moment, for diagnosis.
    TripleFault(String),
    /// The vCPU executed HLT with no in-kernel irqchip to wait for (tiny guests only).
    Halted,
    /// KVM could not run the guest (emulation failure, failed VM entry, ...).
    Error(String),
}

/// Serializable register state of one vCPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (= APIC id).
    pub index: u32,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Boot-relevant MSRs (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Local APIC (absent without an irqchip).
    pub lapic: Option<kvm_lapic_state>,
    /// Multiprocessing state.
    pub mp_state: kvm_mp_state,
    /// Pending events.
    pub vcpu_events: kvm_vcpu_events,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
}

/// One vCPU of a VM.
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
    irqchip: bool,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

impl Vcpu {
    /// Creates vCPU `index` in `vm`.
    pub fn new(vm: &Vm, index: u32, irqchip: bool) -> Result<Vcpu, VmError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        Ok(Vcpu { index, fd, irqchip })
    }

    /// The vCPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Raw access for tests and snapshots.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Configures the vCPU for Linux: CPUID, MSRs, FPU, LAPIC; the boot vCPU (`entry` given)
    /// also gets long-mode segments, page tables and registers. Other vCPUs wait for the
    /// kernel's INIT/SIPI in the in-kernel LAPIC.
    pub fn configure_linux(
        &self,
        vm: &Vm,
        cpuid: &CpuId,
        count: u32,
        entry: Option<BootEntry>,
    ) -> Result<(), RegsError> {
        regs::setup_cpuid(&self.fd, cpuid, self.index, count)?;
        regs::setup_msrs(&self.fd)?;
        regs::setup_fpu(&self.fd)?;
        regs::setup_lapic(&self.fd)?;
        if let Some(entry) = entry {
            regs::setup_sregs(&self.fd, vm.memory(), entry.protocol)?;
            regs::setup_regs(&self.fd, &entry)?;
        }
        Ok(())
    }

    /// Configures the vCPU to start in real mode at `cs:ip` = 0:`ip` (tiny test guests).
    pub fn configure_real_mode(&self, ip: u16) -> Result<(), VmError> {
        let mut sregs = self.fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        self.fd.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip: u64::from(ip),
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
    }

    /// Runs the guest until it powers off, resets, panics, halts (no irqchip) or fails.
    pub fn run(&mut self, bus: &Bus) -> VcpuExitReason {
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => bus.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => {
                    if let Some(request) = bus.pio_write(port, data) {
                        return VcpuExitReason::Platform(request);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(addr, data),
                Ok(VcpuExit::Hlt) => return VcpuExitReason::Halted,
                // A triple fault: a real machine resets. Kernels use it as a last-resort
                // reboot, but it is also how a crash too early or too deep to print ends.
                Ok(VcpuExit::Shutdown) => return VcpuExitReason::TripleFault(self.fault_summary()),
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return VcpuExitReason::Platform(match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => PlatformRequest::PowerOff,
                        KVM_SYSTEM_EVENT_RESET => PlatformRequest::Reset,
                        KVM_SYSTEM_EVENT_CRASH => PlatformRequest::Panic,
                        _ => PlatformRequest::PowerOff,
                    })
                }
                Ok(VcpuExit::InternalError) => {
                    return VcpuExitReason::Error(format!(
                        "vCPU {}: KVM internal error (instruction emulation failed); on PVM hosts this is what a stock kernel does",
                        self.index
                    ))
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return VcpuExitReason::Error(format!(
                        "vCPU {}: VM entry failed (hardware reason {reason:#x} on host CPU {cpu})",
                        self.index
                    ))
                }
                Ok(other) => {
                    return VcpuExitReason::Error(format!(
                        "vCPU {}: unexpected KVM exit {other:?}",
                        self.index
                    ))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    return VcpuExitReason::Error(format!("vCPU {}: KVM_RUN failed: {e}", self.index))
                }
            }
        }
    }

    /// The registers that locate a triple fault, in one line.
    fn fault_summary(&self) -> String {
        let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return format!("vCPU {}: registers unreadable", self.index);
        };
        let mut text = format!(
            "vCPU {} at rip {:#x} rsp {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}+{:#x}",
            self.index,
            regs.rip,
            regs.rsp,
            sregs.cs.selector,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.efer,
            sregs.idt.base,
            sregs.idt.limit
        );
        if let Ok(events) = self.fd.get_vcpu_events() {
            let exception = events.exception;
            if exception.injected != 0 || exception.pending != 0 {
                text.push_str(&format!(
                    ", exception {} (error code {:#x})",
                    exception.nr, exception.error_code
                ));
            }
        }
        text
    }

    /// Captures the vCPU's state (call only while it is not running).
    pub fn save_state(&self) -> Result<VcpuState, VmError> {
        let wanted: Vec<kvm_msr_entry> = regs::boot_msrs()
            .into_iter()
            .map(|(index, _)| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&wanted).expect("a handful of MSRs fits");
        let read = self.fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        Ok(VcpuState {
            index: self.index,
            regs: self.fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: self.fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            msrs: msrs.as_slice()[..read]
                .iter()
                .map(|e| (e.index, e.data))
                .collect(),
            lapic: if self.irqchip {
                Some(self.fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?)
            } else {
                None
            },
            mp_state: self.fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            vcpu_events: self
                .fd
                .get_vcpu_events()
                .map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            debug_regs: self.fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            xcrs: self.fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
        })
    }

    /// Restores general, segment and FPU registers from a snapshot.
    pub fn restore_registers(&self, state: &VcpuState) -> Result<(), VmError> {
        self.fd
            .set_sregs(&state.sregs)
            .map_err(kvm("KVM_SET_SREGS"))?;
        self.fd.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
        if let Some(lapic) = &state.lapic {
            self.fd.set_lapic(lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        }
        Ok(())
    }
}
