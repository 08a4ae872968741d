//! An HTTP client for the authority that signs every request with a
//! principal's or a node's ed25519 key. Used by the CLI, the node daemon
//! (registration, heartbeat, ticket long poll) and the experiments.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::*;
use crate::auth;
use crate::keys::PublicKey;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The authority answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code (e.g. `placement_failed`, `forbidden`).
        code: String,
        /// What failed and what to do.
        message: String,
        /// Structured details.
        details: Option<serde_json::Value>,
    },
    /// The authority could not be reached.
    #[error("cannot reach the authority at {url}: {source}; check --authority / SLICENET_AUTHORITY and that `slicenet authority` runs")]
    Transport {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The reply was not what the API promises.
    #[error(
        "unexpected reply from {url}: {reason}; is that a slicenet authority of the same version?"
    )]
    Decode {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// The API error code, when the authority answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the authority answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result of a client call.
pub type ClientResult<T> = Result<T, ClientError>;

/// A signing client bound to one authority and one key. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Arc<SigningKey>,
}

fn segment(s: &str) -> String {
    // Registry names are [a-z0-9._-]; anything else is percent-encoded so a
    // bad name reaches the server (and its clear 4xx) intact.
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for the authority at `base_url` (e.g. `http://127.0.0.1:8420`) signing with `key`.
    pub fn new(base_url: &str, key: SigningKey) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .expect("reqwest client with default TLS-less settings builds");
        Client {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            key: Arc::new(key),
        }
    }

    /// The public key requests are signed with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::of(&self.key)
    }

    /// The authority's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a signed request with a JSON body (or none) and decodes the JSON reply.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> ClientResult<T> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).expect("API types serialize"),
            None => Vec::new(),
        };
        let h = auth::sign_request(&self.key, method.as_str(), path_and_query, &bytes);
        let url = format!("{}{}", self.base, path_and_query);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(timeout)
            .header(auth::HEADER_KEY, h.key.to_string())
            .header(auth::HEADER_TIMESTAMP, h.timestamp_ms.to_string())
            .header(auth::HEADER_NONCE, h.nonce)
            .header(auth::HEADER_SIGNATURE, h.signature);
        if body.is_some() {
            req = req.header("content-type", "application/json").body(bytes);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        decode(&url, resp).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> ClientResult<T> {
        self.call::<(), T>(Method::GET, path, None, Duration::from_secs(60))
            .await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> ClientResult<T> {
        self.call(Method::POST, path, Some(body), Duration::from_secs(60))
            .await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> ClientResult<T> {
        self.call::<(), T>(Method::DELETE, path, None, Duration::from_secs(60))
            .await
    }

    /// A console grant for a sliver (`POST /v1/slices/{slice}/slivers/{id}/console`):
    /// present it, with a proof of this client's key, at `reply.console`
    /// ([`crate::grant::handshake`]).
    pub async fn console_grant(&self, slice: &str, sliver: u64) -> ClientResult<ConsoleGrantReply> {
        self.call::<(), _>(
            Method::POST,
            &format!("/v1/slices/{}/slivers/{sliver}/console", segment(slice)),
            None,
            Duration::from_secs(60),
        )
        .await
    }

    /// `GET /v1/authority` without a signature: works before the key is registered.
    pub async fn authority_info(&self) -> ClientResult<AuthorityInfo> {
        let url = format!("{}/v1/authority", self.base);
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        decode(&url, resp).await
    }

    /// Who the authority thinks this key is.
    pub async fn whoami(&self) -> ClientResult<WhoAmI> {
        self.get("/v1/whoami").await
    }

    /// All sites.
    pub async fn sites(&self) -> ClientResult<Vec<Site>> {
        self.get("/v1/sites").await
    }

    /// One site.
    pub async fn site(&self, name: &str) -> ClientResult<Site> {
        self.get(&format!("/v1/sites/{}", segment(name))).await
    }

    /// Adds a site (admin).
    pub async fn create_site(&self, site: &NewSite) -> ClientResult<Site> {
        self.post("/v1/sites", site).await
    }

    /// Removes an empty site (admin).
    pub async fn remove_site(&self, name: &str) -> ClientResult<Done> {
        self.delete(&format!("/v1/sites/{}", segment(name))).await
    }

    /// All nodes, or those of one site.
    pub async fn nodes(&self, site: Option<&str>) -> ClientResult<Vec<Node>> {
        match site {
            Some(s) => self.get(&format!("/v1/nodes?site={}", segment(s))).await,
            None => self.get("/v1/nodes").await,
        }
    }

    /// One node.
    pub async fn node(&self, name: &str) -> ClientResult<Node> {
        self.get(&format!("/v1/nodes/{}", segment(name))).await
    }

    /// Adds a node to the registry (admin or the site's PI).
    pub async fn create_node(&self, node: &NewNode) -> ClientResult<Node> {
        self.post("/v1/nodes", node).await
    }

    /// Removes a node without slivers (admin or the site's PI).
    pub async fn remove_node(&self, name: &str) -> ClientResult<Done> {
        self.delete(&format!("/v1/nodes/{}", segment(name))).await
    }

    /// Takes a node out of placement or back in (admin or the site's PI).
    pub async fn set_node_enabled(&self, name: &str, enabled: bool) -> ClientResult<Node> {
        self.post(
            &format!("/v1/nodes/{}/state", segment(name)),
            &SetNodeState { enabled },
        )
        .await
    }

    /// Node-facing: registers this node's WireGuard key and endpoint (the client's key must be the node's identity key).
    pub async fn register_node(
        &self,
        name: &str,
        reg: &NodeRegistration,
    ) -> ClientResult<NodeRegistered> {
        self.post(&format!("/v1/nodes/{}/register", segment(name)), reg)
            .await
    }

    /// Node-facing: liveness and sliver states.
    pub async fn heartbeat(&self, name: &str, hb: &Heartbeat) -> ClientResult<HeartbeatReply> {
        self.post(&format!("/v1/nodes/{}/heartbeat", segment(name)), hb)
            .await
    }

    /// Node-facing: tickets with an epoch above `after_epoch`, waiting up to
    /// `wait` for one to appear (the authority caps the wait, 60 s by default).
    pub async fn poll_tickets(
        &self,
        name: &str,
        after_epoch: u64,
        wait: Duration,
    ) -> ClientResult<TicketBatch> {
        let path = format!(
            "/v1/nodes/{}/tickets?after_epoch={after_epoch}&wait_secs={}",
            segment(name),
            wait.as_secs()
        );
        self.call::<(), _>(Method::GET, &path, None, wait + Duration::from_secs(30))
            .await
    }

    /// All principals.
    pub async fn principals(&self) -> ClientResult<Vec<Principal>> {
        self.get("/v1/principals").await
    }

    /// One principal.
    pub async fn principal(&self, name: &str) -> ClientResult<Principal> {
        self.get(&format!("/v1/principals/{}", segment(name))).await
    }

    /// Adds a principal (admin; a PI for users of their site).
    pub async fn create_principal(&self, p: &NewPrincipal) -> ClientResult<Principal> {
        self.post("/v1/principals", p).await
    }

    /// Removes a principal who owns no slices (admin).
    pub async fn remove_principal(&self, name: &str) -> ClientResult<Done> {
        self.delete(&format!("/v1/principals/{}", segment(name)))
            .await
    }

    /// All slices.
    pub async fn slices(&self) -> ClientResult<Vec<SliceSummary>> {
        self.get("/v1/slices").await
    }

    /// One slice with its slivers.
    pub async fn slice(&self, name: &str) -> ClientResult<Slice> {
        self.get(&format!("/v1/slices/{}", segment(name))).await
    }

    /// Creates a slice, placing its slivers all or nothing (or only plans, with `dry_run`).
    pub async fn create_slice(&self, s: &NewSlice) -> ClientResult<PlacementReply> {
        self.post("/v1/slices", s).await
    }

    /// Deletes a slice and everything in it.
    pub async fn delete_slice(&self, name: &str) -> ClientResult<Done> {
        self.delete(&format!("/v1/slices/{}", segment(name))).await
    }

    /// Sets the lease to now + `lease`, capped by policy; the reply states what was granted.
    pub async fn renew_slice(&self, name: &str, lease: Duration) -> ClientResult<RenewReply> {
        self.post(
            &format!("/v1/slices/{}/renew", segment(name)),
            &RenewRequest {
                lease_secs: lease.as_secs(),
            },
        )
        .await
    }

    /// Adds or removes slice members.
    pub async fn change_members(&self, slice: &str, change: &MemberChange) -> ClientResult<Slice> {
        self.post(&format!("/v1/slices/{}/members", segment(slice)), change)
            .await
    }

    /// Adds slivers to a live slice, all or nothing.
    pub async fn add_slivers(&self, slice: &str, req: &AddSlivers) -> ClientResult<PlacementReply> {
        self.post(&format!("/v1/slices/{}/slivers", segment(slice)), req)
            .await
    }

    /// Removes one sliver.
    pub async fn remove_sliver(&self, slice: &str, sliver: u64) -> ClientResult<Done> {
        self.delete(&format!("/v1/slices/{}/slivers/{sliver}", segment(slice)))
            .await
    }

    /// The enclaves a slice owns.
    pub async fn enclaves(&self, slice: &str) -> ClientResult<Vec<Enclave>> {
        self.get(&format!("/v1/slices/{}/enclaves", segment(slice)))
            .await
    }

    /// One enclave.
    pub async fn enclave(&self, slice: &str, enclave: &str) -> ClientResult<Enclave> {
        self.get(&format!(
            "/v1/slices/{}/enclaves/{}",
            segment(slice),
            segment(enclave)
        ))
        .await
    }

    /// Creates an enclave owned by `slice`.
    pub async fn create_enclave(&self, slice: &str, e: &NewEnclave) -> ClientResult<Enclave> {
        self.post(&format!("/v1/slices/{}/enclaves", segment(slice)), e)
            .await
    }

    /// Deletes an enclave.
    pub async fn delete_enclave(&self, slice: &str, enclave: &str) -> ClientResult<Done> {
        self.delete(&format!(
            "/v1/slices/{}/enclaves/{}",
            segment(slice),
            segment(enclave)
        ))
        .await
    }

    /// Adds a sliver to an enclave.
    pub async fn add_enclave_member(
        &self,
        slice: &str,
        enclave: &str,
        sliver: u64,
    ) -> ClientResult<Enclave> {
        self.post(
            &format!(
                "/v1/slices/{}/enclaves/{}/members",
                segment(slice),
                segment(enclave)
            ),
            &AddEnclaveMember { sliver_id: sliver },
        )
        .await
    }

    /// Removes a sliver from an enclave.
    pub async fn remove_enclave_member(
        &self,
        slice: &str,
        enclave: &str,
        sliver: u64,
    ) -> ClientResult<Enclave> {
        self.delete(&format!(
            "/v1/slices/{}/enclaves/{}/members/{sliver}",
            segment(slice),
            segment(enclave)
        ))
        .await
    }

    /// Adds an external gateway to an enclave.
    pub async fn add_gateway(
        &self,
        slice: &str,
        enclave: &str,
        g: &NewGateway,
    ) -> ClientResult<Enclave> {
        self.post(
            &format!(
                "/v1/slices/{}/enclaves/{}/gateways",
                segment(slice),
                segment(enclave)
            ),
            g,
        )
        .await
    }

    /// Removes a gateway.
    pub async fn remove_gateway(
        &self,
        slice: &str,
        enclave: &str,
        gateway: &str,
    ) -> ClientResult<Enclave> {
        self.delete(&format!(
            "/v1/slices/{}/enclaves/{}/gateways/{}",
            segment(slice),
            segment(enclave),
            segment(gateway)
        ))
        .await
    }

    /// What a gateway host needs to join the enclave.
    pub async fn export_enclave(
        &self,
        slice: &str,
        enclave: &str,
        gateway: Option<&str>,
    ) -> ClientResult<EnclaveExport> {
        let mut path = format!(
            "/v1/slices/{}/enclaves/{}/export",
            segment(slice),
            segment(enclave)
        );
        if let Some(g) = gateway {
            path.push_str(&format!("?gateway={}", segment(g)));
        }
        self.get(&path).await
    }

    /// The newest audit log entries (admin).
    pub async fn audit(&self, limit: u32) -> ClientResult<Vec<AuditEntry>> {
        self.get(&format!("/v1/audit?limit={limit}")).await
    }
}

async fn decode<T: DeserializeOwned>(url: &str, resp: reqwest::Response) -> ClientResult<T> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.to_string(),
            source,
        })?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            reason: e.to_string(),
        });
    }
    match serde_json::from_slice::<ErrorReply>(&bytes) {
        Ok(e) => Err(ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
            details: e.error.details,
        }),
        Err(_) => Err(ClientError::Api {
            status: status.as_u16(),
            code: "http_error".into(),
            message: format!(
                "HTTP {status} from {url}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
            ),
            details: None,
        }),
    }
}
