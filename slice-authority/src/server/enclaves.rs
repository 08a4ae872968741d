//! Enclaves: private L2 segments (one VNI each) joining slivers, optionally
//! with external gateways. Every membership change reissues the tickets of
//! all members, so each node learns its new peer set as a new epoch.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use sqlx::SqliteConnection;

use super::authn::{ApiJson, ApiPath, ApiQuery, Caller, PrincipalCtx};
use super::error::{ApiError, ApiResult};
use super::store::{self, SliceAccess, SliceRow};
use super::{tickets, AppState, Inner, WriteTx};
use crate::api::{
    AddEnclaveMember, Done, Enclave, EnclaveExport, EnclaveMember, NewEnclave, NewGateway,
};
use crate::config::Ipv4Net;
use crate::model::names;

async fn enclave_id(c: &mut SqliteConnection, slice: &SliceRow, name: &str) -> ApiResult<i64> {
    sqlx::query_scalar("SELECT id FROM enclaves WHERE slice_id = ? AND name = ?")
        .bind(slice.id)
        .bind(name)
        .fetch_optional(c)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "enclave",
                format!("{name} of slice {}", slice.name),
                &format!("`slicenet slice show {}` lists its enclaves", slice.name),
            )
        })
}

async fn enclave_json(c: &mut SqliteConnection, id: i64) -> ApiResult<Enclave> {
    let data = tickets::enclave_data(c, id).await?;
    let slices: Vec<(i64, String)> = sqlx::query_as(
        "SELECT m.sliver_id, sl.name FROM enclave_members m JOIN slivers v ON v.id = m.sliver_id JOIN slices sl ON sl.id = v.slice_id WHERE m.enclave_id = ?",
    )
    .bind(id)
    .fetch_all(c)
    .await?;
    Ok(Enclave {
        name: data.name,
        slice: data.slice,
        vni: data.vni,
        subnet: data.subnet.to_string(),
        members: data
            .members
            .into_iter()
            .map(|(_, m)| EnclaveMember {
                slice: slices
                    .iter()
                    .find(|(s, _)| *s as u64 == m.sliver_id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default(),
                sliver_id: m.sliver_id,
                node: m.node,
                mac: m.mac,
                address: m.address,
            })
            .collect(),
        gateways: data.gateways,
    })
}

/// `GET /v1/slices/{slice}/enclaves`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(slice): ApiPath<String>,
) -> ApiResult<Json<Vec<Enclave>>> {
    super::sites::caller_may_read(&caller)?;
    let mut c = state.db.acquire().await?;
    let row = store::slice_by_name(&mut c, &slice).await?;
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM enclaves WHERE slice_id = ? ORDER BY name")
            .bind(row.id)
            .fetch_all(&mut *c)
            .await?;
    let mut out = Vec::new();
    for id in ids {
        out.push(enclave_json(&mut c, id).await?);
    }
    Ok(Json(out))
}

/// `GET /v1/slices/{slice}/enclaves/{enclave}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, enclave)): ApiPath<(String, String)>,
) -> ApiResult<Json<Enclave>> {
    super::sites::caller_may_read(&caller)?;
    let mut c = state.db.acquire().await?;
    let row = store::slice_by_name(&mut c, &slice).await?;
    let id = enclave_id(&mut c, &row, &enclave).await?;
    Ok(Json(enclave_json(&mut c, id).await?))
}

/// A sliver the caller may put into (or take out of) an enclave: it exists
/// and the caller works in its slice.
async fn sliver_for_enclave(
    c: &mut SqliteConnection,
    p: &PrincipalCtx,
    sliver: u64,
) -> ApiResult<i64> {
    let slice_id: Option<i64> = sqlx::query_scalar("SELECT slice_id FROM slivers WHERE id = ?")
        .bind(sliver as i64)
        .fetch_optional(&mut *c)
        .await?;
    let slice_id = slice_id.ok_or_else(|| {
        ApiError::not_found(
            "sliver",
            sliver,
            "`slicenet slice show <slice>` lists a slice's slivers",
        )
    })?;
    let slice = store::slice_by_id(c, slice_id).await?;
    store::require_slice_access(
        c,
        p,
        &slice,
        SliceAccess::Member,
        &format!("use sliver {sliver}"),
    )
    .await?;
    Ok(sliver as i64)
}

async fn used_addresses(c: &mut SqliteConnection, enclave: i64) -> ApiResult<HashSet<Ipv4Addr>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT address FROM enclave_members WHERE enclave_id = ?1 UNION SELECT address FROM enclave_gateways WHERE enclave_id = ?1",
    )
    .bind(enclave)
    .fetch_all(c)
    .await?;
    Ok(rows.iter().filter_map(|a| a.parse().ok()).collect())
}

async fn add_member_tx(
    w: &mut WriteTx,
    enclave: i64,
    subnet: &Ipv4Net,
    sliver: i64,
) -> ApiResult<Ipv4Addr> {
    let already: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM enclave_members WHERE enclave_id = ? AND sliver_id = ?")
            .bind(enclave)
            .bind(sliver)
            .fetch_optional(&mut *w.tx)
            .await?;
    if already.is_some() {
        return Err(ApiError::conflict(format!(
            "sliver {sliver} is already a member of this enclave"
        )));
    }
    let used = used_addresses(&mut w.tx, enclave).await?;
    let address = store::first_free(subnet, &used).ok_or_else(|| {
        ApiError::conflict(format!(
            "enclave subnet {subnet} has no free address left; create a larger enclave (--subnet)"
        ))
    })?;
    sqlx::query("INSERT INTO enclave_members (enclave_id, sliver_id, address) VALUES (?, ?, ?)")
        .bind(enclave)
        .bind(sliver)
        .bind(address.to_string())
        .execute(&mut *w.tx)
        .await?;
    Ok(address)
}

async fn pick_subnet(state: &Inner, w: &mut WriteTx, wanted: Option<&str>) -> ApiResult<Ipv4Net> {
    let tunnel = state
        .config
        .tunnel_pool()
        .map_err(|e| ApiError::internal("reading the tunnel pool", e))?;
    let existing: Vec<(String, i64)> = sqlx::query_as("SELECT subnet, prefix_len FROM enclaves")
        .fetch_all(&mut *w.tx)
        .await?;
    let existing: Vec<Ipv4Net> = existing
        .iter()
        .filter_map(|(a, l)| {
            Some(Ipv4Net {
                addr: a.parse().ok()?,
                len: *l as u8,
            })
        })
        .collect();
    if let Some(text) = wanted {
        let net = Ipv4Net::parse(text).map_err(ApiError::bad_request)?;
        if net.len > 30 {
            return Err(ApiError::bad_request(format!(
                "subnet {net} is too small; use at most a /30"
            )));
        }
        if net.overlaps(&tunnel) {
            return Err(ApiError::bad_request(format!(
                "subnet {net} overlaps the tunnel address pool {tunnel}; pick another"
            )));
        }
        if let Some(other) = existing.iter().find(|e| e.overlaps(&net)) {
            return Err(ApiError::conflict(format!(
                "subnet {net} overlaps enclave subnet {other} already in use; pick another or leave --subnet out"
            )));
        }
        return Ok(net);
    }
    let pool = state
        .config
        .enclave_pool()
        .map_err(|e| ApiError::internal("reading the enclave pool", e))?;
    let len = state.config.enclave_prefix_len;
    let step = 1u64 << (32 - len as u64);
    let count = 1u64 << (len - pool.len) as u64;
    // Skip the pool's first block (198.19.0.0/24 by default), which is
    // easily confused with "no address".
    for i in 1..count {
        let addr = Ipv4Addr::from((u32::from(pool.addr) as u64 + i * step) as u32);
        let net = Ipv4Net { addr, len };
        if !net.overlaps(&tunnel) && !existing.iter().any(|e| e.overlaps(&net)) {
            return Ok(net);
        }
    }
    Err(ApiError::conflict(format!(
        "no free /{len} left in the enclave pool {pool}; delete unused enclaves or ask the operator to widen enclave_pool"
    )))
}

/// `POST /v1/slices/{slice}/enclaves` (members).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(slice): ApiPath<String>,
    ApiJson(req): ApiJson<NewEnclave>,
) -> ApiResult<(StatusCode, Json<Enclave>)> {
    let p = caller.principal()?;
    names::short("enclave", &req.name).map_err(ApiError::bad_request)?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "create enclaves").await?;
    let taken: Option<i64> =
        sqlx::query_scalar("SELECT id FROM enclaves WHERE slice_id = ? AND name = ?")
            .bind(row.id)
            .bind(&req.name)
            .fetch_optional(&mut *w.tx)
            .await?;
    if taken.is_some() {
        return Err(ApiError::conflict(format!(
            "slice {slice} already has an enclave named {}",
            req.name
        )));
    }
    let mut slivers = Vec::new();
    for s in &req.slivers {
        let id = sliver_for_enclave(&mut w.tx, p, *s).await?;
        if slivers.contains(&id) {
            return Err(ApiError::bad_request(format!("sliver {s} is listed twice")));
        }
        slivers.push(id);
    }
    let subnet = pick_subnet(&state, &mut w, req.subnet.as_deref()).await?;
    let vni = store::next_counter(&mut w.tx, "vni", state.config.vni_base as i64).await?;
    if vni >= 1 << 24 {
        return Err(ApiError::conflict("all 2^24 VNIs have been used; the operator must lower vni_base or start a new authority"));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO enclaves (slice_id, name, vni, subnet, prefix_len, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(row.id)
    .bind(&req.name)
    .bind(vni)
    .bind(subnet.addr.to_string())
    .bind(subnet.len as i64)
    .bind(crate::auth::now_secs())
    .fetch_one(&mut *w.tx)
    .await?;
    for s in &slivers {
        add_member_tx(&mut w, id, &subnet, *s).await?;
    }
    tickets::reissue(&state, &mut w, &slivers).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "enclave.create",
        &format!("{slice}/{}", req.name),
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    let out = enclave_json(&mut w.tx, id).await?;
    w.commit(&state).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// `DELETE /v1/slices/{slice}/enclaves/{enclave}` (members).
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, enclave)): ApiPath<(String, String)>,
) -> ApiResult<Json<Done>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "delete enclaves").await?;
    let id = enclave_id(&mut w.tx, &row, &enclave).await?;
    let members = store::enclave_member_ids(&mut w.tx, id).await?;
    sqlx::query("DELETE FROM enclaves WHERE id = ?")
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
    tickets::reissue(&state, &mut w, &members).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "enclave.delete",
        &format!("{slice}/{enclave}"),
        serde_json::json!({}),
    )
    .await?;
    w.commit(&state).await?;
    Ok(Json(Done {
        message: format!(
            "enclave {enclave} deleted; {} member slivers get new tickets without it",
            members.len()
        ),
    }))
}

async fn enclave_subnet(c: &mut SqliteConnection, id: i64) -> ApiResult<Ipv4Net> {
    let (subnet, len): (String, i64) =
        sqlx::query_as("SELECT subnet, prefix_len FROM enclaves WHERE id = ?")
            .bind(id)
            .fetch_one(c)
            .await?;
    Ok(Ipv4Net {
        addr: subnet.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
        len: len as u8,
    })
}

/// `POST /v1/slices/{slice}/enclaves/{enclave}/members` (members of both slices).
pub async fn add_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, enclave)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<AddEnclaveMember>,
) -> ApiResult<Json<Enclave>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "change enclaves").await?;
    let id = enclave_id(&mut w.tx, &row, &enclave).await?;
    let sliver = sliver_for_enclave(&mut w.tx, p, req.sliver_id).await?;
    let subnet = enclave_subnet(&mut w.tx, id).await?;
    add_member_tx(&mut w, id, &subnet, sliver).await?;
    let members = store::enclave_member_ids(&mut w.tx, id).await?;
    tickets::reissue(&state, &mut w, &members).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "enclave.add",
        &format!("{slice}/{enclave}"),
        serde_json::json!({ "sliver": req.sliver_id }),
    )
    .await?;
    let out = enclave_json(&mut w.tx, id).await?;
    w.commit(&state).await?;
    Ok(Json(out))
}

/// `DELETE /v1/slices/{slice}/enclaves/{enclave}/members/{sliver}` (members of either slice).
pub async fn remove_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, enclave, sliver)): ApiPath<(String, String, u64)>,
) -> ApiResult<Json<Enclave>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    let id = enclave_id(&mut w.tx, &row, &enclave).await?;
    if store::slice_access(&mut w.tx, p, &row).await? < SliceAccess::Member {
        // The owner of the sliver may always take it out of someone's enclave.
        sliver_for_enclave(&mut w.tx, p, sliver).await?;
    }
    let members = store::enclave_member_ids(&mut w.tx, id).await?;
    if !members.contains(&(sliver as i64)) {
        return Err(ApiError::not_found(
            "member",
            format!("sliver {sliver} of enclave {enclave}"),
            &format!("`slicenet enclave show {slice} {enclave}` lists the members"),
        ));
    }
    sqlx::query("DELETE FROM enclave_members WHERE enclave_id = ? AND sliver_id = ?")
        .bind(id)
        .bind(sliver as i64)
        .execute(&mut *w.tx)
        .await?;
    // The removed sliver's new ticket no longer lists the enclave; the others' no longer list it.
    tickets::reissue(&state, &mut w, &members).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "enclave.remove",
        &format!("{slice}/{enclave}"),
        serde_json::json!({ "sliver": sliver }),
    )
    .await?;
    let out = enclave_json(&mut w.tx, id).await?;
    w.commit(&state).await?;
    Ok(Json(out))
}

/// `POST /v1/slices/{slice}/enclaves/{enclave}/gateways` (members).
pub async fn add_gateway(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, enclave)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<NewGateway>,
) -> ApiResult<(StatusCode, Json<Enclave>)> {
    let p = caller.principal()?;
    names::short("gateway", &req.name).map_err(ApiError::bad_request)?;
    let pool = state
        .config
        .tunnel_pool()
        .map_err(|e| ApiError::internal("reading the tunnel pool", e))?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "add gateways").await?;
    let id = enclave_id(&mut w.tx, &row, &enclave).await?;
    let taken: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM enclave_gateways WHERE enclave_id = ? AND name = ?")
            .bind(id)
            .bind(&req.name)
            .fetch_optional(&mut *w.tx)
            .await?;
    if taken.is_some() {
        return Err(ApiError::conflict(format!(
            "enclave {enclave} already has a gateway named {}",
            req.name
        )));
    }
    let tunnel = store::first_free(&pool, &store::used_tunnel_addresses(&mut w.tx).await?)
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "the tunnel address pool {pool} is exhausted; the operator must widen tunnel_pool"
            ))
        })?;
    let subnet = enclave_subnet(&mut w.tx, id).await?;
    let used = used_addresses(&mut w.tx, id).await?;
    let address = store::first_free(&subnet, &used).ok_or_else(|| {
        ApiError::conflict(format!("enclave subnet {subnet} has no free address left"))
    })?;
    sqlx::query("INSERT INTO enclave_gateways (enclave_id, name, wg_public_key, tunnel_address, address, endpoint, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(id)
        .bind(&req.name)
        .bind(req.wg_public_key.to_string())
        .bind(tunnel.to_string())
        .bind(address.to_string())
        .bind(req.endpoint.map(|e| e.to_string()))
        .bind(crate::auth::now_secs())
        .execute(&mut *w.tx)
        .await?;
    let members = store::enclave_member_ids(&mut w.tx, id).await?;
    tickets::reissue(&state, &mut w, &members).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "enclave.gateway.add",
        &format!("{slice}/{enclave}"),
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    let out = enclave_json(&mut w.tx, id).await?;
    w.commit(&state).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// `DELETE /v1/slices/{slice}/enclaves/{enclave}/gateways/{gateway}` (members).
pub async fn remove_gateway(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, enclave, gateway)): ApiPath<(String, String, String)>,
) -> ApiResult<Json<Enclave>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "remove gateways").await?;
    let id = enclave_id(&mut w.tx, &row, &enclave).await?;
    let removed = sqlx::query("DELETE FROM enclave_gateways WHERE enclave_id = ? AND name = ?")
        .bind(id)
        .bind(&gateway)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::not_found(
            "gateway",
            &gateway,
            &format!("`slicenet enclave show {slice} {enclave}` lists the gateways"),
        ));
    }
    let members = store::enclave_member_ids(&mut w.tx, id).await?;
    tickets::reissue(&state, &mut w, &members).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "enclave.gateway.remove",
        &format!("{slice}/{enclave}"),
        serde_json::json!({ "gateway": gateway }),
    )
    .await?;
    let out = enclave_json(&mut w.tx, id).await?;
    w.commit(&state).await?;
    Ok(Json(out))
}

/// Query of an export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Export for this gateway (its own addresses are filled in).
    #[serde(default)]
    gateway: Option<String>,
}

/// `GET /v1/slices/{slice}/enclaves/{enclave}/export[?gateway=NAME]` (members).
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, enclave)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Json<EnclaveExport>> {
    let p = caller.principal()?;
    let mut c = state.db.acquire().await?;
    let row = store::slice_by_name(&mut c, &slice).await?;
    store::require_slice_access(&mut c, p, &row, SliceAccess::Member, "export enclaves").await?;
    let id = enclave_id(&mut c, &row, &enclave).await?;
    let data = tickets::enclave_data(&mut c, id).await?;
    let gateway = match &q.gateway {
        None => None,
        Some(name) => Some(
            data.gateways
                .iter()
                .find(|g| &g.name == name)
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(
                        "gateway",
                        name,
                        &format!("add it first: `slicenet enclave add {slice} {enclave} --gateway {name} --wg-public-key KEY`"),
                    )
                })?,
        ),
    };
    Ok(Json(EnclaveExport {
        enclave: data.name,
        slice: data.slice,
        vni: data.vni,
        subnet: data.subnet.addr,
        prefix_len: data.subnet.len,
        gateway,
        peers: data.peers.into_iter().map(|(_, p)| p).collect(),
        members: data.members.into_iter().map(|(_, m)| m).collect(),
        gateways: data.gateways,
        authority_key: state.public_key,
    }))
}
