//! Entry points for the cargo-fuzz targets in `overlay/fuzz/`, also run
//! from unit tests over random and crafted inputs so that CI covers them.
//! Not part of the supported API.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use crate::encap::{InnerRepr, INNER_HEADER_LEN};
use crate::forward::HEADROOM;
use crate::keys::{PrivateKey, PublicKey};
use crate::node::{Enclave, Node, Port, PortIo, Settings};
use crate::overlay::{attach_peer, new_peer, register_port, resolve_members, PeerConfig};
use crate::receive::Receiver;
use crate::wire::{ethernet, ipv4, ipv6, tcp, udp, vnet, vxlan};

/// Runs every wire parser (views, accessors, reprs) over `data`.
pub fn wire_parsers(data: &[u8]) {
    if let Ok(f) = ethernet::Frame::new_checked(data) {
        let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.vlan_tags());
        let _ = (f.payload_ethertype(), f.payload().len());
        let repr = ethernet::Repr::parse(&f);
        let mut out = [0u8; 14];
        repr.emit(&mut out);
        assert_eq!(out[..12], data[..12]);
    }
    if let Ok(p) = ipv4::Packet::new_checked(data) {
        let _ = (
            p.ident(),
            p.ttl(),
            p.dscp_ecn(),
            p.payload().len(),
            p.checksum(),
        );
        if let Ok(repr) = ipv4::Repr::parse(&p) {
            let mut out = vec![0u8; ipv4::MIN_HEADER_LEN];
            repr.emit(&mut out);
            assert!(ipv4::Packet::new_unchecked(&out[..]).verify_checksum());
        }
    }
    if let Ok(p) = ipv6::Packet::new_checked(data) {
        let _ = (p.src_addr(), p.dst_addr(), p.next_header(), p.hop_limit());
    }
    if let Ok(s) = tcp::Segment::new_checked(data) {
        let _ = (s.seq(), s.ack(), s.flags(), s.window(), s.payload().len());
    }
    if let Ok(d) = udp::Datagram::new_checked(data) {
        let repr = udp::Repr::parse(&d);
        assert_eq!(repr.payload_len, d.payload().len());
    }
    if let Ok(v) = vxlan::Packet::new_checked(data) {
        if let Ok(repr) = vxlan::Repr::parse(&v) {
            let mut out = [0u8; 8];
            repr.emit(&mut out);
            assert_eq!(vxlan::Packet::new_unchecked(&out[..]).vni(), repr.vni);
        }
    }
    let _ = vnet::Repr::parse(data);
    if let Ok(inner) = crate::encap::parse_inner(data) {
        assert!(inner.frame.end <= data.len());
    }
}

/// Runs TSO segmentation and checksum completion over a fuzzed vnet
/// header (first 10 bytes) and frame (the rest).
pub fn segmentation(data: &[u8]) {
    let Ok(hdr) = vnet::Repr::parse(data) else {
        return;
    };
    let frame = &data[vnet::HEADER_LEN..];
    let mut out = Vec::new();
    let mut total = 0usize;
    let _ = crate::offload::segment(frame, &hdr, HEADROOM, &mut out, |seg| {
        total += seg.len() - HEADROOM;
    });
    let mut copy = frame.to_vec();
    let _ = crate::offload::complete_checksum(
        &mut copy,
        usize::from(hdr.csum_start),
        usize::from(hdr.csum_offset),
    );
}

/// A node with one peer (session established in memory), one enclave and
/// one local port, fed datagrams without any socket.
pub struct ReceiveHarness {
    node: Arc<Node>,
    rx: Receiver,
    remote: Tunn,
    remote_addr: SocketAddr,
    remote_tunnel: Ipv4Addr,
    port_rx: std::sync::mpsc::Receiver<Vec<u8>>,
    port: Arc<Port>,
}

/// The enclave of the harness.
pub const VNI: u32 = 42;

impl Default for ReceiveHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiveHarness {
    /// Builds the node and completes a WireGuard handshake with its peer.
    pub fn new() -> ReceiveHarness {
        let node_key = PrivateKey::generate();
        let remote_key = PrivateKey::generate();
        let node = Arc::new(Node::new(
            node_key.secret().clone(),
            Ipv4Addr::new(198, 19, 255, 1),
            Settings {
                mac_aging_secs: 300,
                default_port_mtu: 1390,
            },
            1_000_000,
        ));
        let remote_tunnel = Ipv4Addr::new(198, 19, 255, 2);
        let remote_addr: SocketAddr = ([198, 18, 0, 2], 51820).into();
        {
            let mut topo = node.write();
            let cfg = PeerConfig::new(remote_key.public_key(), remote_tunnel).endpoint(remote_addr);
            let peer = Arc::new(new_peer(&node, &topo, &cfg));
            attach_peer(&mut topo, &peer);
            let mut e = Enclave::new(VNI, [remote_key.public_key()].into_iter().collect());
            e.members = resolve_members(&topo, &e.member_keys);
            topo.enclaves.insert(VNI, e);
        }
        let (tx, port_rx) = std::sync::mpsc::sync_channel(4096);
        let port = Arc::new(Port::new(
            node.next_id(),
            "vm".into(),
            VNI,
            PortIo::Memory { to_user: tx },
            Some(ethernet::MacAddr([2, 0, 0, 0, 0, 1])),
            true,
            1390,
        ));
        register_port(&node, &port).expect("fresh topology");
        let remote = Tunn::new(
            remote_key.secret().clone(),
            x25519::PublicKey::from(PublicKey(node.public.to_bytes()).0),
            None,
            None,
            7,
            None,
        );
        let mut h = ReceiveHarness {
            node,
            rx: Receiver::default(),
            remote,
            remote_addr,
            remote_tunnel,
            port_rx,
            port,
        };
        h.handshake();
        h
    }

    fn handshake(&mut self) {
        let mut buf = vec![0u8; 2048];
        let init = match self.remote.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        };
        self.feed(&init);
        let response: Vec<Vec<u8>> = (0..self.rx.fwd.outbox.entries.len())
            .map(|i| self.rx.fwd.outbox.data(i).to_vec())
            .collect();
        self.rx.fwd.outbox.clear();
        let mut keepalive = None;
        for r in response {
            if let TunnResult::WriteToNetwork(k) = self.remote.decapsulate(None, &r, &mut buf) {
                keepalive = Some(k.to_vec());
            }
        }
        self.datagram(&keepalive.expect("the node answered the handshake"));
    }

    /// Feeds one raw UDP datagram from the peer's address.
    pub fn datagram(&mut self, data: &[u8]) {
        self.feed(data);
        self.rx.fwd.outbox.clear();
    }

    /// Like `datagram`, keeping the node's replies in the outbox.
    fn feed(&mut self, data: &[u8]) {
        let topo = self.node.read();
        self.rx.handle(&self.node, &topo, self.remote_addr, data);
        drop(topo);
        self.rx.fwd.finish_batch(&self.node);
    }

    /// Has the peer encrypt `packet` and feeds the result to the node.
    pub fn encrypted(&mut self, packet: &[u8]) {
        let mut buf = vec![0u8; packet.len() + 256];
        let out = match self.remote.encapsulate(packet, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => return,
        };
        self.datagram(&out);
    }

    /// Wraps `frame` in a valid inner header (for enclave `vni`) and feeds it encrypted.
    pub fn frame(&mut self, vni: u32, frame: &[u8]) {
        let mut p = vec![0u8; INNER_HEADER_LEN];
        InnerRepr {
            src: self.remote_tunnel,
            dst: self.node.tunnel_addr,
            src_port: 50000,
            vni: vni & vxlan::MAX_VNI,
        }
        .emit(&mut p, frame.len());
        p.extend_from_slice(frame);
        self.encrypted(&p);
    }

    /// Switches `frame` as if the local port read it with offload header `hdr`.
    pub fn local_frame(&mut self, hdr: Option<vnet::Repr>, frame: &[u8]) {
        let mut buf = vec![0u8; HEADROOM + frame.len()];
        buf[HEADROOM..].copy_from_slice(frame);
        let topo = self.node.read();
        if let Some(enclave) = topo.enclaves.get(&VNI) {
            self.rx
                .fwd
                .switch_from_port(&self.node, enclave, &self.port, hdr, &mut buf);
        }
        drop(topo);
        self.rx.fwd.finish_batch(&self.node);
        self.rx.fwd.outbox.clear();
    }

    /// Frames delivered to the local port so far (and forgets them).
    pub fn delivered(&mut self) -> Vec<Vec<u8>> {
        self.port_rx.try_iter().collect()
    }

    /// Total drops counted so far.
    pub fn drops(&self) -> u64 {
        crate::counters::DropReason::ALL
            .iter()
            .map(|r| self.node.drops.get(*r))
            .sum()
    }

    /// Interprets fuzz input: the first byte picks raw datagram, raw
    /// encrypted inner packet, well-formed inner header around a fuzzed
    /// frame, or a local port frame with a fuzzed offload header.
    pub fn fuzz(&mut self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        match mode % 4 {
            0 => self.datagram(rest),
            1 => self.encrypted(rest),
            2 => {
                if rest.len() >= 3 {
                    let vni = if rest[0] & 1 == 0 {
                        VNI
                    } else {
                        u32::from_be_bytes([0, rest[0], rest[1], rest[2]])
                    };
                    self.frame(vni, &rest[3..]);
                }
            }
            _ => {
                if let Ok(h) = vnet::Repr::parse(rest) {
                    self.local_frame(Some(h), &rest[vnet::HEADER_LEN..]);
                } else {
                    self.local_frame(None, rest);
                }
            }
        }
        let _ = self.delivered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_inputs(n: usize, max: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let len = rand::random::<u32>() as usize % max;
                (0..len).map(|_| rand::random::<u8>()).collect()
            })
            .collect()
    }

    #[test]
    fn parsers_survive_random_and_truncated_input() {
        for input in random_inputs(3000, 200) {
            wire_parsers(&input);
            segmentation(&input);
        }
        let mut h = ReceiveHarness::new();
        h.frame(VNI, &[0xff; 60]);
        let mut real = vec![0u8; INNER_HEADER_LEN];
        InnerRepr {
            src: Ipv4Addr::new(198, 19, 255, 2),
            dst: Ipv4Addr::new(198, 19, 255, 1),
            src_port: 1,
            vni: 9,
        }
        .emit(&mut real, 60);
        real.extend_from_slice(&[0xff; 60]);
        for len in 0..real.len() {
            wire_parsers(&real[..len]);
        }
    }

    #[test]
    fn a_valid_frame_reaches_the_port_and_garbage_is_counted() {
        let mut h = ReceiveHarness::new();
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
        frame.resize(100, 0x42);
        h.frame(VNI, &frame);
        assert_eq!(h.delivered(), vec![frame.clone()]);
        h.frame(VNI + 1, &frame);
        h.datagram(&[4, 0, 0, 0, 1, 2, 3]);
        h.encrypted(&[0x45; 40]);
        assert!(h.delivered().is_empty());
        assert!(h.drops() >= 3);
    }

    #[test]
    fn the_receive_path_survives_random_input_in_every_mode() {
        let mut h = ReceiveHarness::new();
        for input in random_inputs(2000, 300) {
            h.fuzz(&input);
        }
        // Still works afterwards.
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]);
        frame.resize(64, 1);
        h.frame(VNI, &frame);
        assert_eq!(h.delivered().len(), 1);
    }
}
