//! The console grant wire format, smoltcp style like the tickets': a
//! zero-copy view of the signed envelope ([`GrantPacket`]) with named field
//! ranges, and a canonical body encoding ([`parse_body`] / [`emit_body`])
//! so `emit(parse(b)) == b` for every accepted `b`.
//!
//! Envelope (integers big-endian):
//!
//! ```text
//!  0..4    magic "SNCG"
//!  4       version (1)
//!  5       kind (1 = console grant)
//!  6..8    reserved, zero
//!  8..12   body length N (at most 1024)
//! 12..12+N body
//! 12+N..   64-byte ed25519 signature over SIGNING_CONTEXT || bytes[0..12+N]
//! ```
//!
//! Body: grant_id [16], issued_at i64, expires_at i64, sliver_id u64,
//! slice str, node str, node_key [32], principal str, principal_key [32].
//! A str is a u8 length and UTF-8. `expires_at` lies after `issued_at` and
//! at most [`super::MAX_GRANT_SECS`] later.

use super::{ConsoleGrant, GrantError, MAX_GRANT_SECS};
use crate::keys::PublicKey;

/// The four bytes every console grant starts with.
pub const MAGIC: [u8; 4] = *b"SNCG";
/// The envelope version this code reads and writes.
pub const VERSION: u8 = 1;
/// The document kind of a console grant.
pub const KIND_CONSOLE: u8 = 1;
/// Domain separation: no other signature by the authority key (tickets
/// sign "slicenet ticket v1\0 ...") can pass as a grant's.
pub const SIGNING_CONTEXT: &[u8] = b"slicenet console grant v1\0";
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::BODY_LEN.end;
/// Length of the trailing signature.
pub const SIGNATURE_LEN: usize = 64;
/// The largest body accepted (a grant is about 200 bytes).
pub const MAX_BODY_LEN: usize = 1024;
/// The largest whole grant.
pub const MAX_GRANT_LEN: usize = HEADER_LEN + MAX_BODY_LEN + SIGNATURE_LEN;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const RESERVED: Range<usize> = 6..8;
    pub const BODY_LEN: Range<usize> = 8..12;
}

/// A read-only view of a signed console grant envelope.
#[derive(Debug, Clone, Copy)]
pub struct GrantPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GrantPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passed.
    pub fn new_unchecked(buffer: T) -> Self {
        GrantPacket { buffer }
    }

    /// Wraps a buffer and checks its header and length, after which no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, GrantError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds exactly one well-formed envelope.
    pub fn check_len(&self) -> Result<(), GrantError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN + SIGNATURE_LEN {
            return Err(GrantError::Truncated {
                len: b.len(),
                needed: HEADER_LEN + SIGNATURE_LEN,
            });
        }
        if b[field::MAGIC] != MAGIC {
            return Err(GrantError::BadMagic);
        }
        if b[field::VERSION] != VERSION {
            return Err(GrantError::UnsupportedVersion(b[field::VERSION]));
        }
        if b[field::KIND] != KIND_CONSOLE {
            return Err(GrantError::UnsupportedKind(b[field::KIND]));
        }
        if b[field::RESERVED] != [0, 0] {
            return Err(GrantError::Malformed {
                field: "reserved",
                reason: "reserved header bytes must be zero".into(),
            });
        }
        let body_len = self.body_len();
        if body_len > MAX_BODY_LEN {
            return Err(GrantError::Malformed {
                field: "body length",
                reason: format!("{body_len} bytes is more than the limit of {MAX_BODY_LEN}"),
            });
        }
        let expected = HEADER_LEN + body_len + SIGNATURE_LEN;
        if b.len() != expected {
            return Err(GrantError::LengthMismatch {
                declared: expected,
                actual: b.len(),
            });
        }
        Ok(())
    }

    /// The declared body length.
    pub fn body_len(&self) -> usize {
        let b = self.buffer.as_ref();
        u32::from_be_bytes(b[field::BODY_LEN].try_into().unwrap()) as usize
    }

    /// The grant body.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.body_len()]
    }

    /// The bytes the signature covers (header and body; the context is prepended when signing).
    pub fn signed_part(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + self.body_len()]
    }

    /// The 64 signature bytes.
    pub fn signature(&self) -> [u8; SIGNATURE_LEN] {
        let start = HEADER_LEN + self.body_len();
        self.buffer.as_ref()[start..start + SIGNATURE_LEN]
            .try_into()
            .unwrap()
    }
}

/// Builds the unsigned envelope (header and body); the caller appends the signature.
pub fn emit_unsigned(grant: &ConsoleGrant) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    emit_body(grant, &mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(KIND_CONSOLE);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The message the authority signs for an envelope's signed part.
pub fn signing_message(signed_part: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + signed_part.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(signed_part);
    msg
}

struct Reader<'a> {
    buf: &'a [u8],
    field: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> GrantError {
        GrantError::Malformed {
            field: self.field,
            reason: reason.into(),
        }
    }

    fn at(&mut self, field: &'static str) -> &mut Self {
        self.field = field;
        self
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GrantError> {
        if self.buf.len() < n {
            return Err(self.err(format!(
                "body ends early: {n} bytes needed, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GrantError> {
        Ok(self.take(N)?.try_into().unwrap())
    }

    fn u64(&mut self) -> Result<u64, GrantError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, GrantError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<String, GrantError> {
        let len = self.take(1)?[0] as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.err("text is not UTF-8"))
    }

    fn key(&mut self) -> Result<PublicKey, GrantError> {
        Ok(PublicKey(self.array()?))
    }
}

/// Parses a grant body; rejects trailing bytes and impossible lifetimes.
pub fn parse_body(body: &[u8]) -> Result<ConsoleGrant, GrantError> {
    let mut r = Reader {
        buf: body,
        field: "grant_id",
    };
    let grant_id = r.at("grant_id").array()?;
    let issued_at = r.at("issued_at").i64()?;
    let expires_at = r.at("expires_at").i64()?;
    let lifetime = (expires_at as i128) - (issued_at as i128);
    if lifetime <= 0 || lifetime > MAX_GRANT_SECS as i128 {
        return Err(r.err(format!(
            "a grant lives more than 0 and at most {MAX_GRANT_SECS} seconds, this one from {issued_at} to {expires_at}"
        )));
    }
    let sliver_id = r.at("sliver_id").u64()?;
    let slice = r.at("slice").str()?;
    let node = r.at("node").str()?;
    let node_key = r.at("node_key").key()?;
    let principal = r.at("principal").str()?;
    let principal_key = r.at("principal_key").key()?;
    if !r.buf.is_empty() {
        return Err(GrantError::Malformed {
            field: "body",
            reason: format!("{} bytes after the last field", r.buf.len()),
        });
    }
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

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Registry names are far below 255 bytes; a longer string is cut at a
    // character boundary rather than corrupting the framing.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
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
