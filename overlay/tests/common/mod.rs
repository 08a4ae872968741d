//! Shared harness of the multi-site overlay tests: one overlay node per
//! testbed site, running on a tokio runtime whose threads live inside the
//! site's network namespace.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slicenet_overlay::{Overlay, OverlayConfig, OverlayStatus, PeerConfig, PrivateKey, PublicKey};
use slicenet_testbed::{SiteHandle, Testbed};

/// Underlay UDP port of every test node.
pub const PORT: u16 = 51820;

/// An overlay node running inside one site.
pub struct Node {
    pub site: SiteHandle,
    pub overlay: Overlay,
    pub key: PrivateKey,
    pub tunnel: Ipv4Addr,
    runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl Node {
    /// Starts a node in `site` listening on the site's underlay address.
    pub fn start(site: &SiteHandle, tunnel: Ipv4Addr) -> Node {
        let key = PrivateKey::generate();
        let listen = SocketAddr::new(site.addr().into(), PORT);
        let k = key.clone();
        let (runtime, overlay) = site
            .ns()
            .spawn_thread(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let ov = rt
                    .block_on(async { Overlay::start(OverlayConfig::new(k, listen, tunnel)) })
                    .expect("overlay starts");
                (Arc::new(rt), ov)
            })
            .join()
            .expect("site thread")
            .expect("enter site");
        Node {
            site: site.clone(),
            overlay,
            key,
            tunnel,
            runtime: Some(runtime),
        }
    }

    /// This node's public key.
    pub fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The peer entry other nodes need for this one.
    pub fn as_peer(&self) -> PeerConfig {
        PeerConfig::new(self.public(), self.tunnel)
            .endpoint(SocketAddr::new(self.site.addr().into(), PORT))
            .name(self.site.label())
    }

    /// Runs `f` on a thread inside this node's site (where TAP devices and
    /// sockets must be created).
    pub fn in_site<T: Send + 'static>(&self, f: impl FnOnce(&Overlay) -> T + Send + 'static) -> T {
        let ov = self.overlay.clone();
        self.site
            .ns()
            .spawn_thread(move || f(&ov))
            .join()
            .expect("site thread")
            .expect("enter site")
    }

    /// The current status.
    pub fn status(&self) -> OverlayStatus {
        self.overlay.status()
    }

    /// Runs a command inside the site and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        self.site
            .command(program)
            .args(args)
            .output()
            .expect("command runs")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.overlay.shutdown();
        if let Some(rt) = self.runtime.take() {
            if let Ok(rt) = Arc::try_unwrap(rt) {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// Builds a testbed of `n` sites and starts a node in each, tunnel address
/// 198.19.255.<i>, every node a peer of every other.
pub fn mesh(n: usize) -> (Testbed, Vec<Node>) {
    let bed = Testbed::builder(n).build().expect("testbed");
    let nodes: Vec<Node> = (1..=n)
        .map(|i| Node::start(bed.site(i), Ipv4Addr::new(198, 19, 255, i as u8)))
        .collect();
    for a in &nodes {
        for b in &nodes {
            if a.public() != b.public() {
                a.overlay.add_peer(b.as_peer()).expect("add peer");
            }
        }
    }
    (bed, nodes)
}

/// Adds enclave `vni` to each of `nodes` with all the others as members.
pub fn enclave(vni: u32, nodes: &[&Node]) {
    for a in nodes {
        let members: Vec<PublicKey> = nodes
            .iter()
            .filter(|b| b.public() != a.public())
            .map(|b| b.public())
            .collect();
        a.overlay.add_enclave(vni, members).expect("add enclave");
    }
}

/// Drops of frames (not of handshake messages, which races while nodes are
/// configured one after another can legitimately cause).
pub fn data_drops(s: &OverlayStatus) -> std::collections::BTreeMap<String, u64> {
    use slicenet_overlay::DropReason as R;
    let handshake = [
        R::UnknownPeer,
        R::HandshakeInvalid,
        R::HandshakeUnderLoad,
        R::NoSession,
    ];
    s.drops
        .iter()
        .filter(|(k, _)| !handshake.iter().any(|r| r.name() == k.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ping -c count` from `node` (optionally inside network namespace
/// `netns` instead of the node's site) to `dst`; true when all replies came.
pub fn ping(node: &Node, dst: Ipv4Addr, count: u32) -> bool {
    let out = node.run(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
            &dst.to_string(),
        ],
    );
    out.status.success()
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
