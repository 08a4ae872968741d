//! Keeps the connections to chosen peers open (our monitoring subjects and
//! watchers) while every other connection closes once idle.
//!
//! libp2p closes a connection when none of its handlers needs it. Ping does not
//! count, gossipsub only holds its mesh peers, and Kademlia and the sync
//! protocol only hold a connection while they use it; so without this
//! behaviour a node would either keep every connection it ever made (and ping
//! them all: O(N) work per node at scale) or lose the ones failure detection
//! depends on.

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

/// Holds connections to the peers in its set open.
#[derive(Default)]
pub struct Behaviour {
    wanted: HashSet<PeerId>,
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
