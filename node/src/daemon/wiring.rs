//! Wiring the data plane from the tickets a node holds: which WireGuard
//! peers exist, which enclaves (VNIs) each peer belongs to, and which local
//! ports (VM NICs) sit on which enclave.
//!
//! The desired state is a pure function of the active tickets — the
//! authority's signed word — so no peer outside a signed enclave epoch can
//! ever be configured. Membership may only refresh the *endpoint* of a
//! peer the tickets already name, and only from a record signed by that
//! very node whose WireGuard key matches the ticket's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use slicenet_authority::keys::PublicKey as Ed25519Key;
use slicenet_authority::ticket::Ticket;
use slicenet_overlay::{MacAddr, Overlay, OverlayError, PeerConfig, PortConfig, PublicKey};

/// A remote WireGuard peer the tickets call for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    /// Node (or gateway) name, for status output.
    pub name: String,
    /// The node's ed25519 identity (absent for external gateways).
    pub node_key: Option<Ed25519Key>,
    pub tunnel_address: Ipv4Addr,
    /// Endpoint as the authority registered it.
    pub endpoint: Option<SocketAddr>,
}

/// A VM NIC's switch port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPort {
    pub sliver_id: u64,
    /// NIC index within the sliver (order of the ticket's enclaves).
    pub nic: usize,
    pub vni: u32,
    pub mac: [u8; 6],
}

/// The data-plane state the active tickets call for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredOverlay {
    /// By WireGuard public key.
    pub peers: BTreeMap<[u8; 32], DesiredPeer>,
    /// VNI -> member peers' WireGuard keys.
    pub enclaves: BTreeMap<u32, BTreeSet<[u8; 32]>>,
    /// By port name.
    pub ports: BTreeMap<String, DesiredPort>,
}

/// The name of a sliver NIC's switch port.
pub fn port_name(sliver_id: u64, nic: usize) -> String {
    format!("s{sliver_id}n{nic}")
}

/// Paths of a sliver NIC's two unix sockets: (switch side, VM side).
pub fn port_sockets(run_dir: &Path, sliver_id: u64, nic: usize) -> (PathBuf, PathBuf) {
    (
        run_dir.join(format!("s{sliver_id}-net{nic}.switch.sock")),
        run_dir.join(format!("s{sliver_id}-net{nic}.vm.sock")),
    )
}

/// Computes the desired data plane from a node's active tickets.
pub fn desired_overlay<'a>(
    tickets: impl IntoIterator<Item = &'a Ticket>,
    own_wg_key: [u8; 32],
) -> DesiredOverlay {
    let mut out = DesiredOverlay::default();
    for ticket in tickets {
        for (nic, membership) in ticket.enclaves.iter().enumerate() {
            let members = out.enclaves.entry(membership.vni).or_default();
            for peer in &membership.peers {
                if peer.wg_public_key.0 == own_wg_key {
                    continue;
                }
                members.insert(peer.wg_public_key.0);
                out.peers
                    .entry(peer.wg_public_key.0)
                    .or_insert_with(|| DesiredPeer {
                        name: peer.node.clone(),
                        node_key: Some(peer.node_key),
                        tunnel_address: peer.tunnel_address,
                        endpoint: peer.endpoint,
                    });
            }
            for gw in &membership.gateways {
                if gw.wg_public_key.0 == own_wg_key {
                    continue;
                }
                members.insert(gw.wg_public_key.0);
                out.peers
                    .entry(gw.wg_public_key.0)
                    .or_insert_with(|| DesiredPeer {
                        name: format!("gateway {}", gw.name),
                        node_key: None,
                        tunnel_address: gw.tunnel_address,
                        endpoint: gw.endpoint,
                    });
            }
            out.ports.insert(
                port_name(ticket.sliver_id, nic),
                DesiredPort {
                    sliver_id: ticket.sliver_id,
                    nic,
                    vni: membership.vni,
                    mac: membership.mac.0,
                },
            );
        }
    }
    out
}

/// Errors applying the desired state to the data plane.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    /// The overlay refused a change.
    #[error("data plane refused {what}: {source}")]
    Overlay {
        what: String,
        #[source]
        source: OverlayError,
    },
}

/// Applies desired states to one [`Overlay`], remembering what it applied
/// so each call changes only the difference.
pub struct OverlayWiring {
    overlay: Overlay,
    run_dir: PathBuf,
    applied: DesiredOverlay,
    /// Endpoints applied per peer (after membership overrides).
    endpoints: HashMap<[u8; 32], Option<SocketAddr>>,
}

impl OverlayWiring {
    /// Starts from an overlay with no peers, enclaves or ports.
    pub fn new(overlay: Overlay, run_dir: PathBuf) -> Self {
        OverlayWiring {
            overlay,
            run_dir,
            applied: DesiredOverlay::default(),
            endpoints: HashMap::new(),
        }
    }

    /// The overlay being wired.
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// What is applied now.
    pub fn applied(&self) -> &DesiredOverlay {
        &self.applied
    }

    /// Brings the data plane to `desired`. `live_endpoints` maps node
    /// identities to endpoints learned from verified membership records
    /// (`(wireguard key, endpoint)`); one is used only when its WireGuard
    /// key is the one the ticket names.
    ///
    /// Order matters for revocation: enclaves shrink and ports go before
    /// peers are removed, so a peer leaving an enclave can send nothing
    /// into it from the moment this starts.
    pub fn reconcile(
        &mut self,
        desired: DesiredOverlay,
        live_endpoints: &HashMap<Ed25519Key, ([u8; 32], SocketAddr)>,
    ) -> Result<(), WiringError> {
        let err = |what: String| move |source| WiringError::Overlay { what, source };
        // 1. Enclaves that shrink or vanish, and ports that go.
        for (vni, members) in &self.applied.enclaves {
            match desired.enclaves.get(vni) {
                None => self
                    .overlay
                    .remove_enclave(*vni)
                    .map_err(err(format!("removing enclave {vni}")))?,
                Some(new) if new != members => self
                    .overlay
                    .set_enclave_members(*vni, new.iter().map(|k| PublicKey(*k)))
                    .map_err(err(format!("changing members of enclave {vni}")))?,
                Some(_) => {}
            }
        }
        for (name, port) in &self.applied.ports {
            let gone = desired.ports.get(name) != Some(port);
            let enclave_still_there = desired.enclaves.contains_key(&port.vni);
            if gone && enclave_still_there {
                self.overlay
                    .remove_port(name)
                    .map_err(err(format!("removing port {name}")))?;
            }
        }
        // 2. Peers: new ones, changed ones, and ones no longer named.
        for (key, peer) in &desired.peers {
            let endpoint = peer
                .node_key
                .and_then(|nk| live_endpoints.get(&nk))
                .filter(|(wg, _)| wg == key)
                .map(|(_, ep)| *ep)
                .or(peer.endpoint);
            let mut config =
                PeerConfig::new(PublicKey(*key), peer.tunnel_address).name(peer.name.clone());
            config.endpoint = endpoint;
            match self.applied.peers.get(key) {
                None => self
                    .overlay
                    .add_peer(config)
                    .map_err(err(format!("adding peer {}", peer.name)))?,
                Some(old)
                    if old != peer || self.endpoints.get(key).copied().flatten() != endpoint =>
                {
                    self.overlay
                        .update_peer(config)
                        .map_err(err(format!("updating peer {}", peer.name)))?
                }
                Some(_) => {}
            }
            self.endpoints.insert(*key, endpoint);
        }
        for (key, peer) in &self.applied.peers {
            if !desired.peers.contains_key(key) {
                self.overlay
                    .remove_peer(&PublicKey(*key))
                    .map_err(err(format!("removing peer {}", peer.name)))?;
                self.endpoints.remove(key);
            }
        }
        // 3. New enclaves, then their new ports.
        for (vni, members) in &desired.enclaves {
            if !self.applied.enclaves.contains_key(vni) {
                self.overlay
                    .add_enclave(*vni, members.iter().map(|k| PublicKey(*k)))
                    .map_err(err(format!("adding enclave {vni}")))?;
            }
        }
        for (name, port) in &desired.ports {
            if self.applied.ports.get(name) == Some(port) {
                continue;
            }
            let (switch_sock, vm_sock) = port_sockets(&self.run_dir, port.sliver_id, port.nic);
            let config = PortConfig::unix(
                name.clone(),
                port.vni,
                switch_sock,
                vm_sock,
                MacAddr(port.mac),
            );
            self.overlay
                .add_port(config)
                .map_err(err(format!("adding port {name}")))?;
        }
        self.applied = desired;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slicenet_authority::model::{Appliance, MacAddr as TicketMac, Resources};
    use slicenet_authority::ticket::{EnclaveMembership, Peer, TicketStatus};

    fn key(b: u8) -> Ed25519Key {
        Ed25519Key([b; 32])
    }

    fn ticket(sliver: u64, vni: u32, peers: &[u8]) -> Ticket {
        Ticket {
            epoch: 1,
            issued_at: 0,
            expires_at: i64::MAX,
            status: TicketStatus::Active,
            node: "n1".into(),
            node_key: key(1),
            slice: "ams_demo".into(),
            sliver_id: sliver,
            resources: Resources {
                vcpus: 1,
                memory_mib: 256,
                disk_gib: 1,
                bandwidth_mbps: 10,
            },
            appliance: Appliance::default(),
            enclaves: vec![EnclaveMembership {
                enclave: "lan".into(),
                slice: "ams_demo".into(),
                vni,
                subnet: Ipv4Addr::new(198, 19, 1, 0),
                prefix_len: 24,
                mac: TicketMac([2, 0x53, 198, 19, 1, sliver as u8]),
                address: Ipv4Addr::new(198, 19, 1, sliver as u8),
                members: vec![],
                peers: peers
                    .iter()
                    .map(|&p| Peer {
                        node: format!("n{p}"),
                        node_key: key(p),
                        wg_public_key: key(100 + p),
                        tunnel_address: Ipv4Addr::new(198, 19, 255, p),
                        endpoint: None,
                    })
                    .collect(),
                gateways: vec![],
            }],
        }
    }

    #[test]
    fn peers_are_the_union_over_tickets_and_never_the_node_itself() {
        let a = ticket(1, 10, &[2, 3]);
        let b = ticket(2, 20, &[3, 1]);
        let d = desired_overlay([&a, &b], [101; 32]);
        assert_eq!(
            d.peers.keys().copied().collect::<Vec<_>>(),
            vec![[102; 32], [103; 32]]
        );
        assert_eq!(d.enclaves[&10], BTreeSet::from([[102; 32], [103; 32]]));
        assert_eq!(d.enclaves[&20], BTreeSet::from([[103; 32]]));
        assert_eq!(d.ports["s1n0"].vni, 10);
        assert_eq!(d.ports["s2n0"].mac, [2, 0x53, 198, 19, 1, 2]);
    }

    #[test]
    fn a_revoked_peer_disappears_from_the_desired_state() {
        let before = desired_overlay([&ticket(1, 10, &[2, 3])], [101; 32]);
        let after = desired_overlay([&ticket(1, 10, &[2])], [101; 32]);
        assert!(before.peers.contains_key(&[103; 32]));
        assert!(!after.peers.contains_key(&[103; 32]));
        assert!(!after.enclaves[&10].contains(&[103; 32]));
    }

    #[test]
    fn no_tickets_means_no_peers_no_enclaves_no_ports() {
        assert_eq!(desired_overlay([], [0; 32]), DesiredOverlay::default());
    }
}
