//! The shared state of one node's data plane: identity, peers, enclaves,
//! ports and counters. Data-path tasks hold the topology's read lock while
//! they process one batch; every runtime change takes the write lock, so a
//! change is complete — e.g. a removed peer passes no further frame — the
//! moment the call that made it returns.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519;

use crate::counters::{DropCounters, DropReason, TrafficCounters};
use crate::keys::PublicKey;
use crate::switch::MacTable;
use crate::wire::ethernet::{MacAddr, HEADER_LEN, VLAN_TAG_LEN};

/// Node-wide settings fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Seconds after which a dynamic MAC entry is forgotten.
    pub mac_aging_secs: u64,
    /// MTU given to ports that do not set one.
    pub default_port_mtu: u16,
}

/// The state shared by every task of one node.
pub(crate) struct Node {
    pub secret: x25519::StaticSecret,
    pub public: x25519::PublicKey,
    pub tunnel_addr: Ipv4Addr,
    pub settings: Settings,
    pub topology: RwLock<Topology>,
    pub rate_limiter: Arc<RateLimiter>,
    pub drops: DropCounters,
    pub underlay: UnderlayCounters,
    started: Instant,
    next_id: AtomicU64,
    next_index: AtomicU32,
}

/// Datagrams and bytes on the underlay socket.
#[derive(Debug, Default)]
pub(crate) struct UnderlayCounters {
    pub rx_datagrams: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_datagrams: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub cookie_replies: AtomicU64,
}

impl Node {
    pub(crate) fn new(
        secret: x25519::StaticSecret,
        tunnel_addr: Ipv4Addr,
        settings: Settings,
        handshake_rate_limit: u64,
    ) -> Node {
        let public = x25519::PublicKey::from(&secret);
        // Each handshake message passes the limiter twice (once here to find
        // the peer, once inside boringtun), hence the doubled budget.
        let rate_limiter = Arc::new(RateLimiter::new(&public, handshake_rate_limit * 2));
        Node {
            secret,
            public,
            tunnel_addr,
            settings,
            topology: RwLock::new(Topology::default()),
            rate_limiter,
            drops: DropCounters::default(),
            underlay: UnderlayCounters::default(),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
        }
    }

    /// Seconds since the node started: the clock of MAC aging.
    pub(crate) fn now_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Time since start.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A fresh id for a peer or port.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh 24-bit session index base not used by any current peer.
    pub(crate) fn next_index(&self, topo: &Topology) -> u32 {
        loop {
            let i = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            if !topo.peers_by_index.contains_key(&i) {
                return i;
            }
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Topology> {
        self.topology.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a drop node-wide and, when given, on a peer and/or a port.
    #[inline]
    pub(crate) fn drop_frame(
        &self,
        reason: DropReason,
        n: u64,
        peer: Option<&Peer>,
        port: Option<&Port>,
    ) {
        self.drops.add(reason, n);
        if let Some(p) = peer {
            p.drops.add(reason, n);
        }
        if let Some(p) = port {
            p.drops.add(reason, n);
        }
    }
}

/// Peers, enclaves and ports as they are right now.
#[derive(Default)]
pub(crate) struct Topology {
    pub peers: HashMap<PublicKey, Arc<Peer>>,
    pub peers_by_index: HashMap<u32, Arc<Peer>>,
    pub enclaves: HashMap<u32, Enclave>,
    pub ports: HashMap<String, Arc<Port>>,
}

/// One enclave: its members, local ports and MAC table.
pub(crate) struct Enclave {
    pub vni: u32,
    /// Keys of the member peers, whether or not they are configured yet.
    pub member_keys: BTreeSet<PublicKey>,
    /// The member peers that exist: the flooding set.
    pub members: Vec<Arc<Peer>>,
    pub ports: Vec<Arc<Port>>,
    pub macs: MacTable,
    pub flooded: AtomicU64,
}

impl Enclave {
    pub(crate) fn new(vni: u32, member_keys: BTreeSet<PublicKey>) -> Enclave {
        Enclave {
            vni,
            member_keys,
            members: Vec::new(),
            ports: Vec::new(),
            macs: MacTable::default(),
            flooded: AtomicU64::new(0),
        }
    }

    /// True when the peer with this id is a member.
    #[inline]
    pub(crate) fn has_member(&self, peer_id: u64) -> bool {
        self.members.iter().any(|p| p.id == peer_id)
    }
}

/// A remote node: its WireGuard session and where to reach it.
pub(crate) struct Peer {
    pub id: u64,
    name: Mutex<String>,
    pub public_key: PublicKey,
    /// boringtun session index base (24 bits).
    pub index: u32,
    tunnel_addr: AtomicU32,
    endpoint: Mutex<Option<SocketAddr>>,
    pub tunn: Mutex<Tunn>,
    pub persistent_keepalive: Option<u16>,
    /// Set (under the topology write lock) when the peer is removed.
    pub removed: AtomicBool,
    /// Set when boringtun queued packets waiting for a session.
    pub queued: AtomicBool,
    pub traffic: TrafficCounters,
    pub drops: DropCounters,
}

impl Peer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: &Node,
        id: u64,
        index: u32,
        name: String,
        public_key: PublicKey,
        tunnel_addr: Ipv4Addr,
        endpoint: Option<SocketAddr>,
        persistent_keepalive: Option<u16>,
    ) -> Peer {
        let tunn = Tunn::new(
            node.secret.clone(),
            public_key.to_x25519(),
            None,
            persistent_keepalive,
            index,
            Some(node.rate_limiter.clone()),
        );
        Peer {
            id,
            name: Mutex::new(name),
            public_key,
            index,
            tunnel_addr: AtomicU32::new(u32::from(tunnel_addr)),
            endpoint: Mutex::new(endpoint),
            tunn: Mutex::new(tunn),
            persistent_keepalive,
            removed: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            traffic: TrafficCounters::default(),
            drops: DropCounters::default(),
        }
    }

    /// The peer's human name.
    pub(crate) fn name(&self) -> String {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_name(&self, name: String) {
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }

    /// The peer's tunnel (inner) address.
    #[inline]
    pub(crate) fn tunnel_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.tunnel_addr.load(Ordering::Relaxed))
    }

    pub(crate) fn set_tunnel_addr(&self, addr: Ipv4Addr) {
        self.tunnel_addr.store(u32::from(addr), Ordering::Relaxed);
    }

    /// Where datagrams for the peer go, if known.
    #[inline]
    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the address an authenticated datagram came from (roaming).
    #[inline]
    pub(crate) fn set_endpoint(&self, addr: SocketAddr) {
        let mut e = self.endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if *e != Some(addr) {
            if e.is_some() {
                tracing::info!(peer = %self.name(), from = ?*e, to = %addr, "peer endpoint moved");
            }
            *e = Some(addr);
        }
    }

    pub(crate) fn lock_tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How frames reach a local port.
pub(crate) enum PortIo {
    /// A TAP device; `offload` when it was opened with `IFF_VNET_HDR`.
    Tap {
        dev: Arc<tun_rs::AsyncDevice>,
        ifname: String,
        offload: bool,
    },
    /// A unix datagram socket pair (contract 1: QEMU `-netdev dgram`).
    Unix {
        sock: Arc<tokio::net::UnixDatagram>,
        /// A non-blocking duplicate of `sock` for sending straight to the kernel.
        sender: std::os::unix::net::UnixDatagram,
        switch_sock: PathBuf,
        /// Inode of the socket file we bound: only that file is removed on drop.
        switch_ino: u64,
        vm_sock: PathBuf,
    },
    /// An in-process channel to the embedding program.
    Memory {
        to_user: std::sync::mpsc::SyncSender<Vec<u8>>,
    },
}

/// A local port of one enclave.
pub(crate) struct Port {
    pub id: u64,
    pub name: String,
    pub vni: u32,
    pub io: PortIo,
    /// The only source MAC accepted when `anti_spoof` is on.
    pub mac: Option<MacAddr>,
    pub anti_spoof: bool,
    pub mtu: u16,
    pub removed: AtomicBool,
    pub traffic: TrafficCounters,
    pub drops: DropCounters,
    pub task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Port {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        name: String,
        vni: u32,
        io: PortIo,
        mac: Option<MacAddr>,
        anti_spoof: bool,
        mtu: u16,
    ) -> Port {
        Port {
            id,
            name,
            vni,
            io,
            mac,
            anti_spoof,
            mtu,
            removed: AtomicBool::new(false),
            traffic: TrafficCounters::default(),
            drops: DropCounters::default(),
            task: Mutex::new(None),
        }
    }

    #[cfg(test)]
    pub(crate) fn new_for_test(id: u64, io: PortIo) -> Port {
        Port::new(id, format!("test{id}"), 1, io, None, false, 1500)
    }

    /// Largest frame (header included) this port accepts or is given.
    #[inline]
    pub(crate) fn max_frame_len(&self, vlan_tags: usize) -> usize {
        usize::from(self.mtu) + HEADER_LEN + VLAN_TAG_LEN * vlan_tags
    }

    /// Stops the port's receive task.
    pub(crate) fn stop(&self) {
        self.removed.store(true, Ordering::Release);
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }

    /// "tap", "unix" or "memory".
    pub(crate) fn kind(&self) -> &'static str {
        match self.io {
            PortIo::Tap { .. } => "tap",
            PortIo::Unix { .. } => "unix",
            PortIo::Memory { .. } => "memory",
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        if let PortIo::Unix {
            switch_sock,
            switch_ino,
            ..
        } = &self.io
        {
            // A port re-added with the same path has a new file; leave it.
            use std::os::unix::fs::MetadataExt;
            if std::fs::symlink_metadata(switch_sock).is_ok_and(|m| m.ino() == *switch_ino) {
                let _ = std::fs::remove_file(switch_sock);
            }
        }
    }
}
