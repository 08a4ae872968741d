//! Guest RAM mapped so that KVM can back it with 2 MiB pages.
//!
//! KVM maps a guest page with a 2 MiB entry in its nested (NPT/EPT) page tables only when the
//! host address and the guest physical address agree modulo 2 MiB and the host backs that
//! range with a transparent huge page. A plain `mmap` (what vm-memory does) returns an address
//! that is only 4 KiB aligned and shifts with whatever the process mapped before (one thread
//! stack moves it by its 4 KiB guard page): then every guest page is a separate 4 KiB nested
//! page fault. Under nested virtualization each such fault is expensive enough to add seconds
//! to a boot, so the RAM is placed on a 2 MiB boundary and marked for huge pages.

use std::io;
use std::ptr::null_mut;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// The huge page size the guest RAM is aligned to (x86-64 PMD size).
pub const HUGE_PAGE: usize = 2 << 20;

/// Why guest RAM could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum GuestRamError {
    /// The kernel refused the mapping.
    #[error("mapping {size} bytes for guest address {guest:#x}: {source}")]
    Map {
        /// Requested region size.
        size: usize,
        /// Guest physical start.
        guest: u64,
        /// The kernel's error.
        source: io::Error,
    },
    /// vm-memory rejected the regions (overlap, overflow).
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
}

/// Guest RAM whose host mappings start on [`HUGE_PAGE`] boundaries. The mappings are removed
/// when the last user is gone: if clones of [`GuestRam::memory`] outlive this value (device
/// threads, parked vCPU threads), they stay mapped until the process exits instead.
pub struct GuestRam {
    memory: GuestMemoryMmap,
    regions: Vec<Arc<GuestRegionMmap>>,
}

impl GuestRam {
    /// Maps anonymous RAM for each `(guest start, size)` range (sorted, non-overlapping).
    pub fn new(ranges: &[(GuestAddress, usize)]) -> Result<GuestRam, GuestRamError> {
        let mut ram = GuestRam {
            memory: GuestMemoryMmap::default(),
            regions: Vec::new(),
        };
        for &(guest, size) in ranges {
            let host = map_aligned(size).map_err(|source| GuestRamError::Map {
                size,
                guest: guest.0,
                source,
            })?;
            // SAFETY: `host..host + size` is a private anonymous read-write mapping made
            // above and owned by `ram` (unmapped in its Drop, only when no region is shared).
            let mapping = unsafe {
                MmapRegion::build_raw(host, size, libc::PROT_READ | libc::PROT_WRITE, MAP_FLAGS)
            };
            let region = match mapping
                .map_err(|e| GuestRamError::Layout(e.to_string()))
                .and_then(|m| {
                    GuestRegionMmap::new(m, guest)
                        .ok_or_else(|| GuestRamError::Layout(format!("{guest:?} + {size:#x}")))
                }) {
                Ok(region) => region,
                Err(e) => {
                    // SAFETY: not yet handed to any region.
                    unsafe { libc::munmap(host.cast(), size) };
                    return Err(e);
                }
            };
            // Tracked right away so that an error below still unmaps it.
            ram.regions.push(Arc::new(region));
        }
        ram.memory = GuestMemoryMmap::from_arc_regions(ram.regions.clone())
            .map_err(|e| GuestRamError::Layout(e.to_string()))?;
        Ok(ram)
    }

    /// The guest memory (cheap to clone; clones share the mappings).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        self.memory = GuestMemoryMmap::default();
        for region in self.regions.drain(..) {
            // Unmapped only when nothing else can reach it; a region still shared (a device or
            // vCPU thread holds guest memory) stays mapped rather than dangling.
            if let Ok(region) = Arc::try_unwrap(region) {
                // SAFETY: the last reference to the mapping made in `GuestRam::new`.
                unsafe { libc::munmap(region.as_ptr().cast(), region.size()) };
            }
        }
    }
}

const MAP_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `size` bytes of anonymous memory starting on a [`HUGE_PAGE`] boundary: over-allocates
/// by one huge page and trims both ends, then asks for transparent huge pages (needed where
/// the host's THP mode is `madvise`; harmless where it is `always` or `never`).
fn map_aligned(size: usize) -> io::Result<*mut u8> {
    let padded = size
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses.
    let base = unsafe {
        libc::mmap(
            null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            MAP_FLAGS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = base as usize;
    let (start, head, tail) = trim_to_huge_page(base, padded, size);
    // SAFETY: both ranges lie inside the mapping just made and outside the part kept.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
        // Advice only: failing (THP compiled out) leaves ordinary pages.
        libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Ok(start as *mut u8)
}

/// Within a mapping of `padded` (= `size` + [`HUGE_PAGE`]) bytes at `base`: the
/// [`HUGE_PAGE`]-aligned start of the `size` bytes kept, and how much to unmap before and
/// after them.
fn trim_to_huge_page(base: usize, padded: usize, size: usize) -> (usize, usize, usize) {
    let start = base.next_multiple_of(HUGE_PAGE);
    let head = start - base;
    (start, head, padded - head - size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn guest_ram_starts_on_huge_page_boundaries_whatever_was_mapped_before() {
        let ranges = [(GuestAddress(0), 6 << 20), (GuestAddress(1 << 32), 4 << 20)];
        for _ in 0..4 {
            // A one-page mapping first moves the next address the kernel picks by 4 KiB, as a
            // thread stack's guard page does (kernels before 6.7 then return a misaligned
            // address for a plain mmap; later ones align large anonymous mappings).
            // SAFETY: a fresh anonymous page, unmapped below.
            let page = unsafe { libc::mmap(null_mut(), 4096, libc::PROT_READ, MAP_FLAGS, -1, 0) };
            assert_ne!(page, libc::MAP_FAILED);
            let ram = GuestRam::new(&ranges).unwrap();
            for region in ram.memory().iter() {
                let host = region.as_ptr() as usize;
                assert_eq!(host % HUGE_PAGE, 0, "region at {host:#x}");
                assert_eq!(
                    (host as u64).wrapping_sub(region.start_addr().0) % HUGE_PAGE as u64,
                    0
                );
            }
            let mem = ram.memory();
            mem.write_obj(0xdead_beef_u32, GuestAddress((6 << 20) - 4))
                .unwrap();
            mem.write_obj(7u8, GuestAddress((1 << 32) + (4 << 20) - 1))
                .unwrap();
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress((6 << 20) - 4)).unwrap(),
                0xdead_beef
            );
            assert!(mem.write_obj(1u8, GuestAddress(6 << 20)).is_err(), "hole");
            // SAFETY: the page mapped above.
            unsafe { libc::munmap(page, 4096) };
        }
    }

    #[test]
    fn a_misaligned_mapping_is_trimmed_to_a_huge_page_boundary() {
        let size = 256 << 20;
        let padded = size + HUGE_PAGE;
        // What Linux 6.1 returns after a thread stack was mapped: 4 KiB past a boundary.
        let base = 0x7f12_3440_1000;
        let (start, head, tail) = trim_to_huge_page(base, padded, size);
        assert_eq!(start, 0x7f12_3460_0000);
        assert_eq!(head, HUGE_PAGE - 0x1000);
        assert_eq!(tail, 0x1000);
        assert_eq!(base + head + size + tail, base + padded);
        // Already aligned (newer kernels align large anonymous mappings): keep the start.
        assert_eq!(
            trim_to_huge_page(0x7f12_3400_0000, padded, size),
            (0x7f12_3400_0000, 0, HUGE_PAGE)
        );
    }

    #[test]
    fn guest_ram_stays_mapped_while_a_clone_is_in_use() {
        let ram = GuestRam::new(&[(GuestAddress(0), HUGE_PAGE)]).unwrap();
        let clone = ram.memory().clone();
        drop(ram);
        clone.write_obj(42u64, GuestAddress(128)).unwrap();
        assert_eq!(clone.read_obj::<u64>(GuestAddress(128)).unwrap(), 42);
    }
}
