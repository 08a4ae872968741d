//! The membership table: which nodes exist, their latest verified record, and
//! whether each is up. Pure state, no I/O (the network driver feeds it), so
//! every rule about accepting records and declaring failures is tested here.
//!
//! Rules that keep a hostile peer from doing damage:
//! - cheap checks first (size, format, staleness, binding, room in the table),
//!   the signature last, so junk costs little CPU;
//! - a record replaces another of the same node only with a higher seq, and a
//!   record older than `max_record_age` is refused, so replays do nothing;
//! - the table is bounded; when full, only Down tombstones are evicted, never a
//!   live member, so flooding new identities cannot push anyone out;
//! - a suspicion never removes a node by itself: the node gets
//!   `suspicion_timeout` to refute it with a newer record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::identity::{NodeId, WgPublicKey};
use super::record::{NodeRecord, NodeRecordPacket, RecordError, VerifiedNodeRecord};
use super::sigcache::SignatureCache;
use super::status::Counters;

/// How often [`MemberTable::tick`] looks for expired members when no suspicion is due.
const EXPIRY_SCAN_PERIOD: Duration = Duration::from_secs(1);

/// Timing and size limits of the table.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Most nodes (live or tombstoned) the table holds.
    pub max_members: usize,
    /// A member with no direct connection and no new record for this long is declared down.
    pub record_ttl: Duration,
    /// How long a suspected member has to refute a suspicion.
    pub suspicion_timeout: Duration,
    /// Records signed longer ago than this are refused (they cannot revive anyone).
    pub max_record_age: Duration,
    /// Records signed further than this in the future are refused.
    pub max_clock_skew: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            max_members: 10_000,
            record_ttl: Duration::from_secs(60),
            suspicion_timeout: Duration::from_millis(1000),
            max_record_age: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(30),
        }
    }
}

/// Why a member is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    /// It announced it was leaving (graceful shutdown).
    Left,
    /// Our connection to it closed or stopped echoing heartbeats, and redialing it failed.
    Unreachable,
    /// Another node could not reach it and it did not refute within the suspicion timeout.
    Unrefuted,
    /// Nothing was heard from it (no record, no connection) for the record TTL.
    Expired,
}

/// Whether a member is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum MemberState {
    /// Live: recently heard from.
    Up,
    /// Failed or gone; the entry stays as a tombstone so replays cannot revive it.
    Down(DownReason),
}

/// A change in membership, delivered to the node manager in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node became a live member (first seen, or back after being down).
    PeerUp(VerifiedNodeRecord),
    /// A live member published a record with different content.
    PeerUpdated(VerifiedNodeRecord),
    /// A member failed or left.
    PeerDown {
        /// The node.
        node: NodeId,
        /// Why it is considered down.
        reason: DownReason,
    },
}

/// A snapshot of one member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its latest verified record.
    pub record: VerifiedNodeRecord,
    /// Up or down.
    pub state: MemberState,
    /// Whether this node holds a direct connection to it.
    pub connected: bool,
    /// Time since it was last heard from (record, ping or connection).
    pub last_heard: Duration,
}

/// Why a record was refused, one counter each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than any valid record.
    Oversized,
    /// Not a well-formed record.
    Malformed(RecordError),
    /// Signature does not verify under the claimed node id.
    BadSignature,
    /// A record presented as a peer's own, but about another node.
    WrongBinding {
        /// The authenticated peer.
        expected: NodeId,
        /// The node the record is about.
        claimed: NodeId,
    },
    /// Not newer than what we hold, or signed too long ago (replay).
    Stale,
    /// Signed in the future beyond the allowed clock skew.
    FromFuture,
    /// A new node while the table is full of live members.
    TableFull,
    /// Claims a WireGuard key another live member already holds.
    KeyConflict,
    /// A newer record with our own node id: another process runs with our key.
    OwnIdConflict,
}

/// What happened to an offered record that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Already held (same seq): normal in gossip, nothing to do.
    Duplicate,
    /// Our own record came back to us.
    Own,
    /// Stored; the event (if any) must be delivered, and `newer` tells gossip to forward it.
    Stored(Option<MembershipEvent>),
}

/// What a suspicion about a node asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspicionOutcome {
    /// Nothing to do and nothing to forward (unknown node, or already refuted).
    Ignored,
    /// The suspicion is about us: publish a newer record to refute it.
    RefuteSelf,
    /// Forward the suspicion; unless we hold first-hand evidence that the node is up,
    /// it now has `suspicion_timeout` to refute before we declare it down.
    Forward,
}

struct Entry {
    record: VerifiedNodeRecord,
    state: MemberState,
    connected: bool,
    last_heard: Instant,
    refute_by: Option<Instant>,
    /// We had declared it failed and took it back because it connected to us: others
    /// may still hold it down, so it must re-sign (see [`MemberTable::failed_at`]).
    revived: bool,
}

/// The membership table of one node.
pub struct MemberTable {
    local: NodeId,
    local_seq: u64,
    config: TableConfig,
    entries: HashMap<NodeId, Entry>,
    wireguard_owner: HashMap<WgPublicKey, NodeId>,
    /// Verified signatures shared with other tables (in-process simulations), if any.
    signatures: Option<Arc<SignatureCache>>,
    /// Earliest suspicion deadline, so ticks scan the table only when something is due.
    next_refute_by: Option<Instant>,
    next_expiry_scan: Option<Instant>,
    /// Counters of accepted and refused input.
    pub counters: Counters,
}

impl MemberTable {
    /// An empty table for the node `local`.
    pub fn new(local: NodeId, config: TableConfig) -> Self {
        Self {
            local,
            local_seq: 0,
            config,
            entries: HashMap::new(),
            wireguard_owner: HashMap::new(),
            signatures: None,
            next_refute_by: None,
            next_expiry_scan: None,
            counters: Counters::default(),
        }
    }

    /// Lets this table skip the signature check of record bytes that verified before
    /// (in this table or in any other sharing `cache`).
    pub fn set_signature_cache(&mut self, cache: Arc<SignatureCache>) {
        self.signatures = Some(cache);
    }

    /// Tells the table the seq of our own latest record (to recognise echoes and conflicts).
    pub fn set_local_seq(&mut self, seq: u64) {
        self.local_seq = seq;
    }

    /// Offers an encoded record from the network. `bound_to` is the authenticated peer that
    /// presented it as its own record, if it did; `wall_ms` is the local unix time.
    pub fn offer(
        &mut self,
        bytes: &[u8],
        bound_to: Option<NodeId>,
        now: Instant,
        wall_ms: u64,
    ) -> Result<Accepted, Refusal> {
        let result = self.offer_inner(bytes, bound_to, now, wall_ms);
        self.counters.count_offer(&result);
        result
    }

    fn offer_inner(
        &mut self,
        bytes: &[u8],
        bound_to: Option<NodeId>,
        now: Instant,
        wall_ms: u64,
    ) -> Result<Accepted, Refusal> {
        let packet = NodeRecordPacket::new_checked(bytes).map_err(|e| match e {
            RecordError::Oversized { .. } => Refusal::Oversized,
            e => Refusal::Malformed(e),
        })?;
        // A copy of a record we hold (most records pushed to a converging node are)
        // is recognised by its bytes alone, before any field is parsed.
        let claimed = packet.node_id();
        let held = self.entries.get(&claimed).map(|e| e.record.bytes());
        if held == Some(bytes) && bound_to.is_none_or(|expected| expected == claimed) {
            return Ok(Accepted::Duplicate);
        }
        let record = NodeRecord::parse(&packet).map_err(Refusal::Malformed)?;
        if let Some(expected) = bound_to {
            if record.node_id != expected {
                return Err(Refusal::WrongBinding {
                    expected,
                    claimed: record.node_id,
                });
            }
        }
        if record.node_id == self.local {
            return if record.seq > self.local_seq {
                Err(Refusal::OwnIdConflict)
            } else {
                Ok(Accepted::Own)
            };
        }
        let existing = self.entries.get(&record.node_id);
        if let Some(entry) = existing {
            if record.seq == entry.record.seq() && bytes == entry.record.bytes() {
                return Ok(Accepted::Duplicate);
            }
            if record.seq <= entry.record.seq() {
                return Err(Refusal::Stale);
            }
        }
        let skew = self.config.max_clock_skew.as_millis() as u64;
        let max_age = self.config.max_record_age.as_millis() as u64;
        if record.timestamp_ms > wall_ms.saturating_add(skew) {
            return Err(Refusal::FromFuture);
        }
        if record.timestamp_ms.saturating_add(max_age) < wall_ms {
            return Err(Refusal::Stale);
        }
        if existing.is_none() && !self.make_room() {
            return Err(Refusal::TableFull);
        }
        let verified = match &self.signatures {
            Some(cache) => cache
                .verify_parsed(&packet, record)
                .map(|(verified, reused)| {
                    if reused {
                        self.counters.signatures_reused += 1;
                    } else {
                        self.counters.signatures_verified += 1;
                    }
                    verified
                }),
            None => {
                self.counters.signatures_verified += 1;
                VerifiedNodeRecord::verify_parsed(&packet, record)
            }
        }
        .map_err(|_| Refusal::BadSignature)?;
        let node = verified.node_id();
        let key = verified.info().wireguard_key;
        if let Some(owner) = self.wireguard_owner.get(&key) {
            let owner_up = self
                .entries
                .get(owner)
                .is_some_and(|e| e.state == MemberState::Up);
            if *owner != node && owner_up {
                return Err(Refusal::KeyConflict);
            }
        }
        Ok(Accepted::Stored(self.store(verified, now)))
    }

    /// Makes room for one new entry by evicting the oldest tombstone; false when all are live.
    fn make_room(&mut self) -> bool {
        if self.entries.len() < self.config.max_members {
            return true;
        }
        let oldest_tombstone = self
            .entries
            .iter()
            .filter(|(_, e)| e.state != MemberState::Up)
            .min_by_key(|(_, e)| e.last_heard)
            .map(|(id, _)| *id);
        match oldest_tombstone {
            Some(id) => {
                self.remove(&id);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, node: &NodeId) {
        if let Some(entry) = self.entries.remove(node) {
            let key = entry.record.info().wireguard_key;
            if self.wireguard_owner.get(&key) == Some(node) {
                self.wireguard_owner.remove(&key);
            }
        }
    }

    fn store(&mut self, record: VerifiedNodeRecord, now: Instant) -> Option<MembershipEvent> {
        let node = record.node_id();
        let leaving = record.record().leaving;
        let key = record.info().wireguard_key;
        if let Some(old) = self.entries.get(&node) {
            let old_key = old.record.info().wireguard_key;
            if old_key != key && self.wireguard_owner.get(&old_key) == Some(&node) {
                self.wireguard_owner.remove(&old_key);
            }
        }
        self.wireguard_owner.insert(key, node);
        let new_state = if leaving {
            MemberState::Down(DownReason::Left)
        } else {
            MemberState::Up
        };
        let previous = self.entries.insert(
            node,
            Entry {
                record: record.clone(),
                state: new_state,
                connected: false,
                last_heard: now,
                refute_by: None,
                revived: false,
            },
        );
        let (was_up, changed) = match &previous {
            Some(old) => (
                old.state == MemberState::Up,
                old.record.info() != record.info(),
            ),
            None => (false, true),
        };
        if let Some(old) = previous {
            self.entries
                .get_mut(&node)
                .expect("just inserted")
                .connected = old.connected;
        }
        match (was_up, leaving) {
            (true, true) => Some(MembershipEvent::PeerDown {
                node,
                reason: DownReason::Left,
            }),
            (false, true) => None,
            (false, false) => Some(MembershipEvent::PeerUp(record)),
            (true, false) => changed.then_some(MembershipEvent::PeerUpdated(record)),
        }
    }

    /// Handles a suspicion that `node` was unreachable at `seq`.
    pub fn suspect(&mut self, node: NodeId, seq: u64, now: Instant) -> SuspicionOutcome {
        self.counters.suspicions_received += 1;
        if node == self.local {
            return if seq >= self.local_seq {
                SuspicionOutcome::RefuteSelf
            } else {
                SuspicionOutcome::Ignored
            };
        }
        let timeout = self.config.suspicion_timeout;
        let Some(entry) = self.entries.get_mut(&node) else {
            return SuspicionOutcome::Ignored;
        };
        if seq < entry.record.seq() {
            // Already refuted: the suspect published a newer record since.
            return SuspicionOutcome::Ignored;
        }
        let first_hand = entry.connected && now.duration_since(entry.last_heard) < timeout;
        if entry.state == MemberState::Up && !first_hand && entry.refute_by.is_none() {
            let deadline = now + timeout;
            entry.refute_by = Some(deadline);
            self.next_refute_by = Some(self.next_refute_by.map_or(deadline, |d| d.min(deadline)));
        }
        // Forwarded even when we do not believe it: the suspect's own neighbours hold
        // first-hand evidence, and if they swallowed the suspicion the suspect would
        // never hear it and never refute.
        SuspicionOutcome::Forward
    }

    /// We noticed `node` went silent: like a suspicion heard from others, it gets
    /// `suspicion_timeout` to refute. Returns the seq to name in the suspicion we gossip
    /// (None if it is not a live member).
    pub fn raise_suspicion(&mut self, node: NodeId, now: Instant) -> Option<u64> {
        let entry = self.entries.get_mut(&node)?;
        if entry.state != MemberState::Up {
            return None;
        }
        if entry.refute_by.is_none() {
            let deadline = now + self.config.suspicion_timeout;
            entry.refute_by = Some(deadline);
            self.next_refute_by = Some(self.next_refute_by.map_or(deadline, |d| d.min(deadline)));
        }
        Some(entry.record.seq())
    }

    /// Our own probe of `node` failed: it is down from here. Returns the seq it was at.
    pub fn unreachable(&mut self, node: NodeId) -> Option<(MembershipEvent, u64)> {
        let entry = self.entries.get_mut(&node)?;
        entry.connected = false;
        if entry.state != MemberState::Up {
            return None;
        }
        entry.state = MemberState::Down(DownReason::Unreachable);
        entry.refute_by = None;
        Some((
            MembershipEvent::PeerDown {
                node,
                reason: DownReason::Unreachable,
            },
            entry.record.seq(),
        ))
    }

    /// Records whether we hold a direct connection to `node`. A new authenticated
    /// connection is first-hand proof of life: a member we had declared down (for any
    /// reason but leaving) is up again.
    pub fn set_connected(
        &mut self,
        node: NodeId,
        connected: bool,
        now: Instant,
    ) -> Option<MembershipEvent> {
        let entry = self.entries.get_mut(&node)?;
        entry.connected = connected;
        if !connected {
            return None;
        }
        entry.last_heard = now;
        entry.refute_by = None;
        match entry.state {
            MemberState::Down(reason) if reason != DownReason::Left => {
                entry.state = MemberState::Up;
                entry.revived = true;
                Some(MembershipEvent::PeerUp(entry.record.clone()))
            }
            _ => None,
        }
    }

    /// First-hand evidence that `node` was alive at `at` (a heartbeat answered): clears
    /// our suspicion of it.
    pub fn heard_from(&mut self, node: NodeId, at: Instant) {
        if let Some(entry) = self.entries.get_mut(&node) {
            if entry.state == MemberState::Up {
                entry.last_heard = entry.last_heard.max(at);
                entry.refute_by = None;
            }
        }
    }

    /// Applies timeouts: unrefuted suspicions and expired records. Drops old tombstones.
    /// With `defer` (this node is running late) no member is declared down.
    /// Cheap when nothing is due: the table is scanned only when a suspicion deadline
    /// has passed or, for expiries, once per second.
    pub fn tick(&mut self, now: Instant, defer: bool) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        let refute_due = self.next_refute_by.is_some_and(|t| now >= t);
        let expiry_due = self.next_expiry_scan.is_none_or(|t| now >= t);
        if !refute_due && !expiry_due {
            return events;
        }
        if expiry_due {
            self.next_expiry_scan = Some(now + EXPIRY_SCAN_PERIOD);
        }
        let ttl = self.config.record_ttl;
        let tombstone_ttl = self.config.max_record_age + self.config.max_clock_skew;
        let mut forget = Vec::new();
        let mut next_refute_by: Option<Instant> = None;
        for (node, entry) in &mut self.entries {
            let silent_for = now.duration_since(entry.last_heard);
            let reason = match entry.state {
                MemberState::Up if entry.refute_by.is_some_and(|t| now >= t) => {
                    DownReason::Unrefuted
                }
                MemberState::Up if expiry_due && !entry.connected && silent_for > ttl => {
                    DownReason::Expired
                }
                MemberState::Up => {
                    if let Some(t) = entry.refute_by {
                        next_refute_by = Some(next_refute_by.map_or(t, |d| d.min(t)));
                    }
                    continue;
                }
                MemberState::Down(_) => {
                    if expiry_due && silent_for > tombstone_ttl {
                        forget.push(*node);
                    }
                    continue;
                }
            };
            if defer {
                self.counters.verdicts_deferred += 1;
                // Still due: look again at the next tick.
                next_refute_by = Some(now);
                continue;
            }
            entry.state = MemberState::Down(reason);
            entry.refute_by = None;
            // Tombstone age counts from the moment it went down.
            entry.last_heard = now;
            events.push(MembershipEvent::PeerDown {
                node: *node,
                reason,
            });
        }
        self.next_refute_by = next_refute_by;
        for node in forget {
            self.remove(&node);
        }
        events
    }

    /// Whether `node` is a live member.
    pub fn is_up(&self, node: &NodeId) -> bool {
        self.entries
            .get(node)
            .is_some_and(|e| e.state == MemberState::Up)
    }

    /// The seq at which we declared `node` failed (not left), if its record has not
    /// changed since, even if it has connected to us again since: a node declared
    /// failed while it was alive stays down wherever that verdict reached until it
    /// re-signs, so when it talks to us it must hear this.
    pub fn failed_at(&self, node: &NodeId) -> Option<u64> {
        let entry = self.entries.get(node)?;
        match entry.state {
            MemberState::Down(DownReason::Left) => None,
            MemberState::Up if !entry.revived => None,
            MemberState::Up | MemberState::Down(_) => Some(entry.record.seq()),
        }
    }

    /// The record held for `node` (live or tombstoned).
    pub fn record_of(&self, node: &NodeId) -> Option<&VerifiedNodeRecord> {
        self.entries.get(node).map(|e| &e.record)
    }

    /// The seq of the record held for `node`.
    pub fn seq_of(&self, node: &NodeId) -> Option<u64> {
        self.entries.get(node).map(|e| e.record.seq())
    }

    /// Snapshot of every entry (live members and tombstones).
    pub fn members(&self, now: Instant) -> Vec<Member> {
        let mut out: Vec<Member> = self
            .entries
            .values()
            .map(|e| Member {
                record: e.record.clone(),
                state: e.state,
                connected: e.connected,
                last_heard: now.duration_since(e.last_heard),
            })
            .collect();
        out.sort_by_key(|m| m.record.node_id());
        out
    }

    /// Number of live members (not counting ourselves).
    pub fn live_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.state == MemberState::Up)
            .count()
    }

    /// Number of entries, live or tombstoned.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (node, seq) of every entry, for a sync request.
    pub fn digest(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().map(|(id, e)| (*id, e.record.seq()))
    }

    /// Records of live members that a peer with `digest` lacks or holds older versions of.
    pub fn newer_than(&self, digest: impl Iterator<Item = (NodeId, u64)>) -> Vec<&[u8]> {
        let known: HashMap<NodeId, u64> = digest.collect();
        self.entries
            .iter()
            .filter(|(id, e)| {
                e.state == MemberState::Up && known.get(id).is_none_or(|&s| s < e.record.seq())
            })
            .map(|(_, e)| e.record.bytes())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::identity::NodeIdentity;
    use crate::membership::record::{Capacity, GeoLocation, NodeInfo};
    use std::net::Ipv4Addr;

    const WALL: u64 = 1_800_000_000_000;

    fn info(wg: u8) -> NodeInfo {
        NodeInfo {
            site: "site".into(),
            region: "eu".into(),
            location: GeoLocation::default(),
            capacity: Capacity::default(),
            wireguard_key: WgPublicKey::from_bytes([wg; 32]),
            tunnel_addr: Ipv4Addr::new(198, 19, 255, wg),
            underlay: vec![],
            software_version: "test".into(),
        }
    }

    fn signed(id: &NodeIdentity, seq: u64, wg: u8) -> Vec<u8> {
        signed_at(id, seq, wg, WALL, false)
    }

    fn signed_at(id: &NodeIdentity, seq: u64, wg: u8, ts: u64, leaving: bool) -> Vec<u8> {
        NodeRecord {
            node_id: id.node_id(),
            seq,
            timestamp_ms: ts,
            leaving,
            info: info(wg),
            contacts: vec![],
        }
        .sign(id)
        .unwrap()
        .bytes()
        .to_vec()
    }

    fn table() -> MemberTable {
        MemberTable::new(NodeIdentity::generate().node_id(), TableConfig::default())
    }

    #[test]
    fn failed_members_are_told_apart_from_leavers() {
        let mut t = table();
        let now = Instant::now();
        let (failed, left) = (NodeIdentity::generate(), NodeIdentity::generate());
        t.offer(&signed(&failed, 5, 1), None, now, WALL).unwrap();
        assert_eq!(t.failed_at(&failed.node_id()), None, "up");
        assert!(t.unreachable(failed.node_id()).is_some());
        assert_eq!(t.failed_at(&failed.node_id()), Some(5));
        assert!(
            t.set_connected(failed.node_id(), true, now).is_some(),
            "revived"
        );
        assert_eq!(
            t.failed_at(&failed.node_id()),
            Some(5),
            "still failed elsewhere"
        );
        t.offer(&signed(&failed, 6, 1), None, now, WALL).unwrap();
        assert_eq!(t.failed_at(&failed.node_id()), None, "re-signed");
        t.offer(&signed(&left, 1, 2), None, now, WALL).unwrap();
        t.offer(&signed_at(&left, 2, 2, WALL, true), None, now, WALL)
            .unwrap();
        assert!(!t.is_up(&left.node_id()));
        assert_eq!(t.failed_at(&left.node_id()), None, "it left");
    }

    #[test]
    fn a_held_copy_is_a_duplicate_only_from_where_it_may_come() {
        let mut t = table();
        let now = Instant::now();
        let (owner, other) = (NodeIdentity::generate(), NodeIdentity::generate());
        let record = signed(&owner, 1, 1);
        assert!(matches!(
            t.offer(&record, None, now, WALL),
            Ok(Accepted::Stored(_))
        ));
        assert!(matches!(
            t.offer(&record, Some(other.node_id()), now, WALL),
            Err(Refusal::WrongBinding { .. })
        ));
        assert_eq!(
            t.offer(&record, Some(owner.node_id()), now, WALL),
            Ok(Accepted::Duplicate)
        );
        assert_eq!(t.offer(&record, None, now, WALL), Ok(Accepted::Duplicate));
    }

    #[test]
    fn new_node_comes_up_and_newer_content_updates_it() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        let up = t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        assert!(matches!(
            up,
            Accepted::Stored(Some(MembershipEvent::PeerUp(_)))
        ));
        assert_eq!(
            t.offer(&signed(&a, 1, 1), None, now, WALL),
            Ok(Accepted::Duplicate)
        );
        // Same content, new seq (a refresh): stored silently.
        assert_eq!(
            t.offer(&signed(&a, 2, 1), None, now, WALL),
            Ok(Accepted::Stored(None))
        );
        let updated = t.offer(&signed(&a, 3, 2), None, now, WALL).unwrap();
        assert!(matches!(
            updated,
            Accepted::Stored(Some(MembershipEvent::PeerUpdated(_)))
        ));
        assert_eq!(t.counters.records_accepted, 3);
        assert_eq!(t.counters.records_duplicate, 1);
    }

    #[test]
    fn replayed_and_stale_records_are_refused_and_counted() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        t.offer(&signed(&a, 5, 1), None, now, WALL).unwrap();
        assert_eq!(
            t.offer(&signed(&a, 4, 1), None, now, WALL),
            Err(Refusal::Stale)
        );
        let old = signed_at(&NodeIdentity::generate(), 9, 3, WALL - 61_000, false);
        assert_eq!(t.offer(&old, None, now, WALL), Err(Refusal::Stale));
        let future = signed_at(&NodeIdentity::generate(), 9, 4, WALL + 31_000, false);
        assert_eq!(t.offer(&future, None, now, WALL), Err(Refusal::FromFuture));
        assert_eq!(t.counters.dropped_stale, 2);
        assert_eq!(t.counters.dropped_from_future, 1);
        assert_eq!(t.live_count(), 1);
    }

    #[test]
    fn forged_and_misbound_records_are_refused_and_counted() {
        let mut t = table();
        let now = Instant::now();
        let victim = NodeIdentity::generate();
        let attacker = NodeIdentity::generate();
        let mut forged = signed(&attacker, 1, 1);
        forged[18..50].copy_from_slice(victim.node_id().as_bytes());
        assert_eq!(
            t.offer(&forged, None, now, WALL),
            Err(Refusal::BadSignature)
        );
        // A valid record of the attacker, presented by the victim's connection.
        let misbound = signed(&attacker, 1, 1);
        assert!(matches!(
            t.offer(&misbound, Some(victim.node_id()), now, WALL),
            Err(Refusal::WrongBinding { .. })
        ));
        assert_eq!(
            t.offer(&[0u8; 2000], None, now, WALL),
            Err(Refusal::Oversized)
        );
        assert!(matches!(
            t.offer(&[1, 2, 3], None, now, WALL),
            Err(Refusal::Malformed(_))
        ));
        let c = t.counters;
        assert_eq!(
            (
                c.dropped_bad_signature,
                c.dropped_wrong_binding,
                c.dropped_oversized,
                c.dropped_malformed
            ),
            (1, 1, 1, 1)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_live_members_wireguard_key_cannot_be_claimed_by_another_node() {
        let mut t = table();
        let now = Instant::now();
        t.offer(&signed(&NodeIdentity::generate(), 1, 7), None, now, WALL)
            .unwrap();
        assert_eq!(
            t.offer(&signed(&NodeIdentity::generate(), 1, 7), None, now, WALL),
            Err(Refusal::KeyConflict)
        );
        assert_eq!(t.counters.dropped_key_conflict, 1);
    }

    #[test]
    fn full_table_evicts_tombstones_but_never_live_members() {
        let mut t = MemberTable::new(
            NodeIdentity::generate().node_id(),
            TableConfig {
                max_members: 2,
                ..TableConfig::default()
            },
        );
        let now = Instant::now();
        let a = NodeIdentity::generate();
        t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        t.offer(&signed(&NodeIdentity::generate(), 1, 2), None, now, WALL)
            .unwrap();
        let sybil = signed(&NodeIdentity::generate(), 1, 3);
        assert_eq!(t.offer(&sybil, None, now, WALL), Err(Refusal::TableFull));
        assert_eq!(t.live_count(), 2);
        t.unreachable(a.node_id()).unwrap();
        assert!(
            t.offer(&sybil, None, now, WALL).is_ok(),
            "tombstone evicted"
        );
        assert_eq!(t.live_count(), 2);
        assert_eq!(t.counters.dropped_table_full, 1);
    }

    #[test]
    fn suspicion_downs_a_node_only_if_it_does_not_refute() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        let b = NodeIdentity::generate();
        t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        t.offer(&signed(&b, 1, 2), None, now, WALL).unwrap();
        assert_eq!(t.suspect(a.node_id(), 1, now), SuspicionOutcome::Forward);
        assert_eq!(t.suspect(b.node_id(), 1, now), SuspicionOutcome::Forward);
        assert_eq!(t.suspect(b.node_id(), 0, now), SuspicionOutcome::Ignored);
        // b refutes with a newer record.
        t.offer(&signed(&b, 2, 2), None, now, WALL).unwrap();
        let later = now + Duration::from_millis(1100);
        assert_eq!(
            t.tick(later, false),
            vec![MembershipEvent::PeerDown {
                node: a.node_id(),
                reason: DownReason::Unrefuted
            }]
        );
        assert!(t.is_up(&b.node_id()));
        // A replay of a's last record cannot revive it; a newer one does.
        assert_eq!(
            t.offer(&signed(&a, 1, 1), None, later, WALL),
            Ok(Accepted::Duplicate)
        );
        assert!(!t.is_up(&a.node_id()));
        assert!(matches!(
            t.offer(&signed(&a, 2, 1), None, later, WALL),
            Ok(Accepted::Stored(Some(MembershipEvent::PeerUp(_))))
        ));
    }

    #[test]
    fn first_hand_evidence_overrides_a_suspicion() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        t.set_connected(a.node_id(), true, now);
        assert_eq!(t.suspect(a.node_id(), 1, now), SuspicionOutcome::Forward);
        assert!(t.tick(now + Duration::from_secs(2), false).is_empty());
        assert!(t.is_up(&a.node_id()));
    }

    #[test]
    fn a_node_running_late_declares_nobody_down() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        t.suspect(a.node_id(), 1, now);
        let later = now + Duration::from_secs(2);
        assert!(t.tick(later, true).is_empty());
        assert_eq!(t.counters.verdicts_deferred, 1);
        assert_eq!(
            t.tick(later, false).len(),
            1,
            "the verdict comes once caught up"
        );
    }

    #[test]
    fn suspicion_of_ourselves_asks_for_a_refutation() {
        let local = NodeIdentity::generate();
        let mut t = MemberTable::new(local.node_id(), TableConfig::default());
        t.set_local_seq(10);
        assert_eq!(
            t.suspect(local.node_id(), 10, Instant::now()),
            SuspicionOutcome::RefuteSelf
        );
        assert_eq!(
            t.suspect(local.node_id(), 9, Instant::now()),
            SuspicionOutcome::Ignored
        );
        assert_eq!(
            t.offer(&signed(&local, 11, 1), None, Instant::now(), WALL),
            Err(Refusal::OwnIdConflict)
        );
    }

    #[test]
    fn silent_unconnected_members_expire_after_the_ttl() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        let b = NodeIdentity::generate();
        t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        t.offer(&signed(&b, 1, 2), None, now, WALL).unwrap();
        t.set_connected(b.node_id(), true, now);
        let events = t.tick(now + Duration::from_secs(61), false);
        assert_eq!(
            events,
            vec![MembershipEvent::PeerDown {
                node: a.node_id(),
                reason: DownReason::Expired
            }]
        );
        // The tombstone is forgotten once no record of it could still be accepted.
        t.tick(now + Duration::from_secs(61 + 91), false);
        assert_eq!(t.seq_of(&a.node_id()), None);
    }

    #[test]
    fn a_new_connection_revives_a_member_declared_down() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        t.unreachable(a.node_id()).unwrap();
        assert!(matches!(
            t.set_connected(a.node_id(), true, now),
            Some(MembershipEvent::PeerUp(_))
        ));
        assert!(t.is_up(&a.node_id()));
        // A node that left stays gone until it publishes a newer record.
        t.offer(&signed_at(&a, 2, 1, WALL, true), None, now, WALL)
            .unwrap();
        assert_eq!(t.set_connected(a.node_id(), true, now), None);
        assert!(!t.is_up(&a.node_id()));
    }

    #[test]
    fn leaving_record_downs_the_member() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        t.offer(&signed(&a, 1, 1), None, now, WALL).unwrap();
        assert_eq!(
            t.offer(&signed_at(&a, 2, 1, WALL, true), None, now, WALL),
            Ok(Accepted::Stored(Some(MembershipEvent::PeerDown {
                node: a.node_id(),
                reason: DownReason::Left
            })))
        );
    }

    #[test]
    fn sync_sends_only_what_the_peer_lacks() {
        let mut t = table();
        let now = Instant::now();
        let a = NodeIdentity::generate();
        let b = NodeIdentity::generate();
        t.offer(&signed(&a, 3, 1), None, now, WALL).unwrap();
        t.offer(&signed(&b, 3, 2), None, now, WALL).unwrap();
        let newer = t.newer_than([(a.node_id(), 3), (b.node_id(), 2)].into_iter());
        assert_eq!(newer.len(), 1);
        assert_eq!(
            VerifiedNodeRecord::verify(newer[0]).unwrap().node_id(),
            b.node_id()
        );
    }
}
