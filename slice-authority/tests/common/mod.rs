//! Shared fixtures: an authority on 127.0.0.1:0 in a temporary data directory.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use slicenet_authority::api::{NewNode, NewPrincipal, NewSite, Role, SiteRole};
use slicenet_authority::client::Client;
use slicenet_authority::config::Config;
use slicenet_authority::keys::{self, PublicKey};
use slicenet_authority::model::Resources;
use slicenet_authority::server::{Authority, RunningAuthority};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub authority: RunningAuthority,
    pub admin: Client,
}

impl Env {
    pub fn url(&self) -> String {
        self.authority.url()
    }

    pub fn client(&self, key: SigningKey) -> Client {
        Client::new(&self.url(), key)
    }
}

/// A test configuration: fast reaper, normal durability is not what we test here.
pub fn test_config() -> Config {
    Config {
        reaper_interval_ms: 100,
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open(dir.path(), Some(config)).await.unwrap();
    let bootstrap = authority
        .bootstrap
        .clone()
        .expect("first start bootstraps an admin");
    let admin_key = keys::read_secret_key(&bootstrap.admin_key_path).unwrap();
    let authority = authority
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin = Client::new(&authority.url(), admin_key);
    Env {
        dir,
        authority,
        admin,
    }
}

pub fn caps(vcpus: u32, memory_mib: u64) -> Resources {
    Resources {
        vcpus,
        memory_mib,
        disk_gib: 100,
        bandwidth_mbps: 1000,
    }
}

pub async fn add_site(admin: &Client, name: &str, region: &str, country: &str, lat: f64, lon: f64) {
    admin
        .create_site(&NewSite {
            name: name.into(),
            region: region.into(),
            country: country.into(),
            latitude: lat,
            longitude: lon,
            description: String::new(),
        })
        .await
        .unwrap();
}

/// Adds a node and returns its identity key.
pub async fn add_node(admin: &Client, name: &str, site: &str, capacity: Resources) -> SigningKey {
    let key = keys::generate();
    admin
        .create_node(&NewNode {
            name: name.into(),
            site: site.into(),
            public_key: PublicKey::of(&key),
            capacity,
        })
        .await
        .unwrap();
    key
}

/// Adds a principal and returns a client signing with their key.
pub async fn add_user(
    env: &Env,
    by: &Client,
    name: &str,
    admin: bool,
    sites: &[(&str, Role)],
) -> Client {
    let key = keys::generate();
    by.create_principal(&NewPrincipal {
        name: name.into(),
        public_key: PublicKey::of(&key),
        admin,
        sites: sites
            .iter()
            .map(|(s, r)| SiteRole {
                site: s.to_string(),
                role: *r,
            })
            .collect(),
    })
    .await
    .unwrap();
    env.client(key)
}

/// Three sites in three regions with two nodes each (4 vCPU / 4 GiB).
pub async fn three_sites(env: &Env) -> Vec<(String, SigningKey)> {
    add_site(&env.admin, "ams", "eu", "NL", 52.37, 4.90).await;
    add_site(&env.admin, "nrt", "asia", "JP", 35.68, 139.69).await;
    add_site(&env.admin, "iad", "na", "US", 39.04, -77.49).await;
    let mut nodes = Vec::new();
    for site in ["ams", "nrt", "iad"] {
        for i in 1..=2 {
            let name = format!("{site}-n{i}");
            let key = add_node(&env.admin, &name, site, caps(4, 4096)).await;
            nodes.push((name, key));
        }
    }
    nodes
}

/// Polls `f` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends a request signed by `key` with exactly these body bytes; returns status and JSON.
pub async fn raw(
    url: &str,
    key: &SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let h = slicenet_authority::auth::sign_request(key, method, path, body);
    send_signed(url, &h, method, path, body).await
}

/// Sends a request with the given authentication headers.
pub async fn send_signed(
    url: &str,
    h: &slicenet_authority::auth::SignedHeaders,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    use slicenet_authority::auth::*;
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .header(HEADER_KEY, h.key.to_string())
        .header(HEADER_TIMESTAMP, h.timestamp_ms.to_string())
        .header(HEADER_NONCE, h.nonce.clone())
        .header(HEADER_SIGNATURE, h.signature.clone())
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// The error code of an error reply.
pub fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}
