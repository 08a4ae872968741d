//! What a plain Linux host needs to join one enclave as a gateway with
//! stock tools: a wg-quick configuration (WireGuard to every node of the
//! enclave) and the `ip`/`bridge` commands for a kernel VXLAN device (VNI =
//! the enclave, head-end replication to every node) attached to a bridge.
//! The gateway is an ordinary peer and enclave member on the nodes' side.

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::config::DaemonConfig;
use crate::encap::{UNDERLAY_V4_OVERHEAD, UNDERLAY_V6_OVERHEAD, WIREGUARD_OVERHEAD};
use crate::keys::{PrivateKey, PublicKey};
use crate::wire::vxlan::UDP_PORT;

/// Exporting failed: the configuration does not describe the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No such enclave in the file.
    #[error("{file}: no enclave has VNI {vni}")]
    UnknownEnclave {
        /// The config file.
        file: String,
        /// The VNI asked for.
        vni: u32,
    },
    /// The gateway is not a peer, or not a member of the enclave.
    #[error("{file}: {problem}")]
    Gateway {
        /// The config file.
        file: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The node's own address is unknown.
    #[error("{file}: field `endpoint`: missing; the node listens on {listen}, so say how the gateway reaches it (e.g. endpoint = \"203.0.113.5:51820\")")]
    NoEndpoint {
        /// The config file.
        file: String,
        /// The listen address.
        listen: SocketAddr,
    },
}

/// One WireGuard peer of the gateway: an enclave node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GatewayPeer {
    /// Name from the node's configuration.
    pub name: String,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where to reach it.
    pub endpoint: Option<SocketAddr>,
    /// Its tunnel address (the VXLAN remote).
    pub tunnel_address: Ipv4Addr,
}

/// Everything the gateway host needs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GatewayExport {
    /// The enclave.
    pub vni: u32,
    /// WireGuard interface name on the gateway.
    pub interface: String,
    /// The gateway's tunnel address.
    pub tunnel_address: Ipv4Addr,
    /// WireGuard MTU.
    pub mtu: u16,
    /// The nodes of the enclave.
    pub peers: Vec<GatewayPeer>,
    /// wg-quick configuration text.
    pub wg_quick: String,
    /// Commands to run after `wg-quick up`.
    pub commands: Vec<String>,
}

impl GatewayExport {
    /// A shell script doing it all; the wg-quick file goes to
    /// `$CONF_DIR` (default /etc/wireguard).
    pub fn script(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/sh");
        let _ = writeln!(
            s,
            "# Joins slicenet enclave {} as a gateway: stock WireGuard (wg-quick; wireguard-go",
            self.vni
        );
        let _ = writeln!(
            s,
            "# where the kernel has no WireGuard), a kernel VXLAN device and a bridge. Run as root."
        );
        let _ = writeln!(s, "set -e");
        let _ = writeln!(s, "CONF_DIR=\"${{CONF_DIR:-/etc/wireguard}}\"");
        let _ = writeln!(s, "mkdir -p \"$CONF_DIR\"");
        let _ = writeln!(s, "umask 077");
        let _ = writeln!(
            s,
            "cat > \"$CONF_DIR/{}.conf\" <<'SLICENET_EOF'",
            self.interface
        );
        s.push_str(&self.wg_quick);
        let _ = writeln!(s, "SLICENET_EOF");
        let _ = writeln!(s, "wg-quick up \"$CONF_DIR/{}.conf\"", self.interface);
        for c in &self.commands {
            let _ = writeln!(s, "{c}");
        }
        s
    }
}

/// Builds the export for gateway peer `gateway` (a peer name or public key
/// in `config`) in enclave `vni`. With the gateway's private key the
/// wg-quick text is complete; without, it carries a placeholder.
pub fn export(
    config: &DaemonConfig,
    vni: u32,
    gateway: &str,
    gateway_key: Option<&PrivateKey>,
    interface: Option<&str>,
) -> Result<GatewayExport, GatewayError> {
    let file = config.file.display().to_string();
    let enclave =
        config
            .enclaves
            .iter()
            .find(|e| e.vni == vni)
            .ok_or(GatewayError::UnknownEnclave {
                file: file.clone(),
                vni,
            })?;
    let gw = config
        .peers
        .iter()
        .find(|p| p.name.as_deref() == Some(gateway) || p.public_key.to_base64() == gateway)
        .ok_or_else(|| GatewayError::Gateway {
            file: file.clone(),
            problem: format!(
                "no peer is named or keyed `{gateway}`; add the gateway as a [[peer]] (its public key and a tunnel_address) first"
            ),
        })?;
    if !enclave.members.contains(&gw.public_key) {
        return Err(GatewayError::Gateway {
            file: file.clone(),
            problem: format!(
                "peer `{gateway}` is not a member of enclave {vni}; add it to that enclave's members"
            ),
        });
    }
    if let Some(k) = gateway_key {
        if k.public_key() != gw.public_key {
            return Err(GatewayError::Gateway {
                file,
                problem: format!(
                    "the private key given has public key {}, but peer `{gateway}` is {}",
                    k.public_key(),
                    gw.public_key
                ),
            });
        }
    }
    let own_endpoint = config.endpoint.ok_or(GatewayError::NoEndpoint {
        file: file.clone(),
        listen: config.overlay.listen,
    })?;
    let mut peers = vec![GatewayPeer {
        name: "this node".into(),
        public_key: config.overlay.private_key.public_key(),
        endpoint: Some(own_endpoint),
        tunnel_address: config.overlay.tunnel_address,
    }];
    for m in &enclave.members {
        if *m == gw.public_key {
            continue;
        }
        if let Some(p) = config.peers.iter().find(|p| p.public_key == *m) {
            peers.push(GatewayPeer {
                name: p.name.clone().unwrap_or_else(|| p.public_key.short()),
                public_key: p.public_key,
                endpoint: p.endpoint,
                tunnel_address: p.tunnel_address,
            });
        }
    }
    let outer = if own_endpoint.is_ipv6() {
        UNDERLAY_V6_OVERHEAD
    } else {
        UNDERLAY_V4_OVERHEAD
    };
    let mtu = config.overlay.underlay_mtu - (outer + WIREGUARD_OVERHEAD) as u16;
    let interface = interface
        .map(str::to_string)
        .unwrap_or_else(|| format!("sn{vni}"));
    let mut wg = String::new();
    let _ = writeln!(wg, "# slicenet enclave {vni}: gateway {}", gw.public_key);
    let _ = writeln!(wg, "[Interface]");
    match gateway_key {
        Some(k) => {
            let _ = writeln!(wg, "PrivateKey = {}", k.to_base64());
        }
        None => {
            let _ = writeln!(
                wg,
                "PrivateKey = REPLACE_WITH_THE_PRIVATE_KEY_OF_{}",
                gw.public_key.to_base64().replace(['+', '/', '='], "_")
            );
        }
    }
    let _ = writeln!(wg, "Address = {}/32", gw.tunnel_address);
    let _ = writeln!(wg, "MTU = {mtu}");
    for p in &peers {
        let _ = writeln!(wg);
        let _ = writeln!(wg, "# {}", p.name);
        let _ = writeln!(wg, "[Peer]");
        let _ = writeln!(wg, "PublicKey = {}", p.public_key);
        if let Some(ep) = p.endpoint {
            let _ = writeln!(wg, "Endpoint = {ep}");
        }
        let _ = writeln!(wg, "AllowedIPs = {}/32", p.tunnel_address);
        let _ = writeln!(wg, "PersistentKeepalive = 25");
    }
    let vx = format!("vx{vni}");
    let br = format!("br{vni}");
    let mut commands = vec![format!(
        "ip link add {vx} type vxlan id {vni} local {} dstport {UDP_PORT} dev {interface}",
        gw.tunnel_address
    )];
    for p in &peers {
        // Head-end replication: broadcasts go to every node of the enclave.
        commands.push(format!(
            "bridge fdb append 00:00:00:00:00:00 dev {vx} dst {}",
            p.tunnel_address
        ));
    }
    commands.push(format!(
        "ip link add {br} type bridge stp_state 0 forward_delay 0"
    ));
    commands.push(format!("ip link set {vx} master {br}"));
    commands.push(format!("ip link set {vx} up"));
    commands.push(format!("ip link set {br} up"));
    commands.push(format!(
        "# attach the local segment: ip link set <interface> master {br}"
    ));
    Ok(GatewayExport {
        vni,
        interface,
        tunnel_address: gw.tunnel_address,
        mtu,
        peers,
        wg_quick: wg,
        commands,
    })
}
