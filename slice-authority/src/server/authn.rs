//! Authentication middleware: checks a request's signature, freshness and
//! (for mutations) nonce, resolves the caller, and hands handlers the body
//! it had to read to hash. Also the JSON body extractor with typed errors.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};
use super::{AppState, Inner};
use crate::api::Role;
use crate::auth::{self, AuthError, SignedHeaders};
use crate::keys::PublicKey;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No signature (only `GET /v1/authority` accepts this).
    Anonymous,
    /// A person or service.
    Principal(PrincipalCtx),
    /// A node, by its identity key.
    Node {
        /// Registry id.
        id: i64,
        /// Name.
        name: String,
    },
}

/// An authenticated principal and its roles.
#[derive(Debug, Clone)]
pub struct PrincipalCtx {
    /// Registry id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Administrator.
    pub admin: bool,
    /// The key the request was signed with.
    pub public_key: PublicKey,
    /// (site id, site name, role).
    pub sites: Vec<(i64, String, Role)>,
}

impl PrincipalCtx {
    /// True for the PI of the named site.
    pub fn is_pi_of(&self, site: &str) -> bool {
        self.sites
            .iter()
            .any(|(_, name, role)| name == site && *role == Role::Pi)
    }

    /// Admin or PI of the site.
    pub fn require_site_manager(&self, site: &str, action: &str) -> ApiResult<()> {
        if self.admin || self.is_pi_of(site) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} may not {action}: only an administrator or a PI of site {site} may; ask one of them",
                self.name
            )))
        }
    }

    /// Admin only.
    pub fn require_admin(&self, action: &str) -> ApiResult<()> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} may not {action}: only an administrator may; ask one",
                self.name
            )))
        }
    }
}

impl Caller {
    /// The principal, or 401/403 with what to do.
    pub fn principal(&self) -> ApiResult<&PrincipalCtx> {
        match self {
            Caller::Principal(p) => Ok(p),
            Caller::Anonymous => Err(ApiError::unauthenticated(
                "unauthenticated",
                "this request needs a signature: use `slicenet` with --key (or SLICENET_KEY) or slicenet_authority::client::Client",
            )),
            Caller::Node { name, .. } => Err(ApiError::forbidden(format!(
                "node {name} may only use its own /v1/nodes/{name}/... endpoints"
            ))),
        }
    }

    /// Name for the audit log.
    pub fn actor(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".into(),
            Caller::Principal(p) => p.name.clone(),
            Caller::Node { name, .. } => format!("node:{name}"),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, AuthError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| AuthError::BadHeader {
            header: name,
            reason: "not ASCII".into(),
        }),
    }
}

fn signed_headers(headers: &HeaderMap) -> Result<Option<SignedHeaders>, AuthError> {
    let Some(key) = header(headers, auth::HEADER_KEY)? else {
        return Ok(None);
    };
    let missing = |h: &'static str| AuthError::BadHeader {
        header: h,
        reason: "missing".into(),
    };
    let key: PublicKey = key
        .parse()
        .map_err(|e: crate::keys::KeyError| AuthError::BadHeader {
            header: auth::HEADER_KEY,
            reason: e.to_string(),
        })?;
    let timestamp_ms = header(headers, auth::HEADER_TIMESTAMP)?
        .ok_or_else(|| missing(auth::HEADER_TIMESTAMP))?
        .parse()
        .map_err(|_| AuthError::BadHeader {
            header: auth::HEADER_TIMESTAMP,
            reason: "unix milliseconds expected".into(),
        })?;
    let nonce = header(headers, auth::HEADER_NONCE)?
        .ok_or_else(|| missing(auth::HEADER_NONCE))?
        .to_string();
    let signature = header(headers, auth::HEADER_SIGNATURE)?
        .ok_or_else(|| missing(auth::HEADER_SIGNATURE))?
        .to_string();
    Ok(Some(SignedHeaders {
        key,
        timestamp_ms,
        nonce,
        signature,
    }))
}

fn auth_error(e: AuthError) -> ApiError {
    let code = match e {
        AuthError::BadHeader { .. } => "bad_auth_header",
        AuthError::BadSignature { .. } => "bad_signature",
        AuthError::Stale { .. } => "stale_request",
    };
    ApiError::unauthenticated(code, e.to_string())
}

/// The middleware: reads the body (bounded), authenticates, records the nonce of mutations.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match authenticate_inner(&state, request).await {
        Ok((request, Some(nonce))) => CURRENT_NONCE.scope(nonce, next.run(request)).await,
        Ok((request, None)) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn authenticate_inner(
    state: &Inner,
    request: Request,
) -> ApiResult<(Request, Option<PendingNonce>)> {
    let (mut parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes, the limit this authority accepts; send less (e.g. fewer placement groups per request)"),
        )
    })?;
    let mut pending = None;
    let caller = match signed_headers(&parts.headers).map_err(auth_error)? {
        None => Caller::Anonymous,
        Some(h) => {
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let skew_ms = state.config.clock_skew_secs as i64 * 1000;
            let key = auth::verify_request(
                &h,
                parts.method.as_str(),
                path,
                &bytes,
                auth::now_ms(),
                skew_ms,
            )
            .map_err(auth_error)?;
            // Resolve first so unknown keys cannot fill the nonce table.
            let caller = resolve(state, &key).await?;
            if parts.method != Method::GET && parts.method != Method::HEAD {
                pending = Some(remember_nonce(state, &key, &h)?);
            }
            caller
        }
    };
    parts.extensions.insert(caller);
    Ok((Request::from_parts(parts, Body::from(bytes)), pending))
}

/// Checks a mutation's nonce against every nonce seen within the skew
/// window (kept in memory, loaded from the database at start); a second use
/// is a replay. The nonce is persisted in the same transaction as the
/// request's effect (see [`Inner::write`]), so a request whose effect
/// committed can never be replayed, even after a crash, at no extra commit.
fn remember_nonce(state: &Inner, key: &PublicKey, h: &SignedHeaders) -> ApiResult<PendingNonce> {
    let expires_at = h.timestamp_ms / 1000 + state.config.clock_skew_secs as i64 + 1;
    let nonce = PendingNonce {
        key: key.to_string(),
        nonce: h.nonce.clone(),
        expires_at,
    };
    let mut seen = state.nonces.lock().expect("nonce cache lock");
    if seen
        .insert((nonce.key.clone(), nonce.nonce.clone()), expires_at)
        .is_some()
    {
        return Err(ApiError::unauthenticated(
            "replayed_request",
            "this request was already received (same key and nonce): it was replayed; sign every request anew (the client does this by itself)",
        ));
    }
    Ok(nonce)
}

/// A mutation's nonce, persisted by the request's write transaction.
#[derive(Debug, Clone)]
pub struct PendingNonce {
    /// Caller's key.
    pub key: String,
    /// The nonce.
    pub nonce: String,
    /// When it leaves the skew window.
    pub expires_at: i64,
}

tokio::task_local! {
    /// The nonce of the mutation this task is serving.
    pub static CURRENT_NONCE: PendingNonce;
}

async fn resolve(state: &Inner, key: &PublicKey) -> ApiResult<Caller> {
    let text = key.to_string();
    let principal: Option<(i64, String, bool)> =
        sqlx::query_as("SELECT id, name, is_admin FROM principals WHERE public_key = ?")
            .bind(&text)
            .fetch_optional(&state.db)
            .await?;
    if let Some((id, name, admin)) = principal {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT s.id, s.name, m.role FROM site_members m JOIN sites s ON s.id = m.site_id WHERE m.principal_id = ? ORDER BY s.name",
        )
        .bind(id)
        .fetch_all(&state.db)
        .await?;
        let sites = rows
            .into_iter()
            .map(|(sid, sname, role)| {
                (sid, sname, if role == "pi" { Role::Pi } else { Role::User })
            })
            .collect();
        return Ok(Caller::Principal(PrincipalCtx {
            id,
            name,
            admin,
            public_key: *key,
            sites,
        }));
    }
    let node: Option<(i64, String)> =
        sqlx::query_as("SELECT id, name FROM nodes WHERE public_key = ?")
            .bind(&text)
            .fetch_optional(&state.db)
            .await?;
    match node {
        Some((id, name)) => Ok(Caller::Node { id, name }),
        None => Err(ApiError::unauthenticated(
            "unknown_key",
            format!("the key {key} is not registered with this authority: ask an administrator to add you (`slicenet user add`) or your node (`slicenet node add`)"),
        )),
    }
}

/// A JSON body parsed with typed errors (unknown fields, wrong types, bad syntax).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "the request body is not valid JSON"
                }
                _ => "the request body does not match what this endpoint takes",
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("{what}: {e}; see slice-authority/README.md for the request format"),
            )
        })
    }
}

/// Query parameters with typed errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "bad query string: {}; see slice-authority/README.md",
                    e.body_text()
                ))
            })
    }
}

/// Path parameters with typed errors (e.g. a sliver id that is not a number).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "bad path: {}; sliver ids are numbers",
                    e.body_text()
                ))
            })
    }
}
