//! Extracting the uncompressed kernel (the `vmlinux` ELF) from a bzImage, so a VMM can start
//! it directly at its PVH entry point instead of running the bzImage's in-guest decompressor.
//!
//! A bzImage is real-mode setup code followed by the protected-mode part, whose setup header
//! (boot protocol 2.08+) names the compressed kernel inside it: `payload_offset` (from the
//! start of the protected-mode part) and `payload_length`. Debian's kernels compress it with
//! LZ4 in the legacy frame format (`CONFIG_KERNEL_LZ4`); the kernel build appends the
//! uncompressed size as a little-endian u32. The payload is the stripped vmlinux ELF, followed
//! by the relocation table the decompressor uses for KASLR, which is cut off here (a PVH boot
//! runs the kernel at its link address and never needs it).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use object::read::elf::{FileHeader, ProgramHeader};

/// Largest vmlinux accepted (a stock kernel is 30-80 MiB); bounds a hostile payload.
pub const MAX_VMLINUX_BYTES: u64 = 512 << 20;
/// Xen ELF note type of the 32-bit physical-address entry point (the PVH entry).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: std::ops::Range<usize> = 0x202..0x206;
const VERSION: std::ops::Range<usize> = 0x206..0x208;
const PAYLOAD_OFFSET: std::ops::Range<usize> = 0x248..0x24c;
const PAYLOAD_LENGTH: std::ops::Range<usize> = 0x24c..0x250;
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Why no vmlinux could be extracted or used.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    /// Not a bzImage that names its payload (boot protocol 2.08+).
    #[error("not a bzImage with a payload description: {0}")]
    NotBzImage(String),
    /// The payload uses a compression this extractor does not read.
    #[error("the bzImage payload is {0}-compressed; only LZ4 (Debian's choice) is extracted")]
    UnsupportedCompression(&'static str),
    /// The compressed payload is damaged.
    #[error("the bzImage's LZ4 payload is corrupt: {0}")]
    Corrupt(String),
    /// The payload claims to decompress to more than [`MAX_VMLINUX_BYTES`].
    #[error(
        "the bzImage payload decompresses to {0} bytes, more than the {MAX_VMLINUX_BYTES} accepted"
    )]
    TooLarge(u64),
    /// The decompressed payload (or a vmlinux part) is not a usable x86-64 ELF kernel.
    #[error("not an x86-64 ELF kernel: {0}")]
    NotElf(String),
}

/// A vmlinux extracted from a bzImage.
#[derive(Debug, Clone)]
pub struct Vmlinux {
    /// The ELF file (relocation table removed).
    pub elf: Vec<u8>,
    /// The PVH entry point, if the kernel has one (`CONFIG_PVH`).
    pub pvh_entry: Option<u32>,
}

fn le32(data: &[u8], range: std::ops::Range<usize>) -> u32 {
    u32::from_le_bytes(data[range].try_into().expect("four bytes"))
}

/// The compressed payload inside `bzimage`.
pub fn bzimage_payload(bzimage: &[u8]) -> Result<&[u8], VmlinuxError> {
    if bzimage.len() < PAYLOAD_LENGTH.end || &bzimage[HEADER_MAGIC] != b"HdrS" {
        return Err(VmlinuxError::NotBzImage("no HdrS setup header".into()));
    }
    let version = u16::from_le_bytes([bzimage[VERSION.start], bzimage[VERSION.start + 1]]);
    if version < 0x0208 {
        return Err(VmlinuxError::NotBzImage(format!(
            "boot protocol {}.{:02} predates payload_offset (2.08)",
            version >> 8,
            version & 0xff
        )));
    }
    let setup_sects = match bzimage[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + le32(bzimage, PAYLOAD_OFFSET) as usize;
    let len = le32(bzimage, PAYLOAD_LENGTH) as usize;
    bzimage
        .get(start..start.saturating_add(len))
        .ok_or_else(|| {
            VmlinuxError::NotBzImage(format!(
                "payload {start:#x}+{len:#x} lies beyond the file's {} bytes (truncated?)",
                bzimage.len()
            ))
        })
}

fn compression_name(payload: &[u8]) -> &'static str {
    match payload {
        [0x1f, 0x8b, ..] => "gzip",
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x5d, 0, 0, ..] => "lzma",
        [b'B', b'Z', b'h', ..] => "bzip2",
        [0x89, b'L', b'Z', b'O', ..] => "lzo",
        _ => "an unknown format",
    }
}

/// Decompresses the vmlinux out of `bzimage` and checks that it is an x86-64 ELF.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vmlinux, VmlinuxError> {
    let payload = bzimage_payload(bzimage)?;
    if !payload.starts_with(&LZ4_LEGACY_MAGIC) {
        return Err(VmlinuxError::UnsupportedCompression(compression_name(
            payload,
        )));
    }
    // The kernel build appends the uncompressed size after the LZ4 frames.
    let Some(frames_len) = payload.len().checked_sub(4) else {
        return Err(VmlinuxError::Corrupt(
            "payload shorter than its size".into(),
        ));
    };
    let size = u64::from(le32(payload, frames_len..payload.len()));
    if size > MAX_VMLINUX_BYTES {
        return Err(VmlinuxError::TooLarge(size));
    }
    let mut data = Vec::with_capacity(size as usize);
    lz4_flex::frame::FrameDecoder::new(&payload[..frames_len])
        .take(MAX_VMLINUX_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| VmlinuxError::Corrupt(e.to_string()))?;
    if data.len() as u64 != size {
        return Err(VmlinuxError::Corrupt(format!(
            "decompressed to {} bytes, the payload says {size}",
            data.len()
        )));
    }
    let end = elf_extent(&data)?;
    data.truncate(end);
    let pvh_entry = pvh_entry(&data)?;
    Ok(Vmlinux {
        elf: data,
        pvh_entry,
    })
}

type Header = object::elf::FileHeader64<object::Endianness>;

fn parse_elf(elf: &[u8]) -> Result<(&Header, object::Endianness), VmlinuxError> {
    let bad = |e: object::Error| VmlinuxError::NotElf(e.to_string());
    let header = Header::parse(elf).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return Err(VmlinuxError::NotElf(format!(
            "machine {} is not x86-64",
            header.e_machine(endian)
        )));
    }
    Ok((header, endian))
}

/// Where the ELF file's own contents end (headers, segments, sections and the section header
/// table), so data appended after it can be cut off.
fn elf_extent(elf: &[u8]) -> Result<usize, VmlinuxError> {
    let bad = |e: object::Error| VmlinuxError::NotElf(e.to_string());
    let (header, endian) = parse_elf(elf)?;
    let mut end = u64::from(header.e_ehsize(endian));
    end = end.max(
        header.e_phoff(endian)
            + u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian)),
    );
    for phdr in header.program_headers(endian, elf).map_err(bad)? {
        end = end.max(phdr.p_offset(endian) + phdr.p_filesz(endian));
    }
    let shnum = header.shnum(endian, elf).map_err(bad)? as u64;
    if shnum > 0 {
        end = end.max(header.e_shoff(endian) + shnum * u64::from(header.e_shentsize(endian)));
        for section in header.section_headers(endian, elf).map_err(bad)? {
            use object::read::elf::SectionHeader;
            if section.sh_type(endian) != object::elf::SHT_NOBITS {
                end = end.max(section.sh_offset(endian) + section.sh_size(endian));
            }
        }
    }
    usize::try_from(end)
        .ok()
        .filter(|e| *e <= elf.len())
        .ok_or_else(|| VmlinuxError::NotElf(format!("contents end at {end:#x}, past the file")))
}

/// The PVH entry point of a vmlinux ELF (its `Xen` note of type
/// [`XEN_ELFNOTE_PHYS32_ENTRY`]), or `None` when the kernel has none.
pub fn pvh_entry(elf: &[u8]) -> Result<Option<u32>, VmlinuxError> {
    let bad = |e: object::Error| VmlinuxError::NotElf(e.to_string());
    let (header, endian) = parse_elf(elf)?;
    for phdr in header.program_headers(endian, elf).map_err(bad)? {
        let Some(mut notes) = phdr.notes(endian, elf).map_err(bad)? else {
            continue;
        };
        while let Some(note) = notes.next().map_err(bad)? {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return note_address(note.desc()).map(Some);
            }
        }
    }
    Ok(None)
}

/// Largest note segment read by [`pvh_entry_of_file`] (the kernel's are a few hundred bytes).
const MAX_NOTES_BYTES: u64 = 64 << 10;

/// [`pvh_entry`] of a vmlinux file, reading only its headers and note segments (a few KiB of
/// a file of tens of MiB), so a VMM can pick its boot protocol before loading anything.
pub fn pvh_entry_of_file(path: &Path) -> Result<Option<u32>, VmlinuxError> {
    type Phdr = object::elf::ProgramHeader64<object::Endianness>;
    let io = |e: std::io::Error| VmlinuxError::NotElf(format!("{}: {e}", path.display()));
    let bad = |e: object::Error| VmlinuxError::NotElf(e.to_string());
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = [0u8; 64];
    file.read_exact(&mut head).map_err(io)?;
    let header = Header::parse(&head[..]).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    let phnum = u64::from(header.e_phnum(endian));
    let phentsize = u64::from(header.e_phentsize(endian));
    if phentsize != std::mem::size_of::<Phdr>() as u64 || phnum > 256 {
        return Err(VmlinuxError::NotElf(format!(
            "{phnum} program headers of {phentsize} bytes"
        )));
    }
    let mut table = vec![0u8; (phnum * phentsize) as usize];
    file.seek(SeekFrom::Start(header.e_phoff(endian)))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(io)?;
    let (phdrs, _) = object::pod::slice_from_bytes::<Phdr>(&table, phnum as usize)
        .map_err(|()| VmlinuxError::NotElf("program header table".into()))?;
    for phdr in phdrs {
        if phdr.p_type(endian) != object::elf::PT_NOTE {
            continue;
        }
        let size = phdr.p_filesz(endian);
        if size > MAX_NOTES_BYTES {
            return Err(VmlinuxError::NotElf(format!(
                "note segment of {size} bytes"
            )));
        }
        let mut notes = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(phdr.p_offset(endian)))
            .and_then(|_| file.read_exact(&mut notes))
            .map_err(io)?;
        let mut iter = object::read::elf::NoteIterator::<
            object::elf::FileHeader64<object::Endianness>,
        >::new(endian, phdr.p_align(endian), &notes)
        .map_err(bad)?;
        while let Some(note) = iter.next().map_err(bad)? {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return note_address(note.desc()).map(Some);
            }
        }
    }
    Ok(None)
}

fn note_address(desc: &[u8]) -> Result<u32, VmlinuxError> {
    // The descriptor is a 32-bit address (stored in 4 or 8 bytes).
    match desc.get(..4) {
        Some(bytes) => Ok(u32::from_le_bytes(bytes.try_into().expect("four"))),
        None => Err(VmlinuxError::NotElf(format!(
            "PVH note descriptor of {} bytes is too short",
            desc.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage_with_payload(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 5 * 512];
        image[SETUP_SECTS] = 4;
        image[HEADER_MAGIC].copy_from_slice(b"HdrS");
        image[VERSION].copy_from_slice(&0x020fu16.to_le_bytes());
        image[PAYLOAD_OFFSET].copy_from_slice(&16u32.to_le_bytes());
        image[PAYLOAD_LENGTH].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 16]);
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn payload_is_found_through_the_setup_header() {
        let image = bzimage_with_payload(b"PAYLOAD!");
        assert_eq!(bzimage_payload(&image).unwrap(), b"PAYLOAD!");
    }

    #[test]
    fn foreign_truncated_and_other_compressions_are_refused() {
        assert!(matches!(
            extract_vmlinux(&[0u8; 100]),
            Err(VmlinuxError::NotBzImage(_))
        ));
        let image = bzimage_with_payload(&[0x1f, 0x8b, 8, 0, 0, 0]);
        assert!(matches!(
            extract_vmlinux(&image),
            Err(VmlinuxError::UnsupportedCompression("gzip"))
        ));
        let image = bzimage_with_payload(&[0x02, 0x21, 0x4c, 0x18, 0xff, 0xff, 0xff, 0xff]);
        let truncated = &image[..image.len() - 3];
        assert!(matches!(
            extract_vmlinux(truncated),
            Err(VmlinuxError::NotBzImage(_))
        ));
    }

    #[test]
    fn damaged_lz4_and_bombs_are_errors_not_panics() {
        // A legacy frame whose one block claims 100 bytes but holds 3, then a size trailer.
        let mut payload = LZ4_LEGACY_MAGIC.to_vec();
        payload.extend_from_slice(&100u32.to_le_bytes());
        payload.extend_from_slice(&[1, 2, 3]);
        payload.extend_from_slice(&4096u32.to_le_bytes());
        let err = extract_vmlinux(&bzimage_with_payload(&payload)).unwrap_err();
        assert!(matches!(err, VmlinuxError::Corrupt(_)), "{err}");
        let mut bomb = LZ4_LEGACY_MAGIC.to_vec();
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = extract_vmlinux(&bzimage_with_payload(&bomb)).unwrap_err();
        assert!(matches!(err, VmlinuxError::TooLarge(_)), "{err}");
        // Random bytes after the magic: some error, never a panic.
        let mut state = 0x1234_5678u32;
        for _ in 0..200 {
            let mut payload = LZ4_LEGACY_MAGIC.to_vec();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                payload.push(state as u8);
            }
            payload.extend_from_slice(&1000u32.to_le_bytes());
            assert!(extract_vmlinux(&bzimage_with_payload(&payload)).is_err());
        }
    }

    #[test]
    fn non_elf_data_has_no_pvh_entry() {
        assert!(matches!(
            pvh_entry(b"not an elf at all, just bytes"),
            Err(VmlinuxError::NotElf(_))
        ));
    }
}
