//! The guest physical memory map and fixed addresses of the x86_64 microVM.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_6000  hvm_start_info (PVH boot), then
//! 0x0000_6040  PVH module list          0x0000_6080  PVH memory map
//! 0x0000_7000  boot_params (zero page, 64-bit boot protocol)
//! 0x0000_0520  IDT                      0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT, PD (1 GiB identity map, 2 MiB pages)
//! 0x0002_0000  kernel command line      0x0009_fc00  EBDA start (reserved to 1 MiB)
//! 0x000e_0000  ACPI RSDP, then XSDT, FADT, MADT, DSDT (reserved in e820)
//! 0x0010_0000  bzImage protected-mode kernel (a vmlinux loads at its own address, 16 MiB)
//! top of RAM   initramfs (page aligned, below 4 GiB)
//! 0xd000_0000  virtio-mmio devices, one 4 KiB window each
//! 0xfec0_0000  IOAPIC (in-kernel)       0xfee0_0000  local APIC (in-kernel)
//! ```
//! RAM beyond 3 GiB is placed above 4 GiB so the MMIO hole stays free.

/// GDT address.
pub const GDT_ADDR: u64 = 0x500;
/// IDT address.
pub const IDT_ADDR: u64 = 0x520;
/// `hvm_start_info` of a PVH boot.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Entries that fit between [`PVH_MEMMAP_ADDR`] and the zero page (24 bytes each).
pub const PVH_MEMMAP_MAX: usize = ((ZERO_PAGE_ADDR - PVH_MEMMAP_ADDR) / 24) as usize;
/// Zero page (struct boot_params).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Level-3 page table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Level-2 page table (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line accepted (the kernel's own limit is 2048 on x86; 4 KiB leaves room).
pub const CMDLINE_MAX: usize = 4096;
/// Start of the Extended BIOS Data Area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the RSDP lives (the kernel also scans 0xe0000..0x100000 for it).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area.
pub const ACPI_END: u64 = 0x100000;
/// Start of high memory (where the kernel is loaded).
pub const HIMEM_START: u64 = 0x100000;
/// End of low RAM: above this, up to 4 GiB, is the MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above 4 GiB.
pub const FIRST_ADDR_PAST_4G: u64 = 1 << 32;
/// Base of the virtio-mmio device windows.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of each virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC MMIO address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// TSS address handed to KVM (three pages just below the BIOS area at the top of 4 GiB).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// COM1 I/O base and its legacy IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt line (GSI).
pub const COM1_GSI: u32 = 4;
/// i8042 command port (only "pulse reset" is implemented: the kernel's last-resort reboot).
pub const I8042_PORT: u16 = 0x64;
/// ACPI sleep control / reset register (hardware-reduced ACPI, one byte).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Value the guest writes to [`ACPI_PM_PORT`] to reset (FADT RESET_VALUE).
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// QEMU-compatible pvpanic port (ACPI HID QEMU0001).
pub const PVPANIC_PORT: u16 = 0x505;
/// First GSI for virtio-mmio devices.
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// Number of IOAPIC pins KVM emulates.
pub const IOAPIC_PINS: u32 = 24;

/// Guest RAM regions (start, length) for `mem_bytes` of memory.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (FIRST_ADDR_PAST_4G, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

/// MMIO window and GSI of virtio device `index`.
pub fn virtio_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_FIRST_GSI + index as u32,
    )
}

/// Most virtio-mmio devices a VM may have (GSIs 5..23).
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_PINS - VIRTIO_FIRST_GSI) as usize;
