//! The libp2p side of membership: everything that names a libp2p type lives
//! under here, so the rest of slicenet only sees the types in `membership`.

mod behaviour;
mod codec;
mod driver;
mod keepalive;

pub(crate) use driver::Driver;

use libp2p::multiaddr::Protocol;
use libp2p::{identity, Multiaddr, PeerId};

use super::identity::NodeId;
use super::PeerAddr;

/// The libp2p peer id of a node id (None if the bytes are not an ed25519 point).
pub(crate) fn node_to_peer(node: &NodeId) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(node.as_bytes()).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

/// The node id inside an ed25519 peer id (None for other key types).
pub(crate) fn peer_to_node(peer: &PeerId) -> Option<NodeId> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Ed25519 peer ids inline the protobuf-encoded public key (identity multihash).
    if multihash.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(NodeId::from_bytes(key.try_into_ed25519().ok()?.to_bytes()))
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
