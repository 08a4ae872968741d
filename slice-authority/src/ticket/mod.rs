//! Signed tickets: what a node is allowed to run, signed by the authority
//! and verified offline by the node with the authority's public key.
//!
//! One ticket per sliver carries the node, slice, sliver id, resources,
//! appliance, the enclave memberships (VNI, this sliver's MAC and address,
//! the other members, the peer nodes' keys, tunnel addresses and underlay
//! endpoints, and gateways), an expiry (the slice's lease) and an epoch. The
//! authority's epoch counter only grows: every change that affects a sliver
//! (a new peer, a renewal, a revocation) issues that sliver a new ticket
//! with a higher epoch, and a node keeps only the highest epoch per sliver
//! ([`TicketBook`]). A revocation is itself a signed ticket with status
//! [`TicketStatus::Revoked`], so nobody but the authority can stop a sliver.
//!
//! Nodes need nothing but this module and the authority's public key:
//! [`verify`] checks the envelope, the signature and the validity period.

pub mod wire;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;
use crate::model::{Appliance, MacAddr, Resources};
pub use wire::TicketPacket;

/// How far a node's clock may lag behind the authority's before a fresh
/// ticket looks "issued in the future".
pub const CLOCK_SKEW_SECS: i64 = 300;

/// Whether the sliver may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    /// Run the sliver as described until `expires_at`.
    Active,
    /// Stop the sliver and free its resources now.
    Revoked,
}

/// One sliver's ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Authority-wide counter; a higher epoch supersedes a lower one for the same sliver.
    pub epoch: u64,
    /// Unix seconds when the authority signed it.
    pub issued_at: i64,
    /// Unix seconds after which the node must stop the sliver (the slice's lease).
    pub expires_at: i64,
    /// Run or stop.
    pub status: TicketStatus,
    /// Name of the node that runs the sliver.
    pub node: String,
    /// That node's ed25519 identity key (also its libp2p identity).
    pub node_key: PublicKey,
    /// The slice the sliver belongs to.
    pub slice: String,
    /// The sliver's id, unique forever within this authority.
    pub sliver_id: u64,
    /// What the node reserves for the sliver.
    pub resources: Resources,
    /// The appliance to boot.
    pub appliance: Appliance,
    /// The enclaves the sliver's NICs join, one NIC per membership in this order.
    pub enclaves: Vec<EnclaveMembership>,
}

/// The sliver's place in one enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveMembership {
    /// Enclave name (unique within its owning slice).
    pub enclave: String,
    /// The slice that owns the enclave.
    pub slice: String,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// The enclave's guest subnet.
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// This sliver's MAC on the enclave (the switch drops frames from any other source).
    pub mac: MacAddr,
    /// This sliver's guest address on the enclave.
    pub address: Ipv4Addr,
    /// Every member sliver, this one included.
    pub members: Vec<Member>,
    /// Every other node that hosts a member: the node's WireGuard peers for this enclave.
    pub peers: Vec<Peer>,
    /// External gateways (plain WireGuard + VXLAN hosts) on this enclave.
    pub gateways: Vec<Gateway>,
}

/// A member sliver of an enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Sliver id.
    pub sliver_id: u64,
    /// Node that hosts it.
    pub node: String,
    /// Its MAC on the enclave.
    pub mac: MacAddr,
    /// Its guest address on the enclave.
    pub address: Ipv4Addr,
}

/// A node that hosts members of the enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Node name.
    pub node: String,
    /// Its ed25519 identity (libp2p PeerId derives from it).
    pub node_key: PublicKey,
    /// Its WireGuard (x25519) public key.
    pub wg_public_key: PublicKey,
    /// Its overlay tunnel address.
    pub tunnel_address: Ipv4Addr,
    /// Its underlay UDP endpoint, when it registered one.
    pub endpoint: Option<SocketAddr>,
}

/// An external gateway host on the enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// Gateway name (unique within the enclave).
    pub name: String,
    /// Its WireGuard public key.
    pub wg_public_key: PublicKey,
    /// Its tunnel address.
    pub tunnel_address: Ipv4Addr,
    /// Its address on the enclave.
    pub address: Ipv4Addr,
    /// Its MAC on the enclave.
    pub mac: MacAddr,
    /// Its underlay endpoint, when it has a fixed one.
    pub endpoint: Option<SocketAddr>,
}

/// Why a ticket was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Shorter than the smallest possible ticket.
    #[error("ticket is truncated: {len} bytes, at least {needed} needed; fetch it again from the authority")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Minimum length.
        needed: usize,
    },
    /// Does not start with "SNTK".
    #[error("not a slicenet ticket (bad magic); check that the bytes came from /v1/nodes/<node>/tickets")]
    BadMagic,
    /// A future envelope version.
    #[error("ticket version {0} is not supported by this node; upgrade slicenet")]
    UnsupportedVersion(u8),
    /// A document kind this code does not know.
    #[error("ticket kind {0} is not supported by this node; upgrade slicenet")]
    UnsupportedKind(u8),
    /// The length in the header does not match the bytes.
    #[error("ticket length mismatch: header says {declared} bytes, got {actual}; the ticket was cut or padded in transit")]
    LengthMismatch {
        /// Length the header implies.
        declared: usize,
        /// Bytes received.
        actual: usize,
    },
    /// The signature does not verify: forged, tampered with, or signed by another authority.
    #[error("ticket signature is invalid: forged, modified, or signed by a different authority; check the node's authority public key")]
    BadSignature,
    /// The body does not decode.
    #[error("ticket field {field} is malformed: {reason}")]
    Malformed {
        /// The field being decoded.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Past its expiry.
    #[error(
        "ticket expired at {expired_at} (now {now}); the slice's lease ran out: renew the slice"
    )]
    Expired {
        /// The ticket's expiry.
        expired_at: i64,
        /// The node's clock.
        now: i64,
    },
    /// Issued further in the future than clock skew explains.
    #[error("ticket issued at {issued_at}, in the future (now {now}); check this node's clock")]
    NotYetValid {
        /// The ticket's issue time.
        issued_at: i64,
        /// The node's clock.
        now: i64,
    },
    /// Signed for a different node.
    #[error("ticket is for node {ticket_node}, not this node; it was misdelivered")]
    WrongNode {
        /// The node named in the ticket.
        ticket_node: String,
    },
}

/// Signs `ticket` with the authority key and returns the canonical bytes.
pub fn sign(ticket: &Ticket, authority: &SigningKey) -> Vec<u8> {
    let mut bytes = wire::emit_unsigned(ticket);
    let signature = authority.sign(&wire::signing_message(&bytes));
    bytes.extend_from_slice(&signature.to_bytes());
    bytes
}

/// Verifies a ticket offline: envelope, signature by `authority`, and that
/// `now` (unix seconds) lies within its validity period.
pub fn verify(bytes: &[u8], authority: &PublicKey, now: i64) -> Result<Ticket, TicketError> {
    let ticket = verify_signature(bytes, authority)?;
    if ticket.issued_at > now + CLOCK_SKEW_SECS {
        return Err(TicketError::NotYetValid {
            issued_at: ticket.issued_at,
            now,
        });
    }
    if now >= ticket.expires_at {
        return Err(TicketError::Expired {
            expired_at: ticket.expires_at,
            now,
        });
    }
    Ok(ticket)
}

/// Like [`verify`], and also checks that the ticket names this node's identity key.
pub fn verify_for_node(
    bytes: &[u8],
    authority: &PublicKey,
    node_key: &PublicKey,
    now: i64,
) -> Result<Ticket, TicketError> {
    let ticket = verify(bytes, authority, now)?;
    if &ticket.node_key != node_key {
        return Err(TicketError::WrongNode {
            ticket_node: ticket.node,
        });
    }
    Ok(ticket)
}

/// Checks the envelope and the signature only (no clock): for tools that
/// display old tickets.
pub fn verify_signature(bytes: &[u8], authority: &PublicKey) -> Result<Ticket, TicketError> {
    let packet = TicketPacket::new_checked(bytes)?;
    let key = authority
        .verifying_key()
        .map_err(|_| TicketError::BadSignature)?;
    let signature = Signature::from_bytes(&packet.signature());
    key.verify_strict(&wire::signing_message(packet.signed_part()), &signature)
        .map_err(|_| TicketError::BadSignature)?;
    wire::parse_body(packet.body())
}

/// What [`TicketBook::apply`] did with a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// First ticket for this sliver: create it.
    New,
    /// A newer ticket for a known sliver: reconcile (peers, expiry, ...).
    Updated {
        /// The epoch it replaces.
        previous_epoch: u64,
    },
    /// The sliver was revoked: stop it and free its resources.
    Revoked,
    /// Not newer than what the node holds: ignore it (a replay or a reordering).
    Stale {
        /// The epoch the node already holds.
        current_epoch: u64,
    },
}

/// A node's view of its tickets: the highest epoch per sliver. Revocations
/// stay as tombstones until they expire so an older active ticket replayed
/// later cannot bring a sliver back.
#[derive(Debug, Default, Clone)]
pub struct TicketBook {
    by_sliver: BTreeMap<u64, Ticket>,
    highest_epoch: u64,
}

impl TicketBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a verified ticket, keeping it only when it supersedes what the book holds.
    pub fn apply(&mut self, ticket: Ticket) -> Applied {
        self.highest_epoch = self.highest_epoch.max(ticket.epoch);
        let result = match self.by_sliver.get(&ticket.sliver_id) {
            Some(current) if current.epoch >= ticket.epoch => {
                return Applied::Stale {
                    current_epoch: current.epoch,
                }
            }
            _ if ticket.status == TicketStatus::Revoked => Applied::Revoked,
            Some(current) if current.status == TicketStatus::Active => Applied::Updated {
                previous_epoch: current.epoch,
            },
            _ => Applied::New,
        };
        self.by_sliver.insert(ticket.sliver_id, ticket);
        result
    }

    /// The highest epoch seen: pass it as `after_epoch` when polling the authority.
    pub fn highest_epoch(&self) -> u64 {
        self.highest_epoch
    }

    /// Active tickets not yet expired at `now`.
    pub fn active(&self, now: i64) -> impl Iterator<Item = &Ticket> {
        self.by_sliver
            .values()
            .filter(move |t| t.status == TicketStatus::Active && now < t.expires_at)
    }

    /// The current ticket of a sliver (active or revoked).
    pub fn get(&self, sliver_id: u64) -> Option<&Ticket> {
        self.by_sliver.get(&sliver_id)
    }

    /// Drops every ticket expired at `now` and returns the active ones among
    /// them: slivers the node must stop because their lease ran out.
    pub fn expire(&mut self, now: i64) -> Vec<Ticket> {
        let expired: Vec<u64> = self
            .by_sliver
            .values()
            .filter(|t| now >= t.expires_at)
            .map(|t| t.sliver_id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.by_sliver.remove(&id))
            .filter(|t| t.status == TicketStatus::Active)
            .collect()
    }
}

/// The body of the fuzz target (`slice-authority/fuzz`): decodes arbitrary
/// bytes as a ticket, and when they decode, checks that re-encoding gives
/// the same bytes (canonical form) and that signature checking never panics.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(packet) = TicketPacket::new_checked(data) {
        if let Ok(ticket) = wire::parse_body(packet.body()) {
            let mut again = Vec::new();
            wire::emit_body(&ticket, &mut again);
            assert_eq!(
                again,
                packet.body(),
                "ticket body encoding is not canonical"
            );
        }
    }
    let key = PublicKey([7; 32]);
    let _ = verify(data, &key, 0);
}

#[cfg(test)]
mod tests;

impl From<crate::envelope::EnvelopeError> for TicketError {
    fn from(e: crate::envelope::EnvelopeError) -> Self {
        use crate::envelope::EnvelopeError as E;
        match e {
            E::Truncated { len, needed } => TicketError::Truncated { len, needed },
            E::BadMagic => TicketError::BadMagic,
            E::UnsupportedVersion(v) => TicketError::UnsupportedVersion(v),
            E::UnsupportedKind(k) => TicketError::UnsupportedKind(k),
            E::LengthMismatch { declared, actual } => {
                TicketError::LengthMismatch { declared, actual }
            }
            E::Malformed { field, reason } => TicketError::Malformed { field, reason },
        }
    }
}
