//! Loading the kernel, its initramfs and command line into guest memory, by one of two boot
//! protocols:
//! - a bzImage through the Linux 64-bit boot protocol: the zero page (struct boot_params)
//!   carries the e820 map and the ACPI RSDP address, and the kernel decompresses itself in the
//!   guest;
//! - an uncompressed vmlinux ELF through PVH: `hvm_start_info` carries the command line, the
//!   initramfs (module 0), the RSDP and the memory map, and the vCPU starts in 32-bit protected
//!   mode at the kernel's PVH entry point, with nothing to decompress.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ram_regions, ACPI_END, CMDLINE_ADDR, CMDLINE_MAX, EBDA_START, HIMEM_START, PVH_INFO_ADDR,
    PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// xloadflags bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// The kernel relocates itself to its preferred physical address (16 MiB on Debian) and needs
/// `init_size` bytes there.
const KERNEL_RUN_ADDR: u64 = 0x100_0000;

/// Why a kernel or initramfs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("kernel {path}: {source}")]
    KernelFile {
        /// The kernel file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a bzImage the 64-bit boot protocol can start.
    #[error("kernel {path} is not a bootable x86_64 bzImage: {reason}")]
    BadKernel {
        /// The kernel file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The initramfs could not be read.
    #[error("initramfs {path}: {source}")]
    InitrdFile {
        /// The initramfs file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Guest memory is too small for kernel and initramfs.
    #[error("{memory_mib} MiB of guest memory cannot hold the kernel ({kernel_needs} MiB while booting) and the {initrd_mib} MiB initramfs; give the VM more memory")]
    TooSmall {
        /// Guest memory.
        memory_mib: u64,
        /// Memory the kernel needs below the initramfs.
        kernel_needs: u64,
        /// Size of the initramfs.
        initrd_mib: u64,
    },
    /// The command line is too long or contains a NUL.
    #[error("kernel command line is {len} bytes; at most {max} without NUL bytes are allowed")]
    Cmdline {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Writing to guest memory failed.
    #[error("writing {what} to guest memory failed: {source}")]
    Memory {
        /// What was being written.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode without paging, EBX = `hvm_start_info`.
    Pvh,
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// Entry point: bzImage load address + 0x200, or the PVH entry.
    pub entry: u64,
    /// The protocol, which decides the vCPU's mode and registers.
    pub protocol: BootProtocol,
    /// Guest address of the boot information: the zero page or `hvm_start_info`.
    pub boot_info: u64,
}

/// The e820 map for `mem_bytes` of RAM.
pub fn e820_map(mem_bytes: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: EBDA_START,
            size: ACPI_END - EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    for (start, len) in ram_regions(mem_bytes) {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// Loads kernel, initramfs and command line; writes the zero page.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<BootEntry, BootError> {
    let (mut file, kernel_name) = open_kernel(kernel)?;
    let bad = bad_kernel(&kernel_name);
    let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| bad(e.to_string()))?;
    let header = loaded
        .setup_header
        .ok_or_else(|| bad("no setup header".into()))?;
    if header.version < 0x020c || header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(bad(format!(
            "boot protocol {}.{:02} without a 64-bit entry point (needs 2.12+)",
            header.version >> 8,
            header.version & 0xff
        )));
    }

    write_cmdline(mem, cmdline)?;
    let kernel_needs = (KERNEL_RUN_ADDR + u64::from(header.init_size)).max(loaded.kernel_end);
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    let initrd_limit = u64::from(header.initrd_addr_max) + 1;
    if let Some((addr, size)) = load_initrd(mem, mem_bytes, initrd, kernel_needs, initrd_limit)? {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    params.acpi_rsdp_addr = rsdp_addr;
    let map = e820_map(mem_bytes);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| BootError::Memory {
            what: "zero page",
            source,
        })?;
    Ok(BootEntry {
        entry: loaded.kernel_load.0 + 0x200,
        protocol: BootProtocol::Linux64,
        boot_info: ZERO_PAGE_ADDR,
    })
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX || cmdline.contains('\0') {
        return Err(BootError::Cmdline {
            len: cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    let mut cmdline_bytes = cmdline.as_bytes().to_vec();
    cmdline_bytes.push(0);
    mem.write_slice(&cmdline_bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| BootError::Memory {
            what: "command line",
            source,
        })
}

/// Reads the initramfs to the top of low RAM (below `limit`), above `kernel_needs`; returns
/// its address and size. Without an initramfs it only checks that the kernel fits.
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    initrd: Option<&Path>,
    kernel_needs: u64,
    limit: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    let low_ram_end = ram_regions(mem_bytes)[0].1;
    let Some(initrd) = initrd else {
        if kernel_needs > low_ram_end {
            return Err(BootError::TooSmall {
                memory_mib: mem_bytes >> 20,
                kernel_needs: kernel_needs >> 20,
                initrd_mib: 0,
            });
        }
        return Ok(None);
    };
    let initrd_name = initrd.display().to_string();
    let read_err = |source| BootError::InitrdFile {
        path: initrd_name.clone(),
        source,
    };
    // Read straight into guest memory: no copy of the initramfs stays in the VMM's heap.
    let mut file = File::open(initrd).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let limit = low_ram_end.min(limit);
    let addr = limit.saturating_sub(size) & !0xfff;
    if addr < kernel_needs || size > limit {
        return Err(BootError::TooSmall {
            memory_mib: mem_bytes >> 20,
            kernel_needs: kernel_needs >> 20,
            initrd_mib: size >> 20,
        });
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::Memory {
            what: "initramfs",
            source,
        })?;
    Ok(Some((addr, size)))
}

/// Loads an uncompressed vmlinux ELF and its initramfs for a PVH boot and writes
/// `hvm_start_info` (command line, initramfs as module 0, RSDP, memory map). Returns `None`
/// when the kernel has no PVH entry point (nothing is written then: boot the bzImage).
pub fn load_pvh(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    vmlinux: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<Option<BootEntry>, BootError> {
    let (mut file, kernel_name) = open_kernel(vmlinux)?;
    let bad = bad_kernel(&kernel_name);
    // Segments go straight from the file into guest memory (no copy in the VMM's heap).
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        bad(format!(
            "{e} (truncated or not a vmlinux ELF? or guest memory too small)"
        ))
    })?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        // What was loaded is overwritten or ignored by the bzImage boot that follows.
        return Ok(None);
    };

    write_cmdline(mem, cmdline)?;
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: PVH_MEMMAP_ADDR,
        ..Default::default()
    };
    if let Some((addr, size)) = load_initrd(mem, mem_bytes, initrd, loaded.kernel_end, u64::MAX)? {
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))
            .map_err(|source| BootError::Memory {
                what: "PVH module list",
                source,
            })?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let map = e820_map(mem_bytes);
    assert!(
        map.len() <= PVH_MEMMAP_MAX,
        "the e820 map has at most four entries"
    );
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.r#type,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(|source| BootError::Memory {
                what: "PVH memory map",
                source,
            })?;
    }
    start_info.memmap_entries = map.len() as u32;
    mem.write_obj(start_info, GuestAddress(PVH_INFO_ADDR))
        .map_err(|source| BootError::Memory {
            what: "hvm_start_info",
            source,
        })?;
    Ok(Some(BootEntry {
        entry: entry.0,
        protocol: BootProtocol::Pvh,
        boot_info: PVH_INFO_ADDR,
    }))
}

/// Opens a kernel image; the error names the file. Returns the file and its name.
fn open_kernel(path: &Path) -> Result<(File, String), BootError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| BootError::KernelFile {
        path: name.clone(),
        source,
    })?;
    Ok((file, name))
}

/// Makes a "this kernel image is unusable" error naming the file.
fn bad_kernel(name: &str) -> impl Fn(String) -> BootError + '_ {
    move |reason| BootError::BadKernel {
        path: name.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_reserves_the_bios_area() {
        let map = e820_map(256 << 20);
        let summary: Vec<(u64, u64, u32)> =
            map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            summary,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, ACPI_END - EBDA_START, E820_RESERVED),
                (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM),
            ]
        );
        let big = e820_map(4 << 30);
        let last = *big.last().unwrap();
        let (addr, size) = (last.addr, last.size);
        assert_eq!(addr, 1 << 32);
        assert_eq!(size, (4 << 30) - 0xc000_0000);
    }

    /// A minimal vmlinux: one PT_LOAD of `text` at 16 MiB and, when `entry` is given, a
    /// PT_NOTE with the Xen PVH entry note.
    fn tiny_vmlinux(text: &[u8], entry: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if entry.is_some() { 2 } else { 1 };
        let notes_off = 64 + 56 * u64::from(phnum);
        let mut note = Vec::new();
        if let Some(entry) = entry {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let text_off = notes_off + note.len() as u64;
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
        elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        elf.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, phnum, 64, 0, 0] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
        let phdr = |elf: &mut Vec<u8>, kind: u32, off: u64, addr: u64, size: u64, align: u64| {
            elf.extend_from_slice(&kind.to_le_bytes());
            elf.extend_from_slice(&5u32.to_le_bytes());
            for v in [off, addr, addr, size, size, align] {
                elf.extend_from_slice(&v.to_le_bytes());
            }
        };
        phdr(&mut elf, 1, text_off, 0x100_0000, text.len() as u64, 0x1000);
        if entry.is_some() {
            phdr(&mut elf, 4, notes_off, 0, note.len() as u64, 4);
        }
        elf.extend_from_slice(&note);
        elf.extend_from_slice(text);
        elf
    }

    #[test]
    fn pvh_boot_writes_start_info_modules_and_memory_map() {
        use crate::arch::regs::{boot_regs, boot_sregs};
        let mem_bytes = 64u64 << 20;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_bytes as usize)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, tiny_vmlinux(b"KERNEL-TEXT", Some(0x100_0004))).unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, b"INITRAMFS").unwrap();
        let entry = load_pvh(
            &mem,
            mem_bytes,
            &kernel,
            Some(&initrd),
            "console=ttyS0",
            0xe0000,
        )
        .unwrap()
        .expect("the kernel has a PVH note");
        assert_eq!(
            entry,
            BootEntry {
                entry: 0x100_0004,
                protocol: BootProtocol::Pvh,
                boot_info: PVH_INFO_ADDR,
            }
        );
        let mut text = [0u8; 11];
        mem.read_slice(&mut text, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(&text, b"KERNEL-TEXT");

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(info.cmdline_paddr))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(module.size, 9);
        assert_eq!(module.paddr % 4096, 0);
        assert!(module.paddr + module.size <= mem_bytes && module.paddr > 0x100_0000);
        let mut initrd_bytes = [0u8; 9];
        mem.read_slice(&mut initrd_bytes, GuestAddress(module.paddr))
            .unwrap();
        assert_eq!(&initrd_bytes, b"INITRAMFS");
        let expected = e820_map(mem_bytes);
        assert_eq!(info.memmap_entries as usize, expected.len());
        for (i, e) in expected.iter().enumerate() {
            let at = info.memmap_paddr + i as u64 * 24;
            let got: hvm_memmap_table_entry = mem.read_obj(GuestAddress(at)).unwrap();
            assert_eq!(
                (got.addr, got.size, got.type_),
                (e.addr, e.size, e.r#type),
                "memory map entry {i}"
            );
        }

        // The vCPU enters in 32-bit protected mode without paging, EBX = hvm_start_info.
        let regs = boot_regs(&entry);
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (0x100_0004, PVH_INFO_ADDR, 2)
        );
        let sregs = boot_sregs(BootProtocol::Pvh, &Default::default());
        assert_eq!(sregs.cr0 & 0x8000_0001, 1, "PE on, PG off");
        assert_eq!((sregs.cr4, sregs.efer), (0, 0), "no PAE, no long mode");
        assert_eq!((sregs.cs.l, sregs.cs.db, sregs.cs.selector), (0, 1, 0x08));
        assert_eq!((sregs.ds.db, sregs.ds.selector), (1, 0x10));
    }

    #[test]
    fn vmlinux_without_pvh_note_falls_back_and_a_truncated_one_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, tiny_vmlinux(b"TEXT", None)).unwrap();
        assert_eq!(
            load_pvh(&mem, 64 << 20, &kernel, None, "", 0).unwrap(),
            None
        );
        let full = tiny_vmlinux(&[0x90; 4096], Some(0x100_0000));
        for cut in [10, 100, full.len() - 100] {
            std::fs::write(&kernel, &full[..cut]).unwrap();
            let err = load_pvh(&mem, 64 << 20, &kernel, None, "", 0).unwrap_err();
            assert!(
                matches!(err, BootError::BadKernel { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn truncated_or_foreign_kernels_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, vec![0u8; 1000]).unwrap();
        let err = load_linux(&mem, 64 << 20, &kernel, None, "", 0).unwrap_err();
        assert!(matches!(err, BootError::BadKernel { .. }), "{err}");
        let err = load_linux(&mem, 64 << 20, &dir.path().join("absent"), None, "", 0).unwrap_err();
        assert!(matches!(err, BootError::KernelFile { .. }), "{err}");
    }
}
