//! Nodes: registry administration (admin or the site's PI) and the
//! node-facing registration and heartbeat (signed with the node's own key).

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::authn::{ApiJson, ApiPath, ApiQuery, Caller};
use super::error::{ApiError, ApiResult};
use super::sites::caller_may_read;
use super::{store, tickets, AppState};
use crate::api::{
    Done, Heartbeat, HeartbeatReply, NewNode, Node, NodeRegistered, NodeRegistration, SetNodeState,
};
use crate::model::names;

/// Query of the node list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    /// Only nodes of this site.
    #[serde(default)]
    site: Option<String>,
}

/// `GET /v1/nodes[?site=NAME]`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<NodeQuery>,
) -> ApiResult<Json<Vec<Node>>> {
    caller_may_read(&caller)?;
    let mut c = state.db.acquire().await?;
    let now = crate::auth::now_secs();
    let liveness = state.config.node_liveness_secs;
    Ok(Json(
        store::all_nodes(&mut c)
            .await?
            .iter()
            .filter(|n| q.site.as_ref().is_none_or(|s| *s == n.site))
            .map(|n| n.to_api(now, liveness))
            .collect(),
    ))
}

/// `GET /v1/nodes/{node}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(node): ApiPath<String>,
) -> ApiResult<Json<Node>> {
    caller_may_read(&caller)?;
    let mut c = state.db.acquire().await?;
    let row = store::node_by_name(&mut c, &node).await?;
    Ok(Json(row.to_api(
        crate::auth::now_secs(),
        state.config.node_liveness_secs,
    )))
}

/// `POST /v1/nodes` (admin or PI of the node's site).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewNode>,
) -> ApiResult<(StatusCode, Json<Node>)> {
    let p = caller.principal()?;
    names::node(&req.name).map_err(ApiError::bad_request)?;
    names::site(&req.site).map_err(ApiError::bad_request)?;
    req.capacity
        .validate_capacity()
        .map_err(ApiError::bad_request)?;
    req.public_key
        .verifying_key()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    p.require_site_manager(&req.site, &format!("add nodes to site {}", req.site))?;
    let mut w = state.write().await?;
    let site_id = store::site_id(&mut w.tx, &req.site).await?;
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT 'node ' || name FROM nodes WHERE name = ?1 OR public_key = ?2 UNION ALL SELECT 'user ' || name FROM principals WHERE public_key = ?2",
    )
    .bind(&req.name)
    .bind(req.public_key.to_string())
    .fetch_optional(&mut *w.tx)
    .await?;
    if let Some(t) = taken {
        return Err(ApiError::conflict(format!(
            "{t} already has that name or key; every node needs its own name and identity key"
        )));
    }
    let c = req.capacity;
    sqlx::query("INSERT INTO nodes (name, site_id, public_key, vcpus, memory_mib, disk_gib, bandwidth_mbps, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(&req.name)
        .bind(site_id)
        .bind(req.public_key.to_string())
        .bind(c.vcpus as i64)
        .bind(c.memory_mib as i64)
        .bind(c.disk_gib as i64)
        .bind(c.bandwidth_mbps as i64)
        .bind(crate::auth::now_secs())
        .execute(&mut *w.tx)
        .await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "node.create",
        &req.name,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    let row = store::node_by_name(&mut w.tx, &req.name).await?;
    w.commit(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(row.to_api(crate::auth::now_secs(), state.config.node_liveness_secs)),
    ))
}

/// `DELETE /v1/nodes/{node}` (admin or the site's PI; only without slivers).
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(node): ApiPath<String>,
) -> ApiResult<Json<Done>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::node_by_name(&mut w.tx, &node).await?;
    p.require_site_manager(&row.site, &format!("remove node {node}"))?;
    if row.sliver_count > 0 {
        return Err(ApiError::conflict(format!(
            "node {node} still hosts {} slivers; disable it (`slicenet node disable {node}`) and wait for their slices to end, or delete those slices",
            row.sliver_count
        )));
    }
    sqlx::query("DELETE FROM nodes WHERE id = ?")
        .bind(row.id)
        .execute(&mut *w.tx)
        .await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "node.delete",
        &node,
        serde_json::json!({}),
    )
    .await?;
    w.commit(&state).await?;
    Ok(Json(Done {
        message: format!("node {node} removed"),
    }))
}

/// `POST /v1/nodes/{node}/state` (admin or the site's PI).
pub async fn set_state(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<SetNodeState>,
) -> ApiResult<Json<Node>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::node_by_name(&mut w.tx, &node).await?;
    p.require_site_manager(&row.site, &format!("enable or disable node {node}"))?;
    let new_state = if !req.enabled {
        "disabled"
    } else if row.last_seen.is_some() {
        "up"
    } else {
        "new"
    };
    sqlx::query("UPDATE nodes SET state = ? WHERE id = ?")
        .bind(new_state)
        .bind(row.id)
        .execute(&mut *w.tx)
        .await?;
    store::audit(
        &mut w.tx,
        &p.name,
        if req.enabled {
            "node.enable"
        } else {
            "node.disable"
        },
        &node,
        serde_json::json!({}),
    )
    .await?;
    let row = store::node_by_name(&mut w.tx, &node).await?;
    w.commit(&state).await?;
    Ok(Json(row.to_api(
        crate::auth::now_secs(),
        state.config.node_liveness_secs,
    )))
}

fn require_node(caller: &Caller, node: &str) -> ApiResult<i64> {
    match caller {
        Caller::Node { id, name } if name == node => Ok(*id),
        Caller::Anonymous => Err(caller.principal().unwrap_err()),
        _ => Err(ApiError::forbidden(format!(
            "only node {node} itself, signing with its identity key, may register or report for it; {} is not that node",
            caller.actor()
        ))),
    }
}

/// `POST /v1/nodes/{node}/register`: the node announces its WireGuard key,
/// endpoint and (optionally) tunnel address; the authority assigns a stable
/// tunnel address and reissues the tickets of every sliver that peers with it.
pub async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<NodeRegistration>,
) -> ApiResult<Json<NodeRegistered>> {
    let node_id = require_node(&caller, &node)?;
    if let Some(s) = &req.software {
        if s.len() > 200 {
            return Err(ApiError::bad_request(
                "software version is longer than 200 characters",
            ));
        }
    }
    if let Some(c) = &req.capacity {
        c.validate().map_err(ApiError::bad_request)?;
    }
    if let Some(a) = req.console {
        if a.ip().is_unspecified() || a.port() == 0 {
            return Err(ApiError::bad_request(format!(
                "console address {a} cannot be connected to: register the address clients reach this node's console service at (e.g. its underlay address and port), not a wildcard listen address or port 0"
            )));
        }
    }
    let pool = state
        .config
        .tunnel_pool()
        .map_err(|e| ApiError::internal("reading the tunnel pool", e))?;
    let mut w = state.write().await?;
    let row = store::node_by_name(&mut w.tx, &node).await?;
    let current: Option<Ipv4Addr> = row.tunnel_address.as_deref().and_then(|a| a.parse().ok());
    let tunnel = match (req.tunnel_address, current) {
        (Some(want), Some(have)) if want == have => have,
        (Some(want), _) => {
            let used = store::used_tunnel_addresses(&mut w.tx).await?;
            if used.contains(&want) {
                return Err(ApiError::conflict(format!(
                    "tunnel address {want} belongs to another node or gateway; register without one to get a free address"
                )));
            }
            want
        }
        (None, Some(have)) => have,
        (None, None) => {
            let used = store::used_tunnel_addresses(&mut w.tx).await?;
            store::first_free(&pool, &used).ok_or_else(|| {
                ApiError::conflict(format!(
                    "the tunnel address pool {pool} is exhausted; the operator must widen tunnel_pool in authority.toml"
                ))
            })?
        }
    };
    let now = crate::auth::now_secs();
    let wg = req.wg_public_key.to_string();
    let endpoint = req.endpoint.map(|e| e.to_string());
    let changed = row.wg_public_key.as_deref() != Some(wg.as_str())
        || row.endpoint != endpoint
        || current != Some(tunnel);
    let reports_changed = row.reported_capacity() != req.capacity || row.console() != req.console;
    // A registration states the node's whole current configuration: what it
    // leaves out (capacity, console) it no longer reports.
    let c = req.capacity;
    sqlx::query("UPDATE nodes SET wg_public_key = ?, endpoint = ?, tunnel_address = ?, software = ?, last_seen = ?, state = CASE WHEN state = 'disabled' THEN 'disabled' ELSE 'up' END, reported_vcpus = ?, reported_memory_mib = ?, reported_disk_gib = ?, reported_bandwidth_mbps = ?, capacity_reported_at = ?, console = ? WHERE id = ?")
        .bind(&wg)
        .bind(&endpoint)
        .bind(tunnel.to_string())
        .bind(&req.software)
        .bind(now)
        .bind(c.map(|c| c.vcpus as i64))
        .bind(c.map(|c| c.memory_mib as i64))
        .bind(c.and_then(|c| c.disk_gib).map(|d| d as i64))
        .bind(c.and_then(|c| c.bandwidth_mbps).map(|b| b as i64))
        .bind(c.map(|_| now))
        .bind(req.console.map(|a| a.to_string()))
        .bind(node_id)
        .execute(&mut *w.tx)
        .await?;
    if changed || reports_changed {
        store::audit(
            &mut w.tx,
            &caller.actor(),
            "node.register",
            &node,
            serde_json::to_value(&req).unwrap_or_default(),
        )
        .await?;
    }
    if changed {
        // Peers need the new key or endpoint: every sliver that shares an
        // enclave with a sliver on this node gets a new ticket.
        let own: Vec<i64> = sqlx::query_scalar("SELECT id FROM slivers WHERE node_id = ?")
            .bind(node_id)
            .fetch_all(&mut *w.tx)
            .await?;
        let affected = store::co_members(&mut w.tx, &own).await?;
        tickets::reissue(&state, &mut w, &affected).await?;
    }
    let row = store::node_by_name(&mut w.tx, &node).await?;
    let epoch = tickets::node_epoch(&mut w.tx, node_id).await?;
    w.commit(&state).await?;
    Ok(Json(NodeRegistered {
        node: row.to_api(now, state.config.node_liveness_secs),
        authority_key: state.public_key,
        epoch,
    }))
}

/// `POST /v1/nodes/{node}/heartbeat`: liveness and sliver states.
pub async fn heartbeat(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    let node_id = require_node(&caller, &node)?;
    if req.slivers.len() > 10_000 {
        return Err(ApiError::bad_request(
            "a heartbeat reports at most 10000 slivers",
        ));
    }
    if let Some(c) = &req.capacity {
        c.validate().map_err(ApiError::bad_request)?;
    }
    let now = crate::auth::now_secs();
    let mut w = state.write().await?;
    sqlx::query("UPDATE nodes SET last_seen = ?, state = CASE WHEN state = 'disabled' THEN 'disabled' ELSE 'up' END WHERE id = ?")
        .bind(now)
        .bind(node_id)
        .execute(&mut *w.tx)
        .await?;
    if let Some(c) = req.capacity {
        let before = store::node_by_name(&mut w.tx, &node)
            .await?
            .reported_capacity();
        sqlx::query("UPDATE nodes SET reported_vcpus = ?, reported_memory_mib = ?, reported_disk_gib = ?, reported_bandwidth_mbps = ?, capacity_reported_at = ? WHERE id = ?")
            .bind(c.vcpus as i64)
            .bind(c.memory_mib as i64)
            .bind(c.disk_gib.map(|d| d as i64))
            .bind(c.bandwidth_mbps.map(|b| b as i64))
            .bind(now)
            .bind(node_id)
            .execute(&mut *w.tx)
            .await?;
        if before != Some(c) {
            store::audit(
                &mut w.tx,
                &caller.actor(),
                "node.capacity",
                &node,
                serde_json::json!({ "before": before, "reported": c }),
            )
            .await?;
        }
    }
    let mut unknown = Vec::new();
    for r in &req.slivers {
        let message: Option<String> = r.message.as_ref().map(|m| m.chars().take(500).collect());
        let updated = sqlx::query("UPDATE slivers SET state = ?, state_message = ?, updated_at = ? WHERE id = ? AND node_id = ?")
            .bind(r.state.to_string())
            .bind(message)
            .bind(now)
            .bind(r.sliver_id as i64)
            .bind(node_id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if updated == 0 {
            unknown.push(r.sliver_id);
        }
    }
    let epoch = tickets::node_epoch(&mut w.tx, node_id).await?;
    w.commit(&state).await?;
    Ok(Json(HeartbeatReply {
        epoch,
        unknown_slivers: unknown,
    }))
}
