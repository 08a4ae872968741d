//! Keeps the connections to chosen peers open (our monitoring subjects and
//! watchers) while every other connection closes once idle, and refuses to
//! open connections to anyone else.
//!
//! libp2p closes a connection when none of its handlers needs it. Ping does not
//! count, gossipsub only holds its mesh peers, and Kademlia and the sync
//! protocol only hold a connection while they use it; so without this
//! behaviour a node would either keep every connection it ever made (and ping
//! them all: O(N) work per node at scale) or lose the ones failure detection
//! depends on.
//!
//! The refusal bounds the degree of a node: Kademlia's lookups (its bootstrap
//! refreshes every bucket, asking 20 peers per lookup) would otherwise dial
//! almost every node of a small overlay and hundreds of a large one, each
//! dial a handshake, an identify exchange and a pinged connection. With it,
//! Kademlia queries run over the connections a node already has (a peer it
//! cannot reach that way counts as a failed query step), and the only dials
//! are those of failure detection (to our subjects) and to bootstrap
//! addresses (which carry no peer id). Inbound connections are not refused
//! here: [`libp2p::connection_limits`] caps those.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Holds connections to the peers in its set open and refuses dials to any other peer.
#[derive(Default)]
pub struct Behaviour {
    wanted: HashSet<PeerId>,
    /// Dials to peers outside the set that were refused.
    refused: u64,
    connections: HashMap<PeerId, HashSet<ConnectionId>>,
    notify: VecDeque<(PeerId, ConnectionId, bool)>,
}

impl Behaviour {
    /// Replaces the set of peers whose connections stay open.
    pub fn set_wanted(&mut self, wanted: HashSet<PeerId>) {
        for (peer, connections) in &self.connections {
            let (was, is) = (self.wanted.contains(peer), wanted.contains(peer));
            if was != is {
                for connection in connections {
                    self.notify.push_back((*peer, *connection, is));
                }
            }
        }
        self.wanted = wanted;
    }

    /// How many dials to peers outside the set were refused so far.
    pub fn refused_dials(&self) -> u64 {
        self.refused
    }

    fn handler(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().insert(connection);
        Handler {
            keep_alive: self.wanted.contains(&peer),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        match peer {
            Some(peer) if !self.wanted.contains(&peer) => {
                self.refused += 1;
                Err(ConnectionDenied::new(NotAContact(peer)))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            if let Some(set) = self.connections.get_mut(&closed.peer_id) {
                set.remove(&closed.connection_id);
                if set.is_empty() {
                    self.connections.remove(&closed.peer_id);
                }
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.notify.pop_front() {
            Some((peer_id, connection, event)) => Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event,
            }),
            None => Poll::Pending,
        }
    }
}

/// Why a dial was refused: the peer is not one we watch or that watches us.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a monitoring neighbour: membership does not dial it")]
pub struct NotAContact(PeerId);

/// A handler that speaks no protocol and only answers "keep this connection?".
pub struct Handler {
    keep_alive: bool,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn on_behaviour_event(&mut self, keep_alive: bool) {
        self.keep_alive = keep_alive;
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {}
}
