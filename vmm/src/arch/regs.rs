//! Initial vCPU state: CPUID, MSRs, FPU and local APIC LINTs, and per boot protocol the
//! segment, control and general registers: long mode with an identity-mapped first GiB and
//! RSI = zero page for the Linux 64-bit boot protocol; 32-bit protected mode without paging
//! and EBX = `hvm_start_info` for PVH.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{BootEntry, BootProtocol};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Why a vCPU could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM vCPU ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The kernel's error.
        source: kvm_ioctls::Error,
    },
    /// Writing boot structures to guest memory failed.
    #[error("writing {what} to guest memory failed: {source}")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// KVM accepted fewer MSRs than were given.
    #[error("KVM accepted {accepted} of {wanted} boot MSRs")]
    Msrs {
        /// How many were set.
        accepted: usize,
        /// How many were given.
        wanted: usize,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Patches the host-supported CPUID for vCPU `index` of `count`: unique APIC ids, the logical
/// processor count, and the hypervisor bit.
pub fn setup_cpuid(
    vcpu: &VcpuFd,
    supported: &CpuId,
    index: u32,
    count: u32,
) -> Result<(), RegsError> {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (index << 24) | ((count & 0xff) << 16);
                entry.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    entry.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            0xb | 0x1f => entry.edx = index,
            // Hide 5-level paging: with it the decompressor leaves long mode through a
            // low-memory trampoline to switch paging modes, a path with no benefit for a
            // microVM of a few GiB.
            7 if entry.index == 0 => entry.ecx &= !(1 << 16),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))
}

/// The MSR values a freshly booted x86_64 Linux expects (fast strings, write-back MTRRs).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0082, 0),       // LSTAR
        (0x10, 0),              // TSC
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRRdefType: MTRRs on, default write-back
    ]
}

/// Sets [`boot_msrs`].
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).expect("a handful of MSRs fits the FAM wrapper");
    let accepted = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if accepted != entries.len() {
        return Err(RegsError::Msrs {
            accepted,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// General registers at the kernel entry: RIP at the entry point, and the boot information
/// in RSI (64-bit boot protocol: the zero page) or EBX (PVH: `hvm_start_info`).
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.entry,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = entry.boot_info;
        }
        BootProtocol::Pvh => regs.rbx = entry.boot_info,
    }
    regs
}

/// Sets [`boot_regs`].
pub fn setup_regs(vcpu: &VcpuFd, entry: &BootEntry) -> Result<(), RegsError> {
    vcpu.set_regs(&boot_regs(entry))
        .map_err(kvm("KVM_SET_REGS"))
}

/// x87/SSE defaults.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

fn segment(selector: u16, type_: u8, system: bool, long: bool, default_32: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(default_32),
        s: u8::from(!system),
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The boot GDT: null, code (0x08), data (0x10), TSS (0x18). The code segment is 64-bit for
/// the 64-bit boot protocol and 32-bit for PVH.
pub fn boot_gdt(protocol: BootProtocol) -> [u64; 4] {
    let code = match protocol {
        BootProtocol::Linux64 => 0x00af_9b00_0000_ffff,
        BootProtocol::Pvh => 0x00cf_9b00_0000_ffff,
    };
    [0, code, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff]
}

/// `base` (the vCPU's reset state) changed for `protocol`: flat segments from
/// [`boot_gdt`], and long mode with paging (CR3 = the identity map) or, for PVH, protected
/// mode with paging and PAE off.
pub fn boot_sregs(protocol: BootProtocol, base: &kvm_sregs) -> kvm_sregs {
    let mut sregs = *base;
    let gdt = boot_gdt(protocol);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let long = protocol == BootProtocol::Linux64;
    let code = segment(0x08, 0xb, false, long, !long);
    let data = segment(0x10, 0x3, false, false, true);
    let tss = segment(0x18, 0xb, true, false, false);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// Writes the GDT and an empty IDT, and for the 64-bit boot protocol the identity page
/// tables (1 GiB in 2 MiB pages; PVH starts without paging).
pub fn write_boot_tables(mem: &GuestMemoryMmap, protocol: BootProtocol) -> Result<(), RegsError> {
    let write = |what: &'static str, addr: u64, value: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|source| RegsError::Memory { what, source })
    };
    for (i, entry) in boot_gdt(protocol).iter().enumerate() {
        write("GDT", GDT_ADDR + i as u64 * 8, *entry)?;
    }
    write("IDT", IDT_ADDR, 0)?;
    if protocol == BootProtocol::Linux64 {
        write("PML4", PML4_ADDR, PDPT_ADDR | 0x3)?;
        write("PDPT", PDPT_ADDR, PD_ADDR | 0x3)?;
        for i in 0..512u64 {
            write("PD", PD_ADDR + i * 8, (i << 21) | 0x83)?;
        }
    }
    Ok(())
}

/// Writes the boot tables and sets [`boot_sregs`] on the vCPU.
pub fn setup_sregs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    write_boot_tables(mem, protocol)?;
    let base = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&boot_sregs(protocol, &base))
        .map_err(kvm("KVM_SET_SREGS"))
}

/// Routes LINT0 as ExtINT (the 8259's output) and LINT1 as NMI, as a PC's BIOS would.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7;
    const DELIVERY_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let mut set = |offset: usize, mode: u32| {
        let bytes: [u8; 4] = lapic.regs[offset..offset + 4]
            .iter()
            .map(|b| *b as u8)
            .collect::<Vec<u8>>()
            .try_into()
            .expect("four bytes");
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (dst, src) in lapic.regs[offset..offset + 4]
            .iter_mut()
            .zip(value.to_le_bytes())
        {
            *dst = src as _;
        }
    };
    set(LVT_LINT0, DELIVERY_EXTINT);
    set(LVT_LINT1, DELIVERY_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}
