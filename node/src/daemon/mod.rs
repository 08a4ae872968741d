//! The node daemon (`slicenet node run`): registers with the authority,
//! receives and verifies tickets, runs the slivers they name, wires their
//! NICs into enclaves, and keeps all of that going through restarts and
//! authority outages.
//!
//! One task per concern, all owned by [`run`]: the ticket long poll, the
//! heartbeat, membership events, the expiry clock, the control socket, the
//! remote console port and the per-sliver supervisors. Every change goes through one
//! [`NodeState::reconcile`], which derives the data plane and the set of
//! running slivers from the verified tickets alone.

pub mod appliances;
pub mod cli;
pub mod config;
pub mod console_client;
pub mod console_io;
pub mod console_server;
pub mod control;
pub mod limits;
pub mod slivers;
pub mod store;
pub mod wiring;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slicenet_authority::api::{
    Heartbeat, NodeRegistration, SignedTicket, SliverReport, SliverState,
};
use slicenet_authority::client::{Client, ClientError};
use slicenet_authority::keys::{self, PublicKey as Ed25519Key};
use slicenet_authority::model::ReportedCapacity;
use slicenet_authority::ticket::{self, Applied, TicketBook};
use slicenet_overlay::{Overlay, OverlayConfig, OverlayStatus, PrivateKey};
use tokio::sync::{watch, Mutex};

use crate::membership::{
    Capacity, GeoLocation, MemberState, Membership, MembershipConfig, MembershipEvent,
    NodeIdentity, NodeInfo, PeerAddr, WgPublicKey,
};
use crate::runtime::{detect_runtime, Runtime, RuntimeChoice};
use config::NodeConfig;
use limits::Limits;
use slivers::{SliverPhase, SliverStatus, Supervisor, SupervisorSettings};
use store::{CachedRegistration, StateDir};
use wiring::{desired_overlay, OverlayWiring};

/// Why the node daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("key: {0}")]
    Key(String),
    #[error("data plane: {0}")]
    Overlay(#[from] slicenet_overlay::OverlayError),
    #[error("membership: {0}")]
    Membership(#[from] crate::membership::MembershipError),
    #[error("control socket {path}: {source}")]
    Control {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("console port {addr}: {source} (set `[console] listen` to a free address, or `enabled = false`)")]
    ConsolePort {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the authority's key {got} differs from the pinned key {pinned} in the configuration; refusing to trust it")]
    AuthorityKeyMismatch { pinned: Ed25519Key, got: Ed25519Key },
}

/// A member as the node sees it, for status output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberSummary {
    pub node_id: String,
    pub site: String,
    pub up: bool,
    pub connected: bool,
    pub last_heard_ms: u64,
    pub underlay: Vec<SocketAddr>,
}

/// Everything `slicenet node status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatusReport {
    pub node: String,
    pub runtime: String,
    pub runtime_reason: String,
    pub limits: String,
    pub tunnel_address: Ipv4Addr,
    pub authority_url: String,
    /// Where clients attach to sliver consoles (`None`: remote console off).
    #[serde(default)]
    pub console: Option<SocketAddr>,
    pub authority_reachable: bool,
    pub authority_error: Option<String>,
    /// Highest ticket epoch the node holds.
    pub ticket_epoch: u64,
    /// Tickets refused (bad signature, wrong node, expired, malformed).
    pub tickets_refused: u64,
    pub members: Vec<MemberSummary>,
    /// Membership input dropped (bad signatures, stale, oversized, ...).
    pub membership_dropped: u64,
    pub slivers: Vec<SliverStatus>,
    pub overlay: OverlayStatus,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The node's mutable state; every change ends in [`NodeState::reconcile`].
pub struct NodeState {
    book: TicketBook,
    wiring: OverlayWiring,
    supervisor: Supervisor,
    /// Endpoints from verified membership records: identity -> (wg key, endpoint).
    live_endpoints: HashMap<Ed25519Key, ([u8; 32], SocketAddr)>,
    authority_reachable: bool,
    authority_error: Option<String>,
    tickets_refused: u64,
}

/// What the long-lived tasks share.
pub struct Node {
    config: NodeConfig,
    store: StateDir,
    own_key: Ed25519Key,
    wg_public: [u8; 32],
    authority_key: Ed25519Key,
    tunnel_address: Ipv4Addr,
    /// The registered console address, when the remote console is on.
    console: Option<SocketAddr>,
    runtime: RuntimeChoice,
    limits: Limits,
    client: Client,
    overlay: Overlay,
    membership: crate::membership::MembershipHandle,
    state: Mutex<NodeState>,
}

impl Node {
    /// Verifies and applies tickets as delivered by the authority (or read
    /// back from disk), then reconciles.
    pub async fn accept(&self, tickets: &[SignedTicket]) {
        let now = unix_now();
        let mut state = self.state.lock().await;
        for st in tickets {
            let verified = st.bytes().map_err(|e| e.to_string()).and_then(|bytes| {
                ticket::verify_for_node(&bytes, &self.authority_key, &self.own_key, now)
                    .map(|t| (t, bytes))
                    .map_err(|e| e.to_string())
            });
            let (t, bytes) = match verified {
                Ok(v) => v,
                Err(e) => {
                    state.tickets_refused += 1;
                    tracing::warn!(
                        sliver = st.sliver_id,
                        epoch = st.epoch,
                        "ticket refused: {e}"
                    );
                    continue;
                }
            };
            let sliver = t.sliver_id;
            let epoch = t.epoch;
            match state.book.apply(t) {
                Applied::New | Applied::Updated { .. } => {
                    tracing::info!(sliver, epoch, "ticket accepted");
                    if let Err(e) = self.store.save_ticket(sliver, &bytes) {
                        tracing::error!("cannot keep ticket: {e}");
                    }
                }
                Applied::Revoked => {
                    tracing::info!(sliver, epoch, "sliver revoked");
                    let _ = self.store.remove_ticket(sliver);
                }
                Applied::Stale { current_epoch } => {
                    tracing::debug!(sliver, epoch, current_epoch, "stale ticket ignored");
                }
            }
        }
        self.reconcile_locked(&mut state).await;
    }

    /// Brings data plane and slivers in line with the tickets held.
    pub async fn reconcile(&self) {
        let mut state = self.state.lock().await;
        self.reconcile_locked(&mut state).await;
    }

    async fn reconcile_locked(&self, state: &mut NodeState) {
        let now = unix_now();
        for t in state.book.expire(now) {
            tracing::info!(sliver = t.sliver_id, "lease expired: reclaiming the sliver");
            let _ = self.store.remove_ticket(t.sliver_id);
        }
        let active: Vec<ticket::Ticket> = state.book.active(now).cloned().collect();
        let desired = desired_overlay(active.iter(), self.wg_public);
        let endpoints = state.live_endpoints.clone();
        if let Err(e) = state.wiring.reconcile(desired, &endpoints) {
            tracing::error!("data plane: {e}");
        }
        for id in state.supervisor.sliver_ids() {
            if !active.iter().any(|t| t.sliver_id == id) {
                state.supervisor.stop(id).await;
            }
        }
        for t in &active {
            state.supervisor.ensure(t).await;
        }
    }

    /// A status snapshot.
    pub async fn status(&self) -> NodeStatusReport {
        let (members, dropped) = match (
            self.membership.members().await,
            self.membership.status().await,
        ) {
            (Ok(members), Ok(status)) => (
                members
                    .into_iter()
                    .map(|m| MemberSummary {
                        node_id: m.record.node_id().to_string(),
                        site: m.record.info().site.clone(),
                        up: m.state == MemberState::Up,
                        connected: m.connected,
                        last_heard_ms: m.last_heard.as_millis() as u64,
                        underlay: m.record.info().underlay.clone(),
                    })
                    .collect(),
                status.counters.dropped_total(),
            ),
            _ => (Vec::new(), 0),
        };
        let state = self.state.lock().await;
        NodeStatusReport {
            node: self.config.name.clone(),
            runtime: self.runtime.kind.to_string(),
            runtime_reason: self.runtime.reason.clone(),
            limits: self.limits.describe(),
            tunnel_address: self.tunnel_address,
            authority_url: self.config.authority.url.clone(),
            console: self.console,
            authority_reachable: state.authority_reachable,
            authority_error: state.authority_error.clone(),
            ticket_epoch: state.book.highest_epoch(),
            tickets_refused: state.tickets_refused,
            members,
            membership_dropped: dropped,
            slivers: state.supervisor.statuses(),
            overlay: self.overlay.status(),
        }
    }

    /// The console socket of a sliver this node runs.
    pub async fn console_socket(&self, sliver_id: u64) -> Option<std::path::PathBuf> {
        let state = self.state.lock().await;
        state
            .supervisor
            .statuses()
            .into_iter()
            .find(|s| s.sliver_id == sliver_id)
            .map(|s| s.console_socket)
    }
}

impl console_server::SliverConsoles for Node {
    async fn find(&self, sliver_id: u64) -> Option<console_server::SliverConsole> {
        let state = self.state.lock().await;
        state
            .supervisor
            .statuses()
            .into_iter()
            .find(|s| s.sliver_id == sliver_id)
            .map(|s| console_server::SliverConsole {
                slice: s.slice,
                socket: s.console_socket,
            })
    }
}

impl Node {
    async fn set_authority(&self, result: Result<(), String>) {
        let mut state = self.state.lock().await;
        match result {
            Ok(()) => {
                if !state.authority_reachable {
                    tracing::info!("authority reachable");
                }
                state.authority_reachable = true;
                state.authority_error = None;
            }
            Err(e) => {
                if state.authority_reachable || state.authority_error.is_none() {
                    tracing::warn!("authority unreachable: {e}; slivers keep running");
                }
                state.authority_reachable = false;
                state.authority_error = Some(e);
            }
        }
    }
}

/// Reads the node's identity key, creating it (and saying what to do with
/// it) on the very first start.
fn load_or_create_identity(
    store: &StateDir,
    config: &NodeConfig,
) -> Result<ed25519_dalek::SigningKey, DaemonError> {
    let path = store.identity_key_path();
    if path.exists() {
        return keys::read_secret_key(&path).map_err(|e| DaemonError::Key(e.to_string()));
    }
    let key = keys::generate();
    keys::write_secret_key(&path, &key).map_err(|e| DaemonError::Key(e.to_string()))?;
    let public = Ed25519Key::of(&key);
    let pub_path = path.with_extension("pub");
    keys::write_public_key(&pub_path, &public).map_err(|e| DaemonError::Key(e.to_string()))?;
    eprintln!(
        "node: created identity key {} (public key {public}).\n\
         node: an authority administrator registers this node with:\n    \
         slicenet node add {} --site {} --node-key {}",
        path.display(),
        config.name,
        config.site.name,
        pub_path.display()
    );
    Ok(key)
}

fn load_or_create_wireguard(store: &StateDir) -> Result<PrivateKey, DaemonError> {
    let path = store.wireguard_key_path();
    if path.exists() {
        return PrivateKey::load(&path).map_err(|e| DaemonError::Key(e.to_string()));
    }
    let key = PrivateKey::generate();
    key.save(&path)
        .map_err(|e| DaemonError::Key(e.to_string()))?;
    Ok(key)
}

/// Registers with the authority, retrying until it answers — or, when the
/// node registered before, going on with the cached registration at once
/// (an authority outage must not keep a node's slivers down).
async fn register(
    client: &Client,
    config: &NodeConfig,
    store: &StateDir,
    registration: &NodeRegistration,
    pinned: Ed25519Key,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<CachedRegistration>, DaemonError> {
    let cached = store.registration()?;
    let mut delay = Duration::from_millis(250);
    loop {
        match client.register_node(&config.name, registration).await {
            Ok(reply) => {
                if reply.authority_key != pinned {
                    return Err(DaemonError::AuthorityKeyMismatch {
                        pinned,
                        got: reply.authority_key,
                    });
                }
                let reg = CachedRegistration {
                    tunnel_address: reply.node.tunnel_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    authority_key: reply.authority_key,
                };
                store.save_registration(&reg)?;
                return Ok(Some(reg));
            }
            Err(e) => {
                if let Some(cached) = &cached {
                    tracing::warn!(
                        "cannot register now ({e}); going on with the cached registration"
                    );
                    return Ok(Some(cached.clone()));
                }
                let hint = match &e {
                    ClientError::Api { code, .. }
                        if code.contains("unknown") || code.contains("not_found") =>
                    {
                        format!("; ask an authority administrator to run: slicenet node add {} --site {} --node-key {}",
                            config.name, config.site.name, store.identity_key_path().with_extension("pub").display())
                    }
                    _ => String::new(),
                };
                tracing::warn!("registration failed: {e}{hint}; retrying in {delay:?}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = until_set(shutdown) => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// What this node offers slivers: the host's CPUs, its memory minus
/// 512 MiB for the host itself, and the free disk under the data directory
/// — each unless the configuration's `[capacity]` says otherwise.
fn host_capacity(config: &NodeConfig) -> ReportedCapacity {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u32;
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024);
    let disk_gib = nix::sys::statvfs::statvfs(&config.data_dir)
        .ok()
        .map(|st| (st.blocks_available() * st.fragment_size()) >> 30);
    ReportedCapacity {
        vcpus: config.capacity.vcpus.unwrap_or(cpus),
        memory_mib: config
            .capacity
            .memory_mib
            .map(u64::from)
            .unwrap_or(mem_mib.saturating_sub(512)),
        disk_gib: config.capacity.disk_gib.map(u64::from).or(disk_gib),
        bandwidth_mbps: None,
    }
}

fn record_capacity(c: &ReportedCapacity) -> Capacity {
    Capacity {
        vcpus: c.vcpus.min(u32::from(u16::MAX)) as u16,
        memory_mib: c.memory_mib.min(u64::from(u32::MAX)) as u32,
        disk_gib: c.disk_gib.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
    }
}

/// Runs the node daemon until `shutdown` becomes true.
pub async fn run(
    config: NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let store = StateDir::open(&config.data_dir)?;
    let identity = load_or_create_identity(&store, &config)?;
    let own_key = Ed25519Key::of(&identity);
    let wg_key = load_or_create_wireguard(&store)?;
    let wg_public = wg_key.public_key().0;
    let pinned: Ed25519Key = config
        .authority
        .public_key
        .parse()
        .map_err(|e: keys::KeyError| DaemonError::Key(e.to_string()))?;
    let runtime = detect_runtime(config.runtime.kind)?;
    eprintln!(
        "node {}: runtime {}: {}",
        config.name, runtime.kind, runtime.reason
    );
    let limits = Limits::detect();
    eprintln!(
        "node {}: resource limits: {}",
        config.name,
        limits.describe()
    );

    let capacity = host_capacity(&config);
    eprintln!(
        "node {}: offers {} vCPUs, {} MiB memory{}",
        config.name,
        capacity.vcpus,
        capacity.memory_mib,
        capacity
            .disk_gib
            .map(|d| format!(", {d} GiB disk"))
            .unwrap_or_default()
    );
    // Bound before registering, so the address the authority hands out in
    // grants is one that already accepts connections.
    let console_listener = match config.console_listen() {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::ConsolePort { addr, source })?,
        ),
        None => None,
    };
    let console_addr = match &console_listener {
        Some(l) => {
            let bound = l.local_addr().map_err(|source| DaemonError::ConsolePort {
                addr: config.console_listen().unwrap_or(config.overlay.listen),
                source,
            })?;
            Some(config.console_advertised(bound))
        }
        None => None,
    };
    eprintln!(
        "node {}: remote console {}",
        config.name,
        match console_addr {
            Some(a) => format!("on {a} (up to {} sessions)", config.console.max_sessions),
            None => "off ([console] enabled = false)".to_string(),
        }
    );
    let client = Client::new(&config.authority.url, identity.clone());
    eprintln!(
        "node {}: registering with the authority at {}",
        config.name, config.authority.url
    );
    let Some(registration) = register(
        &client,
        &config,
        &store,
        &NodeRegistration {
            wg_public_key: Ed25519Key(wg_public),
            endpoint: Some(config.advertised_endpoint()),
            tunnel_address: None,
            software: Some(format!("slicenet {}", env!("CARGO_PKG_VERSION"))),
            capacity: Some(capacity),
            console: console_addr,
        },
        pinned,
        &mut shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    eprintln!(
        "node {}: tunnel address {}, WireGuard key {}",
        config.name,
        registration.tunnel_address,
        wg_key.public_key()
    );

    let overlay = Overlay::start(OverlayConfig::new(
        wg_key,
        config.overlay.listen,
        registration.tunnel_address,
    ))?;
    let control_path = store.control_socket();
    let _ = std::fs::remove_file(&control_path);
    let control_listener =
        tokio::net::UnixListener::bind(&control_path).map_err(|source| DaemonError::Control {
            path: control_path.clone(),
            source,
        })?;

    let info = NodeInfo {
        site: config.site.name.clone(),
        region: config.site.region.clone(),
        location: GeoLocation::from_degrees(config.site.latitude, config.site.longitude).unwrap_or(
            GeoLocation {
                lat_e6: 0,
                lon_e6: 0,
            },
        ),
        capacity: record_capacity(&capacity),
        wireguard_key: WgPublicKey::from_bytes(wg_public),
        tunnel_addr: registration.tunnel_address,
        underlay: vec![config.advertised_endpoint()],
        software_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut mconfig = MembershipConfig::new(NodeIdentity::from_seed(identity.to_bytes()), info)
        .listen(PeerAddr::Tcp(config.membership.listen));
    for b in &config.membership.bootstrap {
        mconfig = mconfig.bootstrap(PeerAddr::Tcp(*b));
    }
    let (membership, mut events) = Membership::start(mconfig).await?;

    let supervisor = Supervisor::new(SupervisorSettings {
        runtime: Runtime::from_choice(&runtime),
        run_dir: store.run_dir(),
        appliance_dirs: config.appliance_dirs.clone(),
        restart: config.runtime.restart,
        max_restarts: config.runtime.max_restarts,
        limits: limits.clone(),
        nic_mtu: overlay.default_port_mtu(),
    });
    let node = Arc::new(Node {
        store: store.clone(),
        own_key,
        wg_public,
        authority_key: registration.authority_key,
        tunnel_address: registration.tunnel_address,
        console: console_addr,
        runtime,
        limits,
        client,
        overlay: overlay.clone(),
        membership: membership.handle(),
        state: Mutex::new(NodeState {
            book: TicketBook::new(),
            wiring: OverlayWiring::new(overlay.clone(), store.run_dir()),
            supervisor,
            live_endpoints: HashMap::new(),
            authority_reachable: true,
            authority_error: None,
            tickets_refused: 0,
        }),
        config,
    });

    // Slivers the node ran before a restart come back from the kept tickets.
    let kept = store.load_tickets(&node.authority_key, &node.own_key, unix_now())?;
    for r in &kept.refused {
        tracing::warn!("kept ticket refused: {r}");
    }
    node.state.lock().await.tickets_refused += kept.refused.len() as u64;
    if !kept.good.is_empty() {
        eprintln!(
            "node {}: restoring {} sliver(s) from kept tickets",
            node.config.name,
            kept.good.len()
        );
        let signed: Vec<SignedTicket> = kept
            .good
            .iter()
            .map(|(t, bytes)| SignedTicket {
                sliver_id: t.sliver_id,
                epoch: t.epoch,
                ticket: base64_encode(bytes),
            })
            .collect();
        node.accept(&signed).await;
    }
    eprintln!(
        "node {}: up; control socket {}",
        node.config.name,
        control_path.display()
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(poll_tickets(node.clone(), shutdown.clone()));
    tasks.spawn(heartbeat(node.clone(), shutdown.clone()));
    tasks.spawn(expiry_clock(node.clone(), shutdown.clone()));
    tasks.spawn(control::serve(
        node.clone(),
        control_listener,
        shutdown.clone(),
    ));
    if let Some(listener) = console_listener {
        let settings = console_server::ConsoleSettings {
            node_name: node.config.name.clone(),
            identity: identity.clone(),
            authority_key: node.authority_key,
            max_sessions: node.config.console.max_sessions,
            handshake_timeout: console_server::HANDSHAKE_TIMEOUT,
        };
        tasks.spawn(console_server::serve(
            node.clone(),
            settings,
            listener,
            shutdown.clone(),
        ));
    }
    let events_node = node.clone();
    let mut events_shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => on_membership_event(&events_node, event).await,
                    None => return,
                },
                _ = until_set(&mut events_shutdown) => return,
            }
        }
    });

    let _ = until_set(&mut shutdown).await;
    eprintln!("node {}: shutting down", node.config.name);
    while tasks.join_next().await.is_some() {}
    node.state.lock().await.supervisor.stop_all().await;
    membership.shutdown().await;
    overlay.shutdown();
    let _ = std::fs::remove_file(&control_path);
    Ok(())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn on_membership_event(node: &Node, event: MembershipEvent) {
    match event {
        MembershipEvent::PeerUp(record) | MembershipEvent::PeerUpdated(record) => {
            let info = record.info();
            let id = Ed25519Key(*record.node_id().as_bytes());
            tracing::info!(node = %record.node_id().short(), site = %info.site, "member up");
            if let Some(endpoint) = info.underlay.first() {
                let changed = {
                    let mut state = node.state.lock().await;
                    let entry = (*info.wireguard_key.as_bytes(), *endpoint);
                    state.live_endpoints.insert(id, entry) != Some(entry)
                };
                if changed {
                    node.reconcile().await;
                }
            }
        }
        MembershipEvent::PeerDown { node: id, reason } => {
            tracing::warn!(node = %id.short(), ?reason, "member down");
        }
    }
}

async fn poll_tickets(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(250);
    loop {
        let after = node.state.lock().await.book.highest_epoch();
        let poll = node
            .client
            .poll_tickets(&node.config.name, after, Duration::from_secs(30));
        let result = tokio::select! {
            r = poll => r,
            _ = until_set(&mut shutdown) => return,
        };
        match result {
            Ok(batch) => {
                node.set_authority(Ok(())).await;
                delay = Duration::from_millis(250);
                if !batch.tickets.is_empty() {
                    node.accept(&batch.tickets).await;
                }
            }
            Err(e) => {
                node.set_authority(Err(e.to_string())).await;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = until_set(&mut shutdown) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn report_state(phase: SliverPhase) -> SliverState {
    match phase {
        SliverPhase::Booting | SliverPhase::Restarting => SliverState::Provisioning,
        SliverPhase::Ready => SliverState::Running,
        SliverPhase::Failed => SliverState::Failed,
        SliverPhase::Stopped => SliverState::Stopped,
    }
}

async fn heartbeat(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut last: Vec<(u64, SliverPhase)> = Vec::new();
    let mut since_sent = Duration::MAX;
    let tick = Duration::from_secs(1);
    loop {
        let statuses = node.state.lock().await.supervisor.statuses();
        let now: Vec<(u64, SliverPhase)> =
            statuses.iter().map(|s| (s.sliver_id, s.phase)).collect();
        // Every 30 s, and at once when a sliver changes phase.
        if now != last || since_sent >= Duration::from_secs(30) {
            let hb = Heartbeat {
                capacity: None,
                slivers: statuses
                    .iter()
                    .map(|s| SliverReport {
                        sliver_id: s.sliver_id,
                        state: report_state(s.phase),
                        message: s.message.clone(),
                    })
                    .collect(),
            };
            match node.client.heartbeat(&node.config.name, &hb).await {
                Ok(_) => {
                    last = now;
                    since_sent = Duration::ZERO;
                }
                Err(e) => node.set_authority(Err(e.to_string())).await,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => since_sent = since_sent.saturating_add(tick),
            _ = until_set(&mut shutdown) => return,
        }
    }
}

/// Stops slivers whose lease ran out even when the authority is away.
async fn expiry_clock(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = until_set(&mut shutdown) => return,
        }
        let expired = {
            let state = node.state.lock().await;
            let now = unix_now();
            state.book.active(now).count() != state.supervisor.sliver_ids().len()
        };
        if expired {
            node.reconcile().await;
        }
    }
}

/// Waits until a stop signal is set (dropping the watch guard before
/// returning, so the waiting future stays `Send`).
pub(crate) async fn until_set(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|set| *set).await;
}
