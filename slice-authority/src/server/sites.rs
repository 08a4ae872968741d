//! Sites, and the unauthenticated authority description.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use sqlx::FromRow;

use super::authn::{ApiJson, ApiPath, Caller};
use super::error::{ApiError, ApiResult};
use super::{store, AppState};
use crate::api::{AuthorityInfo, Done, LeasePolicy, NewSite, Site};
use crate::model::names;

/// `GET /v1/authority`.
pub async fn authority_info(State(state): State<AppState>) -> Json<AuthorityInfo> {
    Json(AuthorityInfo {
        public_key: state.public_key,
        version: env!("CARGO_PKG_VERSION").to_string(),
        now: crate::auth::now_secs(),
        policy: LeasePolicy {
            default_lease_secs: state.config.default_lease_secs,
            max_lease_secs: state.config.max_lease_secs,
        },
    })
}

#[derive(FromRow)]
struct SiteRow {
    name: String,
    region: String,
    country: String,
    latitude: f64,
    longitude: f64,
    description: String,
    nodes: i64,
}

impl From<SiteRow> for Site {
    fn from(r: SiteRow) -> Site {
        Site {
            name: r.name,
            region: r.region,
            country: r.country,
            latitude: r.latitude,
            longitude: r.longitude,
            description: r.description,
            nodes: r.nodes as u32,
        }
    }
}

const SITE_SELECT: &str = "SELECT s.name, s.region, s.country, s.latitude, s.longitude, s.description, (SELECT COUNT(*) FROM nodes n WHERE n.site_id = s.id) AS nodes FROM sites s";

/// `GET /v1/sites`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Site>>> {
    caller_may_read(&caller)?;
    let rows: Vec<SiteRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SITE_SELECT} ORDER BY s.name"
    )))
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows.into_iter().map(Site::from).collect()))
}

/// Any authenticated principal or node may read the registry.
pub fn caller_may_read(caller: &Caller) -> ApiResult<()> {
    match caller {
        Caller::Anonymous => caller.principal().map(|_| ()),
        _ => Ok(()),
    }
}

/// `GET /v1/sites/{site}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<Json<Site>> {
    caller_may_read(&caller)?;
    let row: Option<SiteRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SITE_SELECT} WHERE s.name = ?"
    )))
    .bind(&site)
    .fetch_optional(&state.db)
    .await?;
    row.map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("site", &site, "`slicenet site list` shows the sites"))
}

/// `POST /v1/sites` (admin).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<NewSite>,
) -> ApiResult<(StatusCode, Json<Site>)> {
    let p = caller.principal()?;
    p.require_admin("add sites")?;
    names::site(&req.name).map_err(ApiError::bad_request)?;
    names::code("region", &req.region).map_err(ApiError::bad_request)?;
    names::code("country", &req.country).map_err(ApiError::bad_request)?;
    if !(-90.0..=90.0).contains(&req.latitude) || !(-180.0..=180.0).contains(&req.longitude) {
        return Err(ApiError::bad_request(format!(
            "latitude {} / longitude {} is not on Earth: latitude is -90..90, longitude -180..180",
            req.latitude, req.longitude
        )));
    }
    if req.description.len() > 1000 {
        return Err(ApiError::bad_request(
            "the description is longer than 1000 characters",
        ));
    }
    let mut w = state.write().await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM sites WHERE name = ?")
        .bind(&req.name)
        .fetch_optional(&mut *w.tx)
        .await?;
    if exists.is_some() {
        return Err(ApiError::conflict(format!(
            "site {} already exists; `slicenet site show {}` shows it",
            req.name, req.name
        )));
    }
    sqlx::query("INSERT INTO sites (name, region, country, latitude, longitude, description, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(&req.name)
        .bind(&req.region)
        .bind(&req.country)
        .bind(req.latitude)
        .bind(req.longitude)
        .bind(&req.description)
        .bind(crate::auth::now_secs())
        .execute(&mut *w.tx)
        .await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "site.create",
        &req.name,
        serde_json::to_value(&req).unwrap_or_default(),
    )
    .await?;
    w.commit(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(Site {
            name: req.name,
            region: req.region,
            country: req.country,
            latitude: req.latitude,
            longitude: req.longitude,
            description: req.description,
            nodes: 0,
        }),
    ))
}

/// `DELETE /v1/sites/{site}` (admin; only when no node, slice or member refers to it).
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<Json<Done>> {
    let p = caller.principal()?;
    p.require_admin("remove sites")?;
    let mut w = state.write().await?;
    let id = store::site_id(&mut w.tx, &site).await?;
    let (nodes, slices, members): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM nodes WHERE site_id = ?1), (SELECT COUNT(*) FROM slices WHERE site_id = ?1), (SELECT COUNT(*) FROM site_members WHERE site_id = ?1)",
    )
    .bind(id)
    .fetch_one(&mut *w.tx)
    .await?;
    if nodes + slices + members > 0 {
        return Err(ApiError::conflict(format!(
            "site {site} still has {nodes} nodes, {slices} slices and {members} user memberships; remove those first"
        )));
    }
    sqlx::query("DELETE FROM sites WHERE id = ?")
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
    store::audit(
        &mut w.tx,
        &p.name,
        "site.delete",
        &site,
        serde_json::json!({}),
    )
    .await?;
    w.commit(&state).await?;
    Ok(Json(Done {
        message: format!("site {site} removed"),
    }))
}
