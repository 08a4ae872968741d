//! The ticket wire format: the authority's signed envelope
//! ([`crate::envelope`], magic "SNTK", kind 1, body at most 1 MiB) around a
//! canonical body ([`parse_body`] / [`emit_body`]) with exactly one byte
//! string per value, so `emit(parse(b)) == b` for every accepted `b`.
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

use std::net::SocketAddr;

use super::{EnclaveMembership, Gateway, Member, Peer, Ticket, TicketError, TicketStatus};
use crate::envelope::{self, put_str, BodyReader, DocumentFormat, Envelope};
use crate::model::{Appliance, Resources};

/// The sliver ticket format.
#[derive(Debug, Clone, Copy)]
pub struct TicketFormat;

impl DocumentFormat for TicketFormat {
    const MAGIC: [u8; 4] = *b"SNTK";
    const KIND: u8 = 1;
    // a ticket of a sliver in a few large enclaves is a few KiB
    const MAX_BODY_LEN: usize = 1 << 20;
    // signatures over tickets can never be confused with signatures over
    // anything else an authority key signs
    const SIGNING_CONTEXT: &'static [u8] = b"slicenet ticket v1\0";
}

/// A read-only view of a signed ticket envelope.
pub type TicketPacket<T> = Envelope<TicketFormat, T>;

/// Builds the unsigned envelope (header and body); the caller appends the signature.
pub fn emit_unsigned(ticket: &Ticket) -> Vec<u8> {
    let mut body = Vec::with_capacity(512);
    emit_body(ticket, &mut body);
    envelope::emit_unsigned::<TicketFormat>(&body)
}

/// The message an authority signs for an envelope's signed part.
pub fn signing_message(signed_part: &[u8]) -> Vec<u8> {
    envelope::signing_message::<TicketFormat>(signed_part)
}

/// Parses a ticket body; rejects trailing bytes and every non-canonical value.
pub fn parse_body(body: &[u8]) -> Result<Ticket, TicketError> {
    let mut r = BodyReader::new(body);
    let epoch = r.at("epoch").u64()?;
    let issued_at = r.at("issued_at").i64()?;
    let expires_at = r.at("expires_at").i64()?;
    let status = match r.at("status").u8()? {
        1 => TicketStatus::Active,
        2 => TicketStatus::Revoked,
        other => return Err(r.err(format!("unknown status {other}")).into()),
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
            return Err(r.err(format!("VNI {vni} does not fit in 24 bits")).into());
        }
        let subnet = r.at("subnet").ipv4()?;
        let prefix_len = r.u8()?;
        if prefix_len > 32 {
            return Err(r
                .err(format!("prefix length {prefix_len} is more than 32"))
                .into());
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
    r.finish()?;
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
