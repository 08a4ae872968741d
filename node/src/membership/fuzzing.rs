//! Fuzz entry points shared by the cargo-fuzz targets (`node/fuzz/`) and by unit
//! tests, so CI exercises the same bodies over crafted and random inputs.

use std::time::Instant;

use super::identity::NodeIdentity;
use super::message::{GossipMessage, SyncRequest, SyncResponse};
use super::record::{NodeRecord, NodeRecordPacket, VerifiedNodeRecord};
use super::table::{MemberTable, TableConfig};

/// Runs every membership parser on `data`; must never panic.
pub fn parse_everything(data: &[u8]) {
    if let Ok(packet) = NodeRecordPacket::new_checked(data) {
        // Accessors must not panic once the length check passed.
        let _ = (packet.site(), packet.region(), packet.software_version());
        for i in 0..packet.endpoint_count() {
            let _ = packet.endpoint_bytes(i);
        }
        for i in 0..packet.contact_count() {
            let _ = packet.contact_bytes(i);
        }
        if let Ok(record) = NodeRecord::parse(&packet) {
            // Whatever parses must re-encode to the same bytes (signature aside).
            let mut again = NodeRecordPacket::new_unchecked(vec![0u8; record.buffer_len()]);
            record.emit(&mut again);
            let again = again.into_inner();
            assert_eq!(again[..again.len() - 64], data[..data.len() - 64]);
        }
    }
    let _ = VerifiedNodeRecord::verify(data);
    if let Ok(GossipMessage::Suspect { node, seq }) = GossipMessage::parse(data) {
        assert_eq!(GossipMessage::Suspect { node, seq }.to_bytes(), data);
    }
    if let Ok(request) = SyncRequest::parse(data) {
        let encoded = SyncRequest::encode(
            request.pull,
            request.own_record,
            request.digest(),
            request.pushed.iter().copied(),
        );
        assert_eq!(encoded, data);
    }
    if let Ok(response) = SyncResponse::parse(data) {
        let encoded = SyncResponse::encode(
            response.own_record,
            response.records.iter().copied(),
            response.requester_down,
        );
        assert_eq!(encoded, data);
    }
}

/// Offers `data` to a membership table as a record, then as a suspicion; must never panic.
pub fn offer_to_table(data: &[u8]) {
    let mut table = MemberTable::new(
        NodeIdentity::from_seed([7; 32]).node_id(),
        TableConfig::default(),
    );
    let now = Instant::now();
    let _ = table.offer(data, None, now, 1_800_000_000_000);
    if let Ok(GossipMessage::Suspect { node, seq }) = GossipMessage::parse(data) {
        let _ = table.suspect(node, seq, now);
    }
    let _ = table.tick(now, false);
}

/// Feeds `count` inputs to both entry points: random bytes, and mutations of a
/// valid signed record (so the deep parsing paths are reached, not just the length check).
pub fn exercise_with_random_inputs(count: usize) {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let identity = NodeIdentity::from_seed([3; 32]);
    let valid = NodeRecord {
        node_id: identity.node_id(),
        seq: 1,
        timestamp_ms: 1_800_000_000_000,
        leaving: false,
        info: super::record::NodeInfo {
            site: "fuzz".into(),
            region: "r".into(),
            location: Default::default(),
            capacity: Default::default(),
            wireguard_key: super::identity::WgPublicKey::from_bytes([1; 32]),
            tunnel_addr: [198, 19, 255, 1].into(),
            underlay: vec!["198.18.0.1:51820".parse().expect("literal address")],
            software_version: "1".into(),
        },
        contacts: vec![
            super::PeerAddr::Tcp("198.18.0.1:7946".parse().expect("literal address")),
            super::PeerAddr::Memory(42),
        ],
    }
    .sign(&identity)
    .expect("valid record")
    .bytes()
    .to_vec();
    for i in 0..count {
        let data: Vec<u8> = match i % 3 {
            0 => {
                let len = rng.random_range(0..1200);
                (0..len).map(|_| rng.random()).collect()
            }
            1 => {
                let mut d = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..d.len());
                    d[at] = rng.random();
                }
                d
            }
            _ => {
                // A message kind (and for sync requests a flags byte) before a cut record.
                let mut d = vec![rng.random_range(1..=4u8)];
                if d[0] == 3 {
                    d.push(rng.random_range(0..=1u8));
                }
                d.extend_from_slice(&valid[..rng.random_range(0..valid.len())]);
                d
            }
        };
        parse_everything(&data);
        offer_to_table(&data);
    }
}
