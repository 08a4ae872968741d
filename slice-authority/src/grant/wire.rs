//! The console grant wire format: the authority's signed envelope
//! ([`crate::envelope`], magic "SNCG", kind 1, body at most 1 KiB) around a
//! canonical body ([`parse_body`] / [`emit_body`]), so `emit(parse(b)) == b`
//! for every accepted `b`.
//!
//! Body: grant_id [16], issued_at i64, expires_at i64, sliver_id u64,
//! slice str, node str, node_key [32], principal str, principal_key [32].
//! A str is a u8 length and UTF-8. `expires_at` lies after `issued_at` and
//! at most [`super::MAX_GRANT_SECS`] later.

use super::{ConsoleGrant, GrantError, MAX_GRANT_SECS};
use crate::envelope::{
    self, put_str, BodyReader, DocumentFormat, Envelope, HEADER_LEN, SIGNATURE_LEN,
};

/// The console grant format.
#[derive(Debug, Clone, Copy)]
pub struct GrantFormat;

impl DocumentFormat for GrantFormat {
    const MAGIC: [u8; 4] = *b"SNCG";
    const KIND: u8 = 1;
    // a grant is about 200 bytes
    const MAX_BODY_LEN: usize = 1024;
    // no other signature by the authority key (tickets sign
    // "slicenet ticket v1\0 ...") can pass as a grant's
    const SIGNING_CONTEXT: &'static [u8] = b"slicenet console grant v1\0";
}

/// The largest whole grant.
pub const MAX_GRANT_LEN: usize = HEADER_LEN + GrantFormat::MAX_BODY_LEN + SIGNATURE_LEN;

/// A read-only view of a signed console grant envelope.
pub type GrantPacket<T> = Envelope<GrantFormat, T>;

/// Builds the unsigned envelope (header and body); the caller appends the signature.
pub fn emit_unsigned(grant: &ConsoleGrant) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    emit_body(grant, &mut body);
    envelope::emit_unsigned::<GrantFormat>(&body)
}

/// The message the authority signs for an envelope's signed part.
pub fn signing_message(signed_part: &[u8]) -> Vec<u8> {
    envelope::signing_message::<GrantFormat>(signed_part)
}

/// Parses a grant body; rejects trailing bytes and impossible lifetimes.
pub fn parse_body(body: &[u8]) -> Result<ConsoleGrant, GrantError> {
    let mut r = BodyReader::new(body);
    let grant_id = r.at("grant_id").array()?;
    let issued_at = r.at("issued_at").i64()?;
    let expires_at = r.at("expires_at").i64()?;
    let lifetime = (expires_at as i128) - (issued_at as i128);
    if lifetime <= 0 || lifetime > MAX_GRANT_SECS as i128 {
        return Err(r.err(format!(
            "a grant lives more than 0 and at most {MAX_GRANT_SECS} seconds, this one from {issued_at} to {expires_at}"
        )).into());
    }
    let sliver_id = r.at("sliver_id").u64()?;
    let slice = r.at("slice").str()?;
    let node = r.at("node").str()?;
    let node_key = r.at("node_key").key()?;
    let principal = r.at("principal").str()?;
    let principal_key = r.at("principal_key").key()?;
    r.finish()?;
    Ok(ConsoleGrant {
        grant_id,
        issued_at,
        expires_at,
        sliver_id,
        slice,
        node,
        node_key,
        principal,
        principal_key,
    })
}

/// Appends the canonical body encoding of `g` to `out`.
pub fn emit_body(g: &ConsoleGrant, out: &mut Vec<u8>) {
    out.extend_from_slice(&g.grant_id);
    out.extend_from_slice(&g.issued_at.to_be_bytes());
    out.extend_from_slice(&g.expires_at.to_be_bytes());
    out.extend_from_slice(&g.sliver_id.to_be_bytes());
    put_str(out, &g.slice);
    put_str(out, &g.node);
    out.extend_from_slice(&g.node_key.0);
    put_str(out, &g.principal);
    out.extend_from_slice(&g.principal_key.0);
}
