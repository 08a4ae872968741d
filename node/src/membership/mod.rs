//! Membership: which nodes are in the overlay, how to reach their data plane,
//! and which of them are up.
//!
//! Every node publishes a signed [`NodeRecord`] (site, location, capacity,
//! WireGuard key, tunnel address, underlay endpoints, software version, and
//! the addresses of its membership endpoint). The signature is made with the
//! node's ed25519 identity, which is also its libp2p identity, so a record
//! binds the WireGuard key to the node. Nodes bootstrap from a few known
//! addresses and find each other through Kademlia and the sync protocol,
//! which spreads records in batches (pull digests, pushed news); urgent news
//! and suspicions go over gossipsub. Each node is watched by a few others
//! chosen on monitoring rings ([`ring`]); a node opens connections only to
//! the nodes it watches (knowing a node means holding its signed record, not
//! a connection to it), so the work per node stays bounded as the overlay
//! grows, and failures are detected in one to three seconds
//! (see [`Timing`]).
//!
//! libp2p stays inside [`net`]-private code: the rest of slicenet sees
//! [`Membership::start`], a [`MembershipHandle`], and a stream of
//! [`MembershipEvent`]s.
//!
//! ```no_run
//! # async fn demo(info: slicenet_node::membership::NodeInfo) -> anyhow::Result<()> {
//! use slicenet_node::membership::*;
//! let config = MembershipConfig::new(NodeIdentity::generate(), info)
//!     .listen("198.18.0.1:7946".parse()?)
//!     .bootstrap("198.18.0.2:7946".parse()?);
//! let (membership, mut events) = Membership::start(config).await?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! membership.shutdown().await;
//! # Ok(()) }
//! ```

pub mod cli;
pub mod fuzzing;
pub mod health;
pub mod identity;
pub mod message;
mod net;
pub mod record;
pub mod ring;
pub mod sigcache;
pub mod status;
pub mod table;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use identity::{KeyError, NodeId, NodeIdentity, WgPublicKey};
pub use record::{
    Capacity, GeoLocation, NodeInfo, NodeRecord, RecordError, VerifiedNodeRecord, MAX_CONTACTS,
};
pub use sigcache::{CacheStats, SignatureCache};
pub use status::{Counters, MembershipStatus};
pub use table::{DownReason, Member, MemberState, MembershipEvent};

/// Where a membership endpoint listens or can be dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// TCP (the real transport): `198.18.0.1:7946`.
    Tcp(SocketAddr),
    /// libp2p's in-process memory transport, for simulations: `memory:N` (0 = pick one).
    Memory(u64),
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Memory(port) => write!(f, "memory:{port}"),
        }
    }
}

impl FromStr for PeerAddr {
    type Err = MembershipError;
    fn from_str(s: &str) -> Result<Self, MembershipError> {
        let bad = || MembershipError::BadAddress(s.to_owned());
        match s.strip_prefix("memory:") {
            Some(port) => port.parse().map(Self::Memory).map_err(|_| bad()),
            None => s.parse().map(Self::Tcp).map_err(|_| bad()),
        }
    }
}

/// Failure-detection and dissemination timing.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Heartbeat period from a watcher to each of its subjects.
    pub ping_interval: Duration,
    /// A subject whose heartbeat echo is this late (after the period) is suspected and probed.
    pub ping_timeout: Duration,
    /// A redial of a peer whose connection closed must succeed within this time.
    pub probe_timeout: Duration,
    /// How long a suspected node has to refute before others declare it down.
    pub suspicion_timeout: Duration,
    /// How often a node re-signs its record (pull syncs spread the fresh copy).
    pub refresh_interval: Duration,
    /// Members with no connection and no new record for this long are declared down
    /// (a backstop: watchers normally notice a failure within seconds).
    pub record_ttl: Duration,
    /// How often a node exchanges records with a random connected peer once nothing
    /// new is arriving (every 200 ms while news keeps coming, see `driver::spread`).
    pub sync_interval: Duration,
    /// Gossipsub heartbeat (mesh maintenance) period.
    pub gossip_heartbeat: Duration,
    /// How long shutdown waits for the leave announcement to go out.
    pub leave_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_millis(750),
            ping_timeout: Duration::from_millis(750),
            probe_timeout: Duration::from_millis(1000),
            suspicion_timeout: Duration::from_millis(1000),
            refresh_interval: Duration::from_secs(60),
            record_ttl: Duration::from_secs(300),
            sync_interval: Duration::from_secs(5),
            gossip_heartbeat: Duration::from_millis(1000),
            leave_grace: Duration::from_millis(200),
        }
    }
}

/// Resource bounds that keep a misbehaving peer from exhausting memory or CPU.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most nodes (live or tombstoned) in the membership table.
    pub max_members: usize,
    /// Most established connections in total.
    pub max_connections: u32,
    /// Gossip messages accepted from one peer per second (sustained).
    pub gossip_per_peer_per_sec: f64,
    /// Gossip messages accepted from one peer in a burst.
    pub gossip_per_peer_burst: f64,
    /// Sync requests (pulls and pushes) answered for one peer per second (sustained).
    pub syncs_per_peer_per_sec: f64,
    /// Depth of the event channel; events beyond it are dropped and counted.
    pub event_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_members: 10_000,
            max_connections: 1024,
            gossip_per_peer_per_sec: 2_000.0,
            gossip_per_peer_burst: 20_000.0,
            syncs_per_peer_per_sec: 10.0,
            event_queue: 4096,
        }
    }
}

/// Watchers per node by default: enough that a failure is seen even when some of a
/// node's watchers fail with it, few enough that the ping load stays small.
pub const DEFAULT_WATCHERS: usize = 4;

/// Everything [`Membership::start`] needs.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// The node's identity key (also its libp2p identity).
    pub identity: NodeIdentity,
    /// What the node advertises in its record.
    pub info: NodeInfo,
    /// Addresses to listen on (port 0 picks a free port).
    pub listen: Vec<PeerAddr>,
    /// Addresses of nodes to join through; no peer ids needed.
    pub bootstrap: Vec<PeerAddr>,
    /// Failure-detection and dissemination timing.
    pub timing: Timing,
    /// Resource bounds.
    pub limits: Limits,
    /// How many nodes watch each node (the number of monitoring rings, see [`ring`]).
    pub watchers: usize,
    /// A record-signature cache shared by simulated nodes in one process (see
    /// [`SignatureCache`]); None, as on real nodes, verifies every new record.
    pub signature_cache: Option<Arc<SignatureCache>>,
}

impl MembershipConfig {
    /// A configuration with default timing and limits and no addresses.
    pub fn new(identity: NodeIdentity, info: NodeInfo) -> Self {
        Self {
            identity,
            info,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            timing: Timing::default(),
            limits: Limits::default(),
            watchers: DEFAULT_WATCHERS,
            signature_cache: None,
        }
    }

    /// Adds a listen address.
    pub fn listen(mut self, addr: PeerAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Adds a bootstrap address.
    pub fn bootstrap(mut self, addr: PeerAddr) -> Self {
        self.bootstrap.push(addr);
        self
    }
}

/// Errors of the membership API.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// An address string that is neither `IP:PORT` nor `memory:N`.
    #[error("`{0}` is not a membership address: use IP:PORT (e.g. 198.18.0.1:7946) or memory:N")]
    BadAddress(String),
    /// The node's own record cannot be built from the given info.
    #[error("cannot build this node's record: {0}")]
    BadRecord(#[from] RecordError),
    /// libp2p could not be set up (transport or behaviour construction).
    #[error("cannot set up the libp2p stack: {0}")]
    Setup(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason} (is the address local and the port free?)")]
    Listen {
        /// The address.
        addr: PeerAddr,
        /// What failed.
        reason: String,
    },
    /// The membership task has stopped (after shutdown or a crash).
    #[error("membership has stopped")]
    Stopped,
}

/// Requests from handles to the membership task.
enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    Status(oneshot::Sender<MembershipStatus>),
    UpdateRecord(NodeInfo, oneshot::Sender<Result<u64, RecordError>>),
}

/// The running membership of this node: owns its task; [`Membership::shutdown`] stops it.
pub struct Membership {
    handle: MembershipHandle,
    node_id: NodeId,
    listen_addrs: Vec<PeerAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// A cheap, cloneable way to query and update a running membership.
#[derive(Clone)]
pub struct MembershipHandle {
    commands: mpsc::Sender<Command>,
}

impl Membership {
    /// Starts membership on the current tokio runtime: listens, dials the bootstrap
    /// addresses and publishes this node's record. Returns once every listener is bound.
    pub async fn start(
        config: MembershipConfig,
    ) -> Result<(Self, mpsc::Receiver<MembershipEvent>), MembershipError> {
        let node_id = config.identity.node_id();
        let (events_tx, events_rx) = mpsc::channel(config.limits.event_queue.max(1));
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (driver, listen_addrs) =
            net::Driver::new(config, events_tx, commands_rx, shutdown_rx).await?;
        let task = tokio::spawn(driver.run());
        Ok((
            Self {
                handle: MembershipHandle {
                    commands: commands_tx,
                },
                node_id,
                listen_addrs,
                shutdown: shutdown_tx,
                task: Some(task),
            },
            events_rx,
        ))
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The addresses actually bound (port 0 resolved); give these to others as bootstrap.
    pub fn listen_addrs(&self) -> &[PeerAddr] {
        &self.listen_addrs
    }

    /// A handle for queries and record updates.
    pub fn handle(&self) -> MembershipHandle {
        self.handle.clone()
    }

    /// Announces that this node leaves, stops the task and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Dropping without shutdown still stops the task (it exits on its own).
        let _ = self.shutdown.send(true);
    }
}

impl MembershipHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| MembershipError::Stopped)?;
        rx.await.map_err(|_| MembershipError::Stopped)
    }

    /// Snapshot of the table: live members and tombstones, sorted by node id.
    pub async fn members(&self) -> Result<Vec<Member>, MembershipError> {
        self.ask(Command::Members).await
    }

    /// Counters and connection state.
    pub async fn status(&self) -> Result<MembershipStatus, MembershipError> {
        self.ask(Command::Status).await
    }

    /// Re-signs our record with new content and publishes it; returns the new seq.
    pub async fn update_record(&self, info: NodeInfo) -> Result<u64, MembershipError> {
        self.ask(|tx| Command::UpdateRecord(info, tx))
            .await?
            .map_err(MembershipError::BadRecord)
    }
}
