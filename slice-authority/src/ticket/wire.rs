//! The ticket wire format, smoltcp style: a zero-copy view of the signed
//! envelope ([`TicketPacket`]) with named field ranges, and a canonical
//! body encoding ([`parse_body`] / [`emit_body`]) with exactly one byte
//! string per value, so `emit(parse(b)) == b` for every accepted `b`.
//!
//! Envelope (all integers big-endian):
//!
//! ```text
//!  0..4    magic "SNTK"
//!  4       version (1)
//!  5       kind (1 = sliver ticket)
//!  6..8    reserved, zero
//!  8..12   body length N
//! 12..12+N body
//! 12+N..   64-byte ed25519 signature over SIGNING_CONTEXT || bytes[0..12+N]
//! ```
//!
//! Body: epoch u64, issued_at i64, expires_at i64, status u8 (1 active,
//! 2 revoked), node str, node_key [32], slice str, sliver_id u64, resources
//! (vcpus u32, memory_mib u64, disk_gib u64, bandwidth_mbps u64), appliance
//! name str, appliance hash str, then a u16 count of enclave memberships.
//! A membership: enclave str, owner slice str, vni u32 (< 2^24), subnet
//! ipv4 [4] + prefix u8, own mac [6], own address [4], u16 count of members
//! (sliver_id u64, node str, mac [6], address [4]), u16 count of peers
//! (node str, node_key [32], wg_key [32], tunnel_address [4], endpoint), u16
//! count of gateways (name str, wg_key [32], tunnel_address [4], address [4],
//! mac [6], endpoint). A str is a u8 length and UTF-8; an endpoint is a
//! family byte (0 none, 4, 6), the address bytes and a u16 port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{EnclaveMembership, Gateway, Member, Peer, Ticket, TicketError, TicketStatus};
use crate::keys::PublicKey;
use crate::model::{Appliance, MacAddr, Resources};

/// The four bytes every ticket starts with.
pub const MAGIC: [u8; 4] = *b"SNTK";
/// The envelope version this code reads and writes.
pub const VERSION: u8 = 1;
/// The document kind of a sliver ticket.
pub const KIND_SLIVER: u8 = 1;
/// Domain separation: signatures over tickets can never be confused with
/// signatures over anything else an authority key signs.
pub const SIGNING_CONTEXT: &[u8] = b"slicenet ticket v1\0";
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::BODY_LEN.end;
/// Length of the trailing signature.
pub const SIGNATURE_LEN: usize = 64;
/// The largest body accepted (a ticket of a sliver in a few large enclaves is a few KiB).
pub const MAX_BODY_LEN: usize = 1 << 20;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const RESERVED: Range<usize> = 6..8;
    pub const BODY_LEN: Range<usize> = 8..12;
}

/// A read-only view of a signed ticket envelope.
#[derive(Debug, Clone, Copy)]
pub struct TicketPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TicketPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passed.
    pub fn new_unchecked(buffer: T) -> Self {
        TicketPacket { buffer }
    }

    /// Wraps a buffer and checks its header, length and the reserved bits,
    /// after which no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, TicketError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds exactly one well-formed envelope.
    pub fn check_len(&self) -> Result<(), TicketError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN + SIGNATURE_LEN {
            return Err(TicketError::Truncated {
                len: b.len(),
                needed: HEADER_LEN + SIGNATURE_LEN,
            });
        }
        if b[field::MAGIC] != MAGIC {
            return Err(TicketError::BadMagic);
        }
        if b[field::VERSION] != VERSION {
            return Err(TicketError::UnsupportedVersion(b[field::VERSION]));
        }
        if b[field::KIND] != KIND_SLIVER {
            return Err(TicketError::UnsupportedKind(b[field::KIND]));
        }
        if b[field::RESERVED] != [0, 0] {
            return Err(TicketError::Malformed {
                field: "reserved",
                reason: "reserved header bytes must be zero".into(),
            });
        }
        let body_len = self.body_len();
        if body_len > MAX_BODY_LEN {
            return Err(TicketError::Malformed {
                field: "body length",
                reason: format!("{body_len} bytes is more than the limit of {MAX_BODY_LEN}"),
            });
        }
        let expected = HEADER_LEN + body_len + SIGNATURE_LEN;
        if b.len() != expected {
            return Err(TicketError::LengthMismatch {
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

/// Builds the unsigned envelope (header and body); the caller appends the signature.
pub fn emit_unsigned(ticket: &Ticket) -> Vec<u8> {
    let mut body = Vec::with_capacity(512);
    emit_body(ticket, &mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(KIND_SLIVER);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The message an authority signs for an envelope's signed part.
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
    fn err(&self, reason: impl Into<String>) -> TicketError {
        TicketError::Malformed {
            field: self.field,
            reason: reason.into(),
        }
    }

    fn at(&mut self, field: &'static str) -> &mut Self {
        self.field = field;
        self
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        Ok(self.take(N)?.try_into().unwrap())
    }

    fn u8(&mut self) -> Result<u8, TicketError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TicketError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, TicketError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, TicketError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, TicketError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<String, TicketError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.err("text is not UTF-8"))
    }
    fn ipv4(&mut self) -> Result<Ipv4Addr, TicketError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }
    fn key(&mut self) -> Result<PublicKey, TicketError> {
        Ok(PublicKey(self.array()?))
    }
    fn mac(&mut self) -> Result<MacAddr, TicketError> {
        Ok(MacAddr(self.array()?))
    }
    fn endpoint(&mut self) -> Result<Option<SocketAddr>, TicketError> {
        let ip = match self.u8()? {
            0 => return Ok(None),
            4 => IpAddr::V4(self.ipv4()?),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            other => return Err(self.err(format!("unknown address family {other}"))),
        };
        Ok(Some(SocketAddr::new(ip, self.u16()?)))
    }
    fn count(&mut self) -> Result<usize, TicketError> {
        Ok(self.u16()? as usize)
    }
}

/// Parses a ticket body; rejects trailing bytes and every non-canonical value.
pub fn parse_body(body: &[u8]) -> Result<Ticket, TicketError> {
    let mut r = Reader {
        buf: body,
        field: "epoch",
    };
    let epoch = r.at("epoch").u64()?;
    let issued_at = r.at("issued_at").i64()?;
    let expires_at = r.at("expires_at").i64()?;
    let status = match r.at("status").u8()? {
        1 => TicketStatus::Active,
        2 => TicketStatus::Revoked,
        other => return Err(r.err(format!("unknown status {other}"))),
    };
    let node = r.at("node").str()?;
    let node_key = r.at("node_key").key()?;
    let slice = r.at("slice").str()?;
    let sliver_id = r.at("sliver_id").u64()?;
    let resources = Resources {
        vcpus: r.at("resources").u32()?,
        memory_mib: r.u64()?,
        disk_gib: r.u64()?,
        bandwidth_mbps: r.u64()?,
    };
    let appliance = Appliance {
        name: r.at("appliance").str()?,
        hash: r.str()?,
    };
    let n = r.at("enclaves").count()?;
    let mut enclaves = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let enclave = r.at("enclave").str()?;
        let owner_slice = r.str()?;
        let vni = r.at("vni").u32()?;
        if vni >= 1 << 24 {
            return Err(r.err(format!("VNI {vni} does not fit in 24 bits")));
        }
        let subnet = r.at("subnet").ipv4()?;
        let prefix_len = r.u8()?;
        if prefix_len > 32 {
            return Err(r.err(format!("prefix length {prefix_len} is more than 32")));
        }
        let mac = r.at("mac").mac()?;
        let address = r.at("address").ipv4()?;
        let n_members = r.at("members").count()?;
        let mut members = Vec::with_capacity(n_members.min(256));
        for _ in 0..n_members {
            members.push(Member {
                sliver_id: r.at("member").u64()?,
                node: r.str()?,
                mac: r.mac()?,
                address: r.ipv4()?,
            });
        }
        let n_peers = r.at("peers").count()?;
        let mut peers = Vec::with_capacity(n_peers.min(256));
        for _ in 0..n_peers {
            peers.push(Peer {
                node: r.at("peer").str()?,
                node_key: r.key()?,
                wg_public_key: r.key()?,
                tunnel_address: r.ipv4()?,
                endpoint: r.endpoint()?,
            });
        }
        let n_gateways = r.at("gateways").count()?;
        let mut gateways = Vec::with_capacity(n_gateways.min(64));
        for _ in 0..n_gateways {
            gateways.push(Gateway {
                name: r.at("gateway").str()?,
                wg_public_key: r.key()?,
                tunnel_address: r.ipv4()?,
                address: r.ipv4()?,
                mac: r.mac()?,
                endpoint: r.endpoint()?,
            });
        }
        enclaves.push(EnclaveMembership {
            enclave,
            slice: owner_slice,
            vni,
            subnet,
            prefix_len,
            mac,
            address,
            members,
            peers,
            gateways,
        });
    }
    if !r.buf.is_empty() {
        return Err(TicketError::Malformed {
            field: "body",
            reason: format!("{} bytes after the last field", r.buf.len()),
        });
    }
    Ok(Ticket {
        epoch,
        issued_at,
        expires_at,
        status,
        node,
        node_key,
        slice,
        sliver_id,
        resources,
        appliance,
        enclaves,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are validated far below 255 bytes by the registry; a longer
    // string is cut at a character boundary rather than corrupting the
    // framing.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n.min(u16::MAX as usize) as u16).to_be_bytes());
}

fn put_endpoint(out: &mut Vec<u8>, e: &Option<SocketAddr>) {
    match e {
        None => out.push(0),
        Some(SocketAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
    }
}

/// Appends the canonical body encoding of `t` to `out`.
pub fn emit_body(t: &Ticket, out: &mut Vec<u8>) {
    out.extend_from_slice(&t.epoch.to_be_bytes());
    out.extend_from_slice(&t.issued_at.to_be_bytes());
    out.extend_from_slice(&t.expires_at.to_be_bytes());
    out.push(match t.status {
        TicketStatus::Active => 1,
        TicketStatus::Revoked => 2,
    });
    put_str(out, &t.node);
    out.extend_from_slice(&t.node_key.0);
    put_str(out, &t.slice);
    out.extend_from_slice(&t.sliver_id.to_be_bytes());
    out.extend_from_slice(&t.resources.vcpus.to_be_bytes());
    out.extend_from_slice(&t.resources.memory_mib.to_be_bytes());
    out.extend_from_slice(&t.resources.disk_gib.to_be_bytes());
    out.extend_from_slice(&t.resources.bandwidth_mbps.to_be_bytes());
    put_str(out, &t.appliance.name);
    put_str(out, &t.appliance.hash);
    let enclaves = &t.enclaves[..t.enclaves.len().min(u16::MAX as usize)];
    put_count(out, enclaves.len());
    for e in enclaves {
        put_str(out, &e.enclave);
        put_str(out, &e.slice);
        out.extend_from_slice(&(e.vni & 0x00ff_ffff).to_be_bytes());
        out.extend_from_slice(&e.subnet.octets());
        out.push(e.prefix_len.min(32));
        out.extend_from_slice(&e.mac.0);
        out.extend_from_slice(&e.address.octets());
        let members = &e.members[..e.members.len().min(u16::MAX as usize)];
        put_count(out, members.len());
        for m in members {
            out.extend_from_slice(&m.sliver_id.to_be_bytes());
            put_str(out, &m.node);
            out.extend_from_slice(&m.mac.0);
            out.extend_from_slice(&m.address.octets());
        }
        let peers = &e.peers[..e.peers.len().min(u16::MAX as usize)];
        put_count(out, peers.len());
        for p in peers {
            put_str(out, &p.node);
            out.extend_from_slice(&p.node_key.0);
            out.extend_from_slice(&p.wg_public_key.0);
            out.extend_from_slice(&p.tunnel_address.octets());
            put_endpoint(out, &p.endpoint);
        }
        let gateways = &e.gateways[..e.gateways.len().min(u16::MAX as usize)];
        put_count(out, gateways.len());
        for g in gateways {
            put_str(out, &g.name);
            out.extend_from_slice(&g.wg_public_key.0);
            out.extend_from_slice(&g.tunnel_address.octets());
            out.extend_from_slice(&g.address.octets());
            out.extend_from_slice(&g.mac.0);
            put_endpoint(out, &g.endpoint);
        }
    }
}
