//! Bulk dissemination of records over the sync protocol.
//!
//! Records travel in batches, never one gossip message per record per peer:
//! - *pull*: a node sends its digest (node id and seq of every entry) to a
//!   random connected peer, which answers with exactly the records the digest
//!   lacks. Each record reaches each node once this way. A node pulls every
//!   `sync_interval`, and every [`FAST_PULL`] while news keeps arriving;
//! - *push*: news (a node that came up or changed), learned by sync, is
//!   collected for [`PUSH_INTERVAL`] and pushed to [`PUSH_FANOUT`] random
//!   peers, which push it on in turn; so news spreads epidemically in batches
//!   while pulls fill whatever gaps pushes leave.
//!
//! Every sync request and response also carries the sender's own record, so
//! two nodes that talk always know each other. Urgent news that must reach
//! everyone within the suspicion timeout (refutations, leaves, changed
//! records, suspicions) goes over gossipsub instead (see the driver).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::seq::IteratorRandom as _;
use rand::Rng as _;

use super::{Driver, Via};
use crate::membership::identity::NodeId;
use crate::membership::message::{SyncRequest, SyncResponse};
use crate::membership::record::VerifiedNodeRecord;
use crate::membership::table::MembershipEvent;

/// News is collected this long before it is pushed, so it travels in batches.
const PUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Peers each batch of news is pushed to.
const PUSH_FANOUT: usize = 2;
/// Pull period while news keeps arriving (a node joining, or many joining).
const FAST_PULL: Duration = Duration::from_millis(300);
/// How long after the last news pulls stay fast.
const FAST_PULL_WINDOW: Duration = Duration::from_secs(2);

/// `period` give or take a fifth, so that nodes started together do not act in step.
pub(super) fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// News waiting to be pushed, and when to push and pull next.
pub(super) struct SpreadState {
    news: HashMap<NodeId, VerifiedNodeRecord>,
    next_push: Instant,
    next_pull: Instant,
    last_news: Option<Instant>,
}

impl SpreadState {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            news: HashMap::new(),
            next_push: now,
            next_pull: now + FAST_PULL,
            last_news: Some(now),
        }
    }

    /// Queues the record of a node that came up or changed, to be pushed on.
    pub(super) fn note_news(&mut self, event: &MembershipEvent, now: Instant) {
        if let MembershipEvent::PeerUp(record) | MembershipEvent::PeerUpdated(record) = event {
            self.news.insert(record.node_id(), record.clone());
            self.last_news = Some(now);
        }
    }

    fn pull_period(&self, now: Instant, steady: Duration) -> Duration {
        let fast = self
            .last_news
            .is_some_and(|t| now.duration_since(t) < FAST_PULL_WINDOW);
        jittered(if fast { FAST_PULL } else { steady })
    }
}

impl Driver {
    /// A first connection to `peer`: pull from it if we hardly know anyone yet or the
    /// connection is special (a bootstrap address, our way back from isolation).
    pub(super) fn on_first_connection(&mut self, peer: PeerId, special: bool) {
        if special || self.table.live_count() < 2 {
            self.send_pull(peer);
        }
    }

    /// Pushes collected news and pulls from a random peer when due.
    pub(super) fn spread_tick(&mut self, now: Instant) {
        if now >= self.spread.next_push && !self.spread.news.is_empty() {
            self.spread.next_push = now + PUSH_INTERVAL;
            self.push_news();
        }
        if now >= self.spread.next_pull {
            self.spread.next_pull = now + self.spread.pull_period(now, self.timing.sync_interval);
            let peer = self.peers.keys().choose(&mut rand::rng()).copied();
            if let Some(peer) = peer {
                self.send_pull(peer);
            }
        }
    }

    fn send_pull(&mut self, peer: PeerId) {
        let request = SyncRequest::encode_pull(self.own.bytes(), self.table.digest());
        self.table.counters.pulls_sent += 1;
        self.swarm.behaviour_mut().sync.send_request(&peer, request);
    }

    fn push_news(&mut self) {
        let news = std::mem::take(&mut self.spread.news);
        let targets: Vec<PeerId> = self
            .peers
            .keys()
            .copied()
            .choose_multiple(&mut rand::rng(), PUSH_FANOUT);
        if targets.is_empty() {
            return;
        }
        let request = SyncRequest::encode_push(self.own.bytes(), news.values().map(|r| r.bytes()));
        for peer in targets {
            self.table.counters.records_pushed += news.len() as u64;
            self.swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, request.clone());
        }
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
        let response = if request.pull {
            let newer = self.table.newer_than(request.digest());
            SyncResponse::encode(self.own.bytes(), newer.into_iter())
        } else {
            SyncResponse::encode(self.own.bytes(), std::iter::empty())
        };
        Some(response)
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
        let _ = self.offer(response.own_record, Some(node), Via::Sync);
        for record in response.records {
            let _ = self.offer(record, None, Via::Sync);
        }
    }
}
