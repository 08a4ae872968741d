//! TCP headers (RFC 9293), as far as segmentation and coalescing need them.

use super::{be16, be32, WireError};

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Flag bits of the 13th header byte.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
}

/// Offset of the checksum field inside the header.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// A read/write view of a TCP segment.
#[derive(Debug, Clone)]
pub struct Segment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Segment<T> {
        Segment { buffer }
    }

    /// Wraps a buffer after checking the header and its options fit.
    pub fn new_checked(buffer: T) -> Result<Segment<T>, WireError> {
        let s = Self::new_unchecked(buffer);
        s.check_len()?;
        Ok(s)
    }

    /// Checks the header (with options) fits the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = self.header_len();
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed("TCP data offset below 5"));
        }
        if len < hl {
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
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }
    /// Acknowledgement number.
    pub fn ack(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }
    /// Header length including options.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }
    /// The flag byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Receive window.
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }
    /// Checksum.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// The payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
    /// Sets the sequence number.
    pub fn set_seq(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ..field::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    }
    /// Sets the flag byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, sum: u16) {
        self.buffer.as_mut()[field::CHECKSUM..field::CHECKSUM + 2]
            .copy_from_slice(&sum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A SYN from port 40000 to 5201 with MSS and window-scale options.
    const SYN: [u8; 28] = [
        0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x70, 0x02, 0xfa,
        0xf0, 0x12, 0x34, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x01, 0x03, 0x03, 0x07,
    ];

    #[test]
    fn reads_a_syn_with_options() {
        let s = Segment::new_checked(&SYN[..]).unwrap();
        assert_eq!(s.src_port(), 40000);
        assert_eq!(s.dst_port(), 5201);
        assert_eq!(s.seq(), 100);
        assert_eq!(s.header_len(), 28);
        assert_eq!(s.flags(), flags::SYN);
        assert_eq!(s.window(), 0xfaf0);
        assert_eq!(s.checksum(), 0x1234);
        assert!(s.payload().is_empty());
    }

    #[test]
    fn rejects_options_past_the_end() {
        assert_eq!(
            Segment::new_checked(&SYN[..24]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = SYN;
        bad[12] = 0x40;
        assert!(Segment::new_checked(&bad[..]).is_err());
    }

    #[test]
    fn setters_write_where_getters_read() {
        let mut buf = SYN;
        let mut s = Segment::new_checked(&mut buf[..]).unwrap();
        s.set_seq(0xdead_beef);
        s.set_flags(flags::ACK | flags::PSH);
        s.set_checksum(0xabcd);
        assert_eq!(s.seq(), 0xdead_beef);
        assert_eq!(s.flags(), 0x18);
        assert_eq!(s.checksum(), 0xabcd);
    }
}
