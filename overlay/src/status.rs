//! What `Overlay::status` returns and `slicenet overlay status` prints: a
//! plain serde struct (for `--json` and for the node manager) and a human
//! table rendering of it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::counters::DropReason;
use crate::keys::PublicKey;
use crate::wire::ethernet::MacAddr;

/// A snapshot of one node's data plane.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OverlayStatus {
    /// This node's WireGuard public key.
    pub public_key: PublicKey,
    /// The underlay UDP socket's address.
    pub listen: SocketAddr,
    /// This node's tunnel (inner) address.
    pub tunnel_address: Ipv4Addr,
    /// Seconds since the data plane started.
    pub uptime_secs: u64,
    /// Underlay socket counters.
    pub underlay: UnderlayStatus,
    /// Every configured peer.
    pub peers: Vec<PeerStatus>,
    /// Every enclave and its ports.
    pub enclaves: Vec<EnclaveStatus>,
    /// Node-wide drops by reason name (only reasons that happened).
    pub drops: BTreeMap<String, u64>,
}

/// Underlay socket counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnderlayStatus {
    /// Datagrams received.
    pub rx_datagrams: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Cookie replies sent to handshake senders while under load.
    pub cookie_replies_sent: u64,
    /// UDP segmentation offload in use for sending.
    pub gso: bool,
    /// UDP receive coalescing in use.
    pub gro: bool,
}

/// One peer (remote node).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// Human name from the configuration.
    pub name: String,
    /// WireGuard public key.
    pub public_key: PublicKey,
    /// Current underlay endpoint (learned from authenticated traffic).
    pub endpoint: Option<SocketAddr>,
    /// Tunnel (inner) address.
    pub tunnel_address: Ipv4Addr,
    /// Seconds since the last completed handshake, if any.
    pub last_handshake_secs: Option<f64>,
    /// Frames received from the peer and switched.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames sent to the peer.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Enclaves the peer is a member of.
    pub enclaves: Vec<u32>,
    /// Drops attributed to this peer, by reason name.
    pub drops: BTreeMap<String, u64>,
}

/// One enclave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnclaveStatus {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Member peers' public keys (configured, whether present or not).
    pub members: Vec<PublicKey>,
    /// Local ports.
    pub ports: Vec<PortStatus>,
    /// Entries in the MAC table.
    pub mac_entries: usize,
    /// Frames flooded (broadcast, multicast, unknown unicast).
    pub flooded_frames: u64,
}

/// One local port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortStatus {
    /// Port name.
    pub name: String,
    /// "tap", "unix" or "memory".
    pub kind: String,
    /// TAP interface name or unix socket path.
    pub device: String,
    /// The port's MAC address (the only source allowed with anti-spoofing).
    pub mac: Option<MacAddr>,
    /// MTU (largest payload of a frame).
    pub mtu: u16,
    /// Whether frames with another source MAC are dropped.
    pub anti_spoof: bool,
    /// Frames received from the port.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames delivered to the port.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Drops attributed to this port, by reason name.
    pub drops: BTreeMap<String, u64>,
}

impl OverlayStatus {
    /// Node-wide drops counted under `reason`.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.name()).copied().unwrap_or(0)
    }

    /// The peer with this key.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| &p.public_key == key)
    }

    /// The port with this name.
    pub fn port(&self, name: &str) -> Option<&PortStatus> {
        self.enclaves
            .iter()
            .flat_map(|e| e.ports.iter())
            .find(|p| p.name == name)
    }

    /// A human-readable report: node, peers, ports, drops.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let u = &self.underlay;
        let _ = writeln!(
            out,
            "node {}  listen {}  tunnel {}  up {}",
            self.public_key,
            self.listen,
            self.tunnel_address,
            human_duration(self.uptime_secs as f64)
        );
        let _ = writeln!(
            out,
            "underlay  rx {} datagrams ({})  tx {} datagrams ({})  GSO {}  GRO {}  cookie replies {}",
            u.rx_datagrams,
            human_bytes(u.rx_bytes),
            u.tx_datagrams,
            human_bytes(u.tx_bytes),
            on_off(u.gso),
            on_off(u.gro),
            u.cookie_replies_sent
        );
        out.push('\n');
        let mut rows = vec![[
            "PEER",
            "ENDPOINT",
            "TUNNEL",
            "HANDSHAKE",
            "RX FRAMES",
            "RX BYTES",
            "TX FRAMES",
            "TX BYTES",
            "ENCLAVES",
            "DROPS",
        ]
        .map(String::from)
        .to_vec()];
        for p in &self.peers {
            rows.push(vec![
                p.name.clone(),
                p.endpoint.map_or("-".into(), |e| e.to_string()),
                p.tunnel_address.to_string(),
                p.last_handshake_secs
                    .map_or("never".into(), |s| format!("{} ago", human_duration(s))),
                p.rx_frames.to_string(),
                human_bytes(p.rx_bytes),
                p.tx_frames.to_string(),
                human_bytes(p.tx_bytes),
                join(&p.enclaves),
                p.drops.values().sum::<u64>().to_string(),
            ]);
        }
        if self.peers.is_empty() {
            out.push_str("no peers\n");
        } else {
            table(&mut out, &rows);
        }
        out.push('\n');
        let mut rows = vec![[
            "ENCLAVE",
            "MEMBERS",
            "MACS",
            "PORT",
            "KIND",
            "DEVICE",
            "MAC",
            "MTU",
            "RX FRAMES",
            "TX FRAMES",
            "DROPS",
        ]
        .map(String::from)
        .to_vec()];
        for e in &self.enclaves {
            let head = [
                e.vni.to_string(),
                e.members.len().to_string(),
                e.mac_entries.to_string(),
            ];
            if e.ports.is_empty() {
                let mut r = head.to_vec();
                r.extend(std::iter::repeat_n("-".to_string(), 8));
                rows.push(r);
            }
            for p in &e.ports {
                let mut r = head.to_vec();
                r.extend([
                    p.name.clone(),
                    p.kind.clone(),
                    p.device.clone(),
                    p.mac.map_or("any".into(), |m| {
                        if p.anti_spoof {
                            m.to_string()
                        } else {
                            format!("{m} (any)")
                        }
                    }),
                    p.mtu.to_string(),
                    p.rx_frames.to_string(),
                    p.tx_frames.to_string(),
                    p.drops.values().sum::<u64>().to_string(),
                ]);
                rows.push(r);
            }
        }
        if self.enclaves.is_empty() {
            out.push_str("no enclaves\n");
        } else {
            table(&mut out, &rows);
        }
        out.push('\n');
        if self.drops.is_empty() {
            out.push_str("drops: none\n");
        } else {
            let mut rows = vec![vec!["DROP REASON".into(), "COUNT".into(), "MEANING".into()]];
            for r in DropReason::ALL {
                if let Some(n) = self.drops.get(r.name()) {
                    rows.push(vec![r.name().into(), n.to_string(), r.describe().into()]);
                }
            }
            table(&mut out, &rows);
        }
        out
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn join(v: &[u32]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// "1.5 MB"-style byte counts.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "3m12s"-style durations.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_duration(5.2), "5s");
        assert_eq!(human_duration(192.0), "3m12s");
        assert_eq!(human_duration(7300.0), "2h01m");
    }
}
