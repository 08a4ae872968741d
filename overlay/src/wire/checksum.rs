//! The Internet checksum (RFC 1071) and the pseudo-header sums TCP and UDP use.
//!
//! Sums are kept unfolded in a `u64` so that pieces (pseudo header, header,
//! payload) can be added cheaply before one final fold.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds the big-endian 16-bit words of `data` to `acc`. `data` must start at
/// an even offset of the summed region (an odd tail byte is padded with 0).
#[inline]
pub fn sum(data: &[u8], acc: u64) -> u64 {
    let mut acc = acc;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Adding 32-bit halves is valid for a one's-complement 16-bit sum,
        // because 2^16 is congruent to 1 modulo 2^16 - 1.
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Folds an unfolded sum into 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store in a header: the complement of the folded sum.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Unfolded sum of the IPv4 pseudo header of a TCP/UDP segment.
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u32) -> u64 {
    let s = u32::from(src);
    let d = u32::from(dst);
    u64::from(s >> 16)
        + u64::from(s & 0xffff)
        + u64::from(d >> 16)
        + u64::from(d & 0xffff)
        + u64::from(protocol)
        + u64::from(len >> 16)
        + u64::from(len & 0xffff)
}

/// Unfolded sum of the IPv6 pseudo header of a TCP/UDP segment.
#[inline]
pub fn pseudo_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u64 {
    let acc = sum(&src.octets(), 0);
    let acc = sum(&dst.octets(), acc);
    acc + u64::from(next_header) + u64::from(len >> 16) + u64::from(len & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: 16-bit words one at a time.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let w = if pair.len() == 2 {
                u16::from_be_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], 0])
            };
            acc += u32::from(w);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn matches_the_rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
    }

    #[test]
    fn agrees_with_a_naive_sum_for_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 13) as u8 ^ 0xa5).collect();
        for len in 0..data.len() {
            assert_eq!(
                finish(sum(&data[..len], 0)),
                reference(&data[..len]),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_valid_ipv4_header_sums_to_zero() {
        // A real IPv4 header (ICMP echo 192.168.0.1 -> 192.168.0.199).
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(sum(&hdr, 0)), 0);
    }
}
