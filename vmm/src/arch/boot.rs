//! Loading a bzImage, its initramfs and command line into guest memory and filling the zero
//! page (struct boot_params) with the e820 map and the ACPI RSDP address.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ram_regions, ACPI_END, CMDLINE_ADDR, CMDLINE_MAX, EBDA_START, HIMEM_START, ZERO_PAGE_ADDR,
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

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// 64-bit entry point (load address + 0x200).
    pub entry: u64,
    /// Guest address of the zero page.
    pub zero_page: u64,
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
    let kernel_name = kernel.display().to_string();
    let mut file = File::open(kernel).map_err(|source| BootError::KernelFile {
        path: kernel_name.clone(),
        source,
    })?;
    let bad = |reason: String| BootError::BadKernel {
        path: kernel_name.clone(),
        reason,
    };
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
        })?;

    let low_ram_end = ram_regions(mem_bytes)[0].1;
    let kernel_needs = (KERNEL_RUN_ADDR + u64::from(header.init_size)).max(loaded.kernel_end);
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let initrd_name = initrd.display().to_string();
        let read_err = |source| BootError::InitrdFile {
            path: initrd_name.clone(),
            source,
        };
        // Read straight into guest memory: no copy of the initramfs stays in the VMM's heap.
        let mut file = File::open(initrd).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        let limit = low_ram_end.min(u64::from(header.initrd_addr_max) + 1);
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
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    } else if kernel_needs > low_ram_end {
        return Err(BootError::TooSmall {
            memory_mib: mem_bytes >> 20,
            kernel_needs: kernel_needs >> 20,
            initrd_mib: 0,
        });
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
        zero_page: ZERO_PAGE_ADDR,
    })
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
