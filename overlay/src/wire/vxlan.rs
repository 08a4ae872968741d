//! VXLAN headers (RFC 7348).

use super::WireError;

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// The IANA-assigned UDP destination port.
pub const UDP_PORT: u16 = 4789;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// The "I" flag: the VNI is valid. RFC 7348 requires it set.
const FLAG_I: u8 = 0x08;

mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
}

/// A read/write view of a VXLAN header and the frame behind it.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking the header fits.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the header fits.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// True when the I flag (valid VNI) is set.
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }
    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }
    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The fields of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// VXLAN network identifier (the enclave id).
    pub vni: u32,
}

impl Repr {
    /// Reads a checked header; the I flag must be set. Reserved bits are
    /// ignored on receipt, as RFC 7348 requires.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, WireError> {
        if !p.vni_valid() {
            return Err(WireError::Malformed("VXLAN I flag not set"));
        }
        Ok(Repr { vni: p.vni() })
    }

    /// Writes the 8-byte header.
    pub fn emit(&self, buf: &mut [u8]) {
        let v = self.vni.to_be_bytes();
        buf[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_vni_42() {
        let hdr = [0x08, 0, 0, 0, 0x00, 0x00, 0x2a, 0];
        let p = Packet::new_checked(&hdr[..]).unwrap();
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(repr.vni, 42);
        let mut out = [0xffu8; 8];
        repr.emit(&mut out);
        assert_eq!(out, hdr);
    }

    #[test]
    fn needs_the_i_flag_and_eight_bytes() {
        let hdr = [0x00, 0, 0, 0, 0, 0, 0x2a, 0];
        assert!(Repr::parse(&Packet::new_checked(&hdr[..]).unwrap()).is_err());
        assert_eq!(
            Packet::new_checked(&hdr[..7]).unwrap_err(),
            WireError::Truncated
        );
        // Reserved bits set by some implementations are ignored.
        let hdr = [0x0c, 0xff, 0, 0, 0xab, 0xcd, 0xef, 0x01];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&hdr[..]).unwrap())
                .unwrap()
                .vni,
            0xabcdef
        );
    }
}
