//! The inner datagram every frame travels in: VXLAN (RFC 7348) inside a real
//! IPv4/UDP datagram from this node's tunnel address to the peer's, which is
//! what WireGuard then encrypts. A stock Linux host decrypts it with stock
//! WireGuard and hands it to its kernel VXLAN device unchanged.

use std::net::Ipv4Addr;

use crate::wire::{ipv4, udp, vxlan, WireError};

/// Bytes of IPv4 + UDP + VXLAN header in front of every frame.
pub const INNER_HEADER_LEN: usize = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;
/// WireGuard's per-message overhead: 16 bytes of header, 16 of tag.
pub const WIREGUARD_OVERHEAD: usize = 32;
/// UDP over IPv4 underlay header bytes.
pub const UNDERLAY_V4_OVERHEAD: usize = 28;
/// UDP over IPv6 underlay header bytes.
pub const UNDERLAY_V6_OVERHEAD: usize = 48;

/// Largest Ethernet frame (header included, no FCS) that fits an underlay
/// path of `underlay_mtu` bytes without fragmentation.
pub fn max_frame_len(underlay_mtu: u16, ipv6_underlay: bool) -> usize {
    let outer = if ipv6_underlay {
        UNDERLAY_V6_OVERHEAD
    } else {
        UNDERLAY_V4_OVERHEAD
    };
    usize::from(underlay_mtu).saturating_sub(outer + WIREGUARD_OVERHEAD + INNER_HEADER_LEN)
}

/// The addressing of one inner datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerRepr {
    /// This node's tunnel address.
    pub src: Ipv4Addr,
    /// The peer's tunnel address.
    pub dst: Ipv4Addr,
    /// UDP source port (flow entropy, as RFC 7348 recommends).
    pub src_port: u16,
    /// VXLAN network identifier: the enclave.
    pub vni: u32,
}

impl InnerRepr {
    /// Writes the IPv4, UDP and VXLAN headers for a frame of `frame_len`
    /// bytes into `hdr` (exactly [`INNER_HEADER_LEN`] bytes).
    pub fn emit(&self, hdr: &mut [u8], frame_len: usize) {
        let udp_payload = vxlan::HEADER_LEN + frame_len;
        ipv4::Repr {
            src: self.src,
            dst: self.dst,
            protocol: ipv4::protocol::UDP,
            payload_len: udp::HEADER_LEN + udp_payload,
            ttl: 64,
        }
        .emit(&mut hdr[..ipv4::MIN_HEADER_LEN]);
        udp::Repr {
            src_port: self.src_port,
            dst_port: vxlan::UDP_PORT,
            payload_len: udp_payload,
        }
        .emit(&mut hdr[ipv4::MIN_HEADER_LEN..ipv4::MIN_HEADER_LEN + udp::HEADER_LEN]);
        vxlan::Repr { vni: self.vni }
            .emit(&mut hdr[ipv4::MIN_HEADER_LEN + udp::HEADER_LEN..INNER_HEADER_LEN]);
    }
}

/// Why a decrypted packet is not an acceptable inner datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InnerError {
    /// Not IPv4/UDP to the VXLAN port, or the VXLAN I flag is missing.
    #[error("not a VXLAN-in-IPv4/UDP datagram")]
    NotVxlan,
    /// A header is malformed (lengths, checksum, fragment).
    #[error("malformed inner header: {0}")]
    BadHeader(WireError),
    /// The Ethernet frame is shorter than its header.
    #[error("encapsulated frame shorter than an Ethernet header")]
    TruncatedFrame,
}

/// A parsed inner datagram: addressing plus where the frame lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inner {
    /// Inner IPv4 source (must be the sending peer's tunnel address).
    pub src: Ipv4Addr,
    /// Inner IPv4 destination (must be this node's tunnel address).
    pub dst: Ipv4Addr,
    /// The enclave.
    pub vni: u32,
    /// Byte range of the Ethernet frame inside the packet.
    pub frame: std::ops::Range<usize>,
}

/// Parses a decrypted packet as IPv4 / UDP to port 4789 / VXLAN / Ethernet.
pub fn parse_inner(packet: &[u8]) -> Result<Inner, InnerError> {
    if packet.first().map(|b| b >> 4) != Some(4) {
        return Err(InnerError::NotVxlan);
    }
    let ip = ipv4::Packet::new_checked(packet).map_err(InnerError::BadHeader)?;
    let ip_repr = ipv4::Repr::parse(&ip).map_err(InnerError::BadHeader)?;
    if ip_repr.protocol != ipv4::protocol::UDP {
        return Err(InnerError::NotVxlan);
    }
    let udp_start = ip.header_len();
    let dgram = udp::Datagram::new_checked(ip.payload()).map_err(InnerError::BadHeader)?;
    if dgram.dst_port() != vxlan::UDP_PORT {
        return Err(InnerError::NotVxlan);
    }
    let vx = vxlan::Packet::new_checked(dgram.payload()).map_err(InnerError::BadHeader)?;
    let vx_repr = vxlan::Repr::parse(&vx).map_err(|_| InnerError::NotVxlan)?;
    let frame_start = udp_start + udp::HEADER_LEN + vxlan::HEADER_LEN;
    let frame_end = udp_start + usize::from(dgram.len());
    if frame_end - frame_start < crate::wire::ethernet::HEADER_LEN {
        return Err(InnerError::TruncatedFrame);
    }
    Ok(Inner {
        src: ip_repr.src,
        dst: ip_repr.dst,
        vni: vx_repr.vni,
        frame: frame_start..frame_end,
    })
}

/// A cheap flow hash of a frame's addresses, used as the inner UDP source
/// port (49152..65535) so that receivers can spread flows.
pub fn flow_port(frame: &[u8]) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in &frame[..12.min(frame.len())] {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    0xc000 | (h as u16 & 0x3fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inner datagram as Linux's VXLAN driver sends it (VNI 42,
    /// 198.19.255.2 -> 198.19.255.1, checksum 0) around a 42-byte ARP request.
    fn linux_vxlan_datagram() -> Vec<u8> {
        let mut p = vec![
            0x45, 0x00, 0x00, 0x4e, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 198, 19, 255,
            2, 198, 19, 255, 1, // IPv4 (checksum filled below)
            0xd4, 0x31, 0x12, 0xb5, 0x00, 0x3a, 0x00, 0x00, // UDP 54321 -> 4789, len 58
            0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, // VXLAN VNI 42
        ];
        p.extend_from_slice(&[0xff; 6]);
        p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
        p.resize(36 + 42, 0x11);
        ipv4::Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    #[test]
    fn parses_what_linux_vxlan_sends() {
        let p = linux_vxlan_datagram();
        let inner = parse_inner(&p).unwrap();
        assert_eq!(inner.vni, 42);
        assert_eq!(inner.src, Ipv4Addr::new(198, 19, 255, 2));
        assert_eq!(inner.dst, Ipv4Addr::new(198, 19, 255, 1));
        assert_eq!(inner.frame, 36..78);
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let frame = [0x5au8; 60];
        let repr = InnerRepr {
            src: Ipv4Addr::new(198, 19, 255, 1),
            dst: Ipv4Addr::new(198, 19, 255, 2),
            src_port: flow_port(&frame),
            vni: 0xabcdef,
        };
        let mut p = vec![0u8; INNER_HEADER_LEN];
        repr.emit(&mut p, frame.len());
        p.extend_from_slice(&frame);
        let inner = parse_inner(&p).unwrap();
        assert_eq!(
            (inner.src, inner.dst, inner.vni),
            (repr.src, repr.dst, repr.vni)
        );
        assert_eq!(&p[inner.frame], &frame[..]);
    }

    #[test]
    fn refuses_everything_that_is_not_vxlan() {
        let good = linux_vxlan_datagram();
        let mut wrong_port = good.clone();
        wrong_port[22..24].copy_from_slice(&4790u16.to_be_bytes());
        assert_eq!(parse_inner(&wrong_port), Err(InnerError::NotVxlan));
        let mut no_i_flag = good.clone();
        no_i_flag[28] = 0;
        assert_eq!(parse_inner(&no_i_flag), Err(InnerError::NotVxlan));
        let mut tcp = good.clone();
        tcp[9] = 6;
        ipv4::Packet::new_unchecked(&mut tcp[..]).fill_checksum();
        assert_eq!(parse_inner(&tcp), Err(InnerError::NotVxlan));
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 1;
        assert!(matches!(
            parse_inner(&bad_sum),
            Err(InnerError::BadHeader(_))
        ));
        assert!(matches!(
            parse_inner(&good[..50]),
            Err(InnerError::BadHeader(_))
        ));
        assert_eq!(parse_inner(&[0x60; 60]), Err(InnerError::NotVxlan));
        assert_eq!(parse_inner(&[]), Err(InnerError::NotVxlan));
    }

    #[test]
    fn a_frame_shorter_than_its_header_is_truncated() {
        let repr = InnerRepr {
            src: Ipv4Addr::new(198, 19, 255, 1),
            dst: Ipv4Addr::new(198, 19, 255, 2),
            src_port: 50000,
            vni: 1,
        };
        let mut p = vec![0u8; INNER_HEADER_LEN];
        repr.emit(&mut p, 10);
        p.extend_from_slice(&[0u8; 10]);
        assert_eq!(parse_inner(&p), Err(InnerError::TruncatedFrame));
    }

    #[test]
    fn a_1500_byte_underlay_carries_1404_byte_frames() {
        assert_eq!(max_frame_len(1500, false), 1404);
        assert_eq!(max_frame_len(1500, true), 1384);
    }
}
