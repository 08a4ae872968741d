//! A memory of record signatures that already verified, so the same record bytes
//! are never put through ed25519 twice.
//!
//! A real node needs little of this: its table already recognises a copy of a
//! record it holds before checking any signature. The cache exists for
//! in-process simulations, where N nodes share a process and each would verify
//! the same N records: handing all of them one [`SignatureCache`] turns N²
//! verifications into N. That is honest only as a statement about CPU spread:
//! on real hosts every node verifies every record itself (N per host), which
//! is why the membership benchmark reports both figures.
//!
//! Only successful verifications are remembered, keyed by signature and
//! confirmed by comparing the complete record bytes, so a hit means "exactly
//! these bytes verified before"; forged or altered records always reach the
//! real check and fail it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::record::{NodeRecord, NodeRecordPacket, RecordError, VerifiedNodeRecord};

/// Verified records by signature, bounded: two generations of at most `capacity`
/// entries each; when the newer one fills up, the older one is forgotten.
pub struct SignatureCache {
    capacity: usize,
    generations: Mutex<[HashMap<[u8; 64], VerifiedNodeRecord>; 2]>,
    verified: AtomicU64,
    reused: AtomicU64,
}

/// How much work a [`SignatureCache`] did and saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Signatures actually checked with ed25519.
    pub verified: u64,
    /// Records recognised as already verified.
    pub reused: u64,
}

impl SignatureCache {
    /// A cache remembering about `capacity` to `2 * capacity` verified records.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            generations: Mutex::new([HashMap::new(), HashMap::new()]),
            verified: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Counts of checks done and saved so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            verified: self.verified.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        }
    }

    /// Returns the verified form of `packet`, checking its signature only if these exact
    /// bytes have not verified before; the flag says whether the check was saved.
    pub(crate) fn verify_parsed(
        &self,
        packet: &NodeRecordPacket<&[u8]>,
        record: NodeRecord,
    ) -> Result<(VerifiedNodeRecord, bool), RecordError> {
        let signature = packet.signature();
        let bytes: &[u8] = packet.into_inner();
        if let Some(hit) = self.lookup(&signature, bytes) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok((hit, true));
        }
        self.verified.fetch_add(1, Ordering::Relaxed);
        // Verify outside the lock: other threads keep using the cache meanwhile.
        let verified = VerifiedNodeRecord::verify_parsed(packet, record)?;
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if generations[0].len() >= self.capacity {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(signature, verified.clone());
        Ok((verified, false))
    }

    fn lookup(&self, signature: &[u8; 64], bytes: &[u8]) -> Option<VerifiedNodeRecord> {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations
            .iter()
            .find_map(|g| g.get(signature))
            .filter(|hit| hit.bytes() == bytes)
            .cloned()
    }
}

impl std::fmt::Debug for SignatureCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureCache")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::record::{NodeInfo, NodeRecord};
    use crate::membership::{NodeIdentity, WgPublicKey};

    fn signed(id: &NodeIdentity, seq: u64) -> Vec<u8> {
        NodeRecord {
            node_id: id.node_id(),
            seq,
            timestamp_ms: 1,
            leaving: false,
            info: NodeInfo {
                site: "s".into(),
                region: String::new(),
                location: Default::default(),
                capacity: Default::default(),
                wireguard_key: WgPublicKey::from_bytes([1; 32]),
                tunnel_addr: [198, 19, 255, 1].into(),
                underlay: vec![],
                software_version: String::new(),
            },
            contacts: vec![],
        }
        .sign(id)
        .unwrap()
        .bytes()
        .to_vec()
    }

    fn check(cache: &SignatureCache, bytes: &[u8]) -> Result<VerifiedNodeRecord, RecordError> {
        let packet = NodeRecordPacket::new_checked(bytes)?;
        let record = NodeRecord::parse(&packet)?;
        cache
            .verify_parsed(&packet, record)
            .map(|(verified, _)| verified)
    }

    #[test]
    fn the_same_bytes_are_verified_once() {
        let cache = SignatureCache::new(16);
        let id = NodeIdentity::generate();
        let bytes = signed(&id, 1);
        for _ in 0..3 {
            assert_eq!(check(&cache, &bytes).unwrap().seq(), 1);
        }
        assert_eq!(
            cache.stats(),
            CacheStats {
                verified: 1,
                reused: 2
            }
        );
    }

    #[test]
    fn altered_bytes_with_a_cached_signature_are_still_checked_and_refused() {
        let cache = SignatureCache::new(16);
        let id = NodeIdentity::generate();
        let good = signed(&id, 1);
        check(&cache, &good).unwrap();
        let mut forged = good.clone();
        forged[3] ^= 1; // another seq under the same signature
        assert!(matches!(
            check(&cache, &forged),
            Err(RecordError::BadSignature(_))
        ));
        // Failures are never remembered: the forgery is checked (and refused) again.
        assert!(check(&cache, &forged).is_err());
        assert_eq!(cache.stats().verified, 3);
    }

    #[test]
    fn memory_is_bounded_by_two_generations() {
        let cache = SignatureCache::new(2);
        let id = NodeIdentity::generate();
        let records: Vec<_> = (1..=5).map(|seq| signed(&id, seq)).collect();
        for r in &records {
            check(&cache, r).unwrap();
        }
        let held: usize = cache
            .generations
            .lock()
            .unwrap()
            .iter()
            .map(HashMap::len)
            .sum();
        assert!(held <= 4, "{held} entries held");
        // The newest is still known; the oldest was forgotten and is verified again.
        check(&cache, &records[4]).unwrap();
        check(&cache, &records[0]).unwrap();
        assert_eq!(
            cache.stats(),
            CacheStats {
                verified: 6,
                reused: 1
            }
        );
    }
}
