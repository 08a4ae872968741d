//! Counters and the status snapshot: every message that is dropped is counted
//! by reason, cheaply enough to leave on (Firecracker's metrics habit).

use serde::Serialize;

use super::identity::NodeId;
use super::table::{Accepted, Refusal};

/// Monotonic counters of one membership instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Records verified and stored (new nodes, updates and refreshes).
    pub records_accepted: u64,
    /// Records we already held (normal: gossip and sync deliver copies).
    pub records_duplicate: u64,
    /// Record signatures this node checked with ed25519.
    pub signatures_verified: u64,
    /// Record signatures not checked again because a shared [`super::SignatureCache`]
    /// had verified exactly those bytes before (in-process simulations only).
    pub signatures_reused: u64,
    /// Records pushed to peers (news this node learned and passed on).
    pub records_pushed: u64,
    /// Pull syncs this node started (each carries a digest of its table).
    pub pulls_sent: u64,
    /// Suspicions received about any node.
    pub suspicions_received: u64,
    /// Suspicions we published after our own probe of a node failed.
    pub suspicions_sent: u64,
    /// Newer records we published to refute a suspicion of ourselves.
    pub refutations_sent: u64,
    /// Sync requests we answered.
    pub syncs_served: u64,
    /// Sync responses we processed.
    pub syncs_completed: u64,
    /// Suspicions raised by the silence of a subject we ping (before any probe).
    pub silences_detected: u64,
    /// Records or messages longer than the protocol allows.
    pub dropped_oversized: u64,
    /// Records or messages that do not parse.
    pub dropped_malformed: u64,
    /// Records whose signature does not verify under the node id they claim.
    pub dropped_bad_signature: u64,
    /// Records presented as a peer's own but about another node (wrong key binding).
    pub dropped_wrong_binding: u64,
    /// Records not newer than the one held, or signed too long ago (replays).
    pub dropped_stale: u64,
    /// Records signed in the future beyond the allowed clock skew.
    pub dropped_from_future: u64,
    /// New nodes refused because the table is full of live members.
    pub dropped_table_full: u64,
    /// Records claiming a WireGuard key that another live member holds.
    pub dropped_key_conflict: u64,
    /// Newer records carrying our own node id (another process uses our key).
    pub dropped_own_id_conflict: u64,
    /// Messages dropped because their sender exceeded its rate limit.
    pub dropped_rate_limited: u64,
    /// Events not delivered because the event receiver was full or gone.
    pub events_dropped: u64,
    /// Timeouts (ping, probe, suspicion, TTL) held back because this node was running late.
    pub verdicts_deferred: u64,
    /// Dials to peers that are not our monitoring neighbours, refused (Kademlia lookups
    /// run over existing connections instead of opening new ones).
    pub dials_refused: u64,
    /// Connections established (both directions); each cost a noise handshake.
    pub connections_opened: u64,
}

impl Counters {
    pub(crate) fn count_offer(&mut self, result: &Result<Accepted, Refusal>) {
        let counter = match result {
            Ok(Accepted::Stored(_)) => &mut self.records_accepted,
            Ok(Accepted::Duplicate | Accepted::Own) => &mut self.records_duplicate,
            Err(Refusal::Oversized) => &mut self.dropped_oversized,
            Err(Refusal::Malformed(_)) => &mut self.dropped_malformed,
            Err(Refusal::BadSignature) => &mut self.dropped_bad_signature,
            Err(Refusal::WrongBinding { .. }) => &mut self.dropped_wrong_binding,
            Err(Refusal::Stale) => &mut self.dropped_stale,
            Err(Refusal::FromFuture) => &mut self.dropped_from_future,
            Err(Refusal::TableFull) => &mut self.dropped_table_full,
            Err(Refusal::KeyConflict) => &mut self.dropped_key_conflict,
            Err(Refusal::OwnIdConflict) => &mut self.dropped_own_id_conflict,
        };
        *counter += 1;
    }

    /// Total of every `dropped_*` counter.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_oversized
            + self.dropped_malformed
            + self.dropped_bad_signature
            + self.dropped_wrong_binding
            + self.dropped_stale
            + self.dropped_from_future
            + self.dropped_table_full
            + self.dropped_key_conflict
            + self.dropped_own_id_conflict
            + self.dropped_rate_limited
    }
}

/// A snapshot of one membership instance.
#[derive(Debug, Clone, Serialize)]
pub struct MembershipStatus {
    /// Our node id.
    pub node_id: NodeId,
    /// The seq of our current record.
    pub record_seq: u64,
    /// Addresses we listen on (multiaddr text).
    pub listen_addrs: Vec<String>,
    /// Peers we hold at least one connection to.
    pub connected_peers: usize,
    /// Nodes this node watches (pings and keeps a connection to).
    pub subjects: usize,
    /// Nodes that watch this node, as far as it knows.
    pub watchers: usize,
    /// Live members, not counting ourselves.
    pub live_members: usize,
    /// Entries in the table, live or tombstoned.
    pub table_entries: usize,
    /// Input accepted and dropped, by reason.
    pub counters: Counters,
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
