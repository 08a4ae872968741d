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
        let mut tunn = peer.lock_tunn();
        match tunn.decapsulate(Some(src.ip()), data, &mut self.plain) {
            TunnResult::WriteToNetwork(reply) => {
                self.fwd.outbox.push(reply, src, Some(peer.clone()));
                // Packets boringtun queued while the handshake was pending.
                while let TunnResult::WriteToNetwork(queued) =
                    tunn.decapsulate(None, &[], &mut self.plain)
                {
                    self.fwd.outbox.push(queued, src, Some(peer.clone()));
                }
                drop(tunn);
                peer.set_endpoint(src);
            }
            TunnResult::WriteToTunnelV4(packet, _) => {
                let len = packet.len();
                drop(tunn);
                peer.set_endpoint(src);
                self.inner(node, topo, peer, len);
            }
            TunnResult::WriteToTunnelV6(..) => {
                drop(tunn);
                peer.set_endpoint(src);
                node.drop_frame(DropReason::InnerNotVxlan, 1, Some(peer), None);
            }
            TunnResult::Done => {
                drop(tunn);
                if authenticates_endpoint {
                    // A keepalive.
                    peer.set_endpoint(src);
                }
            }
            TunnResult::Err(e) => {
                drop(tunn);
                node.drop_frame(classify(&e), 1, Some(peer), None);
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
