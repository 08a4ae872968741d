//! Switching one frame: anti-spoofing and learning at ingress, the
//! forwarding decision (unicast, flood, drop), and delivery to local ports
//! or — encrypted — to remote nodes.
//!
//! Frames from a local port may go anywhere in their enclave; frames from a
//! remote node go only to local ports (split horizon: every node floods to
//! every member itself, so relaying would duplicate frames and loop).

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use boringtun::noise::TunnResult;

use crate::counters::DropReason;
use crate::encap::{flow_port, InnerRepr, INNER_HEADER_LEN, WIREGUARD_OVERHEAD};
use crate::node::{Enclave, Node, Peer, Port, PortIo};
use crate::offload::{self, Coalescer};
use crate::switch::{Attachment, Learned};
use crate::underlay::Outbox;
use crate::wire::ethernet::{self, MacAddr};
use crate::wire::vnet;

/// Free bytes kept in front of every frame so the inner IPv4/UDP/VXLAN
/// headers can be written without moving the frame.
pub(crate) const HEADROOM: usize = INNER_HEADER_LEN;

/// Per-task forwarding state and buffers, reused from batch to batch.
#[derive(Default)]
pub(crate) struct Forwarder {
    /// Encrypted datagrams waiting to be sent.
    pub outbox: Outbox,
    coalescer: Coalescer,
    targets: Vec<Attachment>,
    segments: Vec<u8>,
}

fn tap_write_error(e: &std::io::Error) -> DropReason {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => DropReason::PortQueueFull,
        // The TAP driver refuses writes while the interface is down.
        Some(libc::EIO) => DropReason::PortDown,
        _ => DropReason::PortWriteFailed,
    }
}

impl Forwarder {
    /// Handles a frame read from local port `port`. `buf` holds
    /// [`HEADROOM`] scratch bytes followed by the frame; `vnet` is the
    /// offload header when the port has one.
    pub(crate) fn switch_from_port(
        &mut self,
        node: &Node,
        enclave: &Enclave,
        port: &Arc<Port>,
        vnet: Option<vnet::Repr>,
        buf: &mut [u8],
    ) {
        let frame = &buf[HEADROOM..];
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            node.drop_frame(DropReason::TruncatedFrame, 1, None, Some(port));
            return;
        };
        let (src, dst, tags) = (eth.src_addr(), eth.dst_addr(), eth.vlan_tags());
        if src.is_multicast() || src.is_zero() {
            node.drop_frame(DropReason::InvalidSourceMac, 1, None, Some(port));
            return;
        }
        if port.anti_spoof && Some(src) != port.mac {
            node.drop_frame(DropReason::SpoofedSourceMac, 1, None, Some(port));
            return;
        }
        let now = node.now_secs();
        let learned = enclave
            .macs
            .learn(src, port.id, || Attachment::Local(port.clone()), now);
        if learned == Learned::PinnedElsewhere {
            node.drop_frame(DropReason::SpoofedSourceMac, 1, None, Some(port));
            return;
        }
        if !self.decide(node, enclave, port.id, dst, now, true) {
            node.drop_frame(DropReason::SamePort, 1, None, Some(port));
            return;
        }
        let hdr = vnet.unwrap_or_default();
        let max = port.max_frame_len(tags);
        if hdr.gso_type == vnet::gso::NONE {
            if frame.len() > max {
                node.drop_frame(DropReason::Oversize, 1, None, Some(port));
                return;
            }
            if hdr.flags & vnet::F_NEEDS_CSUM != 0
                && !offload::complete_checksum(
                    &mut buf[HEADROOM..],
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
            {
                node.drop_frame(DropReason::UnsupportedOffload, 1, None, Some(port));
                return;
            }
            port.traffic.rx(1, (buf.len() - HEADROOM) as u64);
            let targets = std::mem::take(&mut self.targets);
            for t in &targets {
                self.deliver(node, enclave.vni, t, buf);
            }
            self.targets = targets;
            return;
        }
        // A TSO super-frame: cut it into wire-sized frames.
        let targets = std::mem::take(&mut self.targets);
        let mut segments = std::mem::take(&mut self.segments);
        let mut oversize = false;
        let result = offload::segment(&buf[HEADROOM..], &hdr, HEADROOM, &mut segments, |seg| {
            if oversize || seg.len() - HEADROOM > max {
                oversize = true;
                return;
            }
            port.traffic.rx(1, (seg.len() - HEADROOM) as u64);
            for t in &targets {
                self.deliver(node, enclave.vni, t, seg);
            }
        });
        self.targets = targets;
        self.segments = segments;
        match result {
            Err(_) => node.drop_frame(DropReason::UnsupportedOffload, 1, None, Some(port)),
            Ok(n) if oversize => {
                node.drop_frame(DropReason::Oversize, n as u64, None, Some(port));
            }
            Ok(_) => {}
        }
    }

    /// Handles a frame that arrived from remote node `peer`.
    pub(crate) fn switch_from_peer(
        &mut self,
        node: &Node,
        enclave: &Enclave,
        peer: &Arc<Peer>,
        frame: &[u8],
    ) {
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            node.drop_frame(DropReason::TruncatedFrame, 1, Some(peer), None);
            return;
        };
        let (src, dst) = (eth.src_addr(), eth.dst_addr());
        if src.is_multicast() || src.is_zero() {
            node.drop_frame(DropReason::InvalidSourceMac, 1, Some(peer), None);
            return;
        }
        let now = node.now_secs();
        let learned = enclave
            .macs
            .learn(src, peer.id, || Attachment::Remote(peer.clone()), now);
        if learned == Learned::PinnedElsewhere {
            node.drop_frame(DropReason::SpoofedSourceMac, 1, Some(peer), None);
            return;
        }
        peer.traffic.rx(1, frame.len() as u64);
        if !self.decide(node, enclave, peer.id, dst, now, false) {
            node.drop_frame(DropReason::SamePort, 1, Some(peer), None);
            return;
        }
        let targets = std::mem::take(&mut self.targets);
        for t in &targets {
            match t {
                Attachment::Local(p) => self.deliver_local(node, p, frame),
                Attachment::Remote(_) => {
                    node.drop_frame(DropReason::SplitHorizon, 1, Some(peer), None);
                }
            }
        }
        self.targets = targets;
    }

    /// Fills `self.targets` for a frame to `dst` that entered at `from`.
    /// Returns false when the frame is for the port it came from.
    fn decide(
        &mut self,
        node: &Node,
        enclave: &Enclave,
        from: u64,
        dst: MacAddr,
        now: u64,
        to_remotes: bool,
    ) -> bool {
        self.targets.clear();
        if !dst.is_multicast() {
            if let Some(at) = enclave.macs.lookup(dst, now, node.settings.mac_aging_secs) {
                if at.id() == from {
                    return false;
                }
                self.targets.push(at);
                return true;
            }
        }
        enclave.flooded.fetch_add(1, Ordering::Relaxed);
        for p in &enclave.ports {
            if p.id != from && !p.removed.load(Ordering::Relaxed) {
                self.targets.push(Attachment::Local(p.clone()));
            }
        }
        if to_remotes {
            for peer in &enclave.members {
                self.targets.push(Attachment::Remote(peer.clone()));
            }
        }
        true
    }

    /// Sends the frame in `buf[HEADROOM..]` to one target.
    fn deliver(&mut self, node: &Node, vni: u32, target: &Attachment, buf: &mut [u8]) {
        match target {
            Attachment::Local(p) => self.deliver_local(node, p, &buf[HEADROOM..]),
            Attachment::Remote(peer) => self.encapsulate(node, peer, vni, buf),
        }
    }

    /// Writes a frame to a local port.
    fn deliver_local(&mut self, node: &Node, port: &Arc<Port>, frame: &[u8]) {
        let tags = ethernet::Frame::new_unchecked(frame).vlan_tags();
        if frame.len() > port.max_frame_len(tags) {
            node.drop_frame(DropReason::Oversize, 1, None, Some(port));
            return;
        }
        let result = match &port.io {
            PortIo::Tap { offload: true, .. } => {
                let mut sink =
                    |p: &Arc<Port>, parts: &[&[u8]], segs: u64| tap_sink(node, p, parts, segs);
                self.coalescer.push(port, frame, &mut sink);
                return;
            }
            PortIo::Tap { dev, .. } => {
                write_now(dev.as_raw_fd(), &[frame]).map_err(|e| tap_write_error(&e))
            }
            PortIo::Unix {
                sender, vm_sock, ..
            } => sender
                .send_to(frame, vm_sock)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => DropReason::PortQueueFull,
                    Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTCONN) => {
                        DropReason::PortUnreachable
                    }
                    _ => DropReason::PortWriteFailed,
                }),
            PortIo::Memory { to_user } => {
                to_user
                    .try_send(frame.to_vec())
                    .map(|_| 0)
                    .map_err(|e| match e {
                        std::sync::mpsc::TrySendError::Full(_) => DropReason::PortQueueFull,
                        std::sync::mpsc::TrySendError::Disconnected(_) => {
                            DropReason::PortUnreachable
                        }
                    })
            }
        };
        match result {
            Ok(_) => port.traffic.tx(1, frame.len() as u64),
            Err(reason) => node.drop_frame(reason, 1, None, Some(port)),
        }
    }

    /// Wraps `buf[HEADROOM..]` in VXLAN/IPv4/UDP and encrypts it for `peer`.
    fn encapsulate(&mut self, node: &Node, peer: &Arc<Peer>, vni: u32, buf: &mut [u8]) {
        let Some(endpoint) = peer.endpoint() else {
            node.drop_frame(DropReason::PeerEndpointUnknown, 1, Some(peer), None);
            return;
        };
        let frame_len = buf.len() - HEADROOM;
        InnerRepr {
            src: node.tunnel_addr,
            dst: peer.tunnel_addr(),
            src_port: flow_port(&buf[HEADROOM..]),
            vni,
        }
        .emit(&mut buf[..HEADROOM], frame_len);
        // boringtun panics on a destination shorter than this.
        let room = (buf.len() + WIREGUARD_OVERHEAD).max(148);
        let slot = self.outbox.slot(room);
        let written = match peer.lock_tunn().encapsulate(buf, slot) {
            TunnResult::WriteToNetwork(out) => {
                if out[0] != 4 {
                    // A handshake initiation: the frame waits in boringtun's queue.
                    peer.queued.store(true, Ordering::Release);
                }
                Ok(Some(out.len()))
            }
            // Queued inside boringtun until the handshake completes.
            TunnResult::Done => {
                peer.queued.store(true, Ordering::Release);
                Ok(None)
            }
            _ => Err(()),
        };
        match written {
            Ok(Some(len)) => {
                self.outbox.commit(len, endpoint, Some(peer.clone()));
                peer.traffic.tx(1, frame_len as u64);
            }
            Ok(None) => peer.traffic.tx(1, frame_len as u64),
            Err(()) => node.drop_frame(DropReason::EncapsulateFailed, 1, Some(peer), None),
        }
    }

    /// Ends a batch: writes out coalesced TAP frames.
    pub(crate) fn finish_batch(&mut self, node: &Node) {
        let mut sink = |p: &Arc<Port>, parts: &[&[u8]], segs: u64| tap_sink(node, p, parts, segs);
        self.coalescer.flush(&mut sink);
    }
}

/// Writes `parts` as one packet to a TAP device now. The descriptor is
/// non-blocking; going straight to the kernel (rather than through tokio's
/// readiness flag, which starts unset) means a full queue is the only way
/// to get `WouldBlock`.
fn write_now(fd: std::os::fd::RawFd, parts: &[&[u8]]) -> std::io::Result<usize> {
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2];
    let n = parts.len().min(2);
    for (v, p) in iovs.iter_mut().zip(parts) {
        *v = libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        };
    }
    // SAFETY: the iovecs point into live slices for the duration of the call.
    let rc = unsafe { libc::writev(fd, iovs.as_ptr(), n as i32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Writes one (possibly coalesced) frame to an offload TAP port.
fn tap_sink(node: &Node, port: &Arc<Port>, parts: &[&[u8]], segs: u64) {
    let PortIo::Tap { dev, .. } = &port.io else {
        return;
    };
    match write_now(dev.as_raw_fd(), parts) {
        Ok(n) => port
            .traffic
            .tx(segs, n.saturating_sub(vnet::HEADER_LEN) as u64),
        Err(e) => node.drop_frame(tap_write_error(&e), segs, None, Some(port)),
    }
}
