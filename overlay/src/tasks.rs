//! The data plane's long-running tasks: the underlay receive loop, one
//! receive loop per TAP or unix port, and the timer loop (WireGuard timers,
//! rate-limiter resets, MAC aging).
//!
//! Each loop works in batches: wait for readiness, then — holding the
//! topology's read lock, without awaiting — read and process up to a batch
//! of packets and try to send what they produced. Only when the socket is
//! full does a loop release the lock and wait.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::TunnResult;

use crate::counters::DropReason;
use crate::forward::{Forwarder, HEADROOM};
use crate::node::{Node, Port, PortIo};
use crate::receive::Receiver;
use crate::underlay::{Outbox, RecvBatch, Underlay};
use crate::wire::vnet;

/// Packets read per batch from a port.
const PORT_BATCH: usize = 32;
/// Batches handled before a loop yields to other tasks.
const ROUNDS_BEFORE_YIELD: usize = 8;

/// Tries to send the outbox from entry `from` without blocking. Returns the
/// index of the first entry not handled.
pub(crate) fn try_flush(node: &Node, underlay: &Underlay, outbox: &Outbox, from: usize) -> usize {
    send_from(node, underlay, outbox, from, false)
}

fn send_from(
    node: &Node,
    underlay: &Underlay,
    outbox: &Outbox,
    from: usize,
    after_wait: bool,
) -> usize {
    let mut at = from;
    let mut on_error = |d: &crate::underlay::OutDatagram, e: &io::Error| {
        tracing::debug!("underlay send to {} failed: {e}", d.dst);
        node.drop_frame(DropReason::UnderlaySendFailed, 1, d.peer.as_deref(), None);
    };
    while at < outbox.entries.len() {
        match underlay.try_send_outbox(outbox, at, after_wait, &mut on_error) {
            Ok(n) => {
                let bytes: usize = outbox.entries[at..at + n].iter().map(|e| e.len).sum();
                node.underlay
                    .tx_datagrams
                    .fetch_add(n as u64, Ordering::Relaxed);
                node.underlay
                    .tx_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                at += n;
            }
            Err(_) => break,
        }
    }
    at
}

/// Sends the rest of the outbox, waiting for the socket as needed. Before
/// each attempt it retakes the topology lock and discards datagrams for
/// peers removed in the meantime, so a removed peer gets nothing more.
pub(crate) async fn flush_slow(node: &Node, underlay: &Underlay, outbox: &mut Outbox, from: usize) {
    let mut at = from;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while at < outbox.entries.len() {
        let ready = tokio::time::timeout_at(deadline, underlay.writable()).await;
        if !matches!(ready, Ok(Ok(()))) {
            break;
        }
        let _topo = node.read();
        outbox.entries.drain(..at);
        outbox.entries.retain(|e| {
            let gone = e
                .peer
                .as_ref()
                .is_some_and(|p| p.removed.load(Ordering::Acquire));
            if gone {
                node.drop_frame(DropReason::PeerRemoved, 1, None, None);
            }
            !gone
        });
        at = send_from(node, underlay, outbox, 0, true);
    }
    // Whatever is left after a second of a full socket is lost.
    for e in &outbox.entries[at.min(outbox.entries.len())..] {
        node.drop_frame(DropReason::UnderlaySendFailed, 1, e.peer.as_deref(), None);
    }
}

/// Receives datagrams from the underlay until the socket fails.
pub(crate) async fn receive_loop(node: Arc<Node>, underlay: Arc<Underlay>) {
    let mut batch = RecvBatch::default();
    let mut rx = Receiver::default();
    loop {
        if let Err(e) = underlay.readable().await {
            tracing::error!("underlay socket failed: {e}");
            return;
        }
        for _ in 0..ROUNDS_BEFORE_YIELD {
            let n = match underlay.try_recv_batch(&mut batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Transient (e.g. an ICMP error reported once); pause so
                    // that a persistent one cannot spin the loop.
                    tracing::debug!("underlay receive: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            };
            let sent = {
                let topo = node.read();
                for i in 0..n {
                    let (data, meta) = batch.message(i);
                    node.underlay
                        .rx_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    for d in data.chunks(meta.segment) {
                        node.underlay.rx_datagrams.fetch_add(1, Ordering::Relaxed);
                        rx.handle(&node, &topo, meta.src, d);
                    }
                }
                rx.fwd.finish_batch(&node);
                try_flush(&node, &underlay, &rx.fwd.outbox, 0)
            };
            if sent < rx.fwd.outbox.entries.len() {
                flush_slow(&node, &underlay, &mut rx.fwd.outbox, sent).await;
            }
            rx.fwd.outbox.clear();
        }
        tokio::task::yield_now().await;
    }
}

/// Reads frames from a TAP port until the port is removed or fails.
pub(crate) async fn tap_loop(node: Arc<Node>, underlay: Arc<Underlay>, port: Arc<Port>) {
    let PortIo::Tap {
        dev,
        offload,
        ifname,
    } = &port.io
    else {
        return;
    };
    let vlen = if *offload { vnet::HEADER_LEN } else { 0 };
    let mut buf = vec![0u8; HEADROOM + vnet::HEADER_LEN + 65_536];
    let mut fwd = Forwarder::default();
    loop {
        if let Err(e) = dev.readable().await {
            tracing::warn!(port = %port.name, "TAP {ifname} failed: {e}");
            return;
        }
        let mut failed = None;
        let sent = {
            let topo = node.read();
            if port.removed.load(Ordering::Acquire) {
                return;
            }
            let Some(enclave) = topo.enclaves.get(&port.vni) else {
                return;
            };
            for _ in 0..PORT_BATCH {
                match dev.try_recv(&mut buf[HEADROOM - vlen..]) {
                    Ok(n) if n >= vlen => {
                        let hdr = if *offload {
                            vnet::Repr::parse(&buf[HEADROOM - vlen..]).ok()
                        } else {
                            None
                        };
                        let end = HEADROOM + n - vlen;
                        fwd.switch_from_port(&node, enclave, &port, hdr, &mut buf[..end]);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            fwd.finish_batch(&node);
            try_flush(&node, &underlay, &fwd.outbox, 0)
        };
        if sent < fwd.outbox.entries.len() {
            flush_slow(&node, &underlay, &mut fwd.outbox, sent).await;
        }
        fwd.outbox.clear();
        if let Some(e) = failed {
            tracing::warn!(port = %port.name, "reading TAP {ifname} failed: {e}");
            return;
        }
    }
}

/// Reads frames from a unix datagram port until the port is removed.
pub(crate) async fn unix_loop(node: Arc<Node>, underlay: Arc<Underlay>, port: Arc<Port>) {
    let PortIo::Unix { sock, vm_sock, .. } = &port.io else {
        return;
    };
    let mut buf = vec![0u8; HEADROOM + 65_536];
    let mut fwd = Forwarder::default();
    loop {
        if let Err(e) = sock.readable().await {
            tracing::warn!(port = %port.name, "unix port socket failed: {e}");
            return;
        }
        let sent = {
            let topo = node.read();
            if port.removed.load(Ordering::Acquire) {
                return;
            }
            let Some(enclave) = topo.enclaves.get(&port.vni) else {
                return;
            };
            for _ in 0..PORT_BATCH {
                match sock.try_recv_from(&mut buf[HEADROOM..]) {
                    Ok((n, from)) => {
                        if from.as_pathname() != Some(vm_sock.as_path()) {
                            node.drop_frame(DropReason::ForeignSender, 1, None, Some(&port));
                            continue;
                        }
                        fwd.switch_from_port(&node, enclave, &port, None, &mut buf[..HEADROOM + n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(port = %port.name, "unix port receive: {e}");
                        break;
                    }
                }
            }
            fwd.finish_batch(&node);
            try_flush(&node, &underlay, &fwd.outbox, 0)
        };
        if sent < fwd.outbox.entries.len() {
            flush_slow(&node, &underlay, &mut fwd.outbox, sent).await;
        }
        fwd.outbox.clear();
    }
}

/// Runs WireGuard's timers (handshake retries, keepalives, rekeying,
/// session expiry) for every peer, resets the handshake rate limiter each
/// second and ages MAC tables.
pub(crate) async fn timer_loop(node: Arc<Node>, underlay: Arc<Underlay>) {
    const TICK: Duration = Duration::from_millis(250);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 256];
    let mut outbox = Outbox::default();
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let sent = {
            let topo = node.read();
            for peer in topo.peers.values() {
                let endpoint = peer.endpoint();
                let mut tunn = peer.lock_tunn();
                if let TunnResult::WriteToNetwork(p) = tunn.update_timers(&mut buf) {
                    match endpoint {
                        Some(ep) => outbox.push(p, ep, Some(peer.clone())),
                        None => {
                            node.drop_frame(DropReason::PeerEndpointUnknown, 1, Some(peer), None)
                        }
                    }
                }
            }
            if n.is_multiple_of(4) {
                node.rate_limiter.reset_count();
            }
            if n.is_multiple_of(20) {
                let now = node.now_secs();
                for e in topo.enclaves.values() {
                    e.macs.expire(now, node.settings.mac_aging_secs);
                }
            }
            try_flush(&node, &underlay, &outbox, 0)
        };
        if sent < outbox.entries.len() {
            flush_slow(&node, &underlay, &mut outbox, sent).await;
        }
        outbox.clear();
    }
}
