//! Console grants: a slice's members (and its owner, the site's PIs and
//! administrators) get a short-lived grant, signed by the authority key,
//! that the sliver's node accepts offline from a client proving it holds
//! the member's key (see [`crate::grant`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::authn::{ApiPath, Caller};
use super::error::{ApiError, ApiResult};
use super::store::{self, SliceAccess};
use super::AppState;
use crate::api::ConsoleGrantReply;
use crate::grant::{self, ConsoleGrant};

/// `POST /v1/slices/{slice}/slivers/{sliver}/console`.
pub async fn grant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((slice, sliver)): ApiPath<(String, u64)>,
) -> ApiResult<Json<ConsoleGrantReply>> {
    let p = caller.principal()?;
    // A write transaction: the audit entry commits with the grant's issue.
    let mut w = state.write().await?;
    let row = store::slice_by_name(&mut w.tx, &slice).await?;
    store::require_slice_access(
        &mut w.tx,
        p,
        &row,
        SliceAccess::Member,
        "open sliver consoles",
    )
    .await?;
    let node_name: Option<String> = sqlx::query_scalar(
        "SELECT n.name FROM slivers v JOIN nodes n ON n.id = v.node_id WHERE v.id = ? AND v.slice_id = ?",
    )
    .bind(sliver as i64)
    .bind(row.id)
    .fetch_optional(&mut *w.tx)
    .await?;
    let Some(node_name) = node_name else {
        return Err(ApiError::not_found(
            "sliver",
            format!("{sliver} of slice {slice}"),
            &format!("`slicenet slice show {slice}` lists its slivers"),
        ));
    };
    let node = store::node_by_name(&mut w.tx, &node_name).await?;
    let Some(console) = node.console() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "console_unavailable",
            format!(
                "node {node_name}, which runs sliver {sliver}, has not registered a console address (its daemon is older or offers no remote console); on the node itself, `slicenet console` reaches the sliver through the node's control socket"
            ),
        ));
    };
    let node_key = node
        .public_key
        .parse()
        .map_err(|e| ApiError::internal(&format!("reading node {node_name}'s identity key"), e))?;
    let now = crate::auth::now_secs();
    let g = ConsoleGrant {
        grant_id: rand::random(),
        issued_at: now,
        expires_at: now + state.config.console_grant_secs as i64,
        sliver_id: sliver,
        slice: slice.clone(),
        node: node_name.clone(),
        node_key,
        principal: p.name.clone(),
        principal_key: p.public_key,
    };
    let bytes = grant::sign(&g, &state.key);
    store::audit(
        &mut w.tx,
        &p.name,
        "sliver.console",
        &slice,
        serde_json::json!({
            "sliver": sliver,
            "node": node_name,
            "grant_id": g.grant_id_hex(),
            "expires_at": g.expires_at,
        }),
    )
    .await?;
    w.commit(&state).await?;
    Ok(Json(ConsoleGrantReply {
        grant: B64.encode(&bytes),
        grant_id: g.grant_id_hex(),
        sliver_id: sliver,
        slice,
        node: node_name,
        node_key,
        console,
        expires_at: g.expires_at,
    }))
}
