//! The authority server: opens the data directory (configuration, keys,
//! SQLite registry), bootstraps the first administrator, and serves the
//! HTTP/JSON API with a background reaper for expired leases.
//!
//! Layers, thin on purpose: [`authn`] turns a signed request into a caller,
//! handlers in [`sites`], [`nodes`], [`principals`], [`slices`],
//! [`enclaves`], [`consoles`] check authorisation and validate input,
//! [`tickets`] signs and delivers tickets, [`consoles`] also signs console
//! grants, [`store`] holds the SQL they share.

mod authn;
mod capacity;
mod consoles;
mod enclaves;
mod error;
mod nodes;
mod principals;
mod reaper;
mod sites;
mod slices;
mod store;
mod tickets;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use ed25519_dalek::SigningKey;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

use crate::config::{Config, ConfigError};
use crate::keys::{self, KeyError, PublicKey};
use crate::placement::NodeView;
pub use authn::Caller;
use capacity::CapacityIndex;
pub use error::{ApiError, ApiResult};

/// File names inside the data directory.
pub mod files {
    /// The registry database.
    pub const DATABASE: &str = "authority.db";
    /// The authority's ticket-signing key (secret).
    pub const AUTHORITY_KEY: &str = "authority.key";
    /// Its public key, for nodes to pin.
    pub const AUTHORITY_PUB: &str = "authority.pub";
    /// The bootstrap administrator's key (secret), created on first start.
    pub const ADMIN_KEY: &str = "admin.key";
    /// Configuration.
    pub const CONFIG: &str = "authority.toml";
    /// Held locked while an authority runs on the directory.
    pub const LOCK: &str = "authority.lock";
}

/// Why the authority could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another authority runs on the same directory.
    #[error("another authority is running on data directory {0}; stop it first, or use another --data-dir")]
    Locked(String),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database could not be opened or migrated.
    #[error("registry database {path}: {reason}")]
    Database {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another --listen address")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Shared state of the running server.
pub(crate) struct Inner {
    pub db: SqlitePool,
    pub config: Config,
    pub key: SigningKey,
    pub public_key: PublicKey,
    write_lock: Arc<Mutex<Writer>>,
    /// Nonces of mutations within the skew window: (key, nonce) -> expiry.
    nonces: std::sync::Mutex<HashMap<(String, String), i64>>,
    watchers: std::sync::Mutex<HashMap<i64, watch::Sender<u64>>>,
    _lock_file: std::fs::File,
}

pub(crate) type AppState = Arc<Inner>;

/// What only the holder of the writer lock touches.
pub(crate) struct Writer {
    /// Free capacity of every node as of the last commit (None: read it
    /// again at the next placement).
    capacity: Option<CapacityIndex>,
    /// The index absorbed rows inside a transaction that has not committed
    /// yet; if that transaction rolls back, the next one starts afresh.
    unconfirmed: bool,
}

/// A write transaction: the process-wide writer lock (fair queueing instead
/// of SQLite's busy polling) plus `BEGIN IMMEDIATE`, so every read inside
/// sees the state no other writer can change before commit. Placement runs
/// inside one, which is why concurrent requests never over-commit a node.
pub(crate) struct WriteTx {
    writer: OwnedMutexGuard<Writer>,
    pub tx: Transaction<'static, Sqlite>,
    notify: BTreeSet<i64>,
}

impl WriteTx {
    /// Remembers that a node's tickets changed; it is woken after commit.
    pub fn notify_node(&mut self, node_id: i64) {
        self.notify.insert(node_id);
    }

    /// Every node with its free capacity and state at `now`, as this
    /// transaction sees the registry: the capacity index, refreshed with
    /// the rows changed since it was last read (none, normally, because
    /// every commit refreshes it).
    pub async fn node_views(&mut self, now: i64, liveness_secs: u64) -> ApiResult<&[NodeView]> {
        let writer = &mut *self.writer;
        match writer.capacity.as_mut() {
            Some(index) => {
                let rows = CapacityIndex::changes_since(&mut self.tx, index.rev()).await?;
                if !rows.is_empty() {
                    writer.unconfirmed = true;
                    index.apply(rows);
                }
            }
            None => {
                writer.unconfirmed = true;
                writer.capacity = Some(CapacityIndex::load(&mut self.tx).await?);
            }
        }
        let index = writer
            .capacity
            .as_mut()
            .expect("capacity index loaded above");
        Ok(index.views(now, liveness_secs))
    }

    /// Commits, brings the capacity index up to date with what committed,
    /// and wakes the long polls of the nodes whose tickets changed.
    pub async fn commit(self, state: &Inner) -> ApiResult<()> {
        let WriteTx {
            mut writer,
            mut tx,
            notify,
        } = self;
        let writer_state = &mut *writer;
        if let Some(index) = writer_state.capacity.as_mut() {
            let rows = CapacityIndex::changes_since(&mut tx, index.rev()).await?;
            if !rows.is_empty() {
                writer_state.unconfirmed = true;
                index.apply(rows);
            }
        }
        if let Err(e) = tx.commit().await {
            // Whether anything committed is unknown: read it all again.
            writer.capacity = None;
            writer.unconfirmed = false;
            return Err(e.into());
        }
        writer.unconfirmed = false;
        drop(writer);
        state.wake(&notify);
        Ok(())
    }
}

impl Inner {
    /// Begins a write transaction.
    pub async fn write(&self) -> ApiResult<WriteTx> {
        let mut writer = self.write_lock.clone().lock_owned().await;
        if writer.unconfirmed {
            writer.capacity = None;
            writer.unconfirmed = false;
        }
        let mut tx = self.db.begin_with("BEGIN IMMEDIATE").await?;
        if let Ok(n) = authn::CURRENT_NONCE.try_with(|n| n.clone()) {
            sqlx::query("INSERT INTO request_nonces (public_key, nonce, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(n.key)
                .bind(n.nonce)
                .bind(n.expires_at)
                .execute(&mut *tx)
                .await?;
        }
        Ok(WriteTx {
            writer,
            tx,
            notify: BTreeSet::new(),
        })
    }

    /// A receiver that changes whenever the node's tickets change.
    pub fn subscribe(&self, node_id: i64) -> watch::Receiver<u64> {
        let mut map = self.watchers.lock().expect("watchers lock");
        map.entry(node_id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake(&self, nodes: &BTreeSet<i64>) {
        let map = self.watchers.lock().expect("watchers lock");
        for id in nodes {
            if let Some(tx) = map.get(id) {
                tx.send_modify(|v| *v += 1);
            }
        }
    }
}

/// What the first start created, so the operator can be told how to use it.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Path of the administrator's secret key.
    pub admin_key_path: PathBuf,
    /// Its public key.
    pub admin_public_key: PublicKey,
    /// Name of the administrator principal.
    pub admin_name: String,
}

/// An authority opened on a data directory, ready to serve.
pub struct Authority {
    state: AppState,
    data_dir: PathBuf,
    /// Set when this start created the administrator.
    pub bootstrap: Option<Bootstrap>,
}

impl Authority {
    /// Opens (and on first use initialises) the data directory. `config`
    /// overrides `authority.toml` (tests and benchmarks); `None` reads it,
    /// writing the defaults on first start.
    pub async fn open(data_dir: &Path, config: Option<Config>) -> Result<Authority, OpenError> {
        let io = |source| OpenError::Io {
            path: data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join(files::LOCK))
            .map_err(io)?;
        if lock_file.try_lock().is_err() {
            return Err(OpenError::Locked(data_dir.display().to_string()));
        }
        let config = match config {
            Some(c) => {
                c.validate()?;
                c
            }
            None => Config::load_or_create(&data_dir.join(files::CONFIG))?,
        };
        let key_path = data_dir.join(files::AUTHORITY_KEY);
        let key = if key_path.exists() {
            keys::read_secret_key(&key_path)?
        } else {
            let key = keys::generate();
            keys::write_secret_key(&key_path, &key)?;
            key
        };
        let public_key = PublicKey::of(&key);
        let pub_path = data_dir.join(files::AUTHORITY_PUB);
        if !pub_path.exists() {
            keys::write_public_key(&pub_path, &public_key)?;
        }
        let db_path = data_dir.join(files::DATABASE);
        let db = open_database(&db_path, &config).await?;
        let capacity = load_capacity(&db, &db_path).await?;
        let db_pool_for_nonces = db.clone();
        let state = Arc::new(Inner {
            db,
            config,
            key,
            public_key,
            write_lock: Arc::new(Mutex::new(Writer {
                capacity: Some(capacity),
                unconfirmed: false,
            })),
            nonces: std::sync::Mutex::new(load_nonces(&db_pool_for_nonces).await?),
            watchers: std::sync::Mutex::new(HashMap::new()),
            _lock_file: lock_file,
        });
        let bootstrap = bootstrap_admin(&state, data_dir).await?;
        Ok(Authority {
            state,
            data_dir: data_dir.to_path_buf(),
            bootstrap,
        })
    }

    /// The ticket-signing public key.
    pub fn public_key(&self) -> PublicKey {
        self.state.public_key
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// The bootstrap administrator's key file (exists after the first start).
    pub fn admin_key_path(&self) -> PathBuf {
        self.data_dir.join(files::ADMIN_KEY)
    }

    /// Binds `listen` (port 0 picks a free port) and serves until shut down.
    pub async fn serve(self, listen: SocketAddr) -> Result<RunningAuthority, OpenError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| OpenError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| OpenError::Bind {
            addr: listen,
            source,
        })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let app = router(self.state.clone());
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!("authority HTTP server stopped: {e}");
            }
        });
        let reaper = tokio::spawn(reaper::run(self.state.clone(), stop_rx));
        tracing::info!("authority listening on http://{addr}");
        Ok(RunningAuthority {
            addr,
            public_key: self.state.public_key,
            stop: stop_tx,
            tasks: vec![server, reaper],
            bootstrap: self.bootstrap,
            admin_key_path: self.data_dir.join(files::ADMIN_KEY),
            _state: self.state,
        })
    }
}

/// A serving authority; dropping it without [`RunningAuthority::shutdown`] leaves the tasks running until the runtime ends.
pub struct RunningAuthority {
    /// The bound address.
    pub addr: SocketAddr,
    /// The ticket-signing public key.
    pub public_key: PublicKey,
    /// Set when this start created the administrator.
    pub bootstrap: Option<Bootstrap>,
    /// The bootstrap administrator's key file.
    pub admin_key_path: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _state: AppState,
}

impl RunningAuthority {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, finishes the ones in flight and the reaper.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (it stops only through [`Self::shutdown`] or an error).
    pub async fn wait(mut self) {
        if let Some(server) = self.tasks.first_mut() {
            let _ = server.await;
        }
    }
}

async fn open_database(path: &Path, config: &Config) -> Result<SqlitePool, OpenError> {
    let db_err = |reason: String| OpenError::Database {
        path: path.display().to_string(),
        reason,
    };
    let synchronous = SqliteSynchronous::from_str(&config.synchronous)
        .map_err(|e| db_err(format!("synchronous = {:?}: {e}", config.synchronous)))?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .map_err(|e| db_err(e.to_string()))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|e| db_err(format!("migration failed: {e}")))?;
    Ok(pool)
}

/// The capacity index, read at startup (in one read transaction, so the
/// revision matches the rows).
async fn load_capacity(db: &SqlitePool, path: &Path) -> Result<CapacityIndex, OpenError> {
    let db_err = |reason: String| OpenError::Database {
        path: path.display().to_string(),
        reason: format!("reading node capacity: {reason}"),
    };
    let mut tx = db.begin().await.map_err(|e| db_err(e.to_string()))?;
    let index = CapacityIndex::load(&mut tx)
        .await
        .map_err(|e| db_err(e.message))?;
    tx.rollback().await.map_err(|e| db_err(e.to_string()))?;
    Ok(index)
}

/// Nonces of mutations that committed and are still within the skew window.
async fn load_nonces(db: &SqlitePool) -> Result<HashMap<(String, String), i64>, OpenError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT public_key, nonce, expires_at FROM request_nonces WHERE expires_at >= ?",
    )
    .bind(crate::auth::now_secs())
    .fetch_all(db)
    .await
    .map_err(|e| OpenError::Database {
        path: "authority.db".into(),
        reason: format!("reading request nonces: {e}"),
    })?;
    Ok(rows.into_iter().map(|(k, n, e)| ((k, n), e)).collect())
}

impl Inner {
    /// Forgets nonces whose timestamps left the skew window (a replay of them is stale anyway).
    pub fn prune_nonces(&self, now: i64) {
        self.nonces
            .lock()
            .expect("nonce cache lock")
            .retain(|_, expires_at| *expires_at >= now);
    }
}

async fn bootstrap_admin(state: &Inner, data_dir: &Path) -> Result<Option<Bootstrap>, OpenError> {
    let db_err = |e: ApiError| OpenError::Database {
        path: data_dir.join(files::DATABASE).display().to_string(),
        reason: e.message,
    };
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM principals")
        .fetch_one(&state.db)
        .await
        .map_err(|e| db_err(e.into()))?;
    if count > 0 {
        return Ok(None);
    }
    // A key left by a start that died before the insert is reused.
    let path = data_dir.join(files::ADMIN_KEY);
    let key = if path.exists() {
        keys::read_secret_key(&path)?
    } else {
        let key = keys::generate();
        keys::write_secret_key(&path, &key)?;
        key
    };
    let public_key = PublicKey::of(&key);
    let mut w = state.write().await.map_err(db_err)?;
    let now = crate::auth::now_secs();
    sqlx::query(
        "INSERT INTO principals (name, public_key, is_admin, created_at) VALUES ('admin', ?, 1, ?)",
    )
    .bind(public_key.to_string())
    .bind(now)
    .execute(&mut *w.tx)
    .await
    .map_err(|e| db_err(e.into()))?;
    store::audit(
        &mut w.tx,
        "authority",
        "principal.bootstrap",
        "admin",
        serde_json::json!({ "public_key": public_key }),
    )
    .await
    .map_err(db_err)?;
    w.commit(state).await.map_err(db_err)?;
    Ok(Some(Bootstrap {
        admin_key_path: path,
        admin_public_key: public_key,
        admin_name: "admin".into(),
    }))
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/authority", get(sites::authority_info))
        .route("/v1/whoami", get(principals::whoami))
        .route("/v1/sites", get(sites::list).post(sites::create))
        .route("/v1/sites/{site}", get(sites::show).delete(sites::remove))
        .route("/v1/nodes", get(nodes::list).post(nodes::create))
        .route("/v1/nodes/{node}", get(nodes::show).delete(nodes::remove))
        .route("/v1/nodes/{node}/state", post(nodes::set_state))
        .route("/v1/nodes/{node}/register", post(nodes::register))
        .route("/v1/nodes/{node}/heartbeat", post(nodes::heartbeat))
        .route("/v1/nodes/{node}/tickets", get(tickets::poll))
        .route(
            "/v1/principals",
            get(principals::list).post(principals::create),
        )
        .route(
            "/v1/principals/{principal}",
            get(principals::show).delete(principals::remove),
        )
        .route("/v1/slices", get(slices::list).post(slices::create))
        .route(
            "/v1/slices/{slice}",
            get(slices::show).delete(slices::remove),
        )
        .route("/v1/slices/{slice}/renew", post(slices::renew))
        .route("/v1/slices/{slice}/members", post(slices::change_members))
        .route("/v1/slices/{slice}/slivers", post(slices::add_slivers))
        .route(
            "/v1/slices/{slice}/slivers/{sliver}",
            axum::routing::delete(slices::remove_sliver),
        )
        .route(
            "/v1/slices/{slice}/slivers/{sliver}/console",
            post(consoles::grant),
        )
        .route(
            "/v1/slices/{slice}/enclaves",
            get(enclaves::list).post(enclaves::create),
        )
        .route(
            "/v1/slices/{slice}/enclaves/{enclave}",
            get(enclaves::show).delete(enclaves::remove),
        )
        .route(
            "/v1/slices/{slice}/enclaves/{enclave}/members",
            post(enclaves::add_member),
        )
        .route(
            "/v1/slices/{slice}/enclaves/{enclave}/members/{sliver}",
            axum::routing::delete(enclaves::remove_member),
        )
        .route(
            "/v1/slices/{slice}/enclaves/{enclave}/gateways",
            post(enclaves::add_gateway),
        )
        .route(
            "/v1/slices/{slice}/enclaves/{enclave}/gateways/{gateway}",
            axum::routing::delete(enclaves::remove_gateway),
        )
        .route(
            "/v1/slices/{slice}/enclaves/{enclave}/export",
            get(enclaves::export),
        )
        .route("/v1/audit", get(principals::audit))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that HTTP method; see the API table in slice-authority/README.md",
            )
        })
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "no_such_endpoint",
                "no such API endpoint; the API lives under /v1 (see slice-authority/README.md)",
            )
        });
    api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        authn::authenticate,
    ))
    .with_state(state)
}
