use super::handshake::{self, CLIENT_HELLO, HEADER_LEN, NODE_ANSWER};
use super::*;
use crate::keys;

fn grant(node_key: PublicKey, principal_key: PublicKey) -> ConsoleGrant {
    ConsoleGrant {
        grant_id: [0xab; 16],
        issued_at: 1000,
        expires_at: 1060,
        sliver_id: 9,
        slice: "ams_x".into(),
        node: "n1".into(),
        node_key,
        principal: "alice".into(),
        principal_key,
    }
}

fn known() -> ConsoleGrant {
    grant(PublicKey([1; 32]), PublicKey([2; 32]))
}

#[test]
fn body_encodes_to_known_bytes() {
    let mut body = Vec::new();
    wire::emit_body(&known(), &mut body);
    let mut expected: Vec<u8> = vec![0xab; 16]; // grant id
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x03, 0xe8]); // issued_at 1000
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x04, 0x24]); // expires_at 1060
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]); // sliver id
    expected.extend_from_slice(&[5, b'a', b'm', b's', b'_', b'x']);
    expected.extend_from_slice(&[2, b'n', b'1']);
    expected.extend_from_slice(&[1; 32]); // node key
    expected.extend_from_slice(&[5, b'a', b'l', b'i', b'c', b'e']);
    expected.extend_from_slice(&[2; 32]); // principal key
    assert_eq!(body, expected);
    assert_eq!(wire::parse_body(&expected).unwrap(), known());
}

#[test]
fn envelope_header_has_magic_version_and_length() {
    let bytes = sign(&known(), &keys::generate());
    assert_eq!(
        &bytes[..12],
        &[b'S', b'N', b'C', b'G', 1, 1, 0, 0, 0, 0, 0, 119]
    );
    assert_eq!(bytes.len(), 12 + 119 + 64);
    assert_eq!(
        GrantPacket::new_checked(&bytes[..]).unwrap().body_len(),
        119
    );
}

#[test]
fn grants_verify_for_their_node_within_their_lifetime() {
    let authority = keys::generate();
    let public = PublicKey::of(&authority);
    let g = known();
    let bytes = sign(&g, &authority);
    assert_eq!(verify_grant(&bytes, &public, &g.node_key, 1030).unwrap(), g);
    assert_eq!(verify_grant_signature(&bytes, &public).unwrap(), g);
    assert_eq!(
        verify_grant(&bytes, &public, &PublicKey([3; 32]), 1030),
        Err(GrantError::WrongNode {
            grant_node: "n1".into()
        })
    );
    assert_eq!(
        verify_grant(&bytes, &public, &g.node_key, 1060),
        Err(GrantError::Expired {
            expired_at: 1060,
            now: 1060
        })
    );
    assert!(matches!(
        verify_grant(&bytes, &public, &g.node_key, 1000 - CLOCK_SKEW_SECS - 1),
        Err(GrantError::NotYetValid { .. })
    ));
    assert!(verify_grant(&bytes, &public, &g.node_key, 1000 - CLOCK_SKEW_SECS).is_ok());
}

#[test]
fn forged_and_tampered_grants_are_rejected() {
    let authority = keys::generate();
    let public = PublicKey::of(&authority);
    let g = known();
    let forged = sign(&g, &keys::generate());
    assert_eq!(
        verify_grant(&forged, &public, &g.node_key, 1030),
        Err(GrantError::BadSignature)
    );
    let bytes = sign(&g, &authority);
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        assert!(
            verify_grant(&tampered, &public, &g.node_key, 1030).is_err(),
            "byte {i} flipped"
        );
    }
}

#[test]
fn a_ticket_signature_never_passes_as_a_grant() {
    // Same authority key, same envelope layout: only the magic and the
    // signing context differ, and each alone must make it fail.
    let authority = keys::generate();
    let public = PublicKey::of(&authority);
    let g = known();
    let mut bytes = wire::emit_unsigned(&g);
    let ticket_sig = authority.sign(&crate::ticket::wire::signing_message(&bytes));
    bytes.extend_from_slice(&ticket_sig.to_bytes());
    assert_eq!(
        verify_grant(&bytes, &public, &g.node_key, 1030),
        Err(GrantError::BadSignature)
    );
}

#[test]
fn malformed_grants_get_typed_errors() {
    let authority = keys::generate();
    let public = PublicKey::of(&authority);
    let bytes = sign(&known(), &authority);
    let node = PublicKey([1; 32]);
    assert!(matches!(
        verify_grant(&bytes[..20], &public, &node, 1030),
        Err(GrantError::Truncated { len: 20, .. })
    ));
    let mut magic = bytes.clone();
    magic[3] = b'K';
    assert_eq!(
        verify_grant(&magic, &public, &node, 1030),
        Err(GrantError::BadMagic)
    );
    let mut kind = bytes.clone();
    kind[5] = 2;
    assert_eq!(
        verify_grant(&kind, &public, &node, 1030),
        Err(GrantError::UnsupportedKind(2))
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        verify_grant(&longer, &public, &node, 1030),
        Err(GrantError::LengthMismatch { .. })
    ));
    let mut huge = bytes.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        verify_grant(&huge, &public, &node, 1030),
        Err(GrantError::Malformed {
            field: "body length",
            ..
        })
    ));
}

#[test]
fn signed_grants_with_impossible_lifetimes_or_trailing_bytes_are_rejected() {
    // An authority bug must still not produce a grant that lives for a year.
    let authority = keys::generate();
    let public = PublicKey::of(&authority);
    let mut forever = known();
    forever.expires_at = forever.issued_at + MAX_GRANT_SECS + 1;
    let bytes = sign(&forever, &authority);
    assert!(matches!(
        verify_grant(&bytes, &public, &forever.node_key, 1030),
        Err(GrantError::Malformed {
            field: "expires_at",
            ..
        })
    ));
    let mut backwards = known();
    backwards.expires_at = backwards.issued_at;
    assert!(verify_grant(
        &sign(&backwards, &authority),
        &public,
        &backwards.node_key,
        999
    )
    .is_err());

    let mut body = Vec::new();
    wire::emit_body(&known(), &mut body);
    body.push(0);
    let mut bytes = vec![b'S', b'N', b'C', b'G', 1, 1, 0, 0];
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    let sig = authority.sign(&wire::signing_message(&bytes));
    bytes.extend_from_slice(&sig.to_bytes());
    assert!(matches!(
        verify_grant(&bytes, &public, &PublicKey([1; 32]), 1030),
        Err(GrantError::Malformed { field: "body", .. })
    ));
}

#[test]
fn possession_messages_have_a_fixed_layout() {
    let msg = possession_message(Party::Node, b"grant", &[1; 32], &[2; 32]);
    let context = b"slicenet console possession v1\0";
    assert_eq!(&msg[..context.len()], context);
    assert_eq!(msg[context.len()], 2);
    // sha256("grant")
    assert_eq!(
        hex::encode(&msg[context.len() + 1..context.len() + 33]),
        "3492ad65d05a973fef8c825521eeb41ae64625a672a8aeeeabc696e16d62a020"
    );
    assert_eq!(&msg[context.len() + 33..context.len() + 65], &[1; 32]);
    assert_eq!(&msg[context.len() + 65..], &[2; 32]);
    assert_eq!(msg.len(), context.len() + 1 + 32 + 64);
}

#[test]
fn only_the_holder_of_the_named_key_proves_possession() {
    let authority = keys::generate();
    let node = keys::generate();
    let alice = keys::generate();
    let g = grant(PublicKey::of(&node), PublicKey::of(&alice));
    let bytes = sign(&g, &authority);
    let (nc, cc) = ([1; 32], [2; 32]);
    let proof = prove_possession(&alice, Party::Principal, &bytes, &nc, &cc);
    assert_eq!(
        verify_possession(&g, Party::Principal, &bytes, &nc, &cc, &proof),
        Ok(())
    );
    let principal_failed = Err(GrantError::BadPossession {
        party: Party::Principal,
    });
    // Another key (a thief of the grant), another challenge (a replay), another grant.
    let thief = prove_possession(&keys::generate(), Party::Principal, &bytes, &nc, &cc);
    assert_eq!(
        verify_possession(&g, Party::Principal, &bytes, &nc, &cc, &thief),
        principal_failed
    );
    assert_eq!(
        verify_possession(&g, Party::Principal, &bytes, &[3; 32], &cc, &proof),
        principal_failed
    );
    let other = sign(&grant(g.node_key, g.principal_key), &keys::generate());
    assert_eq!(
        verify_possession(&g, Party::Principal, &other, &nc, &cc, &proof),
        principal_failed
    );
    // A principal's proof never passes as the node's, even with the same key.
    let g_same = grant(PublicKey::of(&alice), PublicKey::of(&alice));
    assert_eq!(
        verify_possession(&g_same, Party::Node, &bytes, &nc, &cc, &proof),
        Err(GrantError::BadPossession { party: Party::Node })
    );
}

struct Session {
    authority: ed25519_dalek::SigningKey,
    node: ed25519_dalek::SigningKey,
    alice: ed25519_dalek::SigningKey,
    grant: ConsoleGrant,
    bytes: Vec<u8>,
}

fn session() -> Session {
    let authority = keys::generate();
    let node = keys::generate();
    let alice = keys::generate();
    let grant = grant(PublicKey::of(&node), PublicKey::of(&alice));
    let bytes = sign(&grant, &authority);
    Session {
        authority,
        node,
        alice,
        grant,
        bytes,
    }
}

#[test]
fn handshake_authenticates_both_sides() {
    let s = session();
    let authority = PublicKey::of(&s.authority);
    let node_key = PublicKey::of(&s.node);
    // Node -> client.
    let nc = handshake::challenge();
    let hello = handshake::node_hello(&nc);
    assert_eq!(&hello[..8], &[b'S', b'N', b'C', b'N', 1, 0, 0, 32]);
    assert_eq!(handshake::parse_node_hello(&hello).unwrap(), nc);
    // Client -> node; a stream reader learns the length from the header.
    let client = handshake::client_hello(&s.alice, &s.bytes, &nc);
    let len = handshake::payload_len(&client.bytes[..HEADER_LEN], CLIENT_HELLO).unwrap();
    assert_eq!(len, s.bytes.len() + 32 + 64);
    assert_eq!(client.bytes.len(), HEADER_LEN + len);
    let verified =
        handshake::verify_client_hello(&client.bytes, &authority, &node_key, &nc, 1030).unwrap();
    assert_eq!(verified.grant, s.grant);
    // Node -> client.
    let answer = handshake::accept(&s.node, &verified, &nc);
    assert_eq!(handshake::payload_len(&answer, NODE_ANSWER).unwrap(), 64);
    handshake::verify_node_answer(&answer, &s.grant, &s.bytes, &nc, &client.client_challenge)
        .unwrap();

    // A replayed client hello meets a new challenge and fails.
    let nc2 = handshake::challenge();
    assert_eq!(
        handshake::verify_client_hello(&client.bytes, &authority, &node_key, &nc2, 1030)
            .unwrap_err(),
        GrantError::BadPossession {
            party: Party::Principal
        }
    );
    // An impostor node cannot produce the node's proof.
    let impostor = handshake::accept(&keys::generate(), &verified, &nc);
    assert_eq!(
        handshake::verify_node_answer(&impostor, &s.grant, &s.bytes, &nc, &client.client_challenge),
        Err(GrantError::BadPossession { party: Party::Node })
    );
    // A stolen grant, presented with another key.
    let thief = handshake::client_hello(&keys::generate(), &s.bytes, &nc);
    assert_eq!(
        handshake::verify_client_hello(&thief.bytes, &authority, &node_key, &nc, 1030).unwrap_err(),
        GrantError::BadPossession {
            party: Party::Principal
        }
    );
    // An expired grant, at another node.
    assert!(matches!(
        handshake::verify_client_hello(&client.bytes, &authority, &node_key, &nc, 1060),
        Err(GrantError::Expired { .. })
    ));
    assert!(matches!(
        handshake::verify_client_hello(&client.bytes, &authority, &authority, &nc, 1030),
        Err(GrantError::WrongNode { .. })
    ));
}

#[test]
fn a_refusal_reaches_the_client_as_the_nodes_reason() {
    let s = session();
    let refusal = handshake::refuse("sliver 9 is not running here");
    assert_eq!(&refusal[..6], &[b'S', b'N', b'C', b'A', 1, 1]);
    assert_eq!(
        handshake::verify_node_answer(&refusal, &s.grant, &s.bytes, &[0; 32], &[0; 32]),
        Err(GrantError::Refused {
            reason: "sliver 9 is not running here".into()
        })
    );
    let hostile = handshake::refuse("no\x1b[2J");
    assert_eq!(
        handshake::verify_node_answer(&hostile, &s.grant, &s.bytes, &[0; 32], &[0; 32]),
        Err(GrantError::Refused {
            reason: "no?[2J".into()
        })
    );
    let long = handshake::refuse(&"é".repeat(2000));
    assert!(long.len() <= HEADER_LEN + handshake::MAX_REASON_LEN);
    assert!(String::from_utf8(long[HEADER_LEN..].to_vec()).is_ok());
}

#[test]
fn oversized_and_malformed_handshake_frames_get_typed_errors() {
    let mut header = vec![b'S', b'N', b'C', b'C', 1, 0, 0xff, 0xff];
    assert!(matches!(
        handshake::payload_len(&header, CLIENT_HELLO),
        Err(GrantError::Malformed { .. })
    ));
    header[4] = 2;
    assert_eq!(
        handshake::payload_len(&header, CLIENT_HELLO),
        Err(GrantError::UnsupportedVersion(2))
    );
    assert_eq!(
        handshake::payload_len(&header, NODE_ANSWER),
        Err(GrantError::BadMagic)
    );
    assert!(matches!(
        handshake::payload_len(&header[..3], CLIENT_HELLO),
        Err(GrantError::Truncated { .. })
    ));
    let s = session();
    let key = PublicKey::of(&s.node);
    let short = [
        b'S', b'N', b'C', b'C', 1, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert!(matches!(
        handshake::verify_client_hello(&short, &key, &key, &[0; 32], 1030),
        Err(GrantError::Truncated { .. })
    ));
}

#[test]
fn fuzz_body_survives_random_and_mutated_inputs() {
    let s = session();
    let nc = [5; 32];
    let hello = handshake::client_hello(&s.alice, &s.bytes, &nc).bytes;
    let answer = handshake::refuse("no");
    let valid = [s.bytes.clone(), hello, answer, handshake::node_hello(&nc)];
    for v in &valid {
        fuzz_parse(v);
    }
    crate::envelope::hostile_inputs::<wire::GrantFormat>(
        0xc0de, &valid, 0.6, 300, 20_000, fuzz_parse,
    );
    let packet = GrantPacket::new_checked(&s.bytes[..]).unwrap();
    for cut in 0..packet.body().len() {
        assert!(wire::parse_body(&packet.body()[..cut]).is_err());
    }
}
