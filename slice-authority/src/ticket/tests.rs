use super::*;
use crate::keys;

fn minimal() -> Ticket {
    Ticket {
        epoch: 5,
        issued_at: 1000,
        expires_at: 2000,
        status: TicketStatus::Active,
        node: "n1".into(),
        node_key: PublicKey([1; 32]),
        slice: "ams_x".into(),
        sliver_id: 9,
        resources: Resources {
            vcpus: 1,
            memory_mib: 256,
            disk_gib: 1,
            bandwidth_mbps: 10,
        },
        appliance: Appliance::default(),
        enclaves: vec![],
    }
}

fn with_enclave() -> Ticket {
    let mut t = minimal();
    t.enclaves.push(EnclaveMembership {
        enclave: "lan".into(),
        slice: "ams_x".into(),
        vni: 1001,
        subnet: Ipv4Addr::new(198, 19, 1, 0),
        prefix_len: 24,
        mac: MacAddr::for_address(Ipv4Addr::new(198, 19, 1, 1)),
        address: Ipv4Addr::new(198, 19, 1, 1),
        members: vec![
            Member {
                sliver_id: 9,
                node: "n1".into(),
                mac: MacAddr::for_address(Ipv4Addr::new(198, 19, 1, 1)),
                address: Ipv4Addr::new(198, 19, 1, 1),
            },
            Member {
                sliver_id: 10,
                node: "n2".into(),
                mac: MacAddr::for_address(Ipv4Addr::new(198, 19, 1, 2)),
                address: Ipv4Addr::new(198, 19, 1, 2),
            },
        ],
        peers: vec![Peer {
            node: "n2".into(),
            node_key: PublicKey([2; 32]),
            wg_public_key: PublicKey([3; 32]),
            tunnel_address: Ipv4Addr::new(198, 19, 255, 2),
            endpoint: Some("198.18.0.2:51820".parse().unwrap()),
        }],
        gateways: vec![Gateway {
            name: "gw".into(),
            wg_public_key: PublicKey([4; 32]),
            tunnel_address: Ipv4Addr::new(198, 19, 255, 200),
            address: Ipv4Addr::new(198, 19, 1, 250),
            mac: MacAddr::for_address(Ipv4Addr::new(198, 19, 1, 250)),
            endpoint: Some("[2001:db8::1]:51820".parse().unwrap()),
        }],
    });
    t
}

#[test]
fn minimal_body_encodes_to_known_bytes() {
    let mut body = Vec::new();
    wire::emit_body(&minimal(), &mut body);
    let mut expected: Vec<u8> = vec![
        0, 0, 0, 0, 0, 0, 0, 5, // epoch
        0, 0, 0, 0, 0, 0, 0x03, 0xe8, // issued_at 1000
        0, 0, 0, 0, 0, 0, 0x07, 0xd0, // expires_at 2000
        1,    // active
        2, b'n', b'1', // node
    ];
    expected.extend_from_slice(&[1; 32]); // node key
    expected.extend_from_slice(&[5, b'a', b'm', b's', b'_', b'x']);
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]); // sliver id
    expected.extend_from_slice(&[0, 0, 0, 1]); // vcpus
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 0]); // 256 MiB
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // 1 GiB
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 10]); // 10 Mbit/s
    expected.extend_from_slice(&[7, b'd', b'e', b'f', b'a', b'u', b'l', b't', 0]);
    expected.extend_from_slice(&[0, 0]); // no enclaves
    assert_eq!(body, expected);
    assert_eq!(wire::parse_body(&expected).unwrap(), minimal());
}

#[test]
fn envelope_header_has_magic_version_and_length() {
    let key = keys::generate();
    let bytes = sign(&minimal(), &key);
    assert_eq!(
        &bytes[..12],
        &[b'S', b'N', b'T', b'K', 1, 1, 0, 0, 0, 0, 0, 113]
    );
    assert_eq!(bytes.len(), 12 + 113 + 64);
    let packet = TicketPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(packet.body_len(), 113);
}

#[test]
fn signed_tickets_verify_and_round_trip() {
    let key = keys::generate();
    let public = PublicKey::of(&key);
    let ticket = with_enclave();
    let bytes = sign(&ticket, &key);
    assert_eq!(verify(&bytes, &public, 1500).unwrap(), ticket);
    assert_eq!(
        verify_for_node(&bytes, &public, &PublicKey([1; 32]), 1500).unwrap(),
        ticket
    );
    assert!(matches!(
        verify_for_node(&bytes, &public, &PublicKey([2; 32]), 1500),
        Err(TicketError::WrongNode { .. })
    ));
}

#[test]
fn tickets_signed_by_another_key_are_rejected() {
    let bytes = sign(&with_enclave(), &keys::generate());
    let other = PublicKey::of(&keys::generate());
    assert_eq!(verify(&bytes, &other, 1500), Err(TicketError::BadSignature));
}

#[test]
fn every_tampered_byte_is_detected() {
    let key = keys::generate();
    let public = PublicKey::of(&key);
    let bytes = sign(&with_enclave(), &key);
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        assert!(
            verify(&tampered, &public, 1500).is_err(),
            "byte {i} flipped"
        );
    }
}

#[test]
fn expired_and_future_tickets_are_rejected() {
    let key = keys::generate();
    let public = PublicKey::of(&key);
    let bytes = sign(&minimal(), &key);
    assert_eq!(
        verify(&bytes, &public, 2000),
        Err(TicketError::Expired {
            expired_at: 2000,
            now: 2000
        })
    );
    assert!(matches!(
        verify(&bytes, &public, 1000 - CLOCK_SKEW_SECS - 1),
        Err(TicketError::NotYetValid { .. })
    ));
    assert!(verify(&bytes, &public, 1000 - CLOCK_SKEW_SECS).is_ok());
}

#[test]
fn malformed_envelopes_get_typed_errors() {
    let key = keys::generate();
    let public = PublicKey::of(&key);
    let bytes = sign(&minimal(), &key);
    assert!(matches!(
        verify(&bytes[..20], &public, 1500),
        Err(TicketError::Truncated { len: 20, .. })
    ));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(verify(&magic, &public, 1500), Err(TicketError::BadMagic));
    let mut version = bytes.clone();
    version[4] = 9;
    assert_eq!(
        verify(&version, &public, 1500),
        Err(TicketError::UnsupportedVersion(9))
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        verify(&longer, &public, 1500),
        Err(TicketError::LengthMismatch { .. })
    ));
    let mut huge = bytes.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        verify(&huge, &public, 1500),
        Err(TicketError::Malformed {
            field: "body length",
            ..
        })
    ));
}

#[test]
fn signed_but_non_canonical_bodies_are_rejected() {
    // An authority bug (or a stolen key used carelessly) must still not
    // produce bytes that two parsers could read differently.
    let key = keys::generate();
    let public = PublicKey::of(&key);
    let mut body = Vec::new();
    wire::emit_body(&minimal(), &mut body);
    body.push(0xff);
    let mut bytes = vec![b'S', b'N', b'T', b'K', 1, 1, 0, 0];
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    let sig = key.sign(&wire::signing_message(&bytes));
    bytes.extend_from_slice(&sig.to_bytes());
    assert!(matches!(
        verify(&bytes, &public, 1500),
        Err(TicketError::Malformed { field: "body", .. })
    ));
}

#[test]
fn book_keeps_only_newer_epochs_and_tombstones_revocations() {
    let mut book = TicketBook::new();
    let t5 = minimal();
    assert_eq!(book.apply(t5.clone()), Applied::New);
    assert_eq!(book.apply(t5.clone()), Applied::Stale { current_epoch: 5 });
    let mut t7 = t5.clone();
    t7.epoch = 7;
    assert_eq!(
        book.apply(t7.clone()),
        Applied::Updated { previous_epoch: 5 }
    );
    let mut revoked = t7.clone();
    revoked.epoch = 8;
    revoked.status = TicketStatus::Revoked;
    assert_eq!(book.apply(revoked), Applied::Revoked);
    assert_eq!(book.apply(t7), Applied::Stale { current_epoch: 8 });
    assert_eq!(book.active(1500).count(), 0);
    assert_eq!(book.highest_epoch(), 8);
}

#[test]
fn book_expires_active_tickets_at_lease_end() {
    let mut book = TicketBook::new();
    book.apply(minimal());
    assert_eq!(book.active(1999).count(), 1);
    let stopped = book.expire(2000);
    assert_eq!(stopped.len(), 1);
    assert_eq!(book.active(1000).count(), 0);
}

#[test]
fn fuzz_body_survives_random_and_mutated_inputs() {
    let key = keys::generate();
    let valid = sign(&with_enclave(), &key);
    fuzz_parse(&valid);
    crate::envelope::hostile_inputs::<wire::TicketFormat>(
        0x5eed,
        std::slice::from_ref(&valid),
        0.5,
        400,
        20_000,
        fuzz_parse,
    );
    // Bodies cut at every length exercise every "ends early" path.
    let packet = TicketPacket::new_checked(&valid[..]).unwrap();
    for cut in 0..packet.body().len() {
        assert!(wire::parse_body(&packet.body()[..cut]).is_err());
    }
}
