//! The `virtio_net_hdr` a TAP device with `IFF_VNET_HDR` puts before every
//! frame: it carries segmentation (GSO) and checksum-offload metadata, so the
//! kernel can hand over 64 KB TCP segments and accept coalesced ones.

use super::WireError;

/// Length of the header (no `num_buffers` field; TAP's default size).
pub const HEADER_LEN: usize = 10;

/// `flags` bit: the checksum from `csum_start` on must be computed and
/// stored at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags` bit: the checksum has been verified.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type` values.
pub mod gso {
    /// Not a GSO frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4.
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (obsolete).
    pub const UDP: u8 = 3;
    /// TCP over IPv6.
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (USO).
    pub const UDP_L4: u8 = 5;
    /// Flag: the TCP segment has ECN CWR set (applies to the first segment only).
    pub const ECN: u8 = 0x80;
}

/// The fields of a `virtio_net_hdr` (little-endian on the wire, as TAP uses it on x86).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repr {
    /// `F_*` bits.
    pub flags: u8,
    /// A [`gso`] value.
    pub gso_type: u8,
    /// Length of all headers up to the payload that is segmented.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum is stored, relative to `csum_start`.
    pub csum_offset: u16,
}

impl Repr {
    /// Reads the header from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Repr, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let le = |at: usize| u16::from_le_bytes([buf[at], buf[at + 1]]);
        Ok(Repr {
            flags: buf[0],
            gso_type: buf[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Writes the header to the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.flags;
        buf[1] = self.gso_type;
        buf[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        buf[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        buf[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        buf[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_tso_header_as_the_kernel_writes_it() {
        // NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1338, csum_start 34, csum_offset 16.
        let raw = [0x01, 0x01, 0x42, 0x00, 0x3a, 0x05, 0x22, 0x00, 0x10, 0x00];
        let h = Repr::parse(&raw).unwrap();
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso_type, gso::TCPV4);
        assert_eq!(h.hdr_len, 66);
        assert_eq!(h.gso_size, 1338);
        assert_eq!(h.csum_start, 34);
        assert_eq!(h.csum_offset, 16);
        let mut out = [0u8; 10];
        h.emit(&mut out);
        assert_eq!(out, raw);
        assert!(Repr::parse(&raw[..9]).is_err());
    }
}
