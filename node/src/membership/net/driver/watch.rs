//! Failure detection: which nodes this node watches, how it notices that one
//! stopped, and what it tells the others.
//!
//! In the order it usually fires:
//! 1. our *subjects* are our successors on the monitoring rings
//!    ([`MonitorRings`]); we keep a connection to each (dialing the contact
//!    addresses in its signed record) and send it a heartbeat every
//!    `ping_interval`, which it echoes (see `keepalive`);
//! 2. a subject's connection closes (its process died: the kernel resets its
//!    sockets): we redial at once; if that fails or takes longer than
//!    `probe_timeout`, it is down for us and we gossip a suspicion;
//! 3. a subject stops echoing heartbeats for `ping_interval + ping_timeout` (a
//!    frozen host, a cut path): we gossip a suspicion at once and probe it with
//!    a fresh dial, whose failure makes it down for us too;
//! 4. every node that hears a suspicion and has no first-hand evidence to the
//!    contrary gives the suspect `suspicion_timeout` to refute it with a newer
//!    record; a live suspect always hears its own suspicion and refutes, so a
//!    lying peer cannot evict anyone;
//! 5. as a backstop, a member with no connection and no fresh record for
//!    `record_ttl` expires.
//!
//! A node that finds itself running late (see [`crate::membership::health`])
//! holds every verdict until it has caught up.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::DialError;
use libp2p::{Multiaddr, PeerId};

use super::{Driver, DIAL_TIMEOUT};
use crate::membership::identity::NodeId;
use crate::membership::message::GossipMessage;
use crate::membership::net::{node_to_peer, peer_to_node};
use crate::membership::ring::MonitorRings;
use crate::membership::table::{MembershipEvent, SuspicionOutcome};

/// How long after a refused dial of a subject (or one we had no address for) the
/// next one starts while members come and go; one that timed out is repeated at once.
const SUBJECT_REDIAL: Duration = Duration::from_secs(2);
/// The same once the overlay is quiet (see [`QUIET_AFTER`]).
const QUIET_SUBJECT_REDIAL: Duration = Duration::from_millis(500);
/// How long a node must stay our subject before we dial it. While an overlay
/// converges every new record can change our ring successors; dialing each one
/// at once would cost a handshake per change, most of them for connections
/// released moments later. At 1,000 nodes joining at once, 4 s instead of 1.5 s
/// cut the connections each node opened from 19 to 17. The price: a node that
/// joins a settled overlay is watched 4 s after its watchers learn of it (the
/// node it displaced on their rings is still watched by its other watchers).
const SUBJECT_SETTLE: Duration = Duration::from_millis(4000);
/// Once no member has come or gone and no peer pushed us news for this long, the
/// overlay is *quiet*, and a dial of a subject counts as failed after
/// `probe_timeout` instead of the swarm's connection timeout ([`DIAL_TIMEOUT`],
/// 5 s, which joiners of a busy overlay need to reach a bootstrap node): a
/// subject cut off by a partition before its watcher reached it would otherwise
/// need three such timeouts before anyone suspected it (a CI run saw none within
/// 15 s). While members come and go, a slow dial is more likely a busy peer than
/// a dead one, so it keeps the 5 s.
///
/// Dialing new subjects as soon as the overlay is quiet, instead of after
/// [`SUBJECT_SETTLE`], was tried: while a thousand nodes join on two cores, a
/// node often hears nothing for a second, and those early dials (most to
/// subjects the next records replace) took the connections opened per node from
/// 16 to 21-23 and convergence from 19 s to 21-28 s.
const QUIET_AFTER: Duration = Duration::from_millis(1000);
/// First dials of a subject that may fail before we suspect it (it may not be
/// listening yet, or its record may be ahead of its listener).
const SUBJECT_DIAL_ATTEMPTS: u32 = 3;

/// A node we watch.
struct Subject {
    peer: PeerId,
    /// Whether we have ever been connected to it (then a lost connection is probed).
    connected_once: bool,
    dial_failures: u32,
    /// When the next dial may start.
    next_dial: Instant,
    /// When our dial under way counts as failed (None: no dial of ours under way).
    dial_deadline: Option<Instant>,
}

/// A redial of a subject whose connection closed or went silent.
struct Probe {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    deadline: Instant,
}

/// Who we watch and who watches us, and the probes under way.
pub(super) struct WatchState {
    rings: MonitorRings,
    /// The rings changed since subjects and watchers were last derived from them.
    dirty: bool,
    subjects: HashMap<NodeId, Subject>,
    /// When a member last came up or went down.
    rings_changed_at: Instant,
    watchers: HashSet<NodeId>,
    probes: HashMap<NodeId, Probe>,
}

impl WatchState {
    pub(super) fn new(rings: MonitorRings) -> Self {
        Self {
            rings,
            dirty: true,
            subjects: HashMap::new(),
            rings_changed_at: Instant::now(),
            watchers: HashSet::new(),
            probes: HashMap::new(),
        }
    }

    /// Keeps the rings equal to the set of live members.
    pub(super) fn on_membership_event(&mut self, event: &MembershipEvent) {
        match event {
            MembershipEvent::PeerUp(record) => {
                self.rings.insert(record.node_id());
                self.dirty = true;
                self.rings_changed_at = Instant::now();
            }
            MembershipEvent::PeerDown { node, .. } => {
                self.rings.remove(node);
                self.probes.remove(node);
                self.dirty = true;
                self.rings_changed_at = Instant::now();
            }
            MembershipEvent::PeerUpdated(_) => {}
        }
    }

    pub(super) fn on_connected(&mut self, node: NodeId) {
        self.probes.remove(&node);
        if let Some(subject) = self.subjects.get_mut(&node) {
            subject.connected_once = true;
            subject.dial_failures = 0;
            subject.dial_deadline = None;
        }
    }

    /// Whether we watch `node` or it watches us.
    pub(super) fn is_neighbour(&self, node: &NodeId) -> bool {
        self.subjects.contains_key(node) || self.watchers.contains(node)
    }

    pub(super) fn subject_count(&self) -> usize {
        self.subjects.len()
    }

    pub(super) fn watcher_count(&self) -> usize {
        self.watchers.len()
    }
}

impl Driver {
    /// Re-derives subjects and watchers after membership changed: connections to both
    /// are kept open, new subjects are dialed on the next tick.
    pub(super) fn update_watch(&mut self, now: Instant) {
        if !self.watch.dirty {
            return;
        }
        self.watch.dirty = false;
        let subjects: HashSet<NodeId> = self.watch.rings.subjects().into_iter().collect();
        self.watch.watchers = self.watch.rings.watchers().into_iter().collect();
        self.watch
            .subjects
            .retain(|node, _| subjects.contains(node));
        let probes = &mut self.watch.probes;
        probes.retain(|node, _| subjects.contains(node));
        for node in subjects {
            let Some(peer) = node_to_peer(&node) else {
                continue;
            };
            let connected = self.peers.contains_key(&peer);
            self.watch.subjects.entry(node).or_insert(Subject {
                peer,
                connected_once: connected,
                dial_failures: 0,
                next_dial: now + SUBJECT_SETTLE,
                dial_deadline: None,
            });
        }
        let subjects = self.watch.subjects.values().map(|s| s.peer).collect();
        let watchers = self
            .watch
            .watchers
            .iter()
            .filter_map(node_to_peer)
            .collect();
        self.swarm
            .behaviour_mut()
            .keep_alive
            .set_neighbours(subjects, watchers);
    }

    /// Whether, for [`QUIET_AFTER`], no member came or went and no peer pushed us news.
    fn overlay_quiet(&self, now: Instant) -> bool {
        let last_change = self.spread.last_news().max(self.watch.rings_changed_at);
        now >= last_change + QUIET_AFTER
    }

    /// Probe deadlines, and dials of subjects we are not connected to: their deadlines
    /// and new ones.
    pub(super) fn watch_tick(&mut self, now: Instant, degraded: bool) {
        let expired: Vec<NodeId> = self
            .watch
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
        let late_dials: Vec<NodeId> = self
            .watch
            .subjects
            .iter()
            .filter(|(_, s)| s.dial_deadline.is_some_and(|d| now >= d))
            .map(|(node, _)| *node)
            .collect();
        for node in late_dials {
            self.subject_dial_failed(node, true, degraded);
        }
        let to_dial: Vec<NodeId> = self
            .watch
            .subjects
            .iter()
            .filter(|(node, s)| {
                now >= s.next_dial
                    && s.dial_deadline.is_none()
                    && !self.peers.contains_key(&s.peer)
                    && !self.watch.probes.contains_key(node)
            })
            .map(|(node, _)| *node)
            .collect();
        for node in to_dial {
            self.dial_subject(node, now);
        }
    }

    fn dial_subject(&mut self, node: NodeId, now: Instant) {
        let addrs = self.dial_addrs(&node, &[]);
        let limit = if self.overlay_quiet(now) {
            self.timing.probe_timeout
        } else {
            DIAL_TIMEOUT
        };
        let Some(subject) = self.watch.subjects.get_mut(&node) else {
            return;
        };
        if addrs.is_empty() {
            subject.next_dial = now + SUBJECT_REDIAL;
            return;
        }
        subject.dial_deadline = Some(now + limit);
        let opts = DialOpts::peer_id(subject.peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::trace!(node = %node.short(), error = %e, "subject dial not started");
        }
    }

    /// Where to dial `node`: the contacts in its signed record, then addresses we
    /// reached it at before.
    fn dial_addrs(&self, node: &NodeId, known: &[Multiaddr]) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self
            .table
            .record_of(node)
            .map(|r| self.reachable_contacts(r))
            .unwrap_or_default();
        for a in known {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        addrs
    }

    /// A dial failed: a probe's failure is a verdict; a subject that we could never
    /// reach is suspected after a few attempts.
    pub(super) fn on_dial_failed(&mut self, peer: PeerId, error: &DialError) {
        let Some(node) = peer_to_node(&peer) else {
            return;
        };
        if self.watch.probes.contains_key(&node) {
            if matches!(error, DialError::Aborted) {
                // We cancelled it ourselves; the probe deadline still runs.
            } else if self.health.degraded() {
                // A timeout may be ours; the tick redials at the deadline.
                tracing::debug!(%peer, %error, "probe dial failed while running late");
            } else {
                tracing::debug!(%peer, %error, "probe dial failed");
                self.probe_failed(node);
            }
            return;
        }
        if matches!(
            error,
            DialError::Aborted | DialError::DialPeerConditionFalse(_)
        ) {
            return;
        }
        tracing::debug!(%peer, %error, "subject dial failed");
        self.subject_dial_failed(node, false, self.health.degraded());
    }

    /// Our dial of subject `node` was refused or outlived its deadline
    /// (`timed_out`); after [`SUBJECT_DIAL_ATTEMPTS`] such failures in a row it is down
    /// for us. A dial that failed after its deadline was counted already. While we run
    /// late nothing counts: the slow one may be us.
    fn subject_dial_failed(&mut self, node: NodeId, timed_out: bool, degraded: bool) {
        let now = Instant::now();
        let quiet = self.overlay_quiet(now);
        let Some(subject) = self.watch.subjects.get_mut(&node) else {
            return;
        };
        if subject.dial_deadline.take().is_none() {
            return;
        }
        subject.next_dial = match (timed_out, quiet) {
            (true, _) => now,
            (false, true) => now + QUIET_SUBJECT_REDIAL,
            (false, false) => now + SUBJECT_REDIAL,
        };
        if degraded {
            self.table.counters.verdicts_deferred += 1;
            return;
        }
        subject.dial_failures += 1;
        if subject.dial_failures >= SUBJECT_DIAL_ATTEMPTS {
            subject.dial_failures = 0;
            self.probe_failed(node);
        }
    }

    /// The connection to `peer` is gone: a subject we were connected to is probed.
    pub(super) fn on_subject_lost(&mut self, peer: PeerId, node: NodeId, addrs: Vec<Multiaddr>) {
        if self
            .watch
            .subjects
            .get(&node)
            .is_some_and(|s| s.connected_once)
        {
            self.start_probe(peer, node, addrs);
        }
    }

    /// `peer` echoed our heartbeat for the first time on a connection, or again after a
    /// silence: it is alive.
    pub(super) fn on_heartbeat(&mut self, peer: PeerId) {
        if let Some(node) = self.peers.get(&peer).map(|p| p.node) {
            self.table.heard_from(node, Instant::now());
        }
    }

    /// A suspicion of `node` heard from others. If `node` is our subject and echoed a
    /// heartbeat lately, that first-hand evidence goes to the table first (healthy
    /// heartbeats raise no events, so the table learns of them only when it matters).
    pub(super) fn suspect_heard(
        &mut self,
        node: NodeId,
        seq: u64,
        now: Instant,
    ) -> SuspicionOutcome {
        let echo =
            node_to_peer(&node).and_then(|peer| self.swarm.behaviour().keep_alive.last_echo(&peer));
        let fresh = self.timing.ping_interval + self.timing.ping_timeout;
        if let Some(at) = echo.filter(|at| now.saturating_duration_since(*at) < fresh) {
            self.table.heard_from(node, at);
        }
        self.table.suspect(node, seq, now)
    }

    /// Our subject `peer` echoed no heartbeat for `ping_interval + ping_timeout` (a
    /// frozen host, a cut path; a dead path may take many seconds to close the
    /// connection): we gossip a suspicion at once and probe it. The keep-alive
    /// behaviour repeats this every period while the silence lasts, so a verdict held
    /// back while we ran late is taken once we caught up.
    pub(super) fn on_silent(&mut self, peer: PeerId) {
        if self.health.degraded() {
            self.table.counters.verdicts_deferred += 1;
            return;
        }
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let (node, addrs) = (state.node, state.addrs.clone());
        if !self.watch.subjects.contains_key(&node)
            || self.watch.probes.contains_key(&node)
            || !self.table.is_up(&node)
        {
            return;
        }
        tracing::debug!(node = %node.short(), "heartbeats unanswered: suspecting and probing");
        if let Some(seq) = self.table.raise_suspicion(node, Instant::now()) {
            self.table.counters.silences_detected += 1;
            self.table.counters.suspicions_sent += 1;
            self.publish(GossipMessage::Suspect { node, seq }.to_bytes());
        }
        // Disconnect first: it aborts pending dials, and the probe's must survive.
        let _ = self.swarm.disconnect_peer_id(peer);
        self.start_probe(peer, node, addrs);
    }

    fn start_probe(&mut self, peer: PeerId, node: NodeId, addrs: Vec<Multiaddr>) {
        if !self.table.is_up(&node) || self.watch.probes.contains_key(&node) {
            return;
        }
        let addrs = self.dial_addrs(&node, &addrs);
        self.watch.probes.insert(
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
        let Some(probe) = self.watch.probes.get_mut(&node) else {
            return;
        };
        probe.deadline = Instant::now() + self.timing.probe_timeout;
        // NotDialing, not Disconnected: after a silence the old connection may
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

    /// Our redial of `node` failed or timed out: it is down from here; tell the others.
    fn probe_failed(&mut self, node: NodeId) {
        self.watch.probes.remove(&node);
        if let Some((event, seq)) = self.table.unreachable(node) {
            tracing::debug!(node = %node.short(), "probe failed: peer down");
            self.emit(event);
            self.table.counters.suspicions_sent += 1;
            self.publish(GossipMessage::Suspect { node, seq }.to_bytes());
        }
    }
}
