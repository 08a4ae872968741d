//! The signed envelope every document the authority signs travels in
//! (sliver tickets, console grants), smoltcp style: a zero-copy view with
//! named field ranges ([`Envelope`]) over a [`DocumentFormat`], and a
//! [`BodyReader`] / [`put_str`] pair for canonical bodies.
//!
//! Envelope (integers big-endian):
//!
//! ```text
//!  0..4    magic (per document format)
//!  4       version (1)
//!  5       kind (per document format)
//!  6..8    reserved, zero
//!  8..12   body length N (at most the format's maximum)
//! 12..12+N body
//! 12+N..   64-byte ed25519 signature over SIGNING_CONTEXT || bytes[0..12+N]
//! ```
//!
//! The signing context differs per format, so no signature over one kind
//! of document can pass as a signature over another.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::keys::PublicKey;
use crate::model::MacAddr;

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::BODY_LEN.end;
/// Length of the trailing signature.
pub const SIGNATURE_LEN: usize = 64;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const RESERVED: Range<usize> = 6..8;
    pub const BODY_LEN: Range<usize> = 8..12;
}

/// What tells one kind of signed document from another.
pub trait DocumentFormat {
    /// The four bytes the document starts with.
    const MAGIC: [u8; 4];
    /// The envelope version this code reads and writes.
    const VERSION: u8 = 1;
    /// The document kind within the format.
    const KIND: u8;
    /// The largest body accepted.
    const MAX_BODY_LEN: usize;
    /// Prepended to the signed bytes (domain separation between formats).
    const SIGNING_CONTEXT: &'static [u8];
}

/// Why an envelope or a body field did not decode; each document's error
/// type converts it into its own wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than header and signature.
    Truncated {
        /// Bytes received.
        len: usize,
        /// Minimum length.
        needed: usize,
    },
    /// Wrong magic.
    BadMagic,
    /// Unknown version.
    UnsupportedVersion(u8),
    /// Unknown kind.
    UnsupportedKind(u8),
    /// The declared length does not match the bytes.
    LengthMismatch {
        /// Length the header implies.
        declared: usize,
        /// Bytes received.
        actual: usize,
    },
    /// A header or body field does not decode.
    Malformed {
        /// The field being decoded.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// A read-only view of a signed envelope of format `F`.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<F, T: AsRef<[u8]>> {
    buffer: T,
    format: PhantomData<F>,
}

impl<F: DocumentFormat, T: AsRef<[u8]>> Envelope<F, T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passed.
    pub fn new_unchecked(buffer: T) -> Self {
        Envelope {
            buffer,
            format: PhantomData,
        }
    }

    /// Wraps a buffer and checks its header and length, after which no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, EnvelopeError> {
        let envelope = Self::new_unchecked(buffer);
        envelope.check_len()?;
        Ok(envelope)
    }

    /// Checks that the buffer holds exactly one well-formed envelope.
    pub fn check_len(&self) -> Result<(), EnvelopeError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN + SIGNATURE_LEN {
            return Err(EnvelopeError::Truncated {
                len: b.len(),
                needed: HEADER_LEN + SIGNATURE_LEN,
            });
        }
        if b[field::MAGIC] != F::MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        if b[field::VERSION] != F::VERSION {
            return Err(EnvelopeError::UnsupportedVersion(b[field::VERSION]));
        }
        if b[field::KIND] != F::KIND {
            return Err(EnvelopeError::UnsupportedKind(b[field::KIND]));
        }
        if b[field::RESERVED] != [0, 0] {
            return Err(EnvelopeError::Malformed {
                field: "reserved",
                reason: "reserved header bytes must be zero".into(),
            });
        }
        let body_len = self.body_len();
        if body_len > F::MAX_BODY_LEN {
            return Err(EnvelopeError::Malformed {
                field: "body length",
                reason: format!(
                    "{body_len} bytes is more than the limit of {}",
                    F::MAX_BODY_LEN
                ),
            });
        }
        let expected = HEADER_LEN + body_len + SIGNATURE_LEN;
        if b.len() != expected {
            return Err(EnvelopeError::LengthMismatch {
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

    /// The document body.
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

/// Builds the unsigned envelope of format `F` around `body`; the caller appends the signature.
pub fn emit_unsigned<F: DocumentFormat>(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(&F::MAGIC);
    out.push(F::VERSION);
    out.push(F::KIND);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The message the authority signs for an envelope's signed part.
pub fn signing_message<F: DocumentFormat>(signed_part: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(F::SIGNING_CONTEXT.len() + signed_part.len());
    msg.extend_from_slice(F::SIGNING_CONTEXT);
    msg.extend_from_slice(signed_part);
    msg
}

/// Appends a string as a u8 length and UTF-8. Registry names are far below
/// 255 bytes; a longer string is cut at a character boundary rather than
/// corrupting the framing.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Reads a canonical body field by field; every error names the field.
pub struct BodyReader<'a> {
    buf: &'a [u8],
    field: &'static str,
}

impl<'a> BodyReader<'a> {
    /// A reader over `body`.
    pub fn new(body: &'a [u8]) -> Self {
        BodyReader {
            buf: body,
            field: "body",
        }
    }

    /// A malformed-field error for the current field.
    pub fn err(&self, reason: impl Into<String>) -> EnvelopeError {
        EnvelopeError::Malformed {
            field: self.field,
            reason: reason.into(),
        }
    }

    /// Names the field the next reads belong to.
    pub fn at(&mut self, field: &'static str) -> &mut Self {
        self.field = field;
        self
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(EnvelopeError::Malformed {
                field: "body",
                reason: format!("{} bytes after the last field", self.buf.len()),
            })
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
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

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        Ok(self.take(N)?.try_into().unwrap())
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Result<u16, EnvelopeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, EnvelopeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Result<u64, EnvelopeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian i64.
    pub fn i64(&mut self) -> Result<i64, EnvelopeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A u8 length and UTF-8 text.
    pub fn str(&mut self) -> Result<String, EnvelopeError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.err("text is not UTF-8"))
    }

    /// An IPv4 address.
    pub fn ipv4(&mut self) -> Result<Ipv4Addr, EnvelopeError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }

    /// An ed25519 public key.
    pub fn key(&mut self) -> Result<PublicKey, EnvelopeError> {
        Ok(PublicKey(self.array()?))
    }

    /// A MAC address.
    pub fn mac(&mut self) -> Result<MacAddr, EnvelopeError> {
        Ok(MacAddr(self.array()?))
    }

    /// A family byte (0 none, 4, 6), the address and a port.
    pub fn endpoint(&mut self) -> Result<Option<SocketAddr>, EnvelopeError> {
        let ip = match self.u8()? {
            0 => return Ok(None),
            4 => IpAddr::V4(self.ipv4()?),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            other => return Err(self.err(format!("unknown address family {other}"))),
        };
        Ok(Some(SocketAddr::new(ip, self.u16()?)))
    }

    /// A u16 element count.
    pub fn count(&mut self) -> Result<usize, EnvelopeError> {
        Ok(self.u16()? as usize)
    }
}

/// For parser tests: feeds `check` `rounds` hostile inputs of format `F`.
/// Each starts as one of the `valid` documents (with probability
/// `valid_share`) or as random bytes of up to `max_random_len` under a
/// plausible header, then gets up to three random bytes and, sometimes, a
/// random cut.
#[cfg(test)]
pub(crate) fn hostile_inputs<F: DocumentFormat>(
    seed: u64,
    valid: &[Vec<u8>],
    valid_share: f64,
    max_random_len: usize,
    rounds: usize,
    mut check: impl FnMut(&[u8]),
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..rounds {
        let mut data = if rng.random_bool(valid_share) {
            valid[rng.random_range(0..valid.len())].clone()
        } else {
            let len = rng.random_range(0..max_random_len);
            let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if d.len() >= HEADER_LEN {
                d[field::MAGIC].copy_from_slice(&F::MAGIC);
                d[field::VERSION] = F::VERSION;
                d[field::KIND] = F::KIND;
                d[field::RESERVED].copy_from_slice(&[0, 0]);
                let body = d.len().saturating_sub(HEADER_LEN + SIGNATURE_LEN) as u32;
                d[field::BODY_LEN].copy_from_slice(&body.to_be_bytes());
            }
            d
        };
        for _ in 0..rng.random_range(0..4) {
            if !data.is_empty() {
                let i = rng.random_range(0..data.len());
                data[i] = rng.random();
            }
        }
        if rng.random_bool(0.1) && !data.is_empty() {
            let cut = rng.random_range(0..data.len());
            data.truncate(cut);
        }
        check(&data);
    }
}
