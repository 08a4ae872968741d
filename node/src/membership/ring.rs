//! Who watches whom: every live node is monitored by a few others, chosen the
//! same way by every node that knows the same members.
//!
//! Pinging every node it knows would cost each node O(N) work per period, and
//! pinging only whoever it happens to be connected to leaves some nodes
//! watched by nobody. Instead (after Rapid, Suresh et al., 2018) the live
//! members are placed on `K` rings, each ordered by a different hash of the
//! node id; on every ring a node watches its successor. So each node has at
//! most `K` *subjects* it keeps connections to and pings, and is watched by
//! at most `K` *watchers*, whatever N is; the rings are random and
//! independent, so the watch graph is well connected and no node's fate rests
//! on one neighbour. Nodes with the same view compute the same rings, which
//! makes the relation symmetric: both ends keep their connection alive.

use std::collections::BTreeSet;

use sha2::{Digest as _, Sha256};

use super::identity::NodeId;

/// Domain separation for ring positions.
const RING_DOMAIN: &[u8] = b"slicenet membership ring\n";

/// The monitoring rings over the live members as this node sees them.
#[derive(Debug, Clone)]
pub struct MonitorRings {
    local: NodeId,
    /// Our own position on every ring.
    local_positions: Vec<u64>,
    /// One map per ring: position -> node (ties are broken by the node id).
    rings: Vec<BTreeSet<(u64, NodeId)>>,
}

/// Every ring's position of `node`: each SHA-256 digest of the node id yields the
/// positions on four rings (one digest per node on the default four rings; this runs
/// once per member that comes up, so at a thousand members it is worth keeping cheap).
fn positions(count: usize, node: &NodeId) -> Vec<u64> {
    let mut out = Vec::with_capacity(count);
    for block in 0..count.div_ceil(4) {
        let mut hash = Sha256::new();
        hash.update(RING_DOMAIN);
        hash.update([block as u8]);
        hash.update(node.as_bytes());
        let digest = hash.finalize();
        for chunk in digest.chunks_exact(8).take(count - out.len()) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            out.push(u64::from_be_bytes(word));
        }
    }
    out
}

impl MonitorRings {
    /// Rings with `count` (at least 1) rings, holding only `local`.
    pub fn new(local: NodeId, count: usize) -> Self {
        let count = count.clamp(1, 64);
        let mut rings = Self {
            local,
            local_positions: positions(count, &local),
            rings: vec![BTreeSet::new(); count],
        };
        rings.insert(local);
        rings
    }

    /// Adds a live member (no-op if present).
    pub fn insert(&mut self, node: NodeId) {
        let positions = positions(self.rings.len(), &node);
        for (ring, position) in self.rings.iter_mut().zip(positions) {
            ring.insert((position, node));
        }
    }

    /// Removes a member that is no longer live (never removes ourselves).
    pub fn remove(&mut self, node: &NodeId) {
        if *node == self.local {
            return;
        }
        let positions = positions(self.rings.len(), node);
        for (ring, position) in self.rings.iter_mut().zip(positions) {
            ring.remove(&(position, *node));
        }
    }

    /// Number of nodes on the rings, ourselves included.
    pub fn len(&self) -> usize {
        self.rings[0].len()
    }

    /// Whether only we are on the rings.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// The nodes we watch: our successor on every ring, without duplicates.
    pub fn subjects(&self) -> Vec<NodeId> {
        self.neighbours(true)
    }

    /// The nodes that watch us: our predecessor on every ring, without duplicates.
    pub fn watchers(&self) -> Vec<NodeId> {
        self.neighbours(false)
    }

    fn neighbours(&self, successors: bool) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::with_capacity(self.rings.len());
        for (ring, &position) in self.rings.iter().zip(&self.local_positions) {
            let me = (position, self.local);
            let next = if successors {
                ring.range((std::ops::Bound::Excluded(me), std::ops::Bound::Unbounded))
                    .next()
                    .or_else(|| ring.iter().next())
            } else {
                ring.range(..me)
                    .next_back()
                    .or_else(|| ring.iter().next_back())
            };
            if let Some((_, node)) = next {
                if *node != self.local && !out.contains(node) {
                    out.push(*node);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeIdentity;
    use std::collections::{HashMap, HashSet};

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|_| NodeIdentity::generate().node_id()).collect()
    }

    fn rings_of(all: &[NodeId], local: NodeId, k: usize) -> MonitorRings {
        let mut rings = MonitorRings::new(local, k);
        for id in all {
            rings.insert(*id);
        }
        rings
    }

    #[test]
    fn alone_there_is_nobody_to_watch() {
        let me = ids(1)[0];
        let rings = MonitorRings::new(me, 4);
        assert!(rings.is_empty());
        assert!(rings.subjects().is_empty());
        assert!(rings.watchers().is_empty());
    }

    #[test]
    fn in_a_small_overlay_everyone_watches_everyone() {
        let all = ids(3);
        let rings = rings_of(&all, all[0], 4);
        let subjects: HashSet<_> = rings.subjects().into_iter().collect();
        // With 4 independent rings over 3 nodes, both others are successors on some ring
        // unless every ring happens to order them the same way (probability 2 / 2^4).
        assert!(!subjects.is_empty() && !subjects.contains(&all[0]));
        assert_eq!(rings.len(), 3);
    }

    #[test]
    fn watching_is_symmetric_and_bounded_for_nodes_with_the_same_view() {
        let all = ids(200);
        let k = 4;
        let views: HashMap<NodeId, MonitorRings> =
            all.iter().map(|id| (*id, rings_of(&all, *id, k))).collect();
        let mut watched_by: HashMap<NodeId, usize> = HashMap::new();
        for (id, rings) in &views {
            let subjects = rings.subjects();
            assert!(!subjects.is_empty() && subjects.len() <= k);
            for s in subjects {
                *watched_by.entry(s).or_default() += 1;
                assert!(
                    views[&s].watchers().contains(id),
                    "a subject knows its watcher"
                );
            }
        }
        // Everyone is watched, by at most k nodes.
        assert_eq!(watched_by.len(), all.len());
        assert!(watched_by.values().all(|&w| (1..=k).contains(&w)));
    }

    #[test]
    fn positions_differ_per_ring_and_are_stable() {
        let node = ids(1)[0];
        let six = positions(6, &node);
        assert_eq!(six.len(), 6);
        assert_eq!(
            positions(4, &node),
            six[..4],
            "the same positions whatever the count"
        );
        let distinct: HashSet<_> = six.iter().collect();
        assert_eq!(distinct.len(), 6, "independent positions per ring");
    }

    #[test]
    fn a_removed_node_is_replaced_by_the_next_one() {
        let all = ids(50);
        let me = all[0];
        let mut rings = rings_of(&all, me, 2);
        let before = rings.subjects();
        rings.remove(&before[0]);
        let after = rings.subjects();
        assert!(!after.contains(&before[0]));
        assert!(!after.is_empty());
        rings.remove(&me);
        assert_eq!(rings.len(), 49, "we never leave our own rings");
    }
}
