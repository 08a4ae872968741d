//! TCP segmentation and coalescing for TAP ports with `IFF_VNET_HDR`.
//!
//! With offloads on, the kernel hands a TAP reader TCP "super-frames" of up
//! to 64 KB plus a `virtio_net_hdr` saying how to cut them (TSO), and accepts
//! the same from a writer (GRO). Cutting here and coalescing on the far side
//! turns ~45 kernel round trips per 64 KB into one on each end, which is
//! where a userspace tunnel spends its time. Frames on the wire (inside
//! VXLAN) are always ordinary MTU-sized frames with correct checksums, so
//! any VXLAN endpoint can receive them.

use std::sync::Arc;

use crate::node::Port;
use crate::wire::ethernet::{self, ethertype};
use crate::wire::ipv4::{self, protocol};
use crate::wire::{checksum, ipv6, tcp, vnet, WireError};

/// Why a super-frame could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The GSO type is not TCP over IPv4/IPv6.
    #[error("unsupported GSO type {0}")]
    UnsupportedType(u8),
    /// The headers do not parse or disagree with the vnet header.
    #[error("malformed super-frame: {0}")]
    Malformed(&'static str),
}

impl From<WireError> for SegmentError {
    fn from(_: WireError) -> Self {
        SegmentError::Malformed("headers do not parse")
    }
}

/// Where the headers of a TCP frame are.
#[derive(Debug, Clone, Copy)]
struct TcpLayout {
    l3: usize,
    l4: usize,
    payload: usize,
    v6: bool,
}

fn tcp_layout(frame: &[u8]) -> Result<TcpLayout, SegmentError> {
    let eth = ethernet::Frame::new_checked(frame)?;
    let l3 = eth.header_len();
    let (l4, v6) = match eth.payload_ethertype() {
        ethertype::IPV4 => {
            let ip = ipv4::Packet::new_checked(&frame[l3..])?;
            if ip.protocol() != protocol::TCP || ip.is_fragment() {
                return Err(SegmentError::Malformed(
                    "not an unfragmented IPv4 TCP packet",
                ));
            }
            (l3 + ip.header_len(), false)
        }
        ethertype::IPV6 => {
            let ip = ipv6::Packet::new_checked(&frame[l3..])?;
            if ip.next_header() != protocol::TCP {
                return Err(SegmentError::Malformed("IPv6 extension headers"));
            }
            (l3 + ipv6::HEADER_LEN, true)
        }
        _ => return Err(SegmentError::Malformed("not IP")),
    };
    let seg = tcp::Segment::new_checked(&frame[l4..])?;
    Ok(TcpLayout {
        l3,
        l4,
        payload: l4 + seg.header_len(),
        v6,
    })
}

/// Unfolded pseudo-header sum of the TCP segment in `frame` of `tcp_len` bytes.
fn pseudo_sum(frame: &[u8], lay: &TcpLayout, tcp_len: usize) -> u64 {
    if lay.v6 {
        let ip = ipv6::Packet::new_unchecked(&frame[lay.l3..]);
        checksum::pseudo_v6(
            &ip.src_addr(),
            &ip.dst_addr(),
            protocol::TCP,
            tcp_len as u32,
        )
    } else {
        let ip = ipv4::Packet::new_unchecked(&frame[lay.l3..]);
        checksum::pseudo_v4(ip.src_addr(), ip.dst_addr(), protocol::TCP, tcp_len as u32)
    }
}

/// Completes a partial checksum the kernel left for us (`F_NEEDS_CSUM`):
/// the field already holds the pseudo-header sum, so the checksum is the
/// complement of the sum from `start` to the end of the frame.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if at + 2 > frame.len() {
        return false;
    }
    let mut c = checksum::finish(checksum::sum(&frame[start..], 0));
    // UDP (field at offset 6) uses 0xffff for a computed zero.
    if c == 0 && offset == 6 {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Cuts a TSO super-frame into MTU-sized frames with correct headers and
/// checksums. Each segment is written to `out` after `headroom` bytes and
/// handed to `emit` as `&mut out[..headroom + segment_len]`. Returns the
/// number of segments.
pub fn segment(
    frame: &[u8],
    hdr: &vnet::Repr,
    headroom: usize,
    out: &mut Vec<u8>,
    mut emit: impl FnMut(&mut [u8]),
) -> Result<usize, SegmentError> {
    let gso_type = hdr.gso_type & !vnet::gso::ECN;
    if gso_type != vnet::gso::TCPV4 && gso_type != vnet::gso::TCPV6 {
        return Err(SegmentError::UnsupportedType(gso_type));
    }
    let lay = tcp_layout(frame)?;
    if lay.v6 != (gso_type == vnet::gso::TCPV6) {
        return Err(SegmentError::Malformed(
            "GSO type disagrees with the IP version",
        ));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(SegmentError::Malformed("gso_size is 0"));
    }
    let hlen = lay.payload;
    let payload = &frame[hlen..];
    let (base_seq, base_flags) = {
        let t = tcp::Segment::new_unchecked(&frame[lay.l4..]);
        (t.seq(), t.flags())
    };
    let base_id = if lay.v6 {
        0
    } else {
        ipv4::Packet::new_unchecked(&frame[lay.l3..]).ident()
    };
    let tcp_hlen = hlen - lay.l4;
    if out.len() < headroom + hlen + mss {
        out.resize(headroom + hlen + mss, 0);
    }
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let seg_len = hlen + chunk.len();
        let seg = &mut out[headroom..headroom + seg_len];
        seg[..hlen].copy_from_slice(&frame[..hlen]);
        seg[hlen..].copy_from_slice(chunk);
        if lay.v6 {
            ipv6::Packet::new_unchecked(&mut seg[lay.l3..])
                .set_payload_len((tcp_hlen + chunk.len()) as u16);
        } else {
            let mut ip = ipv4::Packet::new_unchecked(&mut seg[lay.l3..]);
            ip.set_total_len((seg_len - lay.l3) as u16);
            ip.set_ident(base_id.wrapping_add(i as u16));
            ip.fill_checksum();
        }
        let last = i + 1 == count;
        let mut flags = base_flags;
        if !last {
            flags &= !(tcp::flags::FIN | tcp::flags::PSH);
        }
        if i > 0 {
            flags &= !tcp::flags::CWR;
        }
        let pseudo = pseudo_sum(seg, &lay, seg_len - lay.l4);
        let mut t = tcp::Segment::new_unchecked(&mut seg[lay.l4..]);
        t.set_seq(base_seq.wrapping_add((i * mss) as u32));
        t.set_flags(flags);
        t.set_checksum(0);
        let c = checksum::finish(checksum::sum(&seg[lay.l4..], pseudo));
        tcp::Segment::new_unchecked(&mut seg[lay.l4..]).set_checksum(c);
        emit(&mut out[..headroom + seg_len]);
    }
    Ok(count)
}

/// Largest coalesced frame: the kernel's GSO limit.
const MAX_COALESCED: usize = 65_000;
/// Most flows kept open per batch.
const MAX_FLOWS: usize = 8;

/// A TCP flow being coalesced for one TAP port.
struct Pending {
    port: Arc<Port>,
    /// `virtio_net_hdr` followed by the growing frame.
    buf: Vec<u8>,
    lay: TcpLayout,
    seg_size: usize,
    segs: usize,
    next_seq: u32,
    closed: bool,
}

/// Receives what the coalescer writes: the port, the pieces of one TAP
/// write (virtio_net_hdr first), and how many wire frames it carries.
pub(crate) type Sink<'a> = dyn FnMut(&Arc<Port>, &[&[u8]], u64) + 'a;

/// Collects frames bound for offload-capable TAP ports during one batch,
/// merging consecutive segments of a TCP flow into one GSO frame.
#[derive(Default)]
pub(crate) struct Coalescer {
    pending: Vec<Pending>,
    spare: Vec<Vec<u8>>,
}

/// Fields that must be equal for two segments to be merged: everything in
/// the headers except lengths, IP id, checksums, sequence number and PSH.
fn same_headers(a: &[u8], b: &[u8], lay: &TcpLayout) -> bool {
    if a.len() < lay.payload || b.len() < lay.payload {
        return false;
    }
    let (l3, l4, end) = (lay.l3, lay.l4, lay.payload);
    let ip_same = if lay.v6 {
        a[l3..l3 + 4] == b[l3..l3 + 4] && a[l3 + 6..l4] == b[l3 + 6..l4]
    } else {
        a[l3..l3 + 2] == b[l3..l3 + 2]
            && a[l3 + 6..l3 + 10] == b[l3 + 6..l3 + 10]
            && a[l3 + 12..l4] == b[l3 + 12..l4]
    };
    ip_same
        && a[..l3] == b[..l3]
        && a[l4..l4 + 4] == b[l4..l4 + 4]
        && a[l4 + 8..l4 + 13] == b[l4 + 8..l4 + 13]
        && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
        && a[l4 + 18..end] == b[l4 + 18..end]
}

/// True when `a` (laid out as `la`) and `b` (as `lb`) are segments of the
/// same TCP connection direction: same MACs, IP addresses and ports.
fn same_flow(a: &[u8], la: &TcpLayout, b: &[u8], lb: &TcpLayout) -> bool {
    if la.v6 != lb.v6 || la.l3 != lb.l3 || a.len() < la.payload || b.len() < lb.payload {
        return false;
    }
    let addrs = if la.v6 { 8..40 } else { 12..20 };
    a[..la.l3] == b[..lb.l3]
        && a[la.l3 + addrs.start..la.l3 + addrs.end] == b[lb.l3 + addrs.start..lb.l3 + addrs.end]
        && a[la.l4..la.l4 + 4] == b[lb.l4..lb.l4 + 4]
}

/// True when `frame` is a plain data segment we may merge (ACK, maybe PSH).
fn mergeable(frame: &[u8]) -> Option<TcpLayout> {
    let lay = tcp_layout(frame).ok()?;
    if lay.payload >= frame.len() {
        return None;
    }
    if lay.v6 {
        let ip = ipv6::Packet::new_unchecked(&frame[lay.l3..]);
        if lay.l3 + ipv6::HEADER_LEN + usize::from(ip.payload_len()) != frame.len() {
            return None;
        }
    } else {
        let ip = ipv4::Packet::new_unchecked(&frame[lay.l3..]);
        // Options would need per-segment care; padding means a short frame.
        if ip.header_len() != ipv4::MIN_HEADER_LEN
            || lay.l3 + usize::from(ip.total_len()) != frame.len()
        {
            return None;
        }
    }
    let flags = tcp::Segment::new_unchecked(&frame[lay.l4..]).flags();
    let allowed = tcp::flags::ACK | tcp::flags::PSH;
    (flags & !allowed == 0 && flags & tcp::flags::ACK != 0).then_some(lay)
}

const ZERO_VNET: [u8; vnet::HEADER_LEN] = [0; vnet::HEADER_LEN];

impl Coalescer {
    /// Queues `frame` for `port`, merging it into an open flow when
    /// possible. Frames that cannot be merged go to `sink` at once — after
    /// whatever of their own flow is still open, so a flow is never
    /// reordered (reordering makes TCP retransmit and slow down).
    pub(crate) fn push(&mut self, port: &Arc<Port>, frame: &[u8], sink: &mut Sink<'_>) {
        let layout = tcp_layout(frame).ok();
        let open = layout.and_then(|lay| {
            self.pending.iter().position(|p| {
                p.port.id == port.id && same_flow(&p.buf[vnet::HEADER_LEN..], &p.lay, frame, &lay)
            })
        });
        let merge = mergeable(frame);
        if let (Some(i), Some(lay)) = (open, merge) {
            let seq = tcp::Segment::new_unchecked(&frame[lay.l4..]).seq();
            let flags = tcp::Segment::new_unchecked(&frame[lay.l4..]).flags();
            let payload_len = frame.len() - lay.payload;
            let p = &mut self.pending[i];
            let fits = p.buf.len() - vnet::HEADER_LEN + payload_len <= MAX_COALESCED;
            if !p.closed
                && seq == p.next_seq
                && payload_len <= p.seg_size
                && fits
                && p.lay.l4 == lay.l4
                && p.lay.payload == lay.payload
                && same_headers(&p.buf[vnet::HEADER_LEN..], frame, &lay)
            {
                p.buf.extend_from_slice(&frame[lay.payload..]);
                p.segs += 1;
                p.next_seq = seq.wrapping_add(payload_len as u32);
                if payload_len < p.seg_size || flags & tcp::flags::PSH != 0 {
                    // A short or pushed segment ends the train, as in Linux GRO.
                    p.closed = true;
                    let at = vnet::HEADER_LEN + lay.l4;
                    let mut t = tcp::Segment::new_unchecked(&mut p.buf[at..]);
                    let f = t.flags();
                    t.set_flags(f | (flags & tcp::flags::PSH));
                }
                return;
            }
        }
        if let Some(i) = open {
            let p = self.pending.remove(i);
            self.finish(p, sink);
        }
        let Some(lay) = merge else {
            sink(port, &[&ZERO_VNET, frame], 1);
            return;
        };
        if self.pending.len() >= MAX_FLOWS {
            let p = self.pending.remove(0);
            self.finish(p, sink);
        }
        let seq = tcp::Segment::new_unchecked(&frame[lay.l4..]).seq();
        let flags = tcp::Segment::new_unchecked(&frame[lay.l4..]).flags();
        let payload_len = frame.len() - lay.payload;
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&ZERO_VNET);
        buf.extend_from_slice(frame);
        self.pending.push(Pending {
            port: port.clone(),
            buf,
            lay,
            seg_size: payload_len,
            segs: 1,
            next_seq: seq.wrapping_add(payload_len as u32),
            closed: flags & tcp::flags::PSH != 0,
        });
    }

    /// Writes every open flow out, oldest first.
    pub(crate) fn flush(&mut self, sink: &mut Sink<'_>) {
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            self.finish(p, sink);
        }
    }

    fn finish(&mut self, mut p: Pending, sink: &mut Sink<'_>) {
        if p.segs > 1 {
            let frame = &mut p.buf[vnet::HEADER_LEN..];
            let lay = p.lay;
            let tcp_len = frame.len() - lay.l4;
            if lay.v6 {
                ipv6::Packet::new_unchecked(&mut frame[lay.l3..]).set_payload_len(tcp_len as u16);
            } else {
                let total = (frame.len() - lay.l3) as u16;
                let mut ip = ipv4::Packet::new_unchecked(&mut frame[lay.l3..]);
                ip.set_total_len(total);
                ip.fill_checksum();
            }
            // A GSO frame carries only the pseudo-header sum; the kernel
            // completes it if the frame leaves the host and otherwise trusts
            // the payload, which WireGuard has authenticated.
            let pseudo = checksum::fold(pseudo_sum(frame, &lay, tcp_len));
            tcp::Segment::new_unchecked(&mut frame[lay.l4..]).set_checksum(pseudo);
            vnet::Repr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: if lay.v6 {
                    vnet::gso::TCPV6
                } else {
                    vnet::gso::TCPV4
                },
                hdr_len: lay.payload as u16,
                gso_size: p.seg_size as u16,
                csum_start: lay.l4 as u16,
                csum_offset: tcp::CHECKSUM_OFFSET as u16,
            }
            .emit(&mut p.buf[..vnet::HEADER_LEN]);
        }
        sink(&p.port, &[&p.buf], p.segs as u64);
        self.spare.push(std::mem::take(&mut p.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TSO super-frame as a TAP reader gets it: Ethernet + IPv4 + TCP
    /// (with a 12-byte timestamp option) + `payload` bytes.
    fn super_frame(payload: usize, flags: u8) -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, // Ethernet
            0x45, 0x00, 0, 0, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0, 0, 198, 19, 1, 1, 198, 19, 1,
            2, // IPv4
            0x9c, 0x40, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x80, flags, 0x01, 0xf5, 0, 0, 0,
            0, // TCP, data offset 8
            0x01, 0x01, 0x08, 0x0a, 0, 0, 0, 1, 0, 0, 0, 2, // NOP NOP TS
        ];
        let total = (f.len() - 14 + payload) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend((0..payload).map(|i| (i % 251) as u8));
        f
    }

    /// The same over IPv6 (fd00::1 -> fd00::2), no TCP options.
    fn super_frame_v6(payload: usize) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let plen = (20 + payload) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&[
            0x9c, 0x40, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, 0x18, 0x01, 0xf5, 0, 0, 0,
            0,
        ]);
        f.extend((0..payload).map(|i| (i % 241) as u8));
        f
    }

    #[test]
    fn ipv6_super_frames_round_trip_through_segmentation_and_coalescing() {
        let frame = super_frame_v6(5000);
        let hdr = vnet::Repr {
            gso_type: vnet::gso::TCPV6,
            gso_size: 1200,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut segs = Vec::new();
        let n = segment(&frame, &hdr, 0, &mut out, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 5);
        for s in &segs {
            let ip = ipv6::Packet::new_checked(&s[14..]).unwrap();
            assert_eq!(usize::from(ip.payload_len()), s.len() - 54);
            assert!(verify_tcp_checksum(s));
        }
        let port = memory_port(1);
        let mut c = Coalescer::default();
        let mut written = Vec::new();
        let mut sink = |_: &Arc<Port>, parts: &[&[u8]], n: u64| written.push((parts.concat(), n));
        for s in &segs {
            c.push(&port, s, &mut sink);
        }
        c.flush(&mut sink);
        assert_eq!(written.len(), 1);
        let h = vnet::Repr::parse(&written[0].0).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, written[0].1),
            (vnet::gso::TCPV6, 1200, 5)
        );
        assert_eq!(written[0].0[vnet::HEADER_LEN + 74..], frame[74..]);
    }

    fn verify_tcp_checksum(frame: &[u8]) -> bool {
        let lay = tcp_layout(frame).unwrap();
        let tcp_len = frame.len() - lay.l4;
        checksum::fold(checksum::sum(
            &frame[lay.l4..],
            pseudo_sum(frame, &lay, tcp_len),
        )) == 0xffff
    }

    #[test]
    fn segments_a_super_frame_into_valid_frames() {
        let frame = super_frame(4000, tcp::flags::ACK | tcp::flags::PSH);
        let hdr = vnet::Repr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::gso::TCPV4,
            hdr_len: 66,
            gso_size: 1388,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = segment(&frame, &hdr, 36, &mut out, |s| segs.push(s[36..].to_vec())).unwrap();
        assert_eq!(n, 3);
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let ip = ipv4::Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), s.len() - 14);
            assert_eq!(ip.ident(), 0x1234 + i as u16);
            let t = tcp::Segment::new_checked(&s[34..]).unwrap();
            assert_eq!(t.seq(), 0x1000 + (i as u32) * 1388);
            let psh = t.flags() & tcp::flags::PSH != 0;
            assert_eq!(psh, i == 2, "PSH only on the last segment");
            assert!(verify_tcp_checksum(s), "segment {i} checksum");
            payload.extend_from_slice(t.payload());
        }
        assert_eq!(payload, frame[66..]);
    }

    #[test]
    fn refuses_gso_it_cannot_do() {
        let frame = super_frame(100, tcp::flags::ACK);
        let mut hdr = vnet::Repr {
            gso_type: vnet::gso::UDP_L4,
            gso_size: 50,
            ..Default::default()
        };
        let mut out = Vec::new();
        assert!(segment(&frame, &hdr, 0, &mut out, |_| {}).is_err());
        hdr.gso_type = vnet::gso::TCPV6;
        assert!(segment(&frame, &hdr, 0, &mut out, |_| {}).is_err());
        hdr.gso_type = vnet::gso::TCPV4;
        hdr.gso_size = 0;
        assert!(segment(&frame, &hdr, 0, &mut out, |_| {}).is_err());
        assert!(segment(&frame[..40], &hdr, 0, &mut out, |_| {}).is_err());
    }

    #[test]
    fn completes_a_partial_checksum() {
        let mut frame = super_frame(333, tcp::flags::ACK);
        let lay = tcp_layout(&frame).unwrap();
        let tcp_len = frame.len() - lay.l4;
        let partial = checksum::fold(pseudo_sum(&frame, &lay, tcp_len));
        frame[50..52].copy_from_slice(&partial.to_be_bytes());
        assert!(complete_checksum(&mut frame, 34, 16));
        assert!(verify_tcp_checksum(&frame));
        assert!(!complete_checksum(&mut frame[..40], 34, 16));
    }

    #[test]
    fn only_plain_data_segments_are_mergeable() {
        assert!(mergeable(&super_frame(100, tcp::flags::ACK)).is_some());
        assert!(mergeable(&super_frame(100, tcp::flags::ACK | tcp::flags::PSH)).is_some());
        assert!(mergeable(&super_frame(100, tcp::flags::ACK | tcp::flags::FIN)).is_none());
        assert!(mergeable(&super_frame(100, tcp::flags::SYN)).is_none());
        assert!(mergeable(&super_frame(0, tcp::flags::ACK)).is_none());
        let mut padded = super_frame(10, tcp::flags::ACK);
        padded.extend_from_slice(&[0; 4]);
        assert!(mergeable(&padded).is_none());
    }

    #[test]
    fn header_comparison_ignores_only_per_segment_fields() {
        let a = super_frame(100, tcp::flags::ACK);
        let lay = tcp_layout(&a).unwrap();
        let mut b = a.clone();
        b[18..20].copy_from_slice(&[9, 9]); // IP id
        b[38..42].copy_from_slice(&[0, 0, 0x20, 0]); // seq
        b[50..52].copy_from_slice(&[7, 7]); // TCP checksum
        assert!(same_headers(&a, &b, &lay));
        let mut c = a.clone();
        c[36] ^= 1; // destination port
        assert!(!same_headers(&a, &c, &lay));
        let mut d = a.clone();
        d[60] ^= 1; // timestamp option
        assert!(!same_headers(&a, &d, &lay));
    }

    fn memory_port(id: u64) -> Arc<Port> {
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        Arc::new(crate::node::Port::new_for_test(
            id,
            crate::node::PortIo::Memory { to_user: tx },
        ))
    }

    /// Cuts a super-frame and coalesces the pieces again.
    fn round_trip(payload: usize, mss: u16, flags: u8) -> Vec<(Vec<u8>, u64)> {
        let frame = super_frame(payload, flags);
        let hdr = vnet::Repr {
            gso_type: vnet::gso::TCPV4,
            gso_size: mss,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut segs = Vec::new();
        segment(&frame, &hdr, 0, &mut out, |s| segs.push(s.to_vec())).unwrap();
        let port = memory_port(1);
        let mut c = Coalescer::default();
        let mut written = Vec::new();
        let mut sink = |_: &Arc<Port>, parts: &[&[u8]], n: u64| written.push((parts.concat(), n));
        for s in &segs {
            c.push(&port, s, &mut sink);
        }
        c.flush(&mut sink);
        written
    }

    #[test]
    fn coalescing_undoes_segmentation() {
        let written = round_trip(10_000, 1000, tcp::flags::ACK | tcp::flags::PSH);
        assert_eq!(written.len(), 1, "one GSO write for the whole train");
        let (buf, n) = &written[0];
        assert_eq!(*n, 10);
        let h = vnet::Repr::parse(buf).unwrap();
        assert_eq!(h.gso_type, vnet::gso::TCPV4);
        assert_eq!(h.gso_size, 1000);
        assert_eq!(h.flags, vnet::F_NEEDS_CSUM);
        assert_eq!((h.csum_start, h.csum_offset, h.hdr_len), (34, 16, 66));
        let frame = &buf[vnet::HEADER_LEN..];
        let original = super_frame(10_000, tcp::flags::ACK | tcp::flags::PSH);
        assert_eq!(frame.len(), original.len());
        assert_eq!(frame[66..], original[66..], "payload in order");
        let ip = ipv4::Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        let t = tcp::Segment::new_checked(&frame[34..]).unwrap();
        assert_eq!(t.seq(), 0x1000);
        assert_ne!(
            t.flags() & tcp::flags::PSH,
            0,
            "PSH of the last segment kept"
        );
        // Completing the pseudo sum gives the checksum of the whole segment.
        let mut full = frame.to_vec();
        assert!(complete_checksum(&mut full, 34, 16));
        assert!(verify_tcp_checksum(&full));
    }

    #[test]
    fn a_single_segment_is_written_unchanged() {
        let written = round_trip(500, 1000, tcp::flags::ACK);
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].1, 1);
        assert_eq!(written[0].0[..10], ZERO_VNET);
        let frame = &written[0].0[10..];
        let original = super_frame(500, tcp::flags::ACK);
        assert_eq!(frame.len(), original.len());
        assert_eq!(frame[66..], original[66..]);
        assert!(
            verify_tcp_checksum(frame),
            "a complete checksum, no offload needed"
        );
    }

    #[test]
    fn a_flow_is_never_reordered_when_its_headers_change() {
        // Two TSO trains of one connection with different timestamps:
        // they cannot merge, and the first must be written first.
        let first = super_frame(2000, tcp::flags::ACK);
        let mut second = super_frame(2000, tcp::flags::ACK);
        second[38..42].copy_from_slice(&(0x1000u32 + 2000).to_be_bytes());
        second[61] = 9; // TSval
        let hdr = vnet::Repr {
            gso_type: vnet::gso::TCPV4,
            gso_size: 1000,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut segs = Vec::new();
        segment(&first, &hdr, 0, &mut out, |s| segs.push(s.to_vec())).unwrap();
        segment(&second, &hdr, 0, &mut out, |s| segs.push(s.to_vec())).unwrap();
        // And a FIN of the same flow after them.
        let mut fin = super_frame(0, tcp::flags::ACK | tcp::flags::FIN);
        fin[38..42].copy_from_slice(&(0x1000u32 + 4000).to_be_bytes());
        segs.push(fin);
        let port = memory_port(1);
        let mut c = Coalescer::default();
        let mut seqs = Vec::new();
        let mut sink = |_: &Arc<Port>, parts: &[&[u8]], _: u64| {
            let f = parts.concat();
            seqs.push(u32::from_be_bytes([f[48], f[49], f[50], f[51]]));
        };
        for s in &segs {
            c.push(&port, s, &mut sink);
        }
        c.flush(&mut sink);
        assert_eq!(seqs, vec![0x1000, 0x1000 + 2000, 0x1000 + 4000]);
    }

    #[test]
    fn gaps_and_other_flows_are_not_merged() {
        let frame = super_frame(3000, tcp::flags::ACK);
        let hdr = vnet::Repr {
            gso_type: vnet::gso::TCPV4,
            gso_size: 1000,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut segs = Vec::new();
        segment(&frame, &hdr, 0, &mut out, |s| segs.push(s.to_vec())).unwrap();
        let (a, b) = (memory_port(1), memory_port(2));
        let mut c = Coalescer::default();
        let mut written = Vec::new();
        let mut sink =
            |p: &Arc<Port>, parts: &[&[u8]], n: u64| written.push((p.id, parts.concat().len(), n));
        c.push(&a, &segs[0], &mut sink);
        c.push(&a, &segs[2], &mut sink); // gap: segment 1 missing
        c.push(&b, &segs[1], &mut sink); // other port
        c.flush(&mut sink);
        assert_eq!(written.len(), 3);
        assert!(written.iter().all(|w| w.2 == 1));
    }
}
