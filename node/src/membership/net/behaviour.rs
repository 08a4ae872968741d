//! The composed libp2p behaviour and the settings of each protocol in it.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    connection_limits, gossipsub, identify, identity::Keypair, kad, request_response,
    StreamProtocol,
};
use sha2::{Digest as _, Sha256};

use super::codec::SyncCodec;
use super::keepalive;
use crate::membership::{Limits, Timing};

/// Kademlia protocol name: a private DHT, not the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/slicenet/kad/1.0.0");
/// Sync protocol name.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/slicenet/membership/sync/2");
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/slicenet/1";
/// Gossipsub topic carrying node records and suspicions.
pub const MEMBERSHIP_TOPIC: &str = "slicenet/membership/1";

/// Every protocol a membership node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps connections so no peer can exhaust file descriptors or memory.
    pub limits: connection_limits::Behaviour,
    /// Holds the connections to our subjects and watchers open; heartbeats to subjects.
    pub keep_alive: keepalive::Behaviour,
    /// Learns peers' listen addresses (fed to Kademlia).
    pub identify: identify::Behaviour,
    /// Peer discovery.
    pub kademlia: kad::Behaviour<kad::store::MemoryStore>,
    /// Record and suspicion dissemination.
    pub gossipsub: gossipsub::Behaviour,
    /// Pull sync of missing records.
    pub sync: request_response::Behaviour<SyncCodec>,
}

impl Behaviour {
    /// Builds the behaviour for `key` with our timing and limits.
    pub fn new(key: &Keypair, timing: &Timing, limits: &Limits) -> Result<Self, String> {
        let peer_id = key.public().to_peer_id();

        let connection_limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(limits.max_connections))
            .with_max_established_per_peer(Some(2))
            .with_max_pending_incoming(Some(256))
            .with_max_pending_outgoing(Some(256));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                .with_agent_version(format!("slicenet/{}", env!("CARGO_PKG_VERSION")))
                .with_cache_size(0),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_query_timeout(Duration::from_secs(10))
            .set_periodic_bootstrap_interval(Some(Duration::from_secs(300)))
            // Every peer a lookup contacts becomes a kept, pinged connection; smaller
            // buckets keep each node's neighbourhood (and its ping load) small.
            .set_kbucket_size(std::num::NonZeroUsize::new(8).expect("non-zero"))
            .set_parallelism(std::num::NonZeroUsize::new(2).expect("non-zero"))
            // Records live in gossip, not in the DHT: nothing to replicate or republish.
            .set_record_ttl(None)
            .set_replication_interval(None)
            .set_publication_interval(None);
        let mut kademlia =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Without this a node that has no confirmed external address stays a client and
        // nobody can find peers through it (DEPENDENCIES.md).
        kademlia.set_mode(Some(kad::Mode::Server));

        // Our records carry their own ed25519 signature, so gossipsub's per-message
        // signature would be a second verification of the same thing: messages are
        // anonymous, identified by the hash of their content, and validated by us
        // before they are forwarded.
        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(timing.gossip_heartbeat)
            // Mesh sized for a handful of peers up to thousands: the mesh degree is
            // reached in small overlays, and outbound_min 1 lets a node whose only
            // peers dialed it still build a mesh.
            .mesh_n(4)
            .mesh_n_low(2)
            .mesh_n_high(8)
            .mesh_outbound_min(1)
            .gossip_lazy(4)
            // Generous on purpose: messages between a record's maximum and this size reach
            // our validation, which drops and counts them as oversized.
            .max_transmit_size(64 * 1024)
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .validate_messages()
            .message_id_fn(|message: &gossipsub::Message| {
                gossipsub::MessageId::from(&Sha256::digest(&message.data)[..20])
            })
            .build()
            .map_err(|e| format!("gossipsub configuration: {e}"))?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)?;

        let sync = request_response::Behaviour::with_codec(
            SyncCodec,
            [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(10))
                .with_max_concurrent_streams(16),
        );

        Ok(Self {
            limits: connection_limits::Behaviour::new(connection_limits),
            keep_alive: keepalive::Behaviour::new(
                timing.ping_interval,
                timing.ping_interval + timing.ping_timeout,
            ),
            identify,
            kademlia,
            gossipsub,
            sync,
        })
    }
}
