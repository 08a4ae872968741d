//! Bulk dissemination of records over the sync protocol.
//!
//! Records travel in batches, never one gossip message per record per peer. A
//! node runs one *exchange* per round with a random connected peer: its request
//! carries the news it learned since its last exchange (push) and its digest
//! (node id and seq of every entry), and the answer carries exactly the records
//! the digest lacks (pull). So in every round each node both tells one peer
//! what is new and fills its own gaps from it, and news spreads epidemically
//! (push-pull rumour spreading: the informed set roughly triples per round while
//! it is small, and the last uninformed nodes pull it). A pull never returns a
//! record the digest holds, so duplicates come from pushes: about one per record
//! per node at 1,000 nodes. A round lasts [`FAST_ROUND`] while news keeps
//! arriving and `sync_interval` otherwise.
//!
//! One request per round instead of separate pushes and pulls matters at scale:
//! every request opens a stream, and at a thousand nodes per host the per-request
//! work, not the records, was what the CPU spent its time on.
//!
//! Every sync request and response also carries the sender's own record, so
//! two nodes that talk always know each other. Urgent news that must reach
//! everyone within the suspicion timeout (refutations, leaves, changed
//! records, suspicions) goes over gossipsub instead (see the driver).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::request_response::OutboundRequestId;
use libp2p::PeerId;
use rand::seq::IteratorRandom as _;
use rand::Rng as _;

use super::{Driver, Via};
use crate::membership::identity::NodeId;
use crate::membership::message::{SyncRequest, SyncResponse};
use crate::membership::record::VerifiedNodeRecord;
use crate::membership::table::MembershipEvent;

/// Exchange period while news keeps arriving (a node joining, or many joining).
const FAST_ROUND: Duration = Duration::from_millis(200);
/// How long after the last news exchanges stay fast. The last records of a
/// converging overlay are held by many nodes but missed by a few, which hear no
/// news of their own any more; they find them by pulling, so the window must
/// cover a few exchanges even when a loaded host answers each one late (1.5 s
/// per exchange at 1,000 nodes on 2 cores). With 6 s, the last 0.2 % of pairs
/// took 5 s at that size; with 12 s, 3.5 s.
const FAST_ROUND_WINDOW: Duration = Duration::from_secs(12);
/// A node has one exchange of its own under way at a time: a peer that answers
/// slowly (a bootstrap node that a thousand joiners exchange with) slows the rounds
/// of its partners down instead of piling up requests whose answers overlap. An
/// exchange unanswered this long no longer holds the next one back.
const EXCHANGE_PATIENCE: Duration = Duration::from_secs(3);

/// `period` give or take a fifth, so that nodes started together do not act in step.
pub(super) fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// News waiting to be pushed, and when the next exchange is due.
pub(super) struct SpreadState {
    news: HashMap<NodeId, VerifiedNodeRecord>,
    next_exchange: Instant,
    /// Our exchange under way, and when it was sent.
    in_flight: Option<(OutboundRequestId, Instant)>,
    last_news: Instant,
}

impl SpreadState {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            news: HashMap::new(),
            next_exchange: now + FAST_ROUND,
            in_flight: None,
            last_news: now,
        }
    }

    /// Queues the record of a node that came up or changed, to be pushed on.
    pub(super) fn note_news(&mut self, event: &MembershipEvent, now: Instant) {
        if let MembershipEvent::PeerUp(record) | MembershipEvent::PeerUpdated(record) = event {
            self.news.insert(record.node_id(), record.clone());
            self.last_news = now;
        }
    }

    /// A peer pushed us news (new to us or not): records are still spreading somewhere,
    /// so our rounds stay fast. A node that misses one last record hears no news of its
    /// own, but as long as others are still pushing it keeps pulling every round
    /// instead of every `sync_interval`.
    pub(super) fn note_activity(&mut self, now: Instant) {
        self.last_news = now;
    }

    /// When we last learned news or a peer last pushed us some.
    pub(super) fn last_news(&self) -> Instant {
        self.last_news
    }

    /// Our exchange `request` was answered or failed.
    pub(super) fn exchange_done(&mut self, request: OutboundRequestId) {
        if self.in_flight.is_some_and(|(id, _)| id == request) {
            self.in_flight = None;
        }
    }

    fn round(&self, now: Instant, steady: Duration) -> Duration {
        let fast = now.saturating_duration_since(self.last_news) < FAST_ROUND_WINDOW;
        jittered(if fast { FAST_ROUND } else { steady })
    }
}

impl Driver {
    /// A first connection to `peer`: exchange with it if we hardly know anyone yet or
    /// the connection is special (a bootstrap address, our way back from isolation).
    pub(super) fn on_first_connection(&mut self, peer: PeerId, special: bool) {
        if special || self.table.live_count() < 2 {
            self.send_exchange(peer);
        }
    }

    /// Runs an exchange with a random connected peer when one is due.
    pub(super) fn spread_tick(&mut self, now: Instant) {
        let waiting = self
            .spread
            .in_flight
            .is_some_and(|(_, sent)| now.duration_since(sent) < EXCHANGE_PATIENCE);
        if now < self.spread.next_exchange || waiting {
            return;
        }
        self.spread.next_exchange = now + self.spread.round(now, self.timing.sync_interval);
        let peer = self.peers.keys().choose(&mut rand::rng()).copied();
        if let Some(peer) = peer {
            self.send_exchange(peer);
        }
    }

    /// Sends `peer` our news and our digest; it answers with what the digest lacks.
    fn send_exchange(&mut self, peer: PeerId) {
        let news = std::mem::take(&mut self.spread.news);
        let request = SyncRequest::encode(
            true,
            self.own.bytes(),
            self.table.digest(),
            news.values().map(|r| r.bytes()),
        );
        self.table.counters.pulls_sent += 1;
        self.table.counters.records_pushed += news.len() as u64;
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        self.spread.in_flight = Some((id, Instant::now()));
    }

    /// Answers a sync request: stores what it carries; a pull is answered with the
    /// records the requester's digest lacks. None drops the request (rate limit,
    /// malformed, unknown peer).
    pub(super) fn on_sync_request(&mut self, peer: PeerId, request: &[u8]) -> Option<Vec<u8>> {
        let now = Instant::now();
        let rate = self.limits.syncs_per_peer_per_sec;
        let state = self.peers.get_mut(&peer)?;
        let node = state.node;
        if !state.syncs.take(rate, rate.max(1.0) * 2.0, now) {
            self.table.counters.dropped_rate_limited += 1;
            return None;
        }
        let Ok(request) = SyncRequest::parse(request) else {
            self.table.counters.dropped_malformed += 1;
            return None;
        };
        if !request.pushed.is_empty() {
            self.spread.note_activity(now);
        }
        // The requester's own record must be signed by the requester itself.
        let _ = self.offer(request.own_record, Some(node), Via::Sync);
        let (rate, burst) = (
            self.limits.gossip_per_peer_per_sec,
            self.limits.gossip_per_peer_burst,
        );
        for record in &request.pushed {
            // Pushed records cost a signature check each: they share the peer's
            // budget with its gossip.
            let allowed = self
                .peers
                .get_mut(&peer)
                .is_some_and(|p| p.records.take(rate, burst, now));
            if !allowed {
                self.table.counters.dropped_rate_limited += 1;
                continue;
            }
            let _ = self.offer(record, None, Via::Sync);
        }
        self.table.counters.syncs_served += 1;
        // Its own record brought no newer seq: if we declared it failed at this one
        // (even if its connection brought it back up here since), it must hear so.
        let failed_at = self.table.failed_at(&node);
        let newer = if request.pull {
            self.table.newer_than(request.digest())
        } else {
            Vec::new()
        };
        Some(SyncResponse::encode(
            self.own.bytes(),
            newer.into_iter(),
            failed_at,
        ))
    }

    pub(super) fn on_sync_response(&mut self, peer: PeerId, response: &[u8]) {
        let Some(node) = self.peers.get(&peer).map(|p| p.node) else {
            return;
        };
        let Ok(response) = SyncResponse::parse(response) else {
            self.table.counters.dropped_malformed += 1;
            return;
        };
        self.table.counters.syncs_completed += 1;
        if response
            .requester_down
            .is_some_and(|seq| seq >= self.own.seq())
        {
            self.declared_down();
        }
        let _ = self.offer(response.own_record, Some(node), Via::Sync);
        for record in response.records {
            let _ = self.offer(record, None, Via::Sync);
        }
    }
}
