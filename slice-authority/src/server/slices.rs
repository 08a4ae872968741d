//! Slices and their slivers: create (with all-or-nothing placement), live
//! modification, renewal under the lease policy, deletion.

use std::collections::{BTreeSet, HashSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::authn::{ApiJson, ApiPath, Caller};
use super::error::{ApiError, ApiResult};
use super::sites::caller_may_read;
use super::store::{self, SliceAccess, SliceRow};
use super::{tickets, AppState, Inner, WriteTx};
use crate::api::{
    AddSlivers, Done, MemberChange, NewSlice, PlacementReply, PlacementRequest, PlannedSliver,
    RenewReply, RenewRequest, Slice, SliceSummary,
};
use crate::model::{names, Appliance, Resources};
use crate::placement::{self, PlacementFailure};

/// `GET /v1/slices`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<SliceSummary>>> {
    caller_may_read(&caller)?;
    let rows: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT sl.name, p.name, sl.lease_expires_at, (SELECT COUNT(*) FROM slivers v WHERE v.slice_id = sl.id), sl.description FROM slices sl JOIN principals p ON p.id = sl.owner_id ORDER BY sl.name",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(
                |(name, owner, lease_expires_at, slivers, description)| SliceSummary {
                    name,
                    owner,
                    lease_expires_at,
                    slivers: slivers as u32,
                    description,
                },
            )
            .collect(),
    ))
}

/// `GET /v1/slices/{slice}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(slice): ApiPath<String>,
) -> ApiResult<Json<Slice>> {
    caller_may_read(&caller)?;
    let mut c = state.db.acquire().await?;
    let row = store::slice_by_name(&mut c, &slice).await?;
    Ok(Json(store::slice_json(&mut c, &row).await?))
}

fn placement_error(f: PlacementFailure) -> ApiError {
    let code = if f.group.is_some() {
        "placement_failed"
    } else {
        "invalid_placement"
    };
    let status = if f.group.is_some() {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    let details = serde_json::to_value(&f).unwrap_or_default();
    ApiError::new(status, code, f.message).with_details(details)
}

/// Lease granted for a request: (seconds, note when capped).
fn grant(state: &Inner, requested: u64) -> ApiResult<(u64, Option<String>)> {
    if requested == 0 {
        return Err(ApiError::bad_request(
            "a lease of 0 seconds is not a lease; ask for at least 1 second (e.g. --lease 7d)",
        ));
    }
    let max = state.config.max_lease_secs;
    if requested > max {
        Ok((
            max,
            Some(format!(
                "lease capped at the policy maximum of {max} s ({}); renew before it ends",
                human_duration(max)
            )),
        ))
    } else {
        Ok((requested, None))
    }
}

/// "14d", "3h 20m": for messages.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    for (v, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            parts.push(format!("{v}{u}"));
        }
    }
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

/// A sliver placement chose a node for.
struct Planned {
    node_id: i64,
    resources: Resources,
    /// What the reply shows.
    shown: PlannedSliver,
}

/// Runs placement against the registry as this transaction sees it.
async fn plan(
    state: &Inner,
    w: &mut WriteTx,
    req: &PlacementRequest,
    slice_id: Option<i64>,
) -> ApiResult<Vec<Planned>> {
    if let Some(a) = &req.appliance {
        a.validate().map_err(ApiError::bad_request)?;
    }
    let used: HashSet<i64> = match slice_id {
        None => HashSet::new(),
        Some(id) => sqlx::query_scalar("SELECT node_id FROM slivers WHERE slice_id = ?")
            .bind(id)
            .fetch_all(&mut *w.tx)
            .await?
            .into_iter()
            .collect(),
    };
    let now = crate::auth::now_secs();
    let nodes = w.node_views(now, state.config.node_liveness_secs).await?;
    let occupied: HashSet<usize> = if used.is_empty() {
        HashSet::new()
    } else {
        (0..nodes.len())
            .filter(|&i| used.contains(&nodes[i].id))
            .collect()
    };
    let assignments = placement::place(req, nodes, &occupied).map_err(placement_error)?;
    Ok(assignments
        .iter()
        .map(|a| {
            let n = &nodes[a.node];
            Planned {
                node_id: n.id,
                resources: a.resources,
                shown: PlannedSliver {
                    node: n.name.clone(),
                    site: n.site.clone(),
                    region: n.region.clone(),
                    country: n.country.clone(),
                    resources: a.resources,
                    group: a.group,
                },
            }
        })
        .collect())
}

fn shown(planned: &[Planned]) -> Vec<PlannedSliver> {
    planned.iter().map(|p| p.shown.clone()).collect()
}

async fn insert_slivers(
    w: &mut WriteTx,
    slice_id: i64,
    planned: &[Planned],
    appliance: &Appliance,
) -> ApiResult<Vec<i64>> {
    let now = crate::auth::now_secs();
    let mut ids = Vec::with_capacity(planned.len());
    for p in planned {
        let r = p.resources;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO slivers (slice_id, node_id, vcpus, memory_mib, disk_gib, bandwidth_mbps, appliance_name, appliance_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(slice_id)
        .bind(p.node_id)
        .bind(r.vcpus as i64)
        .bind(r.memory_mib as i64)
        .bind(r.disk_gib as i64)
        .bind(r.bandwidth_mbps as i64)
        .bind(&appliance.name)
        .bind(&appliance.hash)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *w.tx)
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// `POST /v1/slices` (admin or a PI of the site the name starts with).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewSlice>,
) -> ApiResult<(StatusCode, Json<PlacementReply>)> {
    let p = caller.principal()?;
    names::slice(&req.name).map_err(ApiError::bad_request)?;
    let site = names::slice_site(&req.name).to_string();
    p.require_site_manager(
        &site,
        &format!("create slices of site {site} (the slice name's prefix)"),
    )?;
    if req.description.len() > 1000 {
        return Err(ApiError::bad_request(
            "the description is longer than 1000 characters",
        ));
    }
    let (lease, note) = grant(
        &state,
        req.lease_secs.unwrap_or(state.config.default_lease_secs),
    )?;
    let now = crate::auth::now_secs();
    let expires_at = now + lease as i64;
    let mut w = state.write().await?;
    let (site_id, exists): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT id FROM sites WHERE name = ?), (SELECT id FROM slices WHERE name = ?)",
    )
    .bind(&site)
    .bind(&req.name)
    .fetch_one(&mut *w.tx)
    .await?;
    let site_id = site_id.ok_or_else(|| store::no_such_site(&site))?;
    if exists.is_some() {
        return Err(ApiError::conflict(format!(
            "slice {} already exists; pick another name, or add slivers to it with `slicenet sliver add {}`",
            req.name, req.name
        )));
    }
    let members = store::principal_ids(&mut w.tx, &req.members).await?;
    let planned = match &req.placement {
        Some(pr) => plan(&state, &mut w, pr, None).await?,
        None => vec![],
    };
    let placement = shown(&planned);
    if req.dry_run {
        return Ok((
            StatusCode::OK,
            Json(PlacementReply {
                dry_run: true,
                placement,
                slice: None,
                lease_expires_at: Some(expires_at),
                note,
            }),
        ));
    }
    let slice_id: i64 = sqlx::query_scalar(
        "INSERT INTO slices (name, site_id, owner_id, description, lease_expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&req.name)
    .bind(site_id)
    .bind(p.id)
    .bind(&req.description)
    .bind(expires_at)
    .bind(now)
    .fetch_one(&mut *w.tx)
    .await?;
    let member_ids: BTreeSet<i64> = members.values().copied().chain([p.id]).collect();
    for id in member_ids {
        sqlx::query("INSERT INTO slice_members (slice_id, principal_id) VALUES (?, ?)")
            .bind(slice_id)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
    }
    let appliance = req
        .placement
        .as_ref()
        .and_then(|p| p.appliance.clone())
        .unwrap_or_default();
    let ids = insert_slivers(&mut w, slice_id, &planned, &appliance).await?;
    tickets::reissue(&state, &mut w, &ids).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "slice.create",
        &req.name,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    let row = SliceRow {
        id: slice_id,
        name: req.name.clone(),
        site,
        owner_id: p.id,
        owner: p.name.clone(),
        description: req.description.clone(),
        lease_expires_at: expires_at,
        created_at: now,
    };
    let slice = store::slice_json(&mut w.tx, &row).await?;
    w.commit(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(PlacementReply {
            dry_run: false,
            placement,
            slice: Some(slice),
            lease_expires_at: Some(expires_at),
            note,
        }),
    ))
}

/// Deletes a slice with everything in it, revoking its slivers' tickets and
/// reissuing those of slivers of other slices that shared enclaves with it.
pub async fn delete_slice(
    state: &Inner,
    w: &mut WriteTx,
    row: &SliceRow,
    actor: &str,
    action: &str,
) -> ApiResult<usize> {
    let own: Vec<i64> = sqlx::query_scalar("SELECT id FROM slivers WHERE slice_id = ?")
        .bind(row.id)
        .fetch_all(&mut *w.tx)
        .await?;
    // Members of enclaves its slivers are in, and of the enclaves it owns.
    let mut affected: BTreeSet<i64> = sqlx::query_scalar(
        "SELECT m2.sliver_id FROM slivers v JOIN enclave_members m1 ON m1.sliver_id = v.id JOIN enclave_members m2 ON m2.enclave_id = m1.enclave_id WHERE v.slice_id = ?1 UNION SELECT m.sliver_id FROM enclaves e JOIN enclave_members m ON m.enclave_id = e.id WHERE e.slice_id = ?1",
    )
    .bind(row.id)
    .fetch_all(&mut *w.tx)
    .await?
    .into_iter()
    .collect();
    for id in &own {
        affected.remove(id);
    }
    tickets::revoke(state, w, &own).await?;
    sqlx::query("DELETE FROM slices WHERE id = ?")
        .bind(row.id)
        .execute(&mut *w.tx)
        .await?;
    let affected: Vec<i64> = affected.into_iter().collect();
    tickets::reissue(state, w, &affected).await?;
    store::audit(
        &mut w.tx,
        actor,
        action,
        &row.name,
        serde_json::json!({ "slivers": own.len(), "lease_expires_at": row.lease_expires_at }),
    )
    .await?;
    Ok(own.len())
}

/// `DELETE /v1/slices/{slice}` (owner, the site's PI or admin).
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(slice): ApiPath<String>,
) -> ApiResult<Json<Done>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Manage, "delete the slice")
        .await?;
    let n = delete_slice(&state, &mut w, &row, &p.name, "slice.delete").await?;
    w.commit(&state).await?;
    Ok(Json(Done {
        message: format!("slice {slice} deleted; {n} slivers revoked and their resources freed"),
    }))
}

/// `POST /v1/slices/{slice}/renew` (members): sets the lease to now + lease_secs, capped by policy.
pub async fn renew(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(slice): ApiPath<String>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> ApiResult<Json<RenewReply>> {
    let p = caller.principal()?;
    let (granted, _) = grant(&state, req.lease_secs)?;
    let now = crate::auth::now_secs();
    let requested_expires_at = now.saturating_add(req.lease_secs.min(i64::MAX as u64 / 2) as i64);
    let granted_expires_at = now + granted as i64;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "renew the slice").await?;
    sqlx::query("UPDATE slices SET lease_expires_at = ? WHERE id = ?")
        .bind(granted_expires_at)
        .bind(row.id)
        .execute(&mut *w.tx)
        .await?;
    let own: Vec<i64> = sqlx::query_scalar("SELECT id FROM slivers WHERE slice_id = ?")
        .bind(row.id)
        .fetch_all(&mut *w.tx)
        .await?;
    tickets::reissue(&state, &mut w, &own).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "slice.renew",
        &slice,
        serde_json::json!({ "requested_expires_at": requested_expires_at, "granted_expires_at": granted_expires_at }),
    )
    .await?;
    w.commit(&state).await?;
    let capped = granted < req.lease_secs;
    let max = state.config.max_lease_secs;
    let message = if capped {
        format!(
            "slice {slice} renewed for {} (you asked for {}; the policy maximum is {}); renew again before it ends",
            human_duration(granted),
            human_duration(req.lease_secs),
            human_duration(max)
        )
    } else {
        format!("slice {slice} renewed for {}", human_duration(granted))
    };
    Ok(Json(RenewReply {
        requested_expires_at,
        granted_expires_at,
        capped,
        max_lease_secs: max,
        message,
    }))
}

/// `POST /v1/slices/{slice}/members` (owner, the site's PI or admin).
pub async fn change_members(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(slice): ApiPath<String>,
    ApiJson(req): ApiJson<MemberChange>,
) -> ApiResult<Json<Slice>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Manage, "change members").await?;
    if req.remove.contains(&row.owner) {
        return Err(ApiError::conflict(format!(
            "{} owns slice {slice} and stays a member while it exists",
            row.owner
        )));
    }
    let add = store::principal_ids(&mut w.tx, &req.add).await?;
    let remove = store::principal_ids(&mut w.tx, &req.remove).await?;
    for id in add.values() {
        sqlx::query("INSERT INTO slice_members (slice_id, principal_id) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(row.id)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
    }
    for id in remove.values() {
        sqlx::query("DELETE FROM slice_members WHERE slice_id = ? AND principal_id = ?")
            .bind(row.id)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
    }
    store::audit(
        &mut w.tx,
        &p.name,
        "slice.members",
        &slice,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    let out = store::slice_json(&mut w.tx, &row).await?;
    w.commit(&state).await?;
    Ok(Json(out))
}

/// `POST /v1/slices/{slice}/slivers` (members): adds slivers, all or nothing.
pub async fn add_slivers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(slice): ApiPath<String>,
    ApiJson(req): ApiJson<AddSlivers>,
) -> ApiResult<(StatusCode, Json<PlacementReply>)> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "add slivers").await?;
    let planned = plan(&state, &mut w, &req.placement, Some(row.id)).await?;
    let placement = shown(&planned);
    if req.dry_run {
        return Ok((
            StatusCode::OK,
            Json(PlacementReply {
                dry_run: true,
                placement,
                slice: None,
                lease_expires_at: Some(row.lease_expires_at),
                note: None,
            }),
        ));
    }
    let appliance = req.placement.appliance.clone().unwrap_or_default();
    let ids = insert_slivers(&mut w, row.id, &planned, &appliance).await?;
    tickets::reissue(&state, &mut w, &ids).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "sliver.add",
        &slice,
        serde_json::json!({ "placement": req.placement, "slivers": ids }),
    )
    .await?;
    let out = store::slice_json(&mut w.tx, &row).await?;
    w.commit(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(PlacementReply {
            dry_run: false,
            placement,
            slice: Some(out),
            lease_expires_at: Some(row.lease_expires_at),
            note: None,
        }),
    ))
}

/// `DELETE /v1/slices/{slice}/slivers/{sliver}` (members).
pub async fn remove_sliver(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, sliver)): ApiPath<(String, u64)>,
) -> ApiResult<Json<Done>> {
    let p = caller.principal()?;
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(&mut w.tx, p, &row, SliceAccess::Member, "remove slivers").await?;
    let id = sliver as i64;
    let found: Option<i64> =
        sqlx::query_scalar("SELECT id FROM slivers WHERE id = ? AND slice_id = ?")
            .bind(id)
            .bind(row.id)
            .fetch_optional(&mut *w.tx)
            .await?;
    if found.is_none() {
        return Err(ApiError::not_found(
            "sliver",
            format!("{sliver} of slice {slice}"),
            &format!("`slicenet slice show {slice}` lists its slivers"),
        ));
    }
    let affected: Vec<i64> = store::co_members(&mut w.tx, &[id])
        .await?
        .into_iter()
        .filter(|s| *s != id)
        .collect();
    tickets::revoke(&state, &mut w, &[id]).await?;
    sqlx::query("DELETE FROM slivers WHERE id = ?")
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
    tickets::reissue(&state, &mut w, &affected).await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "sliver.remove",
        &slice,
        serde_json::json!({ "sliver": sliver }),
    )
    .await?;
    w.commit(&state).await?;
    Ok(Json(Done {
        message: format!("sliver {sliver} removed from slice {slice}; its ticket is revoked"),
    }))
}
