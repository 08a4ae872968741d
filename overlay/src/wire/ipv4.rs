//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::{be16, checksum, WireError};

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// IP protocol numbers the data plane looks at.
pub mod protocol {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP.
    pub const ICMP: u8 = 1;
}

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking version, header length and total length.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header and the total length fit the buffer. Bytes
    /// after the total length (link-layer padding) are allowed.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        if buf.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::Malformed("IP version is not 4"));
        }
        let hl = self.header_len();
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed("IPv4 header length below 20"));
        }
        let total = usize::from(self.total_len());
        if total < hl {
            return Err(WireError::Malformed(
                "IPv4 total length below header length",
            ));
        }
        if buf.len() < hl || buf.len() < total {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The version field (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    /// DSCP and ECN byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }
    /// Total length (header + payload).
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }
    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x4000 != 0
    }
    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x2000 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), field::FLG_OFF) & 0x1fff) * 8
    }
    /// True when this packet is a fragment of a larger one.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    /// Header checksum.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// True when the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..self.header_len()], 0)) == 0xffff
    }
    /// The payload, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH..field::LENGTH + 2].copy_from_slice(&len.to_be_bytes());
    }
    /// Sets the identification.
    pub fn set_ident(&mut self, id: u16) {
        self.buffer.as_mut()[field::IDENT..field::IDENT + 2].copy_from_slice(&id.to_be_bytes());
    }
    /// Recomputes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let buf = self.buffer.as_mut();
        buf[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(&buf[..hl], 0));
        buf[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    }
    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let total = usize::from(self.total_len());
        &mut self.buffer.as_mut()[hl..total]
    }
}

/// The fields of an option-less, unfragmented IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Payload protocol.
    pub protocol: u8,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
}

impl Repr {
    /// Reads a checked packet, insisting on a correct checksum and no fragmentation.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, WireError> {
        if !p.verify_checksum() {
            return Err(WireError::Malformed("IPv4 header checksum is wrong"));
        }
        if p.is_fragment() {
            return Err(WireError::Malformed("IPv4 fragment"));
        }
        Ok(Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
            ttl: p.ttl(),
        })
    }

    /// Writes a 20-byte header (DF set, identification 0 as RFC 6864 allows
    /// for atomic datagrams) with its checksum to the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let total = (MIN_HEADER_LEN + self.payload_len) as u16;
        buf[field::VER_IHL] = 0x45;
        buf[field::DSCP_ECN] = 0;
        buf[field::LENGTH..field::LENGTH + 2].copy_from_slice(&total.to_be_bytes());
        buf[field::IDENT..field::IDENT + 2].copy_from_slice(&[0, 0]);
        buf[field::FLG_OFF..field::FLG_OFF + 2].copy_from_slice(&0x4000u16.to_be_bytes());
        buf[field::TTL] = self.ttl;
        buf[field::PROTOCOL] = self.protocol;
        buf[field::SRC].copy_from_slice(&self.src.octets());
        buf[field::DST].copy_from_slice(&self.dst.octets());
        Packet::new_unchecked(&mut buf[..MIN_HEADER_LEN]).fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real header: UDP 192.168.0.1 -> 192.168.0.199, total length 115.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn packet() -> Vec<u8> {
        let mut p = HDR.to_vec();
        p.resize(115, 0xab);
        p
    }

    #[test]
    fn reads_a_real_header() {
        let buf = packet();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 115);
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.protocol(), protocol::UDP);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 95);
    }

    #[test]
    fn repr_round_trips_with_the_same_checksum() {
        let buf = packet();
        let repr = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        let mut out = [0u8; 20];
        repr.emit(&mut out);
        assert_eq!(out, HDR);
    }

    #[test]
    fn rejects_lies_about_lengths_and_bad_checksums() {
        let mut buf = packet();
        assert_eq!(
            Packet::new_checked(&buf[..100]).unwrap_err(),
            WireError::Truncated
        );
        buf[0] = 0x44; // IHL 4
        assert!(Packet::new_checked(&buf[..]).is_err());
        buf[0] = 0x65; // version 6
        assert!(Packet::new_checked(&buf[..]).is_err());
        let mut buf = packet();
        buf[2..4].copy_from_slice(&10u16.to_be_bytes()); // total < header
        assert!(Packet::new_checked(&buf[..]).is_err());
        let mut buf = packet();
        buf[8] = 0x3f; // TTL changed, checksum stale
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(Repr::parse(&p).is_err());
    }

    #[test]
    fn fragments_are_refused() {
        let mut buf = packet();
        buf[6] = 0x20; // MF
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum();
        assert!(p.is_fragment());
        assert!(Repr::parse(&p).is_err());
    }
}
