//! The console handshake: how a client presents a console grant on a
//! node's console TCP port, and how both sides prove they hold their keys,
//! before the connection carries the sliver's serial console bytes.
//!
//! ```text
//! node   -> client  NodeHello   "SNCN" 1 0 | len 32 | node challenge [32]
//! client -> node    ClientHello "SNCC" 1 0 | len    | grant | client challenge [32] | principal proof [64]
//! node   -> client  NodeAnswer  "SNCA" 1 0 | len 64 | node proof [64]        (accepted)
//!                               "SNCA" 1 1 | len    | reason, UTF-8          (refused; the node closes)
//! then: raw console bytes both ways
//! ```
//!
//! Every frame is an 8-byte header — magic [4], version (1), a flag byte
//! (0; in a NodeAnswer 0 accepted / 1 refused), payload length u16 — and
//! the payload. A stream reader reads [`HEADER_LEN`] bytes, asks
//! [`payload_len`] how many follow (bounded, so a peer cannot make it
//! allocate much), reads them, and hands the whole frame to the parser.
//!
//! The proofs are ed25519 signatures over [`super::possession_message`]:
//! the principal's key (named in the grant) for the client, the node's
//! identity key (named in the grant, which the authority signed) for the
//! node. Both challenges are fresh random bytes per connection. The
//! handshake authenticates; it does not encrypt the console stream.

use ed25519_dalek::SigningKey;

use super::wire::MAX_GRANT_LEN;
use super::{
    prove_possession, verify_grant, verify_possession, ConsoleGrant, GrantError, Party,
    CHALLENGE_LEN,
};
use crate::keys::PublicKey;

/// Magic of the node's first message.
pub const NODE_HELLO: [u8; 4] = *b"SNCN";
/// Magic of the client's message.
pub const CLIENT_HELLO: [u8; 4] = *b"SNCC";
/// Magic of the node's answer.
pub const NODE_ANSWER: [u8; 4] = *b"SNCA";
/// The handshake version this code speaks.
pub const VERSION: u8 = 1;
/// Length of every frame header.
pub const HEADER_LEN: usize = field::LEN.end;
/// The largest payload of any frame (a ClientHello with the largest grant).
pub const MAX_PAYLOAD_LEN: usize = MAX_GRANT_LEN + CHALLENGE_LEN + PROOF_LEN;
/// The longest refusal reason sent.
pub const MAX_REASON_LEN: usize = 1024;
/// Length of a proof of possession (an ed25519 signature).
pub const PROOF_LEN: usize = 64;

const FLAG_ACCEPTED: u8 = 0;
const FLAG_REFUSED: u8 = 1;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const FLAG: usize = 5;
    pub const LEN: Range<usize> = 6..8;
}

/// Checks a frame header (at least [`HEADER_LEN`] bytes) and returns how
/// many payload bytes follow it.
pub fn payload_len(header: &[u8], magic: [u8; 4]) -> Result<usize, GrantError> {
    if header.len() < HEADER_LEN {
        return Err(GrantError::Truncated {
            len: header.len(),
            needed: HEADER_LEN,
        });
    }
    if header[field::MAGIC] != magic {
        return Err(GrantError::BadMagic);
    }
    if header[field::VERSION] != VERSION {
        return Err(GrantError::UnsupportedVersion(header[field::VERSION]));
    }
    let len = u16::from_be_bytes([header[field::LEN.start], header[field::LEN.start + 1]]) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(GrantError::Malformed {
            field: "handshake length",
            reason: format!("{len} bytes is more than the limit of {MAX_PAYLOAD_LEN}"),
        });
    }
    Ok(len)
}

/// A read-only view of one handshake frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks the header (magic, version, length) and that the buffer holds
    /// exactly one frame, after which no accessor can panic.
    pub fn new_checked(buffer: T, magic: [u8; 4]) -> Result<Self, GrantError> {
        let b = buffer.as_ref();
        let len = payload_len(b, magic)?;
        if b.len() != HEADER_LEN + len {
            return Err(GrantError::LengthMismatch {
                declared: HEADER_LEN + len,
                actual: b.len(),
            });
        }
        Ok(Frame { buffer })
    }

    /// The flag byte.
    pub fn flag(&self) -> u8 {
        self.buffer.as_ref()[field::FLAG]
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

fn frame(magic: [u8; 4], flag: u8, payload: &[&[u8]]) -> Vec<u8> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&magic);
    out.push(VERSION);
    out.push(flag);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
    out
}

fn malformed(field: &'static str, reason: impl Into<String>) -> GrantError {
    GrantError::Malformed {
        field,
        reason: reason.into(),
    }
}

/// A fresh random challenge (the OS-seeded CSPRNG of `rand`).
pub fn challenge() -> [u8; CHALLENGE_LEN] {
    rand::random()
}

/// The node's first message: its fresh challenge.
pub fn node_hello(node_challenge: &[u8; CHALLENGE_LEN]) -> Vec<u8> {
    frame(NODE_HELLO, 0, &[node_challenge])
}

/// Reads a node's first message; returns its challenge.
pub fn parse_node_hello(bytes: &[u8]) -> Result<[u8; CHALLENGE_LEN], GrantError> {
    let f = Frame::new_checked(bytes, NODE_HELLO)?;
    if f.flag() != 0 {
        return Err(malformed("node hello", "flag byte must be zero"));
    }
    f.payload().try_into().map_err(|_| {
        malformed(
            "node hello",
            format!(
                "challenge of {} bytes instead of {CHALLENGE_LEN}",
                f.payload().len()
            ),
        )
    })
}

/// What the client sends, and the challenge it chose (to check the node's answer with).
#[derive(Debug, Clone)]
pub struct ClientHello {
    /// The frame to send.
    pub bytes: Vec<u8>,
    /// The client's fresh challenge.
    pub client_challenge: [u8; CHALLENGE_LEN],
}

/// Builds the client's message: the grant, a fresh challenge and the
/// principal's proof of possession over the node's challenge.
pub fn client_hello(
    principal: &SigningKey,
    grant_bytes: &[u8],
    node_challenge: &[u8; CHALLENGE_LEN],
) -> ClientHello {
    let client_challenge = challenge();
    let proof = prove_possession(
        principal,
        Party::Principal,
        grant_bytes,
        node_challenge,
        &client_challenge,
    );
    ClientHello {
        bytes: frame(CLIENT_HELLO, 0, &[grant_bytes, &client_challenge, &proof]),
        client_challenge,
    }
}

/// A client whose grant and proof the node accepted.
#[derive(Debug, Clone)]
pub struct VerifiedClient {
    /// The grant, verified.
    pub grant: ConsoleGrant,
    /// Its bytes (the node's proof covers their hash).
    pub grant_bytes: Vec<u8>,
    /// The client's challenge, for the node's proof.
    pub client_challenge: [u8; CHALLENGE_LEN],
}

/// The node's whole check of a client's message: the grant (authority
/// signature, this node, validity at `now`) and the principal's proof of
/// possession over this connection's challenge.
pub fn verify_client_hello(
    bytes: &[u8],
    authority: &PublicKey,
    node_key: &PublicKey,
    node_challenge: &[u8; CHALLENGE_LEN],
    now: i64,
) -> Result<VerifiedClient, GrantError> {
    let f = Frame::new_checked(bytes, CLIENT_HELLO)?;
    if f.flag() != 0 {
        return Err(malformed("client hello", "flag byte must be zero"));
    }
    let payload = f.payload();
    let Some(grant_len) = payload.len().checked_sub(CHALLENGE_LEN + PROOF_LEN) else {
        return Err(GrantError::Truncated {
            len: bytes.len(),
            needed: HEADER_LEN + CHALLENGE_LEN + PROOF_LEN,
        });
    };
    let (grant_bytes, rest) = payload.split_at(grant_len);
    let (client_challenge, proof) = rest.split_at(CHALLENGE_LEN);
    let client_challenge: [u8; CHALLENGE_LEN] = client_challenge.try_into().unwrap();
    let proof: [u8; PROOF_LEN] = proof.try_into().unwrap();
    let grant = verify_grant(grant_bytes, authority, node_key, now)?;
    verify_possession(
        &grant,
        Party::Principal,
        grant_bytes,
        node_challenge,
        &client_challenge,
        &proof,
    )?;
    Ok(VerifiedClient {
        grant,
        grant_bytes: grant_bytes.to_vec(),
        client_challenge,
    })
}

/// The node's answer to a verified client: its own proof of possession.
/// After sending it, the connection carries the console.
pub fn accept(
    node_key: &SigningKey,
    client: &VerifiedClient,
    node_challenge: &[u8; CHALLENGE_LEN],
) -> Vec<u8> {
    let proof = prove_possession(
        node_key,
        Party::Node,
        &client.grant_bytes,
        node_challenge,
        &client.client_challenge,
    );
    frame(NODE_ANSWER, FLAG_ACCEPTED, &[&proof])
}

/// The node's answer to a client it refuses (say why; then close).
pub fn refuse(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    frame(NODE_ANSWER, FLAG_REFUSED, &[&reason.as_bytes()[..end]])
}

/// The client's check of the node's answer: a refusal becomes
/// [`GrantError::Refused`]; an acceptance must carry the proof of the node
/// key the grant names.
pub fn verify_node_answer(
    bytes: &[u8],
    grant: &ConsoleGrant,
    grant_bytes: &[u8],
    node_challenge: &[u8; CHALLENGE_LEN],
    client_challenge: &[u8; CHALLENGE_LEN],
) -> Result<(), GrantError> {
    let f = Frame::new_checked(bytes, NODE_ANSWER)?;
    match f.flag() {
        FLAG_ACCEPTED => {
            let proof: [u8; PROOF_LEN] = f.payload().try_into().map_err(|_| {
                malformed(
                    "node answer",
                    format!(
                        "proof of {} bytes instead of {PROOF_LEN}",
                        f.payload().len()
                    ),
                )
            })?;
            verify_possession(
                grant,
                Party::Node,
                grant_bytes,
                node_challenge,
                client_challenge,
                &proof,
            )
        }
        FLAG_REFUSED => Err(GrantError::Refused {
            // Shown to a person: no terminal control sequences from the network.
            reason: String::from_utf8_lossy(f.payload())
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        }),
        other => Err(malformed("node answer", format!("unknown flag {other}"))),
    }
}

/// Runs every handshake parser over arbitrary bytes (part of the
/// `console_grant_parse` fuzz target); nothing may panic.
pub fn fuzz_parse(data: &[u8]) {
    let key = PublicKey([7; 32]);
    let _ = parse_node_hello(data);
    let _ = verify_client_hello(data, &key, &key, &[0; CHALLENGE_LEN], 0);
    let grant = ConsoleGrant {
        grant_id: [0; 16],
        issued_at: 0,
        expires_at: 60,
        sliver_id: 1,
        slice: "ams_x".into(),
        node: "n".into(),
        node_key: key,
        principal: "p".into(),
        principal_key: key,
    };
    let _ = verify_node_answer(data, &grant, data, &[0; CHALLENGE_LEN], &[0; CHALLENGE_LEN]);
    for magic in [NODE_HELLO, CLIENT_HELLO, NODE_ANSWER] {
        if let Ok(len) = payload_len(data, magic) {
            assert!(len <= MAX_PAYLOAD_LEN);
        }
    }
}
