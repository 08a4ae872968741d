//! Ethernet II frames (with up to two 802.1Q/802.1ad tags) and MAC addresses.

use std::fmt;
use std::str::FromStr;

use super::{be16, WireError};

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length of one 802.1Q (or 802.1ad) tag.
pub const VLAN_TAG_LEN: usize = 4;

/// EtherType values the data plane looks at.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
}

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Copies an address out of the first six bytes of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&bytes[..6]);
        MacAddr(a)
    }

    /// True for group addresses (multicast and broadcast): the I/G bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A random locally administered unicast address (02:xx:xx:xx:xx:xx style).
    pub fn random_local() -> MacAddr {
        let mut a: [u8; 6] = rand::random();
        a[0] = (a[0] & 0xfe) | 0x02;
        MacAddr(a)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            a[0], a[1], a[2], a[3], a[4], a[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a MAC address; write six hex bytes separated by colons, like 02:00:00:00:00:01"
)]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A read/write view of an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it; accessors may panic on short buffers.
    pub fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after checking it holds at least a full header
    /// (including any VLAN tags the header announces).
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks the buffer is long enough for the header and its tags.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf.len() < self.header_len_unchecked() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    fn header_len_unchecked(&self) -> usize {
        let buf = self.buffer.as_ref();
        let mut len = HEADER_LEN;
        // Walk at most two tags (802.1ad outer + 802.1Q inner).
        for _ in 0..2 {
            if buf.len() < len {
                break;
            }
            let t = be16(buf, len - 2);
            if t == ethertype::VLAN || t == ethertype::QINQ {
                len += VLAN_TAG_LEN;
            } else {
                break;
            }
        }
        len
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination address.
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::DST])
    }

    /// Source address.
    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::SRC])
    }

    /// The EtherType right after the addresses (0x8100 for a tagged frame).
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Number of VLAN tags (0, 1 or 2).
    pub fn vlan_tags(&self) -> usize {
        (self.header_len() - HEADER_LEN) / VLAN_TAG_LEN
    }

    /// Header length including VLAN tags: where the payload starts.
    pub fn header_len(&self) -> usize {
        self.header_len_unchecked()
    }

    /// The EtherType of the payload, after any VLAN tags.
    pub fn payload_ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), self.header_len() - 2)
    }

    /// The payload after the header and tags.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.0);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType right after the addresses.
    pub fn set_ethertype(&mut self, value: u16) {
        self.buffer.as_mut()[field::ETHERTYPE..field::ETHERTYPE + 2]
            .copy_from_slice(&value.to_be_bytes());
    }
}

/// The header fields of an untagged frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Destination address.
    pub dst: MacAddr,
    /// Source address.
    pub src: MacAddr,
    /// EtherType.
    pub ethertype: u16,
}

impl Repr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Repr {
        Repr {
            dst: frame.dst_addr(),
            src: frame.src_addr(),
            ethertype: frame.ethertype(),
        }
    }

    /// Writes the 14-byte header to the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let mut f = Frame::new_unchecked(buf);
        f.set_dst_addr(self.dst);
        f.set_src_addr(self.src);
        f.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ARP request from 52:54:00:12:34:56 for 10.0.2.2 (broadcast).
    const ARP: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0x00,
        0x02, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x02, 0x02,
    ];

    #[test]
    fn reads_a_real_arp_request() {
        let f = Frame::new_checked(&ARP[..]).unwrap();
        assert!(f.dst_addr().is_broadcast());
        assert_eq!(f.src_addr().to_string(), "52:54:00:12:34:56");
        assert_eq!(f.ethertype(), ethertype::ARP);
        assert_eq!(f.vlan_tags(), 0);
        assert_eq!(f.payload().len(), 28);
    }

    #[test]
    fn sees_through_a_vlan_tag() {
        let mut tagged = ARP[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        tagged.extend_from_slice(&ARP[12..]);
        let f = Frame::new_checked(&tagged[..]).unwrap();
        assert_eq!(f.ethertype(), ethertype::VLAN);
        assert_eq!(f.vlan_tags(), 1);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.payload_ethertype(), ethertype::ARP);
    }

    #[test]
    fn rejects_short_frames_and_short_tags() {
        assert_eq!(
            Frame::new_checked(&ARP[..13]).unwrap_err(),
            WireError::Truncated
        );
        let mut tagged = ARP[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00]);
        assert!(Frame::new_checked(&tagged[..]).is_err());
    }

    #[test]
    fn repr_round_trips() {
        let f = Frame::new_checked(&ARP[..]).unwrap();
        let repr = Repr::parse(&f);
        let mut out = [0u8; 14];
        repr.emit(&mut out);
        assert_eq!(out, ARP[..14]);
    }

    #[test]
    fn mac_addresses_parse_and_print() {
        let m: MacAddr = "02:00:5e:10:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:5e:10:00:01");
        assert!(!m.is_multicast());
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
        assert!("02:00:5e:10:00".parse::<MacAddr>().is_err());
        assert!("02:00:5e:10:00:01:02".parse::<MacAddr>().is_err());
        assert!("zz:00:5e:10:00:01".parse::<MacAddr>().is_err());
        let r = MacAddr::random_local();
        assert!(!r.is_multicast() && r.0[0] & 0x02 != 0);
    }
}
