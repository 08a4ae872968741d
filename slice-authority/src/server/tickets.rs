//! Issuing tickets (inside the mutation's transaction, with the next epoch)
//! and delivering them to nodes by long poll.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use base64::Engine;
use serde::Deserialize;
use sqlx::{FromRow, SqliteConnection};

use super::authn::Caller;
use super::error::{ApiError, ApiResult};
use super::store;
use super::{AppState, Inner, WriteTx};
use crate::api::{SignedTicket, TicketBatch};
use crate::config::Ipv4Net;
use crate::keys::PublicKey;
use crate::model::{Appliance, MacAddr, Resources};
use crate::ticket::{
    self, EnclaveMembership, Gateway, Member, Peer, Ticket, TicketPacket, TicketStatus,
};

/// An enclave's data as tickets and exports carry it.
pub struct EnclaveData {
    pub name: String,
    pub slice: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// (node id, member).
    pub members: Vec<(i64, Member)>,
    /// Nodes hosting members that registered their WireGuard key, by node id.
    pub peers: Vec<(i64, Peer)>,
    pub gateways: Vec<Gateway>,
}

#[derive(FromRow)]
struct MemberRow {
    sliver_id: i64,
    address: String,
    node_id: i64,
    node: String,
    node_key: String,
    wg_public_key: Option<String>,
    tunnel_address: Option<String>,
    endpoint: Option<String>,
}

#[derive(FromRow)]
struct GatewayRow {
    name: String,
    wg_public_key: String,
    tunnel_address: String,
    address: String,
    endpoint: Option<String>,
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

fn key(s: &str) -> PublicKey {
    s.parse().unwrap_or(PublicKey([0; 32]))
}

fn endpoint(s: &Option<String>) -> Option<SocketAddr> {
    s.as_deref().and_then(|e| e.parse().ok())
}

/// Loads an enclave's members, peers and gateways.
pub async fn enclave_data(c: &mut SqliteConnection, enclave_id: i64) -> ApiResult<EnclaveData> {
    let (name, slice, vni, subnet, prefix_len): (String, String, i64, String, i64) = sqlx::query_as(
        "SELECT e.name, sl.name, e.vni, e.subnet, e.prefix_len FROM enclaves e JOIN slices sl ON sl.id = e.slice_id WHERE e.id = ?",
    )
    .bind(enclave_id)
    .fetch_one(&mut *c)
    .await?;
    let rows: Vec<MemberRow> = sqlx::query_as(
        "SELECT m.sliver_id, m.address, n.id AS node_id, n.name AS node, n.public_key AS node_key, n.wg_public_key, n.tunnel_address, n.endpoint FROM enclave_members m JOIN slivers v ON v.id = m.sliver_id JOIN nodes n ON n.id = v.node_id WHERE m.enclave_id = ? ORDER BY m.sliver_id",
    )
    .bind(enclave_id)
    .fetch_all(&mut *c)
    .await?;
    let mut peers: Vec<(i64, Peer)> = Vec::new();
    for r in &rows {
        if peers.iter().any(|(id, _)| *id == r.node_id) {
            continue;
        }
        if let (Some(wg), Some(tunnel)) = (&r.wg_public_key, &r.tunnel_address) {
            peers.push((
                r.node_id,
                Peer {
                    node: r.node.clone(),
                    node_key: key(&r.node_key),
                    wg_public_key: key(wg),
                    tunnel_address: ip(tunnel),
                    endpoint: endpoint(&r.endpoint),
                },
            ));
        }
    }
    let members = rows
        .iter()
        .map(|r| {
            let address = ip(&r.address);
            (
                r.node_id,
                Member {
                    sliver_id: r.sliver_id as u64,
                    node: r.node.clone(),
                    mac: MacAddr::for_address(address),
                    address,
                },
            )
        })
        .collect();
    let gateways: Vec<GatewayRow> = sqlx::query_as(
        "SELECT name, wg_public_key, tunnel_address, address, endpoint FROM enclave_gateways WHERE enclave_id = ? ORDER BY name",
    )
    .bind(enclave_id)
    .fetch_all(&mut *c)
    .await?;
    Ok(EnclaveData {
        name,
        slice,
        vni: vni as u32,
        subnet: Ipv4Net {
            addr: ip(&subnet),
            len: prefix_len as u8,
        },
        members,
        peers,
        gateways: gateways
            .into_iter()
            .map(|g| {
                let address = ip(&g.address);
                Gateway {
                    name: g.name,
                    wg_public_key: key(&g.wg_public_key),
                    tunnel_address: ip(&g.tunnel_address),
                    address,
                    mac: MacAddr::for_address(address),
                    endpoint: endpoint(&g.endpoint),
                }
            })
            .collect(),
    })
}

#[derive(FromRow)]
struct SliverTicketRow {
    id: i64,
    slice: String,
    lease_expires_at: i64,
    node_id: i64,
    node: String,
    node_key: String,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    bandwidth_mbps: i64,
    appliance_name: String,
    appliance_hash: String,
    /// JSON `[[enclave id, address], ...]`, by enclave id.
    memberships: String,
}

/// Gives each ticket the next epoch (one counter update for all of them),
/// signs and stores it, and remembers to wake its node.
async fn store_tickets(
    state: &Inner,
    w: &mut WriteTx,
    tickets: Vec<(i64, Ticket)>,
) -> ApiResult<()> {
    if tickets.is_empty() {
        return Ok(());
    }
    let last: i64 = sqlx::query_scalar(
        "UPDATE counters SET value = value + ? WHERE name = 'epoch' RETURNING value",
    )
    .bind(tickets.len() as i64)
    .fetch_one(&mut *w.tx)
    .await?;
    let first = last - tickets.len() as i64 + 1;
    for (epoch, (node_id, mut ticket)) in (first..).zip(tickets) {
        ticket.epoch = epoch as u64;
        let bytes = ticket::sign(&ticket, &state.key);
        sqlx::query(
            "INSERT INTO tickets (sliver_id, node_id, epoch, revoked, expires_at, body) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sliver_id) DO UPDATE SET node_id = excluded.node_id, epoch = excluded.epoch, revoked = excluded.revoked, expires_at = excluded.expires_at, body = excluded.body",
        )
        .bind(ticket.sliver_id as i64)
        .bind(node_id)
        .bind(epoch)
        .bind(ticket.status == TicketStatus::Revoked)
        .bind(ticket.expires_at)
        .bind(bytes)
        .execute(&mut *w.tx)
        .await?;
        w.notify_node(node_id);
    }
    Ok(())
}

/// Signs a new ticket (next epoch) for every existing sliver in `slivers`.
pub async fn reissue(state: &Inner, w: &mut WriteTx, slivers: &[i64]) -> ApiResult<()> {
    if slivers.is_empty() {
        return Ok(());
    }
    let now = crate::auth::now_secs();
    let ids = serde_json::to_string(slivers).expect("ids serialize");
    let rows: Vec<SliverTicketRow> = sqlx::query_as(
        "SELECT v.id, sl.name AS slice, sl.lease_expires_at, v.node_id, n.name AS node, n.public_key AS node_key, v.vcpus, v.memory_mib, v.disk_gib, v.bandwidth_mbps, v.appliance_name, v.appliance_hash, (SELECT json_group_array(json_array(enclave_id, address)) FROM (SELECT enclave_id, address FROM enclave_members WHERE sliver_id = v.id ORDER BY enclave_id)) AS memberships FROM slivers v JOIN slices sl ON sl.id = v.slice_id JOIN nodes n ON n.id = v.node_id WHERE v.id IN (SELECT value FROM json_each(?)) ORDER BY v.id",
    )
    .bind(&ids)
    .fetch_all(&mut *w.tx)
    .await?;
    let mut memberships: Vec<Vec<(i64, String)>> = Vec::with_capacity(rows.len());
    for row in &rows {
        memberships.push(serde_json::from_str(&row.memberships).map_err(|e| {
            ApiError::internal(
                &format!("reading sliver {}'s enclave memberships", row.id),
                e,
            )
        })?);
    }
    let mut enclaves: HashMap<i64, EnclaveData> = HashMap::new();
    for (enclave_id, _) in memberships.iter().flatten() {
        if !enclaves.contains_key(enclave_id) {
            let data = enclave_data(&mut w.tx, *enclave_id).await?;
            enclaves.insert(*enclave_id, data);
        }
    }
    let mut tickets = Vec::with_capacity(rows.len());
    for (row, memberships) in rows.into_iter().zip(memberships) {
        let own: Vec<EnclaveMembership> = memberships
            .iter()
            .map(|(enclave_id, address)| {
                let e = &enclaves[enclave_id];
                let address = ip(address);
                EnclaveMembership {
                    enclave: e.name.clone(),
                    slice: e.slice.clone(),
                    vni: e.vni,
                    subnet: e.subnet.addr,
                    prefix_len: e.subnet.len,
                    mac: MacAddr::for_address(address),
                    address,
                    members: e.members.iter().map(|(_, m)| m.clone()).collect(),
                    peers: e
                        .peers
                        .iter()
                        .filter(|(node, _)| *node != row.node_id)
                        .map(|(_, p)| p.clone())
                        .collect(),
                    gateways: e.gateways.clone(),
                }
            })
            .collect();
        let ticket = Ticket {
            epoch: 0,
            issued_at: now,
            expires_at: row.lease_expires_at,
            status: TicketStatus::Active,
            node: row.node,
            node_key: key(&row.node_key),
            slice: row.slice,
            sliver_id: row.id as u64,
            resources: Resources {
                vcpus: row.vcpus as u32,
                memory_mib: row.memory_mib as u64,
                disk_gib: row.disk_gib as u64,
                bandwidth_mbps: row.bandwidth_mbps as u64,
            },
            appliance: Appliance {
                name: row.appliance_name,
                hash: row.appliance_hash,
            },
            enclaves: own,
        };
        tickets.push((row.node_id, ticket));
    }
    store_tickets(state, w, tickets).await
}

/// Signs a revocation (next epoch) for each sliver that has an active ticket.
/// Works from the stored ticket, so it may run after the sliver row is gone.
pub async fn revoke(state: &Inner, w: &mut WriteTx, slivers: &[i64]) -> ApiResult<()> {
    if slivers.is_empty() {
        return Ok(());
    }
    let ids = serde_json::to_string(slivers).expect("ids serialize");
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT node_id, body FROM tickets WHERE revoked = 0 AND sliver_id IN (SELECT value FROM json_each(?)) ORDER BY sliver_id",
    )
    .bind(&ids)
    .fetch_all(&mut *w.tx)
    .await?;
    let now = crate::auth::now_secs();
    let mut tickets = Vec::with_capacity(rows.len());
    for (node_id, body) in rows {
        // This authority wrote and signed it, and the revocation gets a
        // signature of its own: checking the envelope and body is enough.
        let mut ticket = TicketPacket::new_checked(&body[..])
            .map_err(ticket::TicketError::from)
            .and_then(|packet| ticket::wire::parse_body(packet.body()))
            .map_err(|e| ApiError::internal("re-reading a stored ticket", e))?;
        ticket.status = TicketStatus::Revoked;
        ticket.issued_at = now;
        ticket.enclaves.clear();
        tickets.push((node_id, ticket));
    }
    store_tickets(state, w, tickets).await
}

/// Query of a ticket poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    /// Return tickets with an epoch above this (0: everything current).
    #[serde(default)]
    after_epoch: u64,
    /// Wait up to this long for something new (0: answer at once).
    #[serde(default)]
    wait_secs: u64,
}

/// `GET /v1/nodes/{node}/tickets?after_epoch=N&wait_secs=S`: the node's
/// tickets newer than N; waits until one exists or S seconds pass.
pub async fn poll(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> ApiResult<Json<TicketBatch>> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "bad ticket poll query ({e}); use ?after_epoch=<epoch>&wait_secs=<seconds>"
        ))
    })?;
    let node_id = match &caller {
        Caller::Node { id, name } if *name == node => *id,
        Caller::Principal(p) if p.admin => {
            let mut c = state.db.acquire().await?;
            store::node_by_name(&mut c, &node).await?.id
        }
        Caller::Anonymous => {
            return Err(caller.principal().unwrap_err());
        }
        _ => {
            return Err(ApiError::forbidden(format!(
                "{} may not read the tickets of node {node}: only that node (signing with its own key) or an administrator may",
                caller.actor()
            )))
        }
    };
    let wait = Duration::from_secs(q.wait_secs.min(state.config.long_poll_max_secs));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading, so a change committed in between still wakes us.
    let mut changes = state.subscribe(node_id);
    loop {
        changes.borrow_and_update();
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT sliver_id, epoch, body FROM tickets WHERE node_id = ? AND epoch > ? ORDER BY epoch",
        )
        .bind(node_id)
        .bind(q.after_epoch as i64)
        .fetch_all(&state.db)
        .await?;
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
            let epoch = rows
                .last()
                .map(|(_, e, _)| *e as u64)
                .unwrap_or(q.after_epoch);
            let tickets = rows
                .into_iter()
                .map(|(sliver_id, epoch, body)| SignedTicket {
                    sliver_id: sliver_id as u64,
                    epoch: epoch as u64,
                    ticket: base64::engine::general_purpose::STANDARD.encode(body),
                })
                .collect();
            return Ok(Json(TicketBatch { epoch, tickets }));
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            continue; // timed out: the loop answers with nothing new
        }
    }
}

/// Highest ticket epoch of a node.
pub async fn node_epoch(c: &mut SqliteConnection, node_id: i64) -> ApiResult<u64> {
    let epoch: Option<i64> = sqlx::query_scalar("SELECT MAX(epoch) FROM tickets WHERE node_id = ?")
        .bind(node_id)
        .fetch_one(c)
        .await?;
    Ok(epoch.unwrap_or(0) as u64)
}
