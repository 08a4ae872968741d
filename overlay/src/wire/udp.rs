//! UDP headers (RFC 768).

use super::{be16, WireError};

/// Length of the header.
pub const HEADER_LEN: usize = 8;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct Datagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Datagram<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Datagram<T> {
        Datagram { buffer }
    }

    /// Wraps a buffer after checking the header and the declared length.
    pub fn new_checked(buffer: T) -> Result<Datagram<T>, WireError> {
        let d = Self::new_unchecked(buffer);
        d.check_len()?;
        Ok(d)
    }

    /// Checks the header fits and the length field is between 8 and the buffer length.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            return Err(WireError::Malformed("UDP length below 8"));
        }
        if buf.len() < len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }
    /// Length field (header + payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }
    /// Checksum (0 means "not computed" over IPv4).
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// Payload up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

/// The fields of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length.
    pub payload_len: usize,
}

impl Repr {
    /// Reads a checked datagram.
    pub fn parse<T: AsRef<[u8]>>(d: &Datagram<T>) -> Repr {
        Repr {
            src_port: d.src_port(),
            dst_port: d.dst_port(),
            payload_len: usize::from(d.len()) - HEADER_LEN,
        }
    }

    /// Writes the header with a zero checksum, which IPv4 allows and RFC 7348
    /// recommends for VXLAN (the payload is protected by WireGuard's AEAD).
    pub fn emit(&self, buf: &mut [u8]) {
        let len = (HEADER_LEN + self.payload_len) as u16;
        buf[field::SRC_PORT..field::SRC_PORT + 2].copy_from_slice(&self.src_port.to_be_bytes());
        buf[field::DST_PORT..field::DST_PORT + 2].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[field::LENGTH..field::LENGTH + 2].copy_from_slice(&len.to_be_bytes());
        buf[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&[0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // VXLAN datagram header: 49152 -> 4789, length 58, no checksum.
    const HDR: [u8; 8] = [0xc0, 0x00, 0x12, 0xb5, 0x00, 0x3a, 0x00, 0x00];

    #[test]
    fn reads_and_writes_a_header() {
        let mut buf = HDR.to_vec();
        buf.resize(58, 0);
        let d = Datagram::new_checked(&buf[..]).unwrap();
        assert_eq!(d.src_port(), 49152);
        assert_eq!(d.dst_port(), 4789);
        assert_eq!(d.payload().len(), 50);
        let repr = Repr::parse(&d);
        let mut out = [0u8; 8];
        repr.emit(&mut out);
        assert_eq!(out, HDR);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = HDR.to_vec();
        buf.resize(57, 0);
        assert_eq!(
            Datagram::new_checked(&buf[..]).unwrap_err(),
            WireError::Truncated
        );
        let mut buf = HDR.to_vec();
        buf[5] = 4;
        assert!(Datagram::new_checked(&buf[..]).is_err());
        assert!(Datagram::new_checked(&HDR[..7]).is_err());
    }
}
