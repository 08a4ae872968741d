//! Counters: frames and bytes per peer and port, and a counter for every
//! reason a datagram or frame is dropped. Plain relaxed atomics, cheap
//! enough to leave on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a datagram or frame was dropped. Every drop is counted under
        /// exactly one reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// The snake_case name used in status output.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }

            /// One sentence saying what happened.
            pub fn describe(self) -> &'static str {
                match self { $(DropReason::$variant => $doc,)* }
            }
        }
    };
}

drop_reasons! {
    MalformedDatagram => "malformed_datagram", "UDP datagram that is not a WireGuard message (wrong type or length).";
    UnknownPeer => "unknown_peer", "WireGuard message from a key or for a session index this node does not know.";
    HandshakeInvalid => "handshake_invalid", "Handshake message with a bad MAC, that fails to decrypt, or that is replayed.";
    HandshakeUnderLoad => "handshake_under_load", "Handshake refused under load; a cookie reply was sent instead.";
    DecryptFailed => "decrypt_failed", "Data message whose authentication fails (wrong key, corrupted or truncated).";
    Replayed => "replayed", "Data message whose counter was already received (replay).";
    NoSession => "no_session", "Data message for a session that does not exist (expired or never established).";
    InnerNotVxlan => "inner_not_vxlan", "Decrypted packet that is not VXLAN in IPv4/UDP to port 4789.";
    InnerBadHeader => "inner_bad_header", "Decrypted packet with a malformed IPv4, UDP or VXLAN header.";
    InnerWrongAddress => "inner_wrong_address", "Inner source is not the peer's tunnel address, or the destination is not ours.";
    UnknownVni => "unknown_vni", "Frame for an enclave (VNI) this node does not have.";
    PeerNotMember => "peer_not_member", "Frame from a peer for an enclave it is not a member of.";
    TruncatedFrame => "truncated_frame", "Frame shorter than an Ethernet header.";
    SpoofedSourceMac => "spoofed_source_mac", "Frame whose source MAC does not belong to the port or peer it came from.";
    InvalidSourceMac => "invalid_source_mac", "Frame with a multicast or all-zero source MAC.";
    Oversize => "oversize", "Frame larger than the port's MTU allows.";
    SplitHorizon => "split_horizon", "Frame from a remote node for a MAC behind another remote node (never relayed).";
    SamePort => "same_port", "Unicast frame for a MAC on the port it came from.";
    UnsupportedOffload => "unsupported_offload", "TAP frame with segmentation metadata this switch cannot process.";
    ForeignSender => "foreign_sender", "Datagram on a unix port's socket from someone other than the port's VM.";
    PortUnreachable => "port_unreachable", "Local port's other end is not there (VM socket not bound).";
    PortDown => "port_down", "Local port's interface is down (TAP link not up).";
    PortQueueFull => "port_queue_full", "Local port's receive queue is full.";
    PortWriteFailed => "port_write_failed", "Writing to a local port failed.";
    PeerEndpointUnknown => "peer_endpoint_unknown", "Frame for a peer whose underlay endpoint is not known yet.";
    PeerRemoved => "peer_removed", "Datagram for a peer that was removed before it could be sent.";
    EncapsulateFailed => "encapsulate_failed", "WireGuard could not encrypt for the peer.";
    UnderlaySendFailed => "underlay_send_failed", "Sending on the underlay UDP socket failed.";
}

/// One counter per [`DropReason`].
#[derive(Debug)]
pub struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl DropCounters {
    /// Counts `n` drops for `reason`.
    #[inline]
    pub fn add(&self, reason: DropReason, n: u64) {
        self.0[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Current count for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].load(Ordering::Relaxed)
    }

    /// Non-zero counters by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        DropReason::ALL
            .iter()
            .filter_map(|&r| {
                let n = self.get(r);
                (n > 0).then(|| (r.name().to_string(), n))
            })
            .collect()
    }
}

/// Frames and bytes in both directions.
#[derive(Debug, Default)]
pub struct TrafficCounters {
    /// Frames received from this port or peer.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames.
    pub rx_bytes: AtomicU64,
    /// Frames sent to this port or peer.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames.
    pub tx_bytes: AtomicU64,
}

impl TrafficCounters {
    /// Counts one received frame of `len` bytes.
    #[inline]
    pub fn rx(&self, frames: u64, bytes: u64) {
        self.rx_frames.fetch_add(frames, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one sent frame of `len` bytes.
    #[inline]
    pub fn tx(&self, frames: u64, bytes: u64) {
        self.tx_frames.fetch_add(frames, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `(rx_frames, rx_bytes, tx_frames, tx_bytes)`.
    pub fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.rx_frames.load(Ordering::Relaxed),
            self.rx_bytes.load(Ordering::Relaxed),
            self.tx_frames.load(Ordering::Relaxed),
            self.tx_bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_unique_names_and_sentences() {
        let mut names = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert!(names.insert(r.name()), "{} twice", r.name());
            assert!(r.describe().ends_with('.'));
        }
    }

    #[test]
    fn snapshot_lists_only_what_happened() {
        let c = DropCounters::default();
        c.add(DropReason::Replayed, 2);
        c.add(DropReason::Oversize, 1);
        let s = c.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(s["replayed"], 2);
        assert_eq!(s["oversize"], 1);
    }
}
