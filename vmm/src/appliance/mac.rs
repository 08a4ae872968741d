//! MAC addresses of guest NICs: parsing, printing and deterministic derivation from a sliver id.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A 48-bit Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six address bytes in wire order.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive); `None` for anything else.
pub fn parse_mac(text: &str) -> Option<MacAddr> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in bytes.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(MacAddr(bytes))
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_mac(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid MAC address {text:?}: expected six hex bytes like 02:00:00:00:00:01"
            ))
        })
    }
}

/// Derives the MAC of NIC `index` of sliver `sliver_id`: stable across restarts and nodes,
/// distinct per sliver and NIC, always a locally administered unicast address.
pub fn derive_mac(sliver_id: &str, index: usize) -> MacAddr {
    let mut hasher = Sha256::new();
    hasher.update(b"slicenet-nic-mac\0");
    hasher.update(sliver_id.as_bytes());
    hasher.update([0]);
    hasher.update((index as u64).to_le_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 6];
    bytes.copy_from_slice(&digest[..6]);
    // Locally administered (bit 1 set), unicast (bit 0 clear): never collides with a vendor's
    // burned-in address and is never treated as multicast by a switch.
    bytes[0] = (bytes[0] | 0x02) & !0x01;
    MacAddr(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_unicast_and_locally_administered() {
        let a = derive_mac("slice-a/sliver-1", 0);
        assert_eq!(a, derive_mac("slice-a/sliver-1", 0));
        assert_eq!(a.0[0] & 0x03, 0x02);
        assert_ne!(a, derive_mac("slice-a/sliver-1", 1));
        assert_ne!(a, derive_mac("slice-a/sliver-2", 0));
    }

    #[test]
    fn mac_text_round_trips_and_rejects_garbage() {
        let mac = parse_mac("02:AB:cd:00:10:ff").unwrap();
        assert_eq!(mac.to_string(), "02:ab:cd:00:10:ff");
        for bad in [
            "",
            "02:ab:cd:00:10",
            "02:ab:cd:00:10:ff:00",
            "2:ab:cd:00:10:ff",
            "zz:ab:cd:00:10:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
