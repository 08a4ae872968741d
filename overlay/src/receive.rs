//! The receive path: one UDP datagram from the underlay → WireGuard
//! (boringtun) → inner IPv4/UDP/VXLAN → the enclave's switch.
//!
//! Every way a datagram can be wrong ends as a counted drop: this is the
//! code that faces the network, and it is fuzzed.

use std::net::SocketAddr;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::counters::DropReason;
use crate::encap::{parse_inner, InnerError};
use crate::forward::Forwarder;
use crate::keys::PublicKey;
use crate::node::{Node, Peer, Topology};

/// Size of the decryption buffer: the largest datagram plus slack.
const DECRYPT_BUF: usize = 65_536 + 256;

/// Per-task receive state.
pub(crate) struct Receiver {
    /// Forwarding state (outbox for handshake replies, TAP coalescing).
    pub fwd: Forwarder,
    plain: Vec<u8>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            fwd: Forwarder::default(),
            plain: vec![0; DECRYPT_BUF],
        }
    }
}

fn classify(e: &WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::InvalidAeadTag => DropReason::DecryptFailed,
        E::DuplicateCounter | E::InvalidCounter => DropReason::Replayed,
        E::NoCurrentSession | E::WrongIndex | E::ConnectionExpired => DropReason::NoSession,
        E::UnderLoad => DropReason::HandshakeUnderLoad,
        E::InvalidMac
        | E::WrongKey
        | E::InvalidTai64nTimestamp
        | E::WrongTai64nTimestamp
        | E::UnexpectedPacket => DropReason::HandshakeInvalid,
        _ => DropReason::MalformedDatagram,
    }
}

impl Receiver {
    /// Handles one datagram from `src`. Replies (handshake responses,
    /// cookies, queued data) are left in `self.fwd.outbox`.
    pub(crate) fn handle(&mut self, node: &Node, topo: &Topology, src: SocketAddr, data: &[u8]) {
        let Ok(packet) = Tunn::parse_incoming_packet(data) else {
            node.drop_frame(DropReason::MalformedDatagram, 1, None, None);
            return;
        };
        let by_index = |idx: u32| topo.peers_by_index.get(&(idx >> 8)).cloned();
        let (peer, authenticates_endpoint) = match &packet {
            Packet::HandshakeInit(init) => {
                // Check MAC1 and the load before the expensive DH, as the
                // WireGuard paper prescribes; under load, answer with a cookie.
                let mut cookie = [0u8; 64];
                match node
                    .rate_limiter
                    .verify_packet(Some(src.ip()), data, &mut cookie)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(reply)) => {
                        self.fwd.outbox.push(reply, src, None);
                        node.underlay
                            .cookie_replies
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        node.drop_frame(DropReason::HandshakeUnderLoad, 1, None, None);
                        return;
                    }
                    Err(_) => {
                        node.drop_frame(DropReason::HandshakeInvalid, 1, None, None);
                        return;
                    }
                }
                match parse_handshake_anon(&node.secret, &node.public, init) {
                    Ok(half) => match topo.peers.get(&PublicKey(half.peer_static_public)) {
                        Some(p) => (p.clone(), true),
                        None => {
                            node.drop_frame(DropReason::UnknownPeer, 1, None, None);
                            return;
                        }
                    },
                    Err(_) => {
                        node.drop_frame(DropReason::HandshakeInvalid, 1, None, None);
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(r) => match by_index(r.receiver_idx) {
                Some(p) => (p, true),
                None => {
                    node.drop_frame(DropReason::UnknownPeer, 1, None, None);
                    return;
                }
            },
            Packet::PacketCookieReply(c) => match by_index(c.receiver_idx) {
                Some(p) => (p, false),
                None => {
                    node.drop_frame(DropReason::UnknownPeer, 1, None, None);
                    return;
                }
            },
            Packet::PacketData(d) => match by_index(d.receiver_idx) {
                Some(p) => (p, true),
                None => {
                    node.drop_frame(DropReason::UnknownPeer, 1, None, None);
                    return;
                }
            },
        };
        self.decapsulate(node, topo, &peer, src, data, authenticates_endpoint);
    }

    fn decapsulate(
        &mut self,
        node: &Node,
        topo: &Topology,
        peer: &Arc<Peer>,
        src: SocketAddr,
        data: &[u8],
        authenticates_endpoint: bool,
    ) {
        let is_response = data[0] == 2;
        let mut tunn = peer.lock_tunn();
        match tunn.decapsulate(Some(src.ip()), data, &mut self.plain) {
            TunnResult::WriteToNetwork(reply) => {
                self.fwd.outbox.push(reply, src, Some(peer.clone()));
                drop(tunn);
                peer.set_endpoint(src);
                // As initiator we now have a session: send what waited for it.
                // (A responder must first hear from the initiator.)
                if is_response {
                    self.send_queued(peer, src);
                }
            }
            TunnResult::WriteToTunnelV4(packet, _) => {
                let len = packet.len();
                drop(tunn);
                peer.set_endpoint(src);
                self.inner(node, topo, peer, len);
                self.send_queued(peer, src);
            }
            TunnResult::WriteToTunnelV6(..) => {
                drop(tunn);
                peer.set_endpoint(src);
                node.drop_frame(DropReason::InnerNotVxlan, 1, Some(peer), None);
            }
            TunnResult::Done => {
                drop(tunn);
                if authenticates_endpoint {
                    // A keepalive: for a responder, the session is confirmed now.
                    peer.set_endpoint(src);
                    self.send_queued(peer, src);
                }
            }
            TunnResult::Err(e) => {
                drop(tunn);
                node.drop_frame(classify(&e), 1, Some(peer), None);
            }
        }
    }

    /// Sends the packets boringtun queued while the peer had no session.
    fn send_queued(&mut self, peer: &Arc<Peer>, dst: SocketAddr) {
        if !peer.queued.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let mut tunn = peer.lock_tunn();
        // boringtun queues at most 256 packets; the bound only guards the loop.
        for _ in 0..512 {
            match tunn.decapsulate(None, &[], &mut self.plain) {
                TunnResult::WriteToNetwork(p) => self.fwd.outbox.push(p, dst, Some(peer.clone())),
                _ => break,
            }
        }
    }

    /// Handles the decrypted packet in `self.plain[..len]`.
    fn inner(&mut self, node: &Node, topo: &Topology, peer: &Arc<Peer>, len: usize) {
        let inner = match parse_inner(&self.plain[..len]) {
            Ok(i) => i,
            Err(e) => {
                let reason = match e {
                    InnerError::NotVxlan => DropReason::InnerNotVxlan,
                    InnerError::BadHeader(_) => DropReason::InnerBadHeader,
                    InnerError::TruncatedFrame => DropReason::TruncatedFrame,
                };
                node.drop_frame(reason, 1, Some(peer), None);
                return;
            }
        };
        // WireGuard's cryptokey routing: the peer may only send from its own
        // tunnel address, and only to ours.
        if inner.src != peer.tunnel_addr() || inner.dst != node.tunnel_addr {
            node.drop_frame(DropReason::InnerWrongAddress, 1, Some(peer), None);
            return;
        }
        let Some(enclave) = topo.enclaves.get(&inner.vni) else {
            node.drop_frame(DropReason::UnknownVni, 1, Some(peer), None);
            return;
        };
        if !enclave.has_member(peer.id) {
            node.drop_frame(DropReason::PeerNotMember, 1, Some(peer), None);
            return;
        }
        self.fwd
            .switch_from_peer(node, enclave, peer, &self.plain[inner.frame]);
    }
}
