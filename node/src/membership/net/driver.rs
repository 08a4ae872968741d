//! The membership task: owns the swarm and the table, and runs one loop over
//! swarm events, handle commands, a timer and the shutdown signal.
//!
//! Its work is split by concern:
//! - this file: setup, the loop, events, commands and urgent gossip;
//! - [`watch`]: failure detection (who we watch, pings, probes, suspicions);
//! - [`spread`]: bulk dissemination (pull syncs with digests, pushed news).
//!
//! The work per node stays bounded as the overlay grows: a node keeps
//! connections to the few nodes it watches and that watch it (plus its
//! gossip mesh), it dials nobody else (Kademlia's lookups run over the
//! connections it has, see [`super::keepalive`]), every other connection
//! closes when idle, and records travel
//! in batches to the nodes that lack them instead of one message per record
//! per peer.

mod spread;
mod watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::core::{ConnectedPoint, Transport as _};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, noise, request_response, tcp, yamux};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, watch as tokio_watch};

use super::behaviour::{Behaviour, BehaviourEvent, MEMBERSHIP_TOPIC};
use super::keepalive;
use super::{from_multiaddr, is_host_local, node_to_peer, peer_to_node, to_multiaddr};
use crate::membership::health::LocalHealth;
use crate::membership::identity::{NodeId, NodeIdentity};
use crate::membership::message::{GossipMessage, MAX_GOSSIP_LEN};
use crate::membership::record::{NodeInfo, NodeRecord, RecordError, VerifiedNodeRecord};
use crate::membership::ring::MonitorRings;
use crate::membership::status::{Counters, MembershipStatus};
use crate::membership::table::{
    Accepted, MemberTable, MembershipEvent, Refusal, SuspicionOutcome, TableConfig,
};
use crate::membership::{
    Command, Limits, MembershipConfig, MembershipError, PeerAddr, Timing, MAX_CONTACTS,
};

/// Timer period: the resolution of probe and suspicion deadlines.
const TICK: Duration = Duration::from_millis(100);
/// How long a connection may take to open (dial, handshake, multiplexer). Probes
/// judge their own dials by `probe_timeout` and need no shorter limit here; a
/// joiner's dial to a bootstrap node that hundreds of others join through at the
/// same moment does: with 1 s, under such a storm of 1,000 joiners, some of the
/// last ones (at least ten in one run) stayed unknown to every other node for
/// 16-20 s.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two re-signings prompted by peers that hold us down.
const DOWN_RESIGN_INTERVAL: Duration = Duration::from_secs(1);
/// How often a node without connections redials its bootstrap addresses.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(2);
/// Most gossip messages waiting for a subscriber before the oldest is dropped.
const MAX_PENDING_PUBLISH: usize = 64;
/// Most listen addresses of one peer remembered and fed to Kademlia.
const MAX_ADDRS_PER_PEER: usize = 8;
/// A connection nobody needs (not to a subject, a watcher or a gossip mesh peer, and
/// not in use by Kademlia or a sync) closes after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection to a peer that is neither our subject nor our watcher is closed once it
/// is this old, even if gossipsub put it in its mesh (which would keep it open forever):
/// otherwise the nodes everyone bootstraps through would keep hundreds of connections.
const TRANSIENT_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A token bucket: `rate` tokens per second up to `burst`.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What we know about a connected peer.
struct Peer {
    node: NodeId,
    /// Addresses we reached it at or that it listens on (to redial it).
    addrs: Vec<Multiaddr>,
    /// Gossip messages and pushed records it may send us.
    records: Bucket,
    /// Sync requests it may send us.
    syncs: Bucket,
    /// When the first connection to it was established.
    since: Instant,
}

/// How a record reached us (decides whether it is passed on as news).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Gossipsub: already flooded to everyone, nothing to pass on.
    Gossip,
    /// A sync request or response: news in it is pushed on.
    Sync,
}

/// The membership task's state.
pub(crate) struct Driver {
    swarm: Swarm<Behaviour>,
    identity: NodeIdentity,
    topic: gossipsub::IdentTopic,
    table: MemberTable,
    own: VerifiedNodeRecord,
    timing: Timing,
    limits: Limits,
    bootstrap: Vec<Multiaddr>,
    peers: HashMap<PeerId, Peer>,
    /// Whether we are running too late to trust our own timeouts.
    health: LocalHealth,
    /// Gossip messages that found no subscriber yet.
    pending_publish: VecDeque<Vec<u8>>,
    events: mpsc::Sender<MembershipEvent>,
    commands: mpsc::Receiver<Command>,
    shutdown: tokio_watch::Receiver<bool>,
    listen_addrs: Vec<Multiaddr>,
    next_refresh: Instant,
    next_bootstrap: Instant,
    last_refutation: Option<Instant>,
    /// When we last re-signed because a peer held us down (see `declared_down`).
    last_down_resign: Option<Instant>,
    /// Set while we have no connection at all after having had some.
    isolated_since: Option<Instant>,
    /// Failure detection state (see [`watch`]).
    watch: watch::WatchState,
    /// Dissemination state (see [`spread`]).
    spread: spread::SpreadState,
}

fn sign_own(
    identity: &NodeIdentity,
    info: &NodeInfo,
    contacts: &[PeerAddr],
    previous_seq: u64,
    leaving: bool,
) -> Result<VerifiedNodeRecord, RecordError> {
    // Seq starts at the clock so a restarted node outranks its previous life.
    let seq = unix_us().max(previous_seq + 1);
    NodeRecord {
        node_id: identity.node_id(),
        seq,
        timestamp_ms: unix_ms(),
        leaving,
        info: info.clone(),
        contacts: contacts.to_vec(),
    }
    .sign(identity)
}

/// The addresses worth advertising in our record: routable ones first; loopback and
/// wildcard ones only when there is nothing else (single-host runs and tests).
fn contacts_of(listen_addrs: &[Multiaddr]) -> Vec<PeerAddr> {
    let (local, routable): (Vec<&Multiaddr>, Vec<&Multiaddr>) =
        listen_addrs.iter().partition(|a| is_host_local(a));
    let chosen = if routable.is_empty() { local } else { routable };
    chosen
        .into_iter()
        .filter_map(from_multiaddr)
        .filter(|a| !matches!(a, PeerAddr::Tcp(sa) if sa.ip().is_unspecified()))
        .take(MAX_CONTACTS)
        .collect()
}

impl Driver {
    /// Builds the swarm, binds every listener and dials the bootstrap addresses.
    pub(crate) async fn new(
        config: MembershipConfig,
        events: mpsc::Sender<MembershipEvent>,
        commands: mpsc::Receiver<Command>,
        shutdown: tokio_watch::Receiver<bool>,
    ) -> Result<(Self, Vec<PeerAddr>), MembershipError> {
        let MembershipConfig {
            identity,
            info,
            listen,
            bootstrap,
            timing,
            limits,
            watchers,
            signature_cache,
        } = config;
        // Checks the info before anything is bound (the real record follows below).
        sign_own(&identity, &info, &[], 0, false)?;
        let setup = |e: &dyn std::fmt::Display| MembershipError::Setup(e.to_string());
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(identity.seed())
            .map_err(|e| setup(&e))?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| setup(&e))?
            .with_other_transport(
                |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    Ok(MemoryTransport::default()
                        .upgrade(Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()))
                },
            )
            .map_err(|e| setup(&e))?
            .with_behaviour(|key| Behaviour::new(key, &timing, &limits).map_err(Into::into))
            .map_err(|e| setup(&e))?
            // Connections failure detection relies on are held open by the keep-alive
            // behaviour; the rest close when idle.
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .with_connection_timeout(DIAL_TIMEOUT.max(timing.probe_timeout))
            .build();

        let topic = gossipsub::IdentTopic::new(MEMBERSHIP_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| setup(&e))?;

        let mut listeners = Vec::new();
        for addr in &listen {
            let id = swarm
                .listen_on(to_multiaddr(addr))
                .map_err(|e| MembershipError::Listen {
                    addr: *addr,
                    reason: e.to_string(),
                })?;
            listeners.push((id, *addr));
        }
        // Wait until every listener is bound, so callers can hand our address to others
        // and our record can carry it.
        let mut bound: Vec<PeerAddr> = Vec::new();
        let mut listen_addrs = Vec::new();
        let mut waiting: HashSet<_> = listeners.iter().map(|(id, _)| *id).collect();
        while !waiting.is_empty() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    waiting.remove(&listener_id);
                    if let Some(a) = from_multiaddr(&address) {
                        bound.push(a);
                    }
                    listen_addrs.push(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if waiting.contains(&listener_id) => {
                    let addr = listeners.iter().find(|(id, _)| *id == listener_id);
                    return Err(MembershipError::Listen {
                        addr: addr.map_or(PeerAddr::Memory(0), |(_, a)| *a),
                        reason: format!("{reason:?}"),
                    });
                }
                _ => {}
            }
        }
        let own = sign_own(&identity, &info, &contacts_of(&listen_addrs), 0, false)?;

        let local = identity.node_id();
        let mut table = MemberTable::new(
            local,
            TableConfig {
                max_members: limits.max_members,
                record_ttl: timing.record_ttl,
                suspicion_timeout: timing.suspicion_timeout,
                max_record_age: timing.record_ttl.max(timing.refresh_interval * 2),
                ..TableConfig::default()
            },
        );
        if let Some(cache) = signature_cache {
            table.set_signature_cache(cache);
        }
        table.set_local_seq(own.seq());
        let now = Instant::now();
        let mut driver = Self {
            swarm,
            identity,
            topic,
            table,
            own,
            next_refresh: now + spread::jittered(timing.refresh_interval),
            next_bootstrap: now,
            watch: watch::WatchState::new(MonitorRings::new(local, watchers)),
            spread: spread::SpreadState::new(now),
            timing,
            limits,
            bootstrap: bootstrap.iter().map(to_multiaddr).collect(),
            peers: HashMap::new(),
            health: LocalHealth::default(),
            pending_publish: VecDeque::new(),
            events,
            commands,
            shutdown,
            listen_addrs,
            last_refutation: None,
            last_down_resign: None,
            isolated_since: None,
        };
        driver.dial_bootstrap();
        Ok((driver, bound))
    }

    /// Runs until the shutdown signal (or until every handle and the owner are gone).
    pub(crate) async fn run(mut self) {
        let mut timer = tokio::time::interval(TICK);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            // The swarm is not budget-aware: while it always has an event ready this loop
            // would never yield, and the timer and commands (which are) would starve.
            tokio::task::consume_budget().await;
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone; keep running until the shutdown signal.
                    None => commands_open = false,
                },
                _ = timer.tick() => self.on_tick(Instant::now()),
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        self.leave().await;
    }

    /// Publishes a leaving record and gives it `leave_grace` to go out.
    async fn leave(&mut self) {
        if self.resign(true).is_ok() {
            self.publish_own();
        }
        let deadline = tokio::time::sleep(self.timing.leave_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = self.swarm.select_next_some() => {}
            }
        }
    }

    /// Delivers an event to the owner and keeps the monitoring rings in step with it.
    fn emit(&mut self, event: MembershipEvent) {
        self.watch.on_membership_event(&event);
        self.update_routing(&event);
        if self.events.try_send(event).is_err() {
            self.table.counters.events_dropped += 1;
        }
    }

    /// The contact addresses in `record` we can dial: loopback and wildcard addresses
    /// name the advertiser's own host, so they only count when we listen on one too.
    fn reachable_contacts(&self, record: &VerifiedNodeRecord) -> Vec<Multiaddr> {
        let we_are_local = self.listen_addrs.iter().any(is_host_local);
        record
            .record()
            .contacts
            .iter()
            .map(to_multiaddr)
            .filter(|a| we_are_local || !is_host_local(a))
            .collect()
    }

    /// Keeps Kademlia's routing table in step with the signed records: a member's contact
    /// addresses go in when it comes up and it leaves when it goes down. (A routing table
    /// of fewer than 20 peers also makes Kademlia bootstrap again on every insertion.)
    fn update_routing(&mut self, event: &MembershipEvent) {
        match event {
            MembershipEvent::PeerUp(record) => {
                let Some(peer) = node_to_peer(&record.node_id()) else {
                    return;
                };
                for addr in self.reachable_contacts(record) {
                    self.swarm.behaviour_mut().kademlia.add_address(&peer, addr);
                }
            }
            MembershipEvent::PeerDown { node, .. } => {
                if let Some(peer) = node_to_peer(node) {
                    self.swarm.behaviour_mut().kademlia.remove_peer(&peer);
                }
            }
            MembershipEvent::PeerUpdated(_) => {}
        }
    }

    fn emit_all(&mut self, events: Vec<MembershipEvent>) {
        for event in events {
            self.emit(event);
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Members(reply) => {
                let _ = reply.send(self.table.members(Instant::now()));
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::UpdateRecord(info, reply) => {
                let result = sign_own(
                    &self.identity,
                    &info,
                    &self.own.record().contacts,
                    self.own.seq(),
                    false,
                )
                .map(|r| {
                    self.own = r;
                    self.table.set_local_seq(self.own.seq());
                    self.publish_own();
                    self.own.seq()
                });
                let _ = reply.send(result);
            }
        }
    }

    fn status(&self) -> MembershipStatus {
        MembershipStatus {
            node_id: self.identity.node_id(),
            record_seq: self.own.seq(),
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            connected_peers: self.swarm.connected_peers().count(),
            subjects: self.watch.subject_count(),
            watchers: self.watch.watcher_count(),
            live_members: self.table.live_count(),
            table_entries: self.table.len(),
            counters: Counters {
                dials_refused: self.swarm.behaviour().keep_alive.refused_dials(),
                ..self.table.counters
            },
        }
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if self.listen_addrs.contains(&addr) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
        self.next_bootstrap = Instant::now() + BOOTSTRAP_RETRY;
    }

    /// Re-signs our record (new seq, current contacts); `leaving` marks the last one.
    fn resign(&mut self, leaving: bool) -> Result<(), RecordError> {
        let contacts = contacts_of(&self.listen_addrs);
        let record = sign_own(
            &self.identity,
            self.own.info(),
            &contacts,
            self.own.seq(),
            leaving,
        )?;
        self.own = record;
        self.table.set_local_seq(self.own.seq());
        Ok(())
    }

    /// Re-signs our record and tells everyone at once (refutations, returns, new addresses).
    fn republish_own(&mut self) {
        if self.resign(false).is_ok() {
            self.publish_own();
        }
    }

    fn publish_own(&mut self) {
        // Only the newest version of our record is worth retrying.
        self.pending_publish
            .retain(|m| !matches!(GossipMessage::parse(m), Ok(GossipMessage::Record(_))));
        self.publish(GossipMessage::Record(self.own.bytes()).to_bytes());
    }

    fn publish(&mut self, message: Vec<u8>) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), message.clone())
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => {
                // Typically NoPeersSubscribedToTopic: nobody's subscription has
                // arrived yet. Retry when one does (and on every tick).
                tracing::trace!(error = %e, "gossip publish deferred");
                if self.pending_publish.len() >= MAX_PENDING_PUBLISH {
                    self.pending_publish.pop_front();
                }
                self.pending_publish.push_back(message);
            }
        }
    }

    fn retry_pending(&mut self) {
        for message in std::mem::take(&mut self.pending_publish) {
            self.publish(message);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.health.tick(now, TICK);
        self.swarm
            .behaviour()
            .keep_alive
            .set_own_lag(self.health.lag());
        let degraded = self.health.degraded();
        self.watch_tick(now, degraded);
        let events = self.table.tick(now, degraded);
        self.emit_all(events);
        self.update_watch(now);
        if !self.pending_publish.is_empty() {
            self.retry_pending();
        }
        if now >= self.next_refresh {
            // A refresh changes nothing but freshness: pull syncs carry it, no flood.
            self.next_refresh = now + spread::jittered(self.timing.refresh_interval);
            let _ = self.resign(false);
        }
        self.spread_tick(now);
        self.close_transient_connections(now);
        if self.peers.is_empty() && now >= self.next_bootstrap {
            self.dial_bootstrap();
        }
    }

    /// Closes connections to peers that are not our monitoring neighbours once they are
    /// older than [`TRANSIENT_CONNECTION_LIFETIME`], keeping at least one connection.
    fn close_transient_connections(&mut self, now: Instant) {
        let transient: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) > TRANSIENT_CONNECTION_LIFETIME)
            .filter(|(_, p)| !self.watch.is_neighbour(&p.node))
            .map(|(peer, _)| *peer)
            .collect();
        let keep_one = usize::from(transient.len() == self.peers.len());
        for peer in transient.into_iter().skip(keep_one) {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => self.on_connected(peer_id, &endpoint, num_established.get()),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "disconnected");
                self.on_disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => self.on_dial_failed(peer, &error),
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
                self.on_listen_addrs_changed();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.on_listen_addrs_changed();
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// Our contact addresses changed (an interface came or went): others must learn them.
    fn on_listen_addrs_changed(&mut self) {
        if contacts_of(&self.listen_addrs) != self.own.record().contacts {
            self.republish_own();
        }
    }

    fn on_connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint, count: u32) {
        let Some(node) = peer_to_node(&peer) else {
            // Not an ed25519 identity: cannot be a slicenet node.
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        };
        let now = Instant::now();
        self.table.counters.connections_opened += 1;
        let dialed_addr = match endpoint {
            ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
            ConnectedPoint::Listener { .. } => None,
        };
        let limits = &self.limits;
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            node,
            addrs: Vec::new(),
            records: Bucket::new(limits.gossip_per_peer_burst, now),
            syncs: Bucket::new(limits.syncs_per_peer_per_sec.max(1.0) * 2.0, now),
            since: now,
        });
        if let Some(addr) = &dialed_addr {
            if !entry.addrs.contains(addr) && entry.addrs.len() < MAX_ADDRS_PER_PEER {
                entry.addrs.push(addr.clone());
            }
            self.swarm
                .behaviour_mut()
                .kademlia
                .add_address(&peer, addr.clone());
        }
        self.watch.on_connected(node);
        if let Some(event) = self.table.set_connected(node, true, now) {
            self.emit(event);
        }
        let back_from_isolation = self.isolated_since.take().is_some();
        if back_from_isolation {
            // Back from isolation (a partition, a network restart): others may have
            // declared us down and we heard none of their suspicions, so announce a
            // newer record.
            self.republish_own();
        }
        if count == 1 {
            let to_bootstrap = dialed_addr.is_some_and(|a| self.bootstrap.contains(&a));
            // Kademlia bootstraps by itself once its routing table holds a peer (and again
            // while it holds fewer than 20); its queries run over the connections we have.
            self.on_first_connection(peer, to_bootstrap || back_from_isolation);
        }
    }

    fn on_disconnected(&mut self, peer: PeerId) {
        let Some(state) = self.peers.remove(&peer) else {
            return;
        };
        self.table.set_connected(state.node, false, Instant::now());
        if self.peers.is_empty() {
            self.isolated_since = Some(Instant::now());
            self.next_bootstrap = Instant::now() + BOOTSTRAP_RETRY;
        }
        if !*self.shutdown.borrow() {
            self.on_subject_lost(peer, state.node, state.addrs);
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info)
            }
            BehaviourEvent::KeepAlive(keepalive::Event::Answered { peer }) => {
                self.on_heartbeat(peer)
            }
            BehaviourEvent::KeepAlive(keepalive::Event::Silent { peer }) => self.on_silent(peer),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let acceptance = self.on_gossip(propagation_source, &message.data);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })
                if !self.pending_publish.is_empty() =>
            {
                self.retry_pending();
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        if let Some(response) = self.on_sync_request(peer, &request) {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .sync
                                .send_response(channel, response);
                        }
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        self.spread.exchange_done(request_id);
                        self.on_sync_response(peer, &response)
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            }) => {
                self.spread.exchange_done(request_id);
                tracing::debug!(%peer, %error, "sync request failed");
            }
            BehaviourEvent::Kademlia(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::Bootstrap(result),
                ..
            }) => {
                tracing::trace!(?result, "kademlia bootstrap step");
            }
            _ => {}
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let we_are_local = self.listen_addrs.iter().any(is_host_local);
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        // Loopback and wildcard addresses name the peer's own host; they are only
        // useful to us when we share that host (in-process tests, one-machine runs).
        let usable: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(|a| we_are_local || !is_host_local(a))
            .filter(|a| from_multiaddr(a).is_some())
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        for addr in usable {
            if !state.addrs.contains(&addr) && state.addrs.len() < MAX_ADDRS_PER_PEER {
                state.addrs.push(addr.clone());
            }
            self.swarm.behaviour_mut().kademlia.add_address(&peer, addr);
        }
    }

    fn on_gossip(&mut self, source: PeerId, data: &[u8]) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let now = Instant::now();
        let (rate, burst) = (
            self.limits.gossip_per_peer_per_sec,
            self.limits.gossip_per_peer_burst,
        );
        if let Some(state) = self.peers.get_mut(&source) {
            if !state.records.take(rate, burst, now) {
                self.table.counters.dropped_rate_limited += 1;
                return Ignore;
            }
        }
        if data.len() > MAX_GOSSIP_LEN {
            self.table.counters.dropped_oversized += 1;
            return Reject;
        }
        match GossipMessage::parse(data) {
            Err(_) => {
                self.table.counters.dropped_malformed += 1;
                Reject
            }
            Ok(GossipMessage::Record(bytes)) => match self.offer(bytes, None, Via::Gossip) {
                Ok(true) => Accept,
                Ok(false) => Ignore,
                Err(Refusal::Stale | Refusal::TableFull | Refusal::KeyConflict) => Ignore,
                Err(_) => Reject,
            },
            Ok(GossipMessage::Suspect { node, seq }) => match self.suspect_heard(node, seq, now) {
                SuspicionOutcome::Forward => Accept,
                SuspicionOutcome::Ignored => Ignore,
                SuspicionOutcome::RefuteSelf => {
                    self.refute();
                    Ignore
                }
            },
        }
    }

    /// Answers a suspicion of ourselves with a newer record (at most every 100 ms, so a
    /// flood of suspicions cannot make us flood records).
    fn refute(&mut self) {
        let now = Instant::now();
        if self
            .last_refutation
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.last_refutation = Some(now);
        self.table.counters.refutations_sent += 1;
        self.republish_own();
    }

    /// A peer holds us down at our current seq: others declared us failed while we were
    /// alive, and we missed the suspicion. We re-sign (at most once per
    /// [`DOWN_RESIGN_INTERVAL`]) and let the exchanges carry the newer record: every
    /// sync message holds it, and each node that held us down passes it on as news.
    /// No flood: a lying peer can make us sign, not load the overlay.
    fn declared_down(&mut self) {
        let now = Instant::now();
        if self
            .last_down_resign
            .is_some_and(|t| now.duration_since(t) < DOWN_RESIGN_INTERVAL)
        {
            return;
        }
        self.last_down_resign = Some(now);
        self.table.counters.refutations_sent += 1;
        let _ = self.resign(false);
    }

    /// Offers a record to the table; Ok(true) if it was new (worth forwarding). News
    /// (a node coming up or changing) that arrived by sync is queued to be pushed on.
    fn offer(&mut self, bytes: &[u8], bound_to: Option<NodeId>, via: Via) -> Result<bool, Refusal> {
        let now = Instant::now();
        match self.table.offer(bytes, bound_to, now, unix_ms())? {
            Accepted::Stored(event) => {
                if let Some(event) = event {
                    if via == Via::Sync {
                        self.spread.note_news(&event, now);
                    }
                    self.emit(event);
                }
                Ok(true)
            }
            Accepted::Duplicate | Accepted::Own => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_prefer_routable_addresses_and_skip_wildcards() {
        let addrs: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/198.18.0.1/tcp/7946",
            "/ip4/0.0.0.0/tcp/2",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(
            contacts_of(&addrs),
            vec![PeerAddr::Tcp("198.18.0.1:7946".parse().unwrap())]
        );
        assert_eq!(
            contacts_of(&addrs[..1]),
            vec![PeerAddr::Tcp("127.0.0.1:1".parse().unwrap())],
            "loopback when it is all there is"
        );
        let memory: Multiaddr = "/memory/9".parse().unwrap();
        assert_eq!(contacts_of(&[memory]), vec![PeerAddr::Memory(9)]);
    }
}
