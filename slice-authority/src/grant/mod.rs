//! Console grants: the authority's short-lived, signed permission for one
//! principal to attach to one sliver's serial console on its node.
//!
//! `POST /v1/slices/{slice}/slivers/{id}/console` checks that the caller
//! may work in the slice (admin, its owner, a PI of its site, a member)
//! and returns a [`ConsoleGrant`] signed by the authority key: the sliver,
//! its slice, the node (name and identity key), the principal (name and
//! public key), and a validity of `console_grant_secs` (60 s by default).
//! The node checks it offline with nothing but the authority's public key
//! ([`verify_grant`]), exactly like a ticket.
//!
//! A grant alone is not enough: whoever presents it must also prove they
//! hold the principal's key, by signing the node's fresh challenge
//! ([`possession_message`]), and the node proves it holds its identity key
//! the same way, so a stolen grant is useless and a client can tell the
//! real node from an impostor. [`handshake`] frames the messages on the
//! console TCP connection.

pub mod handshake;
pub mod wire;

use ed25519_dalek::{Signature, Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::keys::PublicKey;
pub use wire::GrantPacket;

/// How far a node's clock may lag behind the authority's before a fresh
/// grant looks "issued in the future".
pub const CLOCK_SKEW_SECS: i64 = 60;

/// The longest validity a grant may have (the authority's `console_grant_secs` is at most this).
pub const MAX_GRANT_SECS: i64 = 3600;

/// Length of a handshake challenge.
pub const CHALLENGE_LEN: usize = 32;

/// One principal's permission to attach to one sliver's console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleGrant {
    /// Random id, also in the authority's audit log entry (`sliver.console`).
    pub grant_id: [u8; 16],
    /// Unix seconds when the authority signed it.
    pub issued_at: i64,
    /// Unix seconds from which the node refuses it.
    pub expires_at: i64,
    /// The sliver whose console it opens.
    pub sliver_id: u64,
    /// The sliver's slice.
    pub slice: String,
    /// The node that runs the sliver.
    pub node: String,
    /// That node's ed25519 identity key.
    pub node_key: PublicKey,
    /// Who may use it (for the node's log).
    pub principal: String,
    /// The key the user of the grant must prove they hold.
    pub principal_key: PublicKey,
}

impl ConsoleGrant {
    /// The grant id in hex, as the audit log shows it.
    pub fn grant_id_hex(&self) -> String {
        hex::encode(self.grant_id)
    }
}

/// Why a grant or a proof of possession was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Shorter than the smallest possible message.
    #[error("console grant is truncated: {len} bytes, at least {needed} needed; ask the authority for a new one")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Minimum length.
        needed: usize,
    },
    /// Does not start with the expected magic.
    #[error("not a slicenet console grant or handshake message (bad magic); is the client speaking to a slicenet console port?")]
    BadMagic,
    /// A future envelope version.
    #[error("console grant version {0} is not supported here; upgrade slicenet")]
    UnsupportedVersion(u8),
    /// A document kind this code does not know.
    #[error("console grant kind {0} is not supported here; upgrade slicenet")]
    UnsupportedKind(u8),
    /// The length in the header does not match the bytes.
    #[error("console grant length mismatch: header says {declared} bytes, got {actual}; it was cut or padded in transit")]
    LengthMismatch {
        /// Length the header implies.
        declared: usize,
        /// Bytes received.
        actual: usize,
    },
    /// The authority's signature does not verify.
    #[error("console grant signature is invalid: forged, modified, or signed by a different authority; check the node's authority public key")]
    BadSignature,
    /// A field does not decode.
    #[error("console grant field {field} is malformed: {reason}")]
    Malformed {
        /// The field being decoded.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Past its expiry.
    #[error("console grant expired at {expired_at} (now {now}); grants live a minute: ask the authority for a new one (`slicenet console` does this by itself)")]
    Expired {
        /// The grant's expiry.
        expired_at: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// Issued further in the future than clock skew explains.
    #[error(
        "console grant issued at {issued_at}, in the future (now {now}); check this node's clock"
    )]
    NotYetValid {
        /// The grant's issue time.
        issued_at: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// Signed for a different node.
    #[error("console grant is for node {grant_node}, not this one; connect to the console address the authority gave with the grant")]
    WrongNode {
        /// The node named in the grant.
        grant_node: String,
    },
    /// The node refused the client (its reason).
    #[error("the node refused the console connection: {reason}")]
    Refused {
        /// What the node said.
        reason: String,
    },
    /// The proof of possession does not verify.
    #[error("the {party} did not prove it holds the key named in the console grant (signature over the handshake does not verify)")]
    BadPossession {
        /// Who failed to prove it.
        party: Party,
    },
}

/// Signs `grant` with the authority key and returns the canonical bytes.
pub fn sign(grant: &ConsoleGrant, authority: &SigningKey) -> Vec<u8> {
    let mut bytes = wire::emit_unsigned(grant);
    let signature = authority.sign(&wire::signing_message(&bytes));
    bytes.extend_from_slice(&signature.to_bytes());
    bytes
}

/// Checks the envelope and the authority's signature only (no clock, no
/// node): what a client does with the grant it received, to learn the node's key.
pub fn verify_grant_signature(
    bytes: &[u8],
    authority: &PublicKey,
) -> Result<ConsoleGrant, GrantError> {
    let packet = GrantPacket::new_checked(bytes)?;
    let key = authority
        .verifying_key()
        .map_err(|_| GrantError::BadSignature)?;
    let signature = Signature::from_bytes(&packet.signature());
    key.verify_strict(&wire::signing_message(packet.signed_part()), &signature)
        .map_err(|_| GrantError::BadSignature)?;
    wire::parse_body(packet.body())
}

/// What a node checks before it opens a console: the envelope, the
/// authority's signature, that the grant names this node's identity key,
/// and that `now` (unix seconds) lies within its validity.
pub fn verify_grant(
    bytes: &[u8],
    authority: &PublicKey,
    node_key: &PublicKey,
    now: i64,
) -> Result<ConsoleGrant, GrantError> {
    let grant = verify_grant_signature(bytes, authority)?;
    if &grant.node_key != node_key {
        return Err(GrantError::WrongNode {
            grant_node: grant.node,
        });
    }
    if grant.issued_at > now + CLOCK_SKEW_SECS {
        return Err(GrantError::NotYetValid {
            issued_at: grant.issued_at,
            now,
        });
    }
    if now >= grant.expires_at {
        return Err(GrantError::Expired {
            expired_at: grant.expires_at,
            now,
        });
    }
    Ok(grant)
}

/// Who proves possession of a key in the console handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The user of the grant, with the principal's key.
    Principal,
    /// The node, with its identity key.
    Node,
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Party::Principal => "client",
            Party::Node => "node",
        })
    }
}

/// The exact bytes a party signs to prove it holds its key in one console
/// session:
///
/// ```text
/// "slicenet console possession v1\0" || party (1 principal, 2 node)
///   || sha256(grant bytes) || node challenge [32] || client challenge [32]
/// ```
///
/// Both challenges are fresh random bytes per connection (the node's in
/// its hello, the client's in its own), so a proof is good for one session
/// only and cannot be replayed; the party byte keeps the principal's proof
/// from passing as the node's and back; the grant hash ties the proof to
/// the grant it presents.
pub fn possession_message(
    party: Party,
    grant_bytes: &[u8],
    node_challenge: &[u8; CHALLENGE_LEN],
    client_challenge: &[u8; CHALLENGE_LEN],
) -> Vec<u8> {
    const CONTEXT: &[u8] = b"slicenet console possession v1\0";
    let mut msg = Vec::with_capacity(CONTEXT.len() + 1 + 32 + 2 * CHALLENGE_LEN);
    msg.extend_from_slice(CONTEXT);
    msg.push(match party {
        Party::Principal => 1,
        Party::Node => 2,
    });
    msg.extend_from_slice(&Sha256::digest(grant_bytes));
    msg.extend_from_slice(node_challenge);
    msg.extend_from_slice(client_challenge);
    msg
}

/// Signs the [`possession_message`] with `key` (the principal's key for
/// [`Party::Principal`], the node's identity key for [`Party::Node`]).
pub fn prove_possession(
    key: &SigningKey,
    party: Party,
    grant_bytes: &[u8],
    node_challenge: &[u8; CHALLENGE_LEN],
    client_challenge: &[u8; CHALLENGE_LEN],
) -> [u8; 64] {
    key.sign(&possession_message(
        party,
        grant_bytes,
        node_challenge,
        client_challenge,
    ))
    .to_bytes()
}

/// Checks a proof of possession made with [`prove_possession`] against the
/// key the (verified) grant names for that party.
pub fn verify_possession(
    grant: &ConsoleGrant,
    party: Party,
    grant_bytes: &[u8],
    node_challenge: &[u8; CHALLENGE_LEN],
    client_challenge: &[u8; CHALLENGE_LEN],
    signature: &[u8; 64],
) -> Result<(), GrantError> {
    let key = match party {
        Party::Principal => grant.principal_key,
        Party::Node => grant.node_key,
    };
    let bad = GrantError::BadPossession { party };
    let key = key.verifying_key().map_err(|_| bad.clone())?;
    key.verify_strict(
        &possession_message(party, grant_bytes, node_challenge, client_challenge),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| bad)
}

/// The body of the fuzz target `console_grant_parse` (`slice-authority/fuzz`):
/// decodes arbitrary bytes as a grant (re-encoding what decodes must give the
/// same bytes) and as each handshake message; nothing may panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(packet) = GrantPacket::new_checked(data) {
        if let Ok(grant) = wire::parse_body(packet.body()) {
            let mut again = Vec::new();
            wire::emit_body(&grant, &mut again);
            assert_eq!(again, packet.body(), "grant body encoding is not canonical");
        }
    }
    let key = PublicKey([7; 32]);
    let _ = verify_grant(data, &key, &key, 0);
    handshake::fuzz_parse(data);
}

#[cfg(test)]
mod tests;

impl From<crate::envelope::EnvelopeError> for GrantError {
    fn from(e: crate::envelope::EnvelopeError) -> Self {
        use crate::envelope::EnvelopeError as E;
        match e {
            E::Truncated { len, needed } => GrantError::Truncated { len, needed },
            E::BadMagic => GrantError::BadMagic,
            E::UnsupportedVersion(v) => GrantError::UnsupportedVersion(v),
            E::UnsupportedKind(k) => GrantError::UnsupportedKind(k),
            E::LengthMismatch { declared, actual } => {
                GrantError::LengthMismatch { declared, actual }
            }
            E::Malformed { field, reason } => GrantError::Malformed { field, reason },
        }
    }
}
