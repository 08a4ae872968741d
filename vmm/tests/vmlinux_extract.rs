//! The vmlinux extracted from the default appliance's stock Debian bzImage is the kernel's
//! own ELF with a PVH entry point, byte for byte what the reference `lz4` tool decompresses.

mod common;

use std::process::{Command, Stdio};

use slicenet_vmm::appliance::vmlinux::{
    bzimage_payload, extract_vmlinux, pvh_entry, pvh_entry_of_file,
};
use slicenet_vmm::arch::boot::{load_pvh, BootProtocol, XEN_HVM_START_MAGIC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[test]
fn vmlinux_from_the_stock_kernel_is_an_elf_with_a_pvh_entry() {
    let test = "vmlinux_from_the_stock_kernel_is_an_elf_with_a_pvh_entry";
    let Some((appliance, _)) = common::default_appliance(test) else {
        return;
    };
    let bzimage = std::fs::read(appliance.kernel_path()).unwrap();
    let vmlinux = extract_vmlinux(&bzimage).unwrap();
    assert_eq!(&vmlinux.elf[..4], b"\x7fELF");
    let entry = vmlinux
        .pvh_entry
        .expect("Debian's cloud kernel has CONFIG_PVH=y");
    // The PVH entry is a physical address inside the kernel, loaded at 16 MiB.
    assert!(
        (0x100_0000..0x1000_0000).contains(&entry),
        "PVH entry {entry:#x}"
    );
    // The appliance stores exactly this file, and a VMM finds its entry from the headers.
    let path = appliance
        .vmlinux_path()
        .expect("the default appliance carries a vmlinux");
    assert_eq!(std::fs::read(&path).unwrap(), vmlinux.elf);
    assert_eq!(pvh_entry_of_file(&path).unwrap(), Some(entry));

    // Loaded for a PVH boot into the default appliance's guest memory: the entry is the
    // note's, the first segment's bytes sit at their physical address, hvm_start_info is set.
    let mem_bytes = u64::from(appliance.manifest().memory_mib) << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_bytes as usize)]).unwrap();
    let boot = load_pvh(
        &mem,
        mem_bytes,
        &path,
        Some(&appliance.initrd_path()),
        &appliance.manifest().cmdline,
        0xe0000,
    )
    .unwrap()
    .expect("PVH entry found by the loader too");
    assert_eq!(boot.entry, u64::from(entry));
    assert_eq!(boot.protocol, BootProtocol::Pvh);
    let (offset, paddr) = first_load_segment(&vmlinux.elf);
    let mut start = [0u8; 4096];
    mem.read_slice(&mut start, GuestAddress(paddr)).unwrap();
    assert_eq!(
        &start[..],
        &vmlinux.elf[offset as usize..offset as usize + 4096],
        "the first segment's start at {paddr:#x}"
    );
    let magic: u32 = mem.read_obj(GuestAddress(boot.boot_info)).unwrap();
    assert_eq!(magic, XEN_HVM_START_MAGIC);

    // Cross-check with the reference LZ4 decompressor where it is installed (Debian lz4).
    let payload = bzimage_payload(&bzimage).unwrap();
    let Ok(mut child) = Command::new("lz4")
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        println!("lz4 not installed: reference comparison skipped");
        return;
    };
    let mut stdin = child.stdin.take().unwrap();
    let frames = payload[..payload.len() - 4].to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&frames);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "lz4 -d failed");
    assert!(out.stdout.len() >= vmlinux.elf.len());
    assert!(
        out.stdout[..vmlinux.elf.len()] == vmlinux.elf[..],
        "the extracted ELF is a prefix of lz4's output"
    );
    assert_eq!(pvh_entry(&out.stdout).unwrap(), Some(entry));
}

/// (file offset, physical address) of the first PT_LOAD segment.
fn first_load_segment(elf: &[u8]) -> (u64, u64) {
    use object::read::elf::{FileHeader, ProgramHeader};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(elf).unwrap();
    let endian = header.endian().unwrap();
    let phdr = header
        .program_headers(endian, elf)
        .unwrap()
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_LOAD)
        .unwrap();
    (phdr.p_offset(endian), phdr.p_paddr(endian))
}
