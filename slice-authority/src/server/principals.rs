//! Principals (users), `whoami` and the audit log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::authn::{ApiJson, ApiPath, ApiQuery, Caller, PrincipalCtx};
use super::error::{ApiError, ApiResult};
use super::{store, AppState};
use crate::api::{AuditEntry, Done, NewPrincipal, Principal, Role, SiteRole, WhoAmI};
use crate::keys::PublicKey;
use crate::model::names;

async fn load(state: &AppState, name: &str) -> ApiResult<Principal> {
    let row: Option<(i64, String, String, bool)> =
        sqlx::query_as("SELECT id, name, public_key, is_admin FROM principals WHERE name = ?")
            .bind(name)
            .fetch_optional(&state.db)
            .await?;
    let (id, name, key, admin) = row
        .ok_or_else(|| ApiError::not_found("user", name, "`slicenet user list` shows the users"))?;
    let sites: Vec<(String, String)> = sqlx::query_as(
        "SELECT s.name, m.role FROM site_members m JOIN sites s ON s.id = m.site_id WHERE m.principal_id = ? ORDER BY s.name",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(Principal {
        name,
        public_key: key.parse().unwrap_or(PublicKey([0; 32])),
        admin,
        sites: sites
            .into_iter()
            .map(|(site, role)| SiteRole {
                site,
                role: if role == "pi" { Role::Pi } else { Role::User },
            })
            .collect(),
    })
}

/// `GET /v1/whoami`.
pub async fn whoami(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<WhoAmI>> {
    match &caller {
        Caller::Node { name, .. } => Ok(Json(WhoAmI::Node { name: name.clone() })),
        _ => {
            let p = caller.principal()?;
            Ok(Json(WhoAmI::Principal(load(&state, &p.name).await?)))
        }
    }
}

/// `GET /v1/principals`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Principal>>> {
    caller.principal()?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM principals ORDER BY name")
        .fetch_all(&state.db)
        .await?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        out.push(load(&state, &n).await?);
    }
    Ok(Json(out))
}

/// `GET /v1/principals/{principal}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Principal>> {
    caller.principal()?;
    Ok(Json(load(&state, &name).await?))
}

fn may_create(p: &PrincipalCtx, req: &NewPrincipal) -> ApiResult<()> {
    if p.admin {
        return Ok(());
    }
    // A PI may add plain users to their own sites: that is how PlanetLab
    // sites on-boarded their researchers without waiting for the operators.
    let pi_scope = !req.admin
        && !req.sites.is_empty()
        && req
            .sites
            .iter()
            .all(|s| s.role == Role::User && p.is_pi_of(&s.site));
    if pi_scope {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} may not add this user: administrators may add anyone; a site's PI may add users (role user) to that site only",
            p.name
        )))
    }
}

/// `POST /v1/principals`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewPrincipal>,
) -> ApiResult<(StatusCode, Json<Principal>)> {
    let p = caller.principal()?;
    names::principal(&req.name).map_err(ApiError::bad_request)?;
    req.public_key
        .verifying_key()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    may_create(p, &req)?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = req.sites.iter().find(|s| !seen.insert(&s.site)) {
        return Err(ApiError::bad_request(format!(
            "site {} is listed twice; give each site once with one role",
            dup.site
        )));
    }
    let mut w = state.write().await?;
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT 'user ' || name FROM principals WHERE name = ?1 OR public_key = ?2 UNION ALL SELECT 'node ' || name FROM nodes WHERE public_key = ?2",
    )
    .bind(&req.name)
    .bind(req.public_key.to_string())
    .fetch_optional(&mut *w.tx)
    .await?;
    if let Some(t) = taken {
        return Err(ApiError::conflict(format!(
            "{t} already has that name or key; every user needs their own name and key (`slicenet keygen`)"
        )));
    }
    let mut site_ids = Vec::new();
    for s in &req.sites {
        site_ids.push((store::site_id(&mut w.tx, &s.site).await?, s.role));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO principals (name, public_key, is_admin, created_at) VALUES (?, ?, ?, ?) RETURNING id",
    )
    .bind(&req.name)
    .bind(req.public_key.to_string())
    .bind(req.admin)
    .bind(crate::auth::now_secs())
    .fetch_one(&mut *w.tx)
    .await?;
    for (site_id, role) in site_ids {
        sqlx::query("INSERT INTO site_members (principal_id, site_id, role) VALUES (?, ?, ?)")
            .bind(id)
            .bind(site_id)
            .bind(role.to_string())
            .execute(&mut *w.tx)
            .await?;
    }
    store::audit(
        &mut w.tx,
        &p.name,
        "principal.create",
        &req.name,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    w.commit(&state).await?;
    Ok((StatusCode::CREATED, Json(load(&state, &req.name).await?)))
}

/// `DELETE /v1/principals/{principal}` (admin; not while they own slices).
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Done>> {
    let p = caller.principal()?;
    p.require_admin("remove users")?;
    if p.name == name {
        return Err(ApiError::conflict(
            "you may not remove yourself: another administrator must, so the authority never loses its last one",
        ));
    }
    let mut w = state.write().await?;
    let id: i64 = sqlx::query_scalar("SELECT id FROM principals WHERE name = ?")
        .bind(&name)
        .fetch_optional(&mut *w.tx)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("user", &name, "`slicenet user list` shows the users")
        })?;
    let owned: Vec<String> =
        sqlx::query_scalar("SELECT name FROM slices WHERE owner_id = ? ORDER BY name")
            .bind(id)
            .fetch_all(&mut *w.tx)
            .await?;
    if !owned.is_empty() {
        return Err(ApiError::conflict(format!(
            "user {name} owns slices {}; delete them first (`slicenet slice delete`)",
            owned.join(", ")
        )));
    }
    sqlx::query("DELETE FROM principals WHERE id = ?")
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "principal.delete",
        &name,
        serde_json::json!({}),
    )
    .await?;
    w.commit(&state).await?;
    Ok(Json(Done {
        message: format!("user {name} removed"),
    }))
}

/// Query of the audit log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Newest entries, at most this many (default 100, at most 10000).
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /v1/audit` (admin).
pub async fn audit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    caller.principal()?.require_admin("read the audit log")?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let rows: Vec<(i64, i64, String, String, String, String)> = sqlx::query_as(
        "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?",
    )
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .rev()
            .map(|(id, at, actor, action, target, detail)| AuditEntry {
                id,
                at,
                actor,
                action,
                target,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
            .collect(),
    ))
}
