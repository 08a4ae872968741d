//! [`Overlay`]: a running data plane and the handle to change it at runtime.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boringtun::noise::TunnResult;

use crate::counters::DropReason;
use crate::encap::max_frame_len;
use crate::forward::{Forwarder, HEADROOM};
use crate::keys::{PrivateKey, PublicKey};
use crate::node::{Enclave, Node, Peer, Port, PortIo, Settings, Topology};
use crate::status::{EnclaveStatus, OverlayStatus, PeerStatus, PortStatus, UnderlayStatus};
use crate::tasks;
use crate::underlay::Underlay;
use crate::wire::ethernet::{MacAddr, HEADER_LEN};
use crate::wire::vxlan::MAX_VNI;

/// Smallest port MTU (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// Largest port MTU (jumbo frames; larger frames than the underlay path
/// carries are fragmented by the underlay's IP layer).
pub const MAX_MTU: u16 = 9000;

/// What a runtime change could not do, and why.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The underlay socket could not be bound.
    #[error("cannot bind the underlay UDP socket to {addr}: {source} (is another daemon using the port, or is the address not on this host?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `Overlay::start` ran outside a tokio runtime.
    #[error("Overlay::start must run inside a tokio runtime")]
    NoRuntime,
    /// A peer with this key exists already.
    #[error("peer {0} exists already; use update_peer to change it")]
    PeerExists(PublicKey),
    /// No peer has this key.
    #[error("no peer has public key {0}")]
    UnknownPeer(PublicKey),
    /// The key is this node's own.
    #[error("{0} is this node's own public key; a node cannot be its own peer")]
    OwnKey(PublicKey),
    /// An enclave with this VNI exists already.
    #[error("enclave {0} exists already")]
    EnclaveExists(u32),
    /// No enclave has this VNI.
    #[error("no enclave has VNI {0}; add the enclave first")]
    UnknownEnclave(u32),
    /// A VNI outside 24 bits.
    #[error("VNI {0} is out of range: VXLAN network identifiers have 24 bits (0..=16777215)")]
    InvalidVni(u32),
    /// A port with this name exists already.
    #[error("a port named {0:?} exists already")]
    PortExists(String),
    /// No port has this name.
    #[error("no port is named {0:?}")]
    UnknownPort(String),
    /// A port setting is not acceptable.
    #[error("port {name:?}: {problem}")]
    InvalidPort {
        /// The port.
        name: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The TAP device could not be created.
    #[error("cannot create TAP device {ifname:?}: {source} (root or CAP_NET_ADMIN and /dev/net/tun are needed; is the name taken?)")]
    Tap {
        /// Interface name.
        ifname: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The unix datagram socket could not be bound.
    #[error("cannot bind unix datagram socket {path}: {source}")]
    UnixSocket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of one node's data plane.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// The node's WireGuard private key.
    pub private_key: PrivateKey,
    /// Underlay UDP address to listen on (one socket per node).
    pub listen: SocketAddr,
    /// The node's tunnel address: source of its inner VXLAN datagrams.
    pub tunnel_address: Ipv4Addr,
    /// MTU of the underlay path; ports default to the largest frame that
    /// fits it after WireGuard and VXLAN overhead.
    pub underlay_mtu: u16,
    /// How long an unused learned MAC address is remembered.
    pub mac_aging: Duration,
    /// Handshakes per second processed before senders must prove their
    /// address with a cookie (WireGuard's DoS defence).
    pub handshake_rate_limit: u64,
}

impl OverlayConfig {
    /// A configuration with default MTU (1500), MAC aging (300 s) and
    /// handshake rate limit (100/s).
    pub fn new(private_key: PrivateKey, listen: SocketAddr, tunnel_address: Ipv4Addr) -> Self {
        OverlayConfig {
            private_key,
            listen,
            tunnel_address,
            underlay_mtu: 1500,
            mac_aging: Duration::from_secs(300),
            handshake_rate_limit: 100,
        }
    }
}

/// A remote node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its WireGuard public key (its identity here).
    pub public_key: PublicKey,
    /// A human name for status output (defaults to the key's first characters).
    pub name: Option<String>,
    /// Where to send to; `None` waits until the peer makes contact.
    pub endpoint: Option<SocketAddr>,
    /// Its tunnel address (the only inner source it may use).
    pub tunnel_address: Ipv4Addr,
    /// Keepalive interval in seconds (keeps NAT mappings open).
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// A peer with a key and tunnel address, no endpoint, no keepalive.
    pub fn new(public_key: PublicKey, tunnel_address: Ipv4Addr) -> Self {
        PeerConfig {
            public_key,
            name: None,
            endpoint: None,
            tunnel_address,
            persistent_keepalive: None,
        }
    }

    /// Sets the endpoint.
    pub fn endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// How a port attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// A TAP device created by the overlay in the calling thread's network
    /// namespace.
    Tap {
        /// Interface name (at most 15 bytes).
        ifname: String,
        /// Use `IFF_VNET_HDR` segmentation/checksum offloads (recommended).
        offload: bool,
        /// An IPv4 address and prefix length to give the interface.
        address: Option<(Ipv4Addr, u8)>,
    },
    /// A unix datagram socket pair, one raw frame per datagram (QEMU's
    /// `-netdev dgram`): the overlay binds `switch_sock` and sends to `vm_sock`.
    UnixDgram {
        /// Path the overlay binds.
        switch_sock: PathBuf,
        /// Path the VM binds.
        vm_sock: PathBuf,
    },
}

/// A local port of an enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// Unique name.
    pub name: String,
    /// The enclave.
    pub vni: u32,
    /// TAP or unix datagram.
    pub kind: PortKind,
    /// The port's MAC address: for a TAP, the interface's address (random
    /// when unset); for a unix port, the VM NIC's (required with anti-spoofing).
    pub mac: Option<MacAddr>,
    /// Largest frame payload; defaults to what the underlay carries.
    pub mtu: Option<u16>,
    /// Drop frames whose source MAC is not `mac` (default on). Turn off
    /// only for ports that bridge whole segments.
    pub anti_spoof: bool,
}

impl PortConfig {
    /// A TAP port with offloads and anti-spoofing on.
    pub fn tap(name: impl Into<String>, vni: u32, ifname: impl Into<String>) -> Self {
        PortConfig {
            name: name.into(),
            vni,
            kind: PortKind::Tap {
                ifname: ifname.into(),
                offload: true,
                address: None,
            },
            mac: None,
            mtu: None,
            anti_spoof: true,
        }
    }

    /// A unix datagram port for a VM NIC with MAC `mac`.
    pub fn unix(
        name: impl Into<String>,
        vni: u32,
        switch_sock: impl Into<PathBuf>,
        vm_sock: impl Into<PathBuf>,
        mac: MacAddr,
    ) -> Self {
        PortConfig {
            name: name.into(),
            vni,
            kind: PortKind::UnixDgram {
                switch_sock: switch_sock.into(),
                vm_sock: vm_sock.into(),
            },
            mac: Some(mac),
            mtu: None,
            anti_spoof: true,
        }
    }

    /// Sets the IPv4 address of a TAP port's interface.
    pub fn address(mut self, addr: Ipv4Addr, prefix: u8) -> Self {
        if let PortKind::Tap { address, .. } = &mut self.kind {
            *address = Some((addr, prefix));
        }
        self
    }

    /// Sets the MAC address.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

/// What `add_port` created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port name.
    pub name: String,
    /// The MAC address the port uses.
    pub mac: Option<MacAddr>,
    /// The port's MTU.
    pub mtu: u16,
}

/// A running data plane. Cloning gives another handle to the same one; it
/// stops when the last handle is dropped (or on [`Overlay::shutdown`]).
///
/// Every method is synchronous and may be called from any thread; they
/// take effect before they return. TAP devices and unix sockets are created
/// in the network namespace of the calling thread.
#[derive(Clone)]
pub struct Overlay {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<Node>,
    underlay: Arc<Underlay>,
    runtime: tokio::runtime::Handle,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let mut topo = self.node.write();
        for p in topo.ports.values() {
            p.stop();
        }
        topo.ports.clear();
        topo.enclaves.clear();
    }
}

impl Overlay {
    /// Binds the underlay socket and starts the data plane on the current
    /// tokio runtime (a multi-threaded runtime lets receive and send paths
    /// run in parallel).
    pub fn start(config: OverlayConfig) -> Result<Overlay, OverlayError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OverlayError::NoRuntime)?;
        let underlay = Underlay::bind(config.listen).map_err(|source| OverlayError::Bind {
            addr: config.listen,
            source,
        })?;
        let ipv6 = config.listen.is_ipv6();
        let frame = max_frame_len(config.underlay_mtu, ipv6);
        let default_port_mtu = (frame.saturating_sub(HEADER_LEN) as u16).max(MIN_MTU);
        let node = Arc::new(Node::new(
            config.private_key.secret().clone(),
            config.tunnel_address,
            Settings {
                mac_aging_secs: config.mac_aging.as_secs().max(1),
                default_port_mtu,
            },
            config.handshake_rate_limit.max(1),
        ));
        let underlay = Arc::new(underlay);
        let tasks = vec![
            runtime.spawn(tasks::receive_loop(node.clone(), underlay.clone())),
            runtime.spawn(tasks::timer_loop(node.clone(), underlay.clone())),
        ];
        tracing::info!(
            listen = %underlay.local_addr(),
            public_key = %config.private_key.public_key(),
            tunnel = %config.tunnel_address,
            "overlay data plane started (GSO {}, GRO {})",
            underlay.gso(),
            underlay.gro()
        );
        Ok(Overlay {
            inner: Arc::new(Inner {
                node,
                underlay,
                runtime,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Stops every task and closes every port now.
    pub fn shutdown(&self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let mut topo = self.inner.node.write();
        for p in topo.ports.values() {
            p.stop();
        }
        topo.ports.clear();
        for e in topo.enclaves.values_mut() {
            e.ports.clear();
        }
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.inner.node.public.to_bytes())
    }

    /// The underlay socket's bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.underlay.local_addr()
    }

    /// This node's tunnel address.
    pub fn tunnel_address(&self) -> Ipv4Addr {
        self.inner.node.tunnel_addr
    }

    /// The MTU ports get when they do not set one.
    pub fn default_port_mtu(&self) -> u16 {
        self.inner.node.settings.default_port_mtu
    }

    /// Adds a remote node. It joins every enclave that lists its key. When
    /// its endpoint is known a handshake starts at once, so the first frame
    /// does not wait for it (and a peer that was configured first, whose own
    /// initiation we could not answer yet, hears from us now).
    pub fn add_peer(&self, config: PeerConfig) -> Result<(), OverlayError> {
        let node = &self.inner.node;
        if config.public_key == self.public_key() {
            return Err(OverlayError::OwnKey(config.public_key));
        }
        let peer = {
            let mut topo = node.write();
            if topo.peers.contains_key(&config.public_key) {
                return Err(OverlayError::PeerExists(config.public_key));
            }
            let peer = Arc::new(new_peer(node, &topo, &config));
            attach_peer(&mut topo, &peer);
            peer
        };
        self.initiate_handshake(&peer, false);
        Ok(())
    }

    /// Changes a peer's endpoint, tunnel address or name, keeping its
    /// session. A different keepalive setting restarts the session.
    pub fn update_peer(&self, config: PeerConfig) -> Result<(), OverlayError> {
        let node = &self.inner.node;
        let mut topo = node.write();
        let peer = topo
            .peers
            .get(&config.public_key)
            .cloned()
            .ok_or(OverlayError::UnknownPeer(config.public_key))?;
        if let Some(name) = &config.name {
            peer.set_name(name.clone());
        }
        if peer.persistent_keepalive != config.persistent_keepalive {
            detach_peer(&mut topo, &peer);
            let fresh = Arc::new(new_peer(node, &topo, &config));
            if config.endpoint.is_none() {
                if let Some(ep) = peer.endpoint() {
                    fresh.set_endpoint(ep);
                }
            }
            attach_peer(&mut topo, &fresh);
            drop(topo);
            self.initiate_handshake(&fresh, false);
            return Ok(());
        }
        if let Some(ep) = config.endpoint {
            peer.set_endpoint(ep);
        }
        peer.set_tunnel_addr(config.tunnel_address);
        Ok(())
    }

    /// Removes a peer. When this returns, no frame from it is accepted and
    /// none is sent to it any more.
    pub fn remove_peer(&self, key: &PublicKey) -> Result<(), OverlayError> {
        let mut topo = self.inner.node.write();
        let peer = topo
            .peers
            .get(key)
            .cloned()
            .ok_or(OverlayError::UnknownPeer(*key))?;
        detach_peer(&mut topo, &peer);
        Ok(())
    }

    /// Starts a new handshake with a peer now (a rekey) while the current
    /// session keeps carrying traffic.
    pub fn rekey_peer(&self, key: &PublicKey) -> Result<(), OverlayError> {
        let peer = self
            .inner
            .node
            .read()
            .peers
            .get(key)
            .cloned()
            .ok_or(OverlayError::UnknownPeer(*key))?;
        self.initiate_handshake(&peer, true);
        Ok(())
    }

    fn initiate_handshake(&self, peer: &Peer, force: bool) {
        let Some(ep) = peer.endpoint() else {
            return;
        };
        let mut buf = [0u8; 148];
        let result = peer
            .lock_tunn()
            .format_handshake_initiation(&mut buf, force);
        if let TunnResult::WriteToNetwork(p) = result {
            if self.inner.underlay.try_send_to(p, ep).is_err() {
                // The timers retry; nothing is lost but time.
                tracing::debug!(peer = %peer.name(), "could not send a handshake initiation yet");
            }
        }
    }

    /// Adds an enclave with the given member peers (peers not configured yet
    /// join when they are added).
    pub fn add_enclave(
        &self,
        vni: u32,
        members: impl IntoIterator<Item = PublicKey>,
    ) -> Result<(), OverlayError> {
        if vni > MAX_VNI {
            return Err(OverlayError::InvalidVni(vni));
        }
        let mut topo = self.inner.node.write();
        if topo.enclaves.contains_key(&vni) {
            return Err(OverlayError::EnclaveExists(vni));
        }
        let keys: BTreeSet<PublicKey> = members.into_iter().collect();
        let mut enclave = Enclave::new(vni, keys);
        enclave.members = resolve_members(&topo, &enclave.member_keys);
        topo.enclaves.insert(vni, enclave);
        Ok(())
    }

    /// Replaces an enclave's member set. Peers no longer members can send
    /// nothing more into it, and their learned MAC addresses are forgotten.
    pub fn set_enclave_members(
        &self,
        vni: u32,
        members: impl IntoIterator<Item = PublicKey>,
    ) -> Result<(), OverlayError> {
        let mut topo = self.inner.node.write();
        let keys: BTreeSet<PublicKey> = members.into_iter().collect();
        let resolved = resolve_members(&topo, &keys);
        let enclave = topo
            .enclaves
            .get_mut(&vni)
            .ok_or(OverlayError::UnknownEnclave(vni))?;
        enclave.member_keys = keys;
        enclave.members = resolved;
        let ids: Vec<u64> = enclave.members.iter().map(|p| p.id).collect();
        enclave.macs.retain_remotes(|p| ids.contains(&p.id));
        Ok(())
    }

    /// Removes an enclave and closes its ports.
    pub fn remove_enclave(&self, vni: u32) -> Result<(), OverlayError> {
        let mut topo = self.inner.node.write();
        let enclave = topo
            .enclaves
            .remove(&vni)
            .ok_or(OverlayError::UnknownEnclave(vni))?;
        for p in &enclave.ports {
            p.stop();
            topo.ports.remove(&p.name);
        }
        Ok(())
    }

    /// Adds a local port to an enclave and starts switching its frames.
    pub fn add_port(&self, config: PortConfig) -> Result<PortInfo, OverlayError> {
        let node = &self.inner.node;
        let invalid = |problem: String| OverlayError::InvalidPort {
            name: config.name.clone(),
            problem,
        };
        {
            let topo = node.read();
            if topo.ports.contains_key(&config.name) {
                return Err(OverlayError::PortExists(config.name));
            }
            if !topo.enclaves.contains_key(&config.vni) {
                return Err(OverlayError::UnknownEnclave(config.vni));
            }
        }
        let mtu = config.mtu.unwrap_or(node.settings.default_port_mtu);
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(invalid(format!(
                "MTU {mtu} is out of range; use {MIN_MTU}..={MAX_MTU}"
            )));
        }
        if let Some(mac) = config.mac {
            if mac.is_multicast() || mac.is_zero() {
                return Err(invalid(format!(
                    "{mac} is not a unicast MAC address; use a locally administered one like 02:00:00:00:00:01"
                )));
            }
        }
        let _guard = self.inner.runtime.enter();
        let (io, mac) = match &config.kind {
            PortKind::Tap {
                ifname,
                offload,
                address,
            } => {
                if ifname.is_empty() || ifname.len() > 15 {
                    return Err(invalid(format!(
                        "interface name {ifname:?} must have 1 to 15 characters"
                    )));
                }
                let mac = config.mac.unwrap_or_else(MacAddr::random_local);
                let mut builder = tun_rs::DeviceBuilder::new()
                    .name(ifname)
                    .layer(tun_rs::Layer::L2)
                    .mtu(mtu)
                    .mac_addr(mac.0)
                    .offload(*offload)
                    .enable(true);
                if let Some((addr, prefix)) = address {
                    builder = builder.ipv4(*addr, *prefix, None);
                }
                let dev = builder.build_async().map_err(|source| OverlayError::Tap {
                    ifname: ifname.clone(),
                    source,
                })?;
                (
                    PortIo::Tap {
                        dev: Arc::new(dev),
                        ifname: ifname.clone(),
                        offload: *offload,
                    },
                    Some(mac),
                )
            }
            PortKind::UnixDgram {
                switch_sock,
                vm_sock,
            } => {
                if config.anti_spoof && config.mac.is_none() {
                    return Err(invalid(
                        "a unix port with anti-spoofing needs the VM NIC's MAC address".into(),
                    ));
                }
                remove_stale_socket(switch_sock).map_err(|source| OverlayError::UnixSocket {
                    path: switch_sock.clone(),
                    source,
                })?;
                let unix_err = |source| OverlayError::UnixSocket {
                    path: switch_sock.clone(),
                    source,
                };
                let std_sock =
                    std::os::unix::net::UnixDatagram::bind(switch_sock).map_err(unix_err)?;
                std_sock.set_nonblocking(true).map_err(unix_err)?;
                let sender = std_sock.try_clone().map_err(unix_err)?;
                let switch_ino = {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::symlink_metadata(switch_sock)
                        .map_err(unix_err)?
                        .ino()
                };
                let sock = tokio::net::UnixDatagram::from_std(std_sock).map_err(unix_err)?;
                (
                    PortIo::Unix {
                        sock: Arc::new(sock),
                        sender,
                        switch_ino,
                        switch_sock: switch_sock.clone(),
                        vm_sock: vm_sock.clone(),
                    },
                    config.mac,
                )
            }
        };
        let port = Arc::new(Port::new(
            node.next_id(),
            config.name.clone(),
            config.vni,
            io,
            mac,
            config.anti_spoof,
            mtu,
        ));
        register_port(&self.inner.node, &port)?;
        let task = match &port.io {
            PortIo::Tap { .. } => self.inner.runtime.spawn(tasks::tap_loop(
                node.clone(),
                self.inner.underlay.clone(),
                port.clone(),
            )),
            PortIo::Unix { .. } => self.inner.runtime.spawn(tasks::unix_loop(
                node.clone(),
                self.inner.underlay.clone(),
                port.clone(),
            )),
            PortIo::Memory { .. } => unreachable!("memory ports are added by add_memory_port"),
        };
        *port.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(PortInfo {
            name: port.name.clone(),
            mac: port.mac,
            mtu,
        })
    }

    /// Adds an in-process port: the program sends and receives frames
    /// through the returned handle (for probes, tests and embedding). With
    /// a MAC, anti-spoofing is on; without, any source MAC is accepted.
    pub fn add_memory_port(
        &self,
        name: impl Into<String>,
        vni: u32,
        mac: Option<MacAddr>,
        mtu: Option<u16>,
    ) -> Result<MemoryPort, OverlayError> {
        let name = name.into();
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        let mtu = mtu.unwrap_or(self.inner.node.settings.default_port_mtu);
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(OverlayError::InvalidPort {
                name,
                problem: format!("MTU {mtu} is out of range; use {MIN_MTU}..={MAX_MTU}"),
            });
        }
        let port = Arc::new(Port::new(
            self.inner.node.next_id(),
            name,
            vni,
            PortIo::Memory { to_user: tx },
            mac,
            mac.is_some(),
            mtu,
        ));
        register_port(&self.inner.node, &port)?;
        Ok(MemoryPort {
            node: self.inner.node.clone(),
            underlay: self.inner.underlay.clone(),
            port,
            fwd: Mutex::new(Forwarder::default()),
            rx: Mutex::new(rx),
        })
    }

    /// Removes a port. When this returns, no frame enters or leaves it any
    /// more; its device or socket is closed as its task winds down.
    pub fn remove_port(&self, name: &str) -> Result<(), OverlayError> {
        let mut topo = self.inner.node.write();
        let port = topo
            .ports
            .remove(name)
            .ok_or_else(|| OverlayError::UnknownPort(name.to_string()))?;
        port.stop();
        if let Some(e) = topo.enclaves.get_mut(&port.vni) {
            e.ports.retain(|p| p.id != port.id);
            e.macs.forget(port.id);
        }
        Ok(())
    }

    /// A snapshot of peers, enclaves, ports and counters.
    pub fn status(&self) -> OverlayStatus {
        let node = &self.inner.node;
        let topo = node.read();
        let mut peers: Vec<PeerStatus> = topo
            .peers
            .values()
            .map(|p| {
                let (age, ..) = p.lock_tunn().stats();
                let (rx_frames, rx_bytes, tx_frames, tx_bytes) = p.traffic.get();
                let mut enclaves: Vec<u32> = topo
                    .enclaves
                    .values()
                    .filter(|e| e.has_member(p.id))
                    .map(|e| e.vni)
                    .collect();
                enclaves.sort_unstable();
                PeerStatus {
                    name: p.name(),
                    public_key: p.public_key,
                    endpoint: p.endpoint(),
                    tunnel_address: p.tunnel_addr(),
                    last_handshake_secs: age.map(|d| d.as_secs_f64()),
                    rx_frames,
                    rx_bytes,
                    tx_frames,
                    tx_bytes,
                    enclaves,
                    drops: p.drops.snapshot(),
                }
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut enclaves: Vec<EnclaveStatus> = topo
            .enclaves
            .values()
            .map(|e| EnclaveStatus {
                vni: e.vni,
                members: e.member_keys.iter().copied().collect(),
                ports: e.ports.iter().map(|p| port_status(p)).collect(),
                mac_entries: e.macs.len(),
                flooded_frames: e.flooded.load(Ordering::Relaxed),
            })
            .collect();
        enclaves.sort_by_key(|e| e.vni);
        let u = &node.underlay;
        OverlayStatus {
            public_key: self.public_key(),
            listen: self.inner.underlay.local_addr(),
            tunnel_address: node.tunnel_addr,
            uptime_secs: node.uptime().as_secs(),
            underlay: UnderlayStatus {
                rx_datagrams: u.rx_datagrams.load(Ordering::Relaxed),
                rx_bytes: u.rx_bytes.load(Ordering::Relaxed),
                tx_datagrams: u.tx_datagrams.load(Ordering::Relaxed),
                tx_bytes: u.tx_bytes.load(Ordering::Relaxed),
                cookie_replies_sent: u.cookie_replies.load(Ordering::Relaxed),
                gso: self.inner.underlay.gso(),
                gro: self.inner.underlay.gro(),
            },
            peers,
            enclaves,
            drops: node.drops.snapshot(),
        }
    }
}

fn port_status(p: &Port) -> PortStatus {
    let (rx_frames, rx_bytes, tx_frames, tx_bytes) = p.traffic.get();
    let device = match &p.io {
        PortIo::Tap { ifname, .. } => ifname.clone(),
        PortIo::Unix { switch_sock, .. } => switch_sock.display().to_string(),
        PortIo::Memory { .. } => "-".into(),
    };
    PortStatus {
        name: p.name.clone(),
        kind: p.kind().into(),
        device,
        mac: p.mac,
        mtu: p.mtu,
        anti_spoof: p.anti_spoof,
        rx_frames,
        rx_bytes,
        tx_frames,
        tx_bytes,
        drops: p.drops.snapshot(),
    }
}

/// Adds a port to the topology (pinning its MAC when it has anti-spoofing).
pub(crate) fn register_port(node: &Node, port: &Arc<Port>) -> Result<(), OverlayError> {
    let mut topo = node.write();
    if topo.ports.contains_key(&port.name) {
        return Err(OverlayError::PortExists(port.name.clone()));
    }
    let enclave = topo
        .enclaves
        .get_mut(&port.vni)
        .ok_or(OverlayError::UnknownEnclave(port.vni))?;
    if port.anti_spoof {
        if let Some(mac) = port.mac {
            if let Some(other) = enclave
                .ports
                .iter()
                .find(|p| p.anti_spoof && p.mac == Some(mac))
            {
                return Err(OverlayError::InvalidPort {
                    name: port.name.clone(),
                    problem: format!(
                        "MAC {mac} already belongs to port {:?} of enclave {}",
                        other.name, port.vni
                    ),
                });
            }
            enclave.macs.pin(mac, port);
        }
    }
    enclave.ports.push(port.clone());
    topo.ports.insert(port.name.clone(), port.clone());
    Ok(())
}

pub(crate) fn new_peer(node: &Node, topo: &Topology, config: &PeerConfig) -> Peer {
    let index = node.next_index(topo);
    Peer::new(
        node,
        node.next_id(),
        index,
        config
            .name
            .clone()
            .unwrap_or_else(|| config.public_key.short()),
        config.public_key,
        config.tunnel_address,
        config.endpoint,
        config.persistent_keepalive,
    )
}

pub(crate) fn attach_peer(topo: &mut Topology, peer: &Arc<Peer>) {
    topo.peers.insert(peer.public_key, peer.clone());
    topo.peers_by_index.insert(peer.index, peer.clone());
    for e in topo.enclaves.values_mut() {
        if e.member_keys.contains(&peer.public_key) {
            e.members.push(peer.clone());
        }
    }
}

fn detach_peer(topo: &mut Topology, peer: &Arc<Peer>) {
    topo.peers.remove(&peer.public_key);
    topo.peers_by_index.remove(&peer.index);
    peer.removed.store(true, Ordering::Release);
    for e in topo.enclaves.values_mut() {
        e.members.retain(|p| p.id != peer.id);
        e.macs.forget(peer.id);
    }
}

pub(crate) fn resolve_members(topo: &Topology, keys: &BTreeSet<PublicKey>) -> Vec<Arc<Peer>> {
    keys.iter()
        .filter_map(|k| topo.peers.get(k).cloned())
        .collect()
}

/// Removes a leftover socket file at `path` (a previous run's), refusing to
/// touch anything that is not a socket.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An in-process port: frames sent here enter the enclave as if from a VM
/// NIC; frames for it are queued for [`MemoryPort::recv_timeout`].
pub struct MemoryPort {
    node: Arc<Node>,
    underlay: Arc<Underlay>,
    port: Arc<Port>,
    fwd: Mutex<Forwarder>,
    rx: Mutex<std::sync::mpsc::Receiver<Vec<u8>>>,
}

impl MemoryPort {
    /// Switches one frame from this port (anti-spoofing applies).
    pub fn send(&self, frame: &[u8]) {
        let mut buf = vec![0u8; HEADROOM + frame.len()];
        buf[HEADROOM..].copy_from_slice(frame);
        let mut fwd = self.fwd.lock().unwrap_or_else(|e| e.into_inner());
        {
            let topo = self.node.read();
            if self.port.removed.load(Ordering::Acquire) {
                return;
            }
            let Some(enclave) = topo.enclaves.get(&self.port.vni) else {
                return;
            };
            fwd.switch_from_port(&self.node, enclave, &self.port, None, &mut buf);
            fwd.finish_batch(&self.node);
            let sent = tasks::try_flush(&self.node, &self.underlay, &fwd.outbox, 0);
            for e in &fwd.outbox.entries[sent..] {
                self.node
                    .drop_frame(DropReason::UnderlaySendFailed, 1, e.peer.as_deref(), None);
            }
        }
        fwd.outbox.clear();
    }

    /// The next frame already queued for this port, if any.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_recv()
            .ok()
    }

    /// The next frame for this port, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(timeout)
            .ok()
    }
}
