//! The libp2p side of membership: everything that names a libp2p type lives
//! under here, so the rest of slicenet only sees the types in `membership`.

mod behaviour;
mod codec;
mod driver;
mod keepalive;

pub(crate) use driver::Driver;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::identity::NodeId;
use super::PeerAddr;

/// The libp2p peer id of a node id.
///
/// Built straight from the key bytes (an ed25519 peer id inlines the protobuf-encoded
/// key in an identity multihash), so it costs no point decompression; node ids come from
/// verified records, whose keys are valid points.
pub(crate) fn node_to_peer(node: &NodeId) -> Option<PeerId> {
    // protobuf PublicKey { Type = Ed25519 (field 1, value 1), Data (field 2, 32 bytes) }
    let mut encoded = [0u8; 36];
    encoded[..4].copy_from_slice(&[0x08, 0x01, 0x12, 0x20]);
    encoded[4..].copy_from_slice(node.as_bytes());
    let multihash = libp2p::multihash::Multihash::<64>::wrap(0, &encoded).ok()?;
    PeerId::from_multihash(multihash).ok()
}

/// The node id inside an ed25519 peer id (None for other key types). Read from the
/// bytes like [`node_to_peer`] builds them, without decompressing the key.
pub(crate) fn peer_to_node(peer: &PeerId) -> Option<NodeId> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Ed25519 peer ids inline the protobuf-encoded public key (identity multihash).
    if multihash.code() != 0 {
        return None;
    }
    let key = multihash.digest().strip_prefix(&[0x08, 0x01, 0x12, 0x20])?;
    Some(NodeId::from_bytes(key.try_into().ok()?))
}

/// Our address type as a multiaddr.
pub(crate) fn to_multiaddr(addr: &PeerAddr) -> Multiaddr {
    match addr {
        PeerAddr::Tcp(sa) => Multiaddr::empty()
            .with(Protocol::from(sa.ip()))
            .with(Protocol::Tcp(sa.port())),
        PeerAddr::Memory(port) => Multiaddr::empty().with(Protocol::Memory(*port)),
    }
}

/// A multiaddr as our address type, if it is one we use.
pub(crate) fn from_multiaddr(addr: &Multiaddr) -> Option<PeerAddr> {
    let mut it = addr.iter();
    match (it.next()?, it.next()) {
        (Protocol::Memory(port), None | Some(Protocol::P2p(_))) => Some(PeerAddr::Memory(port)),
        (Protocol::Ip4(ip), Some(Protocol::Tcp(port))) => Some(PeerAddr::Tcp((ip, port).into())),
        (Protocol::Ip6(ip), Some(Protocol::Tcp(port))) => Some(PeerAddr::Tcp((ip, port).into())),
        _ => None,
    }
}

/// Whether an address only makes sense on the machine that advertised it.
pub(crate) fn is_host_local(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeIdentity;
    use libp2p::identity;

    #[test]
    fn node_ids_and_peer_ids_convert_both_ways() {
        let id = NodeIdentity::generate();
        let peer = node_to_peer(&id.node_id()).unwrap();
        let keypair = identity::Keypair::ed25519_from_bytes(id.seed()).unwrap();
        assert_eq!(
            peer,
            keypair.public().to_peer_id(),
            "same key, same peer id"
        );
        assert_eq!(peer_to_node(&peer), Some(id.node_id()));
        assert_eq!(peer_to_node(&PeerId::random()), None);
    }

    #[test]
    fn addresses_convert_both_ways() {
        for text in ["198.18.0.1:7946", "[2001:db8::1]:7946", "memory:42"] {
            let addr: PeerAddr = text.parse().unwrap();
            assert_eq!(from_multiaddr(&to_multiaddr(&addr)), Some(addr));
            assert_eq!(addr.to_string(), text);
        }
        assert!("nonsense".parse::<PeerAddr>().is_err());
    }
}
