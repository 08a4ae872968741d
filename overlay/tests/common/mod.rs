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
        let listen = SocketAddr::new(site.addr().into(), PORT);
        Self::start_with(site, tunnel, listen, |_| {})
    }

    /// Starts a node listening on `listen`, with `tweak` applied to its config.
    pub fn start_with(
        site: &SiteHandle,
        tunnel: Ipv4Addr,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut OverlayConfig) + Send + 'static,
    ) -> Node {
        let key = PrivateKey::generate();
        let k = key.clone();
        let (runtime, overlay) = site
            .ns()
            .spawn_thread(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let mut cfg = OverlayConfig::new(k, listen, tunnel);
                tweak(&mut cfg);
                let ov = rt
                    .block_on(async { Overlay::start(cfg) })
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
    mesh_in(n, n)
}

/// Like [`mesh`] but with nodes only in the first `nodes` of `sites` sites.
pub fn mesh_in(sites: usize, nodes: usize) -> (Testbed, Vec<Node>) {
    let bed = Testbed::builder(sites).build().expect("testbed");
    let nodes: Vec<Node> = (1..=nodes)
        .map(|i| Node::start(bed.site(i), Ipv4Addr::new(198, 19, 255, i as u8)))
        .collect();
    connect(&nodes);
    (bed, nodes)
}

/// Makes every node a peer of every other.
pub fn connect(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.public() != b.public() {
                a.overlay.add_peer(b.as_peer()).expect("add peer");
            }
        }
    }
}

/// Gives each node a TAP port "vm" (interface `ifname`) in enclave `vni`
/// with address 198.19.<vni>.<i>/24.
pub fn tap_ports(nodes: &[&Node], vni: u8, ifname: &'static str) {
    for (i, n) in nodes.iter().enumerate() {
        let addr = Ipv4Addr::new(198, 19, vni, i as u8 + 1);
        n.in_site(move |ov| {
            ov.add_port(
                slicenet_overlay::PortConfig::tap(ifname, u32::from(vni), ifname).address(addr, 24),
            )
        })
        .expect("TAP port");
    }
}

/// Runs `ping -c count -i interval` from `node` to `dst` on a thread and
/// returns a handle yielding the packet loss in percent.
pub fn ping_in_background(
    node: &Node,
    dst: Ipv4Addr,
    count: u32,
    interval: f64,
) -> std::thread::JoinHandle<f64> {
    let site = node.site.clone();
    std::thread::spawn(move || {
        let out = site
            .command("ping")
            .args([
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                &interval.to_string(),
                "-W",
                "1",
            ])
            .arg(dst.to_string())
            .output()
            .expect("ping runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(',')
            .find_map(|part| part.trim().strip_suffix("% packet loss"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(100.0)
    })
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

/// A packet socket on one interface: sends raw frames out of it and sees
/// the frames it receives (for TAP ports: what the overlay writes).
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens a packet socket on `ifname` inside namespace `ns`.
    pub fn open(ns: &slicenet_testbed::NetNs, ifname: &str) -> RawSocket {
        use std::os::fd::FromRawFd;
        let ifname = std::ffi::CString::new(ifname).unwrap();
        ns.spawn_thread(move || {
            // SAFETY: plain socket calls with valid arguments.
            unsafe {
                let ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
                assert!(ifindex > 0, "no interface {ifname:?}");
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    (libc::ETH_P_ALL as u16).to_be() as i32,
                );
                assert!(
                    fd >= 0,
                    "packet socket: {}",
                    std::io::Error::last_os_error()
                );
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                sll.sll_ifindex = ifindex;
                let rc = libc::bind(
                    fd,
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 50_000,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                RawSocket {
                    fd: std::os::fd::OwnedFd::from_raw_fd(fd),
                    ifindex,
                }
            }
        })
        .join()
        .expect("thread")
        .expect("enter netns")
    }

    /// Sends one frame out of the interface.
    pub fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket, buffer and address.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = self.ifindex;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                n,
                frame.len() as isize,
                "send: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// The first received (not sent) frame matching `pred` within `timeout`.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < end {
            // SAFETY: a valid socket, buffer and address storage.
            let (n, pkttype) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                );
                (n, sll.sll_pkttype)
            };
            if n <= 0 || pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n as usize];
            if pred(f) {
                return Some(f.to_vec());
            }
        }
        None
    }
}

/// An extra namespace standing for a VM: a TAP port is moved into it.
/// Named like a testbed site so that a killed test's leftovers are swept.
pub struct Guest {
    pub ns: slicenet_testbed::NetNs,
}

impl Guest {
    /// Creates guest namespace number `k` of `bed`.
    pub fn new(bed: &Testbed, k: usize) -> Guest {
        let ns = slicenet_testbed::NetNs::create(&format!("{}-s{}", bed.id(), 100 + k))
            .expect("guest namespace");
        Guest { ns }
    }

    /// Moves `ifname` from `site` into this guest and gives it `addr/24`.
    pub fn adopt(&self, site: &SiteHandle, ifname: &str, addr: Ipv4Addr) {
        let g = self.ns.name();
        ip(&["-n", site.ns().name(), "link", "set", ifname, "netns", g]);
        ip(&["-n", g, "addr", "add", &format!("{addr}/24"), "dev", ifname]);
        ip(&["-n", g, "link", "set", ifname, "up"]);
    }

    /// `ping` from inside the guest; true when every reply came.
    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> bool {
        self.ns
            .command("ping")
            .args([
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "2",
            ])
            .arg(dst.to_string())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.ns.destroy();
    }
}

/// True for an ARP request asking for `target`.
pub fn is_arp_request_for(frame: &[u8], target: Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0x00, 0x01]
        && frame[38..42] == target.octets()
}
