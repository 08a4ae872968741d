//! The membership task: owns the swarm and the table, and runs one loop over
//! swarm events, handle commands, a timer and the shutdown signal.
//!
//! Failure detection, in the order it usually fires:
//! 1. a connection closes (the peer's process died: the kernel resets its
//!    sockets) or stops answering pings (`ping_timeout`), and we close it;
//! 2. we redial the peer at once; if that fails or takes longer than
//!    `probe_timeout`, the peer is down for us, and we gossip a suspicion;
//! 3. every node that hears the suspicion and has no first-hand evidence to the
//!    contrary gives the suspect `suspicion_timeout` to refute it with a newer
//!    record; a live suspect always hears its own suspicion and refutes, so a
//!    lying peer cannot evict anyone;
//! 4. as a backstop, a member with no connection and no fresh record for
//!    `record_ttl` expires.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::core::{ConnectedPoint, Transport as _};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{gossipsub, identify, kad, noise, ping, request_response, tcp, yamux};
use libp2p::{Multiaddr, PeerId, Swarm};
use rand::seq::IteratorRandom as _;
use tokio::sync::{mpsc, watch};

use super::behaviour::{Behaviour, BehaviourEvent, MEMBERSHIP_TOPIC};
use super::{from_multiaddr, is_host_local, peer_to_node, to_multiaddr};
use crate::membership::health::LocalHealth;
use crate::membership::identity::{NodeId, NodeIdentity};
use crate::membership::message::{GossipMessage, SyncRequest, SyncResponse, MAX_GOSSIP_LEN};
use crate::membership::record::{NodeInfo, NodeRecord, RecordError, VerifiedNodeRecord};
use crate::membership::status::MembershipStatus;
use crate::membership::table::{
    Accepted, MemberTable, MembershipEvent, Refusal, SuspicionOutcome, TableConfig,
};
use crate::membership::{Command, Limits, MembershipConfig, MembershipError, PeerAddr, Timing};

/// Timer period: the resolution of probe and suspicion deadlines.
const TICK: Duration = Duration::from_millis(100);
/// How often a node without connections redials its bootstrap addresses.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(2);
/// Most gossip messages waiting for a subscriber before the oldest is dropped.
const MAX_PENDING_PUBLISH: usize = 64;
/// Most listen addresses of one peer fed to Kademlia.
const MAX_ADDRS_PER_PEER: usize = 8;

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
    gossip: Bucket,
    syncs: Bucket,
    /// Last answered ping (or the connection's start).
    last_pong: Instant,
}

/// A redial of a node whose connection closed.
struct Probe {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    deadline: Instant,
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
    /// Nodes whose connection closed and that we are redialing.
    probes: HashMap<NodeId, Probe>,
    /// Whether we are running too late to trust our own timeouts.
    health: LocalHealth,
    /// Gossip messages that found no subscriber yet.
    pending_publish: VecDeque<Vec<u8>>,
    events: mpsc::Sender<MembershipEvent>,
    commands: mpsc::Receiver<Command>,
    shutdown: watch::Receiver<bool>,
    listen_addrs: Vec<Multiaddr>,
    next_refresh: Instant,
    next_sync: Instant,
    next_bootstrap: Instant,
    last_refutation: Option<Instant>,
    /// Set while we have no connection at all after having had some.
    isolated_since: Option<Instant>,
}

fn sign_own(
    identity: &NodeIdentity,
    info: &NodeInfo,
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
    }
    .sign(identity)
}

impl Driver {
    /// Builds the swarm, binds every listener and dials the bootstrap addresses.
    pub(crate) async fn new(
        config: MembershipConfig,
        events: mpsc::Sender<MembershipEvent>,
        commands: mpsc::Receiver<Command>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, Vec<PeerAddr>), MembershipError> {
        let MembershipConfig {
            identity,
            info,
            listen,
            bootstrap,
            timing,
            limits,
        } = config;
        let own = sign_own(&identity, &info, 0, false)?;
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
            // Ping detects dead connections; idle ones stay open so that a closed
            // connection always means something.
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .with_connection_timeout(timing.probe_timeout.max(Duration::from_secs(1)))
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
        // Wait until every listener is bound, so callers can hand our address to others.
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
        table.set_local_seq(own.seq());
        let now = Instant::now();
        let mut driver = Self {
            swarm,
            identity,
            topic,
            table,
            own,
            next_refresh: now + timing.refresh_interval,
            next_sync: now + timing.sync_interval,
            next_bootstrap: now,
            timing,
            limits,
            bootstrap: bootstrap.iter().map(to_multiaddr).collect(),
            peers: HashMap::new(),
            probes: HashMap::new(),
            health: LocalHealth::default(),
            pending_publish: VecDeque::new(),
            events,
            commands,
            shutdown,
            listen_addrs,
            last_refutation: None,
            isolated_since: None,
        };
        driver.dial_bootstrap();
        driver.publish_own();
        Ok((driver, bound))
    }

    /// Runs until the shutdown signal (or until every handle and the owner are gone).
    pub(crate) async fn run(mut self) {
        let mut timer = tokio::time::interval(TICK);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
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
        if let Ok(record) = sign_own(&self.identity, self.own.info(), self.own.seq(), true) {
            self.own = record;
            self.table.set_local_seq(self.own.seq());
            self.publish(GossipMessage::Record(self.own.bytes()).to_bytes());
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

    fn emit(&mut self, event: MembershipEvent) {
        if self.events.try_send(event).is_err() {
            self.table.counters.events_dropped += 1;
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
                let result = sign_own(&self.identity, &info, self.own.seq(), false).map(|r| {
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
            live_members: self.table.live_count(),
            table_entries: self.table.len(),
            counters: self.table.counters,
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

    /// Re-signs our record (new seq) and publishes it.
    fn republish_own(&mut self) {
        if let Ok(record) = sign_own(&self.identity, self.own.info(), self.own.seq(), false) {
            self.own = record;
            self.table.set_local_seq(self.own.seq());
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
        let degraded = self.health.degraded();
        let expired: Vec<NodeId> = self
            .probes
            .iter()
            .filter(|(_, probe)| now >= probe.deadline)
            .map(|(node, _)| *node)
            .collect();
        for node in expired {
            if degraded {
                // We may be the slow one: try again rather than accuse.
                self.table.counters.verdicts_deferred += 1;
                self.redial(node);
            } else {
                self.probe_failed(node);
            }
        }
        if !degraded {
            self.check_pings(now);
        }
        let events = self.table.tick(now, degraded);
        self.emit_all(events);
        if !self.pending_publish.is_empty() {
            self.retry_pending();
        }
        if now >= self.next_refresh {
            self.next_refresh = now + self.timing.refresh_interval;
            self.republish_own();
        }
        if now >= self.next_sync {
            self.next_sync = now + self.timing.sync_interval;
            let peer = self.peers.keys().choose(&mut rand::rng()).copied();
            if let Some(peer) = peer {
                self.send_sync(peer);
            }
        }
        if self.peers.is_empty() && now >= self.next_bootstrap {
            self.dial_bootstrap();
        }
    }

    /// Probes peers whose pings went unanswered for `ping_interval + ping_timeout`.
    /// (libp2p's ping forgives the first timeout and then waits for a new substream's
    /// negotiation to time out, which takes 10 s on a dead path; answered pings are
    /// the heartbeat we judge by instead.)
    fn check_pings(&mut self, now: Instant) {
        let limit = self.timing.ping_interval + self.timing.ping_timeout;
        let silent: Vec<(PeerId, NodeId, Vec<Multiaddr>)> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_pong) > limit)
            .filter(|(_, p)| self.table.is_up(&p.node) && !self.probes.contains_key(&p.node))
            .map(|(peer, p)| (*peer, p.node, p.addrs.clone()))
            .collect();
        for (peer, node, addrs) in silent {
            tracing::debug!(%peer, "pings unanswered: probing with a fresh connection");
            // Disconnect first: it aborts pending dials, and the probe's must survive.
            let _ = self.swarm.disconnect_peer_id(peer);
            self.start_probe(peer, node, addrs);
        }
    }

    fn send_sync(&mut self, peer: PeerId) {
        let request = SyncRequest::encode(self.own.bytes(), self.table.digest());
        self.swarm.behaviour_mut().sync.send_request(&peer, request);
    }

    /// Our redial of `node` failed or timed out: it is down from here; tell the others.
    fn probe_failed(&mut self, node: NodeId) {
        self.probes.remove(&node);
        if let Some((event, seq)) = self.table.unreachable(node) {
            tracing::debug!(node = %node.short(), "probe failed: peer down");
            self.emit(event);
            self.table.counters.suspicions_sent += 1;
            self.publish(GossipMessage::Suspect { node, seq }.to_bytes());
        }
    }

    fn start_probe(&mut self, peer: PeerId, node: NodeId, addrs: Vec<Multiaddr>) {
        if !self.table.is_up(&node) || self.probes.contains_key(&node) {
            return;
        }
        self.probes.insert(
            node,
            Probe {
                peer,
                addrs,
                deadline: Instant::now(),
            },
        );
        self.redial(node);
    }

    /// (Re)dials a probed node and restarts its probe deadline.
    fn redial(&mut self, node: NodeId) {
        let Some(probe) = self.probes.get_mut(&node) else {
            return;
        };
        probe.deadline = Instant::now() + self.timing.probe_timeout;
        // NotDialing, not Disconnected: after a ping failure the old connection may
        // still be closing while we need a fresh one.
        let opts = DialOpts::peer_id(probe.peer)
            .condition(PeerCondition::NotDialing)
            .addresses(probe.addrs.clone())
            .extend_addresses_through_behaviour()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(node = %node.short(), error = %e, "probe dial not started");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<super::behaviour::BehaviourEvent>) {
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
            } => {
                let node = peer_to_node(&peer);
                if let Some(node) = node.filter(|n| self.probes.contains_key(n)) {
                    if matches!(error, DialError::Aborted) {
                        // We cancelled it ourselves; the probe deadline still runs.
                    } else if self.health.degraded() {
                        // A timeout may be ours; the tick redials at the deadline.
                        tracing::debug!(%peer, %error, "probe dial failed while running late");
                    } else {
                        tracing::debug!(%peer, %error, "probe dial failed");
                        self.probe_failed(node);
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint, count: u32) {
        let Some(node) = peer_to_node(&peer) else {
            // Not an ed25519 identity: cannot be a slicenet node.
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        };
        let now = Instant::now();
        let dialed_addr = match endpoint {
            ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
            ConnectedPoint::Listener { .. } => None,
        };
        let limits = &self.limits;
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            node,
            addrs: Vec::new(),
            gossip: Bucket::new(limits.gossip_per_peer_burst, now),
            syncs: Bucket::new(limits.syncs_per_peer_per_sec.max(1.0) * 2.0, now),
            last_pong: now,
        });
        entry.last_pong = now;
        if let Some(addr) = dialed_addr {
            if !entry.addrs.contains(&addr) && entry.addrs.len() < MAX_ADDRS_PER_PEER {
                entry.addrs.push(addr.clone());
            }
            self.swarm.behaviour_mut().kademlia.add_address(&peer, addr);
        }
        self.probes.remove(&node);
        if let Some(event) = self.table.set_connected(node, true, now) {
            self.emit(event);
        }
        if self.isolated_since.take().is_some() {
            // Back from isolation (a partition, a network restart): others may have
            // declared us down and we heard none of their suspicions, so announce a
            // newer record.
            self.republish_own();
        }
        if count == 1 {
            // Exchange records at once: this is how a newcomer learns the membership
            // and how everyone learns the newcomer even before gossip meshes form.
            self.send_sync(peer);
            if self.bootstrap_pending() {
                let _ = self.swarm.behaviour_mut().kademlia.bootstrap();
            }
        }
    }

    /// Whether we have not yet run a Kademlia bootstrap with at least one peer.
    fn bootstrap_pending(&self) -> bool {
        self.peers.len() == 1
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
            self.start_probe(peer, state.node, state.addrs);
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info)
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => self.on_ping(peer, connection, result),
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
                    request_response::Message::Response { response, .. } => {
                        self.on_sync_response(peer, &response)
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer, error, ..
            }) => {
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
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        // Loopback and wildcard addresses name the peer's own host; they are only
        // useful to us when we share that host (in-process tests, one-machine runs).
        let we_are_local = self.listen_addrs.iter().any(is_host_local);
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

    fn on_ping(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        result: Result<Duration, ping::Failure>,
    ) {
        match (result, self.peers.get(&peer)) {
            (Ok(_), Some(_)) => {
                let now = Instant::now();
                let state = self.peers.get_mut(&peer).expect("matched above");
                state.last_pong = now;
                let node = state.node;
                self.table.heard_from(node, now);
            }
            (Err(failure), _) if self.health.degraded() => {
                // Our own lateness can time a ping out; the next ping decides.
                tracing::debug!(%peer, %failure, "ping failed while running late");
                self.table.counters.verdicts_deferred += 1;
            }
            (Err(failure), state) => {
                tracing::debug!(%peer, %failure, "ping failed: closing connection and probing");
                // Closing a connection over a dead path can take many seconds (the
                // muxer waits for its close to be acknowledged), so the probe starts
                // now, with a fresh dial, instead of at ConnectionClosed.
                if let Some(state) = state {
                    let (node, addrs) = (state.node, state.addrs.clone());
                    self.start_probe(peer, node, addrs);
                }
                self.swarm.close_connection(connection);
            }
            _ => {}
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
            if !state.gossip.take(rate, burst, now) {
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
            Ok(GossipMessage::Record(bytes)) => match self.offer(bytes, None) {
                Ok(true) => Accept,
                Ok(false) => Ignore,
                Err(Refusal::Stale | Refusal::TableFull | Refusal::KeyConflict) => Ignore,
                Err(_) => Reject,
            },
            Ok(GossipMessage::Suspect { node, seq }) => match self.table.suspect(node, seq, now) {
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

    /// Offers a record to the table; Ok(true) if it was new (worth forwarding).
    fn offer(&mut self, bytes: &[u8], bound_to: Option<NodeId>) -> Result<bool, Refusal> {
        match self
            .table
            .offer(bytes, bound_to, Instant::now(), unix_ms())?
        {
            Accepted::Stored(event) => {
                if let Some(event) = event {
                    self.emit(event);
                }
                Ok(true)
            }
            Accepted::Duplicate | Accepted::Own => Ok(false),
        }
    }

    fn on_sync_request(&mut self, peer: PeerId, request: &[u8]) -> Option<Vec<u8>> {
        let rate = self.limits.syncs_per_peer_per_sec;
        let state = self.peers.get_mut(&peer)?;
        let node = state.node;
        if !state.syncs.take(rate, rate.max(1.0) * 2.0, Instant::now()) {
            self.table.counters.dropped_rate_limited += 1;
            return None;
        }
        let Ok(request) = SyncRequest::parse(request) else {
            self.table.counters.dropped_malformed += 1;
            return None;
        };
        // The requester's own record must be signed by the requester itself.
        let _ = self.offer(request.own_record, Some(node));
        self.table.counters.syncs_served += 1;
        let newer = self.table.newer_than(request.digest());
        Some(SyncResponse::encode(self.own.bytes(), newer.into_iter()))
    }

    fn on_sync_response(&mut self, peer: PeerId, response: &[u8]) {
        let Some(node) = self.peers.get(&peer).map(|p| p.node) else {
            return;
        };
        let Ok(response) = SyncResponse::parse(response) else {
            self.table.counters.dropped_malformed += 1;
            return;
        };
        self.table.counters.syncs_completed += 1;
        let _ = self.offer(response.own_record, Some(node));
        for record in response.records {
            let _ = self.offer(record, None);
        }
    }
}
